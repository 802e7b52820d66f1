import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import ssri from 'ssri'
import * as tarStream from 'tar-stream'
import { commitTemp, removeQuietly, tempPathFor } from '../../lib/atomic.js'
import { registerCleanup } from '../../lib/cleanup.js'
import { BaleError, fromSystemError, isBaleError } from '../../lib/errors.js'
import { hashOnThread, type ThreadHash } from '../../lib/hash.js'
import { drained, type TarEntrySink } from '../../lib/tar-entry.js'
import { type DataRange, dataRanges, inHole, readSparse } from '../../lib/sparse.js'
import { type BundleManifest, MANIFEST_FILE, parseManifest, ROOTFS_FILE, serializeManifest } from './manifest.js'
import { SKIPPABLE_HEADER, skippableFrame } from './zstd-frames.js'
import { compressFrame } from './zstd-native.js'

/**
 * Default zstd level for bundles, chosen with bench/zstd-level.ts (run it to re-measure). On a
 * 481 MiB ext4 image holding 400 MB of /usr/bin and /usr/share, through this writer (8 MiB
 * frames, 2 in flight), on the 2-core build machine while other jobs loaded it (load ≈ 15: the
 * seconds are inflated, the ratios between levels are what counts), 2026-11-23:
 *   level  1:  14.6 s, 172.2 MiB      level  3:  21.9 s, 152.4 MiB      level 6: 37.8 s, 144.6 MiB
 *   level 10: 109.9 s, 138.4 MiB      level 19: ~1170 s (extrapolated from 16 MiB), ~17% below 3
 * DESIGN.md's quiet-machine figures (zstd -T2 of a Debian image) have the same shape: level 3
 * 0.67 s 78 MB, 10: 3.5 s 73 MB, 19: 60 s 67 MB. Level 3 takes a fifth of level 10's time for
 * ~10% more bytes; level 1 saves a third of the time for 13% more bytes; above 10 costs minutes.
 * A bundle is written by every make-bundle and catalog build and downloaded far less often, so
 * the default favours time; `--level 19` is there for publishing.
 */
export const DEFAULT_ZSTD_LEVEL = 3

/**
 * The tar stream is cut into frames of this many uncompressed bytes, each an independent zstd
 * frame. 8 MiB: above zstd's window at the usual levels (level 3: 2 MiB, level 10: 4 MiB), so
 * cutting costs little ratio — 0.8% against one `zstd -3` stream in the benchmark above; small
 * enough that the frames in flight (input + output each) stay in tens of MiB whatever the
 * rootfs size; and many frames per rootfs, so parallel compression and decompression have
 * work to share.
 */
export const FRAME_SIZE = 8 * 1024 * 1024
/** Compared against with memcmp speed (Buffer.equals), and passed on for frames in holes; never written to. */
const ZERO_FRAME = Buffer.alloc(FRAME_SIZE)

/** zstd's range: 1 (fastest) … 22 (ultra; 20+ need much memory). */
const MIN_LEVEL = 1
const MAX_LEVEL = 22

/**
 * Frames compressed at once. The native compressor runs on the libuv pool (4 threads unless
 * UV_THREADPOOL_SIZE says otherwise), which also serves our file reads and writes: keeping one
 * thread free for I/O avoids starving the reader. At most one per core, and at least 1.
 */
export function defaultConcurrency(): number {
  return Math.max(1, Math.min(3, os.availableParallelism()))
}

/** ustar header and data blocks (tar-stream writes one 512-byte header for each of our two short ASCII names). */
const TAR_BLOCK = 512

/** ZSTD_COMPRESSBOUND (zstd.h): the most bytes one frame of `n` input bytes can take. */
export function zstdCompressBound(n: number): number {
  return n + (n >>> 8) + (n < 128 * 1024 ? (128 * 1024 - n) >>> 11 : 0)
}

/** Held in the manifest while the rootfs is hashed: same length as any real digest, so the tar around it does not move. */
const DIGEST_PLACEHOLDER = '0'.repeat(64)

/** A manifest whose rootfs.sha256 the writer fills in (or, when given, checks). */
export type BundleManifestDraft = Omit<BundleManifest, 'rootfs'> & {
  rootfs: Omit<BundleManifest['rootfs'], 'sha256'> & { sha256?: string }
}

export interface WriteBundleOptions {
  /**
   * rootfs.sha256 may be left out: the writer hashes the image while it compresses it and
   * records the digest. Given, the image must hash to it (E_DIGEST otherwise).
   */
  manifest: BundleManifestDraft
  rootfsPath: string
  out: string
  level: number
  concurrency?: number
}

