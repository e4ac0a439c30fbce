/** On the hub: bytes and time left while sending, then the hub's own status of the study. */
import { useEffect, useRef, useState } from 'react'
import { formatBytes } from '../lib/format'
import type { QBatch, QFile } from '../queue/types'
import { usePoll } from './hooks'
import { hubStudy, type HubStudyStatus } from './hubAuth'

function formatDuration(s: number): string {
  if (s < 60) return `${Math.max(1, Math.round(s))} s`
  if (s < 3600) return `${Math.round(s / 60)} min`
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`
}

export function HubProgress({ local, files }: { local: QBatch; files: QFile[] }) {
  const mine = files.filter((f) => f.batchId === local.id && f.state !== 'refused')
  const total = mine.reduce((n, f) => n + f.size, 0)
  const done = mine.reduce((n, f) => n + (f.state === 'uploaded' ? f.size : f.bytesSent), 0)
  const left = Math.max(0, total - done)
  // Rate over the last samples (bytes/s), for "time left".
  const samples = useRef<Array<[number, number]>>([])
  const [rate, setRate] = useState<number | null>(null)
  useEffect(() => {
    const now = Date.now()
    const s = samples.current
    s.push([now, done])
    while (s.length > 2 && now - s[0][0] > 30_000) s.shift()
    const [t0, b0] = s[0]
    if (now - t0 > 1000 && done > b0) setRate(((done - b0) * 1000) / (now - t0))
  }, [done])
  const [status, setStatus] = useState<HubStudyStatus | null>(null)
  const sent = local.state === 'sent' && !!local.serverId
  const delivered = !!status && status.destinations.length > 0 && status.destinations.every((d) => d.state === 'done')
  usePoll(
    async () => {
      if (local.serverId) setStatus(await hubStudy(local.serverId))
    },
    3000,
    sent && !delivered,
  )
  if (sent) {
    return (
      <p className="text-sm text-slate-800" data-testid="hub-study-state" data-state={status?.state ?? ''} data-delivered={String(delivered)}>
        {status
          ? `At the hub (${status.state}). ${status.destinations.map((d) => `${d.destination}: ${d.state}`).join(', ') || 'No destination yet.'}`
          : 'Committed at the hub.'}
      </p>
    )
  }
  if (local.state !== 'open' || left === 0) return null
  return (
    <p className="text-sm text-slate-800" data-testid="hub-left">
      {formatBytes(left)} left{rate ? `, about ${formatDuration(left / rate)}` : ''}
    </p>
  )
}
