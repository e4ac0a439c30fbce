import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { checksumHeader, encodeMetadata, tusUpload } from './hubTus'

interface Call {
  method: string
  url: string
  headers: Record<string, string>
  body?: Uint8Array
}

/** A tus server in memory: `held` bytes already there; `failPatch`: PATCHes that throw (network). */
function server(held: number, opts: { failPatch?: number[]; headStatus?: number } = {}) {
  const calls: Call[] = []
  let offset = held
  let patches = 0
  const fetch = async (url: string | URL | Request, init?: RequestInit) => {
    const c: Call = { method: init!.method!, url: String(url), headers: init!.headers as Record<string, string>, body: init!.body as Uint8Array }
    calls.push(c)
    if (c.method === 'HEAD') {
      if (opts.headStatus) return new Response(null, { status: opts.headStatus })
      return new Response(null, { status: 200, headers: { 'Upload-Offset': String(offset) } })
    }
    if (c.method === 'POST') {
      offset = 0
      return new Response(null, { status: 201, headers: { Location: '/api/v1/uploads/new' } })
    }
    if (opts.failPatch?.includes(patches++)) throw new TypeError('Failed to fetch')
    if (Number(c.headers['Upload-Offset']) !== offset) return new Response(null, { status: 409 })
    offset += c.body!.length
    return new Response(null, { status: 204, headers: { 'Upload-Offset': String(offset) } })
  }
  return { calls, fetch: fetch as typeof globalThis.fetch, offset: () => offset }
}

const data = new Uint8Array(10_000).map((_, i) => i % 251)
const b64sha = (b: Uint8Array) => createHash('sha256').update(b).digest('base64')
const base = { endpoint: 'http://hub/api/v1/uploads', metadata: { kind: 'relaypacs-segment', study: '1.2' }, headers: async () => ({ Authorization: 'Bearer t' }), sleep: async () => {} }

describe('hub tus client', () => {
  it('resumes at the offset HEAD gives and sends a SHA-256 Upload-Checksum with every PATCH', async () => {
    const s = server(4096)
    const progress: number[] = []
    await tusUpload(new Blob([data]), { ...base, uploadUrl: 'http://hub/api/v1/uploads/abc', chunkSize: 3000, fetch: s.fetch, onProgress: (o) => progress.push(o) })
    expect(s.calls[0].method).toBe('HEAD')
    const patches = s.calls.filter((c) => c.method === 'PATCH')
    expect(patches.map((p) => Number(p.headers['Upload-Offset']))).toEqual([4096, 7096])
    for (const p of patches) {
      expect(p.headers['Upload-Checksum']).toBe(`sha256 ${b64sha(p.body!)}`)
      expect(p.headers['Tus-Resumable']).toBe('1.0.0')
      expect(p.headers.Authorization).toBe('Bearer t')
      expect(p.headers['Content-Type']).toBe('application/offset+octet-stream')
    }
    expect(Buffer.from(patches[0].body!)).toEqual(Buffer.from(data.slice(4096, 7096)))
    expect(progress.at(-1)).toBe(10_000)
    expect(s.offset()).toBe(10_000)
  })

  it('creates the upload when there is none (metadata base64), tells where it is', async () => {
    const s = server(0)
    const urls: string[] = []
    await tusUpload(new Blob([data]), { ...base, uploadUrl: null, fetch: s.fetch, onUploadUrl: (u) => urls.push(u) })
    const post = s.calls[0]
    expect(post.method).toBe('POST')
    expect(post.headers['Upload-Length']).toBe('10000')
    expect(post.headers['Upload-Metadata']).toBe(encodeMetadata(base.metadata))
    expect(post.headers['Upload-Metadata']).toBe(`kind ${btoa('relaypacs-segment')},study ${btoa('1.2')}`)
    expect(urls).toEqual(['http://hub/api/v1/uploads/new'])
  })

  it('retries after a network error from where the hub stands', async () => {
    const s = server(0, { failPatch: [1] })
    await tusUpload(new Blob([data]), { ...base, uploadUrl: 'http://hub/api/v1/uploads/abc', chunkSize: 4000, fetch: s.fetch })
    expect(s.offset()).toBe(10_000)
    expect(s.calls.filter((c) => c.method === 'HEAD').length).toBe(2)
  })

  it('starts again when the hub no longer knows the upload', async () => {
    const s = server(500, { headStatus: 404 })
    await tusUpload(new Blob([data]), { ...base, uploadUrl: 'http://hub/api/v1/uploads/gone', fetch: s.fetch })
    expect(s.calls.map((c) => c.method).slice(0, 2)).toEqual(['HEAD', 'POST'])
    expect(s.offset()).toBe(10_000)
  })

  it('gives up on a checksum mismatch that comes back every time', async () => {
    const calls: string[] = []
    const fetch = (async (_u: string, init?: RequestInit) => {
      calls.push(init!.method!)
      if (init!.method === 'HEAD') return new Response(null, { status: 200, headers: { 'Upload-Offset': '0' } })
      return new Response(null, { status: 460 })
    }) as unknown as typeof globalThis.fetch
    await expect(tusUpload(new Blob([data]), { ...base, uploadUrl: 'http://hub/api/v1/uploads/x', fetch, retryDelays: [0, 0] })).rejects.toMatchObject({ kind: 'server', status: 460 })
    expect(calls.filter((m) => m === 'PATCH').length).toBe(3)
  })

  it('formats the checksum as tus wants it', async () => {
    expect(await checksumHeader(new Uint8Array([1, 2, 3]))).toBe(`sha256 ${b64sha(new Uint8Array([1, 2, 3]))}`)
  })
})
