import { createReadStream, createWriteStream, promises as fs } from 'node:fs'
import { Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { Agent, request, type Dispatcher } from 'undici'
import { BaleError } from '../lib/errors.js'
import { plainHttpAllowed } from '../registry/reference.js'
import { backoffDelay, DEFAULT_RETRY, errorCode, isRetryableStatus, isTransientNetworkError, type RetryPolicy, sleep } from '../registry/retry.js'
import { checkDigests, DigestingStream, type ExpectedDigests, type FileDigests, integrityAlgorithm } from './integrity.js'
import { MAX_DOCUMENT_BYTES } from './schema.js'

/**
 * HTTP for catalogs served from a directory: small documents (index.json) and resumable,
 * verified downloads, on undici. The rules are the registry client's: plain HTTP only to
 * loopback or with --insecure (an index over plain HTTP from elsewhere could be swapped along
 * with the integrity strings it carries), redirects followed by hand and never downgraded,
 * transient failures retried with the same backoff, and an interrupted download resumed with
 * Range from what is already on disk.
 */
export interface HttpOptions {
  readonly insecure?: boolean
  readonly retry?: RetryPolicy
  readonly signal?: AbortSignal
  readonly onRetry?: (what: string, attempt: number, reason: string) => void
}

/** Up to 5 hops, as the registry client: a CDN and a regional storage hop fit with room to spare. */
const MAX_REDIRECTS = 5
/** Same stuck-not-slow limits as the registry client: 30 s for headers, 60 s between body bytes. */
const HEADERS_TIMEOUT_MS = 30_000
const BODY_TIMEOUT_MS = 60_000
const REDIRECT_STATUS: ReadonlySet<number> = new Set([301, 302, 303, 307, 308])

type Response = Dispatcher.ResponseData

function header(res: Response, name: string): string | undefined {
  const v = res.headers[name]
  return Array.isArray(v) ? v[0] : v
}

/** Refuse plain HTTP to anything but loopback unless --insecure. */
export function checkScheme(url: URL, insecure: boolean | undefined, what: string): void {
  if (url.protocol === 'https:') return
  if (url.protocol !== 'http:') throw new BaleError('E_USAGE', `${what}: ${url.protocol} URLs are not supported (http or https)`, { subject: String(url) })
  if (!plainHttpAllowed(url.hostname, insecure)) {
    throw new BaleError('E_USAGE', `${what}: refusing plain HTTP to ${url.host} (use https, or --insecure)`, { subject: String(url) })
  }
}

export class HttpClient {
  private readonly dispatcher = new Agent({ headersTimeout: HEADERS_TIMEOUT_MS, bodyTimeout: BODY_TIMEOUT_MS })
  private readonly retry: RetryPolicy

  constructor(private readonly opts: HttpOptions = {}) {
    this.retry = opts.retry ?? DEFAULT_RETRY
  }

  async close(): Promise<void> {
    await this.dispatcher.close().catch(() => undefined)
  }

  /** GET with redirects followed by hand (no downgrade to http, no other schemes). */
  private async get(url: URL, headers: Record<string, string>): Promise<{ res: Response; url: URL }> {
    let current = url
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      checkScheme(current, this.opts.insecure, `GET ${current}`)
      const res = await request(current, {
        method: 'GET',
        headers: { 'user-agent': 'bale', ...headers },
        dispatcher: this.dispatcher,
        signal: this.opts.signal,
      })
      const location = header(res, 'location')
      if (!REDIRECT_STATUS.has(res.statusCode) || location === undefined) return { res, url: current }
      await res.body.dump().catch(() => undefined)
      let next: URL
      try {
        next = new URL(location, current)
      } catch {
        throw new BaleError('E_NETWORK', `GET ${current}: redirect to an invalid URL '${location}'`, { subject: String(current) })
      }
      if (current.protocol === 'https:' && next.protocol === 'http:') {
        throw new BaleError('E_NETWORK', `GET ${current}: refusing redirect from https to plain http (${next.origin})`, { subject: String(current) })
      }
      current = next
    }
    throw new BaleError('E_NETWORK', `GET ${url}: more than ${MAX_REDIRECTS} redirects`, { subject: String(url) })
  }

  /** Run `fn` with retries of transient network errors and retryable statuses. */
  private async withRetry<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn()
      } catch (e) {
        const retryable = e instanceof BaleError ? e.temporary : isTransientNetworkError(e)
        if (!retryable || attempt >= this.retry.attempts || this.opts.signal?.aborted) {
          if (e instanceof BaleError) throw e
          const code = errorCode(e)
          throw new BaleError('E_NETWORK', `${what}: ${code === 'ECONNREFUSED' ? 'connection refused' : (e as Error).message || code || 'network error'}${attempt > 1 ? ` after ${attempt} tries` : ''}`, {
            subject: what,
            cause: e,
          })
        }
        const reason = e instanceof BaleError ? e.message : (errorCode(e) ?? (e as Error).message)
        this.opts.onRetry?.(what, attempt, reason)
        await sleep(backoffDelay(this.retry, attempt), this.opts.signal)
      }
    }
  }

  private static statusError(res: Response, what: string): BaleError {
    const status = res.statusCode
    if (status === 404) return new BaleError('E_NOT_FOUND', `${what}: not found (404)`, { subject: what })
    if (status === 401 || status === 403) return new BaleError('E_AUTH', `${what}: access denied (${status})`, { subject: what })
    return new BaleError(isRetryableStatus(status) || status >= 500 ? 'E_NETWORK' : 'E_INPUT', `${what}: unexpected HTTP ${status}`, {
      subject: what,
      temporary: isRetryableStatus(status),
    })
  }

  /** Fetch a small document (index.json), capped at MAX_DOCUMENT_BYTES. Returns its final URL too. */
  async getDocument(url: URL): Promise<{ text: string; url: URL }> {
    const what = `GET ${url}`
    return this.withRetry(what, async () => {
      const { res, url: final } = await this.get(url, { accept: 'application/json' })
      if (res.statusCode !== 200) {
        await res.body.dump().catch(() => undefined)
        throw HttpClient.statusError(res, what)
      }
      const chunks: Buffer[] = []
      let total = 0
      for await (const c of res.body) {
        const b = c as Buffer
        total += b.length
        if (total > MAX_DOCUMENT_BYTES) {
          res.body.destroy()
          throw new BaleError('E_INPUT', `${what}: larger than the ${MAX_DOCUMENT_BYTES}-byte limit`, { subject: String(url) })
        }
        chunks.push(b)
      }
      return { text: Buffer.concat(chunks).toString('utf8'), url: final }
    })
  }

  /**
   * Download `url` into `partial`, resuming from whatever `partial` already holds, and verify
   * the whole file against `expected` (size is required: it bounds the download and decides
   * whether a partial file can be resumed). On a digest mismatch the partial file is deleted
   * (a resume could only repeat the bad bytes) and the error names `what`.
   */
  async download(url: URL, partial: string, expected: ExpectedDigests & { size: number }, what: string): Promise<FileDigests & { resumedFrom: number }> {
    const algo = integrityAlgorithm(expected.integrity)
    let resumedFrom: number | undefined
    let digests: FileDigests
    try {
      digests = await this.withRetry(`GET ${url}`, async () => {
        const have = await existingSize(partial)
        let start = have > expected.size ? 0 : have
        const hasher = new DigestingStream(algo)
        if (start === expected.size) {
          // Complete on disk from an earlier run that stopped before verifying: verify it.
          await absorbFile(partial, start, hasher)
          resumedFrom ??= start
          return hasher.digests()
        }
        const { res } = await this.get(url, start > 0 ? { range: `bytes=${start}-` } : {})
        if (res.statusCode === 416 && start > 0) {
          // The server will not continue from our partial file's length: start over.
          await res.body.dump().catch(() => undefined)
          await fs.rm(partial, { force: true })
          throw new BaleError('E_NETWORK', `GET ${url}: range from ${start} refused (416)`, { subject: String(url), temporary: true })
        }
        if (res.statusCode === 200) start = 0
        else if (res.statusCode === 206 && start > 0) {
          const m = /^bytes (\d+)-/.exec(header(res, 'content-range') ?? '')
          if (m === null || Number(m[1]) !== start) {
            await res.body.dump().catch(() => undefined)
            throw new BaleError('E_NETWORK', `GET ${url}: asked for bytes from ${start}, got Content-Range '${header(res, 'content-range') ?? ''}'`, { subject: String(url) })
          }
        } else {
          await res.body.dump().catch(() => undefined)
          throw HttpClient.statusError(res, `GET ${url}`)
        }
        resumedFrom ??= start
        await absorbFile(partial, start, hasher)
        const limit = new ByteLimit(expected.size - start, what)
        const out = createWriteStream(partial, start > 0 ? { flags: 'r+', start } : { flags: 'w' })
        await pipeline(res.body, limit, hasher, out)
        if (start + limit.count < expected.size) {
          // The body ended early without a socket error (no Content-Length): resume from here.
          throw new BaleError('E_NETWORK', `GET ${url}: body ended after ${start + limit.count} of ${expected.size} bytes`, { subject: String(url), temporary: true })
        }
        return hasher.digests()
      })
      checkDigests(digests, expected, what)
    } catch (e) {
      if (e instanceof BaleError && e.code === 'E_DIGEST') {
        // A resume could only repeat bad bytes: the partial file goes.
        await fs.rm(partial, { force: true })
        throw new BaleError('E_DIGEST', `${e.message} (download deleted)`, { subject: what, cause: e })
      }
      throw e
    }
    return { ...digests, resumedFrom: resumedFrom ?? 0 }
  }
}

async function existingSize(p: string): Promise<number> {
  try {
    return (await fs.stat(p)).size
  } catch {
    return 0
  }
}

async function absorbFile(p: string, length: number, hasher: DigestingStream): Promise<void> {
  if (length === 0) return
  for await (const chunk of createReadStream(p, { start: 0, end: length - 1 })) hasher.absorb(chunk as Buffer)
}

/** Refuses more than `max` bytes: a server sending more than the index promised is wrong, and must not fill the disk. */
class ByteLimit extends Transform {
  count = 0
  constructor(
    private readonly max: number,
    private readonly what: string,
  ) {
    super()
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.count += chunk.length
    if (this.count > this.max) {
      cb(new BaleError('E_DIGEST', `${this.what}: server sent more bytes than the ${this.max} expected`, { subject: this.what }))
      return
    }
    cb(null, chunk)
  }
}
