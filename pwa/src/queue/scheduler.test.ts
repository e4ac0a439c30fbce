import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { batchesToCreate, claimUnowned, filesToStart, nextWakeUp, othersWaiting, ownedBy, waitingOnDevice } from './plan'
import { studyStatus } from '../upload/status'
import { PROBE_INTERVAL_MS, SEND_FORBIDDEN_MESSAGE, SEND_NOT_FOUND_MESSAGE, Scheduler } from './scheduler'
import {
  QueueError,
  type QueueChannel,
  type QueueLock,
  type QueueMessage,
  type QBatch,
  type QFile,
  type QueueApi,
  type QueueStore,
  type UploadCallbacks,
  type Uploader,
} from './types'

// ---- fakes ----

class MemoryStore implements QueueStore {
  batches = new Map<string, QBatch>()
  files = new Map<string, QFile>()
  blobs = new Map<string, Blob>()
  async load() {
    return { batches: [...this.batches.values()], files: [...this.files.values()] }
  }
  async addBatch(b: QBatch, files: Array<{ file: QFile; blob: Blob }>) {
    this.batches.set(b.id, b)
    for (const { file, blob } of files) {
      this.files.set(file.id, file)
      this.blobs.set(file.id, blob)
    }
  }
  async saveBatch(b: QBatch) {
    this.batches.set(b.id, b)
  }
  async saveFile(f: QFile) {
    this.files.set(f.id, f)
  }
  async fileUploaded(f: QFile) {
    this.files.set(f.id, f)
    this.blobs.delete(f.id)
  }
  async removeBatch(id: string) {
    this.batches.delete(id)
  }
}

interface Started {
  file: QFile
  cb: UploadCallbacks
  aborted: boolean
  resolve: () => void
  reject: (e: unknown) => void
}

class FakeUploader implements Uploader {
  started: Started[] = []
  start(file: QFile, _batch: QBatch, cb: UploadCallbacks) {
    let resolve!: () => void
    let reject!: (e: unknown) => void
    const promise = new Promise<void>((res, rej) => {
      resolve = res
      reject = rej
    })
    const s: Started = { file: { ...file }, cb, aborted: false, resolve, reject }
    this.started.push(s)
    return { promise, abort: () => (s.aborted = true) }
  }
  active() {
    return this.started.filter((s) => !s.aborted)
  }
  names() {
    return this.started.map((s) => s.file.name)
  }
}

class FakeApi implements QueueApi {
  created: string[] = []
  sent: string[] = []
  reachable = true
  probes = 0
  failCreate: QueueError | null = null
  async createBatch(b: QBatch) {
    if (!this.reachable) throw new QueueError('network', 'unreachable')
    if (this.failCreate) throw this.failCreate
    this.created.push(b.id)
    return `srv-${b.id}`
  }
  async sendBatch(id: string) {
    if (!this.reachable) throw new QueueError('network', 'unreachable')
    this.sent.push(id)
  }
  async probe() {
    this.probes++
    return this.reachable
  }
}

class FakeNetwork {
  online = true
  private listeners = new Set<() => void>()
  isOnline = () => this.online
  subscribe = (cb: () => void) => {
    this.listeners.add(cb)
    return () => this.listeners.delete(cb)
  }
  set(online: boolean) {
    this.online = online
    for (const l of this.listeners) l()
  }
}

function batch(id: string, o: Partial<QBatch> = {}): QBatch {
  return {
    id,
    owner: 'nurse',
    serverId: null,
    serviceLevel: 'routine',
    clinicalHistory: '',
    referringClinician: '',
    label: id,
    createdAt: 1000,
    state: 'pending',
    expectedFiles: 0,
    study: {
      studyInstanceUid: `1.2.${id}`,
      patientName: 'Doe^Jane',
      patientId: 'P1',
      studyDate: '20240101',
      studyDescription: '',
      modality: 'CR',
      accessionNumber: '',
      series: 1,
      instances: 1,
      bytes: 100,
    },
    attempts: 0,
    nextAttemptAt: 0,
    error: null,
    sentAt: null,
    ...o,
  }
}

function file(id: string, batchId: string, order = 0, o: Partial<QFile> = {}): QFile {
  return {
    id,
    batchId,
    owner: 'nurse',
    order,
    name: id,
    size: 100,
    type: 'application/dicom',
    sopInstanceUid: `1.3.${id}`,
    state: 'queued',
    uploadUrl: null,
    bytesSent: 0,
    attempts: 0,
    nextAttemptAt: 0,
    error: null,
    ...o,
  }
}

const clock = {
  now: () => Date.now(),
  setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms),
  clearTimeout: (h: unknown) => clearTimeout(h as ReturnType<typeof setTimeout>),
}

