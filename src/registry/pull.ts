import pLimit from 'p-limit'
import { BaleError } from '../lib/errors.js'
import { ociStoreDir } from '../lib/paths.js'
import { findCredentials } from './auth.js'
// Types only: the client (and undici under it) is loaded when the network is first needed, so a
// warm or offline pull does not pay for loading an HTTP stack it never uses.
import type { RegistryClient, RetryEvent } from './client.js'
import {
  type ConfigFile,
  type Descriptor,
  type ImageManifest,
  MAX_CONFIG_BYTES,
  MAX_MANIFEST_BYTES,
  parseConfigFile,
  parseManifest,
  type ParsedManifest,
} from './manifest.js'
import { DEFAULT_PLATFORM, formatPlatform, parsePlatform, type Platform, samePlatform, selectPlatform } from './platform.js'
import { type ImageReference, parseReference } from './reference.js'
import { backoffDelay, DEFAULT_RETRY, describeNetworkError, isTransientNetworkError, type RetryPolicy, sleep } from './retry.js'
import { OciStore } from './store.js'

/**
 * Pull an image into the content-addressed store: resolve the reference (the store's
 * index.json first, then the registry), choose the platform, and make sure the manifest(s),
 * config and every layer are in the store, verified. A fully cached image makes no network
 * request at all; `offline` makes that a requirement.
 */
export interface PullOptions {
  /** `os/arch[/variant]`; default linux/amd64. */
  readonly platform?: string
  /** `user:pass`; otherwise $BALE_REGISTRY_CREDS, then ~/.docker/config.json. */
  readonly creds?: string
  /** Plain HTTP to a non-loopback registry. */
  readonly insecure?: boolean
  /** Use only the store; fail if anything is missing. */
  readonly offline?: boolean
  /**
   * Ask the registry what a tag points to now, even if the store knows it. Without it a tag
   * already in the store is used as is (Kubernetes' IfNotPresent policy): a warm pull makes
   * zero requests, and a build does not change under you because someone pushed.
   */
  readonly refresh?: boolean
  /** Parallel blob downloads; default 3. */
  readonly concurrency?: number
  /** Store directory; default ociStoreDir(). */
  readonly storeDir?: string
  readonly env?: NodeJS.ProcessEnv
  readonly retry?: RetryPolicy
  readonly signal?: AbortSignal
}

/**
 * Docker's `max-concurrent-downloads` default: enough to fill a link with a few large layers,
 * few enough not to trip per-client connection limits at registries and CDNs.
 */
export const DEFAULT_CONCURRENCY = 3
/**
 * A blob whose connection keeps dropping but makes progress each time is retried this often in
 * all: generous for a flaky link (50 resumes), but bounded, so a server that sends a few bytes
 * per connection cannot keep a build busy forever.
 */
const MAX_TRIES_PER_BLOB = 50
/** An index pointing at an index is legal; deeper nesting is not something real images do. */
const MAX_INDEX_DEPTH = 2

export type BlobRole = 'config' | 'layer'

export type PullEvent =
  | { type: 'resolved'; ref: string; platform: string; manifestDigest: string; configDigest: string; layers: number; bytes: number }
  | { type: 'blob-start'; role: BlobRole; digest: string; size: number; offset: number }
  | { type: 'blob-progress'; role: BlobRole; digest: string; bytes: number; size: number }
  | { type: 'blob-done'; role: BlobRole; digest: string; size: number; cached: boolean; resumedFrom: number }
  | ({ type: 'retry' } & RetryEvent)
  /** Another process holds the blob's download lock (or a killed one did, until it goes stale). */
  | { type: 'waiting'; role: BlobRole; digest: string; lock: string }

export interface PullResult {
  /** Canonical reference, e.g. `docker.io/library/debian:bookworm`: its name in the store's index.json. */
  readonly ref: string
  readonly platform: string
  /** The image index the tag pointed to, when it was one. */
  readonly indexDigest?: string
  /** The platform's image manifest. */
  readonly manifestDigest: string
  readonly manifest: ImageManifest
  readonly configDigest: string
  readonly config: ConfigFile
  readonly layers: readonly Descriptor[]
  readonly storeDir: string
  /** Blobs fetched over the network by this pull (0: everything came from the store). */
  readonly downloaded: number
  readonly downloadedBytes: number
}

