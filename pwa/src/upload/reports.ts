/** Reports at the agent: which studies have one (the notification list), each study's report,
 * and a live stream from the agent (server-sent events over fetch, so the session token goes in
 * the Authorization header) that says when a report arrives. */
import { useEffect, useState, useSyncExternalStore } from 'react'
import type { components } from './agent-api'
import { API, ApiError, getToken, request } from './api'

// The agent's answers, generated from its LAN API models (agent-api.ts, `make docs`).
type Schemas = components['schemas']
export type ReportStatus = Schemas['ReportSummary']['status']
/** A study's latest report in the list (no text), with the study's status. */
export type ReportSummary = Schemas['ReportSummary']
export type ReportEntry = Schemas['ReportEntry']
export type StudyReport = Schemas['StudyReport']

export const STATUS_LABEL: Record<ReportStatus, string> = {
  preliminary: 'Preliminary',
  final: 'Final',
  amended: 'Amended',
}

interface Snapshot {
  byStudy: Map<string, ReportSummary>
  list: ReportSummary[]
  version: number
}

let snap: Snapshot = { byStudy: new Map(), list: [], version: 0 }
const listeners = new Set<() => void>()

function publish(list: ReportSummary[]): void {
  const byStudy = new Map(list.map((r) => [r.study_instance_uid, r]))
  snap = { byStudy, list, version: snap.version + 1 }
  for (const l of listeners) l()
}

export async function refreshReports(): Promise<void> {
  try {
    const body = await request<Schemas['ReportList']>('GET', '/reports')
    publish(body.reports)
  } catch {
    // the agent is unreachable: keep what we have
  }
}

export function useReports(): Snapshot {
  return useSyncExternalStore(
    (l) => {
      listeners.add(l)
      return () => listeners.delete(l)
    },
    () => snap,
  )
}

/** Parse a server-sent events body as it arrives; calls `onEvent` per complete event. */
export function parseSse(buffer: string, onEvent: (event: string, data: string) => void): string {
  let rest = buffer.replace(/\r\n/g, '\n')
  let cut: number
  while ((cut = rest.indexOf('\n\n')) >= 0) {
    const block = rest.slice(0, cut)
    rest = rest.slice(cut + 2)
    let event = 'message'
    const data: string[] = []
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue
      const i = line.indexOf(':')
      const field = i < 0 ? line : line.slice(0, i)
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '')
      if (field === 'event') event = value
      else if (field === 'data') data.push(value)
    }
    if (data.length || event !== 'message') onEvent(event, data.join('\n'))
  }
  return rest
}

/** Follow the agent's event stream while signed in; reconnects after a break. */
export function useReportStream(signedIn: boolean): void {
  useEffect(() => {
    if (!signedIn) return
    let stopped = false
    const ctrl = new AbortController()
    void refreshReports()
    const loop = async () => {
      let delay = 1000
      while (!stopped) {
        try {
          const token = getToken()
          const res = await fetch(`${API}/events`, {
            headers: { Accept: 'text/event-stream', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
            cache: 'no-store',
            signal: ctrl.signal,
          })
          if (res.status === 401) return
          if (!res.ok || !res.body) throw new Error(`events: HTTP ${res.status}`)
          delay = 1000
          void refreshReports() // anything that arrived while disconnected
          const reader = res.body.getReader()
          const decoder = new TextDecoder()
          let buffer = ''
          for (;;) {
            const { value, done } = await reader.read()
            if (done) break
            buffer = parseSse(buffer + decoder.decode(value, { stream: true }), (event) => {
              if (event === 'report') void refreshReports()
            })
          }
        } catch {
          if (stopped) return
        }
        await new Promise((r) => setTimeout(r, delay))
        delay = Math.min(delay * 2, 30000)
      }
    }
    void loop()
    return () => {
      stopped = true
      ctrl.abort()
    }
  }, [signedIn])
}

/** A study's report at the agent; null while there is none. Refetched when reports change. */
export function useStudyReport(studyUid: string | null): { report: StudyReport | null; error: string | null } {
  const { version } = useReports()
  const [state, setState] = useState<{ report: StudyReport | null; error: string | null }>({ report: null, error: null })
  useEffect(() => {
    if (!studyUid) return
    let live = true
    request<StudyReport>('GET', `/studies/${encodeURIComponent(studyUid)}/report`)
      .then((report) => live && setState({ report, error: null }))
      .catch((e) => {
        if (!live) return
        if (e instanceof ApiError && e.status === 404) setState({ report: null, error: null })
        else setState((s) => ({ report: s.report, error: e instanceof Error ? e.message : String(e) }))
      })
    return () => {
      live = false
    }
  }, [studyUid, version])
  return state
}

/** Open a report's PDF in a new tab (fetched with the session, shown from a blob URL). */
export async function openDocument(path: string): Promise<void> {
  const win = window.open('', '_blank')
  const token = getToken()
  const res = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {}, cache: 'no-store' })
  if (!res.ok) {
    win?.close()
    throw new ApiError(res.status, 'document', 'The report document could not be opened.')
  }
  const url = URL.createObjectURL(new Blob([await res.blob()], { type: 'application/pdf' }))
  if (win) win.location.href = url
  else window.location.href = url
}

function urlKey(base64url: string): Uint8Array<ArrayBuffer> {
  const pad = '='.repeat((4 - (base64url.length % 4)) % 4)
  const raw = atob((base64url + pad).replace(/-/g, '+').replace(/_/g, '/'))
  const out = new Uint8Array(new ArrayBuffer(raw.length))
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i)
  return out
}

export function pushSupported(): boolean {
  return typeof window !== 'undefined' && 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window
}

/** iOS only delivers Web Push to an app added to the Home Screen. */
export function needsHomeScreen(): boolean {
  const ios = /iPad|iPhone|iPod/.test(navigator.userAgent)
  const standalone = window.matchMedia?.('(display-mode: standalone)').matches || (navigator as { standalone?: boolean }).standalone === true
  return ios && !standalone
}

/** Ask for permission (after the user's tap), subscribe with the hub's key, relay via the agent. */
export async function enablePush(): Promise<void> {
  const permission = await Notification.requestPermission()
  if (permission !== 'granted') throw new Error('Notifications are blocked for this site. Allow them in the browser settings.')
  const reg = await navigator.serviceWorker.ready
  const { public_key } = await request<Schemas['PushKey']>('GET', '/push/key')
  const sub = (await reg.pushManager.getSubscription()) ?? (await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: urlKey(public_key) }))
  await request('POST', '/push/subscriptions', sub.toJSON())
}
