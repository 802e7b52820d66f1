import { createHash, type Hash } from 'node:crypto'
import { closeSync, createReadStream, ftruncateSync, openSync, promises as fs, writevSync } from 'node:fs'
import path from 'node:path'
import { finished, type Readable } from 'node:stream'
import { removeQuietly, tempPathFor, writeFileAtomic } from '../lib/atomic.js'
import { registerCleanup } from '../lib/cleanup.js'
import { BaleError } from '../lib/errors.js'
import { readJsonIfExists } from '../lib/json-file.js'
import type { Descriptor } from './schemas.js'
import { SHA256_DIGEST } from './reference.js'
import { checkDescriptor } from './validate.js'

/**
 * The content-addressed store: an OCI image layout (`oci-layout`, `index.json`,
 * `blobs/sha256/<hex>`), so the cache is itself a valid `--oci-layout DIR:REF` source and
 * readable by skopeo/umoci. A blob appears under blobs/ only after its bytes hashed to its name
 * and matched its size (ggcr layout/write.go: temp name, verify, rename; "already there with the
 * right size" means done).
 *
 * Downloads in progress live in `ingest/`, outside the layout proper: `ingest/<hex>.partial`
 * holds the bytes received so far, under a name derived from the digest so that a rerun after an
 * interruption finds it and resumes with Range. Those partial files are deliberately *not*
 * registered for removal on SIGINT (resuming them is the point); everything else written here
 * goes through a temp name that is.
 */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name'
const INDEX_MEDIA_TYPE = 'application/vnd.oci.image.index.v1+json'
/** Writes are gathered into 1 MiB batches (one writev each): fewer syscalls than undici's 64 KiB chunks. */
const WRITE_BATCH = 1024 * 1024
/**
 * A lock whose holder died (SIGKILL, power loss) is taken over after 10 s: proper-lockfile's
 * default, refreshed every 5 s by a live holder, so a busy machine does not mistake it for dead.
 */
const LOCK_STALE_MS = 10_000
/** How long to wait for another bale process that is downloading the same blob: up to ~30 min. */
const LOCK_RETRIES = { retries: 2000, factor: 1.2, minTimeout: 100, maxTimeout: 1000 }

/** proper-lockfile (and graceful-fs under it), loaded only by the paths that write. */
async function lockfile(): Promise<typeof import('proper-lockfile')> {
  return (await import('proper-lockfile')).default
}

export function hexOf(digest: string): string {
  if (!SHA256_DIGEST.test(digest)) throw new BaleError('E_INPUT', `not a sha256 digest: '${digest}'`, { subject: digest })
  return digest.slice('sha256:'.length)
}

export class OciStore {
  constructor(readonly dir: string) {}

  blobPath(digest: string): string {
    return path.join(this.dir, 'blobs', 'sha256', hexOf(digest))
  }

  private get ingestDir(): string {
    return path.join(this.dir, 'ingest')
  }

  /** Whether the store exists at all (offline mode never creates it). */
  async exists(): Promise<boolean> {
    return fs
      .stat(path.join(this.dir, 'oci-layout'))
      .then(() => true)
      .catch(() => false)
  }

  /** Create the layout skeleton if missing. */
  async init(): Promise<void> {
    await fs.mkdir(path.join(this.dir, 'blobs', 'sha256'), { recursive: true })
    await fs.mkdir(this.ingestDir, { recursive: true })
    const marker = path.join(this.dir, 'oci-layout')
    if (!(await fs.stat(marker).catch(() => undefined))) {
      await writeFileAtomic(marker, JSON.stringify({ imageLayoutVersion: '1.0.0' }))
    }
    const index = path.join(this.dir, 'index.json')
    if (!(await fs.stat(index).catch(() => undefined))) {
      await this.withIndexLock(async () => {
        if (!(await fs.stat(index).catch(() => undefined))) await writeFileAtomic(index, serializeIndex([]))
      })
    }
  }

  /** Present with the right size. Contents were verified before the rename that put them there. */
  async hasBlob(digest: string, size: number): Promise<boolean> {
    const st = await fs.stat(this.blobPath(digest)).catch(() => undefined)
    return st !== undefined && st.isFile() && st.size === size
  }

