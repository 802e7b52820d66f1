import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { compress } from '@mongodb-js/zstd'
import ssri from 'ssri'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { serializeManifest } from '../../../src/pipeline/bundle/manifest.js'
import { extractRootfs, readBundleManifest, unpackBundle } from '../../../src/pipeline/bundle/reader.js'
import { FRAME_SIZE, writeBundle } from '../../../src/pipeline/bundle/writer.js'
import { splitFrames } from '../../../src/pipeline/bundle/zstd-frames.js'
import { buildTar } from '../../helpers/tar.js'
import { manifestFor } from './fixtures.js'

let dir: string
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-bundle-'))
})
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true })
})

/** A fake rootfs spanning several frames: compressible runs, zeros and random bytes. */
function fakeRootfs(): Buffer {
  return Buffer.concat([Buffer.from('ext4-ish '.repeat(400_000)), Buffer.alloc(FRAME_SIZE), randomBytes(FRAME_SIZE / 2), Buffer.from('tail')])
}

async function failure(p: Promise<unknown>): Promise<BaleError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  )
  expect(e).toBeInstanceOf(BaleError)
  return e as BaleError
}

async function* fileChunks(b: Buffer): AsyncGenerator<Buffer> {
  for (let i = 0; i < b.length; i += 65536) yield b.subarray(i, i + 65536)
}

async function collectUnits<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const u of it) out.push(u)
  return out
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

