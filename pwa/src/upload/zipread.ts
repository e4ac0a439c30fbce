/**
 * Read a zip the user picked without holding it in memory.
 *
 * The central directory (at the end of the zip) is read with `Blob.slice`, then each entry on its
 * own, from its own slice of the file:
 * - a stored entry becomes a slice of the picked File: no bytes are copied or read at all;
 * - a deflated entry is inflated from a stream of its slice (fflate `Inflate`), its output kept as
 *   Blobs of at most FLUSH_BYTES each (so JS memory holds at most that much of one entry; browsers
 *   keep large Blobs outside the JS heap and page them to disk).
 *
 * Sizes come from the central directory, so entries written with data descriptors (macOS, Windows,
 * streamed PACS exports) and zip64 archives (over 4 GiB or 65 535 entries) are read. Encrypted
 * entries, other compression methods, nested zips and "zip bombs" are refused entry by entry, in
 * plain words; a file that is not a zip (or is cut short) fails as a whole with a `ZipError`.
 */
import { Inflate } from 'fflate'

const GiB = 2 ** 30
const MiB = 2 ** 20

export interface ZipLimits {
  /** No entry may unpack to more than this many bytes. */
  maxEntryBytes: number
  /** No entry may unpack to more than this many times its packed size… */
  maxRatio: number
  /** …once it is over this many bytes (a blank 512×512 slice deflates ~500×: it is no bomb). */
  ratioFloor: number
  /** The whole zip may not unpack to more than maxRatio × its size once over this many bytes. */
  archiveFloor: number
}

export const LIMITS: ZipLimits = { maxEntryBytes: 4 * GiB, maxRatio: 250, ratioFloor: 1 * MiB, archiveFloor: 64 * MiB }

/** Inflated output is turned into a Blob every this many bytes. */
const FLUSH_BYTES = 8 * MiB
/** Input is handed to the inflater in pieces of at most this many bytes (bounds one step's output). */
const PUSH_BYTES = 64 * 1024
const MAX_DIRECTORY_BYTES = 256 * MiB

export class ZipError extends Error {}

export interface ZipEntry {
  /** Path inside the zip, with `/` separators. */
  name: string
  method: number
  flags: number
  crc: number
  packedSize: number
  size: number
  headerOffset: number
}

/** One file of the zip: opened (`file`) or refused (`refused`: why, to follow the file's name, e.g. "is password-protected…"). */
export type ZipItem = { path: string; file: File; refused?: undefined } | { path: string; refused: string; file?: undefined }

export interface ReadZipOptions {
  /** Entries to leave out silently (junk, DICOMDIR); directories are always left out. */
  skip?: (path: string) => boolean
  /** Called after each entry that is not skipped: `done` of `total`. */
  onProgress?: (done: number, total: number) => void
  limits?: Partial<ZipLimits>
  type?: string
}

const SIG_EOCD = 0x06054b50
const SIG_EOCD64 = 0x06064b50
const SIG_LOC64 = 0x07064b50
const SIG_CEN = 0x02014b50
const SIG_LOCAL = 0x04034b50

async function bytesOf(blob: Blob, start: number, end: number): Promise<DataView> {
  return new DataView(await blob.slice(start, end).arrayBuffer())
}

/** A 64-bit little-endian value, or an error past 2^53 (no real zip gets there). */
function u64(v: DataView, at: number): number {
  const hi = v.getUint32(at + 4, true)
  if (hi >= 2 ** 21) throw new ZipError('a size in it is too large')
  return hi * 2 ** 32 + v.getUint32(at, true)
}

const utf8 = new TextDecoder('utf-8')

