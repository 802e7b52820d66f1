import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { compress } from '@mongodb-js/zstd'
import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { decompressFrames, type FrameUnit, splitFrames } from '../../../src/pipeline/bundle/zstd-frames.js'
import { compressFrame } from '../../../src/pipeline/bundle/zstd-native.js'

/** Feed a buffer as a stream of odd-sized chunks, so frame and block headers straddle chunks. */
async function* chunks(buf: Buffer, size = 1000): AsyncGenerator<Buffer> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size)
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

async function inflate(buf: Buffer, opts: { maxNativeContent?: number; concurrency?: number } = {}): Promise<Buffer> {
  return Buffer.concat(await collect(decompressFrames(chunks(buf), { name: 'b.zst', concurrency: opts.concurrency ?? 3, ...opts })))
}

function skippable(payload: Buffer, nibble = 0xa): Buffer {
  const h = Buffer.alloc(8)
  h.writeUInt32LE((0x184d2a50 | nibble) >>> 0, 0)
  h.writeUInt32LE(payload.length, 4)
  return Buffer.concat([h, payload])
}

/** Mixed content: text-like runs (compressible) and random bytes (raw blocks). */
function sample(n: number, seed: string): Buffer {
  const text = Buffer.from(`${seed} the quick brown fox jumps over the lazy dog\n`.repeat(Math.ceil(n / 2 / 40)))
  return Buffer.concat([text.subarray(0, n / 2), randomBytes(n - n / 2)])
}

