/** IndexedDB (Dexie): the upload queue survives reloads, closed tabs and lost Wi-Fi. */
import Dexie, { liveQuery, type EntityTable } from 'dexie'
import { UNOWNED, type QBatch, type QFile, type QueueStore } from '../queue/types'

interface BlobRow {
  id: string // file id
  blob: Blob
}

interface KV {
  key: string
  value: unknown
}

export class RelayDb extends Dexie {
  batches!: EntityTable<QBatch, 'id'>
  files!: EntityTable<QFile, 'id'>
  blobs!: EntityTable<BlobRow, 'id'>
  kv!: EntityTable<KV, 'key'>

  constructor() {
    super('relaypacs')
    this.version(1).stores({
      batches: 'id, serverId, state, createdAt',
      files: 'id, batchId, state',
      blobs: 'id',
      kv: 'key',
    })
    // v2: shared devices. Every batch and file has the username of who queued it; records from
    // v1 get '' (unowned) and go to the first user who signs in after the upgrade (see Scheduler).
    this.version(2)
      .stores({
        batches: 'id, serverId, state, createdAt, owner',
        files: 'id, batchId, state, owner',
      })
      .upgrade(async (tx) => {
        await tx
          .table('batches')
          .toCollection()
          .modify((b: Partial<QBatch>) => {
            if (typeof b.owner !== 'string') b.owner = UNOWNED
          })
        await tx
          .table('files')
          .toCollection()
          .modify((f: Partial<QFile>) => {
            if (typeof f.owner !== 'string') f.owner = UNOWNED
          })
      })
  }
}

export const db = new RelayDb()

export const dexieStore: QueueStore = {
  async load() {
    const [batches, files] = await Promise.all([db.batches.toArray(), db.files.toArray()])
    return { batches, files }
  },
  async addBatch(batch, files) {
    await db.transaction('rw', db.batches, db.files, db.blobs, async () => {
      await db.batches.put(batch)
      await db.files.bulkPut(files.map((f) => f.file))
      await db.blobs.bulkPut(files.map((f) => ({ id: f.file.id, blob: f.blob })))
    })
  },
  async saveBatch(batch) {
    await db.batches.put(batch)
  },
  async saveFile(file) {
    await db.files.put(file)
  },
  async fileUploaded(file) {
    await db.transaction('rw', db.files, db.blobs, async () => {
      await db.files.put(file)
      await db.blobs.delete(file.id)
    })
  },
  async removeBatch(batchId) {
    await db.transaction('rw', db.batches, db.files, db.blobs, async () => {
      const ids = (await db.files.where('batchId').equals(batchId).primaryKeys()) as string[]
      await db.blobs.bulkDelete(ids)
      await db.files.bulkDelete(ids)
      await db.batches.delete(batchId)
    })
  },
  watch(cb) {
    // Dexie tells every tab of this origin about a write (BroadcastChannel); the query runs again.
    const sub = liveQuery(async () => {
      const [batches, files] = await Promise.all([db.batches.toArray(), db.files.toArray()])
      return { batches, files }
    }).subscribe({
      next: cb,
      error: (e) => console.error('queue: could not watch the store', e),
    })
    return () => sub.unsubscribe()
  },
}

export async function getBlob(fileId: string): Promise<Blob | undefined> {
  return (await db.blobs.get(fileId))?.blob
}