export async function pull(input: string, opts: PullOptions = {}, onEvent: (e: PullEvent) => void = () => {}): Promise<PullResult> {
  const ref = parseReference(input)
  const want = parsePlatform(opts.platform ?? DEFAULT_PLATFORM)
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new BaleError('E_USAGE', `--concurrency ${concurrency}: want a whole number ≥ 1`, { subject: '--concurrency' })
  }
  const store = new OciStore(opts.storeDir ?? ociStoreDir(opts.env ?? process.env))
  const session = new PullSession(ref, want, store, { ...opts, concurrency }, onEvent)
  try {
    return await session.run()
  } finally {
    await session.close()
  }
}

class PullSession {
  private clientPromise?: Promise<RegistryClient>
  private downloaded = 0
  private downloadedBytes = 0
  private readonly retry: RetryPolicy

  constructor(
    private readonly ref: ImageReference,
    private readonly want: Platform,
    private readonly store: OciStore,
    private readonly opts: PullOptions & { concurrency: number },
    private readonly emit: (e: PullEvent) => void,
  ) {
    this.retry = opts.retry ?? DEFAULT_RETRY
  }

  private get name(): string {
    return `${this.ref.domain}/${this.ref.repository}`
  }

  /** The network is touched only through here, and only when something is missing. */
  private client(): Promise<RegistryClient> {
    if (this.opts.offline) throw new Error('bug: network client requested in offline mode')
    this.clientPromise ??= (async () => {
      const credentials = await findCredentials(this.ref.domain, { creds: this.opts.creds, env: this.opts.env ?? process.env })
      const { RegistryClient } = await import('./client.js')
      return new RegistryClient(this.ref, {
        insecure: this.opts.insecure,
        ...(credentials === undefined ? {} : { credentials }),
        retry: this.retry,
        signal: this.opts.signal,
        onRetry: (e) => this.emit({ type: 'retry', ...e }),
      })
    })()
    return this.clientPromise
  }

  async close(): Promise<void> {
    if (this.clientPromise !== undefined) await (await this.clientPromise.catch(() => undefined))?.close()
  }

  private offlineMissing(what: string): BaleError {
    return new BaleError('E_NOT_FOUND', `offline: ${what} of ${this.ref.canonical} is not in the store ${this.store.dir}; pull it once online first`, {
      subject: this.ref.canonical,
    })
  }