async function settle() {
  await vi.advanceTimersByTimeAsync(0)
}

function setup(opts: { online?: boolean; owner?: string | null } = {}) {
  const store = new MemoryStore()
  const uploader = new FakeUploader()
  const api = new FakeApi()
  const network = new FakeNetwork()
  network.online = opts.online ?? true
  const q = new Scheduler({ store, uploader, api, network, clock, concurrency: 2 })
  q.setOwner(opts.owner === undefined ? 'nurse' : opts.owner)
  return { store, uploader, api, network, q }
}

beforeEach(() => {
  vi.useFakeTimers()
  vi.setSystemTime(1_000_000)
})
afterEach(() => {
  vi.useRealTimers()
})

// ---- pure planning ----

describe('plan', () => {
  it('orders STAT before routine, then oldest first', () => {
    const bs = [
      batch('r-old', { createdAt: 1, state: 'open', serverId: 's1' }),
      batch('s-new', { createdAt: 9, state: 'open', serverId: 's2', serviceLevel: 'stat' }),
      batch('s-old', { createdAt: 5, state: 'open', serverId: 's3', serviceLevel: 'stat' }),
    ]
    const fs = [file('a', 'r-old'), file('b', 's-new'), file('c', 's-old')]
    expect(filesToStart(bs, fs, new Set(), 0, 3, 'nurse').map((f) => f.id)).toEqual(['c', 'b', 'a'])
    expect(filesToStart(bs, fs, new Set(['x']), 0, 2, 'nurse').map((f) => f.id)).toEqual(['c'])
    const pending = bs.map((b) => ({ ...b, state: 'pending' as const, serverId: null }))
    expect(batchesToCreate(pending, 0, 'nurse').map((b) => b.id)).toEqual(['s-old', 's-new', 'r-old'])
  })

  it('summarises what waits on the device', () => {
    const bs = [batch('a', { state: 'open', serverId: 's' }), batch('b')]
    const fs = [
      file('1', 'a', 0, { size: 1000, bytesSent: 400 }),
      file('2', 'a', 1, { state: 'uploaded' }),
      file('3', 'b', 0, { size: 50 }),
    ]
    expect(waitingOnDevice(bs, fs)).toEqual({ studies: 2, files: 2, bytes: 650 })
  })
})

// ---- scheduler ----

