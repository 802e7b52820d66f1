// The image reader and inode patcher (src/pipeline/ext4/image.ts) against images made by the real
// mkfs.ext4 (through buildExt4), then reshaped or damaged with the real debugfs and e2fsck: an
// htree directory, a fragmented directory with a three-level extent tree, names as raw bytes,
// and every check the reader makes.
import { execFileSync, spawnSync } from 'node:child_process'
import { promises as fs, openSync, readSync, writeSync, closeSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { buildExt4, type Ext4Options } from '../../../src/pipeline/ext4/index.js'
import { Ext4Image, encodeTime } from '../../../src/pipeline/ext4/image.js'
import { TreeBuilder } from './fixture.js'

const OPTS: Ext4Options = {
  uuid: '7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b',
  hashSeed: '2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f',
  timestamp: 1_700_000_000,
}
const ENV = { ...process.env, LC_ALL: 'C' }

let work: string
beforeAll(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-ext4-image-'))
})
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true })
})

function run(args: string[], script?: Buffer | string): string {
  const r = spawnSync(args[0] ?? '', args.slice(1), { env: ENV, input: script, stdio: ['pipe', 'pipe', 'pipe'] })
  return `${r.stdout.toString()}${r.stderr.toString()}`
}

/** Run debugfs -w commands (a script may hold raw bytes), returning its output. */
function debugfsW(image: string, script: Buffer | string): string {
  const file = path.join(work, 'cmds.debugfs')
  execFileSync('sh', ['-c', 'cat > "$1"', 'sh', file], { input: script })
  return run(['debugfs', '-w', '-f', file, image])
}

/** `ls -p DIR`: every entry's name → inode number, as debugfs reads them. */
function lsInodes(image: string, dir: string): Map<string, number> {
  const m = new Map<string, number>()
  for (const line of run(['debugfs', '-R', `ls -p "${dir}"`, image]).split('\n')) {
    const e = /^\/(\d+)\/[0-7]+\/\d+\/\d+\/([^/]*)\/\d*\/$/.exec(line)
    if (e?.[1] && e[2] !== undefined && e[2] !== '.' && e[2] !== '..') m.set(e[2], Number(e[1]))
  }
  return m
}

function readInodes(image: string, tree: TreeBuilder): Map<string, number> {
  const img = Ext4Image.open(image, false)
  try {
    return img.treeInodes(tree.tree)
  } finally {
    img.close()
  }
}

function toolError(f: () => unknown): BaleError {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(BaleError)
    const be = e as BaleError
    expect(be.code).toBe('E_TOOL')
    expect(be.message).not.toContain('\n')
    return be
  }
  throw new Error('expected an E_TOOL BaleError')
}

/** A small tree with the names the old `ls -p` listing tests used. */
async function smallTree(name: string): Promise<{ tree: TreeBuilder; image: string }> {
  const tree = await TreeBuilder.create(path.join(work, name))
  tree.dir('d')
  const f = await tree.file('d/a b', 'shared')
  tree.link('d/q"t', f)
  await tree.file('d/tab\tx', 'tab')
  tree.symlink('s', 'target')
  await tree.file('d/\ufeffbom', 'a name starting with a byte order mark')
  const image = path.join(work, `${name}.ext4`)
  await buildExt4(tree.tree, image, OPTS)
  return { tree, image }
}

