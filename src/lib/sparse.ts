/**
 * Sparse files: which byte ranges of a file hold data, and reads that fill the rest (holes)
 * with zeros instead of asking the kernel for them.
 *
 * Why: an ext4 image is mostly unused blocks, which mke2fs never writes (the file starts as one
 * hole). Reading a hole makes the kernel allocate and zero a page-cache page for every 4 KiB of
 * it: hashing a 1 GiB image holding 177 MB of data took 1.2-2.2 s reading it all, 0.8 s reading
 * only its data (the SHA-256 of the zeros remains), and the zero pages pushed useful files out of
 * the page cache. The same holds for a `--size 10G` image, ten times over.
 *
 * Node has no lseek(SEEK_DATA), so the map comes from FIEMAP through e2fsprogs' `filefrag`
 * (already required for the ext4 stage). Every extent it lists counts as data, unwritten
 * (preallocated) and delayed-allocation ones included. Where it cannot say (tmpfs, NFS, no
 * filefrag, output not understood) the answer is "read everything".
 *
 * Data still in the page cache: ext4, XFS and btrfs list it as delayed-allocation extents
 * (checked on this project's kernels: the map taken before and after a sync is the same), so
 * on those the map is taken as it is. Elsewhere FIEMAP_FLAG_SYNC (`-s`) writes the file back
 * first, the way `cp` once had to: that costs a write-back of the whole file (~0.4 s for a
 * freshly made Debian image here, which is why it is not done where it is not needed: the
 * image is an intermediate that is deleted before the kernel would write it back at all).
 */
import type { FileHandle } from 'node:fs/promises'
import { run } from './exec.js'

/** Bytes [start, end) of a file that may hold data; what no range covers reads as zeros. */
export interface DataRange {
  readonly start: number
  readonly end: number
}

/** "File size of NAME is 1073741824 (262144 blocks of 4096 bytes)" */
const SIZE_LINE = / is (\d+) \((\d+) blocks? of (\d+) bytes\)$/m
/** "   3:      145..     562:   17248401..  17248818:    418:             last,eof": logical first..last block. */
const EXTENT_LINE = /^\s*\d+:\s+(\d+)\.\.\s*(\d+):/gm

/**
 * Parse `filefrag -e` output for a file of `size` bytes into sorted, merged byte ranges, or
 * undefined if it does not look exactly as expected (then the caller reads everything).
 */
export function parseFilefrag(text: string, size: number): DataRange[] | undefined {
  const head = SIZE_LINE.exec(text)
  if (!head || Number(head[1]) !== size) return undefined
  const blockSize = Number(head[3])
  if (!Number.isSafeInteger(blockSize) || blockSize <= 0) return undefined
  const ranges: DataRange[] = []
  for (const m of text.matchAll(EXTENT_LINE)) {
    const first = Number(m[1])
    const last = Number(m[2])
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || last < first) return undefined
    const start = first * blockSize
    // The last block of the file may be partial.
    const end = Math.min((last + 1) * blockSize, size)
    if (start >= size) return undefined
    const prev = ranges[ranges.length - 1]
    if (prev && start < prev.start) return undefined
    if (prev && start <= prev.end) ranges[ranges.length - 1] = { start: prev.start, end: Math.max(prev.end, end) }
    else ranges.push({ start, end })
  }
  // A file with data but no extent line is output we do not understand, not an empty file.
  if (ranges.length === 0 && !/: 0 extents found\s*$/.test(text)) return undefined
  return ranges
}

/** "Filesystem type is: ef53": the statfs magic numbers whose FIEMAP lists delayed allocations. */
const FS_TYPE_LINE = /^Filesystem type is: ([0-9a-f]+)$/m
const LISTS_DELALLOC = new Set([
  'ef53', // ext2/3/4
  '58465342', // XFS
  '9123683e', // btrfs
])

/** Whether `filefrag` output comes from a filesystem whose map includes data not yet written back. */
export function mapIncludesUnwritten(text: string): boolean {
  const m = FS_TYPE_LINE.exec(text)
  return m !== null && LISTS_DELALLOC.has(m[1] as string)
}

/** The data ranges of `file` (`size` bytes, not being written), or undefined where the filesystem cannot say. */
export async function dataRanges(file: string, size: number): Promise<DataRange[] | undefined> {
  try {
    const first = await run('filefrag', ['-e', file])
    const { stdout } = mapIncludesUnwritten(first.stdout) ? first : await run('filefrag', ['-s', '-e', file])
    return parseFilefrag(stdout, size)
  } catch {
    // No FIEMAP here (tmpfs answers EINVAL), or no filefrag: read everything, as without a map.
    return undefined
  }
}

/**
 * Fill `buf[off, off + len)` with the file's bytes at `pos`: data ranges are read, holes are
 * zero-filled. With `ranges` undefined everything is read. Returns the bytes filled, fewer than
 * `len` only if a read hit the end of the file.
 */
export async function readSparse(fh: FileHandle, buf: Buffer, off: number, len: number, pos: number, ranges: readonly DataRange[] | undefined): Promise<number> {
  if (ranges === undefined) return readFully(fh, buf, off, len, pos)
  const end = pos + len
  let at = pos
  for (let i = firstRangeEndingAfter(ranges, pos); at < end; i++) {
    const r = ranges[i]
    const dataStart = r === undefined ? end : Math.max(Math.min(r.start, end), at)
    if (dataStart > at) buf.fill(0, off + (at - pos), off + (dataStart - pos))
    at = dataStart
    if (r === undefined || at >= end) break
    const dataEnd = Math.min(r.end, end)
    const n = await readFully(fh, buf, off + (at - pos), dataEnd - at, at)
    at += n
    if (at < dataEnd) return at - pos
  }
  return len
}

/** Whether `[start, end)` lies wholly in a hole (false without a map: then nothing is known). */
export function inHole(ranges: readonly DataRange[] | undefined, start: number, end: number): boolean {
  if (ranges === undefined) return false
  const r = ranges[firstRangeEndingAfter(ranges, start)]
  return r === undefined || r.start >= end
}

/** Index of the first range whose end lies after `pos` (binary search: ranges are sorted). */
function firstRangeEndingAfter(ranges: readonly DataRange[], pos: number): number {
  let lo = 0
  let hi = ranges.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((ranges[mid] as DataRange).end <= pos) lo = mid + 1
    else hi = mid
  }
  return lo
}

async function readFully(fh: FileHandle, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  let fill = 0
  while (fill < len) {
    const { bytesRead } = await fh.read(buf, off + fill, len - fill, pos + fill)
    if (bytesRead === 0) break
    fill += bytesRead
  }
  return fill
}