  async run(): Promise<PullResult> {
    const { ref, store, opts } = this
    if (opts.offline && !(await store.exists())) {
      throw new BaleError('E_NOT_FOUND', `offline: ${ref.canonical} is not in the store ${store.dir} (no store there yet); pull it once online first`, {
        subject: ref.canonical,
      })
    }
    // Making the store's skeleton (directories, oci-layout, an empty index.json: a handful of
    // file operations, two of them fsynced) overlaps with the first requests on a cold pull;
    // everything that writes to the store awaits it first. (Marked handled here so that a
    // failure surfaces where it is awaited, not as an unhandled rejection.)
    const storeReady = opts.offline ? Promise.resolve() : store.init()
    storeReady.catch(() => undefined)

    // 1. What the reference points to: a pinned digest, the store's record of the tag, or the registry.
    let top: { digest: string; mediaType?: string; size?: number }
    let topParsed: { parsed: ParsedManifest; size: number } | undefined
    if (ref.digest !== undefined) {
      await storeReady
      top = { digest: ref.digest }
    } else {
      // index.json is only read here, and a store not made yet reads as empty.
      const known = opts.refresh ? undefined : await store.lookupRef(ref.canonical)
      if (known !== undefined) {
        await storeReady
        top = known
      } else if (opts.offline) {
        throw this.offlineMissing(`tag ${ref.tag ?? 'latest'}`)
      } else {
        // Both settle before either's error propagates: nothing may still write to the store after pull() returns.
        const [got, made] = await Promise.allSettled([this.client().then((c) => c.fetchManifest(ref.tag ?? 'latest')), storeReady])
        if (got.status === 'rejected') throw got.reason
        if (made.status === 'rejected') throw made.reason
        const fetched = got.value
        const parsed = parseManifest(fetched.bytes, fetched.contentType, `${this.name}:${ref.tag ?? 'latest'}`)
        await store.putSmallBlob(fetched.digest, fetched.bytes)
        top = { digest: fetched.digest, mediaType: parsed.mediaType, size: fetched.bytes.length }
        topParsed = { parsed, size: fetched.bytes.length }
      }
    }
    topParsed ??= await this.loadManifest(top, 'manifest')
    const topDesc: Descriptor = { mediaType: topParsed.parsed.mediaType, digest: top.digest, size: topParsed.size }

    // 2. Index → the platform's manifest.
    let current: ParsedManifest = topParsed.parsed
    let currentDigest = top.digest
    let indexDigest: string | undefined
    let platform: Platform | undefined
    for (let depth = 0; current.kind === 'index'; depth++) {
      if (depth >= MAX_INDEX_DEPTH) {
        throw new BaleError('E_INPUT', `${this.name}@${currentDigest}: image indexes nested more than ${MAX_INDEX_DEPTH} deep`, { subject: currentDigest })
      }
      indexDigest ??= currentDigest
      const child = selectPlatform(current.index, this.want, `${ref.canonical} (index ${currentDigest})`)
      // As the index spells it (linux/arm/v7, not the normalized linux/arm), for messages and the result.
      platform = child.platform as Platform
      current = (await this.loadManifest(child, `${formatPlatform(platform)} manifest`)).parsed
      currentDigest = child.digest
    }
    const manifest = current.manifest

    // 3. Config and layers. When an index chose the platform, the config is fetched together
    // with the layers (one round trip fewer, which matters on a distant registry); a
    // single-platform image's config comes first, because it says which platform the image is
    // and a wrong one must fail before any layer is downloaded.
    let config: ConfigFile | undefined
    if (platform === undefined) {
      config = await this.loadConfig(manifest.config)
      platform = this.checkSinglePlatform(config, currentDigest)
    }
    this.emit({
      type: 'resolved',
      ref: ref.canonical,
      platform: formatPlatform(platform),
      manifestDigest: currentDigest,
      configDigest: manifest.config.digest,
      layers: manifest.layers.length,
      bytes: manifest.layers.reduce((n, l) => n + l.size, 0),
    })
    const layers = this.ensureBlobs(manifest.layers.map((desc) => ({ desc, role: 'layer' as const })))
    if (config === undefined) {
      // Settle the layers before an error from the config propagates, so no download outlives the pull.
      const [cfg] = await Promise.allSettled([this.loadConfig(manifest.config), layers])
      await layers
      if (cfg.status === 'rejected') throw cfg.reason
      config = cfg.value
      // The index's word for the platform must agree with the image's own config (a config
      // without a variant, as older arm images have, is taken at the index's word for it).
      if (config.os !== undefined && config.architecture !== undefined) {
        const variant = config.variant || platform.variant
        const own: Platform = { os: config.os, architecture: config.architecture, ...(variant ? { variant } : {}) }
        if (!samePlatform(own, platform)) {
          throw new BaleError(
            'E_INPUT',
            `${ref.canonical}: the index lists manifest ${currentDigest} as ${formatPlatform(platform)} but its config ${manifest.config.digest} says ${formatPlatform(own)}`,
            { subject: currentDigest },
          )
        }
      }
    }
    await layers
    if (config.rootfs.diff_ids.length !== manifest.layers.length) {
      throw new BaleError(
        'E_INPUT',
        `${ref.canonical}: manifest ${currentDigest} has ${manifest.layers.length} layers but config ${manifest.config.digest} lists ${config.rootfs.diff_ids.length} diff_ids`,
        { subject: currentDigest },
      )
    }

    // 5. Record the reference only once everything it needs is present.
    if (!opts.offline) await store.tagRef(ref.canonical, topDesc)

    return {
      ref: ref.canonical,
      platform: formatPlatform(platform),
      ...(indexDigest === undefined ? {} : { indexDigest }),
      manifestDigest: currentDigest,
      manifest,
      configDigest: manifest.config.digest,
      config,
      layers: manifest.layers,
      storeDir: store.dir,
      downloaded: this.downloaded,
      downloadedBytes: this.downloadedBytes,
    }
  }

  /** A single-platform image must be the platform asked for (when its config says which it is). */
  private checkSinglePlatform(config: ConfigFile, manifestDigest: string): Platform {
    if (config.os === undefined || config.architecture === undefined) return this.want
    const actual: Platform = { os: config.os, architecture: config.architecture, ...(config.variant ? { variant: config.variant } : {}) }
    if (!samePlatform(actual, this.want)) {
      throw new BaleError(
        'E_NOT_FOUND',
        `${this.ref.canonical} (${manifestDigest}) is a ${formatPlatform(actual)} image, not ${formatPlatform(this.want)}; pass --platform ${formatPlatform(actual)} to use it`,
        { subject: this.ref.canonical },
      )
    }
    return actual
  }

