/** Turn what the user picked (files, a folder, a zip, a drop) into a flat list of Files. */
import { unzip } from 'fflate'

const SKIP = /(^|\/)(__MACOSX|\.DS_Store|Thumbs\.db|desktop\.ini)(\/|$)|(^|\/)\._/i

export function isJunk(path: string): boolean {
  if (SKIP.test(path)) return true
  const base = path.split('/').pop() ?? ''
  return base === '' || base.toUpperCase() === 'DICOMDIR'
}

/** A File with the path it had inside a folder or zip (for messages). */
export interface Picked {
  file: File
  path: string
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

/** Unzip in the browser (fflate, off the main thread where it can), skipping folders and junk. */
export async function fromZip(zip: File): Promise<Picked[]> {
  const bytes = new Uint8Array(await zip.arrayBuffer())
  const entries = await new Promise<Record<string, Uint8Array>>((resolve, reject) => {
    unzip(bytes, { filter: (f) => !f.name.endsWith('/') && !isJunk(f.name) }, (err, data) =>
      err ? reject(new Error(`${zip.name} could not be opened as a zip file (${err.message}).`)) : resolve(data),
    )
  })
  return Object.entries(entries).map(([path, data]) => ({
    path: `${zip.name}/${path}`,
    file: new File([data as BlobPart], path.split('/').pop()!, { type: 'application/dicom' }),
  }))
}

/** Expand zips among picked files. */
export async function expandZips(picked: Picked[]): Promise<{ files: Picked[]; errors: string[] }> {
  const files: Picked[] = []
  const errors: string[] = []
  for (const p of picked) {
    if (!isZip(p.file)) {
      files.push(p)
      continue
    }
    try {
      files.push(...(await fromZip(p.file)))
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
