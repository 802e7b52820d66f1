import { createHash, type Hash } from 'node:crypto'
import { Readable, Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream'
import { createGunzip } from 'node:zlib'
import { Decompress } from 'fzstd'
import { BaleError, fromSystemError, isBaleError } from '../../lib/errors.js'
import type { LayerBlob, LayerCompression } from './types.js'

/**
 * The derived half of every source (STYLE.md item 2): turn a layer's stored bytes into a
 * verified stream of uncompressed tar. Sources only say how to open the bytes; here, once for
 * all of them:
 *   stored bytes → sha256 + byte count (against blob.digest / blob.size)
 *                → decompress (none / gzip / zstd, or detected from magic bytes)
 *                → sha256 of the tar (against blob.diffId) → consumer
 * Every check runs in a flush that precedes the end of the stream the consumer reads, so a
 * mismatch or truncation always arrives as an 'error' and never after a clean 'end': a consumer
 * using stream.pipeline cannot mistake a bad layer for a good one.
 */
export interface LayerDigests {
  /** Digest of the stored bytes, as computed (`sha256:…`). */
  digest: string
  /** Digest of the uncompressed tar, as computed (`sha256:…`). */
  diffId: string
  /** Number of stored bytes read. */
  size: number
}

export interface OpenedLayer {
  tar: Readable
  /** Settles after the tar stream: resolves with what was computed, rejects with the stream's error. */
  digests: Promise<LayerDigests>
}

/** Magic numbers at the start of a compressed stream (RFC 1952; RFC 8878 §3.1.1; xz; bzip2). */
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b])
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd])
const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])
const BZIP2_MAGIC = Buffer.from('BZh')
/** Enough bytes to tell every format above apart. */
export const MAGIC_PEEK = 6

/**
 * Input is fed to the decompressors in slices. fzstd processes a whole input chunk at once,
 * whatever the consumer's pace: zstd's smallest block (an RLE block: 3-byte header + 1 byte) can
 * expand to 128 KiB, so a 1 KiB slice yields ≤ 32 MiB. Node's zlib instead stops in the middle
 * of an input chunk when its reader's buffer is full (lib/zlib.js, processCallback; a unit test
 * holds it to that with a 256 MiB gzip bomb), so a gzip slice bounds no burst: its size only
 * sets how many round trips to the libuv pool a layer costs, each one a callback and a buffer on
 * the main thread, which is what layers wait on.
 */
const GZIP_FEED_SLICE = 128 * 1024
const ZSTD_FEED_SLICE = 1024
/**
 * gunzip's output chunk (zlib's default is 16 KiB). On the Debian image's 122 MB layer, 16 KiB
 * slices and chunks took 0.8-1.1 s of CPU in ~10k chunks, 32 KiB slices and 128 KiB chunks
 * 0.62-0.65 s in ~2k; 128 KiB slices and 512 KiB chunks brought both layers from ~1.09 s to
 * ~0.93 s (A/B, 5 runs each, medians). What waits for a slow reader is a chunk or two.
 */
const GUNZIP_CHUNK = 512 * 1024

const SUPPORTED_DIGEST = /^(sha256|sha512):[0-9a-f]+$/

