import { useState, type ReactNode } from 'react'
import { formatAgo, formatBytes } from '../lib/format'
import { agent, ApiError, plainMessage } from './api'
import {
  accounting,
  type AgentReport,
  diskSummary,
  hubContact,
  type QuarantineList,
  reasonRows,
  sourceLabel,
  STUDY_STATES,
  uploadsSummary,
} from './agentView'
import { usePoll } from './hooks'
import { Alert } from './ui'

function Card({ title, id, children, tone }: { title: string; id: string; children: ReactNode; tone?: 'warn' }) {
  return (
    <section aria-labelledby={id} className={`card flex flex-col gap-1 ${tone === 'warn' ? 'border-amber-400 bg-amber-50' : ''}`} data-testid={`agent-card-${id}`}>
      <h3 id={id} className="text-sm font-semibold uppercase tracking-wide text-slate-700">
        {title}
      </h3>
      {children}
    </section>
  )
}

function Rows({ rows, label }: { rows: Array<{ key: string; label: string; n: number }>; label: string }) {
  return (
    <dl className="grid grid-cols-[1fr_auto] gap-x-3 text-sm" aria-label={label}>
      {rows.map((r) => (
        <div key={r.key} className="contents">
          <dt className="text-slate-700">{r.label}</dt>
          <dd className="text-right font-semibold tabular-nums text-slate-900">{r.n}</dd>
        </div>
      ))}
    </dl>
  )
}

const Big = ({ n }: { n: number }) => <p className="text-2xl font-bold tabular-nums text-slate-900">{n}</p>

function Totals({ report }: { report: AgentReport }) {
  const t = report.totals
  const acc = accounting(t)
  const hub = hubContact(report.hub)
  const disk = diskSummary(report.disk)
  const reasons = reasonRows(t.quarantine_reasons, report.reasons)
  return (
    <div className="flex flex-col gap-3" data-testid="agent-totals">
      <p className={`rounded-lg px-3 py-2 text-sm ${acc.balanced ? 'bg-emerald-50 text-emerald-950' : 'bg-amber-100 text-amber-950'}`} data-testid="agent-summary" data-balanced={acc.balanced}>
        {acc.sentence}
      </p>
      <div className="grid grid-cols-1 gap-3 sm:grid-cols-2">
        <Card title="Studies" id="studies">
          <Big n={t.studies} />
          <Rows label="Studies by state" rows={STUDY_STATES.map((s) => ({ key: s.state, label: s.label, n: t.studies_by_state?.[s.state] ?? 0 }))} />
        </Card>
        <Card title="Images" id="instances">
          <Big n={t.instances} />
          <Rows
            label="Images by state"
            rows={[
              { key: 'uploaded', label: 'At the hub', n: acc.atHub },
              { key: 'spooled', label: 'Waiting at the agent', n: acc.waiting },
              ...(acc.refusedByHub ? [{ key: 'refused', label: 'Refused by the hub', n: acc.refusedByHub }] : []),
            ]}
          />
        </Card>
        <Card title="Duplicates" id="duplicates">
          <Big n={t.duplicates} />
          <p className="text-sm text-slate-700">Files already held, not kept twice.</p>
        </Card>
        <Card title="Quarantined" id="quarantined" tone={t.quarantined > 0 ? 'warn' : undefined}>
          <p className="text-2xl font-bold tabular-nums text-slate-900" data-testid="agent-quarantined">
            {t.quarantined}
          </p>
          {reasons.length > 0 ? (
            <Rows label="Quarantined by reason" rows={reasons.map((r) => ({ key: r.code, label: r.label, n: r.n }))} />
          ) : (
            <p className="text-sm text-slate-700">Nothing in quarantine.</p>
          )}
        </Card>
        <Card title="Disk" id="disk" tone={disk.warn ? 'warn' : undefined}>
          <p className="text-sm text-slate-900" role={disk.warn ? 'alert' : undefined} data-testid="agent-disk">
            {disk.text}
          </p>
        </Card>
        <Card title="Hub" id="hub" tone={hub.ok ? undefined : 'warn'}>
          <p className="text-sm text-slate-900" data-testid="agent-hub">
            {hub.text}
          </p>
        </Card>
        <Card title="Uploads from phones" id="uploads">
          <p className="text-sm text-slate-900">{uploadsSummary(report.lan)}</p>
        </Card>
      </div>
    </div>
  )
}

