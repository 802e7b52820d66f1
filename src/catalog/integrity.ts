import { createHash, type Hash } from 'node:crypto'
import { createWriteStream, promises as fs } from 'node:fs'
import { Transform, type Readable, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import ssri from 'ssri'
import { removeQuietly, tempPathFor } from '../lib/atomic.js'
import { registerCleanup } from '../lib/cleanup.js'
import { BaleError, fromSystemError } from '../lib/errors.js'

/**
 * Digests of catalog files. Every file is described twice: an ssri integrity string (what
 * index.json and npm-style tooling carry; sha512 by default, as ssri and npm do) and a plain
 * SHA-256 (what OCI descriptors and `sha256sum -c` use). Both are computed in one pass.
 */
export interface FileDigests {
  readonly size: number
  /** Lowercase hex. */
  readonly sha256: string
  /** ssri string, e.g. `sha512-…`. */
  readonly integrity: string
}

export interface ExpectedDigests {
  readonly size?: number
  readonly sha256?: string
  readonly integrity?: string
}

/** ssri's default and npm's choice. */
export const DEFAULT_INTEGRITY_ALGORITHM = 'sha512'

/** The algorithm to hash with so that `expected` can be checked: its strongest one, else sha512. */
export function integrityAlgorithm(expected?: string): string {
  if (expected === undefined) return DEFAULT_INTEGRITY_ALGORITHM
  const parsed = ssri.parse(expected)
  const algo = parsed.pickAlgorithm()
  if (!algo) throw new BaleError('E_INPUT', `integrity '${expected}': no supported hash`, { subject: expected })
  return algo
}

/** A pass-through that hashes (sha256 + one integrity algorithm) and counts what flows through it. */
export class DigestingStream extends Transform {
  private readonly sha256 = createHash('sha256')
  private readonly sri: Hash
  private count = 0

  constructor(readonly algorithm: string = DEFAULT_INTEGRITY_ALGORITHM) {
    super()
    this.sri = createHash(algorithm)
  }

  /** Feed bytes that are already on disk (a resumed download's prefix) without passing them on. */
  absorb(chunk: Buffer): void {
    this.sha256.update(chunk)
    if (this.algorithm !== 'sha256') this.sri.update(chunk)
    this.count += chunk.length
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.absorb(chunk)
    cb(null, chunk)
  }

  get size(): number {
    return this.count
  }

  /** Call once, after the stream has ended. */
  digests(): FileDigests {
    const hex = this.sha256.digest('hex')
    const sriHex = this.algorithm === 'sha256' ? hex : this.sri.digest('hex')
    return { size: this.count, sha256: hex, integrity: ssri.fromHex(sriHex, this.algorithm).toString() }
  }
}

/**
 * Compare what was read with what was promised. `what` names the entry or file in the message,
 * e.g. `debian@12 (bundles/debian/debian-12.bundle.tar.zst): expected sha512-… got sha512-…`.
 */
export function checkDigests(got: FileDigests, expected: ExpectedDigests, what: string): void {
  if (expected.size !== undefined && got.size !== expected.size) {
    throw new BaleError('E_DIGEST', `${what}: expected ${expected.size} bytes got ${got.size}`, { subject: what })
  }
  // ssri first: the integrity string is what catalogs promise; the sha256 backs it up.
  if (expected.integrity !== undefined) {
    const want = ssri.parse(expected.integrity)
    if (want.match(got.integrity) === false) {
      throw new BaleError('E_DIGEST', `${what}: expected ${expected.integrity} got ${got.integrity}`, { subject: what })
    }
  }
  if (expected.sha256 !== undefined && got.sha256 !== expected.sha256) {
    throw new BaleError('E_DIGEST', `${what}: expected sha256:${expected.sha256} got sha256:${got.sha256}`, { subject: what })
  }
}

async function openForRead(file: string): Promise<Readable> {
  try {
    const fh = await fs.open(file, 'r')
    const st = await fh.stat()
    if (!st.isFile()) {
      await fh.close()
      throw new BaleError('E_INPUT', `${file}: not a regular file`, { subject: file })
    }
    return fh.createReadStream()
  } catch (e) {
    throw fromSystemError(e, file) ?? e
  }
}

/** Hash a file (streamed; memory does not grow with its size). */
export async function digestFile(file: string, algorithm: string = DEFAULT_INTEGRITY_ALGORITHM): Promise<FileDigests> {
  const d = new DigestingStream(algorithm)
  const src = await openForRead(file)
  await pipeline(src, d, async (s: AsyncIterable<unknown>) => {
    for await (const _ of s) {
      // drained: the digest is all we want
    }
  })
  return d.digests()
}

/** Hash a file and check it against `expected`; returns the digests when they match. */
export async function verifyFile(file: string, expected: ExpectedDigests, what: string): Promise<FileDigests> {
  const got = await digestFile(file, integrityAlgorithm(expected.integrity))
  checkDigests(got, expected, what)
  return got
}

/**
 * Copy `src` to `dest`, verifying while copying: the bytes are read once, hashed as they are
 * written to a temp name beside `dest`, and renamed into place only if they match `expected`
 * (so what lands at `dest` is exactly what was checked, with no window to swap the source
 * between a check and a copy). On a mismatch nothing is left at `dest` or beside it.
 */
export async function copyVerified(src: string, dest: string, expected: ExpectedDigests, what: string): Promise<FileDigests> {
  const tmp = tempPathFor(dest)
  const unregister = registerCleanup(tmp)
  try {
    const d = new DigestingStream(integrityAlgorithm(expected.integrity))
    const input = await openForRead(src)
    const out = createWriteStream(tmp, { flags: 'wx', mode: 0o644 })
    await pipeline(input, d, out)
    const got = d.digests()
    checkDigests(got, expected, what)
    await fs.rename(tmp, dest)
    return got
  } catch (e) {
    await removeQuietly(tmp)
    throw fromSystemError(e, dest) ?? e
  } finally {
    unregister()
  }
}

/** Stream a readable through the digester into a fresh file (no verification; the caller checks). */
export async function writeDigested(input: Readable, dest: string, algorithm?: string): Promise<FileDigests> {
  const d = new DigestingStream(algorithm)
  await pipeline(input, d, createWriteStream(dest, { flags: 'wx', mode: 0o644 }))
  return d.digests()
}

