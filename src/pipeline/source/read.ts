import { promises as fs } from 'node:fs'
import { BaleError, fromSystemError } from '../../lib/errors.js'

/**
 * Read a small document (index, manifest, config) whole, refusing anything over `cap` before
 * reading it: a hostile layout must not make us allocate gigabytes for "a manifest".
 * `what` names the document in messages; `missing` is the error to raise when the file is absent.
 */
export async function readCapped(file: string, cap: number, what: string, missing?: () => BaleError): Promise<Buffer> {
  let fh: fs.FileHandle
  try {
    fh = await fs.open(file, 'r')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && missing) throw missing()
    throw fromSystemError(e, file) ?? e
  }
  try {
    const st = await fh.stat()
    if (!st.isFile()) throw new BaleError('E_INPUT', `${file}: ${what} is not a regular file`, { subject: file })
    if (st.size > cap) throw new BaleError('E_INPUT', `${file}: ${what} is ${st.size} bytes, over the ${cap}-byte limit`, { subject: file })
    // One byte more than stat said, to notice a file that grows while we read it.
    const buf = Buffer.alloc(st.size + 1)
    let len = 0
    for (;;) {
      const { bytesRead } = await fh.read(buf, len, buf.length - len, len)
      if (bytesRead === 0) break
      len += bytesRead
      if (len === buf.length) break
    }
    if (len !== st.size) throw new BaleError('E_INPUT', `${file}: ${what} changed while being read`, { subject: file })
    return buf.subarray(0, len)
  } finally {
    await fh.close()
  }
}

/** stat that maps ENOENT to the caller's error and other system errors to BaleErrors. */
export async function statOr(file: string, missing: () => BaleError): Promise<import('node:fs').Stats> {
  try {
    return await fs.stat(file)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') throw missing()
    throw fromSystemError(e, file) ?? e
  }
}
