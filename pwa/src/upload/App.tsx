import { useEffect, useState, useSyncExternalStore } from 'react'
import { formatAgo } from '../lib/format'
import { AgentPage } from './AgentPage'
import { agent, ApiError } from './api'
import { queue } from './engine'
import { useAgentInfo, useServerBatches } from './hooks'
import { Home } from './Home'
import { promptInstall, useCanInstall } from './install'
import { Login } from './Login'
import { NewUpload } from './NewUpload'
import { useReportStream } from './reports'
import { ReportPage } from './ReportView'
import { session, useSession } from './session'
import { hubBadge } from './status'
import { StudyPage } from './StudyPage'

function useHash(): string {
  return useSyncExternalStore(
    (l) => {
      window.addEventListener('hashchange', l)
      return () => window.removeEventListener('hashchange', l)
    },
    () => window.location.hash || '#/',
  )
}

function HubBadge({ online, reachable, hub }: { online: boolean; reachable: boolean | null; hub: { reachable: boolean; last_contact_at: number | null } | null }) {
  const st = hubBadge(online, reachable, hub)
  const cls =
    st.kind === 'hub-online'
      ? 'bg-emerald-50 text-emerald-900 border-emerald-400'
      : st.kind === 'checking'
        ? 'bg-slate-100 text-slate-800 border-slate-300'
        : 'bg-amber-100 text-amber-950 border-amber-400'
  const title =
    st.kind === 'hub-offline' && hub?.last_contact_at
      ? `Last contact with the hub ${formatAgo(hub.last_contact_at * 1000)}`
      : st.kind === 'agent-unreachable'
        ? online
          ? 'The agent on this network does not answer. Uploads wait on this device.'
          : 'This device is offline. Uploads wait on this device.'
        : undefined
  return (
    <span
      data-testid="hub-status"
      data-reachable={st.hubReachable === null ? 'unknown' : String(st.hubReachable)}
      data-agent-reachable={st.agentReachable === null ? 'unknown' : String(st.agentReachable)}
      data-state={st.kind}
      role="status"
      title={title}
      className={`inline-flex items-center gap-1.5 rounded-full border px-2.5 py-1 text-xs font-medium ${cls}`}
    >
      <span aria-hidden="true" className={`h-2 w-2 rounded-full ${st.kind === 'hub-online' ? 'bg-emerald-600' : st.kind === 'checking' ? 'bg-slate-500' : 'bg-amber-600'}`} />
      {st.text}
    </span>
  )
}

export function App() {
  const s = useSession()
  const hash = useHash()
  const { info, reachable, hub, online } = useAgentInfo()
  const canInstall = useCanInstall()
  const server = useServerBatches(s?.username ?? null)
  const [checked, setChecked] = useState(false)
  useReportStream(!!s)

  useEffect(() => {
    void queue.start()
  }, [])

  // Check the stored session once: a 401 sends the user back to sign in; no network keeps it.
  useEffect(() => {
    if (!s || checked) return
    setChecked(true)
    agent
      .me()
      .then((me) => session.update({ ...me }))
      .catch((e) => {
        if (e instanceof ApiError && e.status === 401) session.expire()
      })
  }, [s, checked])

  const isAdmin = s?.role === 'admin'
  let page
  if (!s) page = <Login />
  else if (hash.startsWith('#/agent') && isAdmin) page = <AgentPage />
  else if (hash.startsWith('#/new')) page = <NewUpload onDone={() => (window.location.hash = '#/')} />
  else if (hash.startsWith('#/study/')) page = <StudyPage localId={decodeURIComponent(hash.slice('#/study/'.length))} />
  else if (hash.startsWith('#/report/')) page = <ReportPage studyUid={decodeURIComponent(hash.slice('#/report/'.length))} />
  else if (hash.startsWith('#/batch/')) page = <StudyPage serverId={decodeURIComponent(hash.slice('#/batch/'.length))} />
  else page = <Home server={server} agentReachable={reachable} />

  return (
    <div className="min-h-dvh">
      <a href="#main" className="sr-only focus:not-sr-only focus:absolute focus:left-2 focus:top-2 focus:z-50 focus:rounded focus:bg-white focus:p-2">
        Skip to content
      </a>
      <header className="border-b border-slate-200 bg-white">
        <div className="mx-auto flex max-w-3xl flex-wrap items-center justify-between gap-2 px-4 py-3">
          <div className="min-w-0">
            <h1 className="text-lg font-bold text-brand-800">
              <a href="#/">RelayPACS</a>
            </h1>
            <p className="truncate text-sm text-slate-700" data-testid="facility">
              {info?.facility ?? 'Facility not set'}
            </p>
          </div>
          <div className="flex flex-wrap items-center gap-2">
            <HubBadge online={online} reachable={reachable} hub={hub} />
            {canInstall && (
              <button type="button" className="btn-secondary min-h-10 px-3 text-sm" onClick={() => void promptInstall()}>
                Install app
              </button>
            )}
            {isAdmin && (
              <a
                href="#/agent"
                data-testid="agent-link"
                aria-current={hash.startsWith('#/agent') ? 'page' : undefined}
                className="btn-secondary min-h-10 px-3 text-sm"
              >
                Agent
              </a>
            )}
            {s && (
              <button type="button" className="btn-secondary min-h-10 px-3 text-sm" onClick={() => void session.signOut()}>
                Sign out
              </button>
            )}
          </div>
        </div>
      </header>
      <main id="main" className="mx-auto flex max-w-3xl flex-col gap-4 px-4 py-4">
        {s?.offline && (
          <p className="rounded-lg bg-slate-100 px-3 py-2 text-sm text-slate-800" data-testid="offline-login-note">
            Signed in offline: the hub is unreachable, uploads will wait at the agent.
          </p>
        )}
        {s && <p className="sr-only">Signed in as {s.username}</p>}
        {page}
      </main>
    </div>
  )
}
