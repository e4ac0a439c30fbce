import { describe, expect, it } from 'vitest'
import { accounting, type AgentTotals, diskSummary, hubContact, reasonLabel, reasonRows, sourceLabel, uploadsSummary } from './agentView'

const totals = (o: Partial<AgentTotals> = {}): AgentTotals => ({
  instances: 10,
  instances_by_state: { uploaded: 7, spooled: 3 },
  duplicates: 1,
  quarantined: 2,
  quarantine_reasons: { not_dicom: 1, truncated: 1 },
  studies: 2,
  studies_by_state: { delivered: 1, receiving: 1 },
  ...o,
})

describe('reasonLabel', () => {
  const words = {
    not_dicom: { label: 'Not a DICOM file', explanation: 'the file is not a DICOM image', what_to_do: 'Export it as DICOM.' },
    truncated: { label: 'Cut short (incomplete copy)', explanation: 'the file is cut short', what_to_do: 'Copy it again.' },
  }
  it("says reason codes in the agent's words", () => {
    expect(reasonLabel('not_dicom', words)).toBe('Not a DICOM file')
    expect(reasonLabel('truncated', words)).toBe('Cut short (incomplete copy)')
  })
  it('shows a code the agent sent no words for as it is', () => {
    expect(reasonLabel('cosmic_ray', words)).toBe('cosmic_ray')
    expect(reasonLabel('not_dicom')).toBe('not_dicom')
  })
  it('lists reasons most frequent first', () => {
    expect(reasonRows({ truncated: 1, not_dicom: 4 }, words).map((r) => [r.code, r.label])).toEqual([
      ['not_dicom', 'Not a DICOM file'],
      ['truncated', 'Cut short (incomplete copy)'],
    ])
    expect(reasonRows(undefined)).toEqual([])
  })
})

describe('sourceLabel', () => {
  it('makes sources readable', () => {
    expect(sourceLabel('folder:inbox')).toBe('Folder “inbox”')
    expect(sourceLabel('pwa:nurse')).toBe('Phone upload by nurse')
    expect(sourceLabel('dimse:CT1')).toBe('Scanner CT1 (DICOM send)')
    expect(sourceLabel('import')).toBe('Imported by IT')
    expect(sourceLabel('released')).toBe('Released from quarantine')
  })
  it('keeps unknown sources and names with colons', () => {
    expect(sourceLabel('satellite:x')).toBe('satellite:x')
    expect(sourceLabel('dimse:AE:1')).toBe('Scanner AE:1 (DICOM send)')
    expect(sourceLabel(null)).toBe('Unknown source')
  })
})

describe('accounting', () => {
  it('accounts for every file that came in', () => {
    const a = accounting(totals())
    expect(a).toMatchObject({ received: 13, atHub: 7, waiting: 3, balanced: true })
    expect(a.sentence).toBe(
      '13 files came in: 7 at the hub, 3 waiting at the agent, 1 duplicate (already held), 2 in quarantine. Every file is accounted for.',
    )
  })
  it('mentions files the hub refused', () => {
    expect(accounting(totals({ instances_by_state: { uploaded: 7, spooled: 2, refused: 1 } })).sentence).toContain('1 refused by the hub')
  })
  it('says so when the counts do not add up', () => {
    const a = accounting(totals({ quarantined: 3 }))
    expect(a.balanced).toBe(false)
    expect(a.sentence).toContain('do not add up')
  })
  it('works for an empty agent', () => {
    const a = accounting({ instances: 0, instances_by_state: {}, duplicates: 0, quarantined: 0, quarantine_reasons: {}, studies: 0, studies_by_state: {} })
    expect(a.sentence).toMatch(/^0 files came in: .*Every file is accounted for\.$/)
  })
})

describe('hub, disk, uploads', () => {
  const now = Date.UTC(2025, 0, 1, 12, 0, 0)
  it('says when the hub was last in contact', () => {
    expect(hubContact({ reachable: true, last_contact_at: now / 1000 - 120 }, now)).toEqual({ ok: true, text: 'Hub reachable · last contact 2 min ago' })
    expect(hubContact({ reachable: false, last_contact_at: null }, now).text).toBe('Hub not reachable · last contact never')
  })
  it('warns when the disk is below the reserve', () => {
    expect(diskSummary({ free_bytes: 5e9, reserve_bytes: 1e9, refusing: false })).toEqual({ warn: false, text: '5.0 GB free (reserve 1.0 GB)' })
    const d = diskSummary({ free_bytes: 5e8, reserve_bytes: 1e9, refusing: true })
    expect(d.warn).toBe(true)
    expect(d.text).toContain('refuses new files')
    expect(diskSummary({}).text).toBe('Not known')
  })
  it('counts uploads in progress', () => {
    expect(uploadsSummary({ open_uploads: 0, bytes_expected: 0 })).toBe('None right now')
    expect(uploadsSummary({ open_uploads: 2, bytes_expected: 3_000_000 })).toBe('2 files on the way (3.0 MB to go)')
  })
})