  /**
   * Read a small blob (manifest, config) and verify it again: these decide what everything
   * else is, and re-hashing a few KiB is free. A blob that fails is removed (so an online pull
   * fetches it afresh) and reported. Returns undefined when absent.
   */
  async readSmallBlob(digest: string, cap: number, what: string): Promise<Buffer | undefined> {
    const p = this.blobPath(digest)
    const st = await fs.stat(p).catch(() => undefined)
    if (st === undefined) return undefined
    if (st.size > cap) throw new BaleError('E_INPUT', `${what}: ${st.size} bytes exceeds the ${cap}-byte limit`, { subject: digest })
    const bytes = await fs.readFile(p)
    const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    if (got !== digest) {
      await removeQuietly(p)
      throw new BaleError('E_DIGEST', `${p}: expected ${digest} got ${got} (removed from the store)`, { subject: digest })
    }
    return bytes
  }

  /** Store bytes already verified by the caller, atomically. */
  async putSmallBlob(digest: string, bytes: Buffer): Promise<void> {
    const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    if (got !== digest) throw new BaleError('E_DIGEST', `blob ${digest}: expected ${digest} got ${got}`, { subject: digest })
    const dest = this.blobPath(digest)
    const tmp = tempPathFor(path.join(this.ingestDir, hexOf(digest)))
    const unregister = registerCleanup(tmp)
    try {
      await fs.writeFile(tmp, bytes, { mode: 0o644 })
      await fs.rename(tmp, dest)
    } catch (e) {
      await removeQuietly(tmp)
      throw e
    } finally {
      unregister()
    }
  }

  /**
   * Take the per-digest download lock and open the partial file, re-hashing what an earlier
   * run left there. Returns undefined when the blob is (now) in the store, e.g. because another
   * process finished it while we waited for the lock.
   */
  async openPartial(desc: Descriptor, onWait?: (lockPath: string) => void): Promise<PartialBlob | undefined> {
    await fs.mkdir(this.ingestDir, { recursive: true })
    const partialPath = path.join(this.ingestDir, `${hexOf(desc.digest)}.partial`)
    const lockOpts = {
      realpath: false,
      stale: LOCK_STALE_MS,
      // A lost lock means another process may be writing the same partial file; the digest
      // check at commit still catches any mix-up, so carrying on is safe.
      onCompromised: () => undefined,
    }
    let release: () => Promise<void>
    try {
      const lf = await lockfile()
      release = await lf.lock(partialPath, lockOpts).catch(async (e: unknown) => {
        if ((e as NodeJS.ErrnoException).code !== 'ELOCKED') throw e
        // Held by another bale, or by one that was killed (taken over once stale): say why we pause.
        onWait?.(`${partialPath}.lock`)
        return lf.lock(partialPath, { ...lockOpts, retries: LOCK_RETRIES })
      })
    } catch (e) {
      throw new BaleError('E_STATE', `${partialPath}: could not lock (${(e as Error).message})`, { subject: partialPath, cause: e })
    }
    try {
      if (await this.hasBlob(desc.digest, desc.size)) {
        await release()
        return undefined
      }
      const partial = new PartialBlob(desc, partialPath, this.blobPath(desc.digest), release)
      await partial.load()
      return partial
    } catch (e) {
      await release().catch(() => undefined)
      throw e
    }
  }

  private async withIndexLock<T>(fn: () => Promise<T>): Promise<T> {
    await fs.mkdir(this.ingestDir, { recursive: true })
    const release = await (await lockfile()).lock(path.join(this.dir, 'index.json'), {
      realpath: false,
      lockfilePath: path.join(this.ingestDir, 'index.json.lock'),
      stale: LOCK_STALE_MS,
      retries: LOCK_RETRIES,
      onCompromised: () => undefined,
    })
    try {
      return await fn()
    } finally {
      await release().catch(() => undefined)
    }
  }

