/** The hub's API (same origin as the dashboard, which the hub serves under /dashboard/). */

export interface Tokens {
  access_token: string
  /** null for the enroll-only token a role that needs TOTP gets before it has one. */
  refresh_token: string | null
  token_type: string
  expires_in: number
  scope: string
}

export interface Me {
  username: string
  role: string
  facilities: string[]
  scope: string
}

export interface Stats {
  studies_by_state: Record<string, number>
  jobs_by_state: Record<string, number>
  delivered_24h: number
  time_to_pacs_median_seconds: number | null
  time_to_pacs_p95_seconds: number | null
  dead_jobs: number
  /** Delivered studies the archives hold no report for yet, and how long the oldest waited. */
  waiting_for_report: number
  oldest_waiting_report_seconds: number | null
  time_to_report_median_seconds: number | null
  time_to_report_p95_seconds: number | null
}

export interface Destination {
  name: string
  state: string
  attempts: number
  last_error: string | null
  completed_at: string | null
  time_to_pacs_seconds: number | null
}

export type ReportStatus = 'waiting' | 'preliminary' | 'final' | 'amended'

export interface Study {
  study_instance_uid: string
  facility: string
  service_level: string
  state: string
  instance_count: number
  first_received_at: string | null
  agent_received_at: string | null
  committed_at: string | null
  delivered_at: string | null
  time_to_pacs_seconds: number | null
  /** From the upload form (free text), null when none was given. */
  clinical_history: string | null
  referring_clinician: string | null
  /** From the instances' headers: (0008,0061) modalities, YYYY-MM-DD, free text, accession. */
  modalities?: string[]
  study_date?: string | null
  study_description?: string | null
  accession_number?: string | null
  /** Once delivered: waiting, preliminary, final or amended; null before delivery. */
  report_status?: ReportStatus | null
  reported_at?: string | null
  /** When a destination first confirmed it: the report clock starts there. */
  first_delivered_at?: string | null
  time_to_report_seconds?: number | null
  destinations: Destination[]
}

export interface Timing {
  n: number
  median_seconds: number | null
  p95_seconds: number | null
}

export interface Analytics {
  start: string
  end: string
  bucket: 'day' | 'week'
  studies: number
  instances: number
  delivered: number
  failed: number
  success_rate: number | null
  time_to_pacs: Record<string, Timing>
  time_to_report: Timing
  volume: { period: string; facility: string; modality: string; studies: number; instances: number }[]
  facilities: {
    facility: string
    studies: number
    delivered: number
    failed: number
    in_progress: number
    success_rate: number | null
    time_to_pacs: Record<string, Timing>
    time_to_report: Timing
  }[]
  modalities: { modality: string; studies: number }[]
  quarantine: { facility: string; reason: string; files: number }[]
  agents: {
    name: string
    facility: string | null
    version: string
    last_seen_at: string
    silent_seconds: number
    backlog_studies: number
    backlog_bytes: number
    oldest_waiting_seconds: number | null
    disk_below_reserve: boolean
  }[]
}

export interface Job {
  id: number
  study_instance_uid: string
  destination: string
  state: string
  priority: number
  attempts: number
  last_error: string | null
  held_by: string | null
  next_attempt_at: string
  created_at: string
  updated_at: string
  completed_at: string | null
  time_to_pacs_seconds: number | null
}

export interface Device {
  id: string
  facility: string
  name: string
  created_at: string
  last_seen_at: string | null
  revoked_at: string | null
}

export interface User {
  username: string
  role: string
  facilities: string[]
  disabled: boolean
  totp_enabled: boolean
  locked_until: string | null
  created_at: string
}

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

export interface TotpEnrollment {
  provisioning_uri: string
}

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

/** A study a second facility sent: held for an admin's decision (or decided). */
export interface StudyClaim {
  study_instance_uid: string
  facility: string
  owner: string | null
  owner_instances: number
  state: 'held' | 'accepted' | 'refused'
  device: string
  attempts: number
  first_seen_at: string
  last_seen_at: string
  decided_by: string | null
  decided_at: string | null
  reason: string
}

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
