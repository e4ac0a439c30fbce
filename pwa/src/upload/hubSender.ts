/**
 * Sending straight to the hub (no agent nearby), wired into the same queue as the agent path:
 *
 * - "create the batch": hash each file (SHA-256, streamed, hash-wasm), read its DICOM header,
 *   POST the manifest; the hub answers which instances it lacks. The plan is kept in IndexedDB.
 * - "upload a file": an instance the hub already holds is done at once (nothing is sent); any
 *   other becomes a one-instance segment (DEFLATE when it pays) sent with tus, resumable.
 * - "send the batch": POST commit; the study is routed by the hub like an agent's.
 */
import { readDicomHeader } from '../dicom/parse'
import { QueueError, type QBatch, type QueueApi, type Uploader } from '../queue/types'
import { ApiError, apiUrl, getToken, request, toQueueError } from './api'
import { db, getBlob } from './db'
import { ensureFresh } from './hubAuth'
import { tusUpload } from './hubTus'
import { buildSegment, sha256Blob, shouldCompress } from './segment'
import { session } from './session'

export interface PlannedInstance {
  fileId: string
  sopInstanceUid: string
  seriesInstanceUid: string
  sha256: string
  size: number
  compress: boolean
}

export interface HubPlan {
  batchId: string
  studyInstanceUid: string
  facility: string | null
  instances: PlannedInstance[]
  /** SOP Instance UIDs the hub lacks (its manifest answer); null: not asked yet. */
  missing: string[] | null
}

const planKey = (batchId: string) => `hubplan:${batchId}`

export async function getPlan(batchId: string): Promise<HubPlan | undefined> {
  return (await db.kv.get(planKey(batchId)))?.value as HubPlan | undefined
}
async function savePlan(p: HubPlan): Promise<void> {
  await db.kv.put({ key: planKey(p.batchId), value: p })
}

interface ManifestAnswer {
  study_instance_uid: string
  declared: number
  held: number
  missing: string[]
  missing_bytes: number
}

function asQueueError(e: unknown): QueueError {
  if (e instanceof ApiError && e.status === 422 && e.code === 'facility_required') {
    return new QueueError('rejected', 'Choose which facility you send for (top of the page), then retry.', 422, e.code)
  }
  if (e instanceof ApiError && e.status === 409) {
    // study_held / study_refused: the hub keeps it for an admin; the study stays on this device.
    return new QueueError('rejected', `${e.detail} The study stays on this device.`, 409, e.code)
  }
  return toQueueError(e)
}

async function makePlan(b: QBatch): Promise<HubPlan> {
  const files = (await db.files.where('batchId').equals(b.id).toArray()).sort((x, y) => x.order - y.order)
  const instances: PlannedInstance[] = []
  let study = b.study.studyInstanceUid
  for (const f of files) {
    if (f.state === 'refused') continue
    const blob = await getBlob(f.id)
    if (!blob) throw new QueueError('rejected', 'Its contents are no longer on this device. Pick the files again.', 0, 'gone')
    const parsed = await readDicomHeader(blob, f.name)
    if (!parsed.ok) throw new QueueError('rejected', `${f.name}: ${parsed.message}`, 0, parsed.code)
    study = study || parsed.header.studyInstanceUid
    instances.push({
      fileId: f.id,
      sopInstanceUid: parsed.header.sopInstanceUid,
      seriesInstanceUid: parsed.header.seriesInstanceUid,
      sha256: await sha256Blob(blob),
      size: blob.size,
      compress: shouldCompress(parsed.header.transferSyntaxUid),
    })
  }
  return { batchId: b.id, studyInstanceUid: study, facility: session.get()?.facility ?? null, instances, missing: null }
}

