import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { OutOfData, parseDicom, readDicomHeader } from './parse'
import { EXPLICIT_LE, IMPLICIT_LE, sampleDataset, writeDicom } from './testwriter'

// pydicom's own test files, from the workspace's Python environment (`make install` makes it;
// `make pwa-test` depends on it). PYDICOM_TEST_FILES points elsewhere if the venv lives elsewhere.
function pydicomTestFiles(): string {
  if (process.env.PYDICOM_TEST_FILES) return process.env.PYDICOM_TEST_FILES
  const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../..')
  const venv = process.env.UV_PROJECT_ENVIRONMENT ?? join(repo, '.venv')
  const lib = join(venv, 'lib')
  for (const py of existsSync(lib) ? readdirSync(lib) : []) {
    const dir = join(lib, py, 'site-packages/pydicom/data/test_files')
    if (existsSync(dir)) return dir
  }
  throw new Error(`pydicom's test files not found under ${lib}: run \`make install\` first`)
}
const PYDICOM = pydicomTestFiles()

function parseOk(bytes: Uint8Array, name = 'x.dcm') {
  const out = parseDicom(bytes, name, true)
  if (!out.ok) throw new Error(`refused: ${out.message}`)
  return out.header
}

function real(name: string) {
  return new Uint8Array(readFileSync(`${PYDICOM}/${name}`))
}

describe('parseDicom, files written here', () => {
  it('reads explicit VR little endian', () => {
    const h = parseOk(writeDicom(sampleDataset({ patientName: 'Müller^Jürgen' })))
    expect(h).toMatchObject({
      transferSyntaxUid: EXPLICIT_LE,
      patientName: 'Müller^Jürgen',
      patientId: 'P-001',
      studyInstanceUid: '1.2.3.4.5',
      seriesInstanceUid: '1.2.3.4.5.6',
      sopInstanceUid: '1.2.3.4.5.6.7',
      studyDate: '20240131',
      studyDescription: 'Chest PA',
      modality: 'CR',
      seriesDescription: 'PA view',
      seriesNumber: '3',
      accessionNumber: 'ACC42',
    })
  })

  it('reads implicit VR little endian', () => {
    const h = parseOk(writeDicom(sampleDataset({ modality: 'DX', charset: 'ISO_IR 100' }), IMPLICIT_LE))
    expect(h.transferSyntaxUid).toBe(IMPLICIT_LE)
    expect(h.modality).toBe('DX')
    expect(h.studyInstanceUid).toBe('1.2.3.4.5')
    expect(h.patientName).toBe('Doe^Jane')
  })

  it('decodes latin1 names', () => {
    const ds = sampleDataset({ charset: 'ISO_IR 100' })
    const pn = ds.find((e) => e.tag === 0x00100010)!
    pn.value = new Uint8Array([0x4d, 0xfc, 0x6c, 0x6c, 0x65, 0x72]) // "Müller" in latin1
    expect(parseOk(writeDicom(ds)).patientName).toBe('Müller')
  })

  for (const [label, ts] of [
    ['explicit', EXPLICIT_LE],
    ['implicit', IMPLICIT_LE],
  ] as const) {
    it(`skips undefined-length sequences, nested (${label})`, () => {
      const nested = [
        {
          tag: 0x00081110,
          vr: 'SQ',
          undefinedLength: true,
          value: [
            [
              { tag: 0x00081150, vr: 'UI', value: '1.2' },
              {
                tag: 0x00081199,
                vr: 'SQ',
                undefinedLength: true,
                value: [[{ tag: 0x00081155, vr: 'UI', value: '9.9.9' }], []],
              },
            ],
            [{ tag: 0x00081155, vr: 'UI', value: '8.8' }],
          ],
        },
        { tag: 0x00081140, vr: 'SQ', value: [[{ tag: 0x00081155, vr: 'UI', value: '7.7' }]] },
      ]
      const h = parseOk(writeDicom(sampleDataset({}, nested), ts))
      expect(h.patientId).toBe('P-001')
      expect(h.sopInstanceUid).toBe('1.2.3.4.5.6.7')
      expect(h.seriesNumber).toBe('3')
    })
  }

  it('refuses a text file', () => {
    const bytes = new TextEncoder().encode('Patient notes\n'.repeat(40))
    const out = parseDicom(bytes, 'notes.txt', true)
    expect(out).toMatchObject({ ok: false, code: 'not_dicom' })
    if (!out.ok) {
      expect(out.message).toBe(
        'notes.txt is not a DICOM image (no DICM marker). Only DICOM files can be sent; export the study as DICOM from the modality or PACS.',
      )
    }
  })

  it('refuses a file too short to hold the preamble', () => {
    expect(parseDicom(new Uint8Array(10), 'tiny.bin', true)).toMatchObject({ ok: false, code: 'not_dicom' })
  })

  it('refuses a file without DICM at offset 128 (raw data set, no preamble)', () => {
    const full = writeDicom(sampleDataset())
    const out = parseDicom(full.subarray(132), 'raw.dcm', true)
    expect(out).toMatchObject({ ok: false, code: 'not_dicom' })
  })

  it('refuses a truncated header', () => {
    const full = writeDicom(sampleDataset())
    for (const cut of [140, 200, 300]) {
      expect(parseDicom(full.subarray(0, cut), 'cut.dcm', true)).toMatchObject({ ok: false, code: 'truncated' })
    }
  })

  it('asks for more bytes when the head is partial', () => {
    const full = writeDicom(sampleDataset())
    expect(() => parseDicom(full.subarray(0, 300), 'cut.dcm', false)).toThrow(OutOfData)
  })

  it('refuses DICOM without the UIDs', () => {
    const ds = sampleDataset().filter((e) => e.tag !== 0x0020000d)
    const out = parseDicom(writeDicom(ds), 'nouid.dcm', true)
    expect(out).toMatchObject({ ok: false, code: 'missing_uid' })
    if (!out.ok) expect(out.message).toMatch(/Study Instance UID/)
  })

  it('reads a Blob in steps (header beyond 64 KB)', async () => {
    const big = [{ tag: 0x00091010, vr: 'OB', value: new Uint8Array(200_000) }]
    const bytes = writeDicom(sampleDataset({}, big).filter((e) => e.tag < 0x00100000).concat(
      sampleDataset().filter((e) => e.tag >= 0x00100000),
    ))
    const out = await readDicomHeader(new Blob([bytes as BlobPart]), 'big.dcm')
    expect(out.ok && out.header.patientId).toBe('P-001')
  })

  it('refuses a text Blob', async () => {
    const out = await readDicomHeader(new Blob(['hello']), 'notes.txt')
    expect(out.ok).toBe(false)
  })
})

