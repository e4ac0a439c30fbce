/** Wires the pure queue to the browser: Dexie, tus, fetch, navigator.onLine. */
import { Scheduler } from '../queue/scheduler'
import type { Network, QueueApi } from '../queue/types'
import { agent, toQueueError } from './api'
import { dexieStore } from './db'
import { session } from './session'
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

export const queue = new Scheduler({
  store: dexieStore,
  uploader: tusUploader,
  api: queueApi,
  network: browserNetwork,
  concurrency: 2,
})

// Only the signed-in user's work runs, with their token; signing out stops it (it stays queued).
function followSession(): void {
  queue.setOwner(session.get()?.username ?? null)
}
followSession()
session.subscribe(followSession)
