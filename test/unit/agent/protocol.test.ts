import { promises as fs } from 'node:fs'
import path from 'node:path'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import {
  FRAME_HEADER,
  FrameDecoder,
  FrameType,
  MAX_PAYLOAD,
  PROTOCOL_VERSION,
  STREAM_WINDOW,
  encodeFrame,
  guestError,
  signalName,
  signalNumber,
  type Frame,
} from '../../../src/runtime/agent/protocol.js'
import { GUEST_DIR } from './guest-harness.js'

const frameArb = fc.record({
  type: fc.integer({ min: 0, max: 255 }),
  id: fc.integer({ min: 0, max: 0xffffffff }),
  payload: fc.uint8Array({ maxLength: 2048 }).map((a) => Buffer.from(a)),
})

/** Feed `bytes` to the decoder in pieces cut at `cuts` (positions, any order). */
function decodeInPieces(d: FrameDecoder, bytes: Buffer, cuts: number[]): Frame[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)
  const out: Frame[] = []
  let prev = 0
  for (const p of [...points, bytes.length]) {
    out.push(...d.push(bytes.subarray(prev, p)))
    prev = p
  }
  return out
}

describe('frames', () => {
  it('round-trip whatever the chunking (property)', () => {
    fc.assert(
      fc.property(fc.array(frameArb, { maxLength: 20 }), fc.array(fc.nat(), { maxLength: 30 }), (frames, cuts) => {
        const bytes = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.id, f.payload)))
        const got = decodeInPieces(new FrameDecoder(false), bytes, cuts)
        expect(got).toEqual(frames)
      }),
    )
  })

  it('carry magic, version, id and length in a 12-byte big-endian header', () => {
    const f = encodeFrame(FrameType.EXEC, 0x01020304, 'ab')
    expect([...f.subarray(0, FRAME_HEADER)]).toEqual([0xba, 0x1e, PROTOCOL_VERSION, FrameType.EXEC, 1, 2, 3, 4, 0, 0, 0, 2])
    expect(f.subarray(FRAME_HEADER).toString()).toBe('ab')
  })

  it('refuse payloads over the limit when encoding', () => {
    expect(encodeFrame(FrameType.INPUT, 1, Buffer.alloc(MAX_PAYLOAD)).length).toBe(FRAME_HEADER + MAX_PAYLOAD)
    expect(() => encodeFrame(FrameType.INPUT, 1, Buffer.alloc(MAX_PAYLOAD + 1))).toThrow(BaleError)
  })

  it('strict decoding fails with E_VM on a header it cannot trust', () => {
    const bad = encodeFrame(FrameType.OK, 1, 'x')
    bad[0] = 0
    expect(() => new FrameDecoder(false).push(bad)).toThrow(/bad frame magic/)
    const v2 = encodeFrame(FrameType.OK, 1, 'x')
    v2[2] = 2
    expect(() => new FrameDecoder(false).push(v2)).toThrow(/frame version 2/)
    const big = encodeFrame(FrameType.OK, 1, 'x')
    big.writeUInt32BE(MAX_PAYLOAD + 1, 8)
    expect(() => new FrameDecoder(false).push(big)).toThrow(/exceeds/)
  })

  it('lenient decoding skips leading garbage and finds the frames after it (property)', () => {
    // Garbage without the magic's first byte cannot be mistaken for a frame start.
    const garbage = fc.uint8Array({ maxLength: 512 }).map((a) => Buffer.from(a.filter((b) => b !== 0xba)))
    fc.assert(
      fc.property(garbage, fc.array(frameArb, { minLength: 1, maxLength: 5 }), fc.array(fc.nat(), { maxLength: 10 }), (junk, frames, cuts) => {
        const d = new FrameDecoder(true)
        const bytes = Buffer.concat([junk, ...frames.map((f) => encodeFrame(f.type, f.id, f.payload))])
        expect(decodeInPieces(d, bytes, cuts)).toEqual(frames)
        expect(d.skipped).toBe(junk.length)
      }),
    )
  })

  it('lenient decoding does not lose a frame behind a false start', () => {
    const d = new FrameDecoder(true)
    // 0xBA 0x1E looks like a start, but the version byte (0x07) does not match.
    const frame = encodeFrame(FrameType.OK, 5, 'hello')
    const got = d.push(Buffer.concat([Buffer.from([0xba, 0x1e, 0x07, 0xba]), frame]))
    expect(got).toEqual([{ type: FrameType.OK, id: 5, payload: Buffer.from('hello') }])
  })
})

