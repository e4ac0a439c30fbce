/** Pure decisions of the upload queue: what goes next, how long to wait. No I/O here. */
import type { QBatch, QFile } from './types'

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

/** Batches that still need the agent to create them, in the order to create them. */
export function batchesToCreate(batches: QBatch[], now: number): QBatch[] {
  return batches
    .filter((b) => b.state === 'pending' && b.serverId === null && b.nextAttemptAt <= now)
    .sort(compareBatches)
}

/**
 * Files to start now: at most `concurrency - running.size`, STAT batches first then oldest,
 * never a file already running, uploaded, refused or failed, never before its retry time.
 */
export function filesToStart(
  batches: QBatch[],
  files: QFile[],
  running: ReadonlySet<string>,
  now: number,
  concurrency: number,
): QFile[] {
  const free = concurrency - running.size
  if (free <= 0) return []
  const byId = new Map(batches.map((b) => [b.id, b]))
  const eligible = files.filter((f) => {
    const b = byId.get(f.batchId)
    return (
      b !== undefined &&
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

/** The earliest time something that is waiting (on backoff) becomes due, or null. */
export function nextWakeUp(batches: QBatch[], files: QFile[], now: number): number | null {
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
