// Sizing and tree validation (pure arithmetic; the integration tests check it against mke2fs).
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import {
  BLOCKS_PER_GROUP,
  backupGroups,
  dirBlocks,
  direntBytes,
  fileBlocks,
  journalBlocks,
  keptBlocks,
  metadataBlocks,
  minBlocksForInodes,
} from '../../../src/pipeline/ext4/geometry.js'
import { ext4Usage, inodeCount, minimumExt4Size, planExt4, validateTree } from '../../../src/pipeline/ext4/plan.js'
import { TreeBuilder } from './fixture.js'

const MiB = 2 ** 20

function builder(): TreeBuilder {
  const b = new TreeBuilder('/nonexistent-staging')
  b.dir('')
  return b
}

function file(b: TreeBuilder, p: string, size: number): void {
  b.add(p, b.inode('file', {}, { size }))
}

function throwsBale(f: () => unknown): BaleError {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(BaleError)
    return e as BaleError
  }
  throw new Error('expected a BaleError')
}

describe('geometry', () => {
  it('rounds file sizes up to 4 KiB blocks and adds extent blocks only for very large files', () => {
    expect(fileBlocks(0)).toBe(0)
    expect(fileBlocks(1)).toBe(1)
    expect(fileBlocks(4096)).toBe(1)
    expect(fileBlocks(4097)).toBe(2)
    expect(fileBlocks(100 * MiB)).toBe(25600)
    // 1 GiB = 262144 blocks = 8 full extents, counted twice + 1 = 17 > 4: an index block.
    expect(fileBlocks(1024 * MiB)).toBeGreaterThan(262144)
  })

  it('counts directory entries as 8 bytes + name padded to 4, and blocks with room to spare', () => {
    expect(direntBytes(1)).toBe(12)
    expect(direntBytes(4)).toBe(12)
    expect(direntBytes(5)).toBe(16)
    expect(direntBytes(255)).toBe(264)
    expect(dirBlocks(24)).toBe(1)
    // Two blocks' worth of entries gets a third for an htree root.
    expect(dirBlocks(6000)).toBe(3)
  })

  it('journal tiers follow ext2fs_default_journal_size up to 64 MiB', () => {
    expect(journalBlocks(4096)).toBe(1024)
    expect(journalBlocks(32768)).toBe(4096)
    expect(journalBlocks(300_000)).toBe(8192)
    expect(journalBlocks(10_000_000)).toBe(16384)
  })

  it('sparse_super backups live in groups 0, 1 and powers of 3, 5, 7', () => {
    expect(backupGroups(1)).toBe(1)
    expect(backupGroups(2)).toBe(2)
    expect(backupGroups(10)).toBe(6) // 0 1 3 5 7 9
    expect(backupGroups(50)).toBe(9) // … 25 27 49
  })

  it('mke2fs drops a last group too small for its inode table plus 50 blocks, and keeps a large one', () => {
    expect(keptBlocks(BLOCKS_PER_GROUP + 256, 8256)).toBe(BLOCKS_PER_GROUP)
    expect(keptBlocks(BLOCKS_PER_GROUP + 4096, 8256)).toBe(BLOCKS_PER_GROUP + 4096)
    expect(keptBlocks(1000, 100)).toBe(1000)
  })

  it('metadata grows with groups and inodes; more inodes than one group holds need more groups', () => {
    expect(metadataBlocks(2 * BLOCKS_PER_GROUP, 1000)).toBeGreaterThan(metadataBlocks(BLOCKS_PER_GROUP, 1000))
    expect(metadataBlocks(BLOCKS_PER_GROUP, 20000)).toBeGreaterThan(metadataBlocks(BLOCKS_PER_GROUP, 1000))
    expect(minBlocksForInodes(BLOCKS_PER_GROUP)).toBe(0)
    expect(minBlocksForInodes(BLOCKS_PER_GROUP + 1)).toBeGreaterThan(BLOCKS_PER_GROUP)
  })
})

