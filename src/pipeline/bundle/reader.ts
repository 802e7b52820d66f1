import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream, promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Readable, Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import * as tarStream from 'tar-stream'
import { commitTemp, removeQuietly, tempPathFor, writeFileAtomic } from '../../lib/atomic.js'
import { registerCleanup } from '../../lib/cleanup.js'
import { BaleError, fromSystemError, isBaleError } from '../../lib/errors.js'
import { run } from '../../lib/exec.js'
import { type BundleManifest, MANIFEST_FILE, MAX_BUNDLE_MANIFEST_BYTES, parseManifestBytes, ROOTFS_FILE } from './manifest.js'
import { decompressFrames } from './zstd-frames.js'

/**
 * Reading bundles: frames are found by a splitter and decompressed in parallel (zstd-frames.ts),
 * the tar is walked with tar-stream, and the layout is enforced on the way: exactly
 * `manifest.json` then `rootfs.ext4`, both regular files, nothing else. rootfs.ext4 is always
 * streamed and hashed, never held in memory, and written only to temp names that are renamed
 * once its size and sha256 match the manifest.
 */

/** Decompressions in flight; same reasoning as the writer's (libuv pool shared with file I/O). */
function readConcurrency(): number {
  return Math.max(1, Math.min(3, os.availableParallelism()))
}

/** Large reads of the compressed file: fewer round trips to the libuv pool. */
const READ_CHUNK = 1024 * 1024

interface WalkHandlers {
  /** Called with manifest.json's bytes and parsed value; return false to stop reading there. */
  onManifest(manifest: BundleManifest, bytes: Buffer): boolean
  /** Receives rootfs.ext4's data and must consume it (after its header size was checked). */
  onRootfs?(data: Readable, manifest: BundleManifest): Promise<void>
  /** Hash the compressed file as it is read (for the verify report; costs a pass of SHA-256). */
  hashFile?: boolean
}

interface WalkResult {
  manifest: BundleManifest
  /** sha256 hex (when `hashFile`) and size of the compressed file; complete only when all of it was read. */
  fileSha256?: string
  fileSize: number
}

async function walkBundle(file: string, handlers: WalkHandlers): Promise<WalkResult> {
  const st = await fs.stat(file).catch((e: unknown) => {
    throw fromSystemError(e, file) ?? e
  })
  if (!st.isFile()) throw new BaleError('E_INPUT', `${file}: not a regular file`, { subject: file })

  const raw = createReadStream(file, { highWaterMark: READ_CHUNK })
  const fileHash = handlers.hashFile === true ? createHash('sha256') : undefined
  let fileSize = 0
  async function* hashed(): AsyncGenerator<Buffer> {
    for await (const chunk of raw as AsyncIterable<Buffer>) {
      fileHash?.update(chunk)
      fileSize += chunk.length
      yield chunk
    }
  }
  const tarBytes = Readable.from(decompressFrames(hashed(), { name: file, concurrency: readConcurrency() }), { objectMode: false })
  const extract = tarStream.extract()
  tarBytes.on('error', (e) => extract.destroy(e))
  tarBytes.pipe(extract as unknown as NodeJS.WritableStream)

  let manifest: BundleManifest | undefined
  let index = 0
  let stopped = false
  try {
    for await (const entry of extract) {
      const h = entry.header
      const expected = index === 0 ? MANIFEST_FILE : index === 1 ? ROOTFS_FILE : undefined
      if (expected === undefined) {
        throw new BaleError('E_INPUT', `${file}: unexpected member '${h.name}' after ${ROOTFS_FILE} (a bundle holds exactly ${MANIFEST_FILE} and ${ROOTFS_FILE})`, { subject: file })
      }
      if (h.name !== expected) {
        throw new BaleError('E_INPUT', `${file}: member ${index + 1} is '${h.name}', expected '${expected}'`, { subject: file })
      }
      if (h.type !== 'file') {
        throw new BaleError('E_INPUT', `${file}: ${h.name} is a ${h.type}, not a regular file`, { subject: file })
      }
      const data = entry as unknown as Readable
      if (index === 0) {
        if (h.size > MAX_BUNDLE_MANIFEST_BYTES) {
          throw new BaleError('E_INPUT', `${file}: ${MANIFEST_FILE} is ${h.size} bytes, over the ${MAX_BUNDLE_MANIFEST_BYTES}-byte limit`, { subject: file })
        }
        const bytes = await readAll(data)
        manifest = parseManifestBytes(bytes, `${file}: ${MANIFEST_FILE}`)
        if (!handlers.onManifest(manifest, bytes)) {
          stopped = true
          break
        }
      } else {
        const m = manifest as BundleManifest
        if (h.size !== m.rootfs.size) {
          throw new BaleError('E_DIGEST', `${file}: ${ROOTFS_FILE} is ${h.size} bytes, but the manifest says rootfs.size ${m.rootfs.size}`, { subject: file })
        }
        if (handlers.onRootfs) await handlers.onRootfs(data, m)
        else for await (const _ of data) void _
      }
      index++
    }
  } catch (e) {
    throw asReadError(e, file)
  } finally {
    extract.destroy()
    tarBytes.destroy()
    raw.destroy()
  }
  if (manifest === undefined) throw new BaleError('E_INPUT', `${file}: no ${MANIFEST_FILE} (not a bale bundle)`, { subject: file })
  if (!stopped && index < 2) throw new BaleError('E_INPUT', `${file}: no ${ROOTFS_FILE} member`, { subject: file })
  return { manifest, ...(fileHash === undefined ? {} : { fileSha256: fileHash.digest('hex') }), fileSize }
}

