/** The agent's API (same origin as the upload app). */
import { QueueError } from '../queue/types'
import type { components } from './agent-api'
import type { AgentReport, QuarantineList } from './agentView'

/** The agent's answers, generated from its LAN API models (`make docs` writes agent-api.ts from
 * relaypacs_agent.web.wire): a field the agent renames or drops fails the type check here. */
type Schemas = components['schemas']
/** POST /auth/login: the bearer token and its session (expires_at in unix s); on the hub
 * (sending straight to it) also what the app keeps beside it. */
export type Session = Schemas['Session'] & {
  /** On the hub: the refresh token, rotated before the access token ends. */
  refreshToken?: string
  /** On the hub: the facility this user sends for (one of `facilities`; null: not chosen yet). */
  facility?: string | null
}
export type Me = Schemas['Me']
export type AgentInfo = Schemas['AgentInfo']
/** A batch as the agent holds it; `refused[]` carries the agent's plain words for each reason
 * (`label`, `explanation`, `what_to_do`: one table with its CLI). */
export type ServerBatch = Schemas['ServerBatch']
export type Stage = Schemas['BatchStudy']['stage']
export type NewBatch = Schemas['NewBatch']

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly detail: string,
    readonly retryAfter: number | null = null,
  ) {
    super(detail)
  }
}

export const API = '/api/v1'

/** Absolute URL of an API path, from the page's origin (tus needs absolute URLs). */
export function apiUrl(path: string): string {
  return new URL(`${API}${path}`, window.location.href).href
}

let token: string | null = null
let onUnauthorized: (() => void) | null = null

export function setToken(t: string | null): void {
  token = t
}
export function getToken(): string | null {
  return token
}
export function setUnauthorizedHandler(fn: (() => void) | null): void {
  onUnauthorized = fn
}

const PLAIN: Record<string, string> = {
  invalid_credentials: 'The username or password is wrong.',
  totp_required: 'Enter the 6-digit code from your authenticator app.',
  locked: 'Too many failed attempts for this name from this device: wait a while, or ask an admin to reset the password.',
  rate_limited: 'Too many attempts. Wait a minute and try again.',
  no_verifiers:
    'Nobody can sign in yet: this agent has never reached the hub. Connect it to the network once, then try again.',
}

export function plainMessage(e: unknown): string {
  if (e instanceof ApiError) {
    if (e.code === 'locked' && e.retryAfter) {
      const min = Math.ceil(e.retryAfter / 60)
      return `Too many failed attempts for this name from this device. Try again in ${min} min, or ask an admin to reset the password.`
    }
    return e.detail || PLAIN[e.code] || `The agent answered with an error (${e.status}).`
  }
  if (e instanceof QueueError && e.kind === 'network') return 'The agent cannot be reached. Check the Wi-Fi and try again.'
  return e instanceof Error ? e.message : String(e)
}

async function parseError(res: Response): Promise<ApiError> {
  let code = `http_${res.status}`
  let detail = ''
  try {
    const body = await res.json()
    const inner = body && typeof body.detail === 'object' && body.detail !== null ? body.detail : body
    if (typeof inner.code === 'string') code = inner.code
    if (typeof inner.detail === 'string') detail = inner.detail
    else if (typeof body.detail === 'string') detail = body.detail
  } catch {
    // not JSON
  }
  const ra = res.headers.get('Retry-After')
  const retryAfter = ra !== null && /^\d+$/.test(ra) ? Number(ra) : null
  return new ApiError(res.status, code, detail || PLAIN[code] || res.statusText || `HTTP ${res.status}`, retryAfter)
}

/** `auth`: send the current token; a string: send that token (e.g. to sign out a session already forgotten). */
export async function request<T>(method: string, path: string, body?: unknown, auth: boolean | string = true): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' }
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  const sent = typeof auth === 'string' ? auth : auth ? token : null
  if (sent) headers.Authorization = `Bearer ${sent}`
  let res: Response
  try {
    res = await fetch(`${API}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    })
  } catch (e) {
    throw new QueueError('network', e instanceof Error ? e.message : 'network error')
  }
  if (!res.ok) {
    const err = await parseError(res)
    // Only when it is the current session that is over (not one signed out meanwhile).
    if (res.status === 401 && sent && sent === token) onUnauthorized?.()
    throw err
  }
  if (res.status === 204) return undefined as T
  return (await res.json()) as T
}

/** Map an API failure onto what the queue should do with it. */
export function toQueueError(e: unknown): QueueError {
  if (e instanceof QueueError) return e
  if (e instanceof ApiError) {
    if (e.status === 401) return new QueueError('auth', e.detail, 401, e.code)
    if (e.status === 408 || e.status === 429 || e.status >= 500) return new QueueError('server', e.detail, e.status, e.code)
    return new QueueError('rejected', e.detail, e.status, e.code)
  }
  return new QueueError('server', e instanceof Error ? e.message : String(e))
}

export const agent = {
  login: (username: string, password: string, totp_code?: string) =>
    request<Session>('POST', '/auth/login', { username, password, ...(totp_code ? { totp_code } : {}) } satisfies Schemas['LoginRequest'], false),
  me: () => request<Me>('GET', '/auth/me'),
  logout: (t?: string) => request<void>('POST', '/auth/logout', undefined, t ?? true),
  info: () => request<AgentInfo>('GET', '/info', undefined, false),
  createBatch: (b: Required<NewBatch>) => request<ServerBatch>('POST', '/batches', b),
  sendBatch: (id: string) => request<unknown>('POST', `/batches/${encodeURIComponent(id)}/send`),
  batch: (id: string) => request<ServerBatch>('GET', `/batches/${encodeURIComponent(id)}`),
  batches: () => request<Schemas['BatchList']>('GET', '/batches'),
  /** Admin only. */
  status: () => request<AgentReport>('GET', '/status'),
  /** Admin only: open quarantine entries, newest first (at most 500). */
  quarantine: () => request<QuarantineList>('GET', '/quarantine'),
}
