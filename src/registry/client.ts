import { createHash } from 'node:crypto'
import type { Readable } from 'node:stream'
import { Agent, request, type Dispatcher } from 'undici'
import { BaleError } from '../lib/errors.js'
import { basicAuthorization, type Challenge, type Credentials, CREDS_ENV, parseWwwAuthenticate, schemeFromChallenges, TokenCache } from './auth.js'
import { MANIFEST_ACCEPT, MAX_MANIFEST_BYTES } from './manifest.js'
import { type ImageReference, plainHttpAllowed, registryOrigin, SHA256_DIGEST } from './reference.js'
import {
  backoffDelay,
  DEFAULT_RETRY,
  describeNetworkError,
  isRetryableStatus,
  isTransientNetworkError,
  parseRetryAfter,
  type RetryPolicy,
  sleep,
} from './retry.js'

/**
 * An OCI distribution client for one repository: `/v2/` ping, anonymous, Basic and Bearer
 * token auth, manifests and blobs, retries, and redirects followed by hand so that the
 * Authorization header never leaves the registry's origin (blob storage gets a signed URL,
 * not the user's credentials).
 */
export interface RetryEvent {
  readonly what: string
  /** The try that failed (1-based). */
  readonly attempt: number
  readonly delayMs: number
  readonly reason: string
}

export interface ClientOptions {
  /** Plain HTTP to a non-loopback registry. */
  readonly insecure?: boolean
  readonly credentials?: Credentials
  readonly retry?: RetryPolicy
  readonly signal?: AbortSignal
  readonly onRetry?: (e: RetryEvent) => void
  readonly userAgent?: string
}

/** Up to 5 hops: Docker Hub → CDN is one; S3-style storage with a regional hop is two or three. */
const MAX_REDIRECTS = 5
/** Registry error bodies are read for their message, never more than this. */
const MAX_ERROR_BODY = 64 * 1024
const REDIRECT_STATUS: ReadonlySet<number> = new Set([301, 302, 303, 307, 308])

/**
 * undici's defaults wait 300 s for headers and between body chunks. A registry that sends
 * nothing for 30 s (headers) or 60 s (mid-blob) is stuck, not slow: time out, and let the retry
 * (which resumes blobs with Range) try a fresh connection.
 */
const HEADERS_TIMEOUT_MS = 30_000
const BODY_TIMEOUT_MS = 60_000

export type Response = Dispatcher.ResponseData

function header(res: Response, name: string): string | undefined {
  const v = res.headers[name]
  return Array.isArray(v) ? v[0] : v
}

async function drain(res: Response): Promise<void> {
  await res.body.dump().catch(() => undefined)
}

/** Read a body into memory, refusing more than `cap` bytes (`what` names it in the error). */
export async function readCapped(body: Readable, cap: number, what: string, overflow?: () => BaleError): Promise<Buffer> {
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of body) {
    const b = chunk as Buffer
    total += b.length
    if (total > cap) {
      body.destroy()
      throw overflow?.() ?? new BaleError('E_INPUT', `${what}: larger than the ${cap}-byte limit`, { subject: what })
    }
    chunks.push(b)
  }
  return Buffer.concat(chunks)
}

export function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

export class RegistryClient {
  readonly origin: string
  private readonly dispatcher: Agent
  private readonly retry: RetryPolicy
  private readonly tokens = new TokenCache()
  private readonly pendingTokens = new Map<string, Promise<string>>()
  private readonly defaultScope: string
  private scheme: 'none' | 'basic' | 'bearer' = 'none'
  private bearer?: { realm: string; service?: string }
  private pinged?: Promise<void>

  constructor(
    readonly ref: ImageReference,
    private readonly opts: ClientOptions = {},
  ) {
    this.origin = registryOrigin(ref, opts.insecure)
    this.retry = opts.retry ?? DEFAULT_RETRY
    this.defaultScope = `repository:${ref.repository}:pull`
    this.dispatcher = new Agent({ headersTimeout: HEADERS_TIMEOUT_MS, bodyTimeout: BODY_TIMEOUT_MS })
  }

  async close(): Promise<void> {
    await this.dispatcher.close().catch(() => undefined)
  }

  private get name(): string {
    return `${this.ref.domain}/${this.ref.repository}`
  }

