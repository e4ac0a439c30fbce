/** Pure helpers of the admin screens (users, agents): no React, no fetch. */
import { HubError } from './api'

export const ROLES = ['clinician', 'radiographer', 'radiologist', 'admin'] as const
export type Role = (typeof ROLES)[number]

/** The hub refuses shorter passwords (`min_length=12`). */
export const MIN_PASSWORD = 12
/** The hub's username rule: 1–64 of letters, digits and . _ @ - */
export const USERNAME_PATTERN = '[A-Za-z0-9._@\\-]{1,64}'

/** "east, west\nnorth" → ["east", "north", "west"]: split on commas, semicolons and line breaks,
 * trimmed, empty parts and repeats dropped, sorted (the hub stores them sorted). */
export function parseFacilities(text: string): string[] {
  const parts = text
    .split(/[,;\n\r]+/)
    .map((s) => s.trim())
    .filter(Boolean)
  return [...new Set(parts)].sort()
}

/** How a user's facilities read in a list. No facility means every facility only for an admin. */
export function facilitiesLabel(facilities: string[], role: string): string {
  if (facilities.length) return facilities.join(', ')
  return role === 'admin' ? 'all (admin)' : 'none'
}

export interface PasswordHint {
  ok: boolean
  text: string
}

/** A hint under a password field: length first (what the hub checks), then variety. */
export function passwordHint(pw: string): PasswordHint {
  const n = [...pw].length
  if (n === 0) return { ok: false, text: `At least ${MIN_PASSWORD} characters.` }
  if (n < MIN_PASSWORD) {
    const left = MIN_PASSWORD - n
    return { ok: false, text: `Too short: ${left} more character${left === 1 ? '' : 's'} needed (at least ${MIN_PASSWORD}).` }
  }
  const kinds = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^A-Za-z0-9]/].filter((r) => r.test(pw)).length
  const distinct = new Set(pw).size
  if (distinct < 5) return { ok: true, text: 'Long enough, but very repetitive: pick something less guessable.' }
  if (n >= 16 || kinds >= 3) return { ok: true, text: 'Strong enough.' }
  return { ok: true, text: 'Long enough. A longer password, or one mixing letters, digits and symbols, is stronger.' }
}

/** A shell word: left bare when it is plain, else in single quotes. */
export function shellQuote(s: string): string {
  if (s !== '' && /^[A-Za-z0-9_.,:/@=+%-]+$/.test(s)) return s
  return `'${s.replace(/'/g, `'\\''`)}'`
}

/** The command an IT person runs at the facility to enroll an agent with a one-time code. */
export function enrollCommand(hubUrl: string, code: string, name: string): string {
  const url = hubUrl.replace(/\/+$/, '')
  const parts = ['relaypacs-agent', 'enroll', '--hub-url', shellQuote(url), '--code', shellQuote(code)]
  if (name.trim()) parts.push('--name', shellQuote(name.trim()))
  return parts.join(' ')
}

/** "in 60 min", "in 2 h", "in 3 days": how long an enrollment code stays valid. */
export function validityLabel(minutes: number): string {
  if (!Number.isFinite(minutes) || minutes <= 0) return '–'
  if (minutes < 120) return `${Math.round(minutes)} min`
  const h = minutes / 60
  if (h < 48) return `${Math.round(h)} h`
  return `${Math.round(h / 24)} days`
}

/** The hub's limit on a code's validity (30 days), in minutes. */
export const MAX_CODE_MINUTES = 60 * 24 * 30

/** An admin action's failure, in words. */
export function adminError(e: unknown): string {
  if (e instanceof HubError) {
    if (e.status === 403) return 'Your role may not do this.'
    if (e.code === 'user_exists') return `${e.message[0]?.toUpperCase() ?? ''}${e.message.slice(1)}. Pick another username.`
    if (e.code === 'not_found' || e.code === 'unknown_device') return `${e.message} (it may have been removed meanwhile).`
    if (e.status === 422) return `The hub refused this: ${e.message}.`
    return e.message
  }
  return e instanceof Error ? e.message : String(e)
}
