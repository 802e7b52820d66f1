import { createHash, randomBytes } from 'node:crypto'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { gzipSync } from 'node:zlib'
import { compress as zstdCompress } from '@mongodb-js/zstd'
import * as tarStream from 'tar-stream'
import { beforeAll, describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { openLayerTar, peek } from '../../../src/pipeline/source/layer.js'
import type { LayerBlob, LayerCompression } from '../../../src/pipeline/source/types.js'

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

async function makeTar(): Promise<Buffer> {
  const pack = tarStream.pack()
  // Random content so that compressed data spans many chunks and a flipped byte lands in real data.
  pack.entry({ name: 'bin/blob', size: 300_000 }, randomBytes(300_000))
  pack.entry({ name: 'etc/hello', size: 6 }, 'hello\n')
  pack.finalize()
  const chunks: Buffer[] = []
  for await (const c of pack) chunks.push(c as Buffer)
  return Buffer.concat(chunks)
}

/** A blob whose stored bytes come from `data`, streamed in 7 KiB chunks (not aligned to anything). */
function blobOf(data: Buffer, over: Partial<LayerBlob> & { compression: LayerCompression }): LayerBlob & { opened: Readable[] } {
  const opened: Readable[] = []
  return {
    mediaType: 'application/vnd.oci.image.layer.v1.tar',
    opened,
    async open() {
      const parts: Buffer[] = []
      for (let i = 0; i < data.length; i += 7 * 1024) parts.push(data.subarray(i, i + 7 * 1024))
      const r = Readable.from(parts)
      opened.push(r)
      return r
    },
    ...over,
  }
}

/** Drain the layer like flatten does (stream.pipeline); record whether 'end' was ever seen. */
async function drain(tar: Readable): Promise<{ bytes: Buffer; sawEnd: boolean; error?: unknown }> {
  const chunks: Buffer[] = []
  let sawEnd = false
  tar.on('end', () => {
    sawEnd = true
  })
  try {
    await pipeline(
      tar,
      new Writable({
        write(chunk: Buffer, _e, cb) {
          chunks.push(chunk)
          cb()
        },
      }),
    )
    return { bytes: Buffer.concat(chunks), sawEnd }
  } catch (error) {
    return { bytes: Buffer.concat(chunks), sawEnd, error }
  }
}

let tar: Buffer
const stored: Record<'none' | 'gzip' | 'zstd', Buffer> = { none: Buffer.alloc(0), gzip: Buffer.alloc(0), zstd: Buffer.alloc(0) }

beforeAll(async () => {
  tar = await makeTar()
  stored.none = tar
  stored.gzip = gzipSync(tar)
  stored.zstd = await zstdCompress(tar, 3)
})

function flipped(b: Buffer, at: number): Buffer {
  const c = Buffer.from(b)
  c[at] = (c[at] ?? 0) ^ 0xff
  return c
}

describe.each(['none', 'gzip', 'zstd'] as const)('openLayerTar (%s)', (compression) => {
  const good = (): LayerBlob & { opened: Readable[] } => {
    const data = stored[compression]
    return blobOf(data, { compression, digest: sha(data), size: data.length, diffId: sha(tar) })
  }

  it('streams the uncompressed tar and reports what it computed', async () => {
    const { tar: out, digests } = await openLayerTar(good(), 'layer 1')
    const r = await drain(out)
    expect(r.error).toBeUndefined()
    expect(r.bytes.equals(tar)).toBe(true)
    await expect(digests).resolves.toEqual({ digest: sha(stored[compression]), diffId: sha(tar), size: stored[compression].length })
  })

  it('detects the compression from magic bytes', async () => {
    const blob = { ...good(), compression: 'detect' as const }
    const { tar: out } = await openLayerTar(blob, 'layer 1')
    const r = await drain(out)
    expect(r.error).toBeUndefined()
    expect(r.bytes.equals(tar)).toBe(true)
  })

  it('corrupt byte: fails with E_DIGEST naming the digest, before end', async () => {
    const data = stored[compression]
    const blob = blobOf(flipped(data, Math.floor(data.length / 2)), { compression, digest: sha(data), size: data.length, diffId: sha(tar) })
    const { tar: out, digests } = await openLayerTar(blob, 'layer 2')
    const r = await drain(out)
    expect(r.sawEnd).toBe(false)
    expect(r.error).toBeInstanceOf(BaleError)
    const e = r.error as BaleError
    expect(e.code).toBe('E_DIGEST')
    expect(e.message).toContain(`layer 2 ${sha(data)}: expected ${sha(data)} got sha256:`)
    expect(e.message).not.toContain('\n')
    await expect(digests).rejects.toBe(e)
  })

  it('wrong diff_id: fails with E_DIGEST, expected and got, before end', async () => {
    const data = stored[compression]
    const wrong = sha(Buffer.from('not the tar'))
    const blob = blobOf(data, { compression, digest: sha(data), size: data.length, diffId: wrong })
    const { tar: out } = await openLayerTar(blob, 'layer 3')
    const r = await drain(out)
    expect(r.sawEnd).toBe(false)
    expect((r.error as BaleError).code).toBe('E_DIGEST')
    expect((r.error as BaleError).message).toBe(`layer 3 ${sha(data)}: expected diff_id ${wrong} got ${sha(tar)}`)
  })

  it('truncated: fails naming expected and received byte counts, before end', async () => {
    const data = stored[compression]
    const cut = data.subarray(0, data.length - 1000)
    const blob = blobOf(cut, { compression, digest: sha(data), size: data.length, diffId: sha(tar) })
    const { tar: out } = await openLayerTar(blob, 'layer 1')
    const r = await drain(out)
    expect(r.sawEnd).toBe(false)
    expect((r.error as BaleError).code).toBe('E_DIGEST')
    expect((r.error as BaleError).message).toBe(`layer 1 ${sha(data)}: truncated: expected ${data.length} bytes, got ${cut.length}`)
  })

  it('wrong size (more bytes than announced): fails without reading on', async () => {
    const data = stored[compression]
    const blob = blobOf(data, { compression, digest: sha(data), size: data.length - 10, diffId: sha(tar) })
    const { tar: out } = await openLayerTar(blob, 'layer 1')
    const r = await drain(out)
    expect(r.sawEnd).toBe(false)
    expect((r.error as BaleError).code).toBe('E_DIGEST')
    expect((r.error as BaleError).message).toBe(`layer 1 ${sha(data)}: size mismatch: expected ${data.length - 10} bytes, got more`)
  })

  it('a consumer that stops early releases the source stream', async () => {
    // A source that delivers all but the last 1000 bytes and then stalls, as a slow disk or
    // network would (zstd stores random data in 128 KiB raw blocks: send whole blocks).
    const data = stored[compression]
    let source: Readable | undefined
    const blob: LayerBlob = {
      mediaType: 'x',
      compression,
      digest: sha(data),
      size: data.length,
      async open() {
        source = new Readable({ read() {} })
        source.push(data.subarray(0, data.length - 1000))
        return source
      },
    }
    const { tar: out, digests } = await openLayerTar(blob, 'layer 1')
    await new Promise<void>((resolve) => out.once('data', () => resolve()))
    out.destroy()
    await expect(digests).rejects.toBeDefined()
    await new Promise((r) => setTimeout(r, 20))
    expect(source?.destroyed).toBe(true)
  })
})

describe('openLayerTar without digests (a bare rootfs tar)', () => {
  it('truncated gzip: E_INPUT saying truncated, before end', async () => {
    const cut = stored.gzip.subarray(0, stored.gzip.length - 100)
    const { tar: out } = await openLayerTar(blobOf(cut, { compression: 'detect' }), 'rootfs.tar.gz')
    const r = await drain(out)
    expect(r.sawEnd).toBe(false)
    expect((r.error as BaleError).code).toBe('E_INPUT')
    expect((r.error as BaleError).message).toBe('rootfs.tar.gz: truncated gzip data (unexpected end of file)')
  })

  it('truncated zstd: E_INPUT saying truncated, before end', async () => {
    const cut = stored.zstd.subarray(0, stored.zstd.length - 100)
    const { tar: out } = await openLayerTar(blobOf(cut, { compression: 'zstd' }), 'rootfs.tar.zst')
    const r = await drain(out)
    expect(r.sawEnd).toBe(false)
    expect((r.error as BaleError).code).toBe('E_INPUT')
    expect((r.error as BaleError).message).toBe('rootfs.tar.zst: truncated zstd data (unexpected end of file)')
  })

  it('corrupt gzip with a correct digest is bad data from the publisher: E_INPUT', async () => {
    const bad = flipped(stored.gzip, 20)
    const { tar: out } = await openLayerTar(blobOf(bad, { compression: 'gzip', digest: sha(bad), size: bad.length }), 'layer 1')
    const r = await drain(out)
    expect(r.sawEnd).toBe(false)
    expect((r.error as BaleError).code).toBe('E_INPUT')
    expect((r.error as BaleError).message).toMatch(/^layer 1 sha256:[0-9a-f]{64}: corrupt gzip data: /)
  })

  it('still computes digests when none are expected', async () => {
    const { tar: out, digests } = await openLayerTar(blobOf(stored.zstd, { compression: 'detect' }), 'rootfs.tar')
    await drain(out)
    await expect(digests).resolves.toEqual({ digest: sha(stored.zstd), diffId: sha(tar), size: stored.zstd.length })
  })

  it('xz is refused by name', async () => {
    const xz = Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), Buffer.alloc(100)])
    await expect(openLayerTar(blobOf(xz, { compression: 'detect' }), 'image.tar.xz')).rejects.toThrow('image.tar.xz: xz-compressed tar is not supported')
  })

  it('an empty input is an (empty) uncompressed stream', async () => {
    const { tar: out } = await openLayerTar(blobOf(Buffer.alloc(0), { compression: 'detect' }), 'empty.tar')
    const r = await drain(out)
    expect(r.error).toBeUndefined()
    expect(r.bytes.length).toBe(0)
  })

  it('a source that cannot be opened fails with its name', async () => {
    const blob: LayerBlob = {
      mediaType: 'x',
      compression: 'none',
      open: () => Promise.reject(Object.assign(new Error('ENOENT'), { code: 'ENOENT', path: '/nope/layer.tar' })),
    }
    await expect(openLayerTar(blob, 'layer 1')).rejects.toMatchObject({ code: 'E_NOT_FOUND', message: '/nope/layer.tar: no such file or directory' })
  })

  it('refuses an unsupported digest algorithm', async () => {
    await expect(openLayerTar(blobOf(tar, { compression: 'none', digest: 'md5:abc' }), 'layer 1')).rejects.toMatchObject({ code: 'E_INPUT' })
  })
})