describe('Scheduler', () => {
  it('creates and uploads STAT batches before routine ones', async () => {
    const { store, uploader, api, q } = setup()
    await store.addBatch(batch('routine', { createdAt: 1 }), [
      { file: file('r1', 'routine', 0), blob: new Blob(['x']) },
      { file: file('r2', 'routine', 1), blob: new Blob(['x']) },
    ])
    await store.addBatch(batch('stat', { createdAt: 2, serviceLevel: 'stat' }), [
      { file: file('s1', 'stat', 0), blob: new Blob(['x']) },
      { file: file('s2', 'stat', 1), blob: new Blob(['x']) },
    ])
    await q.start()
    await settle()
    expect(api.created).toEqual(['stat', 'routine'])
    expect(uploader.names()).toEqual(['s1', 's2'])
    uploader.started[0].resolve()
    await settle()
    expect(uploader.names()).toEqual(['s1', 's2', 'r1'])
  })

  it('never runs more than 2 uploads at once', async () => {
    const { uploader, q } = setup()
    await q.start()
    await q.add(
      batch('b'),
      [0, 1, 2, 3, 4].map((i) => ({ file: file(`f${i}`, 'b', i), blob: new Blob(['x']) })),
    )
    await settle()
    expect(uploader.active()).toHaveLength(2)
    q.kick()
    q.kick()
    await settle()
    expect(uploader.started).toHaveLength(2)
    uploader.started[1].resolve()
    await settle()
    expect(uploader.names()).toEqual(['f0', 'f1', 'f2'])
    for (let i = 0; i < 5; i++) {
      const next = uploader.started.find((s) => !s.aborted && !(s as { done?: boolean }).done)
      if (!next) break
      ;(next as { done?: boolean }).done = true
      next.resolve()
      await settle()
    }
    expect(new Set(uploader.names()).size).toBe(5)
  })

  it('queues batch creation offline and sends everything when back online', async () => {
    const { store, uploader, api, network, q } = setup({ online: false })
    await q.start()
    await q.add(batch('b', { expectedFiles: 2 }), [
      { file: file('f0', 'b', 0), blob: new Blob(['x']) },
      { file: file('f1', 'b', 1), blob: new Blob(['x']) },
    ])
    await settle()
    expect(api.created).toEqual([])
    expect(uploader.started).toHaveLength(0)
    expect(q.getSnapshot().waiting).toEqual({ studies: 1, files: 2, bytes: 200 })
    expect(store.batches.get('b')!.state).toBe('pending')

    network.set(true)
    await settle()
    expect(api.created).toEqual(['b'])
    expect(uploader.names()).toEqual(['f0', 'f1'])
    uploader.started.forEach((s) => s.resolve())
    await settle()
    expect(api.sent).toEqual(['srv-b'])
    expect(store.batches.get('b')!.state).toBe('sent')
    expect(store.files.get('f0')!.state).toBe('uploaded')
    expect(store.blobs.size).toBe(0) // contents dropped once at the agent
  })

  it('going offline stops uploads; they resume from their uploadUrl', async () => {
    const { store, uploader, network, q } = setup()
    await store.addBatch(batch('b', { state: 'open', serverId: 'srv' }), [
      { file: file('f0', 'b', 0, { size: 3 << 20 }), blob: new Blob(['x']) },
    ])
    await q.start()
    await settle()
    const first = uploader.started[0]
    first.cb.onUploadUrl('http://agent/api/v1/uploads/u1')
    first.cb.onChunkComplete(1 << 20)
    network.set(false)
    await settle()
    expect(first.aborted).toBe(true)
    expect(q.getSnapshot().files[0]).toMatchObject({ state: 'queued', uploadUrl: 'http://agent/api/v1/uploads/u1', bytesSent: 1 << 20 })
    await vi.advanceTimersByTimeAsync(60_000)
    expect(uploader.started).toHaveLength(1)
    network.set(true)
    await settle()
    expect(uploader.started).toHaveLength(2)
    expect(uploader.started[1].file.uploadUrl).toBe('http://agent/api/v1/uploads/u1')
  })

  it('resumes an unfinished file after a reload from its stored uploadUrl', async () => {
    const { store, uploader, q } = setup()
    await store.addBatch(batch('b', { state: 'open', serverId: 'srv' }), [
      {
        file: file('f0', 'b', 0, { state: 'uploading', uploadUrl: 'http://agent/api/v1/uploads/abc', bytesSent: 1 << 20, size: 2 << 20 }),
        blob: new Blob(['x']),
      },
    ])
    await q.start()
    await settle()
    expect(uploader.started).toHaveLength(1)
    expect(uploader.started[0].file).toMatchObject({ id: 'f0', uploadUrl: 'http://agent/api/v1/uploads/abc', bytesSent: 1 << 20 })
  })

  it('does not upload a file that is already uploaded, and sends its batch once', async () => {
    const { store, uploader, api, q } = setup()
    await store.addBatch(batch('b', { state: 'open', serverId: 'srv' }), [
      { file: file('done', 'b', 0, { state: 'uploaded', bytesSent: 100 }), blob: new Blob(['x']) },
      { file: file('todo', 'b', 1), blob: new Blob(['x']) },
    ])
    await q.start()
    await settle()
    expect(uploader.names()).toEqual(['todo'])
    uploader.started[0].resolve()
    await settle()
    q.kick()
    await settle()
    expect(uploader.names()).toEqual(['todo'])
    expect(api.sent).toEqual(['srv'])
  })

  it('backs off after a failure and retries later', async () => {
    const { uploader, q } = setup()
    await q.start()
    await q.add(batch('b'), [{ file: file('f0', 'b'), blob: new Blob(['x']) }])
    await settle()
    uploader.started[0].reject(new QueueError('server', 'HTTP 500'))
    await settle()
    expect(q.getSnapshot().files[0]).toMatchObject({ state: 'queued', attempts: 1, error: 'HTTP 500' })
    await vi.advanceTimersByTimeAsync(500)
    expect(uploader.started).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(600)
    expect(uploader.started).toHaveLength(2)
    uploader.started[1].reject(new QueueError('server', 'HTTP 500'))
    await settle()
    await vi.advanceTimersByTimeAsync(2_000)
    expect(uploader.started).toHaveLength(2) // second backoff is longer
    await vi.advanceTimersByTimeAsync(1_100)
    expect(uploader.started).toHaveLength(3)
  })

  it('pauses when the agent is unreachable and probes every 5 s', async () => {
    const { uploader, api, q } = setup()
    await q.start()
    await q.add(batch('b'), [
      { file: file('f0', 'b', 0), blob: new Blob(['x']) },
      { file: file('f1', 'b', 1), blob: new Blob(['x']) },
    ])
    await settle()
    api.reachable = false
    uploader.started[0].reject(new QueueError('network', 'Failed to fetch'))
    await settle()
    expect(q.getSnapshot().agentReachable).toBe(false)
    await vi.advanceTimersByTimeAsync(PROBE_INTERVAL_MS * 3)
    expect(api.probes).toBe(3)
    expect(uploader.started).toHaveLength(2)
    api.reachable = true
    await vi.advanceTimersByTimeAsync(PROBE_INTERVAL_MS)
    expect(q.getSnapshot().agentReachable).toBe(true)
    expect(uploader.names()).toContain('f0')
    expect(uploader.started.length).toBeGreaterThanOrEqual(3)
  })

  it('stops on 401 until the user signs in again', async () => {
    const { uploader, q } = setup()
    await q.start()
    await q.add(batch('b'), [
      { file: file('f0', 'b', 0), blob: new Blob(['x']) },
      { file: file('f1', 'b', 1), blob: new Blob(['x']) },
    ])
    await settle()
    uploader.started[0].reject(new QueueError('auth', 'session expired', 401))
    await settle()
    expect(q.getSnapshot().authRequired).toBe(true)
    expect(uploader.started[1].aborted).toBe(true)
    await vi.advanceTimersByTimeAsync(120_000)
    expect(uploader.started).toHaveLength(2)
    q.setAuthenticated()
    await settle()
    expect(uploader.names().slice(2).sort()).toEqual(['f0', 'f1'])
  })

  it('marks a file the agent refuses, and still sends the batch', async () => {
    const { uploader, api, q } = setup()
    await q.start()
    await q.add(batch('b'), [
      { file: file('f0', 'b', 0), blob: new Blob(['x']) },
      { file: file('f1', 'b', 1), blob: new Blob(['x']) },
    ])
    await settle()
    uploader.started[0].reject(new QueueError('rejected', 'not a DICOM file', 415, 'refused'))
    uploader.started[1].resolve()
    await settle()
    expect(q.getSnapshot().files.find((f) => f.id === 'f0')!.state).toBe('refused')
    expect(api.sent).toEqual(['srv-b'])
  })

  it('a batch the agent rejects is failed, and retry() tries again', async () => {
    const { api, q } = setup()
    api.failCreate = new QueueError('rejected', 'clinical history is too long', 422)
    await q.start()
    await q.add(batch('b'), [{ file: file('f0', 'b'), blob: new Blob(['x']) }])
    await settle()
    expect(q.getSnapshot().batches[0]).toMatchObject({ state: 'failed', error: 'clinical history is too long' })
    api.failCreate = null
    q.retry('b')
    await settle()
    expect(q.getSnapshot().batches[0]).toMatchObject({ state: 'open', serverId: 'srv-b' })
  })
})

