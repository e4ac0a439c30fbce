import { formatBytes, formatDicomDate, formatPersonName, plural } from '../lib/format'
import type { QBatch, QFile } from '../queue/types'
import type { ServerBatch } from './api'
import { HubProgress } from './HubProgress'
import { ReportBadge } from './ReportView'
import { STAGE_LABEL, studyStatus } from './status'
import { isHub } from './target'
import { ProgressBar, StageSteps } from './ui'

export interface CardProps {
  local?: QBatch
  files: QFile[]
  server?: ServerBatch
  href?: string
}

export function titleOf(local?: QBatch, server?: ServerBatch): string {
  if (local) {
    const s = local.study
    return [s.studyDescription || s.modality || 'Study', formatDicomDate(s.studyDate)].filter(Boolean).join(' · ')
  }
  return server?.label || 'Study'
}

export function studyUidsOf(local?: QBatch, server?: ServerBatch): string[] {
  const uids = new Set<string>()
  if (local?.study.studyInstanceUid) uids.add(local.study.studyInstanceUid)
  for (const s of server?.studies ?? []) uids.add(s.study_instance_uid)
  return [...uids]
}

export function StudyCard({ local, files, server, href }: CardProps) {
  const st = studyStatus(local, files, server, isHub())
  const stat = (local?.serviceLevel ?? server?.service_level) === 'stat'
  const title = titleOf(local, server)
  const id = local?.id ?? server?.id ?? ''
  return (
    <article data-testid="study-card" data-stage={st.stage} data-batch-id={local?.serverId ?? server?.id ?? ''} className="card flex flex-col gap-3" aria-labelledby={`t-${id}`}>
      <div className="flex items-start justify-between gap-3">
        <div className="min-w-0">
          <h3 id={`t-${id}`} className="truncate text-base font-semibold">
            {href ? (
              <a href={href} className="underline-offset-2 hover:underline">
                {title}
              </a>
            ) : (
              title
            )}
          </h3>
          {local && (
            <p className="truncate text-sm text-slate-700">
              {formatPersonName(local.study.patientName)} · ID {local.study.patientId || '–'}
            </p>
          )}
          <p className="text-sm text-slate-700">
            {local
              ? `${plural(local.study.instances, 'image')} · ${formatBytes(local.study.bytes)}`
              : server
                ? `${plural(server.expected_files, 'file')}`
                : ''}
          </p>
        </div>
        {stat && <span className="shrink-0 rounded-full bg-red-700 px-2.5 py-1 text-xs font-bold text-white">STAT</span>}
      </div>
      <ReportBadge studyUids={studyUidsOf(local, server)} />
      <StageSteps stage={st.stage} />
      <div className="flex flex-col gap-1">
        <div className="flex justify-between gap-2 text-sm">
          <span data-testid="study-stage">{st.progressLabel || STAGE_LABEL[st.stage]}</span>
          <span className="tabular-nums text-slate-700">
            {st.bytesTotal > 0 && st.stage !== 'pacs' && st.stage !== 'hub'
              ? `${formatBytes(st.bytesDone)} of ${formatBytes(st.bytesTotal)}`
              : `${st.percent}%`}
          </span>
        </div>
        <ProgressBar value={st.percent} label={`${title}: ${st.progressLabel}`} testId="study-progress" />
      </div>
      {local && isHub() && <HubProgress local={local} files={files} />}
      {st.refused.length > 0 && (
        <p className="text-sm text-red-800">{plural(st.refused.length, 'file')} refused. Open the study for details.</p>
      )}
      {st.problems.length > 0 && <p className="text-sm text-amber-900">{st.problems[0]}</p>}
    </article>
  )
}
