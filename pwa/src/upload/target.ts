/**
 * Where this upload app sends to. At the agent (its LAN web app) studies go through the agent; on
 * the hub (`https://hub/upload/`, no agent nearby) the browser sends straight to the hub. The
 * hub answers `./config.json` with {"target":"hub"}; the agent answers {"target":"agent"} (an
 * older agent: 404). Offline, the last answer stands (kept in localStorage).
 */
export interface TargetConfig {
  target: 'agent' | 'hub'
  requireTotp: boolean
}

const KEY = 'relaypacs.target'
let current: TargetConfig = { target: 'agent', requireTotp: false }

export function parseConfig(body: unknown): TargetConfig {
  const b = (body ?? {}) as { target?: unknown; require_totp?: unknown }
  return b.target === 'hub' ? { target: 'hub', requireTotp: b.require_totp !== false } : { target: 'agent', requireTotp: false }
}

export async function loadTarget(): Promise<TargetConfig> {
  try {
    const res = await fetch('./config.json', { cache: 'no-store', headers: { Accept: 'application/json' } })
    let cfg: TargetConfig = { target: 'agent', requireTotp: false }
    if (res.ok && (res.headers.get('Content-Type') ?? '').includes('json')) cfg = parseConfig(await res.json())
    current = cfg
    try {
      localStorage.setItem(KEY, JSON.stringify(cfg))
    } catch {
      // private mode
    }
  } catch {
    // No network: what this origin said last time.
    try {
      const saved = JSON.parse(localStorage.getItem(KEY) ?? 'null') as TargetConfig | null
      if (saved && (saved.target === 'hub' || saved.target === 'agent')) current = saved
    } catch {
      // ignore
    }
  }
  return current
}

export function getTarget(): TargetConfig {
  return current
}

export function isHub(): boolean {
  return current.target === 'hub'
}
