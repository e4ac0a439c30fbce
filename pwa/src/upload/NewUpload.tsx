import { useRef, useState, type DragEvent, type ReactNode } from 'react'
import { newId } from '../lib/id'
import { formatBytes, formatDicomDate, formatPersonName, plural } from '../lib/format'
import type { QBatch, QFile, ServiceLevel } from '../queue/types'
import { analyse, type Analysis } from './analyse'
import { queue } from './engine'
import { expandZips, fromDrop, fromFileList, type Picked } from './pick'
import { session } from './session'
import { Alert, ProgressBar } from './ui'

interface Meta {
  serviceLevel: ServiceLevel
  clinicalHistory: string
  referringClinician: string
}

const emptyMeta = (): Meta => ({ serviceLevel: 'routine', clinicalHistory: '', referringClinician: '' })

function PickButton(props: { testId: string; label: string; hint: string; onFiles: (f: FileList) => void; folder?: boolean; zip?: boolean; primary?: boolean }) {
  const id = `pick-${props.testId}`
  return (
    <div className="relative flex flex-col">
      <label
        htmlFor={id}
        className={`${props.primary ? 'btn-primary' : 'btn-secondary'} cursor-pointer has-[:focus-visible]:outline-3 has-[:focus-visible]:outline-offset-2 has-[:focus-visible]:outline-amber-700`}
      >
        {props.label}
        <input
          id={id}
          data-testid={props.testId}
          type="file"
          className="sr-only-file"
          multiple={!props.zip}
          accept={props.zip ? '.zip,application/zip' : undefined}
          aria-describedby={`${id}-hint`}
          {...(props.folder ? { webkitdirectory: '', directory: '' } : {})}
          onChange={(e) => {
            if (e.target.files && e.target.files.length) props.onFiles(e.target.files)
            e.target.value = ''
          }}
        />
      </label>
      <span id={`${id}-hint`} className="mt-1 text-center text-xs text-slate-700">
        {props.hint}
      </span>
    </div>
  )
}

function Section({ n, title, children }: { n: number; title: string; children: ReactNode }) {
  return (
    <section aria-labelledby={`step-${n}`} className="flex flex-col gap-3">
      <h3 id={`step-${n}`} className="text-lg font-semibold">
        <span className="mr-2 inline-flex h-7 w-7 items-center justify-center rounded-full bg-brand-700 text-sm text-white" aria-hidden="true">
          {n}
        </span>
        {title}
      </h3>
      {children}
    </section>
  )
}

