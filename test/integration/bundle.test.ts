/**
 * Bundles from a real ext4 image (mkfs.ext4 -d), read back by the real CLI (node bin/run.js over
 * dist/) and by the real zstd and e2fsck. Tampered bundles are made the way an attacker or a
 * broken transfer would: decompress with zstd, change the tar, recompress with zstd.
 */
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type BundleManifest, serializeManifest } from '../../src/pipeline/bundle/manifest.js'
import { verifyBundle } from '../../src/pipeline/bundle/reader.js'
import { writeBundle, type WriteBundleResult, zstdCompressBound } from '../../src/pipeline/bundle/writer.js'
import { bale, ensureBuilt } from '../helpers/cli.js'
import { buildTar } from '../helpers/tar.js'
import { dataRanges } from '../../src/lib/sparse.js'

const repoRoot = path.resolve(import.meta.dirname, '..', '..')

let work: string
let image: string
let imageBytes: Buffer
let manifest: BundleManifest
let bundle: string
let written: WriteBundleResult

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

function manifestFor(rootfs: Buffer, over: Partial<BundleManifest> = {}): BundleManifest {
  return {
    schema_version: 1,
    name: 'itest',
    version: '1.2.3',
    description: 'integration test bundle',
    distro: 'none',
    arch: 'amd64',
    kernel_ref: 'default',
    created: '2024-05-06T07:08:09.000Z',
    source: { ref: 'rootfs-tar:itest.tar', platform: 'linux/amd64', layers: [{ diff_id: `sha256:${'1'.repeat(64)}`, media_type: 'application/vnd.oci.image.layer.v1.tar' }] },
    config: { entrypoint: ['/bin/sh'], cmd: ['-c', 'echo hi'], env: ['PATH=/bin'], user: '', workdir: '/', exposed_ports: ['80/tcp'] },
    rootfs: { file: 'rootfs.ext4', size: rootfs.length, sha256: sha256(rootfs) },
    agent: { version: '0.1.0', sha256: '2'.repeat(64) },
    ...over,
  }
}

/** Decompress with the zstd CLI, hand the tar's members to `edit`, recompress with the CLI. */
async function tamper(src: string, dest: string, edit: (manifest: Buffer, rootfs: Buffer) => Parameters<typeof buildTar>[0]): Promise<void> {
  const tar = execFileSync('zstd', ['-d', '-c', '-q', src], { maxBuffer: 256 * 1024 * 1024 })
  const mSize = parseInt(tar.toString('latin1', 124, 136).trim(), 8)
  const mData = tar.subarray(512, 512 + mSize)
  const rHeader = 512 + Math.ceil(mSize / 512) * 512
  const rSize = parseInt(tar.toString('latin1', rHeader + 124, rHeader + 136).trim(), 8)
  const rData = tar.subarray(rHeader + 512, rHeader + 512 + rSize)
  await fs.writeFile(dest, execFileSync('zstd', ['-c', '-q', '-3'], { input: buildTar(edit(Buffer.from(mData), Buffer.from(rData))), maxBuffer: 256 * 1024 * 1024 }))
}

beforeAll(async () => {
  ensureBuilt()
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-bundle-it-'))
  const tree = path.join(work, 'tree')
  await fs.mkdir(path.join(tree, 'etc'), { recursive: true })
  await fs.mkdir(path.join(tree, 'bin'))
  await fs.writeFile(path.join(tree, 'etc', 'hostname'), 'itest\n')
  await fs.writeFile(path.join(tree, 'bin', 'blob'), Buffer.alloc(3 * 1024 * 1024, 'bale '))
  image = path.join(work, 'rootfs.ext4')
  // Fixed UUID, hash seed and timestamps so that the image itself is reproducible.
  execFileSync('mkfs.ext4', ['-q', '-F', '-U', '11111111-2222-3333-4444-555555555555', '-E', 'hash_seed=66666666-7777-8888-9999-000000000000,root_owner=0:0', '-d', tree, image, '16M'], {
    env: { ...process.env, LC_ALL: 'C', E2FSPROGS_FAKE_TIME: '1700000000' },
  })
  imageBytes = await fs.readFile(image)
  manifest = manifestFor(imageBytes)
  bundle = path.join(work, 'itest.tar.zst')
  written = await writeBundle({ manifest, rootfsPath: image, out: bundle, level: 3 })
})

afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true })
})