  /** index.json's descriptors, [] when the store has none. */
  async readIndex(): Promise<Descriptor[]> {
    const p = path.join(this.dir, 'index.json')
    const doc = await readJsonIfExists(p, () => {
      throw new BaleError('E_INPUT', `${p}: not valid JSON`, { subject: p })
    })
    if (doc === undefined) return []
    const manifests = typeof doc === 'object' && doc !== null ? (doc as { manifests?: unknown }).manifests : undefined
    if (!Array.isArray(manifests)) throw new BaleError('E_INPUT', `${p}: no 'manifests' array`, { subject: p })
    return manifests.map((m, i) => {
      try {
        return checkDescriptor(m)
      } catch {
        throw new BaleError('E_INPUT', `${p}: manifests[${i}] is not a valid descriptor`, { subject: p })
      }
    })
  }

  /** The descriptor index.json records for `name` (a canonical reference). */
  async lookupRef(name: string): Promise<Descriptor | undefined> {
    return (await this.readIndex()).find((d) => d.annotations?.[REF_NAME_ANNOTATION] === name)
  }

  /** Point `name` at `desc` in index.json (replacing an older entry of that name), atomically and under a lock. */
  async tagRef(name: string, desc: Descriptor): Promise<void> {
    const existing = await this.lookupRef(name)
    if (existing !== undefined && existing.digest === desc.digest && existing.mediaType === desc.mediaType && existing.size === desc.size) return
    await this.withIndexLock(async () => {
      const entries = await this.readIndex()
      const entry: Descriptor = { mediaType: desc.mediaType, digest: desc.digest, size: desc.size, annotations: { [REF_NAME_ANNOTATION]: name } }
      const at = entries.findIndex((d) => d.annotations?.[REF_NAME_ANNOTATION] === name)
      if (at >= 0) entries[at] = entry
      else entries.push(entry)
      await writeFileAtomic(path.join(this.dir, 'index.json'), serializeIndex(entries))
    })
  }
}

/** The buffers of `bufs` from byte `from` on (after a short writev). */
function sliceFrom(bufs: Buffer[], from: number): Buffer[] {
  const out: Buffer[] = []
  let skip = from
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length
      continue
    }
    out.push(skip > 0 ? b.subarray(skip) : b)
    skip = 0
  }
  return out
}

function serializeIndex(manifests: Descriptor[]): string {
  return `${JSON.stringify({ schemaVersion: 2, mediaType: INDEX_MEDIA_TYPE, manifests }, null, 2)}\n`
}

/**
 * A blob being downloaded: the bytes on disk so far and the SHA-256 state over exactly those
 * bytes (the hash is updated only after a write succeeds, so the two never disagree, whatever
 * fails in between).
 */
export class PartialBlob {
  private hash: Hash = createHash('sha256')
  private bytes = 0

  constructor(
    readonly desc: Descriptor,
    readonly path: string,
    private readonly dest: string,
    private readonly releaseLock: () => Promise<void>,
  ) {}

  /** Bytes already on disk; the next request asks for `Range: bytes=<offset>-`. */
  get offset(): number {
    return this.bytes
  }

  /** Re-hash what an earlier run left behind. A partial longer than the blob is discarded. */
  async load(): Promise<void> {
    const st = await fs.stat(this.path).catch(() => undefined)
    if (st === undefined || st.size === 0 || st.size > this.desc.size) {
      await this.restart()
      return
    }
    const hash = createHash('sha256')
    let n = 0
    for await (const chunk of createReadStream(this.path)) {
      hash.update(chunk as Buffer)
      n += (chunk as Buffer).length
    }
    this.hash = hash
    this.bytes = n
  }

  async restart(): Promise<void> {
    await fs.writeFile(this.path, Buffer.alloc(0))
    this.hash = createHash('sha256')
    this.bytes = 0
  }

