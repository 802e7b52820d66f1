import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'

/** Reads of 4 MiB: at the default 64 KiB, per-chunk overhead dominated hashing a 1 GiB image. */
const READ_SIZE = 4 * 1024 * 1024

/** SHA-256 (hex) of a file, streamed. */
export async function sha256File(p: string): Promise<string> {
  const hash = createHash('sha256')
  const fh = await fs.open(p, 'r')
  try {
    const buf = Buffer.allocUnsafe(READ_SIZE)
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, READ_SIZE, null)
      if (bytesRead === 0) break
      hash.update(buf.subarray(0, bytesRead))
    }
  } finally {
    await fh.close()
  }
  return hash.digest('hex')
}
