/** The hub's API (same origin as the dashboard, which the hub serves under /dashboard/). */

import type { components } from './hub-api'

/** The hub's answers, generated from its OpenAPI (`make docs` writes hub-api.ts): a field the
 * hub renames or drops fails the type check here, not in a hospital's browser. */
type Schemas = components['schemas']
export type Tokens = Schemas['TokenResponse']
export type Me = Schemas['Me']
export type Stats = Schemas['Stats']
export type Destination = Schemas['DestinationState']
export type Study = Schemas['StudySummary']
export type ReportStatus = NonNullable<Study['report_status']>
export type Timing = Schemas['Timing']
export type Analytics = Schemas['Analytics']
export type Job = Schemas['JobPublic']
export type Device = Schemas['DeviceInfo']
export type User = Schemas['UserPublic']

export interface EnrollmentCode {
  /** Shown once: the hub keeps only its hash. */
  code: string
  facility: string
  expires_at: string
}

export class HubError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    detail: string,
  ) {
    super(detail)
  }
}

/** The scope of an access token that may only enroll a second factor (and read /auth/me). */
export const ENROLL_SCOPE = 'totp-enroll'

export type TotpEnrollment = Schemas['TotpEnrollment']

const KEY = 'relaypacs.hub.tokens'
let tokens: Tokens | null = (() => {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) ?? 'null') as Tokens | null
  } catch {
    return null
  }
})()
let onSignedOut: (() => void) | null = null

export function setSignedOutHandler(fn: () => void): void {
  onSignedOut = fn
}
export function hasTokens(): boolean {
  return tokens !== null
}
/** The scope of the stored access token ('full', 'totp-enroll'), or null when signed out. */
export function tokenScope(): string | null {
  return tokens?.scope ?? null
}
function store(t: Tokens | null): void {
  tokens = t
  try {
    if (t) sessionStorage.setItem(KEY, JSON.stringify(t))
    else sessionStorage.removeItem(KEY)
  } catch {
    // ignore
  }
}

export async function errorOf(res: Response): Promise<HubError> {
  let code = `http_${res.status}`
  let detail = res.statusText || `HTTP ${res.status}`
  try {
    const body = await res.json()
    // The hub answers {code, detail}; FastAPI's own errors {detail: string | [...] | {code, detail}}.
    if (typeof body?.code === 'string') code = body.code
    const d = body?.detail
    if (d && typeof d === 'object' && !Array.isArray(d)) {
      if (typeof d.code === 'string') code = d.code
      if (typeof d.detail === 'string') detail = d.detail
    } else if (typeof d === 'string') {
      detail = d
    } else if (Array.isArray(d)) {
      // Validation errors: "password: String should have at least 12 characters".
      detail =
        d
          .map((x: { msg?: string; loc?: unknown[] }) => {
            const field = Array.isArray(x.loc) ? x.loc[x.loc.length - 1] : undefined
            return x.msg && typeof field === 'string' && field !== 'body' ? `${field}: ${x.msg}` : x.msg
          })
          .filter(Boolean)
          .join('; ') || detail
    }
  } catch {
    // not JSON
  }
  return new HubError(res.status, code, detail)
}

async function raw(method: string, path: string, body?: unknown, auth = true): Promise<Response> {
  const headers: Record<string, string> = { Accept: 'application/json' }
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  if (auth && tokens) headers.Authorization = `Bearer ${tokens.access_token}`
  try {
    return await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' })
  } catch {
    throw new HubError(0, 'network', 'The hub cannot be reached. Check the connection and try again.')
  }
}

let refreshing: Promise<boolean> | null = null
async function refresh(): Promise<boolean> {
  if (!tokens?.refresh_token) return false
  refreshing ??= (async () => {
    const res = await raw('POST', '/auth/refresh', { refresh_token: tokens!.refresh_token }, false)
    if (!res.ok) return false
    store((await res.json()) as Tokens)
    return true
  })().finally(() => (refreshing = null))
  return refreshing
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  let res = await raw(method, path, body)
  if (res.status === 401 && (await refresh())) res = await raw(method, path, body)
  if (res.status === 401) {
    store(null)
    onSignedOut?.()
  }
  if (!res.ok) throw await errorOf(res)
  if (res.status === 204) return undefined as T
  return (await res.json()) as T
}

