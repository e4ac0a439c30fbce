import { useEffect, useId, useMemo, useRef, useState, type FormEvent, type ReactNode } from 'react'
import { encode } from 'uqr'
import { hub, HubError } from './api'
import { digitsOnly, groupSecret, parseOtpauth, qrPath, recoveryCodesFileName, recoveryCodesText, type Otpauth } from './totp'

type Step = { at: 'start' } | { at: 'already' } | { at: 'scan'; uri: string; otp: Otpauth } | { at: 'done'; codes: string[]; account: string }

function errorText(e: unknown): string {
  if (e instanceof HubError) {
    if (e.code === 'invalid_totp_code')
      return 'That code does not match. Type the newest 6-digit code your app shows (and check that the phone’s clock is right).'
    if (e.code === 'totp_not_pending') return 'This setup was restarted or finished elsewhere. Start again.'
    if (e.status === 403) return 'Your session may not do this. Sign out and sign in again.'
    return e.message
  }
  return e instanceof Error ? e.message : String(e)
}

/** The QR code of an otpauth:// URI, drawn as one SVG path (crisp at any size). */
function QrCode({ uri }: { uri: string }) {
  const titleId = useId()
  const { d, size } = useMemo(() => {
    const qr = encode(uri, { ecc: 'M', border: 4 })
    return { d: qrPath(qr.data), size: qr.size }
  }, [uri])
  return (
    <svg
      role="img"
      aria-labelledby={titleId}
      data-testid="totp-qr"
      viewBox={`0 0 ${size} ${size}`}
      shapeRendering="crispEdges"
      className="h-52 w-52 shrink-0 rounded-lg border border-slate-300 bg-white"
    >
      <title id={titleId}>QR code for your authenticator app. The key written next to it sets up the same account.</title>
      <rect width={size} height={size} fill="#fff" />
      <path d={d} fill="#000" />
    </svg>
  )
}

function download(name: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/plain;charset=utf-8' }))
  const a = document.createElement('a')
  a.href = url
  a.download = name
  document.body.append(a)
  a.click()
  a.remove()
  setTimeout(() => URL.revokeObjectURL(url), 10_000)
}

function StepHeading({ children, focus, level }: { children: ReactNode; focus: boolean; level: 3 | 4 }) {
  const ref = useRef<HTMLHeadingElement>(null)
  useEffect(() => {
    if (focus) ref.current?.focus()
  }, [focus])
  const H = level === 4 ? 'h4' : 'h3'
  return (
    <H ref={ref} tabIndex={-1} className="text-base font-semibold outline-none focus-visible:ring-2 focus-visible:ring-brand-700">
      {children}
    </H>
  )
}

/**
 * Two-factor enrollment: start (ask the hub for a secret) → scan the QR or type the key, confirm a
 * code → the recovery codes, shown once. `enrollOnly`: the session can do nothing else, so the last
 * step asks the user to sign in again.
 */