export const hubQueueApi: QueueApi = {
  async createBatch(b) {
    try {
      await ensureFresh()
      const plan = (await getPlan(b.id)) ?? (await makePlan(b))
      if (!plan.facility) plan.facility = session.get()?.facility ?? null
      await savePlan(plan)
      const answer = await request<ManifestAnswer>('POST', `/studies/${encodeURIComponent(plan.studyInstanceUid)}/manifest`, {
        service_level: b.serviceLevel,
        instances: plan.instances.map((i) => ({
          sop_instance_uid: i.sopInstanceUid,
          series_instance_uid: i.seriesInstanceUid,
          sha256: i.sha256,
          size: i.size,
        })),
        ...(plan.facility ? { facility: plan.facility } : {}),
      })
      await savePlan({ ...plan, missing: answer.missing })
      return plan.studyInstanceUid
    } catch (e) {
      throw asQueueError(e)
    }
  },
  async sendBatch(studyUid) {
    try {
      await ensureFresh()
      const batches = await db.batches.where('serverId').equals(studyUid).toArray()
      let plan: HubPlan | undefined
      let batch: QBatch | undefined
      for (const b of batches.sort((x, y) => y.createdAt - x.createdAt)) {
        plan = await getPlan(b.id)
        batch = b
        if (plan) break
      }
      if (!plan || !batch) throw new QueueError('rejected', 'This device no longer knows what the study holds. Send it again.', 404)
      await request('POST', `/studies/${encodeURIComponent(studyUid)}/commit`, {
        service_level: batch.serviceLevel,
        instances: plan.instances.map((i) => ({ sop_instance_uid: i.sopInstanceUid, sha256: i.sha256 })),
        ...(plan.facility ? { facility: plan.facility } : {}),
        ...(batch.clinicalHistory ? { clinical_history: batch.clinicalHistory } : {}),
        ...(batch.referringClinician ? { referring_clinician: batch.referringClinician } : {}),
      })
    } catch (e) {
      throw asQueueError(e)
    }
  },
  async probe() {
    try {
      const res = await fetch('./config.json', { cache: 'no-store' })
      return res.ok
    } catch {
      return false
    }
  },
}

export const hubUploader: Uploader = {
  start(file, _batch, cb) {
    const ctrl = new AbortController()
    const promise = (async () => {
      const plan = await getPlan(file.batchId)
      if (!plan || plan.missing === null) throw new QueueError('server', 'The manifest was not answered yet.')
      const inst = plan.instances.find((i) => i.fileId === file.id)
      if (!inst || !plan.missing.includes(inst.sopInstanceUid)) {
        cb.onProgress(file.size) // the hub already holds it: nothing crosses the network
        return
      }
      const blob = await getBlob(file.id)
      if (!blob) throw new QueueError('rejected', 'Its contents are no longer on this device. Pick the file again.', 0, 'gone')
      const seg = await buildSegment(file.id, plan.studyInstanceUid, [{ ...inst, blob }])
      const scale = (sent: number) => Math.floor((sent / seg.length) * file.size)
      // Resume only an upload made of these very bytes (another app version may DEFLATE in
      // other blocks): the segment's SHA-256 is kept with the upload it was created for.
      const segKey = `hubseg:${file.id}`
      const madeFor = (await db.kv.get(segKey))?.value as { url: string; sha256: string } | undefined
      const resumable = file.uploadUrl && madeFor?.url === file.uploadUrl && madeFor.sha256 === seg.sha256
      await tusUpload(seg.blob, {
        endpoint: apiUrl('/uploads'),
        uploadUrl: resumable ? file.uploadUrl : null,
        metadata: {
          kind: 'relaypacs-segment',
          study: plan.studyInstanceUid,
          segment: file.id,
          sha256: seg.sha256,
          ...(plan.facility ? { facility: plan.facility } : {}),
        },
        headers: async () => {
          await ensureFresh().catch(() => undefined)
          return { Authorization: `Bearer ${getToken() ?? ''}` }
        },
        chunkSize: hubChunkSize(),
        signal: ctrl.signal,
        onUploadUrl: (u) => {
          void db.kv.put({ key: segKey, value: { url: u, sha256: seg.sha256 } })
          cb.onUploadUrl(u)
        },
        onProgress: (off) => cb.onChunkComplete(scale(off)),
      })
      await db.kv.delete(segKey)
    })()
    return { promise, abort: () => ctrl.abort() }
  },
}

/** 1 MiB unless overridden (localStorage "relaypacs.chunkSize", in bytes) e.g. for tests. */
function hubChunkSize(): number {
  try {
    const v = Number(localStorage.getItem('relaypacs.chunkSize'))
    if (Number.isFinite(v) && v >= 64 * 1024) return Math.min(v, 4 * 1024 * 1024)
  } catch {
    // no storage
  }
  return 1024 * 1024
}
