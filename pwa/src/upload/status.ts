/** What to show for a study: its stage and progress, from local queue state and the agent's view. */
import { plural } from '../lib/format'
import type { QBatch, QFile } from '../queue/types'
import type { ServerBatch, Stage } from './api'

export type ShownStage = 'device' | Stage

export const STAGE_ORDER: ShownStage[] = ['device', 'agent', 'sending', 'hub', 'pacs']

export const STAGE_LABEL: Record<ShownStage, string> = {
  device: 'On this device',
  agent: 'At the agent',
  sending: 'At the agent, sending to the hub',
  hub: 'At the hub',
  pacs: 'In the PACS',
}

/** The four steps shown to the user (sending is part of "at the agent"). */
export const STEPS: Array<{ stage: ShownStage; label: string }> = [
  { stage: 'device', label: 'On this device' },
  { stage: 'agent', label: 'At the agent' },
  { stage: 'hub', label: 'At the hub' },
  { stage: 'pacs', label: 'In the PACS' },
]

export interface StudyStatus {
  stage: ShownStage
  /** 0..100 */
  percent: number
  bytesDone: number
  bytesTotal: number
  progressLabel: string
  problems: string[]
  /** `message`: what happened and what to do, in words; `detail`: the agent's technical reason. */
  refused: Array<{ name: string; message: string; detail?: string }>
  waitingFiles: number
  /** Files of this study: picked (`entered`), in the PACS, refused; they add up once all is done. */
  counts: { entered: number; inPacs: number; refused: number }
  /** One sentence when some files were refused (null otherwise), for the study's page. */
  outcome: string | null
}

/** "Cut short …. Copy … again." from the agent's words; its technical message if it sent none. */
export function refusalWords(r: { reason: string; message: string; explanation?: string; what_to_do?: string }): string {
  if (r.explanation) {
    const said = r.explanation.charAt(0).toUpperCase() + r.explanation.slice(1)
    return `${said}. ${r.what_to_do ?? ''}`.trim()
  }
  return r.message || r.reason
}

export function stageOf(local: QBatch | undefined, files: QFile[], server: ServerBatch | undefined): ShownStage {
  if (local) {
    if (local.serverId === null || local.state === 'pending') return 'device'
    // Refused at /send: its files are at the agent all the same.
    if (local.state === 'failed' && files.every((f) => f.state === 'uploaded' || f.state === 'refused')) return 'agent'
    if (local.state === 'failed') return 'device'
    if (files.some((f) => f.state === 'queued' || f.state === 'uploading' || f.state === 'failed')) return 'device'
  }
  if (!server || server.studies.length === 0) return 'agent'
  let min = STAGE_ORDER.length - 1
  for (const s of server.studies) {
    const i = STAGE_ORDER.indexOf(s.stage)
    if (i >= 0 && i < min) min = i
  }
  return STAGE_ORDER[min]
}

/**
 * `direct`: the app sends straight to the hub (no agent): a study is on this device until it is
 * committed at the hub, then at the hub.
 */
