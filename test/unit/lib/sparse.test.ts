import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type DataRange, inHole, mapIncludesUnwritten, parseFilefrag, readSparse } from '../../../src/lib/sparse.js'

/** `filefrag -s -e` of a 1 GiB image made by mkfs.ext4 -d (e2fsprogs 1.47.0), trimmed to a few extents. */
const IMAGE = `Filesystem type is: ef53
File size of /var/tmp/x/rootfs.ext4 is 1073741824 (262144 blocks of 4096 bytes)
 ext:     logical_offset:        physical_offset: length:   expected: flags:
   0:        0..     130:   17248256..  17248386:    131:            
   1:      133..     133:   17248389..  17248389:      1:            
   2:      134..     137:   17248392..  17248395:      4:   17248390:
   3:     4247..   22527:   17250304..  17268584:  18281:   17236483:
   4:   262128..  262143:   17236496..  17236511:     16:   17338352: last,unwritten,eof
/var/tmp/x/rootfs.ext4: 4 extents found
`
const GiB = 1024 ** 3

describe('parseFilefrag', () => {
  it('turns logical block ranges into merged byte ranges, unwritten extents counted as data', () => {
    expect(parseFilefrag(IMAGE, GiB)).toEqual([
      { start: 0, end: 131 * 4096 },
      // 133..133 and 134..137 touch: one range.
      { start: 133 * 4096, end: 138 * 4096 },
      { start: 4247 * 4096, end: 22528 * 4096 },
      { start: 262128 * 4096, end: GiB },
    ])
  })

  it('takes the logical range of a delayed-allocation extent, whose length column says 0', () => {
    const text = `Filesystem type is: ef53
File size of t2 is 10485760 (2560 blocks of 4096 bytes)
 ext:     logical_offset:        physical_offset: length:   expected: flags:
   0:     1220..    1220:          0..         0:      0:             last,unknown_loc,delalloc
t2: 1 extent found
`
    expect(parseFilefrag(text, 10485760)).toEqual([{ start: 1220 * 4096, end: 1221 * 4096 }])
  })

  it('clips the last block to the file size', () => {
    const text = `File size of f is 5000 (2 blocks of 4096 bytes)\n   0:        0..       1:      100..     101:      2:             last,eof\nf: 1 extent found\n`
    expect(parseFilefrag(text, 5000)).toEqual([{ start: 0, end: 5000 }])
  })

  it('an all-hole file has no ranges', () => {
    const text = `Filesystem type is: ef53\nFile size of t2 is 10485760 (2560 blocks of 4096 bytes)\nt2: 0 extents found\n`
    expect(parseFilefrag(text, 10485760)).toEqual([])
  })

  it.each([
    ['another size than expected', IMAGE, GiB - 4096],
    ['no size line', IMAGE.replace(/File size.*\n/, ''), GiB],
    ['extents out of order', IMAGE.replace('   3:     4247..   22527:', '   3:       10..      20:'), GiB],
    ['an extent past the end', IMAGE.replace('262128..  262143', '262144..  262150'), GiB],
    ['no extent lines and no "0 extents found"', 'File size of f is 8192 (2 blocks of 4096 bytes)\nf: something else\n', 8192],
    // tmpfs: filefrag exits 22 with this; run() turns that into an error, but the text alone must not parse either.
    ['FIEMAP unsupported', 'Filesystem type is: 1021994\nFile size of t is 10485760 (2560 blocks of 4096 bytes)\nt: FIBMAP/FIEMAP unsupported\n', 10485760],
  ])('refuses output it does not understand: %s', (_what, text, size) => {
    expect(parseFilefrag(text, size)).toBeUndefined()
  })
})

