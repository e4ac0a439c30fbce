import { useCallback, useEffect, useRef, useState } from 'react'
import uPlot from 'uplot'
import 'uplot/dist/uPlot.min.css'
import { formatDuration } from '../lib/format'
import { hub, type Analytics as Data, type Timing } from './api'
import { ErrorBox, message, stackCell, stackRow, Table, useLoad } from './ui'

const DAY = 86_400_000
const isoDay = (ms: number) => new Date(ms).toISOString().slice(0, 10)
const pct = (v: number | null) => (v === null ? '–' : `${(v * 100).toFixed(v >= 0.995 && v < 1 ? 1 : 0)}%`)
const timing = (t: Timing | undefined) => (t && t.n ? `${formatDuration(t.median_seconds)} / ${formatDuration(t.p95_seconds)}` : '–')
// Colour-blind-safe (Okabe-Ito), in a fixed order per facility.
const PALETTE = ['#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#000000', '#F0E442']

function Card({ label, value, hint, testId }: { label: string; value: string; hint?: string; testId?: string }) {
  return (
    <div className="rounded-xl border border-slate-200 bg-white p-3" data-testid={testId}>
      <div className="text-sm text-slate-700">{label}</div>
      <div className="text-2xl font-semibold tabular-nums">{value}</div>
      {hint && <div className="text-xs text-slate-700">{hint}</div>}
    </div>
  )
}

/** Studies per period: a bar per period (all facilities), a line per facility. */
function VolumeChart({ data }: { data: Data }) {
  const box = useRef<HTMLDivElement>(null)
  useEffect(() => {
    const el = box.current
    if (!el) return
    // Every period of the range, zero where nothing arrived, so the axis shows the whole range.
    const step = data.bucket === 'week' ? 7 * DAY : DAY
    let first = Date.parse(`${data.start}T00:00:00Z`)
    if (data.bucket === 'week') first -= ((new Date(first).getUTCDay() + 6) % 7) * DAY
    const periods: string[] = []
    for (let t = first; t <= Date.parse(`${data.end}T00:00:00Z`); t += step) periods.push(isoDay(t))
    const facilities = [...new Set(data.volume.map((v) => v.facility))].sort()
    const xs = periods.map((p) => Date.parse(`${p}T00:00:00Z`) / 1000)
    const per = (f?: string) =>
      periods.map((p) => data.volume.filter((v) => v.period === p && (f === undefined || v.facility === f)).reduce((n, v) => n + v.studies, 0))
    const opts: uPlot.Options = {
      width: el.clientWidth,
      height: 240,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      scales: { x: { time: true, range: () => [xs[0] - step / 2000, xs[xs.length - 1] + step / 2000] }, y: { range: (_u, _min, max) => [0, Math.max(1, Math.ceil(max * 1.1))] } },
      axes: [{}, { label: 'studies', values: (_u, ticks) => ticks.map((t) => (Number.isInteger(t) ? String(t) : '')) }],
      series: [
        {},
        { label: 'All facilities', fill: 'rgba(100,116,139,0.25)', stroke: '#64748b', paths: uPlot.paths.bars!({ size: [0.6, 48] }), points: { show: false } },
        ...facilities.map((f, i) => ({ label: f, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: true, size: 6 } })),
      ],
      legend: { live: false },
    }
    const plot = new uPlot(opts, [xs, per(), ...facilities.map((f) => per(f))], el)
    const resize = new ResizeObserver(() => plot.setSize({ width: el.clientWidth, height: 240 }))
    resize.observe(el)
    return () => {
      resize.disconnect()
      plot.destroy()
    }
  }, [data])
  const total = data.volume.reduce((n, v) => n + v.studies, 0)
  return (
    <figure className="rounded-xl border border-slate-200 bg-white p-3">
      <figcaption className="mb-2 font-semibold">Studies received per {data.bucket}</figcaption>
      {total ? <div ref={box} data-testid="dash-volume-chart" className="w-full" /> : <p className="text-slate-700">No studies in this range.</p>}
    </figure>
  )
}

