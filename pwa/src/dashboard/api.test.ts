import { describe, expect, it } from 'vitest'
import { errorOf } from './api'

const json = (status: number, body: unknown) => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } })

describe('errorOf', () => {
  it("reads the hub's {code, detail} answer", async () => {
    const e = await errorOf(json(401, { code: 'totp_required', detail: 'a valid TOTP or recovery code is required' }))
    expect([e.status, e.code, e.message]).toEqual([401, 'totp_required', 'a valid TOTP or recovery code is required'])
  })
  it('reads a {detail: {code, detail}} answer', async () => {
    const e = await errorOf(json(409, { detail: { code: 'totp_already_enabled', detail: 'TOTP is already enabled' } }))
    expect([e.code, e.message]).toEqual(['totp_already_enabled', 'TOTP is already enabled'])
  })
  it("reads FastAPI's validation errors", async () => {
    const e = await errorOf(json(422, { detail: [{ msg: 'too short' }, { msg: 'missing' }] }))
    expect([e.code, e.message]).toEqual(['http_422', 'too short; missing'])
  })
  it('survives a body that is not JSON', async () => {
    const e = await errorOf(new Response('oops', { status: 502, statusText: 'Bad Gateway' }))
    expect([e.code, e.message]).toEqual(['http_502', 'Bad Gateway'])
  })
})

describe('errorOf on validation errors', () => {
  it('names the field that was refused', async () => {
    const e = await errorOf(json(422, { detail: [{ loc: ['body', 'password'], msg: 'String should have at least 12 characters' }] }))
    expect(e.message).toBe('password: String should have at least 12 characters')
  })
  it('leaves out a location that is only the body', async () => {
    const e = await errorOf(json(422, { detail: [{ loc: ['body'], msg: 'Field required' }] }))
    expect(e.message).toBe('Field required')
  })
})
