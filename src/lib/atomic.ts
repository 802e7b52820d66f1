import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'

/**
 * Temp-then-rename: every output the user names is written beside its destination under a
 * hidden temporary name and renamed into place only when complete, so an error or a signal
 * never leaves a half-written file at the destination. Temporaries are registered so that a
 * SIGINT handler can remove them (see cleanup.ts).
 */
export function tempPathFor(dest: string): string {
  const dir = path.dirname(dest)
  return path.join(dir, `.${path.basename(dest)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`)
}

export async function commitTemp(tmp: string, dest: string): Promise<void> {
  await fs.rename(tmp, dest)
}

export async function removeQuietly(p: string): Promise<void> {
  await fs.rm(p, { recursive: true, force: true }).catch(() => undefined)
}

/** Write a small file atomically (fsync + rename). */
export async function writeFileAtomic(dest: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const tmp = tempPathFor(dest)
  try {
    const fh = await fs.open(tmp, 'wx', mode)
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await fs.rename(tmp, dest)
  } catch (e) {
    await removeQuietly(tmp)
    throw e
  }
}
