import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import type { Readable } from 'node:stream'
import { Agent, request, type Dispatcher } from 'undici'
import { BaleError } from '../lib/errors.js'
import { basicAuthorization, type Challenge, type Credentials, parseWwwAuthenticate, schemeFromChallenges, TokenCache } from './auth.js'
import { readCapped } from './client.js'
import { type ImageReference, plainHttpAllowed, registryOrigin } from './reference.js'
import { backoffDelay, DEFAULT_RETRY, errorCode, isRetryableStatus, isTransientNetworkError, parseRetryAfter, type RetryPolicy, sleep } from './retry.js'

/**
 * Pushing to an OCI distribution registry (distribution spec "push" section): blobs with a
 * HEAD first (a blob the registry has is never sent again), then POST to open an upload and
 * either one PUT with the whole body or PATCH chunks closed by a PUT, then the manifest by tag.
 * Auth follows the registry's challenge like the pull client (Basic, or Bearer tokens scoped
 * `repository:<name>:pull,push`); credentials go only to the registry's own origin, plain HTTP
 * only to loopback or with `insecure`.
 */
export interface PushOptions {
  readonly insecure?: boolean
  readonly credentials?: Credentials
  readonly retry?: RetryPolicy
  readonly signal?: AbortSignal
  /** Bodies larger than this are sent as PATCH chunks of this size (default CHUNK_SIZE). */
  readonly chunkSize?: number
  readonly onRetry?: (what: string, attempt: number, reason: string) => void
}

/**
 * Blobs up to 32 MiB go in one PUT; larger ones in 32 MiB PATCH chunks, so no single request
 * body exceeds the limits proxies in front of registries commonly set (Cloudflare refuses
 * request bodies over 100 MB; nginx's default client_max_body_size is far lower and is usually
 * raised to a few tens of MiB for registries).
 */
export const CHUNK_SIZE = 32 * 1024 * 1024
/** Same stuck-not-slow limits as the pull client; uploads get 5 min for the response headers (the registry hashes the blob before answering). */
const HEADERS_TIMEOUT_MS = 300_000
const BODY_TIMEOUT_MS = 60_000
const MAX_ERROR_BODY = 64 * 1024

export type BlobSource = { readonly path: string } | { readonly bytes: Buffer }
export interface BlobDescriptor {
  readonly digest: string
  readonly size: number
}

type Method = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH'
type Response = Dispatcher.ResponseData

function header(res: Response, name: string): string | undefined {
  const v = res.headers[name]
  return Array.isArray(v) ? v[0] : v
}

async function drain(res: Response): Promise<void> {
  await res.body.dump().catch(() => undefined)
}

export class RegistryPusher {
  readonly origin: string
  private readonly dispatcher = new Agent({ headersTimeout: HEADERS_TIMEOUT_MS, bodyTimeout: BODY_TIMEOUT_MS })
  private readonly retry: RetryPolicy
  private readonly tokens = new TokenCache()
  private readonly scope: string
  private scheme: 'none' | 'basic' | 'bearer' = 'none'
  private bearer?: { realm: string; service?: string }
  private pinged?: Promise<void>

  constructor(
    readonly ref: ImageReference,
    private readonly opts: PushOptions = {},
  ) {
    this.origin = registryOrigin(ref, opts.insecure)
    this.retry = opts.retry ?? DEFAULT_RETRY
    this.scope = `repository:${ref.repository}:pull,push`
  }

  get name(): string {
    return `${this.ref.domain}/${this.ref.repository}`
  }

  async close(): Promise<void> {
    await this.dispatcher.close().catch(() => undefined)
  }

  /** Whether the registry already has the blob (HEAD /v2/<name>/blobs/<digest>). */
  async hasBlob(desc: BlobDescriptor): Promise<boolean> {
    const what = `HEAD blob ${desc.digest} of ${this.name}`
    const res = await this.call(what, 'HEAD', this.url(`blobs/${desc.digest}`), {})
    await drain(res)
    if (res.statusCode === 200) return Number(header(res, 'content-length') ?? desc.size) === desc.size
    // Registries backed by object storage may answer with a redirect to it: the blob is there.
    if (res.statusCode === 307 || res.statusCode === 302) return true
    if (res.statusCode === 404) return false
    throw await this.statusError(res, what)
  }