/**
 * Open a layer of `zeros` compressed to `bomb`, read one chunk and pause: the bytes that came
 * out or wait in the stream after 300 ms (a decoder ignoring backpressure would inflate it all).
 */
async function bytesAheadOfPausedReader(bomb: Buffer, zeros: Buffer, compression: LayerCompression): Promise<number> {
  const { tar: out } = await openLayerTar(blobOf(bomb, { compression, digest: sha(bomb), size: bomb.length, diffId: sha(zeros) }), 'bomb')
  let produced = 0
  out.on('data', (c: Buffer) => {
    produced += c.length
    out.pause()
  })
  await new Promise((r) => setTimeout(r, 300))
  const ahead = produced + out.readableLength
  out.destroy()
  expect(produced).toBeGreaterThan(0)
  return ahead
}

describe('zstd-bomb-backpressure', () => {
  it('does not decompress ahead of a consumer that is not reading', async () => {
    // 64 MiB of zeros compress to a few KiB. Bounded by one feed slice's worth of output plus
    // stream buffers, far below 64 MiB.
    const zeros = Buffer.alloc(64 * 1024 * 1024)
    expect(await bytesAheadOfPausedReader(await zstdCompress(zeros, 3), zeros, 'zstd')).toBeLessThan(40 * 1024 * 1024)
  })
})

