import { createHash } from 'node:crypto'
import { createWriteStream, promises as fs } from 'node:fs'
import { PassThrough, Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import { removeQuietly, tempPathFor } from '../../lib/atomic.js'
import { registerCleanup } from '../../lib/cleanup.js'
import { BaleError } from '../../lib/errors.js'
import { writeCpio, type CpioEntry } from './cpio.js'
import { readModuleFile } from './modules.js'

/**
 * The initramfs every bale VM boots with, and its contract with the guest's stage 1
 * (guest/src, `bale-init` run as PID 1 from the initramfs):
 *   /init                        the stage-1 program (mode 0755)
 *   /lib/modules/<file>.ko       uncompressed modules
 *   /lib/modules/modules.order   their file names, one per line, in load order
 *   /dev/console                 char 5:1, so the kernel can give /init a console before
 *                                devtmpfs is mounted (Debian's CONFIG_DEVTMPFS_MOUNT is off)
 *   /dev /proc /sys /run /tmp /mnt /newroot   mount points stage 1 may use
 * Compressed with gzip: every kernel with CONFIG_BLK_DEV_INITRD has CONFIG_RD_GZIP in practice
 * (Debian has RD_GZIP, RD_XZ, RD_LZ4, RD_ZSTD), and the archive is a few hundred KB, so a faster
 * decompressor would not be measurable at boot.
 */

export interface InitramfsModule {
  /** File name inside /lib/modules (uncompressed, e.g. `virtio_blk.ko`). */
  file: string
  /** The module on disk (`.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz`). */
  source: string
}

export interface BuildInitramfsOptions {
  /** The program (or `#!` script) to run as /init. */
  init: string
  /** Modules in load order; written to /lib/modules and listed in modules.order. */
  modules?: readonly InitramfsModule[]
  /** More entries, e.g. /bin/busybox for a test or benchmark init script. */
  extraFiles?: readonly CpioEntry[]
  /** The compressed archive to write (temp name, then renamed into place). */
  output: string
  /** gzip level; 9 because the archive is small and built once per import. */
  level?: number
}

export interface InitramfsResult {
  path: string
  sha256: string
  size: number
}

/** Mount points stage 1 may use; created empty so it never has to mkdir in the rootfs. */
export const INITRAMFS_DIRS = ['dev', 'proc', 'sys', 'run', 'tmp', 'mnt', 'newroot', 'lib', 'lib/modules'] as const
/** The console device (Documentation/admin-guide/devices.txt: char 5:1 is /dev/console). */
const CONSOLE = { major: 5, minor: 1 }

export async function initramfsEntries(opts: Omit<BuildInitramfsOptions, 'output' | 'level'>): Promise<CpioEntry[]> {
  const st = await fs.stat(opts.init).catch((e: unknown) => {
    throw new BaleError('E_NOT_FOUND', `init ${opts.init}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`, { subject: opts.init, cause: e })
  })
  if (!st.isFile()) throw new BaleError('E_INPUT', `init ${opts.init}: not a regular file`, { subject: opts.init })

  const entries: CpioEntry[] = INITRAMFS_DIRS.map((d) => ({ type: 'dir', path: d, mode: d === 'tmp' ? 0o1777 : 0o755 }))
  entries.push({ type: 'char', path: 'dev/console', mode: 0o600, ...CONSOLE })
  entries.push({ type: 'file', path: 'init', mode: 0o755, source: opts.init })
  const modules = opts.modules ?? []
  for (const m of modules) {
    if (m.file.includes('/') || !m.file.endsWith('.ko')) {
      throw new BaleError('E_INPUT', `initramfs module name ${JSON.stringify(m.file)}: must be a bare *.ko file name`, { subject: m.file })
    }
    entries.push(
      m.source.endsWith('.ko')
        ? { type: 'file', path: `lib/modules/${m.file}`, mode: 0o644, source: m.source }
        : { type: 'file', path: `lib/modules/${m.file}`, mode: 0o644, data: await readModuleFile(m.source) },
    )
  }
  entries.push({ type: 'file', path: 'lib/modules/modules.order', mode: 0o644, data: modules.map((m) => `${m.file}\n`).join('') })
  entries.push(...(opts.extraFiles ?? []))
  return entries
}

/**
 * Build a gzip-compressed newc initramfs. Deterministic: the same inputs give the same bytes
 * (fixed entry order, inode numbers, owners and mtimes; zlib writes a zero gzip mtime). The
 * runtime benchmark reuses this for its "bare boot that powers off at once" baseline.
 */
export async function buildInitramfs(opts: BuildInitramfsOptions): Promise<InitramfsResult> {
  const entries = await initramfsEntries(opts)
  const tmp = tempPathFor(opts.output)
  const unregister = registerCleanup(tmp)
  try {
    const hash = createHash('sha256')
    let size = 0
    const meter = new Transform({
      transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback) {
        hash.update(chunk)
        size += chunk.length
        cb(null, chunk)
      },
    })
    const cpio = new PassThrough()
    await Promise.all([
      // A failed entry must also end the compressor's pipeline, or its promise would never settle.
      writeCpio(entries, cpio).catch((e: unknown) => {
        cpio.destroy(e as Error)
        throw e
      }),
      pipeline(cpio, zlib.createGzip({ level: opts.level ?? 9 }), meter, createWriteStream(tmp, { flags: 'wx', mode: 0o644 })),
    ])
    await fs.rename(tmp, opts.output)
    return { path: opts.output, sha256: hash.digest('hex'), size }
  } catch (e) {
    await removeQuietly(tmp)
    throw e
  } finally {
    unregister()
  }
}
