import { useCallback, useEffect, useState, type FormEvent, type ReactNode } from 'react'
import { formatAgo, formatDuration, isoToMs } from '../lib/format'
import { Agents, HeldStudies, Users } from './Admin'
import { Analytics } from './Analytics'
import { ENROLL_SCOPE, hasTokens, hub, HubError, login, logout, setSignedOutHandler, tokenScope, type Job, type Me, type ReportStatus, type Stats, type Study } from './api'
import { ErrorBox, message, Pill, stackCell, stackRow, Table, useLoad } from './ui'
import { EnrollOnly, Security } from './Security'
import { clip, digitsOnly } from './totp'

type Tab = 'overview' | 'studies' | 'analytics' | 'dead' | 'agents' | 'users' | 'security'
const TABS: Array<{ id: Tab; label: string; admin: boolean }> = [
  { id: 'overview', label: 'Overview', admin: false },
  { id: 'studies', label: 'Studies', admin: false },
  { id: 'analytics', label: 'Analytics', admin: false },
  { id: 'dead', label: 'Dead jobs', admin: true },
  { id: 'agents', label: 'Agents', admin: true },
  { id: 'users', label: 'Users', admin: true },
  { id: 'security', label: 'Security', admin: false },
]

function LoginForm({ onDone }: { onDone: (scope: string) => void }) {
  const [username, setUsername] = useState('')
  const [password, setPassword] = useState('')
  const [totp, setTotp] = useState('')
  const [recovery, setRecovery] = useState('')
  const [needTotp, setNeedTotp] = useState(false)
  const [useRecovery, setUseRecovery] = useState(false)
  const [error, setError] = useState<string | null>(null)
  const [busy, setBusy] = useState(false)
  async function submit(e: FormEvent) {
    e.preventDefault()
    setBusy(true)
    setError(null)
    try {
      const second = !needTotp ? undefined : useRecovery ? { recovery_code: recovery.trim() } : { totp_code: totp }
      onDone(await login(username.trim(), password, second))
    } catch (err) {
      if (err instanceof HubError && err.code === 'totp_required') {
        if (needTotp) {
          setError(
            useRecovery
              ? 'That recovery code was not accepted. Each recovery code works only once; check it and try another.'
              : 'That code was not accepted. Type the newest 6-digit code from your app; each code works only once.',
          )
          setTotp('')
          setRecovery('')
        }
        setNeedTotp(true)
      } else setError(message(err))
    } finally {
      setBusy(false)
    }
  }
  return (
    <form onSubmit={submit} className="card mx-auto mt-8 flex w-full max-w-sm flex-col gap-4" aria-labelledby="dlogin">
      <h2 id="dlogin" className="text-xl font-semibold">
        Sign in to the hub
      </h2>
      <div>
        <label className="label" htmlFor="d-user">
          Username
        </label>
        <input id="d-user" className="field" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} />
      </div>
      <div>
        <label className="label" htmlFor="d-pass">
          Password
        </label>
        <input id="d-pass" className="field" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} />
      </div>
      {needTotp && (
        <div className="flex flex-col gap-2" data-testid="login-second-factor">
          <p role="status" className="text-sm text-slate-800">
            Two-factor sign-in is on for this account.
          </p>
          {useRecovery ? (
            <div>
              <label className="label" htmlFor="d-recovery">
                Recovery code
              </label>
              <input
                id="d-recovery"
                className="field font-mono"
                autoComplete="off"
                autoCapitalize="none"
                spellCheck={false}
                autoFocus
                value={recovery}
                onChange={(e) => setRecovery(e.target.value)}
              />
            </div>
          ) : (
            <div>
              <label className="label" htmlFor="d-totp">
                6-digit code
              </label>
              <input
                id="d-totp"
                className="field tracking-widest"
                inputMode="numeric"
                autoComplete="one-time-code"
                maxLength={6}
                autoFocus
                value={totp}
                onChange={(e) => setTotp(digitsOnly(e.target.value))}
              />
            </div>
          )}
          <button
            type="button"
            className="self-start text-sm font-semibold text-brand-800 underline underline-offset-2 hover:text-brand-900"
            onClick={() => {
              setUseRecovery(!useRecovery)
              setError(null)
            }}
          >
            {useRecovery ? 'Use a code from your app instead' : 'Use a recovery code instead'}
          </button>
        </div>
      )}
      <ErrorBox error={error} />
      <button className="btn-primary" type="submit" disabled={busy || !username || !password}>
        {busy ? 'Signing in…' : 'Sign in'}
      </button>
    </form>
  )
}

