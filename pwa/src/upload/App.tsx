import { useEffect, useState, useSyncExternalStore } from 'react'
import { formatAgo } from '../lib/format'
import { AgentPage } from './AgentPage'
import { agent, ApiError } from './api'
import { ensureFresh, keepFresh } from './hubAuth'
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
import { isHub } from './target'

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

function FacilityPicker({ facilities, value }: { facilities: string[]; value: string | null }) {
  return (
    <label className="flex items-center gap-2 text-sm">
      <span>Sending for</span>
      <select
        data-testid="facility-picker"
        className="field min-h-10 w-auto py-1"
        value={value ?? ''}
        onChange={(e) => session.update({ facility: e.target.value || null })}
      >
        <option value="">Choose a facility…</option>
        {facilities.map((f) => (
          <option key={f} value={f}>
            {f}
          </option>
        ))}
      </select>
    </label>
  )
}

export function App() {
  const s = useSession()
  const hash = useHash()
  const direct = isHub()
  const { info, reachable: agentReachable, hub, online } = useAgentInfo(!direct)
  // Straight to the hub: nothing stands between this device and the hub but its network.
  const reachable = direct ? online : agentReachable
  const canInstall = useCanInstall()
  const server = useServerBatches(direct ? null : (s?.username ?? null))
  const [checked, setChecked] = useState(false)
  useReportStream(!!s && !direct)

  const signedIn = !!s
  useEffect(() => (direct && signedIn ? keepFresh() : undefined), [direct, signedIn])

  useEffect(() => {
    void queue.start()
  }, [])

  // Check the stored session once: a 401 sends the user back to sign in; no network keeps it.
  useEffect(() => {
    if (!s || checked) return
    setChecked(true)
    ;(direct ? ensureFresh() : Promise.resolve())
      .then(() => agent.me())
      .then((me) => session.update({ ...me }))
      .catch((e) => {
        if (e instanceof ApiError && e.status === 401) session.expire()
      })
  }, [s, checked])

  const isAdmin = s?.role === 'admin'
  let page
  const needFacility = direct && !!s && s.facilities.length > 1 && !s.facility
  if (!s) page = <Login />
  else if (needFacility)
    page = (
      <section className="card flex flex-col gap-3" data-testid="choose-facility">
        <h2 className="text-lg font-semibold">Which facility do you send for?</h2>
        <FacilityPicker facilities={s.facilities} value={null} />
      </section>
    )
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
              {direct ? (s?.facility ?? (s ? 'Facility not chosen' : '')) : (info?.facility ?? 'Facility not set')}
            </p>
            <p className="truncate text-sm font-medium text-slate-800" data-testid="target" data-target={direct ? 'hub' : 'agent'}>
              {direct
                ? 'Sending straight to the hub'
                : `Sending through the facility's agent${info?.facility ? ` at ${info.facility}` : ''}`}
            </p>
          </div>
          <div className="flex flex-wrap items-center gap-2">
            {direct ? (
              <span data-testid="hub-status" data-state={online ? 'hub-direct' : 'offline'} role="status" className="inline-flex items-center rounded-full border border-slate-300 px-2.5 py-1 text-xs font-medium">
                {online ? 'Direct to the hub' : 'Offline — uploads wait on this device'}
              </span>
            ) : (
              <HubBadge online={online} reachable={reachable} hub={hub} />
            )}
            {direct && s && s.facilities.length > 1 && s.facility && <FacilityPicker facilities={s.facilities} value={s.facility} />}
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
