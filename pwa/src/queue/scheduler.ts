/**
 * The upload queue. Keeps the state of batches and files in memory (the store is written
 * through), creates batches at the agent, uploads files (2 at a time), tells the agent to send a
 * study once all of its files are there, and pauses while offline or while the agent is out of
 * reach (probing it every 5 s). Every dependency is injected so that this runs without a browser.
 */
import {
  backoffDelay,
  batchReadyToSend,
  batchesToCreate,
  claimUnowned,
  filesToStart,
  isOwnedBy,
  nextWakeUp,
  othersWaiting,
  ownedBy,
  waitingOnDevice,
  type OthersWaiting,
  type WaitingSummary,
} from './plan'
import {
  QueueError,
  type Clock,
  type Network,
  type QBatch,
  type QFile,
  type QueueApi,
  type QueueChannel,
  type QueueLock,
  type QueueMessage,
  type QueueStore,
  type UploadHandle,
  type Uploader,
} from './types'

export const PROBE_INTERVAL_MS = 5_000

/** Shown on the study card when `/send` answers 404: the agent no longer has this batch. */
export const SEND_NOT_FOUND_MESSAGE =
  'The agent no longer knows this upload. Its files are already at the agent; ask IT to send them with `relaypacs-agent send-now`.'
/** Shown on the study card when `/send` answers 403. */
export const SEND_FORBIDDEN_MESSAGE = 'Your account may not send studies from this agent.'

/** What the signed-in user may see: only their own batches and files. */
export interface QueueSnapshot {
  /** The signed-in user whose work this is (null: signed out, nothing is shown or sent). */
  owner: string | null
  batches: QBatch[]
  files: QFile[]
  online: boolean
  agentReachable: boolean
  authRequired: boolean
  waiting: WaitingSummary
  /** Counts only (no patient data) of other users' work still on this device. */
  others: OthersWaiting
}

export interface SchedulerDeps {
  store: QueueStore
  uploader: Uploader
  api: QueueApi
  clock?: Clock
  network: Network
  concurrency?: number
  /** Least time between two progress notifications (ms). */
  progressIntervalMs?: number
  /**
   * Only the tab holding this lock runs the queue; the others show it from the store (`watch`)
   * and pass retry/remove on through `channel`. Without a lock (old browsers) this tab runs it.
   */
  lock?: QueueLock
  channel?: QueueChannel
}

/** One holding (or request) of the queue lock. */
interface Tenure {
  abort: AbortController
  /** Set once the lock is held: lets it go. */
  release: (() => void) | null
}

const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
}

function asQueueError(e: unknown): QueueError {
  if (e instanceof QueueError) return e
  return new QueueError('server', e instanceof Error ? e.message : String(e))
}

export class Scheduler {
  private batches = new Map<string, QBatch>()
  private files = new Map<string, QFile>()
  private running = new Map<string, UploadHandle>()
  private creating = false
  private sending = new Set<string>()
  private agentReachable = true
  private authRequired = false
  private started = false
  private loaded = false
  /** Whose work runs: the signed-in user; null = nobody (signed out), nothing runs. */
  private owner: string | null = null
  private wakeTimer: unknown = null
  private probeTimer: unknown = null
  private unsubscribeNetwork: (() => void) | null = null
  private unsubscribeStore: (() => void) | null = null
  private unsubscribeChannel: (() => void) | null = null
  /** This tab runs the queue (holds the lock, or there is no lock to hold). */
  private leading: boolean
  private tenure: Tenure | null = null
  /** Batches removed here: a late store notification must not bring them back. */
  private removed = new Set<string>()
  /** Requests to the agent under way (create, send): the lock is let go only once they are done. */
  private inflight = new Set<Promise<void>>()
  private listeners = new Set<(s: QueueSnapshot) => void>()
  private snapshot: QueueSnapshot
  private lastProgressEmit = 0
  private writes: Promise<void> = Promise.resolve()
  private readonly clock: Clock
  private readonly concurrency: number
  private readonly progressIntervalMs: number