export interface WriteBundleResult {
  path: string
  /** Lowercase hex SHA-256 of the bundle file (as `sha256sum` prints it). */
  sha256: string
  size: number
  /**
   * ssri integrity of the bundle file: `sha512-<base64>`. sha512 because it is ssri's (and
   * npm's) default and strongest algorithm, so `ssri.checkData`/`checkStream` and npm tooling
   * verify it as is; the sha256 above is for people and `sha256sum`.
   */
  integrity: string
  /** The manifest as written, rootfs.sha256 included. */
  manifest: BundleManifest
}

/**
 * Write `manifest.json` + `rootfs.ext4` as a tar compressed into independent zstd frames.
 * The tar headers are fixed (mtime = manifest.created, uid/gid 0, no user/group names, mode
 * 0644) and zstd is deterministic for a given level and input, so the same inputs give the
 * same bytes. Written to a temp file beside `out` (removed on error or SIGINT), fsynced, then
 * renamed. Memory is bounded by the frames in flight, not by the rootfs size.
 *
 * manifest.json comes first in the tar but records the SHA-256 of the rootfs that follows it.
 * Rather than hash the image before compressing it (~0.7 s of CPU for a 1 GiB image, most of
 * it its zeros), a worker thread hashes it while it is compressed: the tar's head (two headers
 * and the manifest) is its own frame, made last and written into room reserved at the start
 * of the file, the rest of the room filled by a skippable frame (docs/bundle-format.md). The
 * room is the head's compress bound, so the head always fits; its size depends only on the
 * inputs.
 */
