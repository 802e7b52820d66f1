import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import { type DataRange, readSparse } from './sparse.js'

/** Reads of 4 MiB: at the default 64 KiB, per-chunk overhead dominated hashing a 1 GiB image. */
const READ_SIZE = 4 * 1024 * 1024

/**
 * SHA-256 (hex) of a file, streamed. With `ranges` (lib/sparse.ts), only those are read and the
 * holes between them are hashed as the zeros they read as.
 */
export async function sha256File(p: string, ranges?: readonly DataRange[]): Promise<string> {
  const hash = createHash('sha256')
  const fh = await fs.open(p, 'r')
  try {
    const size = ranges === undefined ? Infinity : (await fh.stat()).size
    const buf = Buffer.allocUnsafe(READ_SIZE)
    for (let pos = 0; pos < size; ) {
      const n = await readSparse(fh, buf, 0, Math.min(READ_SIZE, size - pos), pos, ranges)
      if (n === 0) break
      hash.update(buf.subarray(0, n))
      pos += n
    }
  } finally {
    await fh.close()
  }
  return hash.digest('hex')
}