// ---- shared devices: one user's work is never shown to, nor sent by, another ----

describe('owners (pure)', () => {
  const bs = [
    batch('mine', { state: 'open', serverId: 's1', createdAt: 5 }),
    batch('theirs', { owner: 'tech', state: 'open', serverId: 's2', createdAt: 1, serviceLevel: 'stat' }),
    batch('old', { owner: '', state: 'open', serverId: 's3', createdAt: 0, serviceLevel: 'stat' }),
  ]
  const fs = [
    file('m0', 'mine', 0),
    file('t0', 'theirs', 0, { owner: 'tech' }),
    file('o0', 'old', 0, { owner: '' }),
    // a file claiming to be mine in someone else's batch is still not picked
    file('x0', 'theirs', 1),
  ]

  it('filesToStart picks only the owner\'s files, even when others\' are more urgent', () => {
    expect(filesToStart(bs, fs, new Set(), 0, 10, 'nurse').map((f) => f.id)).toEqual(['m0'])
    expect(filesToStart(bs, fs, new Set(), 0, 10, 'tech').map((f) => f.id)).toEqual(['t0'])
  })

  it('nobody signed in, or the unowned name, picks nothing', () => {
    expect(filesToStart(bs, fs, new Set(), 0, 10, null)).toEqual([])
    expect(filesToStart(bs, fs, new Set(), 0, 10, '')).toEqual([])
    const pending = bs.map((b) => ({ ...b, state: 'pending' as const, serverId: null }))
    expect(batchesToCreate(pending, 0, null)).toEqual([])
    expect(batchesToCreate(pending, 0, '')).toEqual([])
  })

  it('batchesToCreate creates only the owner\'s batches', () => {
    const pending = bs.map((b) => ({ ...b, state: 'pending' as const, serverId: null }))
    expect(batchesToCreate(pending, 0, 'nurse').map((b) => b.id)).toEqual(['mine'])
    expect(batchesToCreate(pending, 0, 'tech').map((b) => b.id)).toEqual(['theirs'])
  })

  it('ownedBy keeps the owner\'s batches and their own files only', () => {
    const v = ownedBy(bs, fs, 'nurse')
    expect(v.batches.map((b) => b.id)).toEqual(['mine'])
    expect(v.files.map((f) => f.id)).toEqual(['m0'])
    expect(ownedBy(bs, fs, null)).toEqual({ batches: [], files: [] })
  })

  it('nextWakeUp ignores the backoff of other owners', () => {
    const later = [batch('t', { owner: 'tech', nextAttemptAt: 50 }), batch('m', { nextAttemptAt: 90 })]
    expect(nextWakeUp(later, [], 10, 'nurse')).toBe(90)
    expect(nextWakeUp(later, [], 10, null)).toBeNull()
  })

  it('counts other users\' unfinished studies, not finished ones', () => {
    const all = [
      ...bs,
      batch('done', { owner: 'tech', state: 'sent', serverId: 's4' }),
      batch('p', { owner: 'boss' }),
    ]
    expect(othersWaiting(all, fs, 'nurse')).toEqual({ studies: 3, users: 3 })
    expect(othersWaiting(all.filter((b) => b.owner !== ''), fs, 'nurse')).toEqual({ studies: 2, users: 2 })
    expect(othersWaiting([batch('mine')], [], 'nurse')).toEqual({ studies: 0, users: 0 })
  })

  it('claimUnowned gives only unowned records to the user', () => {
    const c = claimUnowned(bs, fs, 'nurse')
    expect(c.batches.map((b) => [b.id, b.owner])).toEqual([['old', 'nurse']])
    expect(c.files.map((f) => [f.id, f.owner])).toEqual([['o0', 'nurse']])
    expect(claimUnowned(bs, fs, '')).toEqual({ batches: [], files: [] })
  })
})

