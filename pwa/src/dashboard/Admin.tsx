/** The admin screens: manage users (add, role, facilities, disable, password, delete), agents
 * (enrollment codes, revoke) and studies a second facility sent (accept or refuse). Only admins
 * see them; the hub checks again on every call. */
import { useEffect, useId, useRef, useState, type FormEvent, type ReactNode } from 'react'
import { formatAgo, isoToMs } from '../lib/format'
import { hub, type Device, type EnrollmentCode, type StudyClaim, type User } from './api'
import {
  adminError,
  enrollCommand,
  facilitiesLabel,
  MAX_CODE_MINUTES,
  parseFacilities,
  passwordHint,
  ROLES,
  USERNAME_PATTERN,
  validityLabel,
} from './admin'
import { ErrorBox, Modal, Pill, stackCell, stackRow, Table, useLoad } from './ui'

const small = 'btn-secondary min-h-10 px-3 text-sm'
const danger = 'btn-danger min-h-10 px-3 text-sm'

/** A polite live region that is always in the page (so screen readers hear each new message). */
function Announce({ text }: { text: string }) {
  return (
    <p role="status" data-testid="dash-admin-note" className="min-h-5 text-sm text-slate-800">
      {text}
    </p>
  )
}

/** Run an admin action: busy while it runs, announce the result or show the error, then reload. */
function useAction(reload: () => void) {
  const [busy, setBusy] = useState(false)
  const [note, setNote] = useState('')
  const [error, setError] = useState<string | null>(null)
  async function run(fn: () => Promise<string>, onError?: (text: string) => void): Promise<boolean> {
    setBusy(true)
    setError(null)
    try {
      const done = await fn()
      setNote(done)
      return true
    } catch (e) {
      const text = adminError(e)
      if (onError) onError(text)
      else setError(text)
      return false
    } finally {
      setBusy(false)
      reload()
    }
  }
  return { busy, note, setNote, error, run }
}

function PasswordField({ id, value, onChange, label }: { id: string; value: string; onChange: (v: string) => void; label: string }) {
  const hintId = `${id}-hint`
  const hint = passwordHint(value)
  return (
    <div>
      <label className="label" htmlFor={id}>
        {label}
      </label>
      <input
        id={id}
        className="field"
        type="password"
        autoComplete="new-password"
        aria-describedby={hintId}
        value={value}
        onChange={(e) => onChange(e.target.value)}
      />
      <p id={hintId} className={`mt-1 text-sm ${value && !hint.ok ? 'text-amber-900' : 'text-slate-700'}`}>
        {hint.text}
      </p>
    </div>
  )
}

function FacilitiesField({ id, value, onChange, hint }: { id: string; value: string; onChange: (v: string) => void; hint: string }) {
  const list = parseFacilities(value)
  return (
    <div>
      <label className="label" htmlFor={id}>
        Facilities
      </label>
      <input
        id={id}
        className="field"
        autoComplete="off"
        autoCapitalize="none"
        spellCheck={false}
        aria-describedby={`${id}-hint`}
        value={value}
        onChange={(e) => onChange(e.target.value)}
      />
      <p id={`${id}-hint`} className="mt-1 text-sm text-slate-700">
        {hint}
      </p>
      {list.length > 0 && (
        <ul aria-label="Will be saved as" className="mt-1 flex flex-wrap gap-1">
          {list.map((f) => (
            <li key={f} className="rounded-full bg-brand-50 px-2 py-0.5 text-xs font-semibold text-brand-900">
              {f}
            </li>
          ))}
        </ul>
      )}
    </div>
  )
}

function RoleSelect({ id, value, onChange, disabled }: { id: string; value: string; onChange: (v: string) => void; disabled?: boolean }) {
  return (
    <div>
      <label className="label" htmlFor={id}>
        Role
      </label>
      <select id={id} className="field" value={value} disabled={disabled} onChange={(e) => onChange(e.target.value)}>
        {ROLES.map((r) => (
          <option key={r} value={r}>
            {r}
          </option>
        ))}
      </select>
    </div>
  )
}

const FACILITIES_HINT = 'Separate with commas, e.g. east, west. A user sees only the studies of their facilities (an admin sees all).'