export function NewUpload({ onDone }: { onDone: () => void }) {
  const [picked, setPicked] = useState<Picked[]>([])
  const [analysis, setAnalysis] = useState<Analysis | null>(null)
  const [reading, setReading] = useState<{ done: number; total: number; zip?: boolean } | null>(null)
  const [pickErrors, setPickErrors] = useState<string[]>([])
  const [meta, setMeta] = useState<Record<string, Meta>>({})
  const [dragging, setDragging] = useState(false)
  const [sending, setSending] = useState(false)
  const [sendError, setSendError] = useState<string | null>(null)
  const runId = useRef(0)

  async function addPicked(more: Picked[]) {
    const run = ++runId.current
    setReading({ done: 0, total: more.length })
    const { files, errors } = await expandZips(more, (_zip, done, total) => {
      if (run === runId.current) setReading({ done, total, zip: true })
    })
    if (errors.length) setPickErrors((e) => [...e, ...errors])
    const all = [...picked, ...files]
    setPicked(all)
    setReading({ done: 0, total: all.length })
    const result = await analyse(all, (done, total) => {
      if (run === runId.current && (done % 10 === 0 || done === total)) setReading({ done, total })
    })
    if (run !== runId.current) return
    setAnalysis(result)
    setMeta((m) => {
      const next = { ...m }
      for (const s of result.studies) next[s.summary.studyInstanceUid] ??= emptyMeta()
      return next
    })
    setReading(null)
  }

  function onDrop(e: DragEvent) {
    e.preventDefault()
    setDragging(false)
    void fromDrop(e.dataTransfer).then(addPicked)
  }

  function clear() {
    runId.current++
    setPicked([])
    setAnalysis(null)
    setPickErrors([])
    setReading(null)
  }

  async function send() {
    if (!analysis) return
    setSending(true)
    setSendError(null)
    try {
      void navigator.storage?.persist?.()
      const owner = session.get()?.username
      if (!owner) throw new Error('You are signed out. Sign in again.')
      const now = Date.now()
      // STAT studies first so that they are queued first.
      const studies = [...analysis.studies].sort(
        (a, b) => Number(meta[b.summary.studyInstanceUid]?.serviceLevel === 'stat') - Number(meta[a.summary.studyInstanceUid]?.serviceLevel === 'stat'),
      )
      for (const [i, s] of studies.entries()) {
        const m = meta[s.summary.studyInstanceUid] ?? emptyMeta()
        const batchId = newId()
        const label = [s.summary.modality, s.summary.studyDescription, formatDicomDate(s.summary.studyDate)].filter(Boolean).join(' ')
        const batch: QBatch = {
          id: batchId,
          owner,
          serverId: null,
          serviceLevel: m.serviceLevel,
          clinicalHistory: m.clinicalHistory.trim(),
          referringClinician: m.referringClinician.trim(),
          label: label.slice(0, 200),
          createdAt: now + i,
          state: 'pending',
          expectedFiles: s.files.length,
          study: s.summary,
          attempts: 0,
          nextAttemptAt: 0,
          error: null,
          sentAt: null,
        }
        const files = s.files.map((f, order) => {
          const file: QFile = {
            id: newId(),
            batchId,
            owner,
            order,
            name: f.picked.file.name,
            size: f.picked.file.size,
            type: 'application/dicom',
            sopInstanceUid: f.header.sopInstanceUid,
            state: 'queued',
            uploadUrl: null,
            bytesSent: 0,
            attempts: 0,
            nextAttemptAt: 0,
            error: null,
          }
          return { file, blob: f.picked.file as Blob }
        })
        await queue.add(batch, files)
      }
      onDone()
    } catch (e) {
      const quota = e instanceof Error && /quota/i.test(e.name + e.message)
      setSendError(
        quota
          ? 'This device is out of storage space for the upload queue. Free some space or send fewer images at a time.'
          : `The study could not be queued on this device: ${e instanceof Error ? e.message : e}`,
      )
    } finally {
      setSending(false)
    }
  }

  const studies = analysis?.studies ?? []
  const totalFiles = studies.reduce((n, s) => n + s.files.length, 0)

  return (
    <div className="flex flex-col gap-6 pb-28">
      <div className="flex items-center justify-between">
        <h2 className="text-xl font-semibold">New upload</h2>
        <a href="#/" className="btn-secondary">
          Cancel
        </a>
      </div>

      <Section n={1} title="Pick the images">
        <div
          onDragOver={(e) => {
            e.preventDefault()
            setDragging(true)
          }}
          onDragLeave={() => setDragging(false)}
          onDrop={onDrop}
          className={`card flex flex-col gap-3 border-2 border-dashed ${dragging ? 'border-brand-700 bg-brand-50' : 'border-slate-300'}`}
        >
          <div className="grid grid-cols-1 gap-3 sm:grid-cols-3">
            <PickButton testId="pick-files" label="Pick files" hint="DICOM images" primary onFiles={(f) => void addPicked(fromFileList(f))} />
            <PickButton testId="pick-folder" label="Pick a folder" hint="A whole study folder" folder onFiles={(f) => void addPicked(fromFileList(f))} />
            <PickButton testId="pick-zip" label="Pick a zip" hint="A zipped study" zip onFiles={(f) => void addPicked(fromFileList(f))} />
          </div>
          <p className="hidden text-center text-sm text-slate-700 sm:block">…or drop files, folders or a zip here.</p>
        </div>
        {reading && (
          <div role="status" className="flex flex-col gap-1 text-sm">
            <span>
              {reading.zip ? `Reading the zip… ${reading.done} of ${plural(reading.total, 'file')}` : `Reading ${reading.done} of ${plural(reading.total, 'file')}…`}
            </span>
            <ProgressBar value={reading.total ? (reading.done / reading.total) * 100 : 0} label="Reading the files" />
          </div>
        )}
        {pickErrors.map((m, i) => (
          <Alert key={i}>{m}</Alert>
        ))}
      </Section>

      {analysis && (
        <Section n={2} title="Check what will be sent">
          {analysis.refused.length > 0 && (
            <div className="flex flex-col gap-2">
              <p className="text-sm font-medium text-red-900">
                {plural(analysis.refused.length, 'file')} will not be sent:
              </p>
              <ul className="flex flex-col gap-2" aria-label="Refused files">
                {analysis.refused.map((r) => (
                  <li key={r.name} data-testid="refused-file" role="alert" className="rounded-xl border border-red-300 bg-red-50 px-3 py-2 text-sm text-red-900">
                    {r.message}
                  </li>
                ))}
              </ul>
            </div>
          )}
          {analysis.duplicates > 0 && (
            <Alert tone="info">{plural(analysis.duplicates, 'file')} picked twice; each image is sent once.</Alert>
          )}
          {studies.length === 0 && !reading && <Alert>No DICOM images found in what you picked.</Alert>}
          <ul className="flex flex-col gap-4" aria-label="Studies to send">
            {studies.map((s, i) => {
              const uid = s.summary.studyInstanceUid
              const m = meta[uid] ?? emptyMeta()
              const set = (patch: Partial<Meta>) => setMeta((all) => ({ ...all, [uid]: { ...m, ...patch } }))
              const sid = `s${i}`
              return (
                <li key={uid} data-testid="review-study" className="card flex flex-col gap-4">
                  <div>
                    <h4 className="text-base font-semibold">
                      {formatPersonName(s.summary.patientName)} <span className="font-normal text-slate-700">· ID {s.summary.patientId || '–'}</span>
                    </h4>
                    <dl className="mt-1 grid grid-cols-2 gap-x-4 gap-y-1 text-sm text-slate-800 sm:grid-cols-4">
                      <div>
                        <dt className="text-slate-600">Date</dt>
                        <dd>{formatDicomDate(s.summary.studyDate)}</dd>
                      </div>
                      <div>
                        <dt className="text-slate-600">Modality</dt>
                        <dd>{s.summary.modality || '–'}</dd>
                      </div>
                      <div className="col-span-2">
                        <dt className="text-slate-600">Description</dt>
                        <dd>{s.summary.studyDescription || '–'}</dd>
                      </div>
                      <div className="col-span-2 sm:col-span-4">
                        <dt className="sr-only">Contents</dt>
                        <dd data-testid="review-counts">
                          {plural(s.summary.series, 'series', 'series')}, {plural(s.summary.instances, 'image')}, {formatBytes(s.summary.bytes)}
                        </dd>
                      </div>
                    </dl>
                  </div>
                  <div role="radiogroup" aria-labelledby={`${sid}-sl`} className="flex flex-col gap-1">
                    <span id={`${sid}-sl`} className="label">
                      Service level
                    </span>
                    <div className="grid grid-cols-2 overflow-hidden rounded-xl border border-slate-400">
                      {(['routine', 'stat'] as const).map((lvl) => (
                        <label
                          key={lvl}
                          className={`relative flex min-h-12 cursor-pointer items-center justify-center gap-2 font-semibold has-[:focus-visible]:outline-3 has-[:focus-visible]:-outline-offset-4 has-[:focus-visible]:outline-amber-700 ${
                            m.serviceLevel === lvl ? (lvl === 'stat' ? 'bg-red-700 text-white' : 'bg-brand-700 text-white') : 'bg-white text-slate-900'
                          }`}
                        >
                          <input
                            type="radio"
                            name={`${sid}-service-level`}
                            value={lvl}
                            checked={m.serviceLevel === lvl}
                            onChange={() => set({ serviceLevel: lvl })}
                            className="absolute inset-0 m-0 h-full w-full cursor-pointer opacity-0"
                          />
                          {lvl === 'stat' ? 'STAT' : 'Routine'}
                        </label>
                      ))}
                    </div>
                  </div>
                  <div>
                    <label htmlFor={`${sid}-history`} className="label">
                      Clinical history
                    </label>
                    <textarea
                      id={`${sid}-history`}
                      className="field min-h-24"
                      value={m.clinicalHistory}
                      maxLength={4000}
                      onChange={(e) => set({ clinicalHistory: e.target.value })}
                    />
                  </div>
                  <div>
                    <label htmlFor={`${sid}-referrer`} className="label">
                      Referring clinician
                    </label>
                    <input
                      id={`${sid}-referrer`}
                      className="field"
                      autoComplete="off"
                      value={m.referringClinician}
                      maxLength={200}
                      onChange={(e) => set({ referringClinician: e.target.value })}
                    />
                  </div>
                </li>
              )
            })}
          </ul>
          <button type="button" className="btn-secondary self-start" onClick={clear}>
            Start over
          </button>
        </Section>
      )}

      {sendError && <Alert>{sendError}</Alert>}
      <div className="fixed inset-x-0 bottom-0 z-10 border-t border-slate-200 bg-white/95 px-4 py-3 backdrop-blur">
        <div className="mx-auto flex max-w-3xl items-center justify-between gap-3">
          <span className="text-sm text-slate-700" aria-live="polite">
            {studies.length ? `${plural(studies.length, 'study', 'studies')}, ${plural(totalFiles, 'image')}` : 'Nothing picked yet'}
          </span>
          <button type="button" className="btn-primary min-w-32" onClick={() => void send()} disabled={sending || !!reading || studies.length === 0}>
            {sending ? 'Queuing…' : 'Send'}
          </button>
        </div>
      </div>
    </div>
  )
}