describe('writeBundle + reader', () => {
  it('writes a tar.zst any zstd and tar read, with fixed headers, and reads it back', async () => {
    const rootfs = fakeRootfs()
    const rootfsPath = path.join(dir, 'rootfs.img')
    await fs.writeFile(rootfsPath, rootfs)
    const manifest = manifestFor(rootfs)
    const out = path.join(dir, 'b.tar.zst')
    const res = await writeBundle({ manifest, rootfsPath, out, level: 3, concurrency: 2 })

    const file = await fs.readFile(out)
    expect(res).toEqual({ path: out, sha256: sha256(file), size: file.length, integrity: ssri.fromData(file, { algorithms: ['sha512'] }).toString(), manifest })
    expect(res.integrity).toMatch(/^sha512-[A-Za-z0-9+/]+=*$/)
    expect(await fs.readdir(dir)).toEqual(['b.tar.zst', 'rootfs.img'])

    // Interop: the zstd CLI decompresses the frames as one stream; GNU tar lists exactly two members.
    const tar = execFileSync('zstd', ['-d', '-c', '-q', out], { maxBuffer: 64 * 1024 * 1024 })
    const listing = execFileSync('tar', ['--numeric-owner', '--full-time', '-tvf', '-'], { input: tar, env: { ...process.env, TZ: 'UTC' } }).toString().trim().split('\n')
    expect(listing.map((l) => l.split(/ +/))).toEqual([
      ['-rw-r--r--', '0/0', String(serializeManifest(manifest).length), '2023-11-14', '22:13:20', 'manifest.json'],
      ['-rw-r--r--', '0/0', String(rootfs.length), '2023-11-14', '22:13:20', 'rootfs.ext4'],
    ])
    // Independent frames: the tar's head (headers and manifest) alone, then one every FRAME_SIZE
    // bytes of the rest (the skippable frame that pads the head's room is passed over).
    const headLength = 512 + Math.ceil(serializeManifest(manifest).length / 512) * 512 + 512
    const frames = await collectUnits(splitFrames(fileChunks(file), { name: out }))
    expect(frames.map((u) => u.kind)).toEqual(Array.from({ length: 1 + Math.ceil((tar.length - headLength) / FRAME_SIZE) }, () => 'frame'))

    expect(await readBundleManifest(out)).toEqual(manifest)
    const dest = path.join(dir, 'x.ext4')
    expect(await extractRootfs(out, dest)).toEqual({ sha256: manifest.rootfs.sha256, size: rootfs.length })
    expect((await fs.readFile(dest)).equals(rootfs)).toBe(true)

    const unpacked = await unpackBundle(out, path.join(dir, 'unpacked'))
    expect(unpacked).toEqual({ manifest, rootfs: path.join(dir, 'unpacked', 'rootfs.ext4') })
    expect((await fs.readFile(path.join(dir, 'unpacked', 'manifest.json'))).equals(serializeManifest(manifest))).toBe(true)
    expect(await fs.readdir(path.join(dir, 'unpacked'))).toEqual(['manifest.json', 'rootfs.ext4'])
  })

  it('is deterministic: same inputs, any concurrency, same bytes', async () => {
    const rootfs = fakeRootfs()
    const rootfsPath = path.join(dir, 'rootfs.img')
    await fs.writeFile(rootfsPath, rootfs)
    const manifest = manifestFor(rootfs)
    const a = await writeBundle({ manifest, rootfsPath, out: path.join(dir, 'a.tar.zst'), level: 3, concurrency: 1 })
    const b = await writeBundle({ manifest, rootfsPath, out: path.join(dir, 'b.tar.zst'), level: 3, concurrency: 3 })
    expect(b.sha256).toBe(a.sha256)
    expect(b.integrity).toBe(a.integrity)
  })

  it('zstd-level-dropped: the level reaches the compressor (@mongodb-js/zstd 1.2.2 drops it)', async () => {
    // Text with long-range repeats: higher levels find more of them.
    const words = Array.from({ length: 5000 }, (_, i) => `w${(i * 7919) % 1000}`).join(' ')
    const rootfs = Buffer.from(words.repeat(40))
    const rootfsPath = path.join(dir, 'rootfs.img')
    await fs.writeFile(rootfsPath, rootfs)
    const manifest = manifestFor(rootfs)
    const sizes = []
    for (const level of [1, 19]) sizes.push((await writeBundle({ manifest, rootfsPath, out: path.join(dir, `l${level}.tar.zst`), level })).size)
    expect(sizes[1]).toBeLessThan(sizes[0] as number)
  })

  it('refuses bad inputs before writing anything, and leaves no temporary behind', async () => {
    const rootfs = Buffer.from('small rootfs')
    const rootfsPath = path.join(dir, 'rootfs.img')
    await fs.writeFile(rootfsPath, rootfs)
    const out = path.join(dir, 'b.tar.zst')
    const wrongSize = manifestFor(rootfs, { rootfs: { file: 'rootfs.ext4', size: 99, sha256: sha256(rootfs) } })
    expect((await failure(writeBundle({ manifest: wrongSize, rootfsPath, out, level: 3 }))).message).toBe(`${rootfsPath}: ${rootfs.length} bytes, but the manifest says rootfs.size 99`)
    expect((await failure(writeBundle({ manifest: manifestFor(rootfs), rootfsPath, out, level: 0 }))).code).toBe('E_USAGE')
    expect((await failure(writeBundle({ manifest: manifestFor(rootfs), rootfsPath: path.join(dir, 'nope'), out, level: 3 }))).code).toBe('E_NOT_FOUND')
    const noDir = await failure(writeBundle({ manifest: manifestFor(rootfs), rootfsPath, out: path.join(dir, 'missing', 'b.tar.zst'), level: 3 }))
    expect(noDir).toMatchObject({ code: 'E_NOT_FOUND', message: `${path.join(dir, 'missing')}: no such directory (for ${path.join(dir, 'missing', 'b.tar.zst')})` })
    expect(await fs.readdir(dir)).toEqual(['rootfs.img'])
  })

  it('a rootfs that changes size while being written fails and leaves no output', async () => {
    const rootfs = fakeRootfs()
    const rootfsPath = path.join(dir, 'rootfs.img')
    await fs.writeFile(rootfsPath, rootfs)
    const manifest = manifestFor(rootfs)
    const writing = writeBundle({ manifest, rootfsPath, out: path.join(dir, 'b.tar.zst'), level: 3, concurrency: 1 })
    await fs.truncate(rootfsPath, 1000)
    const e = await writing.then(
      () => undefined,
      (err: unknown) => err,
    )
    expect(e).toMatchObject({ code: 'E_INPUT', message: `${rootfsPath}: changed while the bundle was written (${rootfs.length} bytes expected)` })
    expect(await fs.readdir(dir)).toEqual(['rootfs.img'])
  })
})