describe('treeInodes: the inode number of every name mke2fs made, checked against the tree', () => {
  it('maps every name to the inode debugfs sees; raw names with spaces, quotes, tabs, a BOM', async () => {
    const { tree, image } = await smallTree('small')
    const inos = readInodes(image, tree)
    const root = lsInodes(image, '/')
    const d = lsInodes(image, '/d')
    expect(Object.fromEntries(inos)).toEqual({
      '': 2,
      d: root.get('d'),
      s: root.get('s'),
      'd/a b': d.get('a b'),
      'd/q"t': d.get('a b'),
      'd/tab\tx': d.get('tab\tx'),
      'd/\ufeffbom': d.get('\ufeffbom'),
    })
    expect(new Set(inos.values()).size).toBe(6)
  })

  it('a name missing from the image is E_TOOL naming the path', async () => {
    const { tree, image } = await smallTree('missing')
    debugfsW(image, 'unlink "/d/tab\tx"\n')
    expect(toolError(() => readInodes(image, tree)).message).toBe('mkfs.ext4 -d: /d/tab\tx: missing from the image')
  })

  it('an extra name, as bytes that are not UTF-8, is E_TOOL showing them escaped', async () => {
    const { tree, image } = await smallTree('extra')
    debugfsW(image, Buffer.concat([Buffer.from('cd /d\nln "/s" "caf'), Buffer.from([0xe9]), Buffer.from('"\n')]))
    expect(toolError(() => readInodes(image, tree)).message).toBe('mkfs.ext4 -d: /d/caf\\xe9: in the image but not made from the tree')
  })

  it('a name that differs from the tree only after lossy decoding is still extra', async () => {
    const { tree, image } = await smallTree('lossy')
    // "\ufeffbom" with the BOM's bytes dropped: a decoder that strips a leading BOM would call it equal.
    debugfsW(image, 'cd /d\nln "/s" "bom"\n')
    expect(toolError(() => readInodes(image, tree)).message).toBe('mkfs.ext4 -d: /d/bom: in the image but not made from the tree')
  })

  it('a hard link split in two is E_TOOL', async () => {
    const { tree, image } = await smallTree('split')
    const s = lsInodes(image, '/').get('s')
    // q"t now names the symlink's inode: the root (with s) is read first, then d.
    debugfsW(image, `unlink "/d/q""t"\ncd /d\nln <${s}> "q""t"\n`)
    const ab = lsInodes(image, '/d').get('a b')
    expect(toolError(() => readInodes(image, tree)).message).toBe(`mkfs.ext4 -d: /d/q"t: hard link not kept (inode ${s}, expected ${ab})`)
  })

  it('two unrelated tree entries on one inode is E_TOOL', async () => {
    const { tree, image } = await smallTree('share')
    const ab = lsInodes(image, '/d').get('a b')
    debugfsW(image, `unlink "/d/tab\tx"\ncd /d\nln <${ab}> "tab\tx"\n`)
    expect(toolError(() => readInodes(image, tree)).message).toBe(`mkfs.ext4 -d: /d/tab\tx: shares inode ${ab} with an unrelated entry`)
  })

  it('a directory of the tree that is not one in the image is E_TOOL with its mode', async () => {
    const { tree, image } = await smallTree('notdir')
    debugfsW(image, 'sif /d mode 0100644\n')
    expect(toolError(() => readInodes(image, tree)).message).toBe('mkfs.ext4 -d: /d: has mode 100644, expected a dir')
  })

  it('a corrupt directory entry is E_TOOL naming the directory and where, not a crash', async () => {
    const { tree, image } = await smallTree('corrupt')
    const d = lsInodes(image, '/').get('d')
    const blocks = /EXTENTS:\n\(0\):(\d+)/.exec(run(['debugfs', '-R', `stat <${d}>`, image]))
    const block = Number(blocks?.[1])
    expect(block).toBeGreaterThan(0)
    // The '.' entry's rec_len (bytes 4-5) set to 3: not a multiple of 4, shorter than a header.
    const fd = openSync(image, 'r+')
    writeSync(fd, Buffer.from([3, 0]), 0, 2, block * 4096 + 4)
    closeSync(fd)
    expect(toolError(() => readInodes(image, tree)).message).toMatch(new RegExp(`^.*: /d \\(inode ${d}\\): corrupt directory entry in block 0 at offset 0$`))
  })
})

describe('directory layouts mke2fs, e2fsck and debugfs make', () => {
  /** 600 names of 100+ bytes: about 17 blocks, interleaved with the files' own data blocks. */
  async function wideTree(name: string): Promise<{ tree: TreeBuilder; image: string }> {
    const tree = await TreeBuilder.create(path.join(work, name))
    tree.dir('wide')
    for (let i = 0; i < 600; i++) await tree.file(`wide/${'n'.repeat(100)}-${String(i).padStart(3, '0')}`, `${i}`)
    const image = path.join(work, `${name}.ext4`)
    await buildExt4(tree.tree, image, OPTS)
    return { tree, image }
  }

  it('an htree (dir_index) directory made by e2fsck -D: interior blocks and the root are skipped', async () => {
    const { tree, image } = await wideTree('htree')
    const before = readInodes(image, tree)
    // -D rebuilds every directory; a multi-block one gets an htree (exit 0: optimizing is no repair).
    const r = spawnSync('e2fsck', ['-fyD', image], { env: ENV })
    expect(r.status).toBe(0)
    expect(r.stdout.toString()).toContain('Pass 3A: Optimizing directories')
    const st = run(['debugfs', '-R', 'stat /wide', image])
    // EXT4_INDEX_FL (0x1000): the directory has an htree.
    expect(parseInt(/Flags: 0x([0-9a-f]+)/.exec(st)?.[1] ?? '0', 16) & 0x1000).toBe(0x1000)
    expect(run(['debugfs', '-R', 'htree_dump /wide', image])).toMatch(/Root node dump:/)
    expect(Number(/Size: (\d+)/.exec(st)?.[1])).toBeGreaterThan(4 * 4096)
    const after = readInodes(image, tree)
    expect(after).toEqual(before)
    expect(after.size).toBe(602)
    const ls = lsInodes(image, '/wide')
    for (const [name, ino] of ls) expect(after.get(`wide/${name}`)).toBe(ino)
  })

  it('a fragmented directory whose extent tree is pushed down to depth 3 (debugfs extent split)', async () => {
    const { tree, image } = await wideTree('deep')
    const before = readInodes(image, tree)
    const wide = before.get('wide')
    // mke2fs -d grew the directory a block at a time between the files' data: many extents.
    const extents = (/EXTENTS:\n(.*)/.exec(run(['debugfs', '-R', `stat <${wide}>`, image]))?.[1] ?? '').split(', ')
    expect(extents.some((e) => e.startsWith('(ETB0)'))).toBe(true)
    expect(extents.length).toBeGreaterThan(5)
    debugfsW(image, `extent_open <${wide}>\nroot\nsplit\nroot\nsplit\nextent_close\n`)
    const deep = run(['debugfs', '-R', `stat <${wide}>`, image])
    expect(deep).toMatch(/\(ETB2\):/)
    expect(readInodes(image, tree)).toEqual(before)
    expect(before.size).toBe(602)
  })
})