export function TotpSetup({
  account,
  enrollOnly,
  onSignInAgain,
  level = 3,
}: {
  account: string | null
  enrollOnly: boolean
  onSignInAgain?: () => void
  /** Heading level of each step's heading. */
  level?: 3 | 4
}) {
  const [step, setStep] = useState<Step>({ at: 'start' })
  const [moved, setMoved] = useState(false) // focus a step's heading only after the user moved on
  const [code, setCode] = useState('')
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)
  const codeId = useId()
  const errorId = useId()

  function go(s: Step) {
    setStep(s)
    setMoved(true)
    setError(null)
    setCode('')
  }

  async function start() {
    setBusy(true)
    setError(null)
    try {
      const { provisioning_uri } = await hub.totpEnroll()
      const otp = parseOtpauth(provisioning_uri)
      if (!otp) throw new Error('The hub sent a setup link this page cannot read.')
      go({ at: 'scan', uri: provisioning_uri, otp })
    } catch (e) {
      if (e instanceof HubError && e.code === 'totp_already_enabled') go({ at: 'already' })
      else setError(errorText(e))
    } finally {
      setBusy(false)
    }
  }

  async function confirm(e: FormEvent) {
    e.preventDefault()
    if (step.at !== 'scan') return
    setBusy(true)
    setError(null)
    try {
      const { recovery_codes } = await hub.totpConfirm(code)
      go({ at: 'done', codes: recovery_codes, account: step.otp.account || account || 'account' })
    } catch (err) {
      if (err instanceof HubError && err.code === 'totp_not_pending') {
        go({ at: 'start' })
        setError(errorText(err))
      } else {
        setError(errorText(err))
        setCode('')
      }
    } finally {
      setBusy(false)
    }
  }

  const errorBox = error ? (
    <div id={errorId} role="alert" className="rounded-lg border border-red-300 bg-red-50 px-3 py-2 text-sm text-red-900">
      {error}
    </div>
  ) : null

  if (step.at === 'start')
    return (
      <div key="totp-start" className="flex flex-col items-start gap-3">
        <p className="text-sm text-slate-800">
          After a password, signing in will ask for a 6-digit code from an authenticator app on your phone (for example Google Authenticator, Microsoft
          Authenticator or FreeOTP).
        </p>
        {errorBox}
        <button className="btn-primary" onClick={() => void start()} disabled={busy}>
          {busy ? 'Starting…' : 'Set up two-factor sign-in'}
        </button>
      </div>
    )

  if (step.at === 'already')
    return (
      <div className="flex flex-col gap-2" key="totp-already" data-testid="totp-already">
        <StepHeading focus={moved} level={level}>Two-factor sign-in is already on</StepHeading>
        <p role="status" className="text-sm text-slate-800">
          Your account already asks for a code from your app when you sign in. Lost your phone? Sign in with one of your recovery codes, or ask an
          administrator to reset it.
        </p>
      </div>
    )

  if (step.at === 'scan')
    return (
      <div className="flex flex-col gap-4" key="totp-scan" data-testid="totp-scan">
        <StepHeading focus={moved} level={level}>Scan the code with your authenticator app</StepHeading>
        <div className="flex flex-col gap-4 sm:flex-row sm:items-start">
          <QrCode uri={step.uri} />
          <div className="flex min-w-0 flex-col gap-2 text-sm">
            <p>Can’t scan? Add an account in the app by hand, with this key (time-based, 6 digits):</p>
            <p>
              <code data-testid="totp-secret" className="block rounded-lg bg-slate-100 px-3 py-2 font-mono text-base tracking-wider break-words text-slate-900 select-all">
                {groupSecret(step.otp.secret)}
              </code>
            </p>
            <p className="text-slate-700">
              Account: {step.otp.account}
              {step.otp.issuer ? ` (${step.otp.issuer})` : ''}
            </p>
          </div>
        </div>
        <form onSubmit={confirm} className="flex flex-col gap-3 sm:max-w-xs">
          <div>
            <label className="label" htmlFor={codeId}>
              Code from your app
            </label>
            <input
              id={codeId}
              className="field tracking-widest"
              inputMode="numeric"
              autoComplete="one-time-code"
              pattern="[0-9]{6}"
              maxLength={6}
              aria-describedby={error ? errorId : undefined}
              aria-invalid={error ? true : undefined}
              value={code}
              onChange={(e) => setCode(digitsOnly(e.target.value))}
            />
          </div>
          {errorBox}
          <button className="btn-primary" type="submit" disabled={busy || code.length !== 6}>
            {busy ? 'Checking…' : 'Confirm'}
          </button>
        </form>
      </div>
    )

  return (
    <div className="flex flex-col gap-3" key="totp-done" data-testid="totp-done">
      <StepHeading focus={moved} level={level}>Two-factor sign-in is on: save your recovery codes</StepHeading>
      <p className="rounded-lg border border-amber-300 bg-amber-50 px-3 py-2 text-sm text-amber-950">
        <strong>These codes are shown once.</strong> Save or print them now and keep them away from your phone. If you lose the phone, each code signs
        you in once instead of a 6-digit code.
      </p>
      <ol data-testid="recovery-codes" aria-label="Recovery codes" className="grid grid-cols-1 gap-1 font-mono text-base min-[400px]:grid-cols-2 sm:max-w-md">
        {step.codes.map((c) => (
          <li key={c} className="rounded bg-slate-100 px-3 py-1 select-all">
            {c}
          </li>
        ))}
      </ol>
      <div className="flex flex-wrap gap-3">
        <button className="btn-secondary" onClick={() => download(recoveryCodesFileName(step.account), recoveryCodesText(step.account, step.codes))}>
          Download
        </button>
        {enrollOnly && (
          <button className="btn-primary" onClick={onSignInAgain}>
            Sign in again
          </button>
        )}
      </div>
      <p className="text-sm text-slate-800">
        {enrollOnly
          ? 'To continue, sign in again with your password and a code from your app.'
          : 'From now on, signing in asks for a 6-digit code from your app.'}
      </p>
    </div>
  )
}

/** The only screen of a session whose role needs a second factor it has not set up. */
export function EnrollOnly({ account, onSignInAgain }: { account: string | null; onSignInAgain: () => void }) {
  return (
    <section aria-labelledby="enroll-h" className="card mx-auto mt-4 flex w-full max-w-2xl flex-col gap-4" data-testid="dash-enroll">
      <h2 id="enroll-h" className="text-xl font-semibold">
        Set up two-factor sign-in
      </h2>
      <p className="font-medium">Your role needs a second factor. Set it up to continue.</p>
      <TotpSetup account={account} enrollOnly onSignInAgain={onSignInAgain} />
    </section>
  )
}

/** The "Security" tab, for every signed-in user. */
export function Security({ account }: { account: string | null }) {
  return (
    <section aria-labelledby="sec-h" className="flex flex-col gap-4" data-testid="dash-security">
      <h2 id="sec-h" className="text-lg font-semibold">
        Security
      </h2>
      <div className="card flex max-w-3xl flex-col gap-3">
        <h3 className="text-base font-semibold">Two-factor sign-in</h3>
        <TotpSetup account={account} enrollOnly={false} level={4} />
      </div>
    </section>
  )
}