export async function openLayerTar(blob: LayerBlob, label: string): Promise<OpenedLayer> {
  const name = blob.digest !== undefined && !label.includes(blob.digest) ? `${label} ${blob.digest}` : label
  const storedAlg = algorithmOf(blob.digest, name)
  const diffAlg = algorithmOf(blob.diffId, name)

  let raw: Readable
  try {
    raw = await blob.open()
  } catch (e) {
    throw asBaleError(e, name)
  }

  let compression: Exclude<LayerCompression, 'detect'>
  if (blob.compression === 'detect') {
    const peeked = await peek(raw, MAGIC_PEEK).catch((e: unknown) => {
      raw.destroy()
      throw asBaleError(e, name)
    })
    raw = peeked.stream
    compression = detectCompression(peeked.head, name)
  } else {
    compression = blob.compression
  }

  const stored = new StoredVerifier(name, storedAlg, blob.digest, blob.size)
  const decompressor = makeDecompressor(compression)
  const out = new TarVerifier(name, diffAlg, blob.diffId)

  let settled = false
  let resolveDigests!: (d: LayerDigests) => void
  let rejectDigests!: (e: unknown) => void
  const digests = new Promise<LayerDigests>((resolve, reject) => {
    resolveDigests = resolve
    rejectDigests = reject
  })
  // Callers may legitimately never await the digests (e.g. flatten failed first).
  digests.catch(() => undefined)

  const fail = (err: BaleError): void => {
    if (settled) return
    settled = true
    rejectDigests(err)
    out.destroy(err)
  }
  out.onVerified = (diffId) => {
    settled = true
    resolveDigests({ digest: stored.computed ?? '', diffId, size: stored.bytes })
  }
  out.on('error', (e) => {
    if (!settled) {
      settled = true
      rejectDigests(e)
    }
  })

  const stages: Array<NodeJS.ReadableStream | NodeJS.ReadWriteStream> = [raw, stored, ...decompressor.stages]
  // The upstream stages run under one pipeline; the consumer's stream (`out`) is fed with
  // pipe(), which does not forward errors, so that an error can be classified (below) before
  // the consumer sees it, and so that `out` only ends after every upstream check passed.
  const upstream = pipeline(stages as unknown as [Readable, Transform], (err) => {
    if (err === null || err === undefined) return
    if (settled) return
    void classify(err, blob, name, storedAlg, decompressor.stages).then(fail)
  }) as unknown as Readable
  upstream.pipe(out)
  // A consumer that stops early (flatten rejected an entry) releases the file handles, and the
  // digests settle here: Node 24's pipeline no longer reports a premature close when its
  // last stream is destroyed without an error, so nothing else would ever settle them.
  out.on('close', () => {
    if (!upstream.readableEnded) upstream.destroy()
    if (!settled) {
      settled = true
      rejectDigests(new BaleError('E_INPUT', `${name}: layer closed before it was read to the end`, { subject: blob.digest ?? name }))
    }
  })

  return { tar: out, digests }
}

/** 'sha256' / 'sha512' from a digest string, or undefined when there is no digest to check. */
function algorithmOf(digest: string | undefined, name: string): string | undefined {
  if (digest === undefined) return undefined
  const m = SUPPORTED_DIGEST.exec(digest)
  if (!m) throw new BaleError('E_INPUT', `${name}: unsupported digest '${digest}' (expected sha256:<hex> or sha512:<hex>)`, { subject: digest })
  return m[1]
}

function hashOf(alg: string | undefined): Hash {
  // Without an expected digest we still compute sha256: it is what the manifest records.
  return createHash(alg ?? 'sha256')
}

/** Counts and hashes the stored bytes; fails as soon as there are more bytes than announced. */
class StoredVerifier extends Transform {
  bytes = 0
  computed: string | undefined
  private readonly hash: Hash

  constructor(
    private readonly name: string,
    private readonly alg: string | undefined,
    private readonly expectedDigest: string | undefined,
    private readonly expectedSize: number | undefined,
  ) {
    super()
    this.hash = hashOf(alg)
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length
    if (this.expectedSize !== undefined && this.bytes > this.expectedSize) {
      cb(new BaleError('E_DIGEST', `${this.name}: size mismatch: expected ${this.expectedSize} bytes, got more`, { subject: this.expectedDigest ?? this.name }))
      return
    }
    this.hash.update(chunk)
    cb(null, chunk)
  }

  override _flush(cb: TransformCallback): void {
    this.computed = `${this.alg ?? 'sha256'}:${this.hash.digest('hex')}`
    cb(storedMismatch(this.name, this.expectedDigest, this.expectedSize, this.computed, this.bytes) ?? null)
  }
}

function storedMismatch(name: string, expectedDigest: string | undefined, expectedSize: number | undefined, digest: string, bytes: number): BaleError | undefined {
  const subject = expectedDigest ?? name
  if (expectedSize !== undefined && bytes < expectedSize) {
    return new BaleError('E_DIGEST', `${name}: truncated: expected ${expectedSize} bytes, got ${bytes}`, { subject })
  }
  if (expectedSize !== undefined && bytes > expectedSize) {
    return new BaleError('E_DIGEST', `${name}: size mismatch: expected ${expectedSize} bytes, got ${bytes}`, { subject })
  }
  if (expectedDigest !== undefined && digest !== expectedDigest) {
    return new BaleError('E_DIGEST', `${name}: expected ${expectedDigest} got ${digest}`, { subject })
  }
  return undefined
}