async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of s as AsyncIterable<Buffer>) chunks.push(c)
  return Buffer.concat(chunks)
}

function asReadError(e: unknown, file: string): BaleError {
  if (isBaleError(e)) return e
  const sys = fromSystemError(e, file)
  if (sys) return sys
  const msg = e instanceof Error ? e.message : String(e)
  // tar-stream's messages ("Unexpected end of data", "Invalid tar header") describe a bad tar.
  return new BaleError('E_INPUT', `${file}: bad tar inside the bundle: ${msg}`, { subject: file, cause: e })
}

/** Hash and count bytes passing through. */
class Meter extends Transform {
  readonly hash = createHash('sha256')
  bytes = 0
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk)
    this.bytes += chunk.length
    cb(null, chunk)
  }
}

/**
 * Stream rootfs.ext4 into `tmp` and check it against the manifest. The caller owns `tmp`
 * (registered for cleanup) and decides whether to rename or remove it.
 */
async function receiveRootfs(file: string, data: Readable, manifest: BundleManifest, tmp: string): Promise<{ sha256: string; size: number }> {
  const meter = new Meter()
  await pipeline(data, meter, createWriteStream(tmp, { flags: 'wx', mode: 0o644 }))
  const sha256 = meter.hash.digest('hex')
  if (meter.bytes !== manifest.rootfs.size) {
    throw new BaleError('E_DIGEST', `${file}: ${ROOTFS_FILE}: expected ${manifest.rootfs.size} bytes, got ${meter.bytes}`, { subject: file })
  }
  if (sha256 !== manifest.rootfs.sha256) {
    throw new BaleError('E_DIGEST', `${file}: ${ROOTFS_FILE}: expected sha256 ${manifest.rootfs.sha256} got ${sha256}`, { subject: file })
  }
  return { sha256, size: meter.bytes }
}

/** The manifest only: reads (and decompresses) no further than the first member. */
export async function readBundleManifest(file: string): Promise<BundleManifest> {
  const r = await walkBundle(file, { onManifest: () => false })
  return r.manifest
}

/**
 * Extract rootfs.ext4 to `destPath` (temp name beside it, renamed once its size and sha256
 * match the manifest).
 */
export async function extractRootfs(file: string, destPath: string): Promise<{ sha256: string; size: number }> {
  const tmp = tempPathFor(destPath)
  const unregister = registerCleanup(tmp)
  try {
    let got: { sha256: string; size: number } | undefined
    await walkBundle(file, {
      onManifest: () => true,
      onRootfs: async (data, manifest) => {
        got = await receiveRootfs(file, data, manifest, tmp)
      },
    })
    await commitTemp(tmp, destPath)
    return got as { sha256: string; size: number }
  } catch (e) {
    await removeQuietly(tmp)
    throw asWriteError(e, destPath)
  } finally {
    unregister()
  }
}