  constructor(private readonly deps: SchedulerDeps) {
    this.clock = deps.clock ?? realClock
    this.concurrency = deps.concurrency ?? 2
    this.progressIntervalMs = deps.progressIntervalMs ?? 200
    this.leading = !deps.lock
    this.snapshot = this.makeSnapshot()
  }

  /** This tab runs the queue (the others only show it). */
  isLeading(): boolean {
    return this.leading
  }

  // ---- public API ----

  async start(): Promise<void> {
    if (this.started) return
    this.started = true
    const data = await this.deps.store.load()
    if (this.leading) this.takeOver(data)
    else this.replaceFrom(data)
    this.loaded = true
    this.claimUnowned()
    this.unsubscribeNetwork = this.deps.network.subscribe(() => this.onNetworkChange())
    if (this.deps.lock) this.unsubscribeStore = this.deps.store.watch?.((d) => this.onStoreChange(d)) ?? null
    this.unsubscribeChannel = this.deps.channel?.subscribe((m) => this.onMessage(m)) ?? null
    this.emit()
    this.syncLock()
    this.pump()
  }

  /** Stop running the queue here (lets the lock go: another tab takes over). */
  stop(): void {
    this.started = false
    this.unsubscribeNetwork?.()
    this.unsubscribeNetwork = null
    this.unsubscribeStore?.()
    this.unsubscribeStore = null
    this.unsubscribeChannel?.()
    this.unsubscribeChannel = null
    for (const h of this.running.values()) h.abort()
    this.running.clear()
    this.clearTimer('wake')
    this.clearTimer('probe')
    this.syncLock()
  }

