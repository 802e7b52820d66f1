import { createReadStream, promises as fs } from 'node:fs'
import type { Writable } from 'node:stream'
import { BaleError } from '../../lib/errors.js'

/**
 * A deterministic writer for the cpio "newc" format, the only archive format the kernel's
 * initramfs unpacker reads (Documentation/driver-api/early-userspace/buffer-format.rst). No
 * maintained npm package writes newc with types, and the format is a 110-byte ASCII header per
 * entry, so it is written here. Every field that could vary between runs is fixed: inode numbers
 * count from 1 in entry order, owners are 0:0, mtimes are the given constant, device numbers of
 * the archive itself are 0.
 */

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; mode?: number; data: Uint8Array | string }
  /** Streamed from disk: the file's size is taken when the entry is written and checked after. */
  | { type: 'file'; path: string; mode?: number; source: string }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char' | 'block'; path: string; mode?: number; major: number; minor: number }

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const S_IFCHR = 0o020000
const S_IFBLK = 0o060000
const NEWC_MAGIC = '070701'
const TRAILER = 'TRAILER!!!'
/** newc sizes are 8 hex digits. */
const MAX_U32 = 0xffffffff

/** Archive names are relative ("dev/console"); the kernel creates them under its rootfs "/". */
export function normalizeArchivePath(p: string): string {
  const parts = p.split('/').filter((c) => c !== '' && c !== '.')
  if (parts.length === 0 || parts.some((c) => c === '..' || c.includes('\0')) || parts.join('/') === TRAILER) {
    throw new BaleError('E_UNSAFE_PATH', `initramfs path ${JSON.stringify(p)}: must name something below / without ..`, { subject: p })
  }
  return parts.join('/')
}

function header(f: { ino: number; mode: number; nlink: number; mtime: number; size: number; rmajor: number; rminor: number; nameSize: number }): string {
  const hex = (n: number): string => {
    if (!Number.isInteger(n) || n < 0 || n > MAX_U32) throw new BaleError('E_INPUT', `cpio field ${n} does not fit 32 bits`)
    return n.toString(16).toUpperCase().padStart(8, '0')
  }
  return (
    NEWC_MAGIC +
    hex(f.ino) +
    hex(f.mode) +
    hex(0) + // uid
    hex(0) + // gid
    hex(f.nlink) +
    hex(f.mtime) +
    hex(f.size) +
    hex(0) + // devmajor (of the archive's own filesystem: meaningless here)
    hex(0) + // devminor
    hex(f.rmajor) +
    hex(f.rminor) +
    hex(f.nameSize) +
    hex(0) // check: only for the "070702" crc variant
  )
}

/** Pad to the 4-byte boundary newc keeps after each header+name and after each file body. */
function pad4(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4)
}

export interface CpioOptions {
  /** mtime for every entry (seconds); default 0 so archives are identical across runs. */
  mtime?: number
}

/**
 * Write `entries` as newc to `out` (ended when done). Parent directories that were not given are
 * emitted first with mode 0755, because the kernel's unpacker does not create missing parents.
 * A path given twice is refused: the kernel would silently keep the last one.
 */
export async function writeCpio(entries: Iterable<CpioEntry>, out: Writable, opts: CpioOptions = {}): Promise<void> {
  const mtime = opts.mtime ?? 0
  let ino = 0
  let offset = 0
  const seen = new Set<string>()

  const write = async (chunk: Buffer | string): Promise<void> => {
    const b = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk
    offset += b.length
    if (!out.write(b)) await waitDrain(out)
  }

  const emit = async (name: string, mode: number, size: number, rmajor = 0, rminor = 0): Promise<void> => {
    const nameBytes = Buffer.from(`${name}\0`, 'utf8')
    const nlink = (mode & 0o170000) === S_IFDIR ? 2 : 1
    const trailer = name === TRAILER
    await write(header({ ino: trailer ? 0 : ++ino, mode, nlink, mtime: trailer ? 0 : mtime, size, rmajor, rminor, nameSize: nameBytes.length }))
    await write(nameBytes)
    await write(pad4(offset))
  }

  const ensureParents = async (name: string): Promise<void> => {
    const parts = name.split('/')
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/')
      if (seen.has(dir)) continue
      seen.add(dir)
      await emit(dir, S_IFDIR | 0o755, 0)
    }
  }

  for (const e of entries) {
    const name = normalizeArchivePath(e.path)
    if (seen.has(name)) throw new BaleError('E_INPUT', `initramfs path /${name} given twice`, { subject: `/${name}` })
    await ensureParents(name)
    seen.add(name)
    switch (e.type) {
      case 'dir':
        await emit(name, S_IFDIR | ((e.mode ?? 0o755) & 0o7777), 0)
        break
      case 'symlink': {
        const target = Buffer.from(e.target, 'utf8')
        await emit(name, S_IFLNK | 0o777, target.length)
        await write(target)
        await write(pad4(offset))
        break
      }
      case 'char':
      case 'block':
        await emit(name, (e.type === 'char' ? S_IFCHR : S_IFBLK) | ((e.mode ?? 0o600) & 0o7777), 0, e.major, e.minor)
        break
      case 'file': {
        const mode = S_IFREG | ((e.mode ?? 0o644) & 0o7777)
        if ('data' in e) {
          const data = typeof e.data === 'string' ? Buffer.from(e.data, 'utf8') : Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength)
          await emit(name, mode, data.length)
          await write(data)
        } else {
          const size = (await fs.stat(e.source)).size
          await emit(name, mode, size)
          let copied = 0
          if (size > 0) {
            // `end` is inclusive: never more than `size` bytes, so a file that grew cannot corrupt the archive.
            for await (const chunk of createReadStream(e.source, { end: size - 1, highWaterMark: 1 << 20 })) {
              copied += (chunk as Buffer).length
              await write(chunk as Buffer)
            }
          }
          if (copied !== size) {
            throw new BaleError('E_INPUT', `${e.source}: changed while it was being archived (${copied} of ${size} bytes)`, { subject: e.source })
          }
        }
        await write(pad4(offset))
        break
      }
    }
  }
  await emit(TRAILER, 0, 0)
  await new Promise<void>((resolve, reject) => {
    out.once('error', reject)
    out.end(() => resolve())
  })
}

function waitDrain(out: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (): void => {
      out.off('drain', onDrain)
      out.off('error', onError)
      out.off('close', onClose)
    }
    const onDrain = (): void => {
      done()
      resolve()
    }
    const onError = (e: Error): void => {
      done()
      reject(e)
    }
    // Destroyed without an error (the consumer went away): nothing will ever drain.
    const onClose = (): void => {
      done()
      reject(new Error('cpio output closed before the archive was complete'))
    }
    out.once('drain', onDrain)
    out.once('error', onError)
    out.once('close', onClose)
  })
}