  /**
   * A manifest or index by digest: from the store (re-verified), else from the registry
   * (verified against the digest, and the descriptor's size and media type), then stored.
   */
  private async loadManifest(desc: { digest: string; mediaType?: string; size?: number }, label: string): Promise<{ parsed: ParsedManifest; size: number }> {
    const where = `${this.name}@${desc.digest}`
    let bytes: Buffer | undefined
    let declared = desc.mediaType
    try {
      bytes = await this.store.readSmallBlob(desc.digest, MAX_MANIFEST_BYTES, where)
    } catch (e) {
      // A corrupt cached manifest was removed; online we fetch it again, offline that is the end.
      if (!(e instanceof BaleError && e.code === 'E_DIGEST') || this.opts.offline) throw e
    }
    if (bytes === undefined) {
      if (this.opts.offline) throw this.offlineMissing(`${label} ${desc.digest}`)
      const fetched = await (await this.client()).fetchManifest(desc.digest, desc.size)
      bytes = fetched.bytes
      declared ??= fetched.contentType
      await this.store.putSmallBlob(desc.digest, bytes)
    }
    if (desc.size !== undefined && desc.size !== bytes.length) {
      throw new BaleError('E_DIGEST', `${where}: expected ${desc.size} bytes got ${bytes.length}`, { subject: desc.digest })
    }
    return { parsed: parseManifest(bytes, declared, where), size: bytes.length }
  }

  /**
   * The image config, from the store (re-verified) or the registry: read into memory, verified
   * against its digest and size, stored, and parsed from the bytes in hand. A config is KiBs,
   * so it skips what a layer needs (download lock, partial file, resume); a dropped connection
   * just fetches it again.
   */
  private async loadConfig(desc: Descriptor): Promise<ConfigFile> {
    const where = `config ${desc.digest} of ${this.ref.canonical}`
    let bytes: Buffer | undefined
    try {
      bytes = await this.store.readSmallBlob(desc.digest, MAX_CONFIG_BYTES, where)
    } catch (e) {
      // A corrupt cached config was removed; online we fetch it again, offline that is the end.
      if (!(e instanceof BaleError && e.code === 'E_DIGEST') || this.opts.offline) throw e
    }
    if (bytes !== undefined) {
      if (bytes.length !== desc.size) throw new BaleError('E_DIGEST', `${where}: expected ${desc.size} bytes got ${bytes.length}`, { subject: desc.digest })
      this.emit({ type: 'blob-done', role: 'config', digest: desc.digest, size: desc.size, cached: true, resumedFrom: 0 })
      return parseConfigFile(bytes, where)
    }
    if (this.opts.offline) throw this.offlineMissing(`config ${desc.digest}`)
    const client = await this.client()
    this.emit({ type: 'blob-start', role: 'config', digest: desc.digest, size: desc.size, offset: 0 })
    for (let tries = 1; ; tries++) {
      try {
        bytes = await client.fetchSmallBlob(desc.digest, desc.size, MAX_CONFIG_BYTES)
        break
      } catch (e) {
        if (this.opts.signal?.aborted) throw e
        const transient = e instanceof BaleError ? e.temporary : isTransientNetworkError(e)
        if (!transient || tries >= this.retry.attempts) {
          if (e instanceof BaleError) throw e
          throw new BaleError('E_NETWORK', `${where}: ${describeNetworkError(e)} after ${tries} ${tries === 1 ? 'try' : 'tries'}`, {
            subject: desc.digest,
            cause: e,
            temporary: true,
          })
        }
        const delayMs = backoffDelay(this.retry, tries)
        this.emit({ type: 'retry', what: where, attempt: tries, delayMs, reason: e instanceof BaleError ? e.message : describeNetworkError(e) })
        await sleep(delayMs, this.opts.signal)
      }
    }
    await this.store.putSmallBlob(desc.digest, bytes)
    this.downloaded++
    this.downloadedBytes += desc.size
    this.emit({ type: 'blob-done', role: 'config', digest: desc.digest, size: desc.size, cached: false, resumedFrom: 0 })
    return parseConfigFile(bytes, where)
  }

