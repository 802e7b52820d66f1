import { readdir, stat } from 'node:fs/promises'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { applyLayer, createTree } from '../../../src/pipeline/flatten/index.js'
import { tarStream } from '../../helpers/tar.js'
import { flatten, newStaging, removeStagings, ROOT, view } from './harness.js'

afterEach(removeStagings)

describe('createTree', () => {
  it('starts with the root directory and an empty 0700 blobs directory', async () => {
    const staging = await newStaging()
    const tree = await createTree(staging)
    expect(tree.staging).toBe(staging)
    expect(await view(tree)).toEqual({ '': ROOT })
    expect(tree.entries.get('')?.mtime).toBe(0)
    expect(await readdir(staging)).toEqual(['blobs'])
    expect((await stat(path.join(staging, 'blobs'))).mode & 0o7777).toBe(0o700)
    expect(tree.nextIno).toBeGreaterThan(tree.entries.get('')?.ino ?? Infinity)
  })

  it('refuses a staging directory that already has blobs (nothing pre-planted is reused)', async () => {
    const staging = await newStaging()
    await createTree(staging)
    await expect(createTree(staging)).rejects.toThrow(/EEXIST/)
  })
})

describe('applyLayer', () => {
  it('builds files, directories and implicit parents, and reports entries and bytes', async () => {
    const staging = await newStaging()
    const tree = await createTree(staging)
    const stats = await applyLayer(
      tree,
      tarStream([
        { name: 'etc', type: 'dir', mode: 0o755 },
        { name: 'etc/hostname', content: 'box\n' },
        { name: 'usr/bin/tool', content: 'ELF', mode: 0o755 },
        { name: '.wh.nothing' },
      ]),
      { index: 0, label: 'layer 1' },
    )
    expect(stats).toEqual({ entries: 4, bytes: 7 })
    expect(await view(tree)).toEqual({
      '': ROOT,
      etc: 'dir 0755 0:0',
      'etc/hostname': 'file 0644 0:0 "box\\n"',
      usr: 'dir 0755 0:0',
      'usr/bin': 'dir 0755 0:0',
      'usr/bin/tool': 'file 0755 0:0 "ELF"',
    })
  })

  it('gives every regular file its own inode number, which names its blob', async () => {
    const tree = await flatten([[{ name: 'a', content: '1' }, { name: 'b', content: '2' }]])
    const a = tree.entries.get('a')
    const b = tree.entries.get('b')
    expect(a?.ino).not.toBe(b?.ino)
    const inos = [...tree.entries.values()].map((i) => i.ino)
    expect(new Set(inos).size).toBe(inos.length)
    expect(Math.max(...inos)).toBeLessThan(tree.nextIno)
  })

  it('treats "./" and "/" prefixes as the image root and a root entry as the root directory', async () => {
    const tree = await flatten([
      [
        { name: './', type: 'dir', mode: 0o700, mtime: 5 },
        { name: './a', content: 'A' },
        { name: '/b', content: 'B' },
        { name: '//c/./d', content: 'D' },
      ],
    ])
    expect(await view(tree)).toEqual({
      '': 'dir 0700 0:0 @5',
      a: 'file 0644 0:0 "A"',
      b: 'file 0644 0:0 "B"',
      c: 'dir 0755 0:0',
      'c/d': 'file 0644 0:0 "D"',
    })
  })
})