describe('Scheduler owners', () => {
  async function twoUsers(owner: string | null) {
    const t = setup({ owner })
    await t.store.addBatch(batch('n', { createdAt: 2 }), [{ file: file('n0', 'n'), blob: new Blob(['x']) }])
    await t.store.addBatch(batch('t', { owner: 'tech', createdAt: 1, serviceLevel: 'stat' }), [
      { file: file('t0', 't', 0, { owner: 'tech' }), blob: new Blob(['x']) },
    ])
    await t.q.start()
    await settle()
    return t
  }

  it('creates and uploads only the signed-in user\'s work, and shows only theirs', async () => {
    const { api, uploader, q } = await twoUsers('nurse')
    expect(api.created).toEqual(['n'])
    expect(uploader.names()).toEqual(['n0'])
    const snap = q.getSnapshot()
    expect(snap.batches.map((b) => b.id)).toEqual(['n'])
    expect(snap.files.map((f) => f.id)).toEqual(['n0'])
    expect(snap.others).toEqual({ studies: 1, users: 1 })
    expect(JSON.stringify(snap)).not.toContain('"t0"')
  })

  it('signed out: nothing runs, nothing is shown, nothing is lost', async () => {
    const { api, uploader, store, q } = await twoUsers(null)
    expect(api.created).toEqual([])
    expect(uploader.started).toHaveLength(0)
    expect(q.getSnapshot().batches).toEqual([])
    expect(store.batches.size).toBe(2)
    await expect(q.add(batch('z', { owner: '' }), [])).rejects.toThrow()
  })

  it('signing out stops the uploads; the next user sends only theirs; the first resumes later', async () => {
    const { api, uploader, store, q } = await twoUsers('nurse')
    const first = uploader.started[0]
    first.cb.onUploadUrl('http://agent/api/v1/uploads/n0')
    q.setOwner(null)
    await settle()
    expect(first.aborted).toBe(true)
    expect(store.files.get('n0')).toMatchObject({ state: 'queued', uploadUrl: 'http://agent/api/v1/uploads/n0' })
    first.resolve() // an aborted upload finishing late changes nothing
    await settle()
    expect(store.files.get('n0')!.state).toBe('queued')

    q.setOwner('tech')
    await settle()
    expect(api.created).toEqual(['n', 't'])
    expect(uploader.names()).toEqual(['n0', 't0'])
    expect(q.getSnapshot().batches.map((b) => b.id)).toEqual(['t'])
    uploader.started[1].resolve()
    await settle()
    expect(api.sent).toEqual(['srv-t'])

    q.setOwner('nurse')
    await settle()
    expect(uploader.names()).toEqual(['n0', 't0', 'n0'])
    expect(uploader.started[2].file.uploadUrl).toBe('http://agent/api/v1/uploads/n0')
  })

  it('a 401 for someone signed out does not stop the next user', async () => {
    const { uploader, q } = await twoUsers('nurse')
    q.setOwner('tech')
    await settle()
    // the nurse's aborted upload rejects late with 401: ignored (it was aborted)
    uploader.started[0].reject(new QueueError('auth', 'gone', 401))
    await settle()
    expect(q.getSnapshot().authRequired).toBe(false)
    expect(uploader.names()).toContain('t0')
  })

  it('records from before owners existed go to the first user who signs in', async () => {
    const t = setup({ owner: null })
    await t.store.addBatch(batch('old', { owner: '' }), [{ file: file('o0', 'old', 0, { owner: '' }), blob: new Blob(['x']) }])
    await t.q.start()
    await settle()
    expect(t.api.created).toEqual([])
    t.q.setOwner('tech')
    await settle()
    expect(t.store.batches.get('old')!.owner).toBe('tech')
    expect(t.store.files.get('o0')!.owner).toBe('tech')
    expect(t.api.created).toEqual(['old'])
    t.q.setOwner('nurse')
    await settle()
    expect(t.q.getSnapshot().batches).toEqual([])
    expect(t.q.getSnapshot().others).toEqual({ studies: 1, users: 1 })
  })

  it('add() stamps the signed-in user on the batch and its files', async () => {
    const { store, q } = setup({ owner: 'tech' })
    await q.start()
    await q.add(batch('b', { owner: '' }), [{ file: file('f', 'b', 0, { owner: '' }), blob: new Blob(['x']) }])
    expect(store.batches.get('b')!.owner).toBe('tech')
    expect(store.files.get('f')!.owner).toBe('tech')
  })

  it('retry and remove ignore other users\' batches', async () => {
    const { store, q } = await twoUsers('nurse')
    await q.remove('t')
    q.retry('t')
    expect(store.batches.has('t')).toBe(true)
  })
})

