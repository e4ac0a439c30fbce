export type ServiceLevel = 'stat' | 'routine'

/**
 * pending: waiting on this device for the agent to create it (no server id yet)
 * open: created at the agent, files going up
 * sent: every file is at the agent and the agent was told to send the study now
 * failed: the agent refused to create it, or refused to send it (404: it no longer knows the batch;
 *         403: this account may not send); permanent, the user can retry or remove it
 */
export type BatchState = 'pending' | 'open' | 'sent' | 'failed'

/** queued also covers "waiting to retry" (see nextAttemptAt and error). */
export type FileState = 'queued' | 'uploading' | 'uploaded' | 'refused' | 'failed'

export interface StudySummary {
  studyInstanceUid: string
  patientName: string
  patientId: string
  studyDate: string
  studyDescription: string
  modality: string
  accessionNumber: string
  series: number
  instances: number
  bytes: number
}

/** Owner of records made before owners were kept: claimed by the first user who signs in. */
export const UNOWNED = ''

export interface QBatch {
  id: string // local id
  /** Username of who queued it on this device; only that user sees it and only their token sends it. */
  owner: string
  serverId: string | null
  serviceLevel: ServiceLevel
  clinicalHistory: string
  referringClinician: string
  label: string
  createdAt: number // ms
  state: BatchState
  expectedFiles: number
  study: StudySummary
  attempts: number
  nextAttemptAt: number
  error: string | null
  sentAt: number | null
}

export interface QFile {
  id: string
  batchId: string // local batch id
  /** Same as its batch's owner. */
  owner: string
  order: number
  name: string
  size: number
  type: string
  sopInstanceUid: string
  state: FileState
  uploadUrl: string | null
  bytesSent: number
  attempts: number
  nextAttemptAt: number
  error: string | null
}

/** How a request failed, which decides what the queue does next. */
export type FailureKind =
  | 'network' // the agent could not be reached: pause everything, probe
  | 'auth' // 401: the session is over; pause until the user signs in again
  | 'rejected' // a 4xx about this file or batch: do not retry by itself
  | 'server' // a 5xx or something odd: retry later with backoff

export class QueueError extends Error {
  constructor(
    readonly kind: FailureKind,
    message: string,
    readonly status?: number,
    readonly code?: string,
  ) {
    super(message)
  }
}

export interface UploadCallbacks {
  onProgress(bytesSent: number): void
  onUploadUrl(url: string): void
  onChunkComplete(bytesAccepted: number): void
}

export interface UploadHandle {
  promise: Promise<void>
  abort(): void
}

export interface Uploader {
  start(file: QFile, batch: QBatch, cb: UploadCallbacks): UploadHandle
}

export interface QueueApi {
  createBatch(batch: QBatch): Promise<string>
  sendBatch(serverId: string): Promise<void>
  /** true when the agent answers (GET /api/v1/info). */
  probe(): Promise<boolean>
}

export interface QueueStore {
  load(): Promise<{ batches: QBatch[]; files: QFile[] }>
  /** Persist a new batch with its files and their contents. */
  addBatch(batch: QBatch, files: Array<{ file: QFile; blob: Blob }>): Promise<void>
  saveBatch(batch: QBatch): Promise<void>
  saveFile(file: QFile): Promise<void>
  /** The file is at the agent: persist that and drop its contents from the device. */
  fileUploaded(file: QFile): Promise<void>
  removeBatch(batchId: string): Promise<void>
  /**
   * Calls back with everything stored whenever it changes, in this tab or another one (Dexie
   * liveQuery); returns an unsubscribe function. How a tab that does not run the queue shows it.
   */
  watch?(cb: (data: { batches: QBatch[]; files: QFile[] }) => void): () => void
}

export interface Clock {
  now(): number
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
}

export interface Network {
  isOnline(): boolean
  /** Calls back on online/offline changes; returns an unsubscribe function. */
  subscribe(cb: () => void): () => void
}

/**
 * Only one tab runs the queue (several would create duplicate batches and upload files twice).
 * `run` is called once the lock is held; the lock is held until the promise it returns settles.
 * Aborting `signal` drops a request not granted yet. In the browser: navigator.locks.request.
 */
export type QueueLock = (run: () => Promise<void>, signal: AbortSignal) => Promise<unknown>

/** What a tab that does not run the queue asks of the one that does. */
export type QueueMessage =
  | { type: 'retry'; batchId: string }
  | { type: 'remove'; batchId: string }
  | { type: 'kick' }
  | { type: 'authenticated' }

/** Messages between tabs (BroadcastChannel in the browser; a sender does not hear itself). */
export interface QueueChannel {
  post(msg: QueueMessage): void
  subscribe(cb: (msg: QueueMessage) => void): () => void
}
