/** The agent session, kept in localStorage so that a reload keeps it. */
import { useSyncExternalStore } from 'react'
import { agent, request, setToken, setUnauthorizedHandler, type Session } from './api'

const KEY = 'relaypacs.session'
let current: Session | null = load()
const listeners = new Set<() => void>()

function load(): Session | null {
  try {
    const s = JSON.parse(localStorage.getItem(KEY) ?? 'null') as Session | null
    if (s && typeof s.token === 'string' && (s.expires_at * 1000 > Date.now() || !!s.refreshToken)) return s
  } catch {
    // ignore
  }
  return null
}

function set(s: Session | null): void {
  current = s
  setToken(s?.token ?? null)
  try {
    if (s) localStorage.setItem(KEY, JSON.stringify(s))
    else {
      localStorage.removeItem(KEY)
      localStorage.removeItem('relaypacs.batches')
    }
  } catch {
    // private mode: the session lasts as long as the page
  }
  for (const l of listeners) l()
}

setToken(current?.token ?? null)
setUnauthorizedHandler(() => set(null))

export const session = {
  get: () => current,
  subscribe(l: () => void) {
    listeners.add(l)
    return () => listeners.delete(l)
  },
  signedIn(s: Session) {
    set(s)
  },
  update(patch: Partial<Session>) {
    if (current) set({ ...current, ...patch })
  },
  /**
   * Forget the session here at once (token gone, the queue stops, nothing of this user is shown),
   * then end it at the agent. Work still queued stays on the device for the next sign-in.
   */
  async signOut() {
    const t = current?.token
    const refresh = current?.refreshToken
    set(null)
    if (!t) return
    try {
      if (refresh) await request<void>('POST', '/auth/logout', { refresh_token: refresh }, false)
      else await agent.logout(t)
    } catch {
      // offline or already gone: it is forgotten here anyway
    }
  },
  expire() {
    set(null)
  },
}

export function useSession(): Session | null {
  return useSyncExternalStore(session.subscribe, session.get)
}
