import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react'
import type { QueueSnapshot } from '../queue/scheduler'
import { agent, type AgentInfo, type ServerBatch } from './api'
import { queue } from './engine'

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

/** GET /api/v1/info every 5 s (no auth): facility name and hub reachability; null = agent unreachable. */
export function useAgentInfo(): { info: AgentInfo | null; reachable: boolean | null } {
  const [state, setState] = useState<{ info: AgentInfo | null; reachable: boolean | null }>(() => {
    try {
      return { info: JSON.parse(localStorage.getItem('relaypacs.info') ?? 'null'), reachable: null }
    } catch {
      return { info: null, reachable: null }
    }
  })
  usePoll(async () => {
    try {
      const info = await agent.info()
      localStorage.setItem('relaypacs.info', JSON.stringify(info))
      setState({ info, reachable: true })
      queue.kick()
    } catch {
      setState((s) => ({ info: s.info, reachable: false }))
    }
  }, 5000)
  return state
}

const CACHE = 'relaypacs.batches'

function inPacs(b: ServerBatch | undefined): boolean {
  return !!b && b.studies.length > 0 && b.studies.every((s) => s.stage === 'pacs')
}

/** The user's recent batches at the agent; polled every 2 s while some are not in the PACS yet. */
export function useServerBatches(signedIn: boolean): Map<string, ServerBatch> {
  // Last answer kept so that a reload with no network still shows how far each study got.
  const [batches, setBatches] = useState<Map<string, ServerBatch>>(() => {
    try {
      const list = JSON.parse(localStorage.getItem(CACHE) ?? '[]') as ServerBatch[]
      return new Map(list.map((b) => [b.id, b]))
    } catch {
      return new Map()
    }
  })
  const snap = useQueue()
  const busy =
    snap.batches.some((b) => !b.serverId || !inPacs(batches.get(b.serverId))) ||
    [...batches.values()].some((b) => !inPacs(b))
  usePoll(
    async () => {
      const { batches: list } = await agent.batches()
      setBatches(new Map(list.map((b) => [b.id, b])))
      try {
        localStorage.setItem(CACHE, JSON.stringify(list.slice(0, 50)))
      } catch {
        // full or private mode
      }
    },
    busy ? 2_000 : 30_000,
    signedIn,
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