export async function writeBundle(opts: WriteBundleOptions): Promise<WriteBundleResult> {
  if (!Number.isInteger(opts.level) || opts.level < MIN_LEVEL || opts.level > MAX_LEVEL) {
    throw new BaleError('E_USAGE', `--level ${opts.level}: expected an integer from ${MIN_LEVEL} to ${MAX_LEVEL}`, { subject: '--level' })
  }
  const concurrency = opts.concurrency ?? defaultConcurrency()
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new BaleError('E_USAGE', `concurrency ${concurrency}: expected a positive integer`)

  const given = opts.manifest.rootfs.sha256
  const draft = parseManifest({ ...opts.manifest, rootfs: { ...opts.manifest.rootfs, sha256: given ?? DIGEST_PLACEHOLDER } }, 'manifest')
  const manifestBytes = serializeManifest(draft)
  const mtime = new Date(draft.created)

  const st = await fs.stat(opts.rootfsPath).catch((e: unknown) => {
    throw fromSystemError(e, opts.rootfsPath) ?? e
  })
  if (!st.isFile()) throw new BaleError('E_INPUT', `${opts.rootfsPath}: not a regular file`, { subject: opts.rootfsPath })
  if (st.size !== draft.rootfs.size) {
    throw new BaleError('E_INPUT', `${opts.rootfsPath}: ${st.size} bytes, but the manifest says rootfs.size ${draft.rootfs.size}`, { subject: opts.rootfsPath })
  }
  const outDir = path.dirname(opts.out)
  const dirSt = await fs.stat(outDir).catch(() => undefined)
  if (dirSt === undefined || !dirSt.isDirectory()) {
    throw new BaleError('E_NOT_FOUND', `${outDir}: no such directory (for ${opts.out})`, { subject: outDir })
  }

  const tmp = tempPathFor(opts.out)
  const unregister = registerCleanup(tmp)
  let hashing: ThreadHash | undefined
  const headLength = tarPrefixBytes(manifestBytes.length)
  const reserved = zstdCompressBound(headLength) + SKIPPABLE_HEADER
  let size = reserved
  let fh: fs.FileHandle | undefined
  let rootfs: fs.FileHandle | undefined
  const pack = tarStream.pack()
  // Frame buffers: the rootfs is read straight into them and, once their frame is compressed,
  // they are reused. At most concurrency + 2 exist, instead of a fresh buffer per read for the
  // garbage collector (which, with the copies into frames, was half the main thread's time).
  const spare: Buffer[] = []
  const alloc = (): Buffer => spare.pop() ?? Buffer.allocUnsafe(FRAME_SIZE)
  try {
    rootfs = await fs.open(opts.rootfsPath, 'r')
    fh = await fs.open(tmp, 'wx', 0o644)
    const out = fh
    // The head's room, written over at the end.
    await out.write(Buffer.alloc(reserved))
    // An image's unused blocks are holes: zero-filled here rather than read (lib/sparse.ts).
    const ranges = await dataRanges(opts.rootfsPath, st.size)
    hashing = hashOnThread(opts.rootfsPath, st.size, { ranges })
    const rootfsReads = readFrames(rootfs, st.size, alloc, ranges)
    const feeding = feedTar(pack, manifestBytes, rootfsReads, opts.rootfsPath, st.size, mtime)
    // If feeding fails, the pack stream fails too, and the loop below throws that error.
    feeding.catch((e: unknown) => pack.destroy(e instanceof Error ? e : new Error(String(e))))

    const inFlight: Array<Promise<Buffer>> = []
    const writeNext = async (): Promise<void> => {
      const frame = await (inFlight.shift() as Promise<Buffer>)
      size += frame.length
      await out.write(frame)
    }
    // streamx Readables are async-iterable at run time; tar-stream's types do not say so.
    // An ext4 image is mostly unused blocks: every all-zero frame compresses to the same bytes,
    // so it is compressed once and reused (a 1 GiB image holding 200 MB is ~100 such frames).
    let zeroFrame: Promise<Buffer> | undefined
    let head: Buffer | undefined
    for await (const chunk of fixedChunks(pack as unknown as AsyncIterable<Buffer>, FRAME_SIZE, alloc, headLength)) {
      if (head === undefined) {
        head = chunk // kept until the rootfs digest is known
        continue
      }
      const zero = chunk === ZERO_FRAME || (chunk.length === FRAME_SIZE && chunk.equals(ZERO_FRAME))
      if (zero) zeroFrame ??= compressFrame(ZERO_FRAME, opts.level)
      const p = (zero && zeroFrame ? zeroFrame : compressFrame(chunk, opts.level)).then((frame) => {
        if (chunk.length === FRAME_SIZE && chunk !== ZERO_FRAME) spare.push(chunk)
        return frame
      })
      // Observed at once: a failure while an earlier frame is awaited must not go unhandled.
      p.catch(() => undefined)
      inFlight.push(p)
      if (inFlight.length >= concurrency) await writeNext()
    }
    while (inFlight.length > 0) await writeNext()
    await feeding
    if (head === undefined) throw new Error('the tar stream ended before its head')

    const sha256 = await hashing.digest.catch((e: unknown) => {
      throw new BaleError('E_INPUT', `${opts.rootfsPath}: changed while the bundle was written (${e instanceof Error ? e.message : String(e)})`, { subject: opts.rootfsPath, cause: e })
    })
    if (given !== undefined && given !== sha256) {
      throw new BaleError('E_DIGEST', `${opts.rootfsPath}: sha256 ${sha256}, but the manifest says rootfs.sha256 ${given}`, { subject: opts.rootfsPath })
    }
    const manifest = { ...draft, rootfs: { ...draft.rootfs, sha256 } }
    const headFrame = await compressFrame(withManifest(head, serializeManifest(manifest)), opts.level)
    if (headFrame.length > reserved - SKIPPABLE_HEADER) throw new Error(`the head frame (${headFrame.length} bytes) exceeds its bound (${reserved - SKIPPABLE_HEADER})`)
    const start = Buffer.concat([headFrame, skippableFrame(reserved - headFrame.length)])
    await out.write(start, 0, start.length, 0)
    // The file's own digests, now that its first bytes exist: read back from the page cache,
    // each on its own thread, while it is made durable.
    const [sha256Of, sha512Of] = [hashOnThread(tmp, size), hashOnThread(tmp, size, { algorithm: 'sha512' })]
    const [fileSha256, fileSha512] = await Promise.all([sha256Of.digest, sha512Of.digest, out.sync()])
    await out.close()
    fh = undefined
    await rootfs.close()
    rootfs = undefined
    await commitTemp(tmp, opts.out)
    unregister()
    return { path: opts.out, sha256: fileSha256, size, integrity: ssri.fromHex(fileSha512, 'sha512').toString(), manifest }
  } catch (e) {
    pack.destroy()
    await hashing?.stop()
    await rootfs?.close().catch(() => undefined)
    await fh?.close().catch(() => undefined)
    await removeQuietly(tmp)
    unregister()
    if (isBaleError(e)) throw e
    throw fromSystemError(e, opts.out) ?? new BaleError('E_TOOL', `${opts.out}: writing the bundle failed: ${e instanceof Error ? e.message : String(e)}`, { subject: opts.out, cause: e })
  }
}

/** The tar head with the final manifest in place of the draft (same length: only the digest changed). */
function withManifest(head: Buffer, manifestBytes: Buffer): Buffer {
  if (TAR_BLOCK + manifestBytes.length > head.length - TAR_BLOCK) throw new Error('the manifest outgrew its place in the tar head')
  const out = Buffer.from(head)
  manifestBytes.copy(out, TAR_BLOCK)
  return out
}

