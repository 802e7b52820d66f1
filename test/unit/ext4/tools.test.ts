// mkfsReadsTar and the fsync-free preload against fake mke2fs binaries (the real one, >= 1.47.1, is checked in the
// integration tests): the answer follows what the tool does with `-d -`, not its version text.
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'

let dir: string
const savedPath = process.env.PATH

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'bale-mkfs-probe-'))
  vi.resetModules() // the answer is cached per process (per module instance)
})
afterEach(async () => {
  process.env.PATH = savedPath
  await rm(dir, { recursive: true, force: true })
})

async function withFakeMkfs(script: string): Promise<boolean> {
  const bin = path.join(dir, 'bin')
  await rm(bin, { recursive: true, force: true })
  await mkdir(bin)
  await writeFile(path.join(bin, 'mkfs.ext4'), `#!/bin/sh\n${script}\n`)
  await chmod(path.join(bin, 'mkfs.ext4'), 0o755)
  process.env.PATH = `${bin}:${savedPath ?? ''}`
  const { mkfsReadsTar } = await import('../../../src/pipeline/ext4/tools.js')
  return mkfsReadsTar(dir)
}

describe('mkfsReadsTar', () => {
  it('is false where mke2fs takes "-" for a directory (1.47.0: "__populate_fs: Not a directory")', async () => {
    const v147_0 = 'cat >/dev/null; echo \'__populate_fs: Not a directory while changing working directory to "-"\' >&2; exit 1'
    await expect(withFakeMkfs(v147_0)).resolves.toBe(false)
  })

  it('is false where libarchive cannot be loaded', async () => {
    await expect(withFakeMkfs("echo '__populate_fs_from_tar: you need libarchive to be able to process tarballs' >&2; exit 1")).resolves.toBe(false)
  })

  it('is true where a tiny filesystem is made from an empty tar on stdin, and the whole tar was offered', async () => {
    // The fake checks it was given `-d -` and reads the archive: two zero blocks.
    const ok = 'for a; do [ "$prev" = -d ] && [ "$a" = - ] && d=1; prev=$a; done; [ "$d" = 1 ] || exit 2; n=$(wc -c); [ "$n" -eq 1024 ]'
    await expect(withFakeMkfs(ok)).resolves.toBe(true)
  })

  it('leaves nothing behind in the scratch directory', async () => {
    await withFakeMkfs('cat >/dev/null; exit 0')
    expect((await readdir(dir)).sort()).toEqual(['bin'])
  })
})

describe('noFsyncPreload and withPreload (libeatmydata for the intermediate image)', () => {
  it('finds libeatmydata.so.1 in the first library directory that has it, and nothing where none has', async () => {
    const { noFsyncPreload } = await import('../../../src/pipeline/ext4/tools.js')
    const a = path.join(dir, 'a')
    const b = path.join(dir, 'b')
    await mkdir(a)
    await mkdir(b)
    expect(noFsyncPreload([a, b])).toBeUndefined()
    await writeFile(path.join(b, 'libeatmydata.so.1'), '')
    expect(noFsyncPreload([a, b])).toBe(path.join(b, 'libeatmydata.so.1'))
  })

  it('adds the library after what the environment already preloads, and changes nothing without one', async () => {
    const { withPreload } = await import('../../../src/pipeline/ext4/tools.js')
    expect(withPreload({ A: '1' }, undefined)).toEqual({ A: '1' })
    expect(withPreload({ A: '1' }, '/l/x.so')).toEqual({ A: '1', LD_PRELOAD: '/l/x.so' })
    expect(withPreload({ LD_PRELOAD: ' /l/mine.so ' }, '/l/x.so')).toEqual({ LD_PRELOAD: '/l/mine.so /l/x.so' })
  })

  it('mkfs runs mke2fs with it preloaded when the host has it (the set-up installs libeatmydata1)', async () => {
    const bin = path.join(dir, 'bin')
    await mkdir(bin)
    const seen = path.join(dir, 'seen')
    await writeFile(path.join(bin, 'mkfs.ext4'), `#!/bin/sh\nprintf '%s' "$LD_PRELOAD" > '${seen}'\n`)
    await chmod(path.join(bin, 'mkfs.ext4'), 0o755)
    process.env.PATH = `${bin}:${savedPath ?? ''}`
    const { mkfs, noFsyncPreload } = await import('../../../src/pipeline/ext4/tools.js')
    const lib = noFsyncPreload()
    await mkfs({ input: { dir }, out: path.join(dir, 'img'), blocks: 1024, inodes: 64, uuid: '11111111-2222-4333-8444-555555555555', hashSeed: '11111111-2222-4333-8444-555555555555', timestamp: 1, conf: path.join(dir, 'conf'), log: path.join(dir, 'log') })
    expect(await readFile(seen, 'utf8')).toBe(lib ?? '')
    if (process.env.CI) expect(lib).toMatch(/\/libeatmydata\.so\.1$/)
  })
})
