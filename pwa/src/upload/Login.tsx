import { useState, type FormEvent } from 'react'
import { agent, ApiError, plainMessage } from './api'
import { hubLogin } from './hubAuth'
import { getTarget } from './target'
import { queue } from './engine'
import { session } from './session'
import { Alert } from './ui'

export function Login() {
  const [username, setUsername] = useState('')
  const [password, setPassword] = useState('')
  const [totp, setTotp] = useState('')
  const [needTotp, setNeedTotp] = useState(() => getTarget().requireTotp)
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)

  async function submit(e: FormEvent) {
    e.preventDefault()
    setBusy(true)
    setError(null)
    try {
      const login = getTarget().target === 'hub' ? hubLogin : agent.login
      const s = await login(username.trim(), password, needTotp ? totp.trim() : undefined)
      session.signedIn(s)
      queue.setAuthenticated()
    } catch (err) {
      if (err instanceof ApiError && err.code === 'totp_required') {
        if (needTotp) setError(plainMessage(err))
        setNeedTotp(true)
      } else {
        setError(plainMessage(err))
      }
    } finally {
      setBusy(false)
    }
  }

  return (
    <form onSubmit={submit} className="card mx-auto mt-4 flex w-full max-w-sm flex-col gap-4" aria-labelledby="login-title" noValidate>
      <h2 id="login-title" className="text-xl font-semibold">
        Sign in
      </h2>
      <div>
        <label htmlFor="username" className="label">
          Username
        </label>
        <input
          id="username"
          name="username"
          className="field"
          autoComplete="username"
          autoCapitalize="none"
          spellCheck={false}
          required
          value={username}
          onChange={(e) => setUsername(e.target.value)}
        />
      </div>
      <div>
        <label htmlFor="password" className="label">
          Password
        </label>
        <input
          id="password"
          name="password"
          type="password"
          className="field"
          autoComplete="current-password"
          required
          value={password}
          onChange={(e) => setPassword(e.target.value)}
        />
      </div>
      {needTotp && (
        <div>
          <label htmlFor="totp" className="label">
            6-digit code
          </label>
          <input
            id="totp"
            name="totp"
            className="field tracking-widest"
            inputMode="numeric"
            autoComplete="one-time-code"
            pattern="[0-9]{6}"
            maxLength={6}
            autoFocus
            aria-describedby="totp-help"
            value={totp}
            onChange={(e) => setTotp(e.target.value.replace(/\D/g, ''))}
          />
          <p id="totp-help" className="mt-1 text-sm text-slate-700">
            From the authenticator app on your phone.
          </p>
        </div>
      )}
      {error && <Alert testId="login-error">{error}</Alert>}
      <button type="submit" className="btn-primary w-full" disabled={busy || !username || !password || (needTotp && totp.length !== 6)}>
        {busy ? 'Signing in…' : 'Sign in'}
      </button>
    </form>
  )
}