describe('gzip-bomb-backpressure', () => {
  it('does not inflate ahead of a consumer that is not reading, even within one fed slice', async () => {
    // 256 MiB of zeros gzip to ~256 KiB, i.e. one or two feed slices: Node's zlib stops
    // mid-slice when its reader's buffer is full, so what waits is a chunk or two, not the slice's
    // worth (up to 1032x its size).
    const zeros = Buffer.alloc(256 * 1024 * 1024)
    expect(await bytesAheadOfPausedReader(gzipSync(zeros, { level: 9 }), zeros, 'gzip')).toBeLessThan(8 * 1024 * 1024)
  })
})

describe('peek', () => {
  it('returns the head and leaves the stream whole', async () => {
    const s = Readable.from([Buffer.from('ab'), Buffer.from('cdef'), Buffer.from('gh')])
    const p = await peek(s, 4)
    expect(p.head.subarray(0, 4).toString()).toBe('abcd')
    const all: Buffer[] = []
    for await (const c of p.stream) all.push(c as Buffer)
    expect(Buffer.concat(all).toString()).toBe('abcdefgh')
  })

  it('works for streams shorter than the peek', async () => {
    const p = await peek(Readable.from([Buffer.from('ab')]), 6)
    expect(p.head.toString()).toBe('ab')
    const all: Buffer[] = []
    for await (const c of p.stream) all.push(c as Buffer)
    expect(Buffer.concat(all).toString()).toBe('ab')
  })
})