describe('planExt4', () => {
  it('plans the tree plus metadata plus at least 64 MiB free, in whole MiB of 4 KiB blocks', () => {
    const b = builder()
    file(b, 'f', 10 * MiB)
    const plan = planExt4(b.tree)
    expect(plan.blockSize).toBe(4096)
    expect(plan.sizeBytes % MiB).toBe(0)
    expect(plan.sizeBytes).toBeGreaterThanOrEqual(minimumExt4Size(b.tree) + 64 * MiB)
  })

  it('grows with the data: a quarter of the tree is left free', () => {
    const b = builder()
    file(b, 'f', 2048 * MiB)
    const plan = planExt4(b.tree)
    expect(plan.sizeBytes).toBeGreaterThan(2048 * MiB * 1.25)
    expect(plan.sizeBytes).toBeLessThan(2048 * MiB * 1.4)
  })

  it('counts each inode once however many names it has', () => {
    const one = builder()
    file(one, 'a', 50 * MiB)
    const many = builder()
    const f = many.add('a', many.inode('file', {}, { size: 50 * MiB }))
    for (let i = 0; i < 10; i++) many.link(`l${i}`, f)
    expect(ext4Usage(many.tree).inodes).toBe(ext4Usage(one.tree).inodes)
    expect(ext4Usage(many.tree).blocks - ext4Usage(one.tree).blocks).toBeLessThanOrEqual(1)
  })

  it('counts a block for symlinks of 60 bytes or more and for inodes with xattrs', () => {
    const base = ext4Usage(builder().tree).blocks
    const short = builder()
    short.symlink('s', 'x'.repeat(59))
    expect(ext4Usage(short.tree).blocks).toBe(base)
    const long = builder()
    long.symlink('s', 'x'.repeat(60))
    expect(ext4Usage(long.tree).blocks).toBe(base + 1)
    const xa = builder()
    xa.add('f', xa.inode('file', { xattrs: { 'user.a': 'b' } }, { size: 0 }))
    expect(ext4Usage(xa.tree).blocks).toBe(base + 1)
  })

  it('inode count: the tree, 11 reserved, headroom of a quarter (at least 1024), at least one per 16 KiB', () => {
    expect(inodeCount(100, 1000)).toBe(100 + 11 + 1024)
    expect(inodeCount(100_000, 1000)).toBe(100_000 + 11 + 25_000)
    expect(inodeCount(100, 1_000_000)).toBe(Math.floor((1_000_000 * 4096) / 16384))
    const b = builder()
    for (let i = 0; i < 5000; i++) file(b, `f${i}`, 0)
    expect(planExt4(b.tree).inodes).toBeGreaterThanOrEqual(5001 + 11 + 1250)
  })

  it('--size: honoured when large enough (rounded up to a block), refused naming --size and the minimum', () => {
    const b = builder()
    file(b, 'f', 100 * MiB)
    const min = minimumExt4Size(b.tree)
    expect(planExt4(b.tree, min).sizeBytes).toBe(min)
    expect(planExt4(b.tree, 1024 * MiB + 1).sizeBytes).toBe(1024 * MiB + 4096)
    const e = throwsBale(() => planExt4(b.tree, min - 4096))
    expect(e.code).toBe('E_USAGE')
    expect(e.subject).toBe('--size')
    expect(e.message).toBe(`--size ${min - 4096}: too small for this image, which needs at least ${min} bytes (${Math.ceil(min / MiB)} MiB)`)
    for (const bad of [0, -1, 1.5, Number.NaN]) expect(throwsBale(() => planExt4(b.tree, bad)).code).toBe('E_USAGE')
  })

  it('the minimum leaves room for the journal: mke2fs refuses one over half the free blocks', () => {
    const min = minimumExt4Size(builder().tree) / 4096
    expect(min - metadataBlocks(min, inodeCount(1, min)) + journalBlocks(min)).toBeGreaterThan(2 * journalBlocks(min))
  })

  it('property: the planned size and the minimum both pass the --size check (no plan refuses itself)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 300 * MiB }), { maxLength: 20 }),
        fc.integer({ min: 0, max: 50_000 }),
        (sizes, empties) => {
          const b = builder()
          sizes.forEach((size, i) => file(b, `big${i}`, size))
          b.dir('many')
          for (let i = 0; i < empties; i++) file(b, `many/${i}`, 0)
          const plan = planExt4(b.tree)
          expect(planExt4(b.tree, plan.sizeBytes).sizeBytes).toBe(plan.sizeBytes)
          const min = minimumExt4Size(b.tree)
          expect(planExt4(b.tree, min).sizeBytes).toBe(min)
          expect(plan.sizeBytes).toBeGreaterThanOrEqual(min)
          // Whole groups when mke2fs would have dropped a small last one: the file is what mke2fs uses.
          expect(keptBlocks(plan.sizeBytes / 4096, plan.inodes)).toBe(plan.sizeBytes / 4096)
        },
      ),
      { numRuns: 30 },
    )
  })

  it('an inode-heavy tree gets enough groups for its inodes', () => {
    const b = builder()
    for (let i = 0; i < 40_000; i++) file(b, `f${i}`, 0)
    const plan = planExt4(b.tree)
    expect(plan.sizeBytes / 4096).toBeGreaterThanOrEqual(minBlocksForInodes(plan.inodes))
    expect(Math.ceil(plan.sizeBytes / 4096 / BLOCKS_PER_GROUP) * BLOCKS_PER_GROUP).toBeGreaterThanOrEqual(plan.inodes)
  })
})

