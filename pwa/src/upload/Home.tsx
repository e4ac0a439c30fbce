import { formatBytes, plural } from '../lib/format'
import type { ServerBatch } from './api'
import { useQueue } from './hooks'
import { StudyCard } from './StudyCard'
import { Alert } from './ui'

export function WaitingBanner({ agentReachable }: { agentReachable: boolean | null }) {
  const snap = useQueue()
  const offline = !snap.online
  const unreachable = !offline && (!snap.agentReachable || agentReachable === false)
  if (!offline && !unreachable) return null
  const w = snap.waiting
  const what =
    w.studies === 0
      ? 'Nothing is waiting on this device.'
      : `${plural(w.studies, 'study', 'studies')} (${plural(w.files, 'file')}, ${formatBytes(w.bytes)}) ${w.studies === 1 ? 'is' : 'are'} waiting on this device and will be sent when the agent is reachable.`
  return (
    <Alert tone="warn" testId="offline-banner">
      <strong>{offline ? 'Offline' : 'The agent is unreachable'}</strong> — {what}
    </Alert>
  )
}

export function Home({ server, agentReachable }: { server: Map<string, ServerBatch>; agentReachable: boolean | null }) {
  const snap = useQueue()
  const locals = [...snap.batches].sort((a, b) => b.createdAt - a.createdAt)
  const localServerIds = new Set(locals.map((b) => b.serverId).filter(Boolean))
  const others = [...server.values()].filter((b) => !localServerIds.has(b.id))
  const empty = locals.length === 0 && others.length === 0
  return (
    <section aria-labelledby="home-title" className="flex flex-col gap-4">
      <div className="flex items-center justify-between gap-3">
        <h2 id="home-title" className="text-xl font-semibold">
          Studies
        </h2>
        <a href="#/new" className="btn-primary" data-testid="new-upload">
          New upload
        </a>
      </div>
      <WaitingBanner agentReachable={agentReachable} />
      {snap.authRequired && <Alert tone="warn">Your session has ended. Sign in again to continue sending.</Alert>}
      {empty && (
        <div className="card text-slate-700">
          <p>No studies yet. Tap “New upload” to send images from this device.</p>
        </div>
      )}
      <ul className="flex flex-col gap-3" aria-label="Your studies">
        {locals.map((b) => (
          <li key={b.id}>
            <StudyCard local={b} files={snap.files} server={b.serverId ? server.get(b.serverId) : undefined} href={`#/study/${b.id}`} />
          </li>
        ))}
        {others.map((b) => (
          <li key={b.id}>
            <StudyCard files={[]} server={b} href={`#/batch/${encodeURIComponent(b.id)}`} />
          </li>
        ))}
      </ul>
    </section>
  )
}
