import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { inflateSync } from 'fflate'
import { describe, expect, it } from 'vitest'
import { buildSegment, MAGIC, sha256Blob, shouldCompress } from './segment'

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')
const bytes = async (b: Blob) => new Uint8Array(await b.arrayBuffer())

/** Shared with tests/shared/test_segments.py, which reads it with the hub's segment reader. */
const FIXTURE = new URL('../../../tests/shared/data/browser-segment.bin', import.meta.url)

function fixtureInputs() {
  const smooth = new Uint8Array(70_000).map((_, i) => (i >> 6) & 0xff) // compresses well
  const jpeg = new TextEncoder().encode('not compressed again: already JPEG')
  return [
    { blob: new Blob([smooth]), sopInstanceUid: '1.2.826.0.1.3680043.10.1.1', seriesInstanceUid: '1.2.826.0.1.3680043.10.1', sha256: sha(smooth), compress: true },
    { blob: new Blob([jpeg]), sopInstanceUid: '1.2.826.0.1.3680043.10.1.2', seriesInstanceUid: '1.2.826.0.1.3680043.10.1', sha256: sha(jpeg), compress: false },
  ]
}

describe('segment builder', () => {
  it('lays out magic, payloads, JSON index, u32 LE length, SHA-256 of all before', async () => {
    const payload = new TextEncoder().encode('abc')
    const seg = await buildSegment('s1', '1.2.3', [{ blob: new Blob([payload]), sopInstanceUid: '1.2.3.4', seriesInstanceUid: '1.2.3.5', sha256: sha(payload), compress: false }])
    const b = await bytes(seg.blob)
    expect(b.length).toBe(seg.length)
    expect([...b.slice(0, 8)]).toEqual([...MAGIC])
    expect(new TextDecoder().decode(b.slice(8, 11))).toBe('abc')
    const indexLen = new DataView(b.buffer, b.byteOffset + b.length - 36, 4).getUint32(0, true)
    const index = JSON.parse(new TextDecoder().decode(b.slice(b.length - 36 - indexLen, b.length - 36)))
    expect(index).toEqual({
      format: 'relaypacs-segment',
      version: 1,
      segment_id: 's1',
      study_instance_uid: '1.2.3',
      entries: [{ sop_instance_uid: '1.2.3.4', series_instance_uid: '1.2.3.5', sha256: sha(payload), size: 3, encoding: 'identity', offset: 8, length: 3 }],
    })
    expect(8 + 3 + indexLen + 4 + 32).toBe(b.length)
    const trailer = Buffer.from(b.slice(b.length - 32)).toString('hex')
    expect(trailer).toBe(sha(b.slice(0, b.length - 32)))
    expect(seg.sha256).toBe(trailer)
  })

  it('DEFLATEs entries that pay, streamed in slices, and gives the same bytes every time', async () => {
    const items = fixtureInputs()
    const a = await buildSegment('seg-fixture', '1.2.826.0.1.3680043.10', items)
    const b = await buildSegment('seg-fixture', '1.2.826.0.1.3680043.10', items)
    expect(await bytes(a.blob)).toEqual(await bytes(b.blob)) // the same bytes again: an upload resumes
    // Smaller slices: other DEFLATE blocks (so the app keeps the segment's SHA-256 with its
    // upload and starts over if it differs), the same instance once inflated.
    const small = await buildSegment('seg-fixture', '1.2.826.0.1.3680043.10', items, 16 * 1024)
    const sb = await bytes(small.blob)
    const se = small.index.entries[0]
    expect(sha(inflateSync(sb.slice(se.offset, se.offset + se.length)))).toBe(items[0].sha256)
    const [z, raw] = a.index.entries
    expect(z.encoding).toBe('deflate')
    expect(z.length).toBeLessThan(z.size / 5)
    const all = await bytes(a.blob)
    expect(sha(inflateSync(all.slice(z.offset, z.offset + z.length)))).toBe(items[0].sha256)
    expect(raw.encoding).toBe('identity')
    expect(sha(all.slice(raw.offset, raw.offset + raw.length))).toBe(items[1].sha256)
    if (process.env.UPDATE_FIXTURES) writeFileSync(FIXTURE, all) // after a deliberate change of the format
    expect(all).toEqual(new Uint8Array(readFileSync(FIXTURE)))
  })

  it('hashes a Blob in slices', async () => {
    const data = new Uint8Array(100_001).map((_, i) => i * 7)
    expect(await sha256Blob(new Blob([data]), 4096)).toBe(sha(data))
  })

  it('compresses native transfer syntaxes only', () => {
    expect(shouldCompress('1.2.840.10008.1.2.1')).toBe(true)
    expect(shouldCompress('1.2.840.10008.1.2')).toBe(true)
    expect(shouldCompress('1.2.840.10008.1.2.4.50')).toBe(false)
    expect(shouldCompress('1.2.840.10008.1.2.1.99')).toBe(false)
  })
})
