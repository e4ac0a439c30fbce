/** Turn what the user picked (files, a folder, a zip, a drop) into a flat list of Files. */
import { readZip, ZipError } from './zipread'

const SKIP = /(^|\/)(__MACOSX|Thumbs\.db|desktop\.ini)(\/|$)/i

/** Left out silently: OS clutter, hidden (dot) files and folders, the DICOMDIR index. */
export function isJunk(path: string): boolean {
  if (SKIP.test(path)) return true
  const parts = path.split('/')
  if (parts.some((p) => p.startsWith('.') && p !== '.' && p !== '..')) return true
  const base = parts.pop() ?? ''
  return base === '' || base.toUpperCase() === 'DICOMDIR'
}

/**
 * A File with the path it had inside a folder or zip (for messages). `refused` (a sentence) marks
 * a zip entry that was not opened: `analyse` lists it with the refused files, it is never sent.
 */
export interface Picked {
  file: File
  path: string
  refused?: string
}

export function fromFileList(list: FileList | File[]): Picked[] {
  const out: Picked[] = []
  for (const f of Array.from(list)) {
    const path = (f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name
    if (!isJunk(path)) out.push({ file: f, path })
  }
  return out
}

export function isZip(f: File): boolean {
  return /\.zip$/i.test(f.name) || f.type === 'application/zip' || f.type === 'application/x-zip-compressed'
}

/** Progress of reading one zip: `done` of `total` files in it. */
export type ZipProgress = (zipName: string, done: number, total: number) => void

/**
 * Open a zip in the browser without loading it into memory (see zipread.ts): stored entries are
 * slices of the picked file, deflated ones are inflated one at a time into Blobs. Folders and junk
 * are skipped; encrypted entries, nested zips and zip bombs come back as refused.
 */
export async function fromZip(zip: File, onProgress?: ZipProgress): Promise<Picked[]> {
  let items
  try {
    items = await readZip(zip, { skip: isJunk, onProgress: (done, total) => onProgress?.(zip.name, done, total) })
  } catch (e) {
    const why = e instanceof ZipError ? e.message : `${e instanceof Error ? e.message : e}`
    throw new Error(`${zip.name} could not be opened as a zip file: ${why}.`)
  }
  return items.map((it) => {
    const path = `${zip.name}/${it.path}`
    return it.file ? { path, file: it.file } : { path, file: new File([], it.path.split('/').pop()!), refused: `${path} ${it.refused}` }
  })
}

/** Expand zips among picked files. */
export async function expandZips(picked: Picked[], onProgress?: ZipProgress): Promise<{ files: Picked[]; errors: string[] }> {
  const files: Picked[] = []
  const errors: string[] = []
  for (const p of picked) {
    if (!isZip(p.file)) {
      files.push(p)
      continue
    }
    try {
      files.push(...(await fromZip(p.file, onProgress)))
    } catch (e) {
      errors.push(e instanceof Error ? e.message : String(e))
    }
  }
  return { files, errors }
}

type Entry = FileSystemEntry
async function walk(entry: Entry, prefix: string, out: Picked[]): Promise<void> {
  if (entry.isFile) {
    const file = await new Promise<File>((res, rej) => (entry as FileSystemFileEntry).file(res, rej))
    const path = `${prefix}${entry.name}`
    if (!isJunk(path)) out.push({ file, path })
    return
  }
  if (!entry.isDirectory) return
  const reader = (entry as FileSystemDirectoryEntry).createReader()
  for (;;) {
    const batch = await new Promise<Entry[]>((res, rej) => reader.readEntries(res, rej))
    if (batch.length === 0) break
    for (const e of batch) await walk(e, `${prefix}${entry.name}/`, out)
  }
}

/** Files and folders dropped on the page (desktop). */
export async function fromDrop(dt: DataTransfer): Promise<Picked[]> {
  const entries = Array.from(dt.items)
    .map((i) => (i.kind === 'file' ? i.webkitGetAsEntry?.() : null))
    .filter((e): e is Entry => !!e)
  if (entries.length === 0) return fromFileList(dt.files)
  const out: Picked[] = []
  for (const e of entries) await walk(e, '', out)
  return out
}