function AddUser({ onAdded }: { onAdded: (username: string) => void }) {
  const [username, setUsername] = useState('')
  const [role, setRole] = useState<string>('clinician')
  const [facilities, setFacilities] = useState('')
  const [password, setPassword] = useState('')
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)
  const errorId = useId()
  async function submit(e: FormEvent) {
    e.preventDefault()
    setBusy(true)
    setError(null)
    try {
      const name = username.trim()
      await hub.createUser({ username: name, password, role, facilities: parseFacilities(facilities) })
      setUsername('')
      setFacilities('')
      setPassword('')
      setRole('clinician')
      onAdded(name)
    } catch (err) {
      setError(adminError(err))
    } finally {
      setBusy(false)
    }
  }
  return (
    <form onSubmit={submit} className="card flex flex-col gap-3" aria-labelledby="add-user-h" data-testid="dash-add-user">
      <h3 id="add-user-h" className="text-base font-semibold">
        Add a user
      </h3>
      <div className="grid gap-3 md:grid-cols-2">
        <div>
          <label className="label" htmlFor="nu-name">
            Username
          </label>
          <input
            id="nu-name"
            className="field"
            autoComplete="off"
            autoCapitalize="none"
            spellCheck={false}
            pattern={USERNAME_PATTERN}
            title="Letters, digits and . _ @ - (up to 64)"
            aria-describedby="nu-name-hint"
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
          <p id="nu-name-hint" className="mt-1 text-sm text-slate-700">
            Letters, digits and . _ @ - (up to 64).
          </p>
        </div>
        <RoleSelect id="nu-role" value={role} onChange={setRole} />
        <FacilitiesField id="nu-fac" value={facilities} onChange={setFacilities} hint={FACILITIES_HINT} />
        <PasswordField id="nu-pass" label="Initial password" value={password} onChange={setPassword} />
      </div>
      <ErrorBox id={errorId} error={error} />
      <button className="btn-primary self-start" type="submit" disabled={busy || !username.trim() || !password}>
        {busy ? 'Adding…' : 'Add user'}
      </button>
    </form>
  )
}

type UserDialog = { kind: 'edit' | 'password' | 'delete'; user: User } | null

function EditUser({ user, self, onDone, onClose }: { user: User; self: boolean; onDone: (note: string) => void; onClose: () => void }) {
  const [role, setRole] = useState(user.role)
  const [facilities, setFacilities] = useState(user.facilities.join(', '))
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)
  async function submit(e: FormEvent) {
    e.preventDefault()
    const change: { role?: string; facilities?: string[] } = {}
    if (role !== user.role) change.role = role
    const list = parseFacilities(facilities)
    if (list.join('\n') !== [...user.facilities].sort().join('\n')) change.facilities = list
    if (!change.role && !change.facilities) return onClose()
    setBusy(true)
    setError(null)
    try {
      const u = await hub.updateUser(user.username, change)
      onDone(`${u.username} is now ${u.role} for ${facilitiesLabel(u.facilities, u.role)}. Their sessions end; they sign in again.`)
    } catch (err) {
      setError(adminError(err))
      setBusy(false)
    }
  }
  return (
    <Modal title={`Change ${user.username}`} onClose={onClose} testId="dash-edit-user">
      <form onSubmit={submit} className="flex flex-col gap-3">
        <RoleSelect id="eu-role" value={role} onChange={setRole} disabled={self} />
        {self && <p className="text-sm text-slate-700">You cannot change your own role here: another admin can.</p>}
        <FacilitiesField id="eu-fac" value={facilities} onChange={setFacilities} hint={FACILITIES_HINT} />
        <ErrorBox error={error} />
        <DialogButtons busy={busy} label="Save" onClose={onClose} />
      </form>
    </Modal>
  )
}

