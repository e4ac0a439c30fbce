import { useState } from 'react'
import { enablePush, needsHomeScreen, openDocument, pushSupported, STATUS_LABEL, useReports, useStudyReport, type ReportStatus } from './reports'
import { Alert } from './ui'

const TONE: Record<ReportStatus, string> = {
  preliminary: 'bg-amber-100 text-amber-950 border-amber-400',
  final: 'bg-emerald-50 text-emerald-900 border-emerald-500',
  amended: 'bg-violet-50 text-violet-900 border-violet-500',
}

/** "Report ready · Final" on a study card, when the agent holds a report of the study. */
export function ReportBadge({ studyUids }: { studyUids: string[] }) {
  const { byStudy } = useReports()
  const found = studyUids.map((u) => byStudy.get(u)).find(Boolean)
  if (!found) return null
  const st = found.study_status
  return (
    <span data-testid="report-badge" data-status={st} className={`inline-flex w-fit items-center rounded-full border px-2.5 py-1 text-xs font-semibold ${TONE[st]}`}>
      Report ready · {STATUS_LABEL[st]}
    </span>
  )
}

/** The report of one study: status, text (SR rendered as text), the PDF, earlier versions. */
export function ReportSection({ studyUid }: { studyUid: string }) {
  const { report, error } = useStudyReport(studyUid)
  const [openError, setOpenError] = useState<string | null>(null)
  if (!report) {
    return error ? <Alert tone="warn">The report could not be loaded: {error}</Alert> : null
  }
  const older = report.reports.filter((r) => r.id !== report.report_id && r.id !== report.document_report_id)
  const open = (path: string) => {
    setOpenError(null)
    openDocument(path).catch((e) => setOpenError(e instanceof Error ? e.message : String(e)))
  }
  return (
    <section aria-labelledby="report-title" className="card flex flex-col gap-3" data-testid="report" data-status={report.status}>
      <div className="flex flex-wrap items-center justify-between gap-2">
        <h3 id="report-title" className="font-semibold">
          {report.title || 'Report'}
        </h3>
        <span data-testid="report-status" className={`rounded-full border px-2.5 py-1 text-xs font-semibold ${TONE[report.status]}`}>
          {STATUS_LABEL[report.status]}
        </span>
      </div>
      {report.text && (
        <pre data-testid="report-text" className="whitespace-pre-wrap break-words font-sans text-sm leading-relaxed">
          {report.text}
        </pre>
      )}
      {report.document && (
        <button type="button" className="btn-secondary self-start" data-testid="report-pdf" onClick={() => open(report.document!)}>
          Open the PDF report
        </button>
      )}
      {openError && <Alert tone="warn">{openError}</Alert>}
      {older.length > 0 && (
        <details>
          <summary className="cursor-pointer text-sm text-slate-700">Earlier versions ({older.length})</summary>
          <ul className="mt-2 flex flex-col gap-2">
            {older.map((r) => (
              <li key={r.id} className="rounded-lg bg-slate-50 p-2 text-sm" data-testid="report-older">
                <p className="font-medium">
                  {r.title} · {STATUS_LABEL[r.status]}
                </p>
                {r.text && <pre className="whitespace-pre-wrap break-words font-sans">{r.text}</pre>}
                {r.document && (
                  <button type="button" className="btn-secondary mt-1" onClick={() => open(r.document!)}>
                    Open the PDF
                  </button>
                )}
              </li>
            ))}
          </ul>
        </details>
      )}
    </section>
  )
}

/** The notification list: the latest report of each study, newest first. */
export function ReportList() {
  const { list } = useReports()
  if (list.length === 0) return null
  return (
    <section aria-labelledby="reports-title" className="card flex flex-col gap-2" data-testid="report-list">
      <h3 id="reports-title" className="font-semibold">
        Reports
      </h3>
      <ul className="flex flex-col gap-1">
        {list.slice(0, 10).map((r) => (
          <li key={r.id}>
            <a href={`#/report/${encodeURIComponent(r.study_instance_uid)}`} data-testid="report-notification" data-status={r.study_status} className="flex justify-between gap-2 rounded-lg px-2 py-1.5 hover:bg-slate-50">
              <span className="truncate">{r.title}</span>
              <span className="shrink-0 text-sm text-slate-700">{STATUS_LABEL[r.study_status]}</span>
            </a>
          </li>
        ))}
      </ul>
    </section>
  )
}

export function ReportPage({ studyUid }: { studyUid: string }) {
  const { byStudy } = useReports()
  return (
    <div className="flex flex-col gap-4">
      <div className="flex items-center justify-between gap-3">
        <h2 className="text-xl font-semibold">Report</h2>
        <a href="#/" className="btn-secondary">
          Back
        </a>
      </div>
      {!byStudy.has(studyUid) && <Alert tone="info">There is no report for this study at the agent yet.</Alert>}
      <ReportSection studyUid={studyUid} />
    </div>
  )
}

/** "Notify me when a report arrives": asked only when the user taps it. */
export function PushToggle() {
  const [state, setState] = useState<'idle' | 'busy' | 'on' | 'error'>(
    pushSupported() && Notification.permission === 'granted' ? 'on' : 'idle',
  )
  const [error, setError] = useState('')
  if (!pushSupported()) return null
  if (needsHomeScreen()) {
    return (
      <p className="text-sm text-slate-700" data-testid="push-ios-note">
        To get report notifications on iPhone or iPad, add RelayPACS to the Home Screen (Share, then Add to Home Screen) and open it from there.
      </p>
    )
  }
  if (state === 'on') return <p className="text-sm text-slate-700" data-testid="push-on">Notifications are on for new reports.</p>
  return (
    <div className="flex flex-col gap-1">
      <button
        type="button"
        className="btn-secondary self-start"
        data-testid="enable-push"
        disabled={state === 'busy'}
        onClick={() => {
          setState('busy')
          enablePush()
            .then(() => setState('on'))
            .catch((e) => {
              setError(e instanceof Error ? e.message : String(e))
              setState('error')
            })
        }}
      >
        Notify me when a report arrives
      </button>
      {state === 'error' && <p className="text-sm text-amber-900">{error}</p>}
    </div>
  )
}
