/** Read the DICOM headers of picked files and group them by study. */
import { readDicomHeader, type DicomHeader } from '../dicom/parse'
import type { StudySummary } from '../queue/types'
import type { Picked } from './pick'

export interface Accepted {
  picked: Picked
  header: DicomHeader
}

export interface Refused {
  name: string
  message: string
}

export interface StudyGroup {
  summary: StudySummary
  files: Accepted[]
}

export interface Analysis {
  studies: StudyGroup[]
  refused: Refused[]
  duplicates: number
}

export async function analyse(picked: Picked[], onProgress?: (done: number, total: number) => void): Promise<Analysis> {
  const results: Array<Accepted | Refused> = new Array(picked.length)
  let next = 0
  let done = 0
  const worker = async () => {
    while (next < picked.length) {
      const i = next++
      const p = picked[i]
      if (p.refused) {
        results[i] = { name: p.path, message: p.refused }
        onProgress?.(++done, picked.length)
        continue
      }
      try {
        const out = await readDicomHeader(p.file, p.path)
        results[i] = out.ok ? { picked: p, header: out.header } : { name: p.path, message: out.message }
      } catch (e) {
        results[i] = { name: p.path, message: `${p.path} could not be read (${e instanceof Error ? e.message : e}).` }
      }
      onProgress?.(++done, picked.length)
    }
  }
  await Promise.all(Array.from({ length: Math.min(8, picked.length) }, worker))

  const refused: Refused[] = []
  const byStudy = new Map<string, Accepted[]>()
  const seen = new Set<string>()
  let duplicates = 0
  for (const r of results) {
    if ('message' in r) {
      refused.push(r)
      continue
    }
    if (seen.has(r.header.sopInstanceUid)) {
      duplicates++
      continue
    }
    seen.add(r.header.sopInstanceUid)
    const list = byStudy.get(r.header.studyInstanceUid) ?? []
    list.push(r)
    byStudy.set(r.header.studyInstanceUid, list)
  }
  const studies: StudyGroup[] = [...byStudy.entries()].map(([uid, files]) => {
    const h = files[0].header
    files.sort(
      (a, b) =>
        Number(a.header.seriesNumber || 0) - Number(b.header.seriesNumber || 0) ||
        a.picked.path.localeCompare(b.picked.path, undefined, { numeric: true }),
    )
    return {
      files,
      summary: {
        studyInstanceUid: uid,
        patientName: h.patientName,
        patientId: h.patientId,
        studyDate: h.studyDate,
        studyDescription: files.find((f) => f.header.studyDescription)?.header.studyDescription ?? '',
        modality: [...new Set(files.map((f) => f.header.modality).filter(Boolean))].join(', '),
        accessionNumber: h.accessionNumber,
        series: new Set(files.map((f) => f.header.seriesInstanceUid)).size,
        instances: files.length,
        bytes: files.reduce((n, f) => n + f.picked.file.size, 0),
      },
    }
  })
  return { studies, refused, duplicates }
}