describe('bundle from a real ext4 image', () => {
  it('writes a bundle whose sha256, size and integrity describe the file', async () => {
    const file = await fs.readFile(bundle)
    expect(written).toMatchObject({ path: bundle, sha256: sha256(file), size: file.length })
    expect(written.integrity).toBe(`sha512-${createHash('sha512').update(file).digest('base64')}`)
  })

  it('is reproducible: a second write gives the same sha256', async () => {
    const again = await writeBundle({ manifest, rootfsPath: image, out: path.join(work, 'again.tar.zst'), level: 3 })
    expect(again.sha256).toBe(written.sha256)
  })

  it('a sparse image gives the same bundle as the same bytes written out in full (holes read as zeros)', async () => {
    // On the repository's disk (FIEMAP), not os.tmpdir(), which may be a tmpfs elsewhere.
    const dir = await fs.mkdtemp(path.join(repoRoot, '.cache', 'bundle-sparse-'))
    try {
      const sparse = path.join(dir, 'sparse.ext4')
      execFileSync('mkfs.ext4', ['-q', '-F', '-U', '11111111-2222-3333-4444-555555555555', '-E', 'root_owner=0:0,nodiscard,assume_storage_prezeroed=1', '-d', path.join(work, 'tree'), sparse, '64M'], {
        env: { ...process.env, LC_ALL: 'C', E2FSPROGS_FAKE_TIME: '1700000000' },
      })
      const ranges = await dataRanges(sparse, 64 << 20)
      expect(ranges).toBeDefined()
      // Several whole 8 MiB frames in holes, so the writer's shared zero frame is used.
      expect(ranges?.reduce((n, r) => n + r.end - r.start, 0)).toBeLessThan(32 << 20)
      const dense = path.join(dir, 'dense.ext4')
      await fs.writeFile(dense, await fs.readFile(sparse))
      const m = manifestFor(await fs.readFile(dense))
      const a = await writeBundle({ manifest: m, rootfsPath: sparse, out: path.join(dir, 'a.tar.zst'), level: 3 })
      const b = await writeBundle({ manifest: m, rootfsPath: dense, out: path.join(dir, 'b.tar.zst'), level: 3 })
      expect(a.sha256).toBe(b.sha256)
      const r = await bale(['bundle', 'verify', a.path])
      expect(r.code).toBe(0)
    } finally {
      await fs.rm(dir, { recursive: true, force: true })
    }
  })

  it('fills in rootfs.sha256 when the manifest leaves it out, hashing every byte, holes included', async () => {
    const { sha256: _given, ...rootfs } = manifest.rootfs
    const out = path.join(work, 'filled.tar.zst')
    const filled = await writeBundle({ manifest: { ...manifest, rootfs }, rootfsPath: image, out, level: 3 })
    expect(filled.manifest.rootfs.sha256).toBe(sha256(imageBytes))
    // The same bytes as a bundle written from a manifest that gave the digest.
    expect(filled.sha256).toBe(written.sha256)
    expect(written.manifest).toEqual(manifest)
  })

  it('refuses a manifest whose rootfs.sha256 the image does not hash to (E_DIGEST), leaving no file', async () => {
    const out = path.join(work, 'wrong-digest.tar.zst')
    const wrong = { ...manifest, rootfs: { ...manifest.rootfs, sha256: 'f'.repeat(64) } }
    await expect(writeBundle({ manifest: wrong, rootfsPath: image, out, level: 3 })).rejects.toMatchObject({
      code: 'E_DIGEST',
      message: `${image}: sha256 ${sha256(imageBytes)}, but the manifest says rootfs.sha256 ${'f'.repeat(64)}`,
    })
    expect((await fs.readdir(work)).filter((f) => f.startsWith('wrong-digest'))).toEqual([])
  })

  it('starts with the tar head as its own frame, padded to its reserved room by a skippable frame', async () => {
    const file = await fs.readFile(bundle)
    const head = serializeManifest(manifest)
    const headLength = 512 + Math.ceil(head.length / 512) * 512 + 512
    const room = zstdCompressBound(headLength) + 8
    // The zstd CLI decompresses just the head frame (it stops at the skippable frame's end).
    const skippableAt = file.indexOf(Buffer.from([0x50, 0x2a, 0x4d, 0x18]))
    expect(skippableAt).toBeGreaterThan(0)
    expect(skippableAt + 8 + file.readUInt32LE(skippableAt + 4)).toBe(room)
    const headTar = execFileSync('zstd', ['-dc'], { input: file.subarray(0, room) })
    expect(headTar.length).toBe(headLength)
    expect(headTar.subarray(512, 512 + head.length).equals(head)).toBe(true)
    // The rest is the rootfs's frames: the whole file, through zstd and tar, gives the image back.
    const dir = await fs.mkdtemp(path.join(work, 'cli-'))
    execFileSync('sh', ['-c', `zstd -dc '${bundle}' | tar -x -C '${dir}'`])
    expect((await fs.readFile(path.join(dir, 'rootfs.ext4'))).equals(imageBytes)).toBe(true)
    expect((await fs.readFile(path.join(dir, 'manifest.json'))).equals(head)).toBe(true)
  })

  it('bale bundle verify: every check passes, e2fsck included, and no temporary is left', async () => {
    const tmp = await fs.mkdtemp(path.join(work, 'tmp-'))
    const r = await bale(['bundle', 'verify', bundle], { env: { TMPDIR: tmp } })
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(r.stdout.split('\n').filter((l) => l.startsWith('ok  '))).toEqual([
      'ok  zstd frames',
      'ok  tar layout (manifest.json, rootfs.ext4)',
      'ok  manifest schema',
      'ok  rootfs.ext4 size and sha256',
      'ok  e2fsck -fn',
    ])
    expect(r.stdout).toContain(`sha256 ${written.sha256}`)
    expect(await fs.readdir(tmp)).toEqual([])

    const json = await bale(['bundle', 'verify', bundle, '--json'])
    expect(json.code).toBe(0)
    const report = JSON.parse(json.stdout) as { sha256: string; size: number; rootfs: { sha256: string }; manifest: BundleManifest }
    expect(report).toMatchObject({ sha256: written.sha256, size: written.size, rootfs: { sha256: manifest.rootfs.sha256 }, manifest })
  })

  it('bale bundle inspect prints the manifest; --json prints it as manifest.json has it', async () => {
    const r = await bale(['bundle', 'inspect', bundle])
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/^name: +itest$/m)
    expect(r.stdout).toMatch(/^version: +1\.2\.3$/m)
    expect(r.stdout).toMatch(new RegExp(`^rootfs: +rootfs\\.ext4 ${imageBytes.length} bytes sha256 ${manifest.rootfs.sha256}$`, 'm'))
    expect(r.stdout).toMatch(/^entrypoint: +\["\/bin\/sh"\]$/m)
    const json = await bale(['bundle', 'inspect', bundle, '--json'])
    expect(JSON.parse(json.stdout)).toEqual(manifest)
  })

  it('bale bundle unpack writes both files, byte for byte', async () => {
    const dir = path.join(work, 'unpacked')
    const r = await bale(['bundle', 'unpack', bundle, dir])
    expect(r.code).toBe(0)
    expect(r.stdout.trim().split('\n')).toEqual([path.join(dir, 'manifest.json'), path.join(dir, 'rootfs.ext4')])
    expect((await fs.readFile(path.join(dir, 'rootfs.ext4'))).equals(imageBytes)).toBe(true)
    expect((await fs.readFile(path.join(dir, 'manifest.json'))).equals(serializeManifest(manifest))).toBe(true)
    // And what came out is still a clean filesystem.
    execFileSync('e2fsck', ['-fn', path.join(dir, 'rootfs.ext4')], { stdio: 'ignore' })
  })

  it('reads a bundle recompressed by the zstd CLI (one frame, checksummed)', async () => {
    const other = path.join(work, 'cli.tar.zst')
    await tamper(bundle, other, (m, r) => [
      { name: 'manifest.json', content: m },
      { name: 'rootfs.ext4', content: r },
    ])
    const report = await verifyBundle(other)
    expect(report.rootfs.sha256).toBe(manifest.rootfs.sha256)
  })
})

