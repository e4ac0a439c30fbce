import { formatBytes, formatDicomDate, formatPersonName, plural } from '../lib/format'
import { queue } from './engine'
import { useQueue, useServerBatch } from './hooks'
import { isHub } from './target'
import { studyStatus } from './status'
import { ReportSection } from './ReportView'
import { StudyCard, studyUidsOf } from './StudyCard'
import { Alert } from './ui'

/** One study: `localId` for a batch queued on this device, or `serverId` for one known only to the agent. */
export function StudyPage({ localId, serverId }: { localId?: string; serverId?: string }) {
  const snap = useQueue()
  const local = localId ? snap.batches.find((b) => b.id === localId) : undefined
  const id = local?.serverId ?? serverId ?? null
  const files = local ? snap.files.filter((f) => f.batchId === local.id) : []
  const pre = studyStatus(local, files, undefined, isHub())
  const server = useServerBatch(pre.stage === 'device' || isHub() ? null : id, false)
  const st = studyStatus(local, files, server, isHub())
  const inPacs = st.stage === 'pacs'

  if (localId && !local) {
    return (
      <div className="flex flex-col gap-4">
        <Alert tone="info">This study is no longer on this device.</Alert>
        <a href="#/" className="btn-secondary self-start">
          Back to studies
        </a>
      </div>
    )
  }
  const canRetry = local && (local.state === 'failed' || files.some((f) => f.state === 'failed' || (f.state === 'queued' && f.error)))
  return (
    <div className="flex flex-col gap-4">
      <div className="flex items-center justify-between gap-3">
        <h2 className="text-xl font-semibold">Study</h2>
        <a href="#/" className="btn-secondary">
          Back
        </a>
      </div>
      <StudyCard local={local} files={snap.files} server={server} />
      {studyUidsOf(local, server).map((uid) => (
        <ReportSection key={uid} studyUid={uid} />
      ))}
      {st.outcome ? (
        <Alert tone="warn" testId="study-outcome">
          {st.outcome}
        </Alert>
      ) : (
        inPacs && <Alert tone="info">The study is in the PACS. Nothing more to do.</Alert>
      )}
      {st.problems.map((p, i) => (
        <Alert key={i} tone="warn">
          {p}
        </Alert>
      ))}
      {st.refused.length > 0 && (
        <section aria-labelledby="refused-title" className="card flex flex-col gap-2">
          <h3 id="refused-title" className="font-semibold text-red-900">
            Refused files ({st.refused.length})
          </h3>
          <p className="text-sm text-slate-700">These files were not sent. The rest of the study is not affected.</p>
          <ul className="flex flex-col gap-2">
            {st.refused.map((r) => (
              <li key={r.name} data-testid="refused-file" role="alert" className="rounded-lg bg-red-50 px-3 py-2 text-sm text-red-900">
                <strong>{r.name}</strong>: {r.message}
                {r.detail && (
                  <details className="mt-1 text-xs text-slate-700">
                    <summary>Technical detail for IT</summary>
                    {r.detail}
                  </details>
                )}
              </li>
            ))}
          </ul>
        </section>
      )}
      <section aria-labelledby="details-title" className="card">
        <h3 id="details-title" className="mb-2 font-semibold">
          Details
        </h3>
        <dl className="grid grid-cols-1 gap-2 text-sm sm:grid-cols-2">
          {local && (
            <>
              <Item k="Patient" v={`${formatPersonName(local.study.patientName)} (ID ${local.study.patientId || '–'})`} />
              <Item k="Study date" v={formatDicomDate(local.study.studyDate)} />
              <Item k="Modality" v={local.study.modality || '–'} />
              <Item k="Description" v={local.study.studyDescription || '–'} />
              <Item k="Images" v={`${plural(local.study.series, 'series', 'series')}, ${plural(local.study.instances, 'image')}, ${formatBytes(local.study.bytes)}`} />
              <Item k="On this device" v={st.waitingFiles ? `${plural(st.waitingFiles, 'file')} still to upload` : 'All files are at the agent'} />
            </>
          )}
          <Item k="Service level" v={(local?.serviceLevel ?? server?.service_level) === 'stat' ? 'STAT' : 'Routine'} />
          <Item k="Referring clinician" v={local?.referringClinician || server?.referring_clinician || '–'} />
          <Item k="Clinical history" v={local?.clinicalHistory || server?.clinical_history || '–'} />
          {server && (
            <Item
              k="At the agent"
              v={`${server.files.accepted} accepted, ${server.files.duplicate} already held, ${server.files.quarantined} refused, of ${server.expected_files} expected`}
            />
          )}
        </dl>
      </section>
      {local && (
        <div className="flex flex-wrap gap-3">
          {canRetry && (
            <button type="button" className="btn-primary" onClick={() => queue.retry(local.id)}>
              Try again
            </button>
          )}
          {(local.state === 'pending' || local.state === 'failed' || local.state === 'open' || inPacs) && (
            <button
              type="button"
              className="btn-danger"
              onClick={() => {
                const msg = inPacs || local.state === 'sent'
                  ? 'Remove this study from the list on this device? It stays in the PACS.'
                  : 'Stop sending this study and remove it from this device?'
                if (confirm(msg)) void queue.remove(local.id).then(() => (location.hash = '#/'))
              }}
            >
              {inPacs ? 'Remove from this list' : 'Cancel this study'}
            </button>
          )}
        </div>
      )}
    </div>
  )
}

function Item({ k, v }: { k: string; v: string }) {
  return (
    <div>
      <dt className="text-slate-600">{k}</dt>
      <dd className="whitespace-pre-wrap break-words">{v}</dd>
    </div>
  )
}