// ---- /send: only a 2xx counts as sent ----

describe('sending a batch', () => {
  async function readyToSend(failSend: QueueError | null) {
    const s = setup()
    s.api.sendBatch = async (id: string) => {
      if (failSend) throw failSend
      s.api.sent.push(id)
    }
    await s.store.addBatch(batch('b', { state: 'open', serverId: 'srv-b' }), [
      { file: file('f0', 'b', 0, { state: 'uploaded', bytesSent: 100 }), blob: new Blob(['x']) },
    ])
    await s.q.start()
    await settle()
    await s.q.flush()
    return s
  }

  it('a 2xx marks the batch sent', async () => {
    const { store, api, q } = await readyToSend(null)
    expect(api.sent).toEqual(['srv-b'])
    expect(q.getSnapshot().batches[0]).toMatchObject({ state: 'sent', error: null })
    expect(store.batches.get('b')!.state).toBe('sent')
  })

  it('404 (the agent no longer knows the batch) fails it, in plain words, and does not retry', async () => {
    const { api, q } = await readyToSend(new QueueError('rejected', 'not found', 404, 'not_found'))
    expect(q.getSnapshot().batches[0]).toMatchObject({ state: 'failed', error: SEND_NOT_FOUND_MESSAGE, sentAt: null })
    expect(SEND_NOT_FOUND_MESSAGE).toContain('relaypacs-agent send-now')
    const calls = api.sent.length
    await vi.advanceTimersByTimeAsync(600_000)
    expect(api.sent.length).toBe(calls)
    expect(q.getSnapshot().batches[0].state).toBe('failed')
  })

  it('403 (role may not send) fails it with its own message', async () => {
    const { q } = await readyToSend(new QueueError('rejected', 'forbidden', 403, 'forbidden'))
    expect(q.getSnapshot().batches[0]).toMatchObject({ state: 'failed', error: SEND_FORBIDDEN_MESSAGE })
  })

  it('a failed send shows its message on the study card and "Try again" sends again', async () => {
    const s = await readyToSend(new QueueError('rejected', 'forbidden', 403, 'forbidden'))
    const st = studyStatus(s.q.getSnapshot().batches[0], s.q.getSnapshot().files, undefined)
    expect(st.problems[0]).toBe(SEND_FORBIDDEN_MESSAGE)
    expect(st.stage).toBe('agent')
    s.api.sendBatch = async (id: string) => void s.api.sent.push(id)
    s.q.retry('b')
    await settle()
    expect(s.api.sent).toEqual(['srv-b'])
    expect(s.q.getSnapshot().batches[0]).toMatchObject({ state: 'sent', error: null })
  })

  it('401 pauses for sign-in and keeps the batch open', async () => {
    const { q, api } = await readyToSend(new QueueError('auth', 'session over', 401))
    expect(q.getSnapshot().authRequired).toBe(true)
    expect(q.getSnapshot().batches[0].state).toBe('open')
    api.sendBatch = async (id: string) => void api.sent.push(id)
    q.setAuthenticated()
    await vi.advanceTimersByTimeAsync(2_000)
    expect(api.sent).toEqual(['srv-b'])
    expect(q.getSnapshot().batches[0].state).toBe('sent')
  })

  it.each([
    ['a 5xx', new QueueError('server', 'bad gateway', 502)],
    ['another 4xx', new QueueError('rejected', 'conflict', 409)],
    ['no network', new QueueError('network', 'unreachable')],
  ])('%s is retried with backoff, never counted as sent', async (_name, err) => {
    const s = await readyToSend(err)
    let tries = 1
    s.api.sendBatch = async (id: string) => {
      tries++
      if (tries < 3) throw err
      s.api.sent.push(id)
    }
    expect(s.q.getSnapshot().batches[0]).toMatchObject({ state: 'open', attempts: 1 })
    expect(s.api.sent).toEqual([])
    for (let t = 0; t < 30 && tries < 3; t++) {
      expect(s.q.getSnapshot().batches[0].state).toBe('open')
      await vi.advanceTimersByTimeAsync(500)
    }
    expect(tries).toBe(3)
    await settle()
    expect(s.api.sent).toEqual(['srv-b'])
    expect(s.q.getSnapshot().batches[0]).toMatchObject({ state: 'sent', error: null })
  })
})

