/** Test helper: write tiny DICOM Part 10 files (explicit or implicit VR little endian). */

export interface El {
  tag: number // group << 16 | element
  vr: string
  value: string | Uint8Array | El[][] // string, raw bytes, or sequence items
  undefinedLength?: boolean // sequences only
}

const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV'])

function pad(bytes: Uint8Array, vr: string): Uint8Array {
  if (bytes.length % 2 === 0) return bytes
  const out = new Uint8Array(bytes.length + 1)
  out.set(bytes)
  out[bytes.length] = vr === 'UI' || vr === 'OB' ? 0 : 0x20
  return out
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

function u16(v: number): Uint8Array {
  const b = new Uint8Array(2)
  new DataView(b.buffer).setUint16(0, v, true)
  return b
}
function u32(v: number): Uint8Array {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, v >>> 0, true)
  return b
}
function tagBytes(tag: number): Uint8Array {
  return concat([u16(tag >>> 16), u16(tag & 0xffff)])
}

export function encodeElements(els: El[], explicit: boolean): Uint8Array {
  const parts: Uint8Array[] = []
  for (const el of els) {
    let value: Uint8Array
    if (Array.isArray(el.value)) {
      const items = el.value.map((item) => {
        const body = encodeElements(item, explicit)
        return el.undefinedLength
          ? concat([tagBytes(0xfffee000), u32(0xffffffff), body, tagBytes(0xfffee00d), u32(0)])
          : concat([tagBytes(0xfffee000), u32(body.length), body])
      })
      if (el.undefinedLength) items.push(concat([tagBytes(0xfffee0dd), u32(0)]))
      value = concat(items)
    } else if (typeof el.value === 'string') {
      value = pad(new TextEncoder().encode(el.value), el.vr)
    } else {
      value = pad(el.value, el.vr)
    }
    const len = el.undefinedLength ? 0xffffffff : value.length
    parts.push(tagBytes(el.tag))
    if (!explicit) parts.push(u32(len))
    else if (LONG_VRS.has(el.vr)) parts.push(new TextEncoder().encode(el.vr), u16(0), u32(len))
    else parts.push(new TextEncoder().encode(el.vr), u16(len))
    parts.push(value)
  }
  return concat(parts)
}

export const EXPLICIT_LE = '1.2.840.10008.1.2.1'
export const IMPLICIT_LE = '1.2.840.10008.1.2'

/** A whole Part 10 file: preamble, DICM, file meta (explicit LE), then the data set. */
export function writeDicom(dataset: El[], transferSyntax = EXPLICIT_LE, sopInstanceUid = '1.2.3.4'): Uint8Array {
  const metaBody = encodeElements(
    [
      { tag: 0x00020001, vr: 'OB', value: new Uint8Array([0, 1]) },
      { tag: 0x00020002, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.7' },
      { tag: 0x00020003, vr: 'UI', value: sopInstanceUid },
      { tag: 0x00020010, vr: 'UI', value: transferSyntax },
    ],
    true,
  )
  const groupLength = encodeElements([{ tag: 0x00020000, vr: 'UL', value: u32(metaBody.length) }], true)
  const body = encodeElements(dataset, transferSyntax !== IMPLICIT_LE)
  return concat([new Uint8Array(128), new TextEncoder().encode('DICM'), groupLength, metaBody, body])
}

/** A typical small data set with the tags the app reads, sorted by tag. */
export function sampleDataset(o: Partial<Record<string, string>> = {}, extra: El[] = []): El[] {
  const els: El[] = [
    { tag: 0x00080005, vr: 'CS', value: o.charset ?? 'ISO_IR 192' },
    { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.7' },
    { tag: 0x00080018, vr: 'UI', value: o.sop ?? '1.2.3.4.5.6.7' },
    { tag: 0x00080020, vr: 'DA', value: o.date ?? '20240131' },
    { tag: 0x00080050, vr: 'SH', value: o.accession ?? 'ACC42' },
    { tag: 0x00080060, vr: 'CS', value: o.modality ?? 'CR' },
    { tag: 0x00081030, vr: 'LO', value: o.studyDescription ?? 'Chest PA' },
    { tag: 0x0008103e, vr: 'LO', value: o.seriesDescription ?? 'PA view' },
    { tag: 0x00100010, vr: 'PN', value: o.patientName ?? 'Doe^Jane' },
    { tag: 0x00100020, vr: 'LO', value: o.patientId ?? 'P-001' },
    { tag: 0x0020000d, vr: 'UI', value: o.study ?? '1.2.3.4.5' },
    { tag: 0x0020000e, vr: 'UI', value: o.series ?? '1.2.3.4.5.6' },
    { tag: 0x00200011, vr: 'IS', value: o.seriesNumber ?? '3' },
    { tag: 0x7fe00010, vr: 'OW', value: new Uint8Array(64) },
    ...extra,
  ]
  return els.sort((a, b) => (a.tag >>> 0) - (b.tag >>> 0))
}