function SetPassword({ user, onDone, onClose }: { user: User; onDone: (note: string) => void; onClose: () => void }) {
  const [password, setPassword] = useState('')
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)
  async function submit(e: FormEvent) {
    e.preventDefault()
    setBusy(true)
    setError(null)
    try {
      await hub.updateUser(user.username, { password })
      onDone(`New password set for ${user.username}. Their sessions end, and a lock after failed sign-ins is lifted.`)
    } catch (err) {
      setError(adminError(err))
      setBusy(false)
    }
  }
  return (
    <Modal title={`New password for ${user.username}`} onClose={onClose} testId="dash-set-password">
      <form onSubmit={submit} className="flex flex-col gap-3">
        <PasswordField id="sp-pass" label="New password" value={password} onChange={setPassword} />
        <p className="text-sm text-slate-700">Tell {user.username} the new password in person or by phone, not by e-mail.</p>
        <ErrorBox error={error} />
        <DialogButtons busy={busy} label="Set password" onClose={onClose} disabled={!password} />
      </form>
    </Modal>
  )
}

function DialogButtons({ busy, label, onClose, disabled, danger: red }: { busy: boolean; label: string; onClose: () => void; disabled?: boolean; danger?: boolean }) {
  return (
    <div className="flex flex-wrap justify-end gap-2">
      <button type="button" className="btn-secondary" onClick={onClose}>
        Cancel
      </button>
      <button type="submit" className={red ? 'btn bg-red-700 text-white hover:bg-red-800' : 'btn-primary'} disabled={busy || disabled}>
        {busy ? 'Working…' : label}
      </button>
    </div>
  )
}

/** Ask before an action that cannot be undone. */
function Confirm({
  title,
  children,
  action,
  onConfirm,
  onClose,
  testId,
}: {
  title: string
  children: ReactNode
  action: string
  onConfirm: () => Promise<string | null>
  onClose: () => void
  testId: string
}) {
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)
  async function submit(e: FormEvent) {
    e.preventDefault()
    setBusy(true)
    setError(await onConfirm())
    setBusy(false)
  }
  return (
    <Modal title={title} onClose={onClose} testId={testId}>
      <form onSubmit={submit} className="flex flex-col gap-3">
        <div className="text-sm text-slate-800">{children}</div>
        <ErrorBox error={error} />
        <DialogButtons busy={busy} label={action} onClose={onClose} danger />
      </form>
    </Modal>
  )
}

function userStatus(u: User): ReactNode {
  if (u.disabled) return <Pill state="disabled" />
  const until = isoToMs(u.locked_until)
  if (until !== null && until > Date.now())
    return (
      <Pill
        state="locked"
        label={`new addresses refused until ${new Date(until).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`}
      />
    )
  return <Pill state="active" />
}

