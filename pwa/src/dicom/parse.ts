/**
 * A small DICOM header reader: the file meta (group 2) and the top of the data set, up to the
 * tags we need (we stop after (0020,0011) Series Number, and never read Pixel Data).
 *
 * Supports Explicit VR Little Endian (and every compressed syntax, whose data set is explicit LE),
 * Implicit VR Little Endian, Explicit VR Big Endian, and Deflated Explicit VR Little Endian.
 * Undefined-length sequences and items are skipped via their delimiters.
 */
import { Inflate } from 'fflate'

export interface DicomHeader {
  transferSyntaxUid: string
  sopClassUid: string
  patientName: string
  patientId: string
  studyInstanceUid: string
  seriesInstanceUid: string
  sopInstanceUid: string
  studyDate: string
  studyDescription: string
  modality: string
  seriesDescription: string
  seriesNumber: string
  accessionNumber: string
}

export type RefusalCode = 'not_dicom' | 'truncated' | 'unsupported' | 'missing_uid' | 'malformed'

export type ParseOutcome =
  | { ok: true; header: DicomHeader }
  | { ok: false; code: RefusalCode; message: string }

/** Thrown when the bytes end in the middle of something: more bytes may fix it. */
export class OutOfData extends Error {
  constructor() {
    super('out of data')
  }
}

class Malformed extends Error {}

const TS_IMPLICIT_LE = '1.2.840.10008.1.2'
const TS_EXPLICIT_BE = '1.2.840.10008.1.2.2'
const TS_DEFLATED = '1.2.840.10008.1.2.1.99'

// Tags as (group << 16 | element) >>> 0
const T = {
  transferSyntax: 0x00020010,
  sopClassUid: 0x00080016,
  charset: 0x00080005,
  sopInstanceUid: 0x00080018,
  studyDate: 0x00080020,
  accessionNumber: 0x00080050,
  modality: 0x00080060,
  studyDescription: 0x00081030,
  seriesDescription: 0x0008103e,
  patientName: 0x00100010,
  patientId: 0x00100020,
  studyInstanceUid: 0x0020000d,
  seriesInstanceUid: 0x0020000e,
  seriesNumber: 0x00200011,
  pixelData: 0x7fe00010,
  item: 0xfffee000,
  itemDelim: 0xfffee00d,
  seqDelim: 0xfffee0dd,
} as const

const WANTED = new Map<number, keyof DicomHeader>([
  [T.sopClassUid, 'sopClassUid'],
  [T.sopInstanceUid, 'sopInstanceUid'],
  [T.studyDate, 'studyDate'],
  [T.accessionNumber, 'accessionNumber'],
  [T.modality, 'modality'],
  [T.studyDescription, 'studyDescription'],
  [T.seriesDescription, 'seriesDescription'],
  [T.patientName, 'patientName'],
  [T.patientId, 'patientId'],
  [T.studyInstanceUid, 'studyInstanceUid'],
  [T.seriesInstanceUid, 'seriesInstanceUid'],
  [T.seriesNumber, 'seriesNumber'],
])
const LAST_WANTED = T.seriesNumber

// Explicit VRs with a 2-byte reserved field and a 4-byte length.
const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV'])

// Character sets of (0008,0005) we decode; anything else falls back to latin1.
const CHARSETS: Record<string, string> = {
  'ISO_IR 6': 'latin1',
  'ISO_IR 100': 'latin1',
  'ISO_IR 101': 'iso-8859-2',
  'ISO_IR 109': 'iso-8859-3',
  'ISO_IR 110': 'iso-8859-4',
  'ISO_IR 144': 'iso-8859-5',
  'ISO_IR 127': 'iso-8859-6',
  'ISO_IR 126': 'iso-8859-7',
  'ISO_IR 138': 'iso-8859-8',
  'ISO_IR 148': 'iso-8859-9',
  'ISO_IR 166': 'windows-874',
  'ISO_IR 13': 'shift_jis',
  'ISO_IR 192': 'utf-8',
  GB18030: 'gb18030',
  GBK: 'gbk',
}

interface Syntax {
  explicit: boolean
  little: boolean
}

