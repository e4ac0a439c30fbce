import { describe, expect, it } from 'vitest'
import { adminError, enrollCommand, facilitiesLabel, parseFacilities, passwordHint, shellQuote, validityLabel } from './admin'
import { HubError } from './api'

describe('parseFacilities', () => {
  it('splits on commas, semicolons and lines, trims, drops empties and repeats, sorts', () => {
    expect(parseFacilities(' west, east;east\n north ,, ')).toEqual(['east', 'north', 'west'])
  })
  it('is empty for blank text', () => {
    expect(parseFacilities('')).toEqual([])
    expect(parseFacilities(' , ; ')).toEqual([])
  })
  it('keeps spaces inside a name', () => {
    expect(parseFacilities('St Mary, east')).toEqual(['St Mary', 'east'])
  })
})

describe('facilitiesLabel', () => {
  it('lists them, and says what none means', () => {
    expect(facilitiesLabel(['east', 'west'], 'clinician')).toBe('east, west')
    expect(facilitiesLabel([], 'clinician')).toBe('none')
    expect(facilitiesLabel([], 'admin')).toBe('all (admin)')
  })
})

describe('passwordHint', () => {
  it('counts what is missing below 12 characters', () => {
    expect(passwordHint('')).toEqual({ ok: false, text: 'At least 12 characters.' })
    expect(passwordHint('short').text).toContain('7 more characters')
    expect(passwordHint('elevenchars').text).toContain('1 more character needed')
    expect(passwordHint('elevenchars').ok).toBe(false)
  })
  it('is ok from 12 characters, and says so in words', () => {
    expect(passwordHint('Correct-horse-7').ok).toBe(true)
    expect(passwordHint('Correct-horse-7').text).toBe('Strong enough.')
    expect(passwordHint('aaaaaaaaaaaa')).toEqual({ ok: true, text: expect.stringContaining('repetitive') })
    expect(passwordHint('abcdefghijkl').text).toContain('stronger')
  })
  it('counts characters, not UTF-16 units', () => {
    expect(passwordHint('😀'.repeat(11)).ok).toBe(false)
  })
})

describe('enrollCommand', () => {
  it('builds the command to run at the facility', () => {
    expect(enrollCommand('https://hub.example.org', 'Xy12_-ab', 'ct-room-1')).toBe(
      'relaypacs-agent enroll --hub-url https://hub.example.org --code Xy12_-ab --name ct-room-1',
    )
  })
  it('drops a trailing slash and leaves out an empty name', () => {
    expect(enrollCommand('http://10.0.0.5:8080/', 'abc', '  ')).toBe('relaypacs-agent enroll --hub-url http://10.0.0.5:8080 --code abc')
  })
  it('quotes what the shell would split or expand', () => {
    expect(enrollCommand('https://h', 'abc', "CT room 1 (Mary's)")).toBe(`relaypacs-agent enroll --hub-url https://h --code abc --name 'CT room 1 (Mary'\\''s)'`)
    expect(shellQuote('$(rm -rf x)')).toBe(`'$(rm -rf x)'`)
    expect(shellQuote('')).toBe(`''`)
  })
})

describe('validityLabel', () => {
  it('reads in minutes, hours or days', () => {
    expect(validityLabel(60)).toBe('60 min')
    expect(validityLabel(180)).toBe('3 h')
    expect(validityLabel(60 * 24 * 7)).toBe('7 days')
    expect(validityLabel(0)).toBe('–')
  })
})

describe('adminError', () => {
  it("says the hub's refusal in words", () => {
    expect(adminError(new HubError(422, 'http_422', 'password: String should have at least 12 characters'))).toBe(
      'The hub refused this: password: String should have at least 12 characters.',
    )
    expect(adminError(new HubError(409, 'user_exists', 'user nina already exists'))).toBe('User nina already exists. Pick another username.')
    expect(adminError(new HubError(403, 'forbidden', 'admin only'))).toBe('Your role may not do this.')
  })
})
