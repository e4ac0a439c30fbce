import { zipSync, type Zippable } from 'fflate'
import { describe, expect, it } from 'vitest'
import { sampleDataset, writeDicom } from '../dicom/testwriter'
import { analyse } from './analyse'
import { expandZips, fromZip, isJunk } from './pick'
import { readDirectory, readZip, ZipError } from './zipread'

const enc = new TextEncoder()
const MiB = 2 ** 20

function bytes(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n)
  let x = seed
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    out[i] = x >>> 24
  }
  return out
}

const asFile = (data: Uint8Array, name = 'study.zip') => new File([data as BlobPart], name, { type: 'application/zip' })
const read = async (f: File) => new Uint8Array(await f.arrayBuffer())

/** Offsets of every central directory record (to patch flags and sizes in tests). */
function centralRecords(zip: Uint8Array): number[] {
  const v = new DataView(zip.buffer, zip.byteOffset, zip.byteLength)
  const out: number[] = []
  for (let i = 0; i + 4 <= zip.length; i++) if (v.getUint32(i, true) === 0x02014b50) out.push(i)
  return out
}

/** A zip written by hand: stored entries, data descriptors, and (optionally) every zip64 record. */
function handZip(files: Array<[string, Uint8Array]>, zip64: boolean): Uint8Array {
  const chunks: Uint8Array[] = []
  const central: Uint8Array[] = []
  let offset = 0
  const crcOf = (d: Uint8Array) => {
    let c = ~0
    for (const b of d) {
      c ^= b
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    }
    return ~c >>> 0
  }
  for (const [name, data] of files) {
    const n = enc.encode(name)
    const crc = crcOf(data)
    const local = new DataView(new ArrayBuffer(30))
    local.setUint32(0, 0x04034b50, true)
    local.setUint16(4, 45, true)
    local.setUint16(6, 0x0808, true) // data descriptor + UTF-8 name: sizes only after the data
    local.setUint16(26, n.length, true)
    const desc = new DataView(new ArrayBuffer(16))
    desc.setUint32(0, 0x08074b50, true)
    desc.setUint32(4, crc, true)
    desc.setUint32(8, data.length, true)
    desc.setUint32(12, data.length, true)
    const extra = new DataView(new ArrayBuffer(zip64 ? 28 : 0))
    if (zip64) {
      extra.setUint16(0, 1, true)
      extra.setUint16(2, 24, true)
      extra.setUint32(4, data.length, true)
      extra.setUint32(12, data.length, true)
      extra.setUint32(20, offset, true)
    }
    const cen = new DataView(new ArrayBuffer(46))
    cen.setUint32(0, 0x02014b50, true)
    cen.setUint16(4, 45, true)
    cen.setUint16(6, 45, true)
    cen.setUint16(8, 0x0808, true)
    cen.setUint32(16, crc, true)
    cen.setUint32(20, zip64 ? 0xffffffff : data.length, true)
    cen.setUint32(24, zip64 ? 0xffffffff : data.length, true)
    cen.setUint16(28, n.length, true)
    cen.setUint16(30, extra.byteLength, true)
    cen.setUint32(42, zip64 ? 0xffffffff : offset, true)
    central.push(new Uint8Array(cen.buffer), n, new Uint8Array(extra.buffer))
    for (const c of [new Uint8Array(local.buffer), n, data, new Uint8Array(desc.buffer)]) {
      chunks.push(c)
      offset += c.length
    }
  }
  const cdOffset = offset
  const cdSize = central.reduce((s, c) => s + c.length, 0)
  chunks.push(...central)
  offset += cdSize
  if (zip64) {
    const z = new DataView(new ArrayBuffer(56 + 20))
    z.setUint32(0, 0x06064b50, true)
    z.setUint32(4, 44, true)
    z.setUint32(24, files.length, true)
    z.setUint32(32, files.length, true)
    z.setUint32(40, cdSize, true)
    z.setUint32(48, cdOffset, true)
    z.setUint32(56, 0x07064b50, true)
    z.setUint32(64, offset, true)
    z.setUint32(72, 1, true)
    chunks.push(new Uint8Array(z.buffer))
  }
  const end = new DataView(new ArrayBuffer(22))
  end.setUint32(0, 0x06054b50, true)
  end.setUint16(8, zip64 ? 0xffff : files.length, true)
  end.setUint16(10, zip64 ? 0xffff : files.length, true)
  end.setUint32(12, zip64 ? 0xffffffff : cdSize, true)
  end.setUint32(16, zip64 ? 0xffffffff : cdOffset, true)
  chunks.push(new Uint8Array(end.buffer))
  const out = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0))
  let p = 0
  for (const c of chunks) {
    out.set(c, p)
    p += c.length
  }
  return out
}