/** Hashes the uncompressed tar; the diff_id check runs before the consumer sees 'end'. */
class TarVerifier extends Transform {
  onVerified: (diffId: string) => void = () => undefined
  private readonly hash: Hash

  constructor(
    private readonly name: string,
    private readonly alg: string | undefined,
    private readonly expected: string | undefined,
  ) {
    super()
    this.hash = hashOf(alg)
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk)
    cb(null, chunk)
  }

  override _flush(cb: TransformCallback): void {
    const got = `${this.alg ?? 'sha256'}:${this.hash.digest('hex')}`
    if (this.expected !== undefined && got !== this.expected) {
      cb(new BaleError('E_DIGEST', `${this.name}: expected diff_id ${this.expected} got ${got}`, { subject: this.expected }))
      return
    }
    this.onVerified(got)
    cb()
  }
}

interface Decompressor {
  kind: Exclude<LayerCompression, 'detect'>
  /** Streams inserted between the stored-bytes verifier and the tar verifier. */
  stages: Array<NodeJS.ReadWriteStream>
}

function makeDecompressor(kind: Exclude<LayerCompression, 'detect'>): Decompressor {
  switch (kind) {
    case 'none':
      return { kind, stages: [] }
    case 'gzip':
      return { kind, stages: [new Slicer(GZIP_FEED_SLICE), createGunzip({ chunkSize: GUNZIP_CHUNK })] }
    case 'zstd':
      return { kind, stages: [new Slicer(ZSTD_FEED_SLICE), new ZstdDecompressor()] }
  }
}

/** Re-chunks its input into slices of at most `size` bytes (see *_FEED_SLICE). */
class Slicer extends Transform {
  constructor(private readonly size: number) {
    super()
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    for (let off = 0; off < chunk.length; off += this.size) this.push(chunk.subarray(off, off + this.size))
    cb()
  }
}

/**
 * fzstd's streaming decoder (@mongodb-js/zstd is buffer-only, and a layer must not be held in
 * memory). It accepts concatenated and skippable frames. It does not check frame checksums;
 * the diff_id check covers every byte it produces.
 */
class ZstdDecompressor extends Transform {
  private readonly decoder: Decompress

  constructor() {
    super()
    this.decoder = new Decompress((data) => {
      // fzstd hands out a fresh array per block; wrap it without copying.
      if (data.length > 0) this.push(Buffer.from(data.buffer, data.byteOffset, data.length))
    })
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.decoder.push(chunk)
      cb()
    } catch (e) {
      cb(zstdError(e))
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.decoder.push(new Uint8Array(0), true)
      cb()
    } catch (e) {
      cb(zstdError(e))
    }
  }
}

function zstdError(e: unknown): Error {
  const msg = e instanceof Error ? e.message : String(e)
  return new Error(`zstd: ${msg}`)
}

/**
 * Turn the pipeline's first error into the one line the user sees. A decompressor failing on
 * a corrupt blob is a symptom; when the blob has a digest, the cause is better named by it, so
 * the blob is re-read from a fresh stream and hashed: a mismatch is reported as E_DIGEST, a match
 * means the publisher really shipped bad compressed data (E_INPUT).
 */
async function classify(
  err: Error,
  blob: LayerBlob,
  name: string,
  alg: string | undefined,
  decompStages: Array<NodeJS.ReadWriteStream>,
): Promise<BaleError> {
  if (isBaleError(err)) return err
  const fromDecompressor = decompStages.some((s) => (s as unknown as { errored?: unknown }).errored === err) || isZlibError(err)
  if (!fromDecompressor) return asBaleError(err, name)
  const what = describeDecompressError(err)
  if (blob.digest !== undefined) {
    try {
      const { digest, bytes } = await hashFresh(blob, alg)
      const mismatch = storedMismatch(name, blob.digest, blob.size, digest, bytes)
      if (mismatch) return mismatch
    } catch {
      // Could not re-read: fall through to the decompressor's own message.
    }
  }
  return new BaleError('E_INPUT', `${name}: ${what}`, { subject: blob.digest ?? name, cause: err })
}

function isZlibError(err: Error): boolean {
  const code = (err as NodeJS.ErrnoException).code
  return typeof code === 'string' && code.startsWith('Z_')
}