describe('reader: the bundle layout is exact', () => {
  const rootfs = Buffer.from('rootfs bytes')
  const manifest = manifestFor(rootfs)
  const mBytes = serializeManifest(manifest)

  async function bundleOf(entries: Parameters<typeof buildTar>[0]): Promise<string> {
    const file = path.join(dir, 'hand.tar.zst')
    await fs.writeFile(file, await compress(buildTar(entries), 3))
    return file
  }

  it('an extra member', async () => {
    const f = await bundleOf([
      { name: 'manifest.json', content: mBytes },
      { name: 'rootfs.ext4', content: rootfs },
      { name: 'extra.sh', content: 'echo pwned' },
    ])
    expect((await failure(extractRootfs(f, path.join(dir, 'r')))).message).toBe(`${f}: unexpected member 'extra.sh' after rootfs.ext4 (a bundle holds exactly manifest.json and rootfs.ext4)`)
    expect(await fs.readdir(dir)).toEqual(['hand.tar.zst'])
  })

  it('members in the wrong order', async () => {
    const f = await bundleOf([
      { name: 'rootfs.ext4', content: rootfs },
      { name: 'manifest.json', content: mBytes },
    ])
    expect((await failure(readBundleManifest(f))).message).toBe(`${f}: member 1 is 'rootfs.ext4', expected 'manifest.json'`)
  })

  it('a member that is not a regular file', async () => {
    const f = await bundleOf([
      { name: 'manifest.json', content: mBytes },
      { name: 'rootfs.ext4', type: 'symlink', linkname: '/etc/shadow' },
    ])
    expect((await failure(extractRootfs(f, path.join(dir, 'r')))).message).toBe(`${f}: rootfs.ext4 is a symlink, not a regular file`)
  })

  it('no rootfs member', async () => {
    const f = await bundleOf([{ name: 'manifest.json', content: mBytes }])
    expect((await failure(unpackBundle(f, path.join(dir, 'u')))).message).toBe(`${f}: no rootfs.ext4 member`)
    expect(await fs.readdir(path.join(dir, 'u'))).toEqual([])
  })

  it('a rootfs whose bytes do not match the manifest: E_DIGEST, nothing left at the destination', async () => {
    const f = await bundleOf([
      { name: 'manifest.json', content: mBytes },
      { name: 'rootfs.ext4', content: Buffer.from('rootfs bytez') },
    ])
    const e = await failure(extractRootfs(f, path.join(dir, 'r')))
    expect(e).toMatchObject({ code: 'E_DIGEST', message: `${f}: rootfs.ext4: expected sha256 ${manifest.rootfs.sha256} got ${sha256(Buffer.from('rootfs bytez'))}` })
    expect(await fs.readdir(dir)).toEqual(['hand.tar.zst'])
  })

  it('a manifest that fails the schema names the field', async () => {
    const bad = Buffer.from(mBytes.toString().replace('"schema_version": 1', '"schema_version": "1"'))
    const f = await bundleOf([
      { name: 'manifest.json', content: bad },
      { name: 'rootfs.ext4', content: rootfs },
    ])
    expect((await failure(readBundleManifest(f))).message).toBe(`${f}: manifest.json: schema_version "1" is not supported (this bale reads 1)`)
  })

  it('a file that is not zstd, and a missing file', async () => {
    const f = path.join(dir, 'plain.tar')
    await fs.writeFile(f, buildTar([{ name: 'manifest.json', content: mBytes }]))
    expect((await failure(readBundleManifest(f))).message).toBe(`${f}: not a zstd stream (offset 0)`)
    expect((await failure(readBundleManifest(path.join(dir, 'nope.tar.zst')))).code).toBe('E_NOT_FOUND')
  })

  it('a bundle cut at a frame boundary is a truncated tar', async () => {
    const full = buildTar([
      { name: 'manifest.json', content: mBytes },
      { name: 'rootfs.ext4', content: Buffer.alloc(4096, 1) },
    ])
    const f = path.join(dir, 'cut.tar.zst')
    await fs.writeFile(f, await compress(full.subarray(0, 2048), 3))
    const e = await failure(extractRootfs(f, path.join(dir, 'r')))
    expect(e.code).toBe('E_INPUT')
    expect(e.message.startsWith(`${f}: `)).toBe(true)
  })
})