  /**
   * GET /v2/ once, to learn how this registry authenticates before the first real request
   * (saves a 401 round trip per request, and fetches the Bearer token up front).
   */
  ensurePinged(): Promise<void> {
    this.pinged ??= this.ping()
    return this.pinged
  }

  private async ping(): Promise<void> {
    const url = new URL('/v2/', this.origin)
    const res = await this.withRetry(`GET ${url}`, () => this.raw(url, 'GET', {}))
    if (res.statusCode === 200) {
      await drain(res)
      return
    }
    if (res.statusCode === 401) {
      const challenges = parseWwwAuthenticate(header(res, 'www-authenticate') ?? '')
      await drain(res)
      this.adoptChallenge(challenges)
      return
    }
    if (res.statusCode === 404) {
      await drain(res)
      throw new BaleError('E_INPUT', `GET ${url}: 404: ${this.ref.registry} does not serve the registry API`, { subject: this.ref.registry })
    }
    throw await this.statusError(res, `GET ${url}`)
  }

  /** Take the scheme a 401 challenge asks for (Bearer preferred: it scopes what we may do). */
  private adoptChallenge(challenges: Challenge[]): void {
    const chosen = schemeFromChallenges(challenges)
    if (chosen === undefined) return
    this.scheme = chosen.scheme
    if (chosen.scheme === 'bearer') this.bearer = chosen.bearer
  }

  private basicHeader(): string | undefined {
    return basicAuthorization(this.opts.credentials)
  }

  private async authorization(scope: string): Promise<string | undefined> {
    if (this.scheme === 'basic') return this.basicHeader()
    if (this.scheme === 'bearer') return `Bearer ${await this.token(scope)}`
    return undefined
  }

  /** A Bearer token for `scope`, from the cache or the realm; concurrent callers share one fetch. */
  private token(scope: string): Promise<string> {
    const b = this.bearer as { realm: string; service?: string }
    const key = TokenCache.key(b.realm, b.service, scope, this.opts.credentials?.username)
    const cached = this.tokens.get(key)
    if (cached !== undefined) return Promise.resolve(cached)
    let p = this.pendingTokens.get(key)
    if (p === undefined) {
      p = this.fetchToken(b.realm, b.service, scope, key).finally(() => this.pendingTokens.delete(key))
      this.pendingTokens.set(key, p)
    }
    return p
  }

  private async fetchToken(realm: string, service: string | undefined, scope: string, key: string): Promise<string> {
    let url: URL
    try {
      url = new URL(realm)
    } catch {
      throw new BaleError('E_AUTH', `${this.ref.registry}: token realm '${realm}' is not a URL`, { subject: realm })
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new BaleError('E_AUTH', `${this.ref.registry}: token realm '${realm}' is not http(s)`, { subject: realm })
    }
    const creds = this.opts.credentials
    if (url.protocol === 'http:' && creds !== undefined && !plainHttpAllowed(url.hostname, this.opts.insecure)) {
      throw new BaleError('E_AUTH', `${this.ref.registry}: refusing to send credentials to plain-HTTP token realm ${realm} (use --insecure to allow)`, { subject: realm })
    }
    if (service !== undefined) url.searchParams.set('service', service)
    url.searchParams.append('scope', scope)
    const headers: Record<string, string> = {}
    const basic = this.basicHeader()
    if (basic !== undefined) headers.authorization = basic
    const what = `token from ${url.origin}${url.pathname}`
    const res = await this.withRetry(what, () => this.raw(url, 'GET', headers))
    if (res.statusCode === 401 || res.statusCode === 403) {
      await drain(res)
      throw new BaleError(
        'E_AUTH',
        `${this.ref.registry}: token server ${url.origin}${url.pathname} refused ${creds === undefined ? 'anonymous access' : `the credentials from ${creds.source}`} (${res.statusCode})`,
        { subject: this.ref.registry },
      )
    }
    if (res.statusCode !== 200) throw await this.statusError(res, `GET ${url.origin}${url.pathname}`)
    const body = await readCapped(res.body, MAX_ERROR_BODY, what)
    let doc: unknown
    try {
      doc = JSON.parse(body.toString('utf8'))
    } catch {
      throw new BaleError('E_AUTH', `${what}: response is not JSON`, { subject: realm })
    }
    const d = (typeof doc === 'object' && doc !== null ? doc : {}) as { token?: unknown; access_token?: unknown; expires_in?: unknown }
    // The Docker token spec names it `token`; OAuth2-style servers say `access_token`.
    const token = typeof d.token === 'string' && d.token !== '' ? d.token : typeof d.access_token === 'string' ? d.access_token : ''
    if (token === '') throw new BaleError('E_AUTH', `${what}: response carries no token`, { subject: realm })
    this.tokens.set(key, token, typeof d.expires_in === 'number' ? d.expires_in : undefined)
    return token
  }

