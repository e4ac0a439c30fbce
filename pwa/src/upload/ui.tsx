import type { ReactNode } from 'react'
import { formatBytes } from '../lib/format'
import { STAGE_ORDER, STEPS, type ShownStage } from './status'

export function ProgressBar({ value, label, testId }: { value: number; label: string; testId?: string }) {
  const v = Math.max(0, Math.min(100, Math.round(value)))
  return (
    <div
      role="progressbar"
      aria-label={label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={v}
      data-testid={testId}
      className="h-3 w-full overflow-hidden rounded-full bg-slate-200"
    >
      <div className="h-full rounded-full bg-brand-700 transition-[width] duration-300" style={{ width: `${v}%` }} />
    </div>
  )
}

export function StageSteps({ stage }: { stage: ShownStage }) {
  const cur = STAGE_ORDER.indexOf(stage === 'sending' ? 'agent' : stage)
  return (
    <ol className="flex items-center gap-1 text-xs" aria-label="Where the study is">
      {STEPS.map((s, i) => {
        const idx = STAGE_ORDER.indexOf(s.stage)
        const done = idx < cur || (stage === 'pacs' && s.stage === 'pacs')
        const here = idx === cur
        return (
          <li key={s.stage} className="flex flex-1 flex-col items-center gap-1 text-center" aria-current={here ? 'step' : undefined}>
            <span
              aria-hidden="true"
              className={`h-1.5 w-full rounded-full ${done || here ? 'bg-brand-700' : 'bg-slate-300'} ${here && stage !== 'pacs' ? 'animate-pulse' : ''}`}
            />
            <span className={here ? 'font-semibold text-slate-900' : done ? 'text-slate-700' : 'text-slate-600'}>
              {s.label}
              {i === STEPS.length - 1 && stage === 'pacs' ? ' ✓' : ''}
            </span>
          </li>
        )
      })}
    </ol>
  )
}

export function Alert({ children, tone = 'error', testId }: { children: ReactNode; tone?: 'error' | 'warn' | 'info'; testId?: string }) {
  const cls =
    tone === 'error'
      ? 'border-red-300 bg-red-50 text-red-900'
      : tone === 'warn'
        ? 'border-amber-300 bg-amber-50 text-amber-950'
        : 'border-sky-300 bg-sky-50 text-sky-950'
  return (
    <div role={tone === 'info' ? 'status' : 'alert'} data-testid={testId} className={`rounded-xl border px-3 py-2 text-sm ${cls}`}>
      {children}
    </div>
  )
}

export function Bytes({ n }: { n: number }) {
  return <>{formatBytes(n)}</>
}