/** A file from the API (CSV), saved by the browser under the name the hub gives it. */
export async function download(path: string): Promise<string> {
  let res = await fetchFile(path)
  if (res.status === 401 && (await refresh())) res = await fetchFile(path)
  if (!res.ok) throw await errorOf(res)
  const name = /filename="([^"]+)"/.exec(res.headers.get('Content-Disposition') ?? '')?.[1] ?? 'relaypacs.csv'
  const url = URL.createObjectURL(await res.blob())
  const a = document.createElement('a')
  a.href = url
  a.download = name
  document.body.append(a)
  a.click()
  a.remove()
  setTimeout(() => URL.revokeObjectURL(url), 10_000)
  return name
}

async function fetchFile(path: string): Promise<Response> {
  const headers: Record<string, string> = {}
  if (tokens) headers.Authorization = `Bearer ${tokens.access_token}`
  try {
    return await fetch(`/api/v1${path}`, { headers, cache: 'no-store' })
  } catch {
    throw new HubError(0, 'network', 'The hub cannot be reached. Check the connection and try again.')
  }
}

/** Sign in; a second factor is either a TOTP code or a recovery code. Returns the tokens' scope. */
export async function login(
  username: string,
  password: string,
  second?: { totp_code?: string; recovery_code?: string },
): Promise<string> {
  const body: Record<string, string> = { username, password }
  if (second?.totp_code) body.totp_code = second.totp_code
  if (second?.recovery_code) body.recovery_code = second.recovery_code
  const res = await raw('POST', '/auth/login', body, false)
  if (!res.ok) throw await errorOf(res)
  const t = (await res.json()) as Tokens
  store(t)
  return t.scope
}

export function logout(): void {
  const refresh = tokens?.refresh_token
  store(null)
  onSignedOut?.()
  // Revoke the refresh token at the hub too, so a copy of it left in this browser is worthless.
  if (refresh) void raw('POST', '/auth/logout', { refresh_token: refresh }, false).catch(() => undefined)
}

export type StudyClaim = Schemas['ClaimInfo']

export const hub = {
  me: () => api<Me>('GET', '/auth/me'),
  stats: () => api<Stats>('GET', '/stats'),
  studies: (q: { limit: number; offset: number; state: string; q?: string; report?: string }) =>
    api<{ total: number; studies: Study[] }>(
      'GET',
      `/studies?limit=${q.limit}&offset=${q.offset}${q.state ? `&state=${encodeURIComponent(q.state)}` : ''}${q.q ? `&q=${encodeURIComponent(q.q)}` : ''}${q.report ? `&report=${encodeURIComponent(q.report)}` : ''}`,
    ),
  analytics: (q: { start: string; end: string; bucket: string }) =>
    api<Analytics>('GET', `/analytics?start=${q.start}&end=${q.end}&bucket=${q.bucket}`),
  analyticsCsv: (q: { start: string; end: string }) => download(`/analytics/studies.csv?start=${q.start}&end=${q.end}`),
  deadJobs: () => api<{ total: number; jobs: Job[] }>('GET', '/jobs?state=dead&limit=200'),
  retryJob: (id: number) => api<Job>('POST', `/jobs/${id}/retry`),
  retryDead: () => api<{ retried: number[] }>('POST', '/jobs/retry-dead'),
  devices: () => api<Device[]>('GET', '/devices'),
  studyClaims: () => api<StudyClaim[]>('GET', '/study-claims'),
  decideClaim: (uid: string, facility: string, decision: 'accept' | 'refuse', reason = '') =>
    api<StudyClaim>('POST', `/study-claims/${encodeURIComponent(uid)}/${encodeURIComponent(facility)}`, { decision, reason }),
  users: () => api<User[]>('GET', '/users'),
  createUser: (u: { username: string; password: string; role: string; facilities: string[] }) => api<User>('POST', '/users', u),
  updateUser: (username: string, change: { role?: string; facilities?: string[]; disabled?: boolean; password?: string }) =>
    api<User>('PATCH', `/users/${encodeURIComponent(username)}`, change),
  deleteUser: (username: string) => api<void>('DELETE', `/users/${encodeURIComponent(username)}`),
  enrollmentCode: (facility: string, ttl_minutes: number) =>
    api<EnrollmentCode>('POST', '/devices/enrollment-codes', { facility, ttl_minutes }),
  revokeDevice: (id: string) => api<Device>('POST', `/devices/${encodeURIComponent(id)}/revoke`),
  totpEnroll: () => api<TotpEnrollment>('POST', '/auth/totp/enroll'),
  totpConfirm: (code: string) => api<{ recovery_codes: string[] }>('POST', '/auth/totp/confirm', { code }),
}