  /** One HTTP exchange, no auth, no redirects: the undici call and nothing else. */
  private raw(url: URL, method: 'GET' | 'HEAD', headers: Record<string, string>): Promise<Response> {
    return request(url, {
      method,
      headers: { 'user-agent': this.opts.userAgent ?? 'bale', ...headers },
      dispatcher: this.dispatcher,
      signal: this.opts.signal,
    })
  }

  /**
   * Send with auth and follow redirects by hand. Authorization goes only to this registry's
   * origin; a hop to any other origin (blob storage, a CDN) goes without it, and an https → http
   * downgrade is refused unless that host is loopback or --insecure was given.
   */
  private async send(url: URL, headers: Record<string, string>, scope: string): Promise<Response> {
    let current = url
    let authRetried = false
    for (let hop = 0; hop <= MAX_REDIRECTS; ) {
      const sameOrigin = current.origin === this.origin
      const h = { ...headers }
      if (sameOrigin) {
        const a = await this.authorization(scope)
        if (a !== undefined) h.authorization = a
      }
      const res = await this.raw(current, 'GET', h)
      if (sameOrigin && res.statusCode === 401 && !authRetried) {
        authRetried = true
        const retryScope = this.reauth(parseWwwAuthenticate(header(res, 'www-authenticate') ?? ''), scope)
        if (retryScope !== undefined) {
          scope = retryScope
          await drain(res)
          continue
        }
        return res
      }
      const location = header(res, 'location')
      if (!REDIRECT_STATUS.has(res.statusCode) || location === undefined) return res
      await drain(res)
      let next: URL
      try {
        next = new URL(location, current)
      } catch {
        throw new BaleError('E_NETWORK', `GET ${current}: redirect to an invalid URL '${location}'`, { subject: String(current) })
      }
      if (current.protocol === 'https:' && next.protocol === 'http:' && !plainHttpAllowed(next.hostname, this.opts.insecure)) {
        throw new BaleError('E_NETWORK', `GET ${current}: refusing redirect from https to plain http (${next.origin})`, { subject: String(current) })
      }
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new BaleError('E_NETWORK', `GET ${current}: refusing redirect to ${next.protocol} URL`, { subject: String(current) })
      }
      current = next
      hop++
    }
    throw new BaleError('E_NETWORK', `GET ${url}: more than ${MAX_REDIRECTS} redirects`, { subject: String(url) })
  }

  /**
   * A 401 on a request that carried our best auth: take what the challenge asks for and say
   * which scope to retry with, or undefined when retrying could not change the answer. A
   * rejected token is dropped (it may have expired early, or lack a scope the registry names
   * in the challenge); Basic is retried only if we have credentials and did not send them.
   */
  private reauth(challenges: Challenge[], scope: string): string | undefined {
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm)
    if (bearer !== undefined) {
      this.adoptChallenge(challenges)
      const b = this.bearer as { realm: string; service?: string }
      this.tokens.delete(TokenCache.key(b.realm, b.service, scope, this.opts.credentials?.username))
      return bearer.params.scope ?? scope
    }
    if (challenges.some((c) => c.scheme === 'basic') && this.opts.credentials !== undefined && this.scheme !== 'basic') {
      this.scheme = 'basic'
      return scope
    }
    return undefined
  }

  /**
   * Retry transient failures: connection errors (per isTransientNetworkError) and 408/429/5xx
   * (per isRetryableStatus), with backoffDelay between tries or the registry's Retry-After.
   * After the last try a retryable status is returned for the caller to report.
   */
  async withRetry(what: string, fn: () => Promise<Response>): Promise<Response> {
    for (let attempt = 1; ; attempt++) {
      let res: Response
      try {
        res = await fn()
      } catch (e) {
        if (e instanceof BaleError) throw e
        if (this.opts.signal?.aborted) throw e
        if (!isTransientNetworkError(e) || attempt >= this.retry.attempts) throw networkError(e, what, attempt)
        const delayMs = backoffDelay(this.retry, attempt)
        this.opts.onRetry?.({ what, attempt, delayMs, reason: describeNetworkError(e) })
        await sleep(delayMs, this.opts.signal)
        continue
      }
      if (!isRetryableStatus(res.statusCode) || attempt >= this.retry.attempts) return res
      const retryAfter = parseRetryAfter(header(res, 'retry-after'))
      if (retryAfter !== undefined && retryAfter > this.retry.maxRetryAfterMs) {
        await drain(res)
        throw new BaleError(
          'E_NETWORK',
          `${what}: HTTP ${res.statusCode}, and the registry asks to retry after ${Math.ceil(retryAfter / 1000)} s (more than the ${this.retry.maxRetryAfterMs / 1000} s bale waits)`,
          { subject: what, temporary: true },
        )
      }
      const delayMs = retryAfter ?? backoffDelay(this.retry, attempt)
      await drain(res)
      this.opts.onRetry?.({ what, attempt, delayMs, reason: `HTTP ${res.statusCode}` })
      await sleep(delayMs, this.opts.signal)
    }
  }

  /** An authenticated, retried, redirect-following GET of a path under /v2/<repo>/. */
  private async get(what: string, path: string, headers: Record<string, string>): Promise<Response> {
    await this.ensurePinged()
    const url = new URL(`/v2/${this.ref.repository}/${path}`, this.origin)
    return this.withRetry(what, () => this.send(url, headers, this.defaultScope))
  }

  /**
   * Fetch a manifest by tag or digest. By digest, the bytes must hash to it (and have
   * `expectedSize` bytes when given); by tag, the digest is computed and returned. The
   * Docker-Content-Digest header is not trusted for tags (ggcr does the same: some registries
   * send wrong ones), and never needed for digests.
   */
  async fetchManifest(reference: string, expectedSize?: number): Promise<{ bytes: Buffer; digest: string; contentType?: string }> {
    const sep = SHA256_DIGEST.test(reference) ? '@' : ':'
    const what = `${this.name}${sep}${reference}`
    const res = await this.get(what, `manifests/${reference}`, { accept: MANIFEST_ACCEPT })
    if (res.statusCode !== 200) throw await this.statusError(res, what, 'manifest')
    const declared = Number(header(res, 'content-length'))
    if (Number.isFinite(declared) && declared > MAX_MANIFEST_BYTES) {
      await drain(res)
      throw new BaleError('E_INPUT', `${what}: manifest of ${declared} bytes exceeds the ${MAX_MANIFEST_BYTES}-byte limit`, { subject: what })
    }
    const bytes = await readCapped(res.body, MAX_MANIFEST_BYTES, `${what}: manifest`)
    const digest = `sha256:${sha256Hex(bytes)}`
    if (sep === '@' && digest !== reference) {
      throw new BaleError('E_DIGEST', `GET ${what}: expected ${reference} got ${digest}`, { subject: reference })
    }
    if (expectedSize !== undefined && expectedSize !== bytes.length) {
      throw new BaleError('E_DIGEST', `GET ${what}: expected ${expectedSize} bytes got ${bytes.length}`, { subject: reference })
    }
    const contentType = header(res, 'content-type')
    return { bytes, digest, ...(contentType === undefined ? {} : { contentType }) }
  }

  /**
   * Read a small blob (an image config) into memory, verified against its digest and its
   * descriptor's size. Cheaper than streaming it to a partial file: no lock, no temp file, no
   * re-read from disk, and the caller parses the bytes it already has.
   */
  async fetchSmallBlob(digest: string, size: number, cap: number): Promise<Buffer> {
    const what = `blob ${digest} of ${this.name}`
    if (size > cap) throw new BaleError('E_INPUT', `${what}: ${size} bytes exceeds the ${cap}-byte limit`, { subject: digest })
    const res = await this.get(what, `blobs/${digest}`, {})
    if (res.statusCode !== 200) throw await this.statusError(res, what, 'blob')
    const bytes = await readCapped(
      res.body,
      size,
      what,
      () => new BaleError('E_DIGEST', `blob ${digest}: registry sent more than the ${size} bytes its descriptor says`, { subject: digest }),
    )
    if (bytes.length !== size) {
      throw new BaleError('E_NETWORK', `${what}: response ended at byte ${bytes.length} of ${size}`, { subject: digest, temporary: true })
    }
    const got = `sha256:${sha256Hex(bytes)}`
    if (got !== digest) throw new BaleError('E_DIGEST', `blob ${digest}: expected ${digest} got ${got}`, { subject: digest })
    return bytes
  }

  /**
   * Open a blob from byte `offset` on (Range), for the caller to stream and verify. Returns the
   * response with status 200 (whole blob: the registry ignored Range) or 206 (from `offset`).
   */
  async openBlob(digest: string, offset: number): Promise<{ res: Response; start: number }> {
    const what = `blob ${digest} of ${this.name}`
    const headers: Record<string, string> = offset > 0 ? { range: `bytes=${offset}-` } : {}
    const res = await this.get(what, `blobs/${digest}`, headers)
    if (res.statusCode === 200) return { res, start: 0 }
    if (res.statusCode === 206 && offset > 0) {
      const m = /^bytes (\d+)-/.exec(header(res, 'content-range') ?? '')
      const start = m === null ? Number.NaN : Number(m[1])
      if (start !== offset) {
        await drain(res)
        throw new BaleError('E_NETWORK', `${what}: asked for bytes from ${offset}, got Content-Range '${header(res, 'content-range') ?? ''}'`, {
          subject: digest,
          temporary: true,
        })
      }
      return { res, start }
    }
    if (res.statusCode === 416 && offset > 0) {
      // Our partial file is at least as long as the blob: it is wrong; the caller restarts from 0.
      await drain(res)
      return this.openBlob(digest, 0)
    }
    throw await this.statusError(res, what, 'blob')
  }

  /** A BaleError for a final non-success status, with the registry's own error code/message. */
  async statusError(res: Response, what: string, kind?: 'manifest' | 'blob'): Promise<BaleError> {
    let detail = ''
    try {
      const body = await readCapped(res.body, MAX_ERROR_BODY, what)
      const doc = JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: unknown; message?: unknown }> }
      const first = doc.errors?.[0]
      if (first !== undefined) detail = [first.code, first.message].filter((x) => typeof x === 'string' && x !== '').join(': ')
    } catch {
      // No JSON error body: the status says it all.
    }
    const status = res.statusCode
    const reg = detail === '' ? '' : ` (${detail})`
    const creds = this.opts.credentials
    switch (status) {
      case 401:
        return new BaleError(
          'E_AUTH',
          creds === undefined
            ? `${what}: authentication required (401)${reg}; pass --creds USER:PASSWORD, set ${CREDS_ENV}, or docker login`
            : `${what}: the credentials from ${creds.source} were rejected (401)${reg}`,
          { subject: what },
        )
      case 403:
        return new BaleError('E_AUTH', `${what}: access denied (403)${reg}${creds === undefined ? '' : ` for user '${creds.username}'`}`, { subject: what })
      case 404:
        return new BaleError('E_NOT_FOUND', `${what}: ${kind ?? 'resource'} not found (404)${reg}`, { subject: what })
      default:
        if (isRetryableStatus(status)) {
          return new BaleError('E_NETWORK', `${what}: HTTP ${status}${reg} after ${this.retry.attempts} tries`, { subject: what, temporary: true })
        }
        return new BaleError(status >= 500 ? 'E_NETWORK' : 'E_INPUT', `${what}: unexpected HTTP ${status}${reg}`, { subject: what })
    }
  }
}

function networkError(e: unknown, what: string, attempts: number): BaleError {
  return new BaleError('E_NETWORK', `${what}: ${describeNetworkError(e)}${attempts > 1 ? ` after ${attempts} tries` : ''}`, {
    subject: what,
    cause: e,
    temporary: isTransientNetworkError(e),
  })
}