class Reader {
  pos: number
  constructor(
    readonly bytes: Uint8Array,
    readonly view: DataView,
    start: number,
    readonly syntax: Syntax,
  ) {
    this.pos = start
  }
  need(n: number): void {
    if (this.pos + n > this.bytes.length) throw new OutOfData()
  }
  u16(): number {
    this.need(2)
    const v = this.view.getUint16(this.pos, this.syntax.little)
    this.pos += 2
    return v
  }
  u32(): number {
    this.need(4)
    const v = this.view.getUint32(this.pos, this.syntax.little)
    this.pos += 4
    return v
  }
  ascii(n: number): string {
    this.need(n)
    let s = ''
    for (let i = 0; i < n; i++) s += String.fromCharCode(this.bytes[this.pos + i])
    this.pos += n
    return s
  }
  take(n: number): Uint8Array {
    this.need(n)
    const out = this.bytes.subarray(this.pos, this.pos + n)
    this.pos += n
    return out
  }
  skip(n: number): void {
    this.need(n)
    this.pos += n
  }
  get atEnd(): boolean {
    return this.pos >= this.bytes.length
  }
}

interface Element {
  tag: number
  vr: string | null
  length: number // 0xffffffff = undefined
}

const UNDEFINED = 0xffffffff

function readElementHeader(r: Reader): Element {
  const group = r.u16()
  const elem = r.u16()
  const tag = ((group << 16) | elem) >>> 0
  // Item and delimitation tags never have a VR, in any syntax.
  if (group === 0xfffe) return { tag, vr: null, length: r.u32() }
  if (!r.syntax.explicit) return { tag, vr: null, length: r.u32() }
  const vr = r.ascii(2)
  if (!/^[A-Z]{2}$/.test(vr)) throw new Malformed(`bad VR at offset ${r.pos - 2}`)
  if (LONG_VRS.has(vr)) {
    r.skip(2)
    return { tag, vr, length: r.u32() }
  }
  return { tag, vr, length: r.u16() }
}

/** Skip the value of an undefined-length element (a sequence, or encapsulated pixel data). */
function skipUndefined(r: Reader, vr: string | null, depth: number): void {
  if (depth > 32) throw new Malformed('sequences nested too deep')
  // An undefined-length UN holds implicit VR little endian content (PS3.5 6.2.2).
  const inner = vr === 'UN' ? new Reader(r.bytes, r.view, r.pos, { explicit: false, little: true }) : r
  for (;;) {
    const tagGroup = inner.u16()
    const tagElem = inner.u16()
    const tag = ((tagGroup << 16) | tagElem) >>> 0
    const len = inner.u32()
    if (tag === T.seqDelim) break
    if (tag !== T.item) throw new Malformed('expected a sequence item')
    if (len === UNDEFINED) skipDataset(inner, depth + 1, T.itemDelim)
    else inner.skip(len)
  }
  r.pos = inner.pos
}

/** Skip elements until the given delimiter tag (inside an undefined-length item). */
function skipDataset(r: Reader, depth: number, until: number): void {
  for (;;) {
    const el = readElementHeader(r)
    if (el.tag === until) return
    if (el.length === UNDEFINED) skipUndefined(r, el.vr ?? 'SQ', depth)
    else r.skip(el.length)
  }
}

function decodeText(raw: Uint8Array, charset: string): string {
  let label = 'latin1'
  // Multi-valued charsets (ISO 2022 code extensions): use the first one we know, else latin1.
  for (const term of charset.split('\\')) {
    const key = term.trim().replace('ISO 2022 IR', 'ISO_IR')
    if (CHARSETS[key]) {
      label = CHARSETS[key]
      break
    }
  }
  let s: string
  try {
    s = new TextDecoder(label).decode(raw)
  } catch {
    s = new TextDecoder('latin1').decode(raw)
  }
  return s.replace(/[\0 ]+$/g, '').replace(/^ +/, '')
}

function emptyHeader(): DicomHeader {
  return {
    transferSyntaxUid: '',
    sopClassUid: '',
    patientName: '',
    patientId: '',
    studyInstanceUid: '',
    seriesInstanceUid: '',
    sopInstanceUid: '',
    studyDate: '',
    studyDescription: '',
    modality: '',
    seriesDescription: '',
    seriesNumber: '',
    accessionNumber: '',
  }
}

