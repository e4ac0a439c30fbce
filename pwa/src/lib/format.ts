export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return '–'
  if (n < 1000) return `${n} B`
  const units = ['kB', 'MB', 'GB', 'TB']
  let v = n / 1000
  let i = 0
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000
    i++
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`
}

/** "4 min 12 s", "2 h 5 min", "38 s". */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '–'
  const s = Math.max(0, Math.round(seconds))
  if (s < 60) return `${s} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${s % 60} s`
  const h = Math.floor(m / 60)
  if (h < 48) return `${h} h ${m % 60} min`
  return `${Math.floor(h / 24)} d ${h % 24} h`
}

/** "just now", "3 min ago", "2 h ago", "5 days ago". `at` in ms. */
export function formatAgo(at: number | null | undefined, now = Date.now()): string {
  if (at === null || at === undefined || !Number.isFinite(at)) return 'never'
  const s = Math.round((now - at) / 1000)
  if (s < 45) return 'just now'
  const m = Math.round(s / 60)
  if (m < 60) return `${m} min ago`
  const h = Math.round(m / 60)
  if (h < 48) return `${h} h ago`
  return `${Math.round(h / 24)} days ago`
}

/** DICOM DA "20240131" → "2024-01-31" (anything else as is). */
export function formatDicomDate(da: string): string {
  const m = /^(\d{4})\.?(\d{2})\.?(\d{2})$/.exec(da.trim())
  return m ? `${m[1]}-${m[2]}-${m[3]}` : da || '–'
}

/** DICOM PN "Doe^Jane^^Dr" → "Doe, Jane". */
export function formatPersonName(pn: string): string {
  const first = pn.split('=')[0]
  const [family = '', given = '', middle = ''] = first.split('^')
  const rest = [given, middle].filter(Boolean).join(' ')
  if (!family && !rest) return 'Unknown patient'
  return rest ? `${family}, ${rest}` : family
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`
}

export function isoToMs(iso: string | null | undefined): number | null {
  if (!iso) return null
  const t = Date.parse(iso)
  return Number.isNaN(t) ? null : t
}
