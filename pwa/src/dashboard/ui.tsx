/** Small pieces the dashboard's screens share. */
import { useCallback, useEffect, useId, useRef, useState, type ReactNode } from 'react'
import { HubError } from './api'

export function message(e: unknown): string {
  if (e instanceof HubError) {
    if (e.status === 403) return 'Your role may not see this.'
    // The hub's own words say why and for how long (this address, or addresses not used before).
    if (e.code === 'login_locked') return e.message || 'Too many failed sign-ins from here. Try again later.'
    return e.message
  }
  return e instanceof Error ? e.message : String(e)
}

export function ErrorBox({ error, id }: { error: string | null; id?: string }) {
  if (!error) return null
  return (
    <div id={id} role="alert" className="rounded-lg border border-red-300 bg-red-50 px-3 py-2 text-sm text-red-900">
      {error}
    </div>
  )
}

/** Load data, refresh every `ms`; returns [data, error, reload]. */
export function useLoad<T>(fn: () => Promise<T>, ms = 10_000): [T | null, string | null, () => void] {
  const [data, setData] = useState<T | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [n, setN] = useState(0)
  const reload = useCallback(() => setN((x) => x + 1), [])
  useEffect(() => {
    let alive = true
    const run = () =>
      fn().then(
        (d) => {
          if (alive) {
            setData(d)
            setError(null)
          }
        },
        (e) => alive && setError(message(e)),
      )
    void run()
    const t = setInterval(() => document.visibilityState === 'visible' && void run(), ms)
    return () => {
      alive = false
      clearInterval(t)
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [n, ms, fn])
  return [data, error, reload]
}

/**
 * A data table. `stack`: on narrow screens every row becomes a card and every cell shows its
 * column's name (cells need `data-label`); explicit roles keep the table semantics there.
 */
export function Table({
  testId,
  caption,
  head,
  children,
  empty,
  stack = false,
}: {
  testId: string
  caption: string
  head: string[]
  children: ReactNode[]
  empty: string
  stack?: boolean
}) {
  const r = (role: string) => (stack ? role : undefined)
  return (
    <div className={`rounded-xl border border-slate-200 bg-white ${stack ? 'sm:overflow-x-auto' : 'overflow-x-auto'}`}>
      <table
        role={r('table')}
        data-testid={testId}
        className={`w-full border-collapse text-left text-sm ${stack ? 'max-sm:block sm:min-w-[40rem]' : 'min-w-[40rem]'}`}
      >
        <caption className="sr-only">{caption}</caption>
        <thead role={r('rowgroup')} className={`bg-slate-100 text-slate-800 ${stack ? 'max-sm:sr-only' : ''}`}>
          <tr role={r('row')}>
            {head.map((h, i) => (
              <th key={h || `col-${i}`} role={r('columnheader')} scope="col" className="px-3 py-2 font-semibold">
                {h || <span className="sr-only">Actions</span>}
              </th>
            ))}
          </tr>
        </thead>
        <tbody role={r('rowgroup')} className={stack ? 'max-sm:block' : undefined}>
          {children.length ? (
            children
          ) : (
            <tr role={r('row')} className={stack ? 'max-sm:block' : undefined}>
              <td role={r('cell')} colSpan={head.length} className={`px-3 py-6 text-center text-slate-700 ${stack ? 'max-sm:block' : ''}`}>
                {empty}
              </td>
            </tr>
          )}
        </tbody>
      </table>
    </div>
  )
}

/** Row and cell classes of a stacked table (see `Table`'s `stack`). */
export const stackRow = 'border-t border-slate-200 align-top max-sm:block max-sm:py-2 first:max-sm:border-t-0'
export const stackCell =
  'px-3 py-2 max-sm:flex max-sm:gap-2 max-sm:py-1 max-sm:before:w-28 max-sm:before:shrink-0 max-sm:before:font-semibold max-sm:before:text-slate-700 max-sm:before:content-[attr(data-label)]'

export function Pill({ state, label }: { state: string; label?: string }) {
  const tone: Record<string, string> = {
    delivered: 'bg-emerald-100 text-emerald-900',
    done: 'bg-emerald-100 text-emerald-900',
    active: 'bg-emerald-100 text-emerald-900',
    dead: 'bg-red-100 text-red-900',
    failed: 'bg-red-100 text-red-900',
    revoked: 'bg-red-100 text-red-900',
    disabled: 'bg-red-100 text-red-900',
    held: 'bg-amber-100 text-amber-950',
    locked: 'bg-amber-100 text-amber-950',
    pending: 'bg-slate-200 text-slate-900',
    running: 'bg-sky-100 text-sky-950',
    final: 'bg-emerald-100 text-emerald-900',
    preliminary: 'bg-amber-100 text-amber-950',
    amended: 'bg-sky-100 text-sky-950',
  }
  return <span className={`inline-block rounded-full px-2 py-0.5 text-xs font-semibold ${tone[state] ?? 'bg-slate-200 text-slate-900'}`}>{label ?? state}</span>
}

/**
 * A modal dialog on the native <dialog> (the page behind is inert, Escape closes it, focus
 * goes back to what opened it). Mounted = open; `onClose` when dismissed.
 */
export function Modal({ title, onClose, children, testId }: { title: string; onClose: () => void; children: ReactNode; testId?: string }) {
  const ref = useRef<HTMLDialogElement>(null)
  const titleId = useId()
  const opener = useRef<Element | null>(null)
  useEffect(() => {
    const d = ref.current
    opener.current = document.activeElement
    if (d && !d.open) d.showModal()
    return () => {
      if (d?.open) d.close()
      const el = opener.current
      if (el instanceof HTMLElement && el.isConnected) el.focus()
    }
  }, [])
  return (
    <dialog
      ref={ref}
      aria-labelledby={titleId}
      data-testid={testId}
      onCancel={(e) => {
        e.preventDefault()
        onClose()
      }}
      className="m-auto w-[min(32rem,calc(100vw-2rem))] rounded-2xl border border-slate-200 bg-white p-0 text-slate-900 shadow-xl backdrop:bg-slate-900/50"
    >
      <div className="flex flex-col gap-4 p-5">
        <h2 id={titleId} className="text-lg font-semibold">
          {title}
        </h2>
        {children}
      </div>
    </dialog>
  )
}
