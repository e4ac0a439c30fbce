/** Pure decisions of the upload queue: what goes next, how long to wait. No I/O here. */
import { UNOWNED, type QBatch, type QFile } from './types'

export const BACKOFF_MS = [1_000, 3_000, 10_000, 30_000, 60_000, 120_000]

export function backoffDelay(attempts: number): number {
  return BACKOFF_MS[Math.min(Math.max(attempts - 1, 0), BACKOFF_MS.length - 1)]
}

/** STAT before routine, then oldest first. */
export function compareBatches(a: QBatch, b: QBatch): number {
  if (a.serviceLevel !== b.serviceLevel) return a.serviceLevel === 'stat' ? -1 : 1
  if (a.createdAt !== b.createdAt) return a.createdAt - b.createdAt
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0
}

/**
 * Shared devices: a record belongs to `owner` only when it says so. Nobody owns unowned records
 * (they are claimed first, see claimUnowned), and no owner (signed out) owns nothing.
 */
export function isOwnedBy(rec: { owner: string }, owner: string | null): boolean {
  return owner !== null && owner !== UNOWNED && rec.owner === owner
}

/** The owner's batches, and the owner's files of those batches: all the owner may see or send. */
export function ownedBy(batches: QBatch[], files: QFile[], owner: string | null): { batches: QBatch[]; files: QFile[] } {
  const mine = batches.filter((b) => isOwnedBy(b, owner))
  const ids = new Set(mine.map((b) => b.id))
  return { batches: mine, files: files.filter((f) => ids.has(f.batchId) && isOwnedBy(f, owner)) }
}

/** Records kept from before owners existed, given to `owner` (the first user to sign in after). */
export function claimUnowned(batches: QBatch[], files: QFile[], owner: string): { batches: QBatch[]; files: QFile[] } {
  if (owner === UNOWNED) return { batches: [], files: [] }
  return {
    batches: batches.filter((b) => !b.owner).map((b) => ({ ...b, owner })),
    files: files.filter((f) => !f.owner).map((f) => ({ ...f, owner })),
  }
}

/** Batches of `owner` that still need the agent to create them, in the order to create them. */
export function batchesToCreate(batches: QBatch[], now: number, owner: string | null): QBatch[] {
  return batches
    .filter((b) => isOwnedBy(b, owner) && b.state === 'pending' && b.serverId === null && b.nextAttemptAt <= now)
    .sort(compareBatches)
}

/**
 * Files of `owner` to start now: at most `concurrency - running.size`, STAT batches first then
 * oldest, never a file already running, uploaded, refused or failed, never before its retry time,
 * never a file (or a file of a batch) of someone else.
 */
export function filesToStart(
  batches: QBatch[],
  files: QFile[],
  running: ReadonlySet<string>,
  now: number,
  concurrency: number,
  owner: string | null,
): QFile[] {
  const free = concurrency - running.size
  if (free <= 0) return []
  const byId = new Map(batches.map((b) => [b.id, b]))
  const eligible = files.filter((f) => {
    const b = byId.get(f.batchId)
    return (
      b !== undefined &&
      isOwnedBy(b, owner) &&
      isOwnedBy(f, owner) &&
      b.serverId !== null &&
      b.state === 'open' &&
      f.state === 'queued' &&
      !running.has(f.id) &&
      f.nextAttemptAt <= now
    )
  })
  eligible.sort((x, y) => compareBatches(byId.get(x.batchId)!, byId.get(y.batchId)!) || x.order - y.order)
  return eligible.slice(0, free)
}

/** A batch is ready to be sent when it is open and none of its files still has to go up. */
export function batchReadyToSend(batch: QBatch, files: QFile[]): boolean {
  if (batch.state !== 'open' || batch.serverId === null) return false
  const mine = files.filter((f) => f.batchId === batch.id)
  return mine.length > 0 && mine.every((f) => f.state === 'uploaded' || f.state === 'refused')
}

/** The earliest time something of `owner` that is waiting (on backoff) becomes due, or null. */
export function nextWakeUp(allBatches: QBatch[], allFiles: QFile[], now: number, owner: string | null): number | null {
  const { batches, files } = ownedBy(allBatches, allFiles, owner)
  let t: number | null = null
  const consider = (at: number) => {
    if (at > now && (t === null || at < t)) t = at
  }
  for (const b of batches) if (b.state === 'pending' || b.state === 'open') consider(b.nextAttemptAt)
  const open = new Set(batches.filter((b) => b.state === 'open').map((b) => b.id))
  for (const f of files) if (f.state === 'queued' && open.has(f.batchId)) consider(f.nextAttemptAt)
  return t
}

export interface WaitingSummary {
  studies: number
  files: number
  bytes: number
}

/** What is still on this device (not yet at the agent). */
export function waitingOnDevice(batches: QBatch[], files: QFile[]): WaitingSummary {
  const ids = new Set<string>()
  let n = 0
  let bytes = 0
  for (const f of files) {
    if (f.state === 'queued' || f.state === 'uploading' || f.state === 'failed') {
      ids.add(f.batchId)
      n++
      bytes += Math.max(0, f.size - f.bytesSent)
    }
  }
  for (const b of batches) if (b.state === 'pending') ids.add(b.id)
  return { studies: ids.size, files: n, bytes }
}

export interface OthersWaiting {
  /** Studies of other users not yet fully handed to the agent. */
  studies: number
  /** How many other users they belong to. */
  users: number
}

/**
 * Work of other users still on this device (it goes on when they sign in). Counts only: nothing
 * about the studies themselves may be shown to whoever is signed in now.
 */
export function othersWaiting(batches: QBatch[], files: QFile[], owner: string | null): OthersWaiting {
  const unfinished = new Set<string>()
  for (const f of files) {
    if (f.state === 'queued' || f.state === 'uploading' || f.state === 'failed') unfinished.add(f.batchId)
  }
  const users = new Set<string>()
  let studies = 0
  for (const b of batches) {
    if (b.owner === owner && owner !== null && owner !== UNOWNED) continue
    if (b.state === 'pending' || b.state === 'open' || b.state === 'failed' || unfinished.has(b.id)) {
      studies++
      users.add(b.owner)
    }
  }
  return { studies, users: users.size }
}