describe('validateTree', () => {
  const cases: Array<[string, (b: TreeBuilder) => void, string, RegExp]> = [
    ['no root', (b) => b.tree.entries.delete(''), 'E_INPUT', /^image root: the tree has no root directory/],
    ['parent is a file', (b) => { file(b, 'f', 0); file(b, 'f/x', 0) }, 'E_INPUT', /^\/f\/x: parent is not a directory/],
    ['parent missing', (b) => file(b, 'missing/x', 0), 'E_INPUT', /^\/missing\/x: parent is not a directory/],
    ['hard-linked directory', (b) => { const d = b.dir('d'); b.link('e', d) }, 'E_INPUT', /^\/e: a directory cannot be hard-linked \(also at \/d\)/],
    ['lost+found not a directory', (b) => file(b, 'lost+found', 0), 'E_INPUT', /^\/lost\+found: must be a directory/],
    ['symlink without target', (b) => b.symlink('s', ''), 'E_INPUT', /^\/s: symlink without a target/],
    ['device minor over 65535', (b) => b.device('d', 'char', 1, 70000), 'E_INPUT', /^\/d: device number 1:70000 is outside 0\.\.65535/],
    ['device without numbers', (b) => b.add('d', b.inode('block', {})), 'E_INPUT', /^\/d: device number \?:\? is outside/],
    ['uid too large', (b) => b.add('f', b.inode('file', { uid: 2 ** 32 - 1 }, { size: 0 })), 'E_INPUT', /^\/f: owner 4294967295:0 cannot be stored/],
    ['mode with type bits', (b) => b.add('f', b.inode('file', { mode: 0o100644 }, { size: 0 })), 'E_INPUT', /^\/f: mode 33188 has bits outside 07777/],
    ['name over 255 bytes', (b) => file(b, 'é'.repeat(128), 0), 'E_UNSAFE_PATH', /name longer than 255 bytes/],
    ['newline in a name', (b) => file(b, 'a\nb', 0), 'E_UNSAFE_PATH', /^"\/a\\nb": name contains NUL, newline or carriage return/],
  ]
  for (const [what, mutate, code, re] of cases) {
    it(`refuses ${what} with ${code}, one line naming the path`, () => {
      const b = builder()
      mutate(b)
      const e = throwsBale(() => validateTree(b.tree))
      expect(e.code).toBe(code)
      expect(e.message).toMatch(re)
      expect(e.message).not.toContain('\n')
      expect(throwsBale(() => planExt4(b.tree)).code).toBe(code)
    })
  }

  it('accepts a tree with every kind of entry', () => {
    const b = builder()
    b.dir('d', { mode: 0o7777, uid: 2 ** 32 - 2 })
    file(b, 'd/f', 1)
    b.symlink('s', 't')
    b.device('c', 'char', 65535, 65535)
    b.fifo('p')
    b.dir('lost+found')
    expect(() => validateTree(b.tree)).not.toThrow()
  })
})