function Overview() {
  const [s, error] = useLoad<Stats>(hub.stats, 10_000)
  const cell = (k: string, v: ReactNode, testId?: string) => (
    <div className="card" data-testid={testId}>
      <dt className="text-sm text-slate-700">{k}</dt>
      <dd className="text-2xl font-semibold tabular-nums">{v}</dd>
    </div>
  )
  return (
    <section aria-labelledby="ov" className="flex flex-col gap-4" data-testid="dash-overview">
      <h2 id="ov" className="text-lg font-semibold">
        Overview
      </h2>
      <ErrorBox error={error} />
      {s && (
        <>
          <dl className="grid grid-cols-2 gap-3 md:grid-cols-3 xl:grid-cols-6">
            {cell('Delivered in 24 h', s.delivered_24h, 'dash-delivered-24h')}
            {cell('Time to PACS (median)', formatDuration(s.time_to_pacs_median_seconds))}
            {cell('Time to PACS (95th pct.)', formatDuration(s.time_to_pacs_p95_seconds))}
            {cell('Dead jobs', s.dead_jobs, 'dash-dead-count')}
            {cell(
              'Waiting for a report',
              <>
                {s.waiting_for_report}
                {s.oldest_waiting_report_seconds != null && (
                  <span className="block text-sm font-normal text-slate-700">oldest {formatDuration(s.oldest_waiting_report_seconds)}</span>
                )}
              </>,
              'dash-waiting-report',
            )}
            {cell(
              'Time to report (median / 95th)',
              s.time_to_report_median_seconds == null
                ? '—'
                : `${formatDuration(s.time_to_report_median_seconds)} / ${formatDuration(s.time_to_report_p95_seconds)}`,
              'dash-time-to-report',
            )}
          </dl>
          <div className="grid gap-3 md:grid-cols-2">
            {(
              [
                ['Studies by state', s.studies_by_state],
                ['Jobs by state', s.jobs_by_state],
              ] as const
            ).map(([title, counts]) => (
              <div key={title} className="card">
                <h3 className="mb-2 font-semibold">{title}</h3>
                <ul className="flex flex-col gap-1 text-sm">
                  {Object.entries(counts).length === 0 && <li className="text-slate-700">None</li>}
                  {Object.entries(counts).map(([k, v]) => (
                    <li key={k} className="flex justify-between">
                      <Pill state={k} /> <span className="tabular-nums">{v}</span>
                    </li>
                  ))}
                </ul>
              </div>
            ))}
          </div>
        </>
      )}
    </section>
  )
}

/** Clinical history and referring clinician under a study's UID; long history folds open. */
function Clinical({ study }: { study: Study }) {
  const history = study.clinical_history?.trim() || null
  const referrer = study.referring_clinician?.trim() || null
  if (!history && !referrer) return null
  const short = history ? clip(history, 90) : null
  return (
    <div data-testid="dash-clinical" className="mt-1 flex flex-col gap-0.5 text-xs text-slate-800">
      {history && short && !short.clipped && (
        <p>
          <span className="font-semibold">History:</span> {short.text}
        </p>
      )}
      {history && short?.clipped && (
        <details>
          <summary className="cursor-pointer">
            <span className="font-semibold">History:</span> {short.text} <span className="text-brand-800 underline">more</span>
          </summary>
          <p className="mt-1 whitespace-pre-wrap">{history}</p>
        </details>
      )}
      {referrer && (
        <p>
          <span className="font-semibold">Referred by:</span> {referrer}
        </p>
      )}
    </div>
  )
}

const REPORT_LABEL: Record<ReportStatus, string> = {
  waiting: 'Waiting',
  preliminary: 'Preliminary',
  final: 'Final',
  amended: 'Amended',
}

