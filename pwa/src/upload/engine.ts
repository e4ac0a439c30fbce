/** Wires the pure queue to the browser: Dexie, tus, fetch, navigator.onLine. */
import { Scheduler } from '../queue/scheduler'
import { QueueError, type Network, type QueueApi, type QueueChannel, type QueueLock, type QueueMessage, type Uploader, type UploadHandle } from '../queue/types'
import { agent, toQueueError } from './api'
import { dexieStore } from './db'
import { session } from './session'
import { isHub } from './target'
import { tusUploader } from './tusUploader'

const browserNetwork: Network = {
  isOnline: () => navigator.onLine,
  subscribe(cb) {
    window.addEventListener('online', cb)
    window.addEventListener('offline', cb)
    return () => {
      window.removeEventListener('online', cb)
      window.removeEventListener('offline', cb)
    }
  },
}

const queueApi: QueueApi = {
  async createBatch(b) {
    try {
      const created = await agent.createBatch({
        service_level: b.serviceLevel,
        clinical_history: b.clinicalHistory,
        referring_clinician: b.referringClinician,
        expected_files: b.expectedFiles,
        label: b.label,
      })
      return created.id
    } catch (e) {
      throw toQueueError(e)
    }
  },
  async sendBatch(id) {
    try {
      await agent.sendBatch(id)
    } catch (e) {
      throw toQueueError(e)
    }
  },
  async probe() {
    try {
      await agent.info()
      return true
    } catch {
      return false
    }
  },
}

/**
 * Straight to the hub: its sender is loaded only there (an agent's app never fetches it). Chosen
 * per call: ./config.json is read before the app renders and the queue starts (main.tsx).
 */
const hubSender = () => import('./hubSender')

const hubApi: QueueApi = {
  createBatch: async (b) => (await hubSender()).hubQueueApi.createBatch(b),
  sendBatch: async (id) => (await hubSender()).hubQueueApi.sendBatch(id),
  probe: async () => (await hubSender()).hubQueueApi.probe(),
}

const uploader: Uploader = {
  start(file, batch, cb) {
    if (!isHub()) return tusUploader.start(file, batch, cb)
    let handle: UploadHandle | null = null
    let aborted = false
    const promise = hubSender().then((m) => {
      if (aborted) throw new QueueError('network', 'aborted')
      handle = m.hubUploader.start(file, batch, cb)
      return handle.promise
    })
    return {
      promise,
      abort: () => {
        aborted = true
        handle?.abort()
      },
    }
  },
}

const api: QueueApi = {
  createBatch: (b) => (isHub() ? hubApi : queueApi).createBatch(b),
  sendBatch: (id) => (isHub() ? hubApi : queueApi).sendBatch(id),
  probe: () => (isHub() ? hubApi : queueApi).probe(),
}

export const QUEUE_LOCK = 'relaypacs-queue'

/**
 * Only one tab runs the queue: the one holding this Web Lock, until it closes or its user signs
 * out; then a waiting tab takes over. Without navigator.locks (old browsers, or a page on plain
 * http:// that is not localhost: Web Locks need a secure context) every tab runs the queue as before.
 */
function browserLock(): QueueLock | undefined {
  const locks = typeof navigator !== 'undefined' ? navigator.locks : undefined
  if (!locks || typeof locks.request !== 'function') return undefined
  return (run, signal) => locks.request(QUEUE_LOCK, { mode: 'exclusive', signal }, () => run())
}

/** The other tabs pass retry/remove on to the one running the queue. */
function browserChannel(): QueueChannel | undefined {
  if (typeof BroadcastChannel === 'undefined') return undefined
  const bc = new BroadcastChannel(QUEUE_LOCK)
  return {
    post: (msg) => bc.postMessage(msg),
    subscribe(cb) {
      const h = (e: MessageEvent<QueueMessage>) => cb(e.data)
      bc.addEventListener('message', h)
      return () => bc.removeEventListener('message', h)
    },
  }
}

const lock = browserLock()

export const queue = new Scheduler({
  store: dexieStore,
  // On the hub (./config.json said so) the browser sends straight to it; else through the agent.
  uploader,
  api,
  network: browserNetwork,
  concurrency: 2,
  lock,
  channel: lock ? browserChannel() : undefined,
})

// Only the signed-in user's work runs, with their token; signing out stops it (it stays queued).
function followSession(): void {
  queue.setOwner(session.get()?.username ?? null)
}
followSession()
session.subscribe(followSession)