/** Extract both members into `dir` (created if needed); nothing is left behind on failure. */
export async function unpackBundle(file: string, dir: string): Promise<{ manifest: BundleManifest; rootfs: string }> {
  await fs.mkdir(dir, { recursive: true }).catch((e: unknown) => {
    throw fromSystemError(e, dir) ?? e
  })
  const rootfs = path.join(dir, ROOTFS_FILE)
  const tmp = tempPathFor(rootfs)
  const unregister = registerCleanup(tmp)
  try {
    let manifestBytes: Buffer | undefined
    const r = await walkBundle(file, {
      onManifest: (_m, bytes) => {
        manifestBytes = bytes
        return true
      },
      onRootfs: async (data, manifest) => {
        await receiveRootfs(file, data, manifest, tmp)
      },
    })
    // Both members are verified before either appears under its final name.
    await writeFileAtomic(path.join(dir, MANIFEST_FILE), manifestBytes as Buffer)
    await commitTemp(tmp, rootfs)
    return { manifest: r.manifest, rootfs }
  } catch (e) {
    await removeQuietly(tmp)
    throw asWriteError(e, dir)
  } finally {
    unregister()
  }
}

function asWriteError(e: unknown, dest: string): unknown {
  if (isBaleError(e)) return e
  return fromSystemError(e, dest) ?? e
}

export interface VerifyReport {
  file: string
  /** sha256 (hex) and size of the bundle file itself. */
  sha256: string
  size: number
  manifest: BundleManifest
  rootfs: { size: number; sha256: string }
  /** The checks that passed, in order. */
  checks: string[]
}

/**
 * Check a bundle completely: zstd framing, exact tar layout, manifest schema, rootfs size and
 * sha256 against the manifest (streaming), then `e2fsck -fn` on an extracted temporary copy,
 * which is removed afterwards. Returns what was checked, or throws a BaleError naming the
 * first failure (E_INPUT layout/schema, E_DIGEST rootfs mismatch, E_TOOL e2fsck).
 */
export async function verifyBundle(file: string): Promise<VerifyReport> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-verify-'))
  const unregister = registerCleanup(work)
  try {
    const tmp = path.join(work, ROOTFS_FILE)
    let rootfs: { sha256: string; size: number } | undefined
    const r = await walkBundle(file, {
      onManifest: () => true,
      onRootfs: async (data, manifest) => {
        rootfs = await receiveRootfs(file, data, manifest, tmp)
      },
      hashFile: true,
    })
    const checks = ['zstd frames', `tar layout (${MANIFEST_FILE}, ${ROOTFS_FILE})`, 'manifest schema', `${ROOTFS_FILE} size and sha256`]
    await e2fsck(file, tmp)
    checks.push('e2fsck -fn')
    return { file, sha256: r.fileSha256 as string, size: r.fileSize, manifest: r.manifest, rootfs: rootfs as { sha256: string; size: number }, checks }
  } finally {
    await removeQuietly(work)
    unregister()
  }
}

/**
 * e2fsck's exit status is a bit mask (0 clean, 4 errors left uncorrected, 8 operational
 * error, …): every status is read here and anything but 0 is a failure with its first finding.
 */
const ANY_EXIT_STATUS = Array.from({ length: 256 }, (_, i) => i)

async function e2fsck(file: string, image: string): Promise<void> {
  const res = await run('e2fsck', ['-fn', image], { okCodes: ANY_EXIT_STATUS })
  if (res.code === 0) return
  const problem = `${res.stdout}\n${res.stderr}`
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l !== '' && !/^e2fsck \d/.test(l) && !/^Pass \d/.test(l))
  throw new BaleError('E_TOOL', `${file}: ${ROOTFS_FILE} fails e2fsck -fn (exit ${res.code}): ${problem ?? 'no details'}`, { subject: file })
}