  /** Upload a blob unless the registry has it. Returns whether bytes were sent. */
  async pushBlob(desc: BlobDescriptor, source: BlobSource): Promise<'exists' | 'uploaded'> {
    if (await this.hasBlob(desc)) return 'exists'
    const what = `upload of blob ${desc.digest} to ${this.name}`
    const chunk = this.opts.chunkSize ?? CHUNK_SIZE
    // A failed upload session is abandoned and a fresh one started: registries differ in how
    // (and whether) a broken PATCH can be resumed, and a new session always works.
    for (let attempt = 1; ; attempt++) {
      try {
        let location = await this.startUpload(desc)
        if (desc.size > chunk) {
          for (let start = 0; start < desc.size; start += chunk) {
            const end = Math.min(desc.size, start + chunk) - 1
            location = await this.patchChunk(location, source, start, end, desc)
          }
          await this.finishUpload(location, desc, undefined)
        } else {
          await this.finishUpload(location, desc, source)
        }
        return 'uploaded'
      } catch (e) {
        const transient = e instanceof BaleError ? e.temporary : isTransientNetworkError(e)
        if (!transient || attempt >= this.retry.attempts || this.opts.signal?.aborted) {
          if (e instanceof BaleError) throw e
          throw new BaleError('E_NETWORK', `${what}: ${errorCode(e) ?? (e as Error).message}`, { subject: desc.digest, cause: e })
        }
        const delayMs = backoffDelay(this.retry, attempt)
        this.opts.onRetry?.(what, attempt, e instanceof BaleError ? e.message : (errorCode(e) ?? (e as Error).message))
        await sleep(delayMs, this.opts.signal)
      }
    }
  }

  /** HEAD a manifest by tag: its digest, or undefined if the tag does not exist. */
  async manifestDigest(tag: string, mediaType: string): Promise<string | undefined> {
    const what = `HEAD ${this.name}:${tag}`
    const res = await this.call(what, 'HEAD', this.url(`manifests/${tag}`), { accept: mediaType })
    await drain(res)
    if (res.statusCode === 404) return undefined
    if (res.statusCode !== 200) throw await this.statusError(res, what)
    return header(res, 'docker-content-digest')
  }

  /** PUT a manifest under `tag`; checks the digest the registry reports against the bytes sent. */
  async pushManifest(tag: string, bytes: Buffer, mediaType: string): Promise<string> {
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    const what = `PUT ${this.name}:${tag}`
    const res = await this.call(what, 'PUT', this.url(`manifests/${tag}`), { 'content-type': mediaType }, () => bytes, bytes.length)
    if (res.statusCode !== 201 && res.statusCode !== 200) throw await this.statusError(res, what)
    await drain(res)
    const reported = header(res, 'docker-content-digest')
    if (reported !== undefined && reported !== digest) {
      throw new BaleError('E_DIGEST', `${what}: registry stored ${reported}, expected ${digest}`, { subject: digest })
    }
    return digest
  }

  private url(path: string): URL {
    return new URL(`/v2/${this.ref.repository}/${path}`, this.origin)
  }

  /** A Location header as an absolute URL on this registry (uploads must not leave its origin: they carry our credentials). */
  private location(res: Response, what: string): URL {
    const loc = header(res, 'location')
    if (loc === undefined) throw new BaleError('E_INPUT', `${what}: registry sent no upload Location`, { subject: what })
    const u = new URL(loc, this.origin)
    if (u.origin !== this.origin) throw new BaleError('E_INPUT', `${what}: upload Location ${u.origin} is not the registry's origin ${this.origin}`, { subject: what })
    return u
  }

  private async startUpload(desc: BlobDescriptor): Promise<URL> {
    const what = `POST upload of ${desc.digest} to ${this.name}`
    const res = await this.call(what, 'POST', this.url('blobs/uploads/'), { 'content-length': '0' })
    if (res.statusCode !== 202) throw await this.statusError(res, what)
    await drain(res)
    return this.location(res, what)
  }