// ---- several tabs: only the one holding the lock runs the queue ----

/** A store shared by tabs: tells every watcher about each write, a little later (like liveQuery). */
class SharedStore extends MemoryStore {
  private watchers = new Set<(d: { batches: QBatch[]; files: QFile[] }) => void>()
  watch(cb: (d: { batches: QBatch[]; files: QFile[] }) => void) {
    this.watchers.add(cb)
    void this.changed()
    return () => void this.watchers.delete(cb)
  }
  private async changed() {
    await Promise.resolve()
    const d = await this.load()
    for (const w of this.watchers) w({ batches: d.batches.map((b) => ({ ...b })), files: d.files.map((f) => ({ ...f })) })
  }
  override async addBatch(b: QBatch, files: Array<{ file: QFile; blob: Blob }>) {
    await super.addBatch(b, files)
    void this.changed()
  }
  override async saveBatch(b: QBatch) {
    await super.saveBatch(b)
    void this.changed()
  }
  override async saveFile(f: QFile) {
    await super.saveFile(f)
    void this.changed()
  }
  override async fileUploaded(f: QFile) {
    await super.fileUploaded(f)
    void this.changed()
  }
  override async removeBatch(id: string) {
    await super.removeBatch(id)
    for (const f of [...this.files.values()]) if (f.batchId === id) this.files.delete(f.id)
    void this.changed()
  }
}

/** navigator.locks for one exclusive name: first come, first served; abort drops a waiting request. */
function fakeLocks() {
  let held = false
  const waiting: Array<() => void> = []
  const grants: number[] = []
  let n = 0
  const make = (): QueueLock => {
    const who = ++n
    return (run, signal) =>
      new Promise((resolve, reject) => {
        const go = () => {
          held = true
          grants.push(who)
          void run().finally(() => {
            held = false
            resolve(undefined)
            waiting.shift()?.()
          })
        }
        if (!held) return go()
        waiting.push(go)
        signal.addEventListener('abort', () => {
          const i = waiting.indexOf(go)
          if (i >= 0) waiting.splice(i, 1)
          reject(new DOMException('aborted', 'AbortError'))
        })
      })
  }
  return { make, grants, isHeld: () => held }
}

function fakeBus() {
  const tabs = new Set<(m: QueueMessage) => void>()
  return (): QueueChannel => {
    let mine: ((m: QueueMessage) => void) | null = null
    return {
      post: (m) => {
        for (const t of tabs) if (t !== mine) t(m)
      },
      subscribe(cb) {
        mine = cb
        tabs.add(cb)
        return () => void tabs.delete(cb)
      },
    }
  }
}

function twoTabs() {
  const store = new SharedStore()
  const api = new FakeApi()
  const network = new FakeNetwork()
  const locks = fakeLocks()
  const bus = fakeBus()
  const tab = () => {
    const uploader = new FakeUploader()
    const q = new Scheduler({ store, uploader, api, network, clock, concurrency: 2, lock: locks.make(), channel: bus() })
    q.setOwner('nurse')
    return { q, uploader }
  }
  return { store, api, locks, a: tab(), b: tab() }
}