describe('mapIncludesUnwritten', () => {
  it.each([
    ['ext4', 'ef53', true],
    ['XFS', '58465342', true],
    ['btrfs', '9123683e', true],
    ['overlayfs', '794c7630', false],
    ['NFS', '6969', false],
    ['tmpfs', '1021994', false],
  ])('%s (%s): %s', (_fs, magic, trusted) => {
    expect(mapIncludesUnwritten(`Filesystem type is: ${magic}\nFile size of f is 4096 (1 block of 4096 bytes)\n`)).toBe(trusted)
  })

  it('no type line: not trusted (the map is then taken after a sync)', () => {
    expect(mapIncludesUnwritten('File size of f is 4096 (1 block of 4096 bytes)\n')).toBe(false)
  })
})

describe('inHole', () => {
  const ranges: DataRange[] = [
    { start: 100, end: 200 },
    { start: 500, end: 600 },
  ]
  it.each([
    [0, 100, true],
    [0, 101, false],
    [200, 500, true],
    [199, 300, false],
    [450, 501, false],
    [600, 10_000, true],
    [150, 160, false],
  ])('[%d, %d) in a hole: %s', (start, end, hole) => {
    expect(inHole(ranges, start, end)).toBe(hole)
  })

  it('without a map nothing is known to be a hole', () => {
    expect(inHole(undefined, 0, 10)).toBe(false)
    expect(inHole([], 0, 10)).toBe(true)
  })
})

describe('readSparse', () => {
  let dir: string
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-sparse-'))
  })
  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true })
  })

  /** Ranges of a file of `size` bytes; the file holds non-zero bytes in them and zeros elsewhere. */
  const layout = fc.integer({ min: 1, max: 16 * 1024 }).chain((size) =>
    fc
      .uniqueArray(fc.integer({ min: 0, max: size }), { maxLength: 8 })
      .map((cuts) => {
        const points = [...cuts].sort((a, b) => a - b)
        const ranges: DataRange[] = []
        for (let i = 0; i + 1 < points.length; i += 2) if ((points[i] as number) < (points[i + 1] as number)) ranges.push({ start: points[i] as number, end: points[i + 1] as number })
        return { size, ranges }
      }),
  )

  it('gives the bytes a plain read gives, for any window, wherever the data lies', async () => {
    let n = 0
    await fc.assert(
      fc.asyncProperty(layout, fc.nat(), fc.nat(), async ({ size, ranges }, a, b) => {
        const content = Buffer.alloc(size)
        for (const [k, r] of ranges.entries()) content.fill(k + 1, r.start, r.end)
        const file = path.join(dir, `f${n++}`)
        await fs.writeFile(file, content)
        const pos = a % size
        const len = b % (size - pos + 1)
        const fh = await fs.open(file, 'r')
        try {
          // Poisoned buffer: holes must be written as zeros, not left as they were.
          const buf = Buffer.alloc(len + 8, 0xee)
          const got = await readSparse(fh, buf, 4, len, pos, ranges)
          expect(got).toBe(len)
          expect(buf.subarray(4, 4 + len)).toEqual(content.subarray(pos, pos + len))
          expect(buf.subarray(0, 4)).toEqual(Buffer.alloc(4, 0xee))
          expect(buf.subarray(4 + len)).toEqual(Buffer.alloc(4, 0xee))
          const plain = Buffer.alloc(len + 8, 0xee)
          expect(await readSparse(fh, plain, 4, len, pos, undefined)).toBe(len)
          expect(plain).toEqual(buf)
        } finally {
          await fh.close()
          await fs.rm(file)
        }
      }),
      { numRuns: 100 },
    )
  })

  it('stops short where the file is shorter than a data range says', async () => {
    const file = path.join(dir, 'short')
    await fs.writeFile(file, Buffer.alloc(100, 7))
    const fh = await fs.open(file, 'r')
    try {
      const buf = Buffer.alloc(300)
      expect(await readSparse(fh, buf, 0, 300, 0, [{ start: 50, end: 300 }])).toBe(100)
      expect(buf.subarray(0, 50)).toEqual(Buffer.alloc(50))
      expect(buf.subarray(50, 100)).toEqual(Buffer.alloc(50, 7))
    } finally {
      await fh.close()
    }
  })
})