describe('readZip', () => {
  const stored = bytes(300_000, 7)
  const deflated = bytes(20_000, 9)
  const text = enc.encode('hello '.repeat(50_000)) // compresses well, but not a bomb (300 kB)
  const inner = zipSync({ 'a.dcm': bytes(100) })

  function sample(): Uint8Array {
    const z: Zippable = {
      'CT/IM0001': [stored, { level: 0 }],
      'CT/IM0002': [deflated, { level: 6 }],
      'CT/notes.txt': [text, { level: 9 }],
      'CT/': new Uint8Array(0),
      '__MACOSX/CT/._IM0001': enc.encode('apple double'),
      'CT/.DS_Store': enc.encode('finder'),
      DICOMDIR: enc.encode('index'),
      'more/inner.zip': [inner, { level: 0 }],
    }
    return zipSync(z)
  }

  it('opens stored and deflated entries, skipping folders, __MACOSX, dot-files and DICOMDIR', async () => {
    const progress: Array<[number, number]> = []
    const items = await readZip(asFile(sample()), { skip: isJunk, onProgress: (d, t) => progress.push([d, t]) })
    expect(items.map((i) => i.path)).toEqual(['CT/IM0001', 'CT/IM0002', 'CT/notes.txt', 'more/inner.zip'])
    expect(await read(items[0].file!)).toEqual(stored)
    expect(await read(items[1].file!)).toEqual(deflated)
    expect(await read(items[2].file!)).toEqual(text)
    expect(items[0].file!.name).toBe('IM0001')
    expect(items[0].file!.type).toBe('application/dicom')
    expect(items[3].refused).toMatch(/zips inside zips are not opened. Unzip it first/)
    expect(progress).toEqual([
      [1, 4],
      [2, 4],
      [3, 4],
      [4, 4],
    ])
  })

  it('refuses an entry that inflates past 250× its packed size (a zip bomb)', async () => {
    const zeros = new Uint8Array(50 * MiB)
    const zip = zipSync({ 'bomb.dcm': [zeros, { level: 9 }], 'ok.dcm': [deflated, { level: 6 }] })
    expect(zip.length).toBeLessThan(MiB)
    const items = await readZip(asFile(zip))
    expect(items[0].file).toBeUndefined()
    expect(items[0].refused).toMatch(/more than 250 times its packed size, which looks like a "zip bomb"; it was not opened/)
    expect(await read(items[1].file!)).toEqual(deflated)
  })

  it('stops inflating a bomb that lies about its size in the directory', async () => {
    const zip = zipSync({ 'bomb.dcm': [new Uint8Array(50 * MiB), { level: 9 }] })
    const v = new DataView(zip.buffer)
    const [cen] = centralRecords(zip)
    v.setUint32(cen + 24, 1000, true) // "unpacks to 1000 bytes"
    v.setUint32(22, 1000, true) // the local header too
    const items = await readZip(asFile(zip))
    expect(items[0].refused).toMatch(/unpacks to more than 250 times its packed size/)
  })

  it('refuses a blank-ish entry only when big: small highly compressible files are fine', async () => {
    const blank = new Uint8Array(512 * 512 * 2) // a blank 512×512 slice deflates ~1000×
    const items = await readZip(asFile(zipSync({ 'blank.dcm': [blank, { level: 9 }] })))
    expect(await read(items[0].file!)).toEqual(blank)
  })

  it('refuses encrypted entries and unknown compression methods, in words', async () => {
    const zip = zipSync({ 'a.dcm': [deflated, { level: 6 }], 'b.dcm': [deflated, { level: 6 }] })
    const v = new DataView(zip.buffer)
    const [a, b] = centralRecords(zip)
    v.setUint16(a + 8, v.getUint16(a + 8, true) | 1, true)
    v.setUint16(b + 10, 14, true) // LZMA
    const items = await readZip(asFile(zip))
    expect(items[0].refused).toMatch(/is password-protected \(encrypted\)/)
    expect(items[1].refused).toMatch(/compression method this app cannot open \(method 14\)/)
  })

  it('refuses a damaged entry (checksum) and keeps the others', async () => {
    const zip = zipSync({ 'a.dcm': [deflated, { level: 6 }], 'b.dcm': [stored, { level: 0 }] })
    const v = new DataView(zip.buffer)
    const [a] = centralRecords(zip)
    v.setUint32(a + 16, v.getUint32(a + 16, true) ^ 1, true)
    const items = await readZip(asFile(zip))
    expect(items[0].refused).toMatch(/damaged inside the zip \(its checksum does not match\)/)
    expect(await read(items[1].file!)).toEqual(stored)
  })

  it('reads data descriptors and zip64 records', async () => {
    for (const zip64 of [false, true]) {
      const zip = handZip(
        [
          ['x/1.dcm', stored],
          ['x/2.dcm', deflated],
        ],
        zip64,
      )
      const dir = await readDirectory(asFile(zip))
      expect(dir.map((e) => [e.name, e.size])).toEqual([
        ['x/1.dcm', stored.length],
        ['x/2.dcm', deflated.length],
      ])
      const items = await readZip(asFile(zip))
      expect(await read(items[0].file!)).toEqual(stored)
      expect(await read(items[1].file!)).toEqual(deflated)
    }
  })

  it('fails as a whole for a file that is not a zip or was cut short', async () => {
    await expect(readZip(asFile(bytes(5000)))).rejects.toThrow(ZipError)
    const zip = sample()
    await expect(readZip(asFile(zip.subarray(0, zip.length - 30)))).rejects.toThrow(/cut short|damaged/)
  })
})