  private async patchChunk(location: URL, source: BlobSource, start: number, end: number, desc: BlobDescriptor): Promise<URL> {
    const what = `PATCH bytes ${start}-${end} of ${desc.digest} to ${this.name}`
    const res = await this.send(
      location,
      'PATCH',
      // distribution's Content-Range for uploads has no "bytes " prefix (distribution spec, "Pushing a blob in chunks").
      { 'content-type': 'application/octet-stream', 'content-range': `${start}-${end}` },
      () => openRange(source, start, end),
      end - start + 1,
    )
    if (res.statusCode !== 202) throw await this.statusError(res, what)
    await drain(res)
    return this.location(res, what)
  }

  private async finishUpload(location: URL, desc: BlobDescriptor, source: BlobSource | undefined): Promise<void> {
    const what = `PUT blob ${desc.digest} to ${this.name}`
    const url = new URL(location)
    url.searchParams.set('digest', desc.digest)
    const res =
      source === undefined
        ? await this.send(url, 'PUT', { 'content-length': '0' })
        : await this.send(url, 'PUT', { 'content-type': 'application/octet-stream' }, () => openRange(source, 0, desc.size - 1), desc.size)
    if (res.statusCode !== 201) throw await this.statusError(res, what)
    await drain(res)
  }

  /** Learn the auth scheme from GET /v2/ once. */
  private ensurePinged(): Promise<void> {
    this.pinged ??= (async () => {
      const url = new URL('/v2/', this.origin)
      const res = await this.raw(url, 'GET', {})
      await drain(res)
      if (res.statusCode === 401) this.adopt(parseWwwAuthenticate(header(res, 'www-authenticate') ?? ''))
      else if (res.statusCode !== 200) throw new BaleError('E_INPUT', `GET ${url}: HTTP ${res.statusCode}: ${this.ref.registry} does not serve the registry API`, { subject: this.ref.registry })
    })()
    return this.pinged
  }

  private adopt(challenges: Challenge[]): void {
    const chosen = schemeFromChallenges(challenges)
    if (chosen === undefined) return
    this.scheme = chosen.scheme
    if (chosen.scheme === 'bearer') this.bearer = chosen.bearer
  }

  private basic(): string | undefined {
    return basicAuthorization(this.opts.credentials)
  }

