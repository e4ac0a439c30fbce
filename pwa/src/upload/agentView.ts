/** The Agent page's words: pure helpers over GET /api/v1/status and GET /api/v1/quarantine. */
import { formatAgo, formatBytes, plural } from '../lib/format'
import type { components } from './agent-api'

// The agent's answers, generated from its LAN API models (agent-api.ts, `make docs`).
type Schemas = components['schemas']
/** instances_by_state: spooled | uploaded | refused; studies_by_state: receiving | committed | delivered. */
export type AgentTotals = Schemas['AgentTotals']
/** GET /status (admin); `reasons`: words for each quarantine reason in the totals. */
export type AgentReport = Schemas['AgentReport']
/** An open quarantine entry (quarantined_at in unix s), its reason in words. */
export type QuarantineEntry = Schemas['QuarantineEntry']
export type QuarantineList = Schemas['QuarantineList']
/** A reason code in plain words, as the agent sends them (one table with its CLI). */
export type ReasonWords = Schemas['ReasonWords']

/** `not_dicom` → "Not a DICOM file" from the agent's words; an unknown code as it is. */
export function reasonLabel(code: string, words?: Record<string, ReasonWords> | null): string {
  return words?.[code]?.label ?? code
}

/** `folder:inbox` → "Folder “inbox”", `pwa:nurse` → "Phone upload by nurse", `dimse:CT1` → "Scanner CT1 (DICOM send)". */
export function sourceLabel(source: string | null | undefined): string {
  if (!source) return 'Unknown source'
  const i = source.indexOf(':')
  const kind = i < 0 ? source : source.slice(0, i)
  const name = i < 0 ? '' : source.slice(i + 1)
  switch (kind) {
    case 'folder':
      return name ? `Folder “${name}”` : 'Watched folder'
    case 'pwa':
      return name ? `Phone upload by ${name}` : 'Phone upload'
    case 'dimse':
      return name ? `Scanner ${name} (DICOM send)` : 'DICOM send'
    case 'zip':
      return name ? `Zip “${name}”` : 'Zip file'
    case 'media':
      return name ? `CD/DVD or USB “${name}”` : 'CD/DVD or USB'
    case 'import':
      return name ? `Imported by IT from “${name}”` : 'Imported by IT'
    case 'released':
      return 'Released from quarantine'
    case 'hub':
      return 'From the hub'
    default:
      return source
  }
}

const sum = (m: Record<string, number> | null | undefined) => Object.values(m ?? {}).reduce((a, b) => a + (Number(b) || 0), 0)

export interface Accounting {
  /** Files that came in: images kept + duplicates + quarantined. */
  received: number
  atHub: number
  waiting: number
  refusedByHub: number
  duplicates: number
  quarantined: number
  /** The per-state and per-reason counts add up to the totals. */
  balanced: boolean
  sentence: string
}

/** Where every file that came in is now, in one sentence, and whether the counts add up. */
export function accounting(t: AgentTotals): Accounting {
  const by = t.instances_by_state ?? {}
  const atHub = by.uploaded ?? 0
  const waiting = by.spooled ?? 0
  const refusedByHub = by.refused ?? 0
  const other = sum(by) - atHub - waiting - refusedByHub
  const received = t.instances + t.duplicates + t.quarantined
  const balanced = sum(by) === t.instances && sum(t.quarantine_reasons) === t.quarantined
  const parts = [`${atHub} at the hub`, `${waiting} waiting at the agent`]
  if (refusedByHub) parts.push(`${refusedByHub} refused by the hub (kept at the agent)`)
  if (other) parts.push(`${other} in another state`)
  parts.push(`${plural(t.duplicates, 'duplicate')} (already held)`, `${t.quarantined} in quarantine`)
  const head = `${plural(received, 'file')} came in: ${parts.join(', ')}.`
  const tail = balanced ? ' Every file is accounted for.' : ' The counts do not add up: check the agent with `relaypacs-agent status`.'
  return { received, atHub, waiting, refusedByHub, duplicates: t.duplicates, quarantined: t.quarantined, balanced, sentence: head + tail }
}

export const STUDY_STATES: Array<{ state: string; label: string }> = [
  { state: 'receiving', label: 'Receiving' },
  { state: 'committed', label: 'Sent to the hub' },
  { state: 'delivered', label: 'Delivered' },
]

/** Quarantine reasons, most frequent first, in words. */
export function reasonRows(
  reasons: Record<string, number> | null | undefined,
  words?: Record<string, ReasonWords> | null,
): Array<{ code: string; label: string; n: number }> {
  return Object.entries(reasons ?? {})
    .map(([code, n]) => ({ code, label: reasonLabel(code, words), n }))
    .sort((a, b) => b.n - a.n || a.label.localeCompare(b.label))
}

/** "Hub reachable · last contact 2 min ago". `now` in ms. */
export function hubContact(hub: AgentReport['hub'] | null | undefined, now = Date.now()): { ok: boolean; text: string } {
  const last = hub?.last_contact_at ? formatAgo(hub.last_contact_at * 1000, now) : 'never'
  const ok = !!hub?.reachable
  return { ok, text: `${ok ? 'Hub reachable' : 'Hub not reachable'} · last contact ${last}` }
}

export function diskSummary(disk: AgentReport['disk']): { warn: boolean; text: string } {
  if (!disk || disk.free_bytes === undefined) return { warn: false, text: 'Not known' }
  const text = `${formatBytes(disk.free_bytes)} free (reserve ${formatBytes(disk.reserve_bytes ?? 0)})`
  return disk.refusing
    ? { warn: true, text: `${text}. Below the reserve: the agent refuses new files until space is freed.` }
    : { warn: false, text }
}

export function uploadsSummary(lan: AgentReport['lan']): string {
  if (!lan || lan.open_uploads === 0) return 'None right now'
  return `${plural(lan.open_uploads, 'file')} on the way (${formatBytes(lan.bytes_expected)} to go)`
}