/** The entries listed in the zip's central directory. */
export async function readDirectory(zip: Blob): Promise<ZipEntry[]> {
  const size = zip.size
  if (size < 22) throw new ZipError('it is too small to be a zip')
  const tailStart = Math.max(0, size - (22 + 0xffff + 20))
  const tail = await bytesOf(zip, tailStart, size)
  let eocd = -1
  for (let i = tail.byteLength - 22; i >= 0; i--) {
    if (tail.getUint32(i, true) === SIG_EOCD && i + 22 + tail.getUint16(i + 20, true) <= tail.byteLength) {
      eocd = i
      break
    }
  }
  if (eocd < 0) throw new ZipError('its table of contents is missing: it is not a zip, or it was cut short while copying')
  const disk = tail.getUint16(eocd + 4, true)
  const cdDisk = tail.getUint16(eocd + 6, true)
  let count = tail.getUint16(eocd + 10, true)
  let cdSize = tail.getUint32(eocd + 12, true)
  let cdOffset = tail.getUint32(eocd + 16, true)
  if (eocd >= 20 && tail.getUint32(eocd - 20, true) === SIG_LOC64) {
    const at = u64(tail, eocd - 20 + 8)
    if (at + 56 > size) throw new ZipError('its zip64 table of contents is damaged')
    const z = await bytesOf(zip, at, at + 56)
    if (z.getUint32(0, true) !== SIG_EOCD64) throw new ZipError('its zip64 table of contents is damaged')
    if (z.getUint32(16, true) !== 0 || z.getUint32(20, true) !== 0) throw new ZipError('it is one part of a zip split over several files')
    count = u64(z, 32)
    cdSize = u64(z, 40)
    cdOffset = u64(z, 48)
  } else if (disk !== 0 || cdDisk !== 0) {
    throw new ZipError('it is one part of a zip split over several files')
  }
  if (cdOffset + cdSize > size) throw new ZipError('its table of contents points past its end: it was cut short while copying')
  if (cdSize > MAX_DIRECTORY_BYTES) throw new ZipError('its table of contents is too large to read here')
  const cd = await bytesOf(zip, cdOffset, cdOffset + cdSize)
  const bytes = new Uint8Array(cd.buffer)
  const out: ZipEntry[] = []
  let p = 0
  for (let n = 0; n < count; n++) {
    if (p + 46 > cd.byteLength || cd.getUint32(p, true) !== SIG_CEN) throw new ZipError('its table of contents is damaged')
    const flags = cd.getUint16(p + 8, true)
    const method = cd.getUint16(p + 10, true)
    const crc = cd.getUint32(p + 16, true)
    let packedSize = cd.getUint32(p + 20, true)
    let usize = cd.getUint32(p + 24, true)
    const nameLen = cd.getUint16(p + 28, true)
    const extraLen = cd.getUint16(p + 30, true)
    const commentLen = cd.getUint16(p + 32, true)
    let headerOffset = cd.getUint32(p + 42, true)
    const nameStart = p + 46
    const end = nameStart + nameLen + extraLen + commentLen
    if (end > cd.byteLength) throw new ZipError('its table of contents is damaged')
    const name = utf8.decode(bytes.subarray(nameStart, nameStart + nameLen)).replace(/\\/g, '/')
    // zip64 extra field: the 8-byte values of whichever 32-bit fields are saturated, in this order.
    for (let e = nameStart + nameLen; e + 4 <= nameStart + nameLen + extraLen; ) {
      const id = cd.getUint16(e, true)
      const len = cd.getUint16(e + 2, true)
      if (id === 0x0001) {
        let q = e + 4
        const take = () => {
          if (q + 8 > e + 4 + len) throw new ZipError('its table of contents is damaged')
          const v = u64(cd, q)
          q += 8
          return v
        }
        if (usize === 0xffffffff) usize = take()
        if (packedSize === 0xffffffff) packedSize = take()
        if (headerOffset === 0xffffffff) headerOffset = take()
      }
      e += 4 + len
    }
    out.push({ name, method, flags, crc, packedSize, size: usize, headerOffset })
    p = end
  }
  return out
}

let CRC_TABLE: Uint32Array | null = null
function crc32(crc: number, data: Uint8Array): number {
  if (!CRC_TABLE) {
    CRC_TABLE = new Uint32Array(256)
    for (let i = 0; i < 256; i++) {
      let c = i
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
      CRC_TABLE[i] = c >>> 0
    }
  }
  const t = CRC_TABLE
  let c = ~crc
  for (let i = 0; i < data.length; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8)
  return ~c >>> 0
}

class Refusal extends Error {}

function fmtGiB(n: number): string {
  return n >= GiB ? `${+(n / GiB).toFixed(1)} GiB` : `${Math.round(n / MiB)} MB`
}

const BOMB = 'which looks like a "zip bomb"; it was not opened'

/** Why an entry is refused before reading it, or null. */
function refuseUpFront(e: ZipEntry, limits: ZipLimits): string | null {
  if (/\.zip$/i.test(e.name)) return 'is a zip inside the zip: zips inside zips are not opened. Unzip it first, then pick what it holds.'
  if (e.flags & 1 || e.method === 99) return 'is password-protected (encrypted) in the zip and cannot be opened here. Make the zip again without a password.'
  if (e.method !== 0 && e.method !== 8)
    return `is packed with a compression method this app cannot open (method ${e.method}). Make the zip again with the usual settings.`
  if (e.size > limits.maxEntryBytes) return `would unpack to ${fmtGiB(e.size)}, more than the ${fmtGiB(limits.maxEntryBytes)} allowed for one file; it was not opened.`
  if (e.method === 8 && e.size > limits.ratioFloor && e.size > e.packedSize * limits.maxRatio)
    return `would unpack to more than ${limits.maxRatio} times its packed size, ${BOMB}.`
  return null
}