  private async authorization(): Promise<string | undefined> {
    if (this.scheme === 'basic') return this.basic()
    if (this.scheme !== 'bearer' || this.bearer === undefined) return undefined
    const { realm, service } = this.bearer
    const key = TokenCache.key(realm, service, this.scope, this.opts.credentials?.username)
    const cached = this.tokens.get(key)
    if (cached !== undefined) return `Bearer ${cached}`
    let url: URL
    try {
      url = new URL(realm)
    } catch {
      throw new BaleError('E_AUTH', `${this.ref.registry}: token realm '${realm}' is not a URL`, { subject: realm })
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new BaleError('E_AUTH', `${this.ref.registry}: token realm '${realm}' is not http(s)`, { subject: realm })
    }
    if (url.protocol === 'http:' && this.opts.credentials !== undefined && !plainHttpAllowed(url.hostname, this.opts.insecure)) {
      throw new BaleError('E_AUTH', `${this.ref.registry}: refusing to send credentials to plain-HTTP token realm ${realm} (use --insecure to allow)`, { subject: realm })
    }
    if (service !== undefined) url.searchParams.set('service', service)
    url.searchParams.set('scope', this.scope)
    const basic = this.basic()
    const res = await this.raw(url, 'GET', basic === undefined ? {} : { authorization: basic })
    if (res.statusCode !== 200) {
      await drain(res)
      throw new BaleError('E_AUTH', `${this.ref.registry}: token server ${url.origin}${url.pathname} refused push access to ${this.ref.repository} (${res.statusCode})`, {
        subject: this.ref.registry,
      })
    }
    const body = await readCapped(res.body, MAX_ERROR_BODY, `token from ${url.origin}`)
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown } = {}
    try {
      doc = JSON.parse(body.toString('utf8')) as typeof doc
    } catch {
      throw new BaleError('E_AUTH', `token from ${url.origin}${url.pathname}: response is not JSON`, { subject: realm })
    }
    const token = typeof doc.token === 'string' && doc.token !== '' ? doc.token : typeof doc.access_token === 'string' ? doc.access_token : ''
    if (token === '') throw new BaleError('E_AUTH', `token from ${url.origin}${url.pathname}: response carries no token`, { subject: realm })
    this.tokens.set(key, token, typeof doc.expires_in === 'number' ? doc.expires_in : undefined)
    return `Bearer ${token}`
  }

  private raw(url: URL, method: Method, headers: Record<string, string>, body?: Readable | Buffer): Promise<Response> {
    return request(url, {
      method,
      headers: { 'user-agent': 'bale', ...headers },
      ...(body === undefined ? {} : { body }),
      dispatcher: this.dispatcher,
      signal: this.opts.signal,
    })
  }

  /**
   * One authenticated request; a 401 drops the cached token and retries once (a token can
   * expire during a long upload). `body` is a factory so a retry gets a fresh stream.
   */
  private async send(url: URL, method: Method, headers: Record<string, string>, body?: () => Readable | Buffer, length?: number): Promise<Response> {
    await this.ensurePinged()
    for (let authTry = 0; ; authTry++) {
      const h = { ...headers }
      const auth = await this.authorization()
      if (auth !== undefined) h.authorization = auth
      if (length !== undefined) h['content-length'] = String(length)
      const res = await this.raw(url, method, h, body?.())
      if (res.statusCode !== 401 || authTry > 0) return res
      const challenges = parseWwwAuthenticate(header(res, 'www-authenticate') ?? '')
      if (challenges.length === 0) return res
      await drain(res)
      if (this.bearer !== undefined) this.tokens.delete(TokenCache.key(this.bearer.realm, this.bearer.service, this.scope, this.opts.credentials?.username))
      this.adopt(challenges)
    }
  }

  /** send() with retries for transient errors and 429/5xx (honouring Retry-After up to the policy's cap). */
  private async call(what: string, method: Method, url: URL, headers: Record<string, string>, body?: () => Readable | Buffer, length?: number): Promise<Response> {
    for (let attempt = 1; ; attempt++) {
      let res: Response
      try {
        res = await this.send(url, method, headers, body, length)
      } catch (e) {
        if (e instanceof BaleError) throw e
        if (!isTransientNetworkError(e) || attempt >= this.retry.attempts || this.opts.signal?.aborted) {
          throw new BaleError('E_NETWORK', `${what}: ${errorCode(e) === 'ECONNREFUSED' ? 'connection refused' : (e as Error).message}`, { subject: what, cause: e })
        }
        this.opts.onRetry?.(what, attempt, errorCode(e) ?? (e as Error).message)
        await sleep(backoffDelay(this.retry, attempt), this.opts.signal)
        continue
      }
      if (!isRetryableStatus(res.statusCode) || attempt >= this.retry.attempts) return res
      await drain(res)
      const after = parseRetryAfter(header(res, 'retry-after'))
      const delayMs = after !== undefined && after <= this.retry.maxRetryAfterMs ? after : backoffDelay(this.retry, attempt)
      this.opts.onRetry?.(what, attempt, `HTTP ${res.statusCode}`)
      await sleep(delayMs, this.opts.signal)
    }
  }

  private async statusError(res: Response, what: string): Promise<BaleError> {
    let detail = ''
    try {
      const doc = JSON.parse((await readCapped(res.body, MAX_ERROR_BODY, what)).toString('utf8')) as { errors?: Array<{ code?: unknown; message?: unknown }> }
      const first = doc.errors?.[0]
      if (first !== undefined) detail = ` (${[first.code, first.message].filter((x) => typeof x === 'string' && x !== '').join(': ')})`
    } catch {
      // No JSON error body: the status says it all.
    }
    const s = res.statusCode
    if (s === 401) return new BaleError('E_AUTH', `${what}: authentication required (401)${detail}; pass --creds USER:PASSWORD or set BALE_REGISTRY_CREDS`, { subject: what })
    if (s === 403) return new BaleError('E_AUTH', `${what}: push denied (403)${detail}`, { subject: what })
    if (s === 404) return new BaleError('E_NOT_FOUND', `${what}: not found (404)${detail}`, { subject: what })
    return new BaleError(s >= 500 ? 'E_NETWORK' : 'E_INPUT', `${what}: unexpected HTTP ${s}${detail}`, { subject: what, temporary: isRetryableStatus(s) })
  }
}

function openRange(source: BlobSource, start: number, end: number): Readable | Buffer {
  if ('bytes' in source) return source.bytes.subarray(start, end + 1)
  return createReadStream(source.path, { start, end })
}