/** Where a delivered study's report stands: waiting (for how long), or its status and time. */
function ReportCell({ study }: { study: Study }) {
  const status = study.report_status
  if (!status) return <span className="text-slate-700">—</span>
  return (
    <div data-testid="dash-report" data-report={status}>
      <Pill state={status} label={REPORT_LABEL[status]} />
      {status === 'waiting' && study.first_delivered_at && (
        <span className="block text-xs text-slate-700">delivered {formatAgo(isoToMs(study.first_delivered_at))}</span>
      )}
      {status !== 'waiting' && study.time_to_report_seconds != null && (
        <span className="block text-xs text-slate-700">in {formatDuration(study.time_to_report_seconds)}</span>
      )}
    </div>
  )
}

/** A labelled filter: the empty value first (``all``), then (value, label) options. */
function FilterSelect(props: { id: string; label: string; all: string; value: string; options: Array<[string, string]>; onChange: (value: string) => void }) {
  return (
    <div>
      <label htmlFor={props.id} className="label">
        {props.label}
      </label>
      <select id={props.id} className="field py-2" value={props.value} onChange={(e) => props.onChange(e.target.value)}>
        <option value="">{props.all}</option>
        {props.options.map(([value, label]) => (
          <option key={value} value={value}>
            {label}
          </option>
        ))}
      </select>
    </div>
  )
}

const PAGE = 50
function Studies() {
  const [state, setState] = useState('')
  const [report, setReport] = useState('')
  const [offset, setOffset] = useState(0)
  const [query, setQuery] = useState('')
  const [q, setQ] = useState('')
  useEffect(() => {
    const t = setTimeout(() => {
      setQ(query.trim())
      setOffset(0)
    }, 300)
    return () => clearTimeout(t)
  }, [query])
  const load = useCallback(() => hub.studies({ limit: PAGE, offset, state, q, report }), [offset, state, q, report])
  const [data, error] = useLoad(load, 10_000)
  const [stats] = useLoad<Stats>(hub.stats, 60_000)
  const states = [...new Set(['receiving', 'committed', ...Object.keys(stats?.studies_by_state ?? {})])]
  return (
    <section aria-labelledby="st" className="flex flex-col gap-3">
      <div className="flex flex-wrap items-end justify-between gap-3">
        <h2 id="st" className="text-lg font-semibold">
          Studies {data ? <span className="text-sm font-normal text-slate-700">({data.total})</span> : null}
        </h2>
        <div className="flex flex-wrap items-end gap-3">
        <div>
          <label htmlFor="st-q" className="label">
            Search
          </label>
          <input
            id="st-q"
            type="search"
            className="field w-56 py-2"
            placeholder="CT, description, accession…"
            value={query}
            maxLength={64}
            onChange={(e) => setQuery(e.target.value)}
          />
        </div>
        <FilterSelect
          id="st-state"
          label="State"
          all="All"
          value={state}
          options={states.map((s) => [s, s])}
          onChange={(v) => {
            setState(v)
            setOffset(0)
          }}
        />
        <FilterSelect
          id="st-report"
          label="Report"
          all="Any"
          value={report}
          options={Object.entries(REPORT_LABEL)}
          onChange={(v) => {
            setReport(v)
            setOffset(0)
          }}
        />
        </div>
      </div>
      <ErrorBox error={error} />
      <Table
        testId="dash-studies-table"
        caption="Studies"
        head={['Study', 'Facility', 'Level', 'State', 'Images', 'Received', 'Destinations', 'Time to PACS', 'Report']}
        empty="No studies."
        stack
      >
        {(data?.studies ?? []).map((s: Study) => (
          <tr key={s.study_instance_uid} className={stackRow} data-testid="dash-study-row" data-state={s.state}>
            <td data-label="Study" className={`${stackCell} min-w-0 sm:max-w-72`}>
              <div className="min-w-0">
                {(s.modalities?.length || s.study_description || s.study_date) && (
                  <div className="font-medium" data-testid="dash-study-facts">
                    {[s.modalities?.join(', '), s.study_description, s.study_date].filter(Boolean).join(' · ')}
                  </div>
                )}
                <div className="truncate font-mono text-xs" title={s.study_instance_uid}>
                  {s.study_instance_uid}
                </div>
                <Clinical study={s} />
              </div>
            </td>
            <td data-label="Facility" className={stackCell}>
              {s.facility}
            </td>
            <td data-label="Level" className={stackCell}>
              {s.service_level === 'stat' ? <strong className="text-red-800">STAT</strong> : 'Routine'}
            </td>
            <td data-label="State" className={stackCell}>
              <Pill state={s.state} />
            </td>
            <td data-label="Images" className={`${stackCell} tabular-nums`}>
              {s.instance_count}
            </td>
            <td data-label="Received" className={stackCell}>
              {formatAgo(isoToMs(s.first_received_at))}
            </td>
            <td data-label="Destinations" className={stackCell}>
              <ul className="flex min-w-0 flex-col gap-1">
                {s.destinations.map((d) => (
                  <li key={d.name} className="break-words">
                    {d.name}: <Pill state={d.state} />
                    {d.attempts > 1 ? ` (${d.attempts} attempts)` : ''}
                    {d.last_error && d.state !== 'done' ? <span className="block text-xs text-red-800">{d.last_error}</span> : null}
                  </li>
                ))}
              </ul>
            </td>
            <td data-label="Time to PACS" className={`${stackCell} tabular-nums`}>
              {formatDuration(s.time_to_pacs_seconds)}
            </td>
            <td data-label="Report" className={stackCell}>
              <ReportCell study={s} />
            </td>
          </tr>
        ))}
      </Table>
      {data && data.total > PAGE && (
        <nav aria-label="Pages" className="flex items-center gap-3">
          <button className="btn-secondary" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>
            Previous
          </button>
          <span className="text-sm">
            {offset + 1}–{Math.min(offset + PAGE, data.total)} of {data.total}
          </span>
          <button className="btn-secondary" disabled={offset + PAGE >= data.total} onClick={() => setOffset(offset + PAGE)}>
            Next
          </button>
        </nav>
      )}
    </section>
  )
}