  private async ensureBlobs(blobs: ReadonlyArray<{ desc: Descriptor; role: BlobRole }>): Promise<void> {
    // The same blob may appear twice (e.g. identical empty layers): fetch it once.
    const unique = [...new Map(blobs.map((b) => [b.desc.digest, b])).values()]
    const limit = pLimit(this.opts.concurrency)
    await Promise.all(unique.map((b) => limit(() => this.ensureBlob(b.desc, b.role))))
  }

  private async ensureBlob(desc: Descriptor, role: BlobRole): Promise<void> {
    if (await this.store.hasBlob(desc.digest, desc.size)) {
      this.emit({ type: 'blob-done', role, digest: desc.digest, size: desc.size, cached: true, resumedFrom: 0 })
      return
    }
    if (this.opts.offline) throw this.offlineMissing(`${role} ${desc.digest}`)
    await this.download(desc, role)
  }

  /**
   * Download one blob into the store, resuming from whatever partial file an earlier try or
   * run left. Transient failures retry with backoff; a try that moved the partial file forward
   * resets the count, so a long blob over a flaky link still finishes (up to MAX_TRIES_PER_BLOB).
   * A digest mismatch removes the bytes and fails, except that a *resumed* partial gets one
   * fresh download first (the bad bytes may be from the interrupted run).
   */
  private async download(desc: Descriptor, role: BlobRole): Promise<void> {
    const client = await this.client()
    const partial = await this.store.openPartial(desc, (lock) => this.emit({ type: 'waiting', role, digest: desc.digest, lock }))
    if (partial === undefined) {
      // Another bale process stored it while we waited for its lock.
      this.emit({ type: 'blob-done', role, digest: desc.digest, size: desc.size, cached: true, resumedFrom: 0 })
      return
    }
    const what = `${role} ${desc.digest} of ${this.name}`
    try {
      for (let fresh = partial.offset === 0; ; fresh = true) {
        const resumedFrom = partial.offset
        this.emit({ type: 'blob-start', role, digest: desc.digest, size: desc.size, offset: resumedFrom })
        let failures = 0
        // (A partial already as long as the blob is an earlier run's finished download: just verify it.)
        for (let tries = 1; partial.offset < desc.size; tries++) {
          const before = partial.offset
          // Opening is retried inside the client (statuses, refused handshakes); what fails
          // here after the response began is the body, and that is what this loop resumes.
          const { res, start } = await client.openBlob(desc.digest, partial.offset)
          try {
            if (start === 0 && partial.offset > 0) await partial.restart() // the registry ignored Range
            await partial.append(res.body, (bytes) => this.emit({ type: 'blob-progress', role, digest: desc.digest, bytes, size: desc.size }))
            if (partial.offset < desc.size) {
              throw new BaleError('E_NETWORK', `${what}: response ended at byte ${partial.offset} of ${desc.size}`, { subject: desc.digest, temporary: true })
            }
          } catch (e) {
            if (this.opts.signal?.aborted) throw e
            const transient = e instanceof BaleError ? e.temporary : isTransientNetworkError(e)
            if (!transient) throw e
            failures = partial.offset > before ? 1 : failures + 1
            if (failures >= this.retry.attempts || tries >= MAX_TRIES_PER_BLOB) {
              if (e instanceof BaleError) throw e
              throw new BaleError(
                'E_NETWORK',
                `${what}: ${describeNetworkError(e)} after ${tries} ${tries === 1 ? 'try' : 'tries'} (${partial.offset} of ${desc.size} bytes kept; rerun to resume)`,
                { subject: desc.digest, cause: e, temporary: true },
              )
            }
            const delayMs = backoffDelay(this.retry, failures)
            this.emit({ type: 'retry', what, attempt: tries, delayMs, reason: `${e instanceof BaleError ? e.message : describeNetworkError(e)} at byte ${partial.offset}` })
            await sleep(delayMs, this.opts.signal)
          }
        }
        try {
          await partial.commit()
        } catch (e) {
          if (fresh || !(e instanceof BaleError && e.code === 'E_DIGEST')) throw e
          this.emit({ type: 'retry', what, attempt: 1, delayMs: 0, reason: `resumed bytes did not verify (${e.message}); downloading afresh` })
          await partial.restart()
          continue
        }
        this.downloaded++
        this.downloadedBytes += desc.size - resumedFrom
        this.emit({ type: 'blob-done', role, digest: desc.digest, size: desc.size, cached: false, resumedFrom })
        return
      }
    } finally {
      await partial.release()
    }
  }
}
