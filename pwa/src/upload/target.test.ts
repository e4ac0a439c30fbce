import { describe, expect, it } from 'vitest'
import { parseConfig } from './target'

describe('where the app sends to (./config.json)', () => {
  it('the hub says so; anything else is the agent', () => {
    expect(parseConfig({ target: 'hub', api: '/api/v1', require_totp: true })).toEqual({ target: 'hub', requireTotp: true })
    expect(parseConfig({ target: 'hub', require_totp: false })).toEqual({ target: 'hub', requireTotp: false })
    expect(parseConfig({ target: 'agent' })).toEqual({ target: 'agent', requireTotp: false })
    expect(parseConfig(null)).toEqual({ target: 'agent', requireTotp: false })
  })
})
