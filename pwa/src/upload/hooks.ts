import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react'
import type { QueueSnapshot } from '../queue/scheduler'
import { agent, type AgentInfo, type ServerBatch } from './api'
import { queue } from './engine'
import { session } from './session'

export function useQueue(): QueueSnapshot {
  return useSyncExternalStore(
    useCallback((l: () => void) => queue.subscribe(l), []),
    queue.getSnapshot,
  )
}

function useVisible(): boolean {
  return useSyncExternalStore(
    (l) => {
      document.addEventListener('visibilitychange', l)
      return () => document.removeEventListener('visibilitychange', l)
    },
    () => document.visibilityState === 'visible',
  )
}

/** Call fn every `ms` while the page is visible and `enabled`; the latest fn is used. */
export function usePoll(fn: () => Promise<void> | void, ms: number, enabled = true): void {
  const visible = useVisible()
  const ref = useRef(fn)
  ref.current = fn
  useEffect(() => {
    if (!visible || !enabled) return
    let stopped = false
    let timer: ReturnType<typeof setTimeout>
    const tick = async () => {
      try {
        await ref.current()
      } catch {
        // shown by whoever called; keep polling
      }
      if (!stopped) timer = setTimeout(tick, ms)
    }
    void tick()
    return () => {
      stopped = true
      clearTimeout(timer)
    }
  }, [visible, enabled, ms])
}

function useOnline(): boolean {
  return useSyncExternalStore(
    (l) => {
      window.addEventListener('online', l)
      window.addEventListener('offline', l)
      return () => {
        window.removeEventListener('online', l)
        window.removeEventListener('offline', l)
      }
    },
    () => navigator.onLine,
  )
}

export interface AgentStatus {
  /** Last known answer of GET /api/v1/info (kept across reloads for the facility name). */
  info: AgentInfo | null
  /** The agent answered the latest probe; false while the browser is offline; null = not probed yet. */
  reachable: boolean | null
  /** The hub as the agent sees it, from a live answer only (null while the agent is not reachable). */
  hub: AgentInfo['hub'] | null
  /** navigator.onLine */
  online: boolean
}

/** GET /api/v1/info every 5 s (no auth) while the browser is online, and at once when it comes back. */
export function useAgentInfo(enabled = true): AgentStatus {
  const online = useOnline()
  const [state, setState] = useState<{ info: AgentInfo | null; reachable: boolean | null }>(() => {
    try {
      return { info: JSON.parse(localStorage.getItem('relaypacs.info') ?? 'null'), reachable: null }
    } catch {
      return { info: null, reachable: null }
    }
  })
  useEffect(() => {
    // Offline: what the agent said before no longer holds; back online, wait for a fresh answer.
    if (!online) setState((s) => (s.reachable === false ? s : { info: s.info, reachable: false }))
  }, [online])
  usePoll(
    async () => {
      try {
        const info = await agent.info()
        if (!navigator.onLine) return
        try {
          localStorage.setItem('relaypacs.info', JSON.stringify(info))
        } catch {
          // full or private mode
        }
        setState({ info, reachable: true })
        queue.kick()
      } catch {
        setState((s) => ({ info: s.info, reachable: false }))
      }
    },
    5000,
    online && enabled,
  )
  const reachable = online ? state.reachable : false
  return { info: state.info, reachable, hub: reachable ? (state.info?.hub ?? null) : null, online }
}

const CACHE = 'relaypacs.batches'

function inPacs(b: ServerBatch | undefined): boolean {
  return !!b && b.studies.length > 0 && b.studies.every((s) => s.stage === 'pacs')
}

interface ServerBatches {
  owner: string | null
  map: Map<string, ServerBatch>
}

const NONE = new Map<string, ServerBatch>()

/** The last answer, if it was for this user (a shared device never shows one user's list to another). */
function readCache(owner: string | null): ServerBatches {
  if (!owner) return { owner, map: NONE }
  try {
    const c = JSON.parse(localStorage.getItem(CACHE) ?? 'null') as { owner?: string; batches?: ServerBatch[] } | null
    if (c && c.owner === owner && Array.isArray(c.batches)) return { owner, map: new Map(c.batches.map((b) => [b.id, b])) }
  } catch {
    // ignore
  }
  return { owner, map: NONE }
}

/** The user's recent batches at the agent; polled every 2 s while some are not in the PACS yet. */
export function useServerBatches(username: string | null): Map<string, ServerBatch> {
  // Last answer kept so that a reload with no network still shows how far each study got.
  const [state, setState] = useState<ServerBatches>(() => readCache(username))
  if (state.owner !== username) {
    // Another user (or nobody): drop the list at once, during this render.
    setState(readCache(username))
  }
  const batches = state.owner === username && username ? state.map : NONE
  const snap = useQueue()
  const busy =
    snap.batches.some((b) => !b.serverId || !inPacs(batches.get(b.serverId))) ||
    [...batches.values()].some((b) => !inPacs(b))
  usePoll(
    async () => {
      const asked = username
      const { batches: list } = await agent.batches()
      // An answer for someone who has signed out meanwhile is not shown to whoever is next.
      if (!asked || session.get()?.username !== asked) return
      setState({ owner: asked, map: new Map(list.map((b) => [b.id, b])) })
      try {
        localStorage.setItem(CACHE, JSON.stringify({ owner: asked, batches: list.slice(0, 50) }))
      } catch {
        // full or private mode
      }
    },
    busy ? 2_000 : 30_000,
    !!username,
  )
  return batches
}

export function useServerBatch(id: string | null, done: boolean): ServerBatch | undefined {
  const [batch, setBatch] = useState<ServerBatch>()
  usePoll(
    async () => {
      if (id) setBatch(await agent.batch(id))
    },
    2_000,
    id !== null && !done,
  )
  return batch
}