function DeadJobs() {
  const [data, error, reload] = useLoad(hub.deadJobs, 10_000)
  const [note, setNote] = useState<string | null>(null)
  const [busy, setBusy] = useState(false)
  async function act(fn: () => Promise<string>) {
    setBusy(true)
    try {
      setNote(await fn())
    } catch (e) {
      setNote(message(e))
    } finally {
      setBusy(false)
      reload()
    }
  }
  const jobs = data?.jobs ?? []
  return (
    <section aria-labelledby="dj" className="flex flex-col gap-3" data-testid="dash-dead-jobs">
      <div className="flex flex-wrap items-center justify-between gap-3">
        <h2 id="dj" className="text-lg font-semibold">
          Dead jobs {data ? <span className="text-sm font-normal text-slate-700">({data.total})</span> : null}
        </h2>
        <button className="btn-primary" disabled={busy || jobs.length === 0} onClick={() => void act(async () => {
          const r = await hub.retryDead()
          return r.retried.length === 1 ? '1 job queued again.' : `${r.retried.length} jobs queued again.`
        })}>
          Retry all dead jobs
        </button>
      </div>
      {note && <p role="status" className="text-sm">{note}</p>}
      <ErrorBox error={error} />
      <Table testId="dash-dead-jobs-table" caption="Dead forwarding jobs" head={['Job', 'Study', 'Destination', 'Attempts', 'Last error', 'Updated', '']} empty="No dead jobs." stack>
        {jobs.map((j: Job) => (
          <tr key={j.id} className={stackRow} data-testid="dash-dead-job">
            <td data-label="Job" className={`${stackCell} tabular-nums`}>
              {j.id}
            </td>
            <td data-label="Study" className={`${stackCell} min-w-0 sm:max-w-48`}>
              <span className="min-w-0 truncate font-mono text-xs" title={j.study_instance_uid}>
                {j.study_instance_uid}
              </span>
            </td>
            <td data-label="Destination" className={stackCell}>
              {j.destination}
            </td>
            <td data-label="Attempts" className={`${stackCell} tabular-nums`}>
              {j.attempts}
            </td>
            <td data-label="Last error" className={`${stackCell} min-w-0 break-words text-red-900 sm:max-w-80`}>
              <span className="min-w-0">{j.last_error ?? '–'}</span>
            </td>
            <td data-label="Updated" className={stackCell}>
              {formatAgo(isoToMs(j.updated_at))}
            </td>
            <td data-label="" className={`${stackCell} max-sm:before:hidden`}>
              <button className="btn-secondary min-h-10 px-3 text-sm" disabled={busy} aria-label={`Retry job ${j.id}`} onClick={() => void act(async () => (await hub.retryJob(j.id), `Job ${j.id} queued again.`))}>
                Retry
              </button>
            </td>
          </tr>
        ))}
      </Table>
    </section>
  )
}