function describeDecompressError(err: Error): string {
  if (isZlibError(err)) {
    if ((err as NodeJS.ErrnoException).code === 'Z_BUF_ERROR') return 'truncated gzip data (unexpected end of file)'
    return `corrupt gzip data: ${err.message}`
  }
  if (/unexpected EOF/i.test(err.message)) return 'truncated zstd data (unexpected end of file)'
  return `corrupt zstd data: ${err.message.replace(/^zstd: /, '')}`
}

/**
 * When a consumer (flatten) fails on a layer, was it the stored bytes? A corrupt byte in a zstd
 * or uncompressed layer can decode "successfully" into a tar that flatten rejects before the
 * stored digest is checked at the end; re-hashing names the real cause (E_DIGEST) instead.
 * Undefined when the blob has no digest or its bytes match.
 */
export async function storedBytesMismatch(blob: LayerBlob, label: string): Promise<BaleError | undefined> {
  if (blob.digest === undefined) return undefined
  try {
    const alg = algorithmOf(blob.digest, label)
    const { digest, bytes } = await hashFresh(blob, alg)
    return storedMismatch(label, blob.digest, blob.size, digest, bytes)
  } catch {
    return undefined // cannot re-read (e.g. stdin): keep the consumer's own error
  }
}

async function hashFresh(blob: LayerBlob, alg: string | undefined): Promise<{ digest: string; bytes: number }> {
  const s = await blob.open()
  const h = hashOf(alg)
  let bytes = 0
  for await (const chunk of s as AsyncIterable<Buffer>) {
    h.update(chunk)
    bytes += chunk.length
    // Never read past what was announced: a hostile source could stream forever.
    if (blob.size !== undefined && bytes > blob.size) {
      s.destroy()
      break
    }
  }
  return { digest: `${alg ?? 'sha256'}:${h.digest('hex')}`, bytes }
}

export function detectCompression(head: Buffer, name: string): Exclude<LayerCompression, 'detect'> {
  const starts = (magic: Buffer): boolean => head.length >= magic.length && head.subarray(0, magic.length).equals(magic)
  if (starts(GZIP_MAGIC)) return 'gzip'
  if (starts(ZSTD_MAGIC)) return 'zstd'
  if (starts(XZ_MAGIC)) throw new BaleError('E_INPUT', `${name}: xz-compressed tar is not supported (use gzip, zstd or none)`, { subject: name })
  if (starts(BZIP2_MAGIC)) throw new BaleError('E_INPUT', `${name}: bzip2-compressed tar is not supported (use gzip, zstd or none)`, { subject: name })
  return 'none'
}

/**
 * Read the first `n` bytes of a fresh (paused) stream without consuming them. Returns the
 * stream to use from now on: the same one with the bytes unshifted, or, if the stream ended
 * within `n` bytes (an 'end' cannot be undone), a new stream holding what was read.
 */
export async function peek(stream: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const chunks: Buffer[] = []
  let len = 0
  let ended = false
  const onEnd = (): void => {
    ended = true
  }
  stream.on('end', onEnd)
  try {
    while (len < n && !ended) {
      const chunk = stream.read() as Buffer | null
      if (chunk !== null) {
        chunks.push(chunk)
        len += chunk.length
        continue
      }
      await new Promise<void>((resolve, reject) => {
        const done = (): void => {
          stream.off('readable', done)
          stream.off('end', done)
          stream.off('error', onError)
          resolve()
        }
        const onError = (e: unknown): void => {
          stream.off('readable', done)
          stream.off('end', done)
          reject(e)
        }
        stream.once('readable', done)
        stream.once('end', done)
        stream.once('error', onError)
      })
    }
  } finally {
    stream.off('end', onEnd)
  }
  const head = Buffer.concat(chunks)
  if (ended) return { head, stream: Readable.from(head.length > 0 ? [head] : []) }
  stream.unshift(head)
  return { head, stream }
}

function asBaleError(e: unknown, name: string): BaleError {
  if (isBaleError(e)) return e
  const sys = fromSystemError(e, name)
  if (sys) return sys
  const msg = e instanceof Error ? e.message : String(e)
  return new BaleError('E_INPUT', `${name}: ${msg}`, { subject: name, cause: e })
}