describe('splitFrames', () => {
  it('finds every frame boundary in concatenated frames, bounding each one\'s output', async () => {
    const parts = [sample(300_000, 'a'), sample(10, 'b'), Buffer.alloc(0), sample(700_000, 'c')]
    const frames = await Promise.all(parts.map((p) => compress(p, 3)))
    const units = await collect(splitFrames(chunks(Buffer.concat(frames), 333), { name: 'b.zst' }))
    expect(units.map((u) => u.kind)).toEqual(['frame', 'frame', 'frame', 'frame'])
    const whole = units as Array<Extract<FrameUnit, { kind: 'frame' }>>
    expect(whole.map((u, i) => u.data.equals(frames[i] as Buffer))).toEqual([true, true, true, true])
    // @mongodb-js/zstd declares no content size (except for empty input): the bound comes from
    // the blocks, and is tight.
    expect(whole.map((u) => u.contentSize)).toEqual([undefined, undefined, 0, undefined])
    whole.forEach((u, i) => {
      expect(u.maxSize).toBeGreaterThanOrEqual((parts[i] as Buffer).length)
      expect(u.maxSize).toBeLessThanOrEqual((parts[i] as Buffer).length + 128 * 1024)
    })
    let offset = 0
    expect(units.map((u) => u.offset)).toEqual(frames.map((f) => ((offset += f.length), offset - f.length)))
  })

  it('uses a declared content size (zstd --stream-size)', async () => {
    const a = sample(200_000, 'a')
    const f = execFileSync('zstd', ['-q', '-c', '-3', `--stream-size=${a.length}`], { input: a })
    const units = await collect(splitFrames(chunks(f), { name: 'b.zst' }))
    expect(units).toHaveLength(1)
    expect(units[0]).toMatchObject({ kind: 'frame', contentSize: a.length, maxSize: a.length })
    expect((await inflate(f)).equals(a)).toBe(true)
  })

  it('skips skippable frames wherever they are, whatever their magic nibble', async () => {
    const a = sample(50_000, 'a')
    const b = sample(60_000, 'b')
    const stream = Buffer.concat([skippable(Buffer.from('seek table'), 0x0), await compress(a, 3), skippable(randomBytes(5000), 0xf), await compress(b, 3), skippable(Buffer.alloc(0))])
    expect((await inflate(stream)).equals(Buffer.concat([a, b]))).toBe(true)
  })

  it('streams frames whose output could exceed the native limit through fzstd (zstd CLI, with checksums)', async () => {
    const a = sample(400_000, 'a')
    const b = sample(200_000, 'b')
    const cli = (data: Buffer): Buffer => execFileSync('zstd', ['-q', '-c', '-3'], { input: data })
    const stream = Buffer.concat([cli(a), await compress(b, 3), cli(b)])
    const opts = { name: 'b.zst', maxNativeContent: 300_000 }
    const units = await collect(splitFrames(chunks(stream), opts))
    expect(units.filter((u) => u.kind === 'part' && u.first).map((u) => u.offset)).toEqual([0])
    expect(units.filter((u) => u.kind === 'frame')).toHaveLength(2)
    expect((await inflate(stream, opts)).equals(Buffer.concat([a, b, b]))).toBe(true)
  })

  it('streams frames declared bigger than the native limit, in order with the buffered ones', async () => {
    const parts = [sample(100_000, 'x'), sample(3_000_000, 'y'), sample(100_000, 'z')]
    const stream = Buffer.concat(await Promise.all(parts.map((p) => compress(p, 3))))
    expect((await inflate(stream, { maxNativeContent: 1_000_000, concurrency: 2 })).equals(Buffer.concat(parts))).toBe(true)
  })

  it('keeps order with many frames in flight', async () => {
    const parts = Array.from({ length: 20 }, (_, i) => sample(20_000 + i * 1000, String(i)))
    const stream = Buffer.concat(await Promise.all(parts.map((p) => compress(p, 1))))
    expect((await inflate(stream, { concurrency: 4 })).equals(Buffer.concat(parts))).toBe(true)
  })

  describe('rejects with the offset', () => {
    async function failure(stream: Buffer): Promise<BaleError> {
      const e = await inflate(stream).then(
        () => undefined,
        (err: unknown) => err,
      )
      expect(e).toBeInstanceOf(BaleError)
      return e as BaleError
    }

    it('a stream that is not zstd', async () => {
      expect((await failure(Buffer.from('hello, this is not zstd'))).message).toBe('b.zst: not a zstd stream (offset 0)')
    })

    it('garbage after the last frame', async () => {
      const f = await compress(sample(1000, 'a'), 3)
      expect((await failure(Buffer.concat([f, Buffer.from('trailing junk')]))).message).toBe(`b.zst: garbage after the last zstd frame (offset ${f.length})`)
    })

    it('a truncated frame', async () => {
      const f1 = await compress(sample(1000, 'a'), 3)
      const f2 = await compress(sample(100_000, 'b'), 3)
      expect((await failure(Buffer.concat([f1, f2.subarray(0, f2.length - 10)]))).message).toBe(`b.zst: truncated zstd frame at offset ${f1.length}`)
    })

    it('a reserved block type', async () => {
      const f = Buffer.from(await compress(sample(1000, 'a'), 3))
      // Frame header as @mongodb-js/zstd writes it: magic(4) + descriptor(1, no size) + window(1).
      expect(f[4]).toBe(0)
      const blockAt = 4 + 1 + 1
      f[blockAt] = (f[blockAt] as number) | 0b110
      expect((await failure(f)).message).toBe(`b.zst: corrupt zstd block header at offset ${blockAt}`)
    })

    it('an empty stream', async () => {
      expect((await failure(Buffer.alloc(0))).message).toBe('b.zst: empty zstd stream')
    })

    it('a frame whose checksum does not match its data', async () => {
      const f = execFileSync('zstd', ['-q', '-c', '-3'], { input: sample(100_000, 'a') })
      f[f.length - 1] = (f[f.length - 1] as number) ^ 0xff
      const e = await failure(f)
      expect(e.code).toBe('E_INPUT')
      expect(e.message).toMatch(/^b\.zst: corrupt zstd frame at offset 0: /)
    })
  })
})

describe('zstd-empty-last-block', () => {
  // zstd ends a frame whose content is a multiple of its 128 KiB block size with an empty last
  // block; when that is the very end of the input, the splitter asked its reader for 0 bytes
  // with nothing buffered and crashed (found on an ext4 rootfs, whose size is whole MiB).
  it('decodes a stream that ends with an empty block, delivered in one chunk or byte by byte', async () => {
    const data = Buffer.alloc(1024 * 1024, 0x5a)
    const frame = await compressFrame(data, 3)
    const chunkings: Buffer[][] = [[frame], Array.from(frame, (b) => Buffer.from([b]))]
    for (const chunks of chunkings) {
      const out: Buffer[] = []
      for await (const b of decompressFrames((async function* () { yield* chunks })(), { name: 'empty-last-block', concurrency: 2 })) out.push(b)
      expect(Buffer.concat(out).equals(data)).toBe(true)
    }
  })
})