export function Users({ me }: { me: string | null }) {
  const [data, error, reload] = useLoad(hub.users, 30_000)
  const act = useAction(reload)
  const [dialog, setDialog] = useState<UserDialog>(null)
  const done = (note: string) => {
    setDialog(null)
    act.setNote(note)
    reload()
  }
  return (
    <section aria-labelledby="us" className="flex flex-col gap-3" data-testid="dash-users">
      <h2 id="us" className="text-lg font-semibold">
        Users {data ? <span className="text-sm font-normal text-slate-700">({data.length})</span> : null}
      </h2>
      <AddUser onAdded={(name) => done(`User ${name} added.`)} />
      <Announce text={act.note} />
      <ErrorBox error={act.error ?? error} />
      <Table testId="dash-users-table" caption="Users" head={['Username', 'Role', 'Facilities', '2FA', 'Status', '']} empty="No users." stack>
        {(data ?? []).map((u) => {
          const self = u.username === me
          return (
            <tr key={u.username} className={stackRow} data-testid="dash-user" data-username={u.username} data-disabled={u.disabled}>
              <td data-label="Username" className={`${stackCell} font-medium`}>
                {u.username}
                {self && <span className="font-normal text-slate-700"> (you)</span>}
              </td>
              <td data-label="Role" className={stackCell}>
                {u.role}
              </td>
              <td data-label="Facilities" className={stackCell}>
                {facilitiesLabel(u.facilities, u.role)}
              </td>
              <td data-label="2FA" className={stackCell}>
                {u.totp_enabled ? 'on' : 'off'}
              </td>
              <td data-label="Status" className={stackCell}>
                {userStatus(u)}
              </td>
              <td className="px-3 py-2">
                <div className="flex flex-wrap gap-2">
                  <button className={small} aria-label={`Change role or facilities of ${u.username}`} onClick={() => setDialog({ kind: 'edit', user: u })}>
                    Change
                  </button>
                  {!self && (
                    <button
                      className={small}
                      aria-label={`${u.disabled ? 'Enable' : 'Disable'} ${u.username}`}
                      disabled={act.busy}
                      onClick={() =>
                        void act.run(async () => {
                          await hub.updateUser(u.username, { disabled: !u.disabled })
                          return u.disabled ? `${u.username} enabled: they can sign in again.` : `${u.username} disabled: they can no longer sign in.`
                        })
                      }
                    >
                      {u.disabled ? 'Enable' : 'Disable'}
                    </button>
                  )}
                  <button className={small} aria-label={`Set a new password for ${u.username}`} onClick={() => setDialog({ kind: 'password', user: u })}>
                    Password
                  </button>
                  {!self && (
                    <button className={danger} aria-label={`Delete ${u.username}`} onClick={() => setDialog({ kind: 'delete', user: u })}>
                      Delete
                    </button>
                  )}
                </div>
              </td>
            </tr>
          )
        })}
      </Table>
      {dialog?.kind === 'edit' && <EditUser user={dialog.user} self={dialog.user.username === me} onDone={done} onClose={() => setDialog(null)} />}
      {dialog?.kind === 'password' && <SetPassword user={dialog.user} onDone={done} onClose={() => setDialog(null)} />}
      {dialog?.kind === 'delete' && (
        <Confirm
          testId="dash-confirm-delete"
          title={`Delete ${dialog.user.username}?`}
          action="Delete user"
          onClose={() => setDialog(null)}
          onConfirm={async () => {
            const name = dialog.user.username
            try {
              await hub.deleteUser(name)
              done(`User ${name} deleted.`)
              return null
            } catch (e) {
              return adminError(e)
            }
          }}
        >
          <p>
            <strong>{dialog.user.username}</strong> ({dialog.user.role}) will no longer be able to sign in, and their sessions end. This cannot be undone;
            to keep the account for later, disable it instead.
          </p>
        </Confirm>
      )}
    </section>
  )
}

async function copyText(text: string, fallback: HTMLElement | null): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text)
    return true
  } catch {
    // No clipboard API (plain http on a LAN address): select the text and copy the old way.
    if (!fallback) return false
    const range = document.createRange()
    range.selectNodeContents(fallback)
    const sel = getSelection()
    sel?.removeAllRanges()
    sel?.addRange(range)
    try {
      return document.execCommand('copy')
    } catch {
      return false
    }
  }
}

function IssuedCode({ issued, name, onDone }: { issued: EnrollmentCode; name: string; onDone: () => void }) {
  const heading = useRef<HTMLHeadingElement>(null)
  const commandRef = useRef<HTMLElement>(null)
  const [copied, setCopied] = useState('')
  useEffect(() => heading.current?.focus(), [])
  const command = enrollCommand(location.origin, issued.code, name)
  const expires = isoToMs(issued.expires_at)
  return (
    <div className="card flex flex-col gap-3 border-amber-300" data-testid="dash-enroll-result">
      <h3 ref={heading} tabIndex={-1} className="text-base font-semibold outline-none focus-visible:ring-2 focus-visible:ring-brand-700">
        Enrollment code for {issued.facility}
      </h3>
      <p className="rounded-lg border border-amber-300 bg-amber-50 px-3 py-2 text-sm text-amber-950">
        <strong>Shown only now.</strong> It works once
        {expires !== null ? `, until ${new Date(expires).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' })}` : ''}. Anyone who has it can
        enroll an agent for {issued.facility}: pass it on only to who installs the agent.
      </p>
      <div>
        <p className="label">Code</p>
        <code data-testid="dash-enroll-code" className="block rounded-lg bg-slate-100 px-3 py-2 font-mono text-base break-all text-slate-900 select-all">
          {issued.code}
        </code>
      </div>
      <div>
        <p className="label">Run this on the agent’s machine at {issued.facility}</p>
        <code
          ref={commandRef}
          data-testid="dash-enroll-command"
          className="block rounded-lg bg-slate-900 px-3 py-2 font-mono text-sm break-all text-white select-all"
        >
          {command}
        </code>
      </div>
      <div className="flex flex-wrap items-center gap-3">
        <button
          className="btn-primary"
          onClick={() =>
            void copyText(command, commandRef.current).then((ok) =>
              setCopied(ok ? 'Command copied.' : 'Copying did not work here: select the command and copy it by hand.'),
            )
          }
        >
          Copy command
        </button>
        <button className="btn-secondary" onClick={onDone}>
          Done
        </button>
        <span role="status" className="text-sm text-slate-800">
          {copied}
        </span>
      </div>
    </div>
  )
}

