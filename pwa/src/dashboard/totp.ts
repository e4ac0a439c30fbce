/** Pure helpers of the dashboard's two-factor screens (tested in totp.test.ts). */

export interface Otpauth {
  /** Base32 secret, upper case, no padding or spaces. */
  secret: string
  issuer: string | null
  /** The account name without the "Issuer:" prefix. */
  account: string
  digits: number
  period: number
}

/** Parse an `otpauth://totp/Issuer:account?secret=...&issuer=...` URI; null if it is not one. */
export function parseOtpauth(uri: string): Otpauth | null {
  let u: URL
  try {
    u = new URL(uri)
  } catch {
    return null
  }
  if (u.protocol !== 'otpauth:') return null
  // `new URL` keeps non-special schemes' "host" in host or pathname depending on the engine.
  const rest = `${u.host}${u.pathname}`.replace(/^\/+/, '')
  const slash = rest.indexOf('/')
  if (slash < 0 || rest.slice(0, slash).toLowerCase() !== 'totp') return null
  const secret = (u.searchParams.get('secret') ?? '').replace(/[\s=]/g, '').toUpperCase()
  if (!/^[A-Z2-7]+$/.test(secret)) return null
  let label: string
  try {
    label = decodeURIComponent(rest.slice(slash + 1))
  } catch {
    return null
  }
  const colon = label.indexOf(':')
  const issuer = u.searchParams.get('issuer') ?? (colon >= 0 ? label.slice(0, colon) : null)
  const account = (colon >= 0 ? label.slice(colon + 1) : label).trim()
  const digits = Number(u.searchParams.get('digits') ?? 6)
  const period = Number(u.searchParams.get('period') ?? 30)
  return { secret, issuer, account, digits: Number.isFinite(digits) ? digits : 6, period: Number.isFinite(period) ? period : 30 }
}

/** "JBSWY3DPEHPK3PXP" -> "JBSW Y3DP EHPK 3PXP": easier to type from the screen. */
export function groupSecret(secret: string, size = 4): string {
  const s = secret.replace(/\s/g, '')
  const out: string[] = []
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size))
  return out.join(' ')
}

/** An SVG path (one unit per module) drawing the dark modules of a QR matrix, row runs merged. */
export function qrPath(modules: ReadonlyArray<ReadonlyArray<boolean>>): string {
  const parts: string[] = []
  modules.forEach((row, y) => {
    let x = 0
    while (x < row.length) {
      if (!row[x]) {
        x++
        continue
      }
      const start = x
      while (x < row.length && row[x]) x++
      parts.push(`M${start} ${y}h${x - start}v1h-${x - start}z`)
    }
  })
  return parts.join('')
}

/** Only the digits of what was typed, at most `n` (6 for an authenticator code). */
export function digitsOnly(value: string, n = 6): string {
  return value.replace(/\D/g, '').slice(0, n)
}

/** The text file a user downloads with their recovery codes. */
export function recoveryCodesText(account: string, codes: readonly string[], at: Date = new Date()): string {
  return [
    `RelayPACS recovery codes for ${account}`,
    `Created ${at.toISOString().slice(0, 10)}. Each code signs you in once, instead of a 6-digit code.`,
    'Keep them somewhere safe, away from your phone.',
    '',
    ...codes,
    '',
  ].join('\n')
}

/** A file name safe on every OS: relaypacs-recovery-codes-<account>.txt */
export function recoveryCodesFileName(account: string): string {
  const safe = account.replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[._]+/, '') || 'account'
  return `relaypacs-recovery-codes-${safe}.txt`
}

/** Shorten free text for a table cell: `{ text, clipped }`, cut at a word boundary when one is near. */
export function clip(text: string, max = 80): { text: string; clipped: boolean } {
  const t = text.replace(/\s+/g, ' ').trim()
  if (t.length <= max) return { text: t, clipped: false }
  let cut = t.slice(0, max)
  const space = cut.lastIndexOf(' ')
  if (space > max * 0.6) cut = cut.slice(0, space)
  return { text: `${cut.replace(/[\s,.;:–-]+$/, '')}…`, clipped: true }
}