  /**
   * Append a response body. Bytes beyond the descriptor's size fail at once (a registry must
   * not make us store more than the manifest promised). On a connection error, what arrived
   * intact is written before the error propagates, so the next try resumes after it.
   *
   * The body is read in flowing mode and written with synchronous writev on the main thread,
   * each chunk hashed right after its write. Why not `for await` and FileHandle.writev: the
   * async iterator's read() concatenates whatever is buffered (a copy of most of the blob), and
   * every async write is a hand-off to libuv's thread pool and back; on a 2-core machine that
   * shares its cores with the registry, those hand-offs (futex wake-ups that preempt the main
   * thread) cost more than the writes themselves. A 1 MiB writev into the page cache takes well
   * under a millisecond, and while it runs the socket simply buffers (TCP backpressure), so
   * nothing is lost by blocking the loop for it. Measured in bench/README.md's pull bullet.
   */
  async append(body: Readable, onBytes: (total: number) => void): Promise<void> {
    const fd = openSync(this.path, 'a')
    let pending: Buffer[] = []
    let pendingBytes = 0
    const flush = (): void => {
      if (pendingBytes === 0) return
      const bufs = pending
      const n = pendingBytes
      pending = []
      pendingBytes = 0
      // writev: one syscall for the batch without copying it into one buffer first.
      try {
        for (let written = 0; written < n; ) written += writevSync(fd, written === 0 ? bufs : sliceFrom(bufs, written))
      } catch (e) {
        // Part of the batch may be on disk (disk full mid-batch): cut the file back to what the hash covers.
        try {
          ftruncateSync(fd, this.bytes)
        } catch {
          // Then the digest check at commit catches the extra bytes.
        }
        throw e
      }
      // Hashed only once on disk, so the hash always covers exactly the bytes in the file.
      for (const b of bufs) this.hash.update(b)
      this.bytes += n
      onBytes(this.bytes)
    }
    let overflow: BaleError | undefined
    try {
      await new Promise<void>((resolve, reject) => {
        let settled = false
        const settle = (e?: unknown): void => {
          if (settled) return
          settled = true
          body.off('data', onData)
          if (e === undefined) resolve()
          else reject(e)
        }
        const onData = (chunk: Buffer): void => {
          if (settled) return
          try {
            if (this.bytes + pendingBytes + chunk.length > this.desc.size) {
              overflow = new BaleError('E_DIGEST', `blob ${this.desc.digest}: registry sent more than the ${this.desc.size} bytes its descriptor says; removed`, {
                subject: this.desc.digest,
              })
              throw overflow
            }
            pending.push(chunk)
            pendingBytes += chunk.length
            if (pendingBytes >= WRITE_BATCH) flush()
          } catch (e) {
            body.destroy()
            settle(e)
          }
        }
        body.on('data', onData)
        // finished(): 'end', or the error that stopped the body (a reset mid-blob, an abort, a
        // close before the end, which it reports as ERR_STREAM_PREMATURE_CLOSE).
        finished(body, (e) => settle(e ?? undefined))
      })
      flush()
    } catch (e) {
      if (overflow !== undefined) await this.discard()
      else if (!(e instanceof BaleError)) {
        // The connection dropped: keep what arrived intact, so the next try resumes after it.
        try {
          flush()
        } catch {
          // The bytes not written are simply fetched again.
        }
      }
      throw e
    } finally {
      closeSync(fd)
    }
  }

  /**
   * Verify size and digest over the whole blob and rename it into blobs/. A mismatch removes
   * the partial file (its bytes are wrong somewhere; resuming it would only repeat the failure).
   */
  async commit(): Promise<void> {
    const got = `sha256:${this.hash.digest('hex')}`
    if (this.bytes !== this.desc.size || got !== this.desc.digest) {
      const why = this.bytes !== this.desc.size ? `${this.desc.size} bytes, got ${this.bytes}` : `${this.desc.digest} got ${got}`
      await this.discard()
      throw new BaleError('E_DIGEST', `blob ${this.desc.digest}: expected ${why}; removed`, { subject: this.desc.digest })
    }
    await fs.chmod(this.path, 0o644)
    await fs.rename(this.path, this.dest)
  }

  async discard(): Promise<void> {
    await removeQuietly(this.path)
    this.hash = createHash('sha256')
    this.bytes = 0
  }

  async release(): Promise<void> {
    await this.releaseLock().catch(() => undefined)
  }
}