/** Bytes of the tar stream before the rootfs's first byte: two headers and the padded manifest. */
function tarPrefixBytes(manifestLength: number): number {
  return TAR_BLOCK + Math.ceil(manifestLength / TAR_BLOCK) * TAR_BLOCK + TAR_BLOCK
}

/**
 * Read `size` bytes of `file` into whole buffers from `alloc` (the last may be shorter); holes
 * (outside `ranges`, when given) are zero-filled rather than read. The tar head being its own
 * frame, every read is exactly one frame of the tar stream, which fixedChunks() passes on
 * without copying.
 */
async function* readFrames(file: fs.FileHandle, size: number, alloc: () => Buffer, ranges: readonly DataRange[] | undefined): AsyncGenerator<Buffer> {
  let pos = 0
  while (pos < size) {
    if (size - pos >= FRAME_SIZE && inHole(ranges, pos, pos + FRAME_SIZE)) {
      // A whole frame of unused blocks: the shared zero frame, neither filled nor compared later.
      yield ZERO_FRAME
      pos += FRAME_SIZE
      continue
    }
    const buf = alloc()
    const len = Math.min(size - pos, buf.length)
    const fill = await readSparse(file, buf, 0, len, pos, ranges)
    if (fill > 0) yield fill === buf.length ? buf : buf.subarray(0, fill)
    if (fill < len) return // shorter than stat said: feedTar names the file
    pos += fill
  }
}

/** The two members, with every header field fixed so that the bytes depend only on the inputs. */
async function feedTar(pack: tarStream.Pack, manifestBytes: Buffer, rootfs: AsyncIterable<Buffer>, rootfsPath: string, rootfsSize: number, mtime: Date): Promise<void> {
  const header = (name: string, size: number): tarStream.Header => ({ name, size, mode: 0o644, uid: 0, gid: 0, uname: '', gname: '', mtime, type: 'file', linkname: '', devmajor: 0, devminor: 0 })
  await new Promise<void>((resolve, reject) => {
    pack.entry(header(MANIFEST_FILE, manifestBytes.length), manifestBytes, (err) => (err ? reject(err) : resolve()))
  })
  let sink!: TarEntrySink
  const entryDone = new Promise<void>((resolve, reject) => {
    sink = pack.entry(header(ROOTFS_FILE, rootfsSize), (err) => (err ? reject(err) : resolve()))
  })
  // Not awaited until the data is written; observed now so an early failure is not unhandled.
  // The entry's own 'error' event carries the same failure as the callback ("Size mismatch" if
  // the file changed size): the callback reports it, the listener keeps it from being thrown.
  entryDone.catch(() => undefined)
  sink.on('error', () => undefined)
  // tar-stream's entry is a streamx Writable: write with backpressure by hand.
  let read = 0
  const changed = (): BaleError => new BaleError('E_INPUT', `${rootfsPath}: changed while the bundle was written (${rootfsSize} bytes expected)`, { subject: rootfsPath })
  for await (const chunk of rootfs) {
    read += chunk.length
    if (read > rootfsSize) throw changed()
    // Closed instead of drained: the pack was torn down, and the next write ends the loop.
    if (!sink.write(chunk)) await drained(sink)
  }
  if (read !== rootfsSize) throw changed()
  sink.end(undefined)
  await entryDone
  pack.finalize()
}

/**
 * Re-cut a byte stream into buffers of exactly `size` bytes (the last may be shorter), the
 * first of them `first` bytes instead when given (a fresh buffer). Each yielded buffer belongs
 * to the consumer; `alloc` provides the next one (possibly recycled). A chunk that is exactly
 * one whole buffer at a boundary is passed on as it is, not copied: the source must not reuse
 * a chunk it has handed over.
 */
export async function* fixedChunks(source: AsyncIterable<Buffer>, size: number, alloc: () => Buffer = () => Buffer.allocUnsafe(size), first?: number): AsyncGenerator<Buffer> {
  let want = first ?? size
  let next: () => Buffer = first === undefined ? alloc : () => Buffer.allocUnsafe(first)
  let buf: Buffer | undefined
  let fill = 0
  for await (const chunk of source) {
    if (fill === 0 && chunk.length === want && want === size) {
      yield chunk
      continue
    }
    let off = 0
    while (off < chunk.length) {
      const into: Buffer = buf ?? next()
      buf = into
      const n = Math.min(want - fill, chunk.length - off)
      chunk.copy(into, fill, off, off + n)
      fill += n
      off += n
      if (fill === want) {
        yield into
        buf = undefined
        fill = 0
        want = size
        next = alloc
      }
    }
  }
  if (fill > 0 && buf !== undefined) yield buf.subarray(0, fill)
}