function EnrollAgent({ facilities, onIssued }: { facilities: string[]; onIssued: (note: string) => void }) {
  const [facility, setFacility] = useState('')
  const [name, setName] = useState('')
  const [minutes, setMinutes] = useState('60')
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)
  const [issued, setIssued] = useState<{ code: EnrollmentCode; name: string } | null>(null)
  const ttl = Number(minutes)
  const ttlOk = Number.isFinite(ttl) && ttl > 0 && ttl <= MAX_CODE_MINUTES
  async function submit(e: FormEvent) {
    e.preventDefault()
    setBusy(true)
    setError(null)
    try {
      const code = await hub.enrollmentCode(facility.trim(), ttl)
      setIssued({ code, name: name.trim() })
      onIssued(`Enrollment code issued for ${code.facility}, valid ${validityLabel(ttl)}. It is shown only once.`)
    } catch (err) {
      setError(adminError(err))
    } finally {
      setBusy(false)
    }
  }
  return (
    <div className="flex flex-col gap-3">
      <form onSubmit={submit} className="card flex flex-col gap-3" aria-labelledby="enroll-agent-h" data-testid="dash-enroll-agent">
        <h3 id="enroll-agent-h" className="text-base font-semibold">
          Enroll an agent
        </h3>
        <p className="text-sm text-slate-800">
          Issue a one-time code for a facility; whoever installs the agent there runs the command shown next, and the agent appears below.
        </p>
        <div className="grid gap-3 md:grid-cols-3">
          <div>
            <label className="label" htmlFor="ea-fac">
              Facility
            </label>
            <input
              id="ea-fac"
              className="field"
              list="ea-fac-list"
              autoComplete="off"
              autoCapitalize="none"
              spellCheck={false}
              maxLength={64}
              value={facility}
              onChange={(e) => setFacility(e.target.value)}
            />
            <datalist id="ea-fac-list">
              {facilities.map((f) => (
                <option key={f} value={f} />
              ))}
            </datalist>
          </div>
          <div>
            <label className="label" htmlFor="ea-name">
              Agent name
            </label>
            <input
              id="ea-name"
              className="field"
              autoComplete="off"
              autoCapitalize="none"
              spellCheck={false}
              maxLength={128}
              aria-describedby="ea-name-hint"
              value={name}
              onChange={(e) => setName(e.target.value)}
            />
            <p id="ea-name-hint" className="mt-1 text-sm text-slate-700">
              For the command, e.g. ct-room-1. Empty: the machine’s host name.
            </p>
          </div>
          <div>
            <label className="label" htmlFor="ea-ttl">
              Code valid for (minutes)
            </label>
            <input
              id="ea-ttl"
              className="field"
              type="number"
              inputMode="numeric"
              min={1}
              max={MAX_CODE_MINUTES}
              step={1}
              aria-describedby="ea-ttl-hint"
              value={minutes}
              onChange={(e) => setMinutes(e.target.value)}
            />
            <p id="ea-ttl-hint" className="mt-1 text-sm text-slate-700">
              {ttlOk ? `Valid ${validityLabel(ttl)}, for one enrollment.` : `From 1 minute to 30 days (${MAX_CODE_MINUTES} minutes).`}
            </p>
          </div>
        </div>
        <ErrorBox error={error} />
        <button className="btn-primary self-start" type="submit" disabled={busy || !facility.trim() || !ttlOk}>
          {busy ? 'Issuing…' : 'Issue enrollment code'}
        </button>
      </form>
      {issued && <IssuedCode key={issued.code.code} issued={issued.code} name={issued.name} onDone={() => setIssued(null)} />}
    </div>
  )
}

