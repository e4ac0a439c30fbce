import { describe, expect, it } from 'vitest'
import { formatAgo, formatBytes, formatDicomDate, formatDuration, formatPersonName } from './format'

describe('format', () => {
  it('durations read like people speak', () => {
    expect(formatDuration(252)).toBe('4 min 12 s')
    expect(formatDuration(38)).toBe('38 s')
    expect(formatDuration(7500)).toBe('2 h 5 min')
    expect(formatDuration(null)).toBe('–')
  })
  it('bytes, dates, names, ago', () => {
    expect(formatBytes(68_000_000)).toBe('68 MB')
    expect(formatBytes(512)).toBe('512 B')
    expect(formatDicomDate('20240131')).toBe('2024-01-31')
    expect(formatPersonName('Doe^Jane')).toBe('Doe, Jane')
    expect(formatAgo(0, 3 * 60_000)).toBe('3 min ago')
  })
})
