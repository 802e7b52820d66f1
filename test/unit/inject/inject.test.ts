import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { injectGuest } from '../../../src/pipeline/inject/index.js'
import { blobPath, type FlatTree, type Inode } from '../../../src/pipeline/tree.js'

let dir: string
let tree: FlatTree
let init: string

function node(ino: number, kind: Inode['kind'], mode: number): Inode {
  return { ino, kind, mode, uid: 0, gid: 0, mtime: 5, size: 0, xattrs: new Map() }
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'bale-inject-'))
  await writeFile(path.join(dir, 'fake-init'), 'ELF-ish bytes')
  init = path.join(dir, 'fake-init')
  const staging = path.join(dir, 'staging')
  await mkdir(path.join(staging, 'blobs'), { recursive: true })
  tree = { staging, packed: false, entries: new Map([['', node(1, 'dir', 0o755)], ['proc', node(2, 'dir', 0o700)], ['.bale', node(3, 'dir', 0o777)], ['.bale/evil', node(4, 'file', 0o4777)]]), nextIno: 5 }
})
afterEach(async () => rm(dir, { recursive: true, force: true }))

describe('injectGuest', () => {
  it('adds /.bale/init and config.json root-owned with exact modes, replacing any image /.bale', async () => {
    const res = await injectGuest(tree, {
      initBinary: init,
      config: { entrypoint: ['/bin/app'], cmd: ['-v'], env: ['A=1'], user: 'www', workingDir: '/srv' },
      mtime: 1234,
    })
    const initNode = tree.entries.get('.bale/init')!
    expect(initNode).toMatchObject({ kind: 'file', mode: 0o755, uid: 0, gid: 0, mtime: 1234, size: 13 })
    expect(await readFile(blobPath(tree, initNode), 'utf8')).toBe('ELF-ish bytes')
    const cfgNode = tree.entries.get('.bale/config.json')!
    expect(cfgNode).toMatchObject({ kind: 'file', mode: 0o644, uid: 0, gid: 0 })
    expect(JSON.parse(await readFile(blobPath(tree, cfgNode), 'utf8'))).toEqual({
      entrypoint: ['/bin/app'], cmd: ['-v'], env: ['A=1'], user: 'www', workdir: '/srv', hostname: 'bale',
    })
    expect(tree.entries.get('.bale')).toMatchObject({ kind: 'dir', mode: 0o755 })
    expect(tree.entries.has('.bale/evil')).toBe(false)
    expect(res.initSha256).toBe(createHash('sha256').update('ELF-ish bytes').digest('hex'))
  })

  it('creates the mount points a distroless image lacks, keeping existing ones', async () => {
    await injectGuest(tree, { initBinary: init, config: {}, mtime: 0 })
    for (const p of ['dev', 'sys', 'run', 'etc']) expect(tree.entries.get(p)?.kind).toBe('dir')
    expect(tree.entries.get('tmp')).toMatchObject({ kind: 'dir', mode: 0o1777 })
    expect(tree.entries.get('proc')?.mode).toBe(0o700) // the image's own, untouched
  })

  it('fails naming the binary and the build command when the guest is not built', async () => {
    await expect(injectGuest(tree, { initBinary: path.join(dir, 'missing'), config: {}, mtime: 0 })).rejects.toThrow(/missing not found: build it with `npm run build:guest`/)
    expect(await readdir(path.join(tree.staging, 'blobs'))).toEqual([])
  })
})
