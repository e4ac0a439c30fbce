/** Uploads one file to the agent with tus (creation, PATCH, HEAD to resume, termination). */
import * as tus from 'tus-js-client'
import { QueueError, type QBatch, type QFile, type Uploader } from '../queue/types'
import { apiUrl, getToken } from './api'
import { getBlob } from './db'

export const DEFAULT_CHUNK_SIZE = 1024 * 1024
export const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000]

/** 1 MiB unless overridden (localStorage "relaypacs.chunkSize", in bytes) e.g. for tests. */
export function chunkSize(): number {
  try {
    const v = Number(localStorage.getItem('relaypacs.chunkSize'))
    if (Number.isFinite(v) && v >= 64 * 1024) return v
  } catch {
    // no storage
  }
  return DEFAULT_CHUNK_SIZE
}

function toQueueError(err: Error): QueueError {
  const res = (err as tus.DetailedError).originalResponse
  if (!res) return new QueueError('network', 'The agent could not be reached.')
  const status = res.getStatus()
  let code: string | undefined
  let detail = `The agent answered ${status}.`
  try {
    const body = JSON.parse(res.getBody() || '{}')
    const inner = typeof body.detail === 'object' && body.detail ? body.detail : body
    if (typeof inner.code === 'string') code = inner.code
    if (typeof inner.detail === 'string') detail = inner.detail
    else if (typeof inner.message === 'string') detail = inner.message
  } catch {
    const text = res.getBody()
    if (text && text.length < 300) detail = text
  }
  if (status === 401) return new QueueError('auth', detail, status, code)
  if (status === 413) return new QueueError('rejected', 'This file is larger than the agent accepts.', status, 'refused')
  if (status === 415 || status === 422 || code === 'refused' || code === 'not_dicom') {
    return new QueueError('rejected', detail, status, 'refused')
  }
  if (status >= 400 && status < 500 && status !== 404 && status !== 408 && status !== 409 && status !== 423 && status !== 429) {
    return new QueueError('rejected', detail, status, code)
  }
  return new QueueError('server', detail, status, code)
}

export const tusUploader: Uploader = {
  start(file: QFile, batch: QBatch, cb) {
    let upload: tus.Upload | null = null
    let aborted = false
    const promise = (async () => {
      const blob = await getBlob(file.id)
      if (!blob) {
        throw new QueueError('rejected', 'Its contents are no longer on this device. Pick the file again.', 0, 'gone')
      }
      if (aborted) return
      await new Promise<void>((resolve, reject) => {
        upload = new tus.Upload(blob, {
          endpoint: apiUrl('/uploads'),
          uploadUrl: file.uploadUrl,
          chunkSize: chunkSize(),
          retryDelays: RETRY_DELAYS,
          storeFingerprintForResuming: false, // Dexie keeps the uploadUrl, not tus's localStorage
          removeFingerprintOnSuccess: true,
          metadata: {
            filename: file.name,
            batch: batch.serverId ?? '',
            filetype: file.type || 'application/dicom',
          },
          // Only here: setting it again in onBeforeRequest would send "Bearer x, Bearer x".
          // A new sign-in restarts uploads (the queue pauses on 401), so the token is current.
          headers: { Authorization: `Bearer ${getToken() ?? ''}` },
          onUploadUrlAvailable: () => {
            if (upload?.url) cb.onUploadUrl(upload.url)
          },
          onProgress: (sent) => cb.onProgress(sent),
          onChunkComplete: (_size, accepted) => cb.onChunkComplete(accepted),
          onSuccess: () => resolve(),
          onError: (err) => reject(toQueueError(err)),
        })
        upload.start()
      })
    })()
    return {
      promise,
      abort: () => {
        aborted = true
        void (upload as tus.Upload | null)?.abort(false)
      },
    }
  },
}
