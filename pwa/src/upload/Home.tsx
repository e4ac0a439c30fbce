import { formatBytes, plural } from '../lib/format'
import type { ServerBatch } from './api'
import { useQueue } from './hooks'
import { PushToggle, ReportList } from './ReportView'
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

/** Other users' work on this shared device: counts only, never anything about the studies. */
export function OthersWaiting() {
  const { others } = useQueue()
  if (others.studies === 0) return null
  const one = others.studies === 1
  const whose = others.users > 1 ? 'other users' : 'another user'
  const who = others.users > 1 ? 'those users sign' : 'that user signs'
  return (
    <p className="rounded-lg bg-slate-100 px-3 py-2 text-sm text-slate-800" data-testid="others-waiting" role="status">
      {plural(others.studies, 'study', 'studies')} of {whose} {one ? 'is' : 'are'} waiting on this device; {one ? 'it continues' : 'they continue'} when{' '}
      {who} in.
    </p>
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
      <OthersWaiting />
      <ReportList />
      {!empty && <PushToggle />}
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