describe('parseDicom, pydicom test files', () => {
  it('CT_small.dcm (explicit VR LE)', () => {
    const h = parseOk(real('CT_small.dcm'))
    expect(h).toMatchObject({
      patientName: 'CompressedSamples^CT1',
      patientId: '1CT1',
      modality: 'CT',
      studyInstanceUid: '1.3.6.1.4.1.5962.1.2.1.20040119072730.12322',
      seriesInstanceUid: '1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322',
      sopInstanceUid: '1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322',
      studyDate: '20040119',
      studyDescription: 'e+1',
      seriesNumber: '1',
      accessionNumber: '',
    })
  })

  it('MR_small.dcm', () => {
    const h = parseOk(real('MR_small.dcm'))
    expect(h).toMatchObject({ patientName: 'CompressedSamples^MR1', patientId: '4MR1', modality: 'MR', studyDate: '20040826' })
  })

  it('MR_small_implicit.dcm and MR_small_bigendian.dcm agree with MR_small.dcm', () => {
    const base = parseOk(real('MR_small.dcm'))
    for (const f of ['MR_small_implicit.dcm', 'MR_small_bigendian.dcm']) {
      const h = parseOk(real(f))
      expect({ ...h, transferSyntaxUid: '' }).toEqual({ ...base, transferSyntaxUid: '' })
    }
  })

  it('rtplan.dcm (implicit VR LE, sequences)', () => {
    const h = parseOk(real('rtplan.dcm'))
    expect(h).toMatchObject({
      transferSyntaxUid: '1.2.840.10008.1.2',
      patientName: 'Last^First^mid^pre',
      patientId: 'id00001',
      modality: 'RTPLAN',
      studyInstanceUid: '1.22.333.4.555555.6.7777777777777777777777777777',
      sopInstanceUid: '1.2.777.777.77.7.7777.7777.20030903150023',
      seriesNumber: '2',
    })
  })

  it('ExplVR_BigEnd.dcm (explicit VR big endian)', () => {
    const h = parseOk(real('ExplVR_BigEnd.dcm'))
    expect(h).toMatchObject({
      transferSyntaxUid: '1.2.840.10008.1.2.2',
      patientName: 'Anonymized',
      modality: 'US',
      studyDate: '1997.04.24',
      studyInstanceUid: '1.2.840.113619.2.21.848.246800003.0.1952805748.3',
    })
  })

  it('image_dfl.dcm (deflated)', () => {
    const h = parseOk(real('image_dfl.dcm'))
    expect(h.transferSyntaxUid).toBe('1.2.840.10008.1.2.1.99')
    expect(h.studyInstanceUid).not.toBe('')
  })

  it('compressed pixel data files and sequences parse', () => {
    for (const f of ['JPEG2000.dcm', 'MR_small_jp2klossless.dcm', 'UN_sequence.dcm', 'nested_priv_SQ.dcm', 'JPEG2000-embedded-sequence-delimiter.dcm', 'rtstruct.dcm', 'rtdose.dcm']) {
      const out = parseDicom(real(f), f, true)
      expect(out.ok || out.code, f).not.toBe('malformed')
    }
  })

  it('refuses files without the preamble (no_meta.dcm) and the truncated one reads or refuses cleanly', () => {
    expect(parseDicom(real('no_meta.dcm'), 'no_meta.dcm', true)).toMatchObject({ ok: false, code: 'not_dicom' })
    const out = parseDicom(real('MR_truncated.dcm'), 'MR_truncated.dcm', true)
    expect(out.ok || out.code).not.toBe('malformed')
  })

  it('reads the real files through Blob slices', async () => {
    const out = await readDicomHeader(new Blob([real('CT_small.dcm') as BlobPart]), 'CT_small.dcm')
    expect(out.ok && out.header.modality).toBe('CT')
  })
})
