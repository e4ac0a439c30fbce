import { describe, expect, it } from 'vitest'
import { clip, digitsOnly, groupSecret, parseOtpauth, qrPath, recoveryCodesFileName, recoveryCodesText } from './totp'

describe('parseOtpauth', () => {
  it('reads what the hub (pyotp) produces', () => {
    const p = parseOtpauth('otpauth://totp/RelayPACS:rad1?secret=JBSWY3DPEHPK3PXP&issuer=RelayPACS')
    expect(p).toEqual({ secret: 'JBSWY3DPEHPK3PXP', issuer: 'RelayPACS', account: 'rad1', digits: 6, period: 30 })
  })
  it('decodes the label and takes the issuer from it when the parameter is missing', () => {
    const p = parseOtpauth('otpauth://totp/Acme%20Health:dr%40clinic.org?secret=jbsw%20y3dp&digits=8&period=60')
    expect(p).toEqual({ secret: 'JBSWY3DP', issuer: 'Acme Health', account: 'dr@clinic.org', digits: 8, period: 60 })
  })
  it('accepts a label without an issuer', () => {
    expect(parseOtpauth('otpauth://totp/alice?secret=AAAA')?.account).toBe('alice')
  })
  it('refuses what is not a TOTP URI', () => {
    expect(parseOtpauth('https://example.org/?secret=AAAA')).toBeNull()
    expect(parseOtpauth('otpauth://hotp/x:y?secret=AAAA&counter=1')).toBeNull()
    expect(parseOtpauth('otpauth://totp/x:y')).toBeNull()
    expect(parseOtpauth('otpauth://totp/x:y?secret=not-base32!')).toBeNull()
    expect(parseOtpauth('not a uri')).toBeNull()
  })
})

describe('groupSecret', () => {
  it('groups in fours', () => {
    expect(groupSecret('JBSWY3DPEHPK3PXP')).toBe('JBSW Y3DP EHPK 3PXP')
    expect(groupSecret('ABCDEF')).toBe('ABCD EF')
    expect(groupSecret('')).toBe('')
  })
  it('regroups a secret that already has spaces', () => {
    expect(groupSecret('AB CD EF GH I')).toBe('ABCD EFGH I')
  })
})

describe('qrPath', () => {
  it('draws runs of dark modules, one rectangle per run', () => {
    const m = [
      [true, true, false, true],
      [false, false, false, false],
      [false, true, true, true],
    ]
    expect(qrPath(m)).toBe('M0 0h2v1h-2zM3 0h1v1h-1zM1 2h3v1h-3z')
  })
  it('is empty for a blank matrix', () => {
    expect(qrPath([[false, false]])).toBe('')
  })
})

describe('digitsOnly', () => {
  it('keeps six digits', () => {
    expect(digitsOnly('12 34-56 78')).toBe('123456')
    expect(digitsOnly('abc')).toBe('')
  })
})

describe('recovery codes file', () => {
  it('lists every code on its own line', () => {
    const text = recoveryCodesText('rad1', ['aaaa-bbbb', 'cccc-dddd'], new Date('2030-01-02T03:04:05Z'))
    expect(text.split('\n')).toContain('aaaa-bbbb')
    expect(text.split('\n')).toContain('cccc-dddd')
    expect(text).toContain('rad1')
    expect(text).toContain('2030-01-02')
  })
  it('has a safe file name', () => {
    expect(recoveryCodesFileName('rad1')).toBe('relaypacs-recovery-codes-rad1.txt')
    expect(recoveryCodesFileName('../x y')).toBe('relaypacs-recovery-codes-x_y.txt')
    expect(recoveryCodesFileName('')).toBe('relaypacs-recovery-codes-account.txt')
  })
})

describe('clip', () => {
  it('leaves short text alone, collapsing whitespace', () => {
    expect(clip('  cough,\n fever  ')).toEqual({ text: 'cough, fever', clipped: false })
  })
  it('cuts long text at a word boundary', () => {
    const long = 'Fall from ladder, pain in the left wrist, swelling and reduced range of motion since yesterday'
    const c = clip(long, 40)
    expect(c.clipped).toBe(true)
    expect(c.text.endsWith('…')).toBe(true)
    expect(c.text.length).toBeLessThanOrEqual(41)
    expect(long.startsWith(c.text.slice(0, -1))).toBe(true)
  })
  it('cuts a long word anywhere', () => {
    expect(clip('x'.repeat(100), 10)).toEqual({ text: `${'x'.repeat(10)}…`, clipped: true })
  })
})
