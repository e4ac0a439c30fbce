import { describe, expect, it } from 'vitest'
import type { QBatch, QFile } from '../queue/types'
import type { ServerBatch } from './api'
import { hubBadge, studyStatus } from './status'

const local = (o: Partial<QBatch> = {}) => ({ id: 'b', serverId: 's', state: 'sent', ...o }) as QBatch
const file = (o: Partial<QFile> = {}) => ({ id: 'f', batchId: 'b', size: 100, bytesSent: 0, state: 'uploaded', error: null, ...o }) as QFile
const server = (stages: string[]): ServerBatch =>
  ({
    id: 's',
    refused: [],
    files: { received: 1, accepted: 1, duplicate: 0, quarantined: 0 },
    studies: stages.map((stage, i) => ({ study_instance_uid: `${i}`, stage, instances: 1, bytes_total: 100, bytes_sent: 40, percent: 40, last_error: null })),
  }) as unknown as ServerBatch

describe('studyStatus', () => {
  it('is on this device until every file is at the agent', () => {
    expect(studyStatus(local({ serverId: null, state: 'pending' }), [file({ state: 'queued' })], undefined).stage).toBe('device')
    const st = studyStatus(local({ state: 'open' }), [file({ state: 'uploading', bytesSent: 50 }), file({ id: 'g' })], server(['hub']))
    expect(st).toMatchObject({ stage: 'device', percent: 75 })
  })
  it('shows the least advanced study of the batch', () => {
    expect(studyStatus(local(), [file()], server(['pacs', 'sending'])).stage).toBe('sending')
    expect(studyStatus(local(), [file()], server(['pacs', 'pacs']))).toMatchObject({ stage: 'pacs', percent: 100 })
    expect(studyStatus(local(), [file()], undefined).stage).toBe('agent')
  })
  it('lists refused files from both sides', () => {
    const s = { ...server(['agent']), refused: [{ filename: 'x.txt', reason: 'not_dicom', message: 'not DICOM', label: 'Not a DICOM file', explanation: 'not a DICOM file', what_to_do: 'Send the images, not this file.' }] }
    const st = studyStatus(local(), [file(), file({ id: 'r', name: 'y.dcm', state: 'refused', error: 'bad' } as Partial<QFile>)], s)
    expect(st.refused.map((r) => r.name).sort()).toEqual(['x.txt', 'y.dcm'])
  })
})

describe('a study with refused files', () => {
  const words = {
    reason: 'truncated',
    message: 'element (7FE0,0010) declares 524288 bytes but only 297952 remain in the file',
    explanation: 'the file is cut short: a copy or transfer stopped before its end',
    what_to_do: 'Copy or export the file again from where it came from, then send it again.',
  }
  const inPacs = (): ServerBatch =>
    ({
      ...server(['pacs']),
      expected_files: 6,
      files: { received: 6, accepted: 5, duplicate: 0, quarantined: 1 },
      refused: [{ filename: 'cut.dcm', ...words }],
    }) as unknown as ServerBatch
  const six = () => Array.from({ length: 6 }, (_, i) => file({ id: `f${i}` }))

  it('counts what is in the PACS and what was refused, adding up to what was picked', () => {
    const st = studyStatus(local(), six(), inPacs())
    expect(st.counts).toEqual({ entered: 6, inPacs: 5, refused: 1 })
    expect(st.percent).toBe(83)
    expect(st.progressLabel).toBe('In the PACS: 5 of 6 files, 1 refused')
    expect(st.outcome).toBe(
      '5 of 6 files are in the PACS; 1 was refused and is not in the PACS. See below what happened and what to do, then send that file again as a new upload.',
    )
  })
  it("says why in the agent's plain words and keeps the technical message for IT", () => {
    const [r] = studyStatus(local(), six(), inPacs()).refused
    expect(r.message).toBe('The file is cut short: a copy or transfer stopped before its end. Copy or export the file again from where it came from, then send it again.')
    expect(r.detail).toContain('declares 524288 bytes')
  })
  it('has nothing to add when every file went through', () => {
    const st = studyStatus(local(), [file()], server(['pacs']))
    expect(st).toMatchObject({ outcome: null, percent: 100, progressLabel: 'In the PACS' })
  })
})

describe('hubBadge', () => {
  it('says the agent is unreachable while the browser is offline, whatever was known before', () => {
    expect(hubBadge(false, true, { reachable: true })).toMatchObject({ text: 'Agent unreachable', hubReachable: false, agentReachable: false })
    expect(hubBadge(false, null, null).kind).toBe('agent-unreachable')
  })
  it('says the agent is unreachable when the probe fails', () => {
    expect(hubBadge(true, false, null)).toMatchObject({ kind: 'agent-unreachable', text: 'Agent unreachable' })
  })
  it('tells hub online from hub offline when the agent answers', () => {
    expect(hubBadge(true, true, { reachable: true })).toMatchObject({ text: 'Hub online', hubReachable: true, agentReachable: true })
    expect(hubBadge(true, true, { reachable: false })).toMatchObject({
      text: 'Hub offline — uploads wait at the agent',
      hubReachable: false,
      agentReachable: true,
    })
  })
  it('is only checking before the first answer', () => {
    expect(hubBadge(true, null, null).kind).toBe('checking')
  })
})

describe('studyStatus, sending straight to the hub', () => {
  it('is on this device until committed, then at the hub; its words name the hub', () => {
    const up = studyStatus(local({ state: 'open' }), [file({ state: 'uploading', bytesSent: 30 }), file({ id: 'g', state: 'queued' })], undefined, true)
    expect(up).toMatchObject({ stage: 'device', progressLabel: 'Uploading to the hub', bytesDone: 30, bytesTotal: 200 })
    const waiting = studyStatus(local({ serverId: null, state: 'pending' }), [file({ state: 'queued' })], undefined, true)
    expect(waiting.progressLabel).toBe('Waiting to reach the hub')
    // Every file through but not committed yet: still on this device (not "at the agent").
    expect(studyStatus(local({ state: 'open' }), [file()], undefined, true).stage).toBe('device')
    expect(studyStatus(local({ state: 'sent' }), [file()], undefined, true)).toMatchObject({ stage: 'hub', percent: 100 })
  })
})