export function Agents() {
  const [data, error, reload] = useLoad(hub.devices, 15_000)
  const act = useAction(reload)
  const [revoking, setRevoking] = useState<Device | null>(null)
  const devices = data ?? []
  const facilities = [...new Set(devices.map((d) => d.facility))].sort()
  return (
    <section aria-labelledby="ag" className="flex flex-col gap-3" data-testid="dash-agents">
      <div className="flex flex-wrap items-center justify-between gap-3">
        <h2 id="ag" className="text-lg font-semibold">
          Agents {data ? <span className="text-sm font-normal text-slate-700">({devices.length})</span> : null}
        </h2>
        <button className={small} onClick={reload}>
          Refresh list
        </button>
      </div>
      <EnrollAgent facilities={facilities} onIssued={act.setNote} />
      <Announce text={act.note} />
      <ErrorBox error={act.error ?? error} />
      <Table
        testId="dash-agents-table"
        caption="Enrolled agents"
        head={['Name', 'Facility', 'Last contact', 'Enrolled', 'Status', '']}
        empty="No agents enrolled."
        stack
      >
        {devices.map((d) => {
          const seen = isoToMs(d.last_seen_at)
          const stale = seen === null || Date.now() - seen > 15 * 60_000
          return (
            <tr key={d.id} className={stackRow} data-testid="dash-agent" data-name={d.name} data-revoked={d.revoked_at !== null}>
              <td data-label="Name" className={`${stackCell} font-medium`}>
                {d.name}
              </td>
              <td data-label="Facility" className={stackCell}>
                {d.facility}
              </td>
              <td data-label="Last contact" className={`${stackCell} ${stale && !d.revoked_at ? 'font-semibold text-amber-900' : ''}`}>
                {seen === null ? 'never' : formatAgo(seen)}
              </td>
              <td data-label="Enrolled" className={stackCell}>
                {formatAgo(isoToMs(d.created_at))}
              </td>
              <td data-label="Status" className={stackCell}>
                {d.revoked_at ? (
                  <Pill state="revoked" label={`revoked ${formatAgo(isoToMs(d.revoked_at))}`} />
                ) : stale ? (
                  <Pill state="held" label="not heard from" />
                ) : (
                  <Pill state="done" label="in contact" />
                )}
              </td>
              <td className="px-3 py-2">
                {!d.revoked_at && (
                  <button className={danger} aria-label={`Revoke agent ${d.name}`} onClick={() => setRevoking(d)}>
                    Revoke
                  </button>
                )}
              </td>
            </tr>
          )
        })}
      </Table>
      {revoking && (
        <Confirm
          testId="dash-confirm-revoke"
          title={`Revoke agent ${revoking.name}?`}
          action="Revoke agent"
          onClose={() => setRevoking(null)}
          onConfirm={async () => {
            const d = revoking
            let failure = ''
            const ok = await act.run(
              async () => {
                await hub.revokeDevice(d.id)
                return `Agent ${d.name} revoked: the hub refuses its credential from now on.`
              },
              (text) => (failure = text),
            )
            if (ok) {
              setRevoking(null)
              return null
            }
            return failure
          }}
        >
          <p>
            <strong>{revoking.name}</strong> (facility {revoking.facility}) stops working at once: the hub refuses its credential, so it can no longer
            send studies or fetch who may sign in there. To use that machine again, enroll it with a new code.
          </p>
        </Confirm>
      )}
    </section>
  )
}

/** Refuse a held study, with words the facility's agent shows next to its files. */
function RefuseClaim({ claim, onDone, onClose }: { claim: StudyClaim; onDone: (note: string) => void; onClose: () => void }) {
  const id = useId()
  const [reason, setReason] = useState('')
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)
  async function submit(e: FormEvent) {
    e.preventDefault()
    setBusy(true)
    setError(null)
    try {
      await hub.decideClaim(claim.study_instance_uid, claim.facility, 'refuse', reason.trim())
      onDone(`Refused for ${claim.facility}: its agent puts the files in quarantine with your words.`)
    } catch (err) {
      setError(adminError(err))
    }
    setBusy(false)
  }
  return (
    <Modal title={`Refuse this study for ${claim.facility}?`} onClose={onClose} testId="dash-refuse-claim">
      <form onSubmit={submit} className="flex flex-col gap-3">
        <p className="text-sm text-slate-800">
          The agent of <strong>{claim.facility}</strong> stops sending it and keeps each file in its quarantine with the words below. Say what to
          do instead (for example: a UID clash, export the study again from the modality).
        </p>
        <div>
          <label className="label" htmlFor={id}>
            Reason shown at the facility
          </label>
          <textarea id={id} className="field min-h-20" maxLength={500} value={reason} onChange={(e) => setReason(e.target.value)} required />
        </div>
        <ErrorBox error={error} />
        <DialogButtons busy={busy} label="Refuse study" onClose={onClose} danger disabled={!reason.trim()} />
      </form>
    </Modal>
  )
}