function Quarantine({ q }: { q: QuarantineList }) {
  return (
    <section aria-labelledby="quarantine-title" className="flex flex-col gap-2">
      <h3 id="quarantine-title" className="text-lg font-semibold">
        Quarantine ({q.total})
      </h3>
      <p className="text-sm text-slate-700">
        Files here are kept, never deleted. IT can release or delete them with <code className="rounded bg-slate-100 px-1">relaypacs-agent quarantine</code>.
      </p>
      {q.total > q.entries.length && <p className="text-sm text-slate-700">Showing the newest {q.entries.length}.</p>}
      {q.entries.length === 0 ? (
        <p className="card text-sm text-slate-700">Nothing in quarantine.</p>
      ) : (
        <ul className="flex flex-col gap-2" data-testid="quarantine-list" aria-label="Quarantined files">
          {q.entries.map((e) => {
            const when = new Date(e.quarantined_at * 1000)
            return (
              <li key={e.id} className="card flex flex-col gap-1 text-sm" data-testid="quarantine-entry" data-reason={e.reason}>
                <p className="break-all font-semibold text-slate-900">{e.original_name || 'Unnamed file'}</p>
                <p className="font-medium text-amber-900">{e.label ?? e.reason}</p>
                {e.what_to_do && <p className="text-slate-900">{e.what_to_do}</p>}
                {e.message && <p className="text-slate-700">{e.message}</p>}
                <p className="text-slate-700">
                  {sourceLabel(e.source)} ·{' '}
                  <time dateTime={when.toISOString()} title={when.toLocaleString()}>
                    {formatAgo(when.getTime())}
                  </time>
                  {e.size !== null && e.size !== undefined && <> · {formatBytes(e.size)}</>}
                </p>
              </li>
            )
          })}
        </ul>
      )}
    </section>
  )
}

/** The facility admin's view of the agent: where every file that came in is now. Polled every 10 s while visible. */
export function AgentPage() {
  const [report, setReport] = useState<AgentReport | null>(null)
  const [q, setQ] = useState<QuarantineList | null>(null)
  const [error, setError] = useState<unknown>(null)
  const [at, setAt] = useState<number | null>(null)
  usePoll(async () => {
    try {
      const [r, list] = await Promise.all([agent.status(), agent.quarantine()])
      setReport(r)
      setQ(list)
      setAt(Date.now())
      setError(null)
    } catch (e) {
      setError(e)
    }
  }, 10_000)
  const forbidden = error instanceof ApiError && error.status === 403
  return (
    <section aria-labelledby="agent-title" className="flex flex-col gap-4" data-testid="agent-page">
      <div className="flex items-center justify-between gap-3">
        <h2 id="agent-title" className="text-xl font-semibold">
          Agent
        </h2>
        <a href="#/" className="btn-secondary">
          Back
        </a>
      </div>
      <p className="text-sm text-slate-700">Every file that came into this agent: delivered, on its way, or kept in quarantine with its reason.</p>
      {forbidden ? (
        <Alert tone="warn">Only the facility’s admin can see this page.</Alert>
      ) : error ? (
        <Alert tone="warn">
          {plainMessage(error)}
          {at && ` Showing what the agent said ${formatAgo(at)}.`}
        </Alert>
      ) : null}
      {!report && !error && <p role="status">Loading…</p>}
      {report && !report.exists && <Alert tone="info">The agent has not received anything yet.</Alert>}
      {report && !forbidden && <Totals report={report} />}
      {q && !forbidden && <Quarantine q={q} />}
    </section>
  )
}