export function studyStatus(local: QBatch | undefined, allFiles: QFile[], server: ServerBatch | undefined, direct = false): StudyStatus {
  const files = local ? allFiles.filter((f) => f.batchId === local.id) : []
  const stage: ShownStage = direct && local ? (local.state === 'sent' ? 'hub' : 'device') : stageOf(local, files, server)
  const peer = direct ? 'hub' : 'agent'
  const problems: string[] = []
  const refused: StudyStatus['refused'] = []
  for (const f of files) {
    if (f.state === 'refused') refused.push({ name: f.name, message: f.error ?? `The ${peer} refused this file.` })
  }
  for (const r of server?.refused ?? []) {
    if (!refused.some((x) => x.name === r.filename)) {
      refused.push({ name: r.filename, message: refusalWords(r), detail: r.explanation ? r.message || undefined : undefined })
    }
  }
  if (local?.state === 'failed' && local.error && local.serverId !== null) {
    // Refused at /send (the agent no longer knows it, or this account may not send): as said.
    problems.push(local.error)
  } else if (local?.state === 'failed' && local.error) {
    problems.push(`The ${peer} did not accept this study: ${local.error} Tap “Try again”, or remove it and start over.`)
  }
  const failed = files.filter((f) => f.state === 'failed')
  if (failed.length) {
    problems.push(
      `${failed.length} file${failed.length === 1 ? '' : 's'} could not be sent (${failed[0].error ?? 'error'}). Tap “Try again”.`,
    )
  }
  const retrying = files.filter((f) => f.state === 'queued' && f.error)
  if (retrying.length) problems.push(`Retrying: ${retrying[0].error}`)
  for (const s of server?.studies ?? []) {
    if (s.last_error && s.stage !== 'pacs') problems.push(`Delivery is retrying: ${s.last_error}`)
  }
  const waitingFiles = files.filter((f) => f.state === 'queued' || f.state === 'uploading' || f.state === 'failed').length

  let bytesDone = 0
  let bytesTotal = 0
  let progressLabel = ''
  if (stage === 'device') {
    for (const f of files) {
      if (f.state === 'refused') continue
      bytesTotal += f.size
      bytesDone += f.state === 'uploaded' ? f.size : Math.min(f.bytesSent, f.size)
    }
    if (!local?.serverId && bytesDone === 0) progressLabel = `Waiting to reach the ${peer}`
    else progressLabel = `Uploading to the ${peer}`
  } else if (stage === 'agent' || stage === 'sending') {
    for (const s of server?.studies ?? []) {
      bytesTotal += s.bytes_total
      bytesDone += s.bytes_sent
    }
    progressLabel = stage === 'agent' ? 'At the agent, waiting to send to the hub' : 'Sending to the hub'
  } else {
    for (const s of server?.studies ?? []) {
      bytesTotal += s.bytes_total
      bytesDone += s.bytes_total
    }
    progressLabel = stage === 'hub' ? 'At the hub, on its way to the PACS' : 'In the PACS'
  }
  let percent = bytesTotal > 0 ? Math.floor((bytesDone / bytesTotal) * 100) : 0
  if (stage === 'hub' || stage === 'pacs') percent = 100
  // Every file picked is either through (in the PACS: accepted or already held) or refused.
  const entered = local ? files.length : Math.max(server?.expected_files ?? 0, server?.files.received ?? 0)
  const through = (server?.files.accepted ?? 0) + (server?.files.duplicate ?? 0)
  const inPacs = stage === 'pacs' ? through : 0
  const counts = { entered, inPacs, refused: refused.length }
  let outcome: string | null = null
  if (refused.length > 0 && (stage === 'hub' || stage === 'pacs')) {
    const where = stage === 'pacs' ? 'in the PACS' : 'at the hub, on their way to the PACS'
    const notThere = stage === 'pacs' ? 'not in the PACS' : 'not sent'
    outcome =
      `${through} of ${plural(entered, 'file')} ${through === 1 ? 'is' : 'are'} ${where}; ` +
      `${refused.length} ${refused.length === 1 ? 'was' : 'were'} refused and ${refused.length === 1 ? 'is' : 'are'} ${notThere}. ` +
      `See below what happened and what to do, then send ${refused.length === 1 ? 'that file' : 'those files'} again as a new upload.`
    const label = stage === 'pacs' ? 'In the PACS' : 'At the hub'
    progressLabel = `${label}: ${through} of ${plural(entered, 'file')}, ${refused.length} refused`
    percent = entered > 0 ? Math.floor((through / entered) * 100) : 0
  }
  return { stage, percent, bytesDone, bytesTotal, progressLabel, problems, refused, waitingFiles, counts, outcome }
}

export interface HubBadgeState {
  kind: 'checking' | 'hub-online' | 'hub-offline' | 'agent-unreachable'
  text: string
  /** The hub, as far as this device can tell: false too when the agent cannot be reached. */
  hubReachable: boolean | null
  agentReachable: boolean | null
}

/**
 * The header badge. `online`: navigator.onLine; `agentReachable`: the latest GET /api/v1/info
 * answered (null: not asked yet); `hub`: what that answer said about the hub.
 */
export function hubBadge(online: boolean, agentReachable: boolean | null, hub: { reachable: boolean } | null): HubBadgeState {
  if (!online || agentReachable === false) {
    return { kind: 'agent-unreachable', text: 'Agent unreachable', hubReachable: false, agentReachable: false }
  }
  if (agentReachable === null || !hub) return { kind: 'checking', text: 'Checking…', hubReachable: null, agentReachable }
  if (hub.reachable) return { kind: 'hub-online', text: 'Hub online', hubReachable: true, agentReachable: true }
  return { kind: 'hub-offline', text: 'Hub offline — uploads wait at the agent', hubReachable: false, agentReachable: true }
}