  subscribe(listener: (s: QueueSnapshot) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  getSnapshot = (): QueueSnapshot => this.snapshot

  /**
   * Queue a new batch (one study) with its files for the signed-in user; persisted before this
   * resolves. Refused when nobody is signed in: every record must have an owner.
   */
  async add(batch: QBatch, files: Array<{ file: QFile; blob: Blob }>): Promise<void> {
    const owner = batch.owner || this.owner
    if (!owner) throw new Error('Sign in to queue a study.')
    const b: QBatch = { ...batch, owner }
    const fs = files.map(({ file, blob }) => ({ file: { ...file, owner }, blob }))
    // Stored first: the tab that runs the queue (maybe another one) finds it there.
    await this.deps.store.addBatch(b, fs)
    // A store notification may have brought it in meanwhile (and started it): keep that.
    if (!this.batches.has(b.id)) this.batches.set(b.id, b)
    for (const { file } of fs) if (!this.files.has(file.id)) this.files.set(file.id, file)
    this.emit()
    this.pump()
  }

  /**
   * Who is signed in (null: signed out). Only their batches are shown and sent, with their token;
   * everyone else's stay on the device untouched until they sign in. A change stops the uploads
   * running for the previous user (they resume later from their uploadUrl).
   */
  setOwner(owner: string | null): void {
    const next = owner || null
    if (next === this.owner) return
    for (const [id, h] of this.running) {
      h.abort()
      this.updateFile(id, { state: 'queued' }, false)
    }
    this.running.clear()
    this.clearTimer('wake')
    this.owner = next
    this.authRequired = false
    this.claimUnowned()
    this.emit()
    this.syncLock()
    this.pump()
  }

  /** After a new sign-in: lift the auth pause and go on. */
  setAuthenticated(): void {
    this.authRequired = false
    if (!this.leading) this.deps.channel?.post({ type: 'authenticated' })
    this.emit()
    this.pump()
  }

  /** Retry failed files (and a failed batch creation) of a batch of the signed-in user now. */
  retry(batchId: string): void {
    const b = this.batches.get(batchId)
    if (!b || !isOwnedBy(b, this.owner)) return
    if (!this.leading) {
      this.deps.channel?.post({ type: 'retry', batchId })
      return
    }
    const now = this.clock.now()
    if (b.state === 'failed') this.updateBatch(b.id, { state: b.serverId ? 'open' : 'pending', nextAttemptAt: now, error: null })
    for (const f of this.files.values()) {
      if (f.batchId === batchId && (f.state === 'failed' || f.state === 'queued')) {
        this.updateFile(f.id, { state: 'queued', nextAttemptAt: now, error: null })
      }
    }
    this.agentReachable = true
    this.pump()
  }

  /** Remove a batch from this device (and stop its uploads). */
  async remove(batchId: string): Promise<void> {
    const b = this.batches.get(batchId)
    if (b && !isOwnedBy(b, this.owner)) return // only its owner may drop it
    if (!this.leading && this.deps.lock) {
      // The tab running the queue stops its uploads and removes it; hidden here meanwhile.
      this.deps.channel?.post({ type: 'remove', batchId })
      this.batches.delete(batchId)
      for (const f of [...this.files.values()]) if (f.batchId === batchId) this.files.delete(f.id)
      this.emit()
      return
    }
    this.removed.add(batchId)
    for (const f of [...this.files.values()]) {
      if (f.batchId !== batchId) continue
      this.running.get(f.id)?.abort()
      this.running.delete(f.id)
      this.files.delete(f.id)
    }
    this.batches.delete(batchId)
    this.persist(() => this.deps.store.removeBatch(batchId))
    this.emit()
    await this.writes
    this.pump()
  }

  /** Wait until queued store writes are done (tests, and before a page unload). */
  async flush(): Promise<void> {
    await this.writes
  }

  /** Something happened outside (e.g. the app heard from the agent): try now. */
  kick(): void {
    if (!this.leading) this.deps.channel?.post({ type: 'kick' })
    this.pump()
  }

  // ---- internals ----

  /** Hold the queue lock while started with someone signed in; let it go otherwise. */
  private syncLock(): void {
    const lock = this.deps.lock
    if (!lock) return
    const want = this.started && this.owner !== null
    if (want && !this.tenure) {
      const t: Tenure = { abort: new AbortController(), release: null }
      this.tenure = t
      lock(
        () =>
          new Promise<void>((resolve) => {
            if (this.tenure !== t) return resolve() // given up before it was granted
            t.release = resolve
            void this.lead(t)
          }),
        t.abort.signal,
      ).catch(() => {
        // request dropped (signed out or stopped before it was granted)
      })
    } else if (!want && this.tenure) {
      const t = this.tenure
      this.tenure = null
      t.abort.abort()
      if (t.release) void this.resign(t)
    }
  }

  /** The lock is ours: load what the previous tab left and run the queue. */
  private async lead(t: Tenure): Promise<void> {
    let data: { batches: QBatch[]; files: QFile[] }
    try {
      data = await this.deps.store.load()
    } catch (e) {
      console.error('queue: could not load', e)
      data = { batches: [...this.batches.values()], files: [...this.files.values()] }
    }
    if (this.tenure !== t) return // let go meanwhile (resign has run)
    this.takeOver(data)
    this.leading = true
    this.agentReachable = true
    this.claimUnowned()
    this.emit()
    this.pump()
  }

  /** Let the lock go once this tab's uploads are stopped and its writes are stored. */
  private async resign(t: Tenure): Promise<void> {
    const was = this.leading
    this.leading = false
    for (const [id, h] of this.running) {
      h.abort()
      this.updateFile(id, { state: 'queued' }, false)
    }
    this.running.clear()
    this.clearTimer('wake')
    this.clearTimer('probe')
    // A batch created at the agent but not yet stored would be created again by the next tab.
    while (this.inflight.size) await Promise.allSettled([...this.inflight])
    await this.writes
    t.release?.()
    if (was) this.emit()
  }

  /** Start from the stored state (at start, or when this tab takes the queue over). */
  private takeOver(data: { batches: QBatch[]; files: QFile[] }): void {
    this.batches.clear()
    this.files.clear()
    for (const b of data.batches) if (!this.removed.has(b.id)) this.batches.set(b.id, { ...b })
    for (const f of data.files) {
      if (this.removed.has(f.batchId)) continue
      // An upload cut by a reload, a closed tab or another tab letting go resumes from its uploadUrl.
      this.files.set(f.id, f.state === 'uploading' ? { ...f, state: 'queued' } : { ...f })
    }
  }

  /** Show the stored state as it is (a tab that does not run the queue). */
  private replaceFrom(data: { batches: QBatch[]; files: QFile[] }): void {
    this.batches = new Map(data.batches.map((b) => [b.id, { ...b }]))
    this.files = new Map(data.files.map((f) => [f.id, { ...f }]))
  }

  private onStoreChange(data: { batches: QBatch[]; files: QFile[] }): void {
    if (!this.started) return
    if (!this.leading) {
      this.replaceFrom(data)
      this.emit()
      return
    }
    // Running the queue: this tab's memory is the truth (its writes may still be on their way);
    // take in only what other tabs queued. Without a lock every tab runs its own work only.
    if (!this.deps.lock) return
    let changed = false
    for (const b of data.batches) {
      if (this.batches.has(b.id) || this.removed.has(b.id)) continue
      this.batches.set(b.id, { ...b })
      changed = true
    }
    for (const f of data.files) {
      if (this.files.has(f.id) || this.removed.has(f.batchId) || !this.batches.has(f.batchId)) continue
      this.files.set(f.id, f.state === 'uploading' ? { ...f, state: 'queued' } : { ...f })
      changed = true
    }
    if (!changed) return
    this.claimUnowned()
    this.emit()
    this.pump()
  }

  private onMessage(m: QueueMessage): void {
    if (!this.leading || !this.started) return
    if (m.type === 'retry') this.retry(m.batchId)
    else if (m.type === 'remove') void this.remove(m.batchId)
    else if (m.type === 'kick') this.pump()
    else if (m.type === 'authenticated') this.setAuthenticated()
  }

  private canWork(): boolean {
    return this.started && this.leading && this.owner !== null && this.deps.network.isOnline() && this.agentReachable && !this.authRequired
  }

  /** Records from before owners were kept go to the first user signed in after the upgrade. */
  private claimUnowned(): void {
    if (!this.loaded || this.owner === null || !this.leading) return
    const claimed = claimUnowned([...this.batches.values()], [...this.files.values()], this.owner)
    for (const b of claimed.batches) this.updateBatch(b.id, { owner: b.owner })
    for (const f of claimed.files) this.updateFile(f.id, { owner: f.owner }, false)
  }

  private onNetworkChange(): void {
    if (!this.deps.network.isOnline()) {
      // Offline: stop the uploads cleanly; they resume from their uploadUrl.
      for (const [id, h] of this.running) {
        h.abort()
        this.updateFile(id, { state: 'queued' }, false)
      }
      this.running.clear()
      this.emit()
      return
    }
    this.agentReachable = true // worth a try at once
    this.emit()
    this.pump()
  }

  private pump(): void {
    if (!this.started || !this.leading) return
    this.clearTimer('wake')
    if (!this.canWork()) {
      if (this.owner !== null && !this.authRequired && this.deps.network.isOnline() && !this.agentReachable) this.scheduleProbe()
      return
    }
    const now = this.clock.now()
    const owner = this.owner
    const { batches, files } = ownedBy([...this.batches.values()], [...this.files.values()], owner)

    if (!this.creating) {
      const next = batchesToCreate(batches, now, owner)[0]
      if (next) this.track(this.createBatch(next))
    }
    for (const b of batches) {
      if (!this.sending.has(b.id) && b.nextAttemptAt <= now && batchReadyToSend(b, files)) this.track(this.sendBatch(b))
    }
    for (const f of filesToStart(batches, files, new Set(this.running.keys()), now, this.concurrency, owner)) {
      this.startUpload(f)
    }
    const wake = nextWakeUp([...this.batches.values()], [...this.files.values()], now, owner)
    if (wake !== null) this.wakeTimer = this.clock.setTimeout(() => this.pump(), wake - now)
  }

  private track(p: Promise<void>): void {
    this.inflight.add(p)
    const done = () => void this.inflight.delete(p)
    p.then(done, done)
  }

  private async createBatch(b: QBatch): Promise<void> {
    this.creating = true
    try {
      const serverId = await this.deps.api.createBatch(b)
      this.agentReachable = true
      this.updateBatch(b.id, { serverId, state: 'open', error: null, attempts: 0, nextAttemptAt: 0 })
    } catch (e) {
      const err = asQueueError(e)
      if (!this.batches.has(b.id)) return
      if (err.kind === 'rejected') {
        this.updateBatch(b.id, { state: 'failed', error: err.message })
      } else {
        const attempts = b.attempts + 1
        this.updateBatch(b.id, {
          attempts,
          nextAttemptAt: this.clock.now() + backoffDelay(attempts),
          error: err.kind === 'network' ? null : err.message,
        })
        this.onFailure(err, b.owner)
      }
    } finally {
      this.creating = false
      this.pump()
    }
  }

  private async sendBatch(b: QBatch): Promise<void> {
    this.sending.add(b.id)
    try {
      // Only a 2xx gets here (the agent answers 200 again for a batch already sent).
      await this.deps.api.sendBatch(b.serverId!)
      this.agentReachable = true
      this.updateBatch(b.id, { state: 'sent', sentAt: this.clock.now(), error: null, attempts: 0 })
    } catch (e) {
      const err = asQueueError(e)
      if (!this.batches.has(b.id)) return
      if (err.kind !== 'auth' && (err.status === 404 || err.status === 403)) {
        // Not sent, and asking again will not help: say so on the study card.
        this.updateBatch(b.id, { state: 'failed', error: err.status === 404 ? SEND_NOT_FOUND_MESSAGE : SEND_FORBIDDEN_MESSAGE })
      } else {
        // 401 pauses for sign-in (onFailure); anything else: try again after a backoff.
        const attempts = b.attempts + 1
        this.updateBatch(b.id, {
          attempts,
          nextAttemptAt: this.clock.now() + backoffDelay(attempts),
          error: err.kind === 'network' || err.kind === 'auth' ? null : err.message,
        })
        this.onFailure(err, b.owner)
      }
    } finally {
      this.sending.delete(b.id)
      this.pump()
    }
  }

  private startUpload(f: QFile): void {
    const batch = this.batches.get(f.batchId)!
    this.updateFile(f.id, { state: 'uploading', error: null }, false)
    const handle = this.deps.uploader.start(this.files.get(f.id)!, batch, {
      onProgress: (bytesSent) => {
        const cur = this.files.get(f.id)
        if (!cur || !this.running.has(f.id)) return
        this.files.set(f.id, { ...cur, bytesSent })
        this.emitProgress()
      },
      onChunkComplete: (bytesAccepted) => {
        const cur = this.files.get(f.id)
        if (!cur || !this.running.has(f.id)) return
        this.updateFile(f.id, { bytesSent: bytesAccepted }, false)
        this.emitProgress()
      },
      onUploadUrl: (url) => {
        if (!this.files.has(f.id)) return
        this.updateFile(f.id, { uploadUrl: url })
      },
    })
    this.running.set(f.id, handle)
    this.emit()
    handle.promise.then(
      () => this.uploadDone(f.id, handle),
      (e) => this.uploadFailed(f.id, handle, asQueueError(e)),
    )
  }

  private uploadDone(id: string, handle: UploadHandle): void {
    if (this.running.get(id) !== handle) return // aborted meanwhile
    this.running.delete(id)
    const cur = this.files.get(id)
    if (!cur) return
    this.agentReachable = true
    const done: QFile = { ...cur, state: 'uploaded', bytesSent: cur.size, error: null, attempts: 0 }
    this.files.set(id, done)
    this.persist(() => this.deps.store.fileUploaded(done))
    this.emit()
    this.pump()
  }

  private uploadFailed(id: string, handle: UploadHandle, err: QueueError): void {
    if (this.running.get(id) !== handle) return
    this.running.delete(id)
    const cur = this.files.get(id)
    if (!cur) return
    if (err.kind === 'rejected') {
      // The agent looked at the file and said no (e.g. not DICOM): keep its reason.
      this.updateFile(id, { state: err.code === 'refused' || err.status === 415 ? 'refused' : 'failed', error: err.message })
    } else {
      const attempts = cur.attempts + 1
      this.updateFile(id, {
        state: 'queued',
        attempts,
        nextAttemptAt: this.clock.now() + backoffDelay(attempts),
        error: err.kind === 'network' ? null : err.message,
      })
      this.onFailure(err, cur.owner)
    }
    this.pump()
  }

  /** `owner`: whose request failed (a 401 of someone who has signed out is not the current user's). */
  private onFailure(err: QueueError, owner: string): void {
    if (err.kind === 'auth') {
      if (owner !== this.owner) return
      this.authRequired = true
      for (const [id, h] of this.running) {
        h.abort()
        this.updateFile(id, { state: 'queued' }, false)
      }
      this.running.clear()
    } else if (err.kind === 'network') {
      this.agentReachable = false
    }
    this.emit()
  }

  private scheduleProbe(): void {
    if (this.probeTimer !== null) return
    this.probeTimer = this.clock.setTimeout(async () => {
      this.probeTimer = null
      if (!this.started || !this.leading || this.agentReachable || this.owner === null) return
      let ok = false
      try {
        ok = await this.deps.api.probe()
      } catch {
        ok = false
      }
      if (ok) {
        this.agentReachable = true
        this.emit()
      }
      this.pump()
    }, PROBE_INTERVAL_MS)
  }

  private clearTimer(which: 'wake' | 'probe'): void {
    const h = which === 'wake' ? this.wakeTimer : this.probeTimer
    if (h !== null) this.clock.clearTimeout(h)
    if (which === 'wake') this.wakeTimer = null
    else this.probeTimer = null
  }

  private updateBatch(id: string, patch: Partial<QBatch>): void {
    const cur = this.batches.get(id)
    if (!cur) return
    const next = { ...cur, ...patch }
    this.batches.set(id, next)
    this.persist(() => this.deps.store.saveBatch(next))
    this.emit()
  }

  private updateFile(id: string, patch: Partial<QFile>, emit = true): void {
    const cur = this.files.get(id)
    if (!cur) return
    const next = { ...cur, ...patch }
    this.files.set(id, next)
    this.persist(() => this.deps.store.saveFile(next))
    if (emit) this.emit()
  }

  private persist(write: () => Promise<void>): void {
    this.writes = this.writes.then(write).catch((e) => {
      console.error('queue: could not save', e)
    })
  }

  private emitProgress(): void {
    const now = this.clock.now()
    if (now - this.lastProgressEmit < this.progressIntervalMs) return
    this.lastProgressEmit = now
    this.emit()
  }

  private makeSnapshot(): QueueSnapshot {
    const all = { batches: [...this.batches.values()], files: [...this.files.values()] }
    const { batches, files } = ownedBy(all.batches, all.files, this.owner)
    return {
      owner: this.owner,
      batches,
      files,
      online: this.deps.network.isOnline(),
      agentReachable: this.agentReachable,
      authRequired: this.authRequired,
      waiting: waitingOnDevice(batches, files),
      others: othersWaiting(all.batches, all.files, this.owner),
    }
  }

  private emit(): void {
    this.snapshot = this.makeSnapshot()
    for (const l of this.listeners) l(this.snapshot)
  }
}