/** Studies a second facility sent although they belong to another one (a patient transfer, or two
 * studies sharing a UID): the hub holds them until an admin decides. Shown only when there are any. */
export function HeldStudies() {
  const [data, error, reload] = useLoad(hub.studyClaims, 30_000)
  const act = useAction(reload)
  const [refusing, setRefusing] = useState<StudyClaim | null>(null)
  const claims = data ?? []
  const held = claims.filter((c) => c.state === 'held').length
  if (!claims.length && !error) return null
  return (
    <section aria-labelledby="hs" className="mb-6 flex flex-col gap-3" data-testid="dash-claims">
      <h2 id="hs" className="text-lg font-semibold">
        Studies sent by a second facility{' '}
        <span className="text-sm font-normal text-slate-700">({held} waiting for a decision)</span>
      </h2>
      <p className="text-sm text-slate-700">
        Another facility&apos;s agent sent a study that belongs to a facility already: a patient transferred with their images, or two studies
        sharing one UID. Accept it to let that facility send it and follow it too; refuse it to stop it there, with your reason.
      </p>
      <Announce text={act.note} />
      <ErrorBox error={act.error ?? error} />
      <Table
        testId="dash-claims-table"
        caption="Studies sent by a second facility"
        head={['Study UID', 'Sent by', 'Belongs to', 'Last try', 'Status', '']}
        empty="None."
        stack
      >
        {claims.map((c) => (
          <tr key={`${c.study_instance_uid}/${c.facility}`} className={stackRow} data-testid="dash-claim" data-state={c.state}>
            <td data-label="Study UID" className={`${stackCell} break-all font-mono text-xs`}>
              {c.study_instance_uid}
            </td>
            <td data-label="Sent by" className={stackCell}>
              {c.facility} <span className="text-xs text-slate-700">({c.device || 'device'}, {c.attempts} {c.attempts === 1 ? 'try' : 'tries'})</span>
            </td>
            <td data-label="Belongs to" className={stackCell}>
              {c.owner ?? '–'} <span className="text-xs text-slate-700">({c.owner_instances} {c.owner_instances === 1 ? 'image' : 'images'} at the hub)</span>
            </td>
            <td data-label="Last try" className={stackCell}>
              {formatAgo(isoToMs(c.last_seen_at))}
            </td>
            <td data-label="Status" className={stackCell}>
              {c.state === 'held' ? (
                <Pill state="held" label="waiting for you" />
              ) : c.state === 'accepted' ? (
                <Pill state="done" label={`accepted by ${c.decided_by ?? 'an admin'}`} />
              ) : (
                <Pill state="revoked" label={`refused by ${c.decided_by ?? 'an admin'}`} />
              )}
            </td>
            <td className="px-3 py-2">
              {c.state === 'held' && (
                <div className="flex flex-wrap gap-2">
                  <button
                    className={small}
                    aria-label={`Accept study for ${c.facility}`}
                    onClick={() =>
                      void act.run(async () => {
                        await hub.decideClaim(c.study_instance_uid, c.facility, 'accept')
                        return `Accepted for ${c.facility}: its agent sends the study at its next try.`
                      })
                    }
                  >
                    Accept
                  </button>
                  <button className={danger} aria-label={`Refuse study for ${c.facility}`} onClick={() => setRefusing(c)}>
                    Refuse
                  </button>
                </div>
              )}
            </td>
          </tr>
        ))}
      </Table>
      {refusing && (
        <RefuseClaim
          claim={refusing}
          onClose={() => setRefusing(null)}
          onDone={(note) => {
            setRefusing(null)
            act.setNote(note)
            reload()
          }}
        />
      )}
    </section>
  )
}