describe('constants shared with the guest', () => {
  it('match guest/src/proto.h', async () => {
    const h = await fs.readFile(path.join(GUEST_DIR, 'src', 'proto.h'), 'utf8')
    const defs = new Map<string, string>()
    for (const m of h.matchAll(/^#define (\w+) (.+?)(?:\s*\/\*.*)?$/gm)) defs.set(m[1] ?? '', (m[2] ?? '').trim())
    const num = (name: string): number => {
      const v = defs.get(name)
      if (v === undefined) throw new Error(`${name} not in proto.h`)
      // Only the forms proto.h uses: a number, or (N * NAME).
      const mul = /^\((\d+) \* (\w+)\)$/.exec(v)
      return mul ? Number(mul[1]) * num(mul[2] ?? '') : Number(v)
    }
    expect([num('PROTO_MAGIC0'), num('PROTO_MAGIC1')]).toEqual([0xba, 0x1e])
    expect(num('PROTO_VERSION')).toBe(PROTOCOL_VERSION)
    expect(num('FRAME_HDR')).toBe(FRAME_HEADER)
    expect(num('FRAME_MAX_PAYLOAD')).toBe(MAX_PAYLOAD)
    expect(num('STREAM_WINDOW')).toBe(STREAM_WINDOW)
    for (const [name, value] of Object.entries(FrameType)) expect({ name, value: num(`T_${name}`) }).toEqual({ name, value })
    const guestTypes = [...defs.keys()].filter((k) => k.startsWith('T_')).map((k) => k.slice(2))
    expect(guestTypes.sort()).toEqual(Object.keys(FrameType).sort())
  })
})

describe('signals', () => {
  it('accept names with or without SIG and numbers', () => {
    expect(signalNumber('SIGTERM')).toBe(15)
    expect(signalNumber('TERM')).toBe(15)
    expect(signalNumber('kill')).toBe(9)
    expect(signalNumber(2)).toBe(2)
    expect(signalName(9)).toBe('SIGKILL')
    expect(signalName(64)).toBe('SIG64')
  })

  it('refuse unknown signals with E_USAGE', () => {
    expect(() => signalNumber('SIGNOPE')).toThrow(expect.objectContaining({ code: 'E_USAGE' }))
    expect(() => signalNumber(0)).toThrow(expect.objectContaining({ code: 'E_USAGE' }))
    expect(() => signalNumber(65)).toThrow(expect.objectContaining({ code: 'E_USAGE' }))
  })
})

describe('guest errors', () => {
  const err = (code: string, message: string) => guestError(Buffer.from(JSON.stringify({ code, message })), '/p')

  it('map errno names to the codes users act on, keeping the guest message', () => {
    expect(err('ENOENT', '/p: No such file or directory')).toMatchObject({ code: 'E_NOT_FOUND', message: 'guest: /p: No such file or directory', subject: '/p' })
    expect(err('EACCES', 'x')).toMatchObject({ code: 'E_INPUT' })
    expect(err('ENOSPC', 'x')).toMatchObject({ code: 'E_VM' })
  })

  it('treat an unreadable ERROR payload as a protocol error', () => {
    expect(guestError(Buffer.from('not json'))).toMatchObject({ code: 'E_VM', message: 'agent protocol error: ERROR payload is not JSON' })
    expect(guestError(Buffer.from('{"code":1}'))).toMatchObject({ code: 'E_VM' })
  })
})