describe('several tabs', () => {
  it('only the tab holding the lock uploads; the other shows the same state; it takes over when the first closes', async () => {
    const { store, api, locks, a, b } = twoTabs()
    await store.addBatch(batch('b', { expectedFiles: 3 }), [0, 1, 2].map((i) => ({ file: file(`f${i}`, 'b', i), blob: new Blob(['x']) })))
    await a.q.start()
    await b.q.start()
    await settle()
    expect(a.q.isLeading()).toBe(true)
    expect(b.q.isLeading()).toBe(false)
    expect(api.created).toEqual(['b']) // one batch at the agent, not one per tab
    expect(a.uploader.names()).toEqual(['f0', 'f1'])
    expect(b.uploader.started).toHaveLength(0)

    a.uploader.started[0].resolve() // f0 done: its blob is gone
    a.uploader.started[1].cb.onUploadUrl('http://agent/api/v1/uploads/u1')
    await settle()
    expect(a.uploader.names()).toEqual(['f0', 'f1', 'f2'])
    expect(store.blobs.has('f0')).toBe(false)
    // The other tab shows it all from the store, and starts nothing.
    expect(b.q.getSnapshot().batches[0]).toMatchObject({ serverId: 'srv-b', state: 'open' })
    expect(b.q.getSnapshot().files.find((f) => f.id === 'f0')!.state).toBe('uploaded')
    expect(b.uploader.started).toHaveLength(0)

    // The first tab closes: its uploads stop, the second takes over from the store.
    a.q.stop()
    await settle()
    expect(b.q.isLeading()).toBe(true)
    expect(api.created).toEqual(['b'])
    expect(b.uploader.names().sort()).toEqual(['f1', 'f2'])
    expect(b.uploader.started.find((s) => s.file.id === 'f1')!.file.uploadUrl).toBe('http://agent/api/v1/uploads/u1')
    b.uploader.started.forEach((s) => s.resolve())
    await settle()
    expect(api.sent).toEqual(['srv-b'])
    expect(b.q.getSnapshot().files.every((f) => f.state === 'uploaded')).toBe(true)
    expect(b.q.getSnapshot().files.some((f) => f.error)).toBe(false) // nothing "gone"
    // Each file finished once, in one tab or the other.
    const finished = [...a.uploader.started.filter((s) => !s.aborted), ...b.uploader.started].map((s) => s.file.id)
    expect(finished.sort()).toEqual(['f0', 'f1', 'f2'])
    expect(locks.grants).toEqual([1, 2])
  })

  it('a study queued in a tab that does not run the queue is sent by the one that does', async () => {
    const { api, a, b } = twoTabs()
    await a.q.start()
    await b.q.start()
    await settle()
    await b.q.add(batch('nb'), [{ file: file('n0', 'nb'), blob: new Blob(['x']) }])
    await settle()
    expect(api.created).toEqual(['nb'])
    expect(a.uploader.names()).toEqual(['n0'])
    expect(b.uploader.started).toHaveLength(0)
    a.uploader.started[0].resolve()
    await settle()
    expect(api.sent).toEqual(['srv-nb'])
    expect(b.q.getSnapshot().batches[0].state).toBe('sent')
  })

  it('retry and remove in the other tab are done by the tab running the queue', async () => {
    const { store, api, a, b } = twoTabs()
    api.failCreate = new QueueError('rejected', 'clinical history is too long', 422)
    await store.addBatch(batch('x'), [{ file: file('x0', 'x'), blob: new Blob(['x']) }])
    await store.addBatch(batch('y', { state: 'open', serverId: 'srv-y' }), [{ file: file('y0', 'y'), blob: new Blob(['y']) }])
    await a.q.start()
    await b.q.start()
    await settle()
    expect(b.q.getSnapshot().batches.find((x) => x.id === 'x')!.state).toBe('failed')
    api.failCreate = null
    b.q.retry('x')
    await settle()
    expect(api.created.filter((id) => id === 'x')).toHaveLength(1)
    expect(b.q.getSnapshot().batches.find((x) => x.id === 'x')!.state).toBe('open')

    const y0 = a.uploader.started.find((s) => s.file.id === 'y0')!
    await b.q.remove('y')
    await settle()
    expect(y0.aborted).toBe(true)
    expect(store.batches.has('y')).toBe(false)
    expect(b.q.getSnapshot().batches.map((x) => x.id)).toEqual(['x'])
  })

  it('signing out lets the lock go; signing in takes it again', async () => {
    const { locks, a, b } = twoTabs()
    await a.q.start()
    await settle()
    expect(a.q.isLeading()).toBe(true)
    a.q.setOwner(null)
    await settle()
    expect(a.q.isLeading()).toBe(false)
    expect(locks.isHeld()).toBe(false)
    await b.q.start()
    await settle()
    expect(b.q.isLeading()).toBe(true)
    a.q.setOwner('nurse')
    await settle()
    expect(a.q.isLeading()).toBe(false) // waits its turn
    b.q.stop()
    await settle()
    expect(a.q.isLeading()).toBe(true)
  })

  it('without a lock (old browsers) the tab runs the queue directly', async () => {
    const { uploader, q } = setup()
    await q.start()
    expect(q.isLeading()).toBe(true)
    await q.add(batch('b'), [{ file: file('f0', 'b'), blob: new Blob(['x']) }])
    await settle()
    expect(uploader.names()).toEqual(['f0'])
  })
})
