/**
 * A small tus 1.0 client for uploads straight to the hub: creation (POST), HEAD for the offset,
 * PATCH in chunks each with `Upload-Checksum: sha256 <base64>` (the hub requires it on every
 * PATCH; tus-js-client does not send it), retries with backoff on network errors and 5xx, and
 * resume from a stored upload URL (after a reload: HEAD says where to go on).
 */
import { createSHA256 } from 'hash-wasm'
import { QueueError } from '../queue/types'

export const TUS_VERSION = '1.0.0'
export const HUB_CHUNK_SIZE = 1024 * 1024
export const HUB_RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000]

export interface TusOptions {
  endpoint: string
  /** Where a previous attempt created it (resume), or null. */
  uploadUrl: string | null
  metadata: Record<string, string>
  /** Authorization etc., asked before every request (the access token may have been refreshed). */
  headers: () => Promise<Record<string, string>>
  chunkSize?: number
  retryDelays?: number[]
  signal?: AbortSignal
  fetch?: typeof fetch
  sleep?: (ms: number) => Promise<void>
  onUploadUrl?: (url: string) => void
  /** Bytes the hub has acknowledged. */
  onProgress?: (offset: number, length: number) => void
}

function b64(bytes: Uint8Array): string {
  let s = ''
  for (const b of bytes) s += String.fromCharCode(b)
  return btoa(s)
}

export function encodeMetadata(meta: Record<string, string>): string {
  return Object.entries(meta)
    .map(([k, v]) => `${k} ${b64(new TextEncoder().encode(v))}`)
    .join(',')
}

export async function checksumHeader(data: Uint8Array): Promise<string> {
  const h = await createSHA256()
  h.init()
  h.update(data)
  return `sha256 ${b64(h.digest('binary'))}`
}

/** An HTTP answer that is not what tus expects, as the queue understands it. */
async function httpError(res: Response): Promise<QueueError> {
  let code: string | undefined
  let detail = `The hub answered ${res.status}.`
  try {
    const body = await res.json()
    const inner = body && typeof body.detail === 'object' && body.detail !== null ? body.detail : body
    if (typeof inner.code === 'string') code = inner.code
    if (typeof inner.detail === 'string') detail = inner.detail
  } catch {
    // not JSON
  }
  if (res.status === 401) return new QueueError('auth', detail, 401, code)
  if (res.status === 408 || res.status === 423 || res.status === 429 || res.status >= 500) return new QueueError('server', detail, res.status, code)
  return new QueueError('rejected', detail, res.status, code)
}

class Gone extends Error {}

export async function tusUpload(blob: Blob, o: TusOptions): Promise<void> {
  const f = o.fetch ?? ((...a: Parameters<typeof fetch>) => fetch(...a))
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)))
  const delays = o.retryDelays ?? HUB_RETRY_DELAYS
  const chunk = o.chunkSize ?? HUB_CHUNK_SIZE
  const length = blob.size
  let url = o.uploadUrl
  let failures = 0

  const call = async (input: string, init: RequestInit): Promise<Response> => {
    if (o.signal?.aborted) throw new QueueError('network', 'aborted')
    const headers = { 'Tus-Resumable': TUS_VERSION, ...(await o.headers()), ...(init.headers as Record<string, string>) }
    return f(input, { ...init, headers, cache: 'no-store', signal: o.signal })
  }

  const create = async (): Promise<string> => {
    const res = await call(o.endpoint, {
      method: 'POST',
      headers: { 'Upload-Length': String(length), 'Upload-Metadata': encodeMetadata(o.metadata) },
    })
    if (res.status !== 201) throw await httpError(res)
    const loc = res.headers.get('Location')
    if (!loc) throw new QueueError('server', 'The hub created the upload but did not say where.')
    const abs = new URL(loc, o.endpoint).href
    o.onUploadUrl?.(abs)
    return abs
  }

  const head = async (u: string): Promise<number> => {
    const res = await call(u, { method: 'HEAD' })
    if (res.status === 404 || res.status === 410 || res.status === 403) throw new Gone()
    if (!res.ok) throw await httpError(res)
    const off = Number(res.headers.get('Upload-Offset'))
    if (!Number.isFinite(off) || off < 0) throw new QueueError('server', 'The hub did not say how much it holds.')
    return off
  }

  for (;;) {
    try {
      let offset: number
      if (url) {
        try {
          offset = await head(url)
        } catch (e) {
          if (!(e instanceof Gone)) throw e
          url = await create() // expired or removed at the hub: start this one again
          offset = 0
        }
      } else {
        url = await create()
        offset = 0
      }
      o.onProgress?.(offset, length)
      while (offset < length) {
        const data = new Uint8Array(await blob.slice(offset, Math.min(offset + chunk, length)).arrayBuffer())
        const res = await call(url, {
          method: 'PATCH',
          headers: {
            'Content-Type': 'application/offset+octet-stream',
            'Upload-Offset': String(offset),
            'Upload-Checksum': await checksumHeader(data),
          },
          body: data,
        })
        if (res.status === 409 || res.status === 460) {
          // Offset or checksum mismatch: ask the hub where it stands and go on from there (a
          // few times: bytes damaged on every try, e.g. by a proxy, end as an error).
          if (failures >= delays.length) throw new QueueError('server', `The hub refused the bytes sent (${res.status}) again and again.`, res.status)
          await sleep(delays[failures++])
          offset = await head(url)
          continue
        }
        if (res.status === 404 || res.status === 410) throw new Gone()
        if (res.status !== 204) throw await httpError(res)
        offset = Number(res.headers.get('Upload-Offset') ?? offset + data.length)
        failures = 0
        o.onProgress?.(offset, length)
      }
      return
    } catch (e) {
      if (o.signal?.aborted) throw new QueueError('network', 'aborted')
      if (e instanceof Gone) {
        url = null
        if (failures++ >= delays.length) throw new QueueError('server', 'The hub keeps losing this upload.')
        continue
      }
      const err = e instanceof QueueError ? e : new QueueError('network', 'The hub could not be reached.')
      if (err.kind === 'auth' || err.kind === 'rejected') throw err
      if (failures >= delays.length) throw err
      await sleep(delays[failures++])
    }
  }
}