describe('patchInodes', () => {
  it('a wrong type is E_TOOL with the mode, as the old listing said', async () => {
    const { tree, image } = await smallTree('wrongtype')
    debugfsW(image, 'sif /s mode 0100644\n')
    const img = Ext4Image.open(image, true)
    try {
      const inos = img.treeInodes(tree.tree)
      expect(toolError(() => img.patchInodes(tree.tree, inos, OPTS.timestamp)).message).toBe('mkfs.ext4 -d: /s: has mode 100644, expected a symlink')
    } finally {
      img.close()
    }
  })

  it('an inode whose checksum is already wrong is refused, not re-checksummed', async () => {
    const { tree, image } = await smallTree('badcsum')
    const img0 = Ext4Image.open(image, false)
    const ino = img0.treeInodes(tree.tree).get('d/tab\tx') ?? 0
    img0.close()
    const loc = /located at block (\d+), offset (0x[0-9a-f]+)/.exec(run(['debugfs', '-R', `imap <${ino}>`, image]))
    const pos = Number(loc?.[1]) * 4096 + parseInt(loc?.[2] ?? '0', 16)
    const fd = openSync(image, 'r+')
    const b = Buffer.alloc(1)
    readSync(fd, b, 0, 1, pos + 0x4) // a byte of i_size: the checksum no longer covers it
    b[0] = (b[0] ?? 0) ^ 0x40
    writeSync(fd, b, 0, 1, pos + 0x4)
    closeSync(fd)
    const img = Ext4Image.open(image, true)
    try {
      const inos = img.treeInodes(tree.tree)
      expect(toolError(() => img.patchInodes(tree.tree, inos, OPTS.timestamp)).message).toBe(`${image}: inode ${ino} (/d/tab\tx): checksum does not match before patching`)
    } finally {
      img.close()
    }
  })

  it('keeps the nanoseconds of each *_extra time field and replaces its epoch bits, as debugfs 1.47.0 sif does', async () => {
    const { tree, image } = await smallTree('nsec')
    const ino = readInodes(image, tree).get('d/a b') ?? 0
    const inode = tree.tree.entries.get('d/a b')
    expect(inode).toBeDefined()
    if (inode === undefined) return
    inode.mtime = 2 ** 32 + 5 // epoch 1 in the extra field
    // Both copies start with every nanosecond bit set (mke2fs 1.47.0 itself writes none).
    debugfsW(image, `sif <${ino}> mtime_extra 0xffffffff\nsif <${ino}> atime_extra 0xfffffffc\nsif <${ino}> ctime_extra 0xfffffffe\n`)
    const viaDebugfs = path.join(work, 'nsec-debugfs.ext4')
    await fs.copyFile(image, viaDebugfs)
    const T = 2 ** 33 + 77 // ctime in epoch 2
    debugfsW(viaDebugfs, [`uid ${inode.uid}`, `gid ${inode.gid}`, `mode 0100644`, `mtime @${inode.mtime}`, `atime @${inode.mtime}`, `ctime @${T}`].map((l) => `sif <${ino}> ${l}\n`).join(''))
    const img = Ext4Image.open(image, true)
    try {
      img.patchInodes(tree.tree, new Map([['d/a b', ino]]), T)
    } finally {
      img.close()
    }
    const a = Ext4Image.open(image, false)
    const b = Ext4Image.open(viaDebugfs, false)
    try {
      const ours = a.readInode(ino)
      // The *_extra words: nanoseconds kept, epoch bits replaced, as debugfs 1.47.0's sif does.
      // (1.47.1 and later clear the nanoseconds on `sif … @T`; mke2fs writes none, so on real
      // images the two agree, which the ext4-patch-oracle integration tests check whole.)
      expect(ours.readUInt32LE(0x84)).toBe(0xfffffffe) // ctime: epoch 2
      expect(ours.readUInt32LE(0x88)).toBe(0xfffffffd) // mtime: epoch 1
      expect(ours.readUInt32LE(0x8c)).toBe(0xfffffffd) // atime = mtime
      // Everything else as debugfs writes it; the checksum (0x7c, 0x82) covers our own words.
      const rest = (inodeBytes: Buffer): string => {
        const c = Buffer.from(inodeBytes)
        for (const [from, to] of [[0x7c, 0x7e], [0x82, 0x84], [0x84, 0x90]] as const) c.fill(0, from, to)
        return c.toString('hex')
      }
      expect(rest(ours)).toBe(rest(b.readInode(ino)))
      expect(a.checksumMatches(ino, ours)).toBe(true)
    } finally {
      a.close()
      b.close()
    }
  })
})