describe('bale bundle verify refuses, with one line naming what is wrong', () => {
  it('a flipped byte in the rootfs: names the rootfs sha256, exit 4 (E_DIGEST)', async () => {
    const bad = path.join(work, 'flipped-rootfs.tar.zst')
    let got = ''
    await tamper(bundle, bad, (m, r) => {
      const at = imageBytes.indexOf(Buffer.from('itest\n'))
      r[at] = 'I'.charCodeAt(0)
      got = sha256(r)
      return [
        { name: 'manifest.json', content: m },
        { name: 'rootfs.ext4', content: r },
      ]
    })
    const r = await bale(['bundle', 'verify', bad])
    expect(r.code).toBe(4)
    expect(r.stderr).toBe(`bale: ${bad}: rootfs.ext4: expected sha256 ${manifest.rootfs.sha256} got ${got}\n`)
  })

  it('a flipped byte in the compressed file: fails, naming the file', async () => {
    const bad = path.join(work, 'flipped-zstd.tar.zst')
    const data = await fs.readFile(bundle)
    const at = Math.floor(data.length / 2)
    data[at] = (data[at] as number) ^ 0x55
    await fs.writeFile(bad, data)
    const r = await bale(['bundle', 'verify', bad])
    expect([3, 4]).toContain(r.code)
    expect(r.stderr.startsWith(`bale: ${bad}: `)).toBe(true)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
  })

  it('a tampered manifest (rootfs.sha256 replaced): the recorded digest no longer matches', async () => {
    const bad = path.join(work, 'tampered-manifest.tar.zst')
    const forged = 'f'.repeat(64)
    await tamper(bundle, bad, (m, r) => [
      { name: 'manifest.json', content: Buffer.from(m.toString().replace(manifest.rootfs.sha256, forged)) },
      { name: 'rootfs.ext4', content: r },
    ])
    const r = await bale(['bundle', 'verify', bad])
    expect(r.code).toBe(4)
    expect(r.stderr).toBe(`bale: ${bad}: rootfs.ext4: expected sha256 ${forged} got ${manifest.rootfs.sha256}\n`)
  })

  it('a manifest that breaks the schema: names the field, exit 3 (E_INPUT)', async () => {
    const bad = path.join(work, 'bad-schema.tar.zst')
    await tamper(bundle, bad, (m, r) => [
      { name: 'manifest.json', content: Buffer.from(m.toString().replace('"file": "rootfs.ext4"', '"file": "../../etc/shadow"')) },
      { name: 'rootfs.ext4', content: r },
    ])
    const r = await bale(['bundle', 'verify', bad])
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(new RegExp(`^bale: ${bad}: manifest\\.json: rootfs\\.file: .*\\n$`))
  })

  it('an extra tar member: exit 3, names the member', async () => {
    const bad = path.join(work, 'extra-member.tar.zst')
    await tamper(bundle, bad, (m, r) => [
      { name: 'manifest.json', content: m },
      { name: 'rootfs.ext4', content: r },
      { name: 'run-me.sh', content: '#!/bin/sh\necho pwned\n' },
    ])
    const r = await bale(['bundle', 'verify', bad])
    expect(r.code).toBe(3)
    expect(r.stderr).toBe(`bale: ${bad}: unexpected member 'run-me.sh' after rootfs.ext4 (a bundle holds exactly manifest.json and rootfs.ext4)\n`)
  })

  it('a rootfs that matches its manifest but is not a clean ext4: e2fsck fails, exit 7 (E_TOOL)', async () => {
    // A wrong link count: metadata damage that e2fsck -fn reports (and, read-only, leaves).
    const brokenPath = path.join(work, 'broken.ext4')
    await fs.copyFile(image, brokenPath)
    execFileSync('debugfs', ['-w', '-R', 'sif /etc/hostname links_count 7', brokenPath], { stdio: 'ignore' })
    const broken = await fs.readFile(brokenPath)
    const bad = path.join(work, 'broken.tar.zst')
    await writeBundle({ manifest: manifestFor(broken), rootfsPath: brokenPath, out: bad, level: 3 })
    const r = await bale(['bundle', 'verify', bad])
    expect(r.code).toBe(7)
    expect(r.stderr).toMatch(new RegExp(`^bale: ${bad}: rootfs\\.ext4 fails e2fsck -fn \\(exit \\d+\\): .+\\n$`))
  })

  it('a missing file: exit 6 (E_NOT_FOUND), for inspect, verify and unpack', async () => {
    const nope = path.join(work, 'nope.tar.zst')
    for (const args of [['bundle', 'inspect', nope], ['bundle', 'verify', nope], ['bundle', 'unpack', nope, path.join(work, 'u')]]) {
      const r = await bale(args)
      expect(r.code).toBe(6)
      expect(r.stderr).toBe(`bale: ${nope}: no such file or directory\n`)
    }
  })
})