async function dataStart(zip: Blob, e: ZipEntry): Promise<number> {
  if (e.headerOffset + 30 > zip.size) throw new Refusal('is damaged inside the zip (it points past the end of the zip).')
  const h = await bytesOf(zip, e.headerOffset, e.headerOffset + 30)
  if (h.getUint32(0, true) !== SIG_LOCAL) throw new Refusal('is damaged inside the zip (its header is missing).')
  const start = e.headerOffset + 30 + h.getUint16(26, true) + h.getUint16(28, true)
  if (start + e.packedSize > zip.size) throw new Refusal('is damaged inside the zip (it runs past the end of the zip: was the zip cut short?).')
  return start
}

async function inflateEntry(
  zip: Blob,
  e: ZipEntry,
  start: number,
  name: string,
  type: string,
  limits: ZipLimits,
  budget: { left: number },
): Promise<File> {
  const parts: Blob[] = []
  let pending: Uint8Array[] = []
  let pendingBytes = 0
  let out = 0
  let crc = 0
  const maxOut = Math.min(limits.maxEntryBytes, Math.max(limits.ratioFloor, e.packedSize * limits.maxRatio))
  const inflater = new Inflate((chunk) => {
    out += chunk.length
    budget.left -= chunk.length
    if (out > maxOut)
      throw new Refusal(
        out > limits.maxEntryBytes
          ? `unpacks to more than the ${fmtGiB(limits.maxEntryBytes)} allowed for one file; it was not opened.`
          : `unpacks to more than ${limits.maxRatio} times its packed size, ${BOMB}.`,
      )
    if (budget.left < 0) throw new Refusal(`was not opened: the zip unpacks to more than ${limits.maxRatio} times its own size, which looks like a "zip bomb".`)
    if (out > e.size) throw new Refusal('is damaged inside the zip (it unpacks to more than the zip says).')
    crc = crc32(crc, chunk)
    pending.push(chunk)
    pendingBytes += chunk.length
    if (pendingBytes >= FLUSH_BYTES) {
      parts.push(new Blob(pending as BlobPart[]))
      pending = []
      pendingBytes = 0
    }
  })
  const reader = zip.slice(start, start + e.packedSize).stream().getReader()
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      for (let i = 0; i < value.length; i += PUSH_BYTES) inflater.push(value.subarray(i, i + PUSH_BYTES))
    }
    inflater.push(new Uint8Array(0), true)
  } catch (err) {
    void reader.cancel().catch(() => {})
    if (err instanceof Refusal) throw err
    throw new Refusal(`is damaged inside the zip and could not be unpacked (${err instanceof Error ? err.message : err}).`)
  }
  if (out !== e.size) throw new Refusal('is damaged inside the zip (it unpacks to a different size than the zip says).')
  if (crc !== e.crc) throw new Refusal('is damaged inside the zip (its checksum does not match).')
  if (pending.length) parts.push(new Blob(pending as BlobPart[]))
  return new File(parts, name, { type })
}

/**
 * Every file of the zip, in the zip's order: each opened as a File (stored: a slice of `zip`;
 * deflated: inflated into Blobs) or refused with a sentence saying why. Directories and entries
 * `skip` rejects are left out. Throws `ZipError` when the file cannot be read as a zip at all.
 */
export async function readZip(zip: Blob, opts: ReadZipOptions = {}): Promise<ZipItem[]> {
  const limits = { ...LIMITS, ...opts.limits }
  const type = opts.type ?? 'application/dicom'
  const entries = (await readDirectory(zip)).filter((e) => !e.name.endsWith('/') && !opts.skip?.(e.name))
  const budget = { left: Math.max(limits.archiveFloor, zip.size * limits.maxRatio) }
  const items: ZipItem[] = []
  for (const [i, e] of entries.entries()) {
    const name = e.name.split('/').pop()!
    try {
      const why = refuseUpFront(e, limits)
      if (why) throw new Refusal(why)
      const start = await dataStart(zip, e)
      if (e.method === 0) {
        if (e.packedSize !== e.size) throw new Refusal('is damaged inside the zip (its sizes do not agree).')
        items.push({ path: e.name, file: new File([zip.slice(start, start + e.size)], name, { type }) })
      } else {
        items.push({ path: e.name, file: await inflateEntry(zip, e, start, name, type, limits, budget) })
      }
    } catch (err) {
      if (!(err instanceof Refusal)) throw err
      items.push({ path: e.name, refused: err.message })
    }
    opts.onProgress?.(i + 1, entries.length)
  }
  return items
}