describe('encodeTime: ext4 seconds as a signed 32-bit low half and a 2-bit epoch', () => {
  it('matches the kernel encoding at the boundaries', () => {
    expect(encodeTime(0)).toEqual({ low: 0, epoch: 0 })
    expect(encodeTime(2 ** 31 - 1)).toEqual({ low: 2 ** 31 - 1, epoch: 0 })
    expect(encodeTime(2 ** 31)).toEqual({ low: 2 ** 31, epoch: 1 })
    expect(encodeTime(2 ** 32)).toEqual({ low: 0, epoch: 1 })
    expect(encodeTime(2 ** 32 + 2 ** 31)).toEqual({ low: 2 ** 31, epoch: 2 })
    expect(encodeTime(2 ** 34 - 2 ** 31 - 1)).toEqual({ low: 2 ** 31 - 1, epoch: 3 })
  })
})

describe('what the reader refuses', () => {
  async function mkfs(name: string, args: string[]): Promise<string> {
    const dir = path.join(work, `${name}-root`)
    await fs.mkdir(dir, { recursive: true })
    const image = path.join(work, `${name}.ext4`)
    execFileSync('mkfs.ext4', ['-q', '-F', ...args, '-d', dir, image, '16M'], { env: { ...ENV, MKE2FS_CONFIG: '/dev/null' } })
    return image
  }

  it('a block size other than 4096', async () => {
    const image = await mkfs('b1024', ['-b', '1024', '-O', 'extent,metadata_csum,64bit'])
    expect(toolError(() => Ext4Image.open(image, false)).message).toBe(`${image}: block size 1024: bale's image reader handles 4096 only`)
  })

  it('inline_data', async () => {
    const image = await mkfs('inline', ['-b', '4096', '-I', '256', '-O', 'extent,metadata_csum,64bit,inline_data'])
    expect(toolError(() => Ext4Image.open(image, false)).message).toBe(`${image}: ext4 incompat feature inline_data is not supported by bale's image reader`)
  })

  it('quota, whose accounting an owner change would leave wrong', async () => {
    const image = await mkfs('quota', ['-b', '4096', '-I', '256', '-O', 'extent,metadata_csum,64bit,quota'])
    expect(toolError(() => Ext4Image.open(image, false)).message).toBe(`${image}: ext4 ro_compat feature quota is not supported by bale's image reader`)
  })

  it('a file that is not ext4, and a superblock whose checksum is wrong', async () => {
    const junk = path.join(work, 'junk.img')
    await fs.writeFile(junk, Buffer.alloc(8192, 0x55))
    expect(toolError(() => Ext4Image.open(junk, false)).message).toBe(`${junk}: not an ext4 image (no superblock magic)`)
    const image = await mkfs('sbcsum', ['-b', '4096', '-I', '256', '-O', 'extent,metadata_csum,64bit'])
    const fd = openSync(image, 'r+')
    writeSync(fd, Buffer.from([0x42]), 0, 1, 1024 + 0x78) // s_volume_name
    closeSync(fd)
    expect(toolError(() => Ext4Image.open(image, false)).message).toBe(`${image}: superblock checksum does not match`)
  })

  it('a symlink to an image is not followed', async () => {
    const image = await mkfs('target', ['-b', '4096', '-I', '256', '-O', 'extent,metadata_csum,64bit'])
    const link = path.join(work, 'link.ext4')
    await fs.symlink(image, link)
    expect(toolError(() => Ext4Image.open(link, true)).message).toBe(`${link}: cannot open the image: ELOOP`)
  })
})