export function Dashboard() {
  const [signedIn, setSignedIn] = useState(hasTokens())
  const [scope, setScope] = useState<string | null>(tokenScope())
  const [me, setMe] = useState<Me | null>(null)
  const [tab, setTab] = useState<Tab>(() => (location.hash.slice(1) as Tab) || 'overview')
  useEffect(
    () =>
      setSignedOutHandler(() => {
        setSignedIn(false)
        setScope(null)
        setMe(null)
      }),
    [],
  )
  useEffect(() => {
    if (!signedIn) return
    hub.me().then((m) => {
      setMe(m)
      if (m.scope) setScope(m.scope)
    }, () => undefined)
  }, [signedIn])
  // A role that needs a second factor the user has not set up gets a token that can only enroll one.
  const enrollOnly = signedIn && scope === ENROLL_SCOPE
  useEffect(() => {
    history.replaceState(null, '', `#${tab}`)
  }, [tab])

  const isAdmin = me?.role === 'admin'
  const tabs = TABS.filter((t) => !t.admin || isAdmin)
  const current = tabs.some((t) => t.id === tab) ? tab : 'overview'

  return (
    <div className="min-h-dvh">
      <header className="border-b border-slate-200 bg-white">
        <div className="mx-auto flex max-w-6xl flex-wrap items-center justify-between gap-2 px-4 py-3">
          <h1 className="text-lg font-bold text-brand-800">RelayPACS hub</h1>
          {signedIn && (
            <div className="flex items-center gap-3 text-sm">
              {me && (
                <span data-testid="dash-me">
                  {me.username} · {me.role}
                </span>
              )}
              <button className="btn-secondary min-h-10 px-3 text-sm" onClick={logout}>
                Sign out
              </button>
            </div>
          )}
        </div>
        {signedIn && !enrollOnly && (
          <nav className="mx-auto max-w-6xl px-4" aria-label="Views">
            {/* Wraps on a phone: every view stays in sight, none hidden off-screen. */}
            <div role="tablist" className="flex flex-wrap gap-x-1">
              {tabs.map((t) => (
                <button
                  key={t.id}
                  role="tab"
                  id={`tab-${t.id}`}
                  aria-selected={current === t.id}
                  aria-controls="panel"
                  data-testid={`dash-tab-${t.id}`}
                  className={`min-h-11 whitespace-nowrap border-b-3 px-3 text-sm font-semibold ${current === t.id ? 'border-brand-700 text-brand-800' : 'border-transparent text-slate-700 hover:text-slate-900'}`}
                  onClick={() => setTab(t.id)}
                >
                  {t.label}
                </button>
              ))}
            </div>
          </nav>
        )}
      </header>
      <main className="mx-auto max-w-6xl px-4 py-4">
        {!signedIn ? (
          <LoginForm
            onDone={(s) => {
              setScope(s)
              setSignedIn(true)
            }}
          />
        ) : enrollOnly ? (
          <EnrollOnly account={me?.username ?? null} onSignInAgain={logout} />
        ) : (
          <div id="panel" role="tabpanel" aria-labelledby={`tab-${current}`}>
            {current === 'overview' && <Overview />}
            {current === 'studies' && <Studies />}
            {current === 'analytics' && <Analytics />}
            {current === 'dead' && isAdmin && <DeadJobs />}
            {current === 'agents' && isAdmin && <HeldStudies />}
            {current === 'agents' && isAdmin && <Agents />}
            {current === 'users' && isAdmin && <Users me={me?.username ?? null} />}
            {current === 'security' && <Security account={me?.username ?? null} />}
          </div>
        )}
      </main>
    </div>
  )
}