describe('picking zips', () => {
  it('names entries after the zip and lists refused ones with the refused files', async () => {
    const dcm = writeDicom(sampleDataset())
    const zip = zipSync({
      'study/IM1': [dcm, { level: 6 }],
      'study/README.txt': enc.encode('read me'),
      'study/nested.zip': zipSync({ x: dcm }),
      '__MACOSX/study/._IM1': enc.encode('x'),
    })
    const progress: string[] = []
    const { files, errors } = await expandZips([{ file: asFile(zip, 'ct.zip'), path: 'ct.zip' }], (name, d, t) => progress.push(`${name} ${d}/${t}`))
    expect(errors).toEqual([])
    expect(progress).toEqual(['ct.zip 1/3', 'ct.zip 2/3', 'ct.zip 3/3'])
    expect(files.map((f) => f.path)).toEqual(['ct.zip/study/IM1', 'ct.zip/study/README.txt', 'ct.zip/study/nested.zip'])
    const result = await analyse(files)
    expect(result.studies).toHaveLength(1)
    expect(result.studies[0].files[0].picked.file.name).toBe('IM1')
    expect(result.refused.map((r) => r.name)).toEqual(['ct.zip/study/README.txt', 'ct.zip/study/nested.zip'])
    expect(result.refused[0].message).toMatch(/not a DICOM/)
    expect(result.refused[1].message).toBe(
      'ct.zip/study/nested.zip is a zip inside the zip: zips inside zips are not opened. Unzip it first, then pick what it holds.',
    )
  })

  it('says so in plain words when a "zip" is not one', async () => {
    await expect(fromZip(asFile(bytes(100), 'photo.zip'))).rejects.toThrow(/^photo.zip could not be opened as a zip file: /)
  })
})