/** Inflate as much of a raw-deflate stream as the bytes we have allow. */
function inflatePartial(data: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = []
  const inflater = new Inflate((chunk) => {
    parts.push(chunk)
  })
  try {
    inflater.push(data, false)
  } catch {
    // A cut stream or trailing garbage: keep what came out.
  }
  const total = parts.reduce((n, p) => n + p.length, 0)
  const out = new Uint8Array(total)
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

/**
 * Parse the header of a DICOM Part 10 file from its first bytes.
 *
 * `complete` says whether `bytes` is the whole file. When it is not and the bytes run out before
 * we have what we need, this throws OutOfData so that the caller can read more and try again.
 */
export function parseDicom(bytes: Uint8Array, name: string, complete: boolean): ParseOutcome {
  const refuse = (code: RefusalCode, why: string): ParseOutcome => ({
    ok: false,
    code,
    message: `${name} ${why}`,
  })
  const howto =
    ' Only DICOM files can be sent; export the study as DICOM from the modality or PACS.'
  if (bytes.length < 132) {
    return refuse('not_dicom', `is not a DICOM image (too short to be one).${howto}`)
  }
  if (String.fromCharCode(bytes[128], bytes[129], bytes[130], bytes[131]) !== 'DICM') {
    return refuse('not_dicom', `is not a DICOM image (no DICM marker).${howto}`)
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const header = emptyHeader()
  const truncated = (): ParseOutcome =>
    refuse('truncated', 'is cut short: its DICOM header is incomplete. Copy the file again from its source.')

  // File meta: always explicit VR little endian.
  const meta = new Reader(bytes, view, 132, { explicit: true, little: true })
  try {
    for (;;) {
      if (meta.atEnd) break
      meta.need(2)
      if (view.getUint16(meta.pos, true) !== 0x0002) break
      const el = readElementHeader(meta)
      if (el.length === UNDEFINED) throw new Malformed('undefined length in file meta')
      const value = meta.take(el.length)
      if (el.tag === T.transferSyntax) header.transferSyntaxUid = decodeText(value, '')
    }
  } catch (e) {
    if (e instanceof OutOfData) {
      if (complete) return truncated()
      throw e
    }
    return refuse('malformed', `is not a readable DICOM file (damaged file meta header).${howto}`)
  }
  if (!header.transferSyntaxUid) {
    return refuse('malformed', `has no transfer syntax in its DICOM file meta header.${howto}`)
  }

  const ts = header.transferSyntaxUid
  let syntax: Syntax = { explicit: true, little: true }
  if (ts === TS_IMPLICIT_LE) syntax = { explicit: false, little: true }
  else if (ts === TS_EXPLICIT_BE) syntax = { explicit: true, little: false }

  let r: Reader
  if (ts === TS_DEFLATED) {
    const inflated = inflatePartial(bytes.subarray(meta.pos))
    r = new Reader(inflated, new DataView(inflated.buffer, inflated.byteOffset, inflated.byteLength), 0, syntax)
  } else {
    r = new Reader(bytes, view, meta.pos, syntax)
  }

  let charset = ''
  try {
    for (;;) {
      if (r.atEnd) {
        if (!complete) throw new OutOfData()
        break
      }
      const el = readElementHeader(r)
      if (el.tag > LAST_WANTED || el.tag === T.pixelData) break
      if (el.length === UNDEFINED) {
        skipUndefined(r, el.vr ?? 'SQ', 0)
        continue
      }
      const key = WANTED.get(el.tag)
      if (el.tag === T.charset) {
        charset = decodeText(r.take(el.length), '')
      } else if (key) {
        header[key] = decodeText(r.take(el.length), charset)
      } else {
        r.skip(el.length)
      }
    }
  } catch (e) {
    if (e instanceof OutOfData) {
      if (!complete) throw e
      return truncated()
    }
    return refuse('malformed', `is not a readable DICOM file (damaged data set).${howto}`)
  }
  // UIDs may be padded with a NUL.
  for (const k of ['studyInstanceUid', 'seriesInstanceUid', 'sopInstanceUid', 'sopClassUid'] as const) {
    header[k] = header[k].replace(/\0+$/, '').trim()
  }
  if (!header.studyInstanceUid || !header.sopInstanceUid) {
    const missing = !header.studyInstanceUid ? 'Study Instance UID' : 'SOP Instance UID'
    return refuse(
      'missing_uid',
      `is a DICOM file without a ${missing}, so it cannot be filed in a study. Export it again from the modality or PACS.`,
    )
  }
  return { ok: true, header }
}

/** Steps of how much of a file we read before giving up on finding the header. */
const READ_STEPS = [64 * 1024, 1024 * 1024, 16 * 1024 * 1024]

/** Read the header of a File/Blob, reading only its first bytes (64 KB, more if needed). */
export async function readDicomHeader(blob: Blob, name: string): Promise<ParseOutcome> {
  for (const step of READ_STEPS) {
    const n = Math.min(step, blob.size)
    const bytes = new Uint8Array(await blob.slice(0, n).arrayBuffer())
    const complete = n >= blob.size
    try {
      return parseDicom(bytes, name, complete)
    } catch (e) {
      if (!(e instanceof OutOfData)) throw e
      if (complete) break
    }
  }
  return {
    ok: false,
    code: 'unsupported',
    message: `${name}: its DICOM header is too large to read in the browser (over 16 MB before the image). Send it from the modality or PACS instead.`,
  }
}
