/** Signing in on the hub (sending straight to it): access + refresh tokens, TOTP, facilities. */
import { request, type Session } from './api'
import { session } from './session'

interface TokenResponse {
  access_token: string
  refresh_token: string | null
  expires_in: number
  scope: string
}

interface Me {
  username: string
  role: string | null
  facilities: string[]
}

/** Refresh this long before the access token ends. */
const MARGIN_MS = 60_000

export async function hubLogin(username: string, password: string, totp_code?: string): Promise<Session> {
  const t = await request<TokenResponse>('POST', '/auth/login', { username, password, ...(totp_code ? { totp_code } : {}) }, false)
  const me = await request<Me>('GET', '/auth/me', undefined, t.access_token)
  return {
    token: t.access_token,
    refreshToken: t.refresh_token ?? undefined,
    username: me.username,
    role: me.role ?? '',
    facilities: me.facilities,
    facility: me.facilities.length === 1 ? me.facilities[0] : null,
    expires_at: Math.floor(Date.now() / 1000) + t.expires_in,
    offline: false,
  }
}

let inflight: Promise<void> | null = null

/** Rotate the tokens when the access token ends within a minute (one refresh at a time). */
export function ensureFresh(): Promise<void> {
  const s = session.get()
  if (!s?.refreshToken || s.expires_at * 1000 - Date.now() > MARGIN_MS) return Promise.resolve()
  if (!inflight) {
    const refresh_token = s.refreshToken
    inflight = request<TokenResponse>('POST', '/auth/refresh', { refresh_token }, false)
      .then((t) => {
        if (session.get()?.refreshToken !== refresh_token) return // signed out meanwhile
        session.update({
          token: t.access_token,
          refreshToken: t.refresh_token ?? refresh_token,
          expires_at: Math.floor(Date.now() / 1000) + t.expires_in,
        })
      })
      .catch((e: unknown) => {
        // 401: the refresh token is over (or was used twice): sign in again. No network: later.
        if (e && typeof e === 'object' && 'status' in e && (e as { status: number }).status === 401) session.expire()
        throw e
      })
      .finally(() => {
        inflight = null
      })
  }
  return inflight
}

/** Keep the tokens fresh while signed in (long uploads outlive an access token). */
export function keepFresh(): () => void {
  const timer = setInterval(() => void ensureFresh().catch(() => undefined), 20_000)
  return () => clearInterval(timer)
}

/** The hub's status of a committed study (GET /api/v1/studies/{uid}). */
export interface HubStudyStatus {
  study_instance_uid: string
  state: string
  service_level: string
  instance_count: number
  destinations: Array<{ destination: string; state: string; delivered_instances: number; last_error: string | null }>
}

export const hubStudy = (uid: string) => request<HubStudyStatus>('GET', `/studies/${encodeURIComponent(uid)}`)