function ModalityMix({ data }: { data: Data }) {
  const most = Math.max(1, ...data.modalities.map((m) => m.studies))
  return (
    <figure className="rounded-xl border border-slate-200 bg-white p-3" data-testid="dash-modality-mix">
      <figcaption className="mb-2 font-semibold">Modality mix</figcaption>
      {data.modalities.length ? (
        <ul className="flex flex-col gap-1">
          {data.modalities.map((m) => (
            <li key={m.modality} className="flex items-center gap-2 text-sm">
              <span className="w-20 shrink-0 font-medium">{m.modality}</span>
              <span className="h-4 rounded bg-sky-700" style={{ width: `${(70 * m.studies) / most}%` }} aria-hidden="true" />
              <span className="tabular-nums">{m.studies}</span>
            </li>
          ))}
        </ul>
      ) : (
        <p className="text-slate-700">None yet.</p>
      )}
    </figure>
  )
}

export function Analytics() {
  const today = Date.now()
  const [start, setStart] = useState(isoDay(today - 29 * DAY))
  const [end, setEnd] = useState(isoDay(today))
  const [bucket, setBucket] = useState<'day' | 'week'>('day')
  const [note, setNote] = useState<string | null>(null)
  const [csvError, setCsvError] = useState<string | null>(null)
  const load = useCallback(() => hub.analytics({ start, end, bucket }), [start, end, bucket])
  const [data, error] = useLoad(load, 60_000)
  async function csv() {
    setCsvError(null)
    try {
      setNote(`Saved ${await hub.analyticsCsv({ start, end })}.`)
    } catch (e) {
      setCsvError(message(e))
    }
  }
  return (
    <section aria-labelledby="an" className="flex flex-col gap-3" data-testid="dash-analytics">
      <div className="flex flex-wrap items-end justify-between gap-3">
        <h2 id="an" className="text-lg font-semibold">
          Analytics
        </h2>
        <div className="flex flex-wrap items-end gap-3">
          <div>
            <label htmlFor="an-start" className="label">
              From
            </label>
            <input id="an-start" type="date" className="field py-2" value={start} max={end} onChange={(e) => e.target.value && setStart(e.target.value)} />
          </div>
          <div>
            <label htmlFor="an-end" className="label">
              To
            </label>
            <input id="an-end" type="date" className="field py-2" value={end} min={start} onChange={(e) => e.target.value && setEnd(e.target.value)} />
          </div>
          <div>
            <label htmlFor="an-bucket" className="label">
              Per
            </label>
            <select id="an-bucket" className="field py-2" value={bucket} onChange={(e) => setBucket(e.target.value as 'day' | 'week')}>
              <option value="day">day</option>
              <option value="week">week</option>
            </select>
          </div>
          <button className="btn-secondary min-h-10" onClick={() => void csv()}>
            Download CSV
          </button>
        </div>
      </div>
      <ErrorBox error={error ?? csvError} />
      <p role="status" aria-live="polite" className="text-sm text-slate-700">
        {note}
      </p>
      {data && (
        <>
          <div className="grid grid-cols-2 gap-3 md:grid-cols-4">
            <Card label="Studies" value={String(data.studies)} hint={`${data.instances} images`} testId="dash-an-studies" />
            <Card label="Delivered" value={pct(data.success_rate)} hint={`${data.delivered} delivered, ${data.failed} failed`} testId="dash-an-success" />
            <Card label="Time to PACS, STAT" value={timing(data.time_to_pacs.stat)} hint="median / 95th percentile" />
            <Card label="Time to PACS, routine" value={timing(data.time_to_pacs.routine)} hint="median / 95th percentile" />
          </div>
          <VolumeChart data={data} />
          <div className="grid gap-3 md:grid-cols-2">
            <ModalityMix data={data} />
            <Card label="Time to report" value={timing(data.time_to_report)} hint={`median / 95th percentile over ${data.time_to_report.n} report(s)`} />
          </div>
          <h3 className="font-semibold">By facility</h3>
          <Table
            testId="dash-an-facilities"
            caption="By facility"
            head={['Facility', 'Studies', 'Delivered', 'Failed', 'Success', 'To PACS, STAT', 'To PACS, routine', 'To report']}
            empty="No studies in this range."
            stack
          >
            {data.facilities.map((f) => (
              <tr key={f.facility} className={stackRow} data-testid="dash-an-facility">
                <td data-label="Facility" className={`${stackCell} font-medium`}>
                  {f.facility}
                </td>
                <td data-label="Studies" className={`${stackCell} tabular-nums`}>
                  {f.studies}
                </td>
                <td data-label="Delivered" className={`${stackCell} tabular-nums`}>
                  {f.delivered}
                </td>
                <td data-label="Failed" className={`${stackCell} tabular-nums`}>
                  {f.failed}
                </td>
                <td data-label="Success" className={`${stackCell} tabular-nums`}>
                  {pct(f.success_rate)}
                </td>
                <td data-label="To PACS, STAT" className={`${stackCell} tabular-nums`}>
                  {timing(f.time_to_pacs.stat)}
                </td>
                <td data-label="To PACS, routine" className={`${stackCell} tabular-nums`}>
                  {timing(f.time_to_pacs.routine)}
                </td>
                <td data-label="To report" className={`${stackCell} tabular-nums`}>
                  {timing(f.time_to_report)}
                </td>
              </tr>
            ))}
          </Table>
          <h3 className="font-semibold">Files in quarantine at the agents, by reason</h3>
          <Table testId="dash-an-quarantine" caption="Files in quarantine at the agents, by reason" head={['Facility', 'Reason', 'Files']} empty="No files in quarantine." stack>
            {data.quarantine.slice(0, 20).map((q) => (
              <tr key={`${q.facility}/${q.reason}`} className={stackRow}>
                <td data-label="Facility" className={stackCell}>
                  {q.facility}
                </td>
                <td data-label="Reason" className={`${stackCell} font-mono text-xs`}>
                  {q.reason}
                </td>
                <td data-label="Files" className={`${stackCell} tabular-nums`}>
                  {q.files}
                </td>
              </tr>
            ))}
          </Table>
          <h3 className="font-semibold">Agent fleet</h3>
          <Table testId="dash-an-fleet" caption="Agent fleet" head={['Agent', 'Facility', 'Last heard', 'Backlog', 'Oldest waiting', 'Disk']} empty="No agent has reported yet." stack>
            {data.agents.map((a) => (
              <tr key={`${a.facility}/${a.name}`} className={stackRow} data-silent={a.silent_seconds > 900}>
                <td data-label="Agent" className={`${stackCell} font-medium`}>
                  {a.name} <span className="font-normal text-slate-700">{a.version}</span>
                </td>
                <td data-label="Facility" className={stackCell}>
                  {a.facility ?? '–'}
                </td>
                <td data-label="Last heard" className={`${stackCell} ${a.silent_seconds > 900 ? 'font-semibold text-red-800' : ''}`}>
                  {formatDuration(a.silent_seconds)} ago
                </td>
                <td data-label="Backlog" className={`${stackCell} tabular-nums`}>
                  {a.backlog_studies} ({(a.backlog_bytes / 1e6).toFixed(0)} MB)
                </td>
                <td data-label="Oldest waiting" className={`${stackCell} tabular-nums`}>
                  {a.oldest_waiting_seconds === null ? '–' : formatDuration(a.oldest_waiting_seconds)}
                </td>
                <td data-label="Disk" className={`${stackCell} ${a.disk_below_reserve ? 'font-semibold text-red-800' : ''}`}>
                  {a.disk_below_reserve ? 'below reserve' : 'ok'}
                </td>
              </tr>
            ))}
          </Table>
        </>
      )}
    </section>
  )
}
