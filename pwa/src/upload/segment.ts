/**
 * RelayPACS segments built in the browser (format `relaypacs-segment` v1, the same bytes as
 * shared/src/relaypacs_shared/segments.py writes):
 *
 *   magic "RPSEG\0\x01\n" | payloads back to back | index (UTF-8 JSON) | u32 LE index length | SHA-256 of all before
 *
 * Entries of native (uncompressed) pixel data are raw DEFLATE (fflate, RFC 1951), the rest are
 * stored as they are. Files are read in slices (Blob.slice), never whole; the output is a Blob.
 * fflate is deterministic: the same files give the same segment, so an upload resumes after a reload.
 */
import { Deflate } from 'fflate'
import { createSHA256 } from 'hash-wasm'

export const MAGIC = new Uint8Array([0x52, 0x50, 0x53, 0x45, 0x47, 0x00, 0x01, 0x0a])
export const SLICE = 4 * 1024 * 1024
const UNCOMPRESSED_TRANSFER_SYNTAXES = new Set(['1.2.840.10008.1.2', '1.2.840.10008.1.2.1', '1.2.840.10008.1.2.2'])

/** Compression pays for native pixel data; encapsulated (JPEG, J2K, RLE, deflated) is sent as it is. */
export function shouldCompress(transferSyntaxUid: string): boolean {
  return UNCOMPRESSED_TRANSFER_SYNTAXES.has(transferSyntaxUid)
}

export interface SegmentItem {
  blob: Blob
  sopInstanceUid: string
  seriesInstanceUid: string
  /** SHA-256 (hex) of the original bytes. */
  sha256: string
  compress: boolean
}

export interface SegmentEntry {
  sop_instance_uid: string
  series_instance_uid: string
  sha256: string
  size: number
  encoding: 'deflate' | 'identity'
  offset: number
  length: number
}

export interface SegmentIndex {
  format: 'relaypacs-segment'
  version: 1
  segment_id: string
  study_instance_uid: string
  entries: SegmentEntry[]
}

export interface BuiltSegment {
  blob: Blob
  length: number
  /** The trailer's SHA-256 (hex). */
  sha256: string
  index: SegmentIndex
}

function toHex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
}

/** SHA-256 (hex) of a Blob, read in slices. */
export async function sha256Blob(blob: Blob, slice = SLICE): Promise<string> {
  const h = await createSHA256()
  h.init()
  for (let at = 0; at < blob.size; at += slice) h.update(new Uint8Array(await blob.slice(at, at + slice).arrayBuffer()))
  return h.digest('hex')
}

export async function buildSegment(segmentId: string, studyInstanceUid: string, items: SegmentItem[], slice = SLICE): Promise<BuiltSegment> {
  const h = await createSHA256()
  h.init()
  const parts: BlobPart[] = []
  let written = 0
  const emit = (chunk: Uint8Array) => {
    h.update(chunk)
    parts.push(chunk as Uint8Array<ArrayBuffer>)
    written += chunk.length
  }
  emit(MAGIC)
  const entries: SegmentEntry[] = []
  for (const item of items) {
    const start = written
    const size = item.blob.size
    if (item.compress) {
      const d = new Deflate({ level: 6 }, (chunk) => emit(chunk.slice()))
      if (size === 0) d.push(new Uint8Array(0), true)
      for (let at = 0; at < size; at += slice) {
        d.push(new Uint8Array(await item.blob.slice(at, at + slice).arrayBuffer()), at + slice >= size)
      }
    } else {
      for (let at = 0; at < size; at += slice) emit(new Uint8Array(await item.blob.slice(at, at + slice).arrayBuffer()))
    }
    entries.push({
      sop_instance_uid: item.sopInstanceUid,
      series_instance_uid: item.seriesInstanceUid,
      sha256: item.sha256,
      size,
      encoding: item.compress ? 'deflate' : 'identity',
      offset: start,
      length: written - start,
    })
  }
  const index: SegmentIndex = { format: 'relaypacs-segment', version: 1, segment_id: segmentId, study_instance_uid: studyInstanceUid, entries }
  const raw = new TextEncoder().encode(JSON.stringify(index))
  emit(raw)
  const len = new Uint8Array(4)
  new DataView(len.buffer).setUint32(0, raw.length, true)
  emit(len)
  const digest = h.digest('binary')
  parts.push(digest as Uint8Array<ArrayBuffer>)
  return { blob: new Blob(parts, { type: 'application/octet-stream' }), length: written + 32, sha256: toHex(digest), index }
}
