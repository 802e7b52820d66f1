import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { BaleError } from '../lib/errors.js'

/**
 * Registry authentication pieces that need no network: challenge parsing, where credentials
 * come from, and the token cache. The HTTP exchanges live in client.ts.
 */
export interface Challenge {
  /** Lower-cased auth scheme: 'bearer', 'basic', … */
  readonly scheme: string
  /** Parameter names lower-cased; values unquoted. */
  readonly params: Readonly<Record<string, string>>
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/

/**
 * Parse a WWW-Authenticate header (RFC 9110 §11.6.1): one or more comma-separated challenges,
 * each a scheme followed by `name=value` or `name="quoted \" value"` parameters, e.g.
 * `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"`.
 * A token68 credential after a scheme is skipped (registries do not send them).
 */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const out: Array<{ scheme: string; params: Record<string, string> }> = []
  let i = 0
  const n = header.length
  const skipWs = (): void => {
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++
  }
  const readToken = (): string => {
    const m = TOKEN.exec(header.slice(i))
    if (m === null) return ''
    i += m[0].length
    return m[0]
  }
  const readQuoted = (): string => {
    // header[i] is the opening quote.
    i++
    let v = ''
    while (i < n && header[i] !== '"') {
      if (header[i] === '\\' && i + 1 < n) i++
      v += header[i]
      i++
    }
    i++ // closing quote (or end of input for an unterminated string)
    return v
  }
  let current: { scheme: string; params: Record<string, string> } | undefined
  while (i < n) {
    skipWs()
    if (header[i] === ',') {
      i++
      continue
    }
    const name = readToken()
    if (name === '') {
      i++ // a character no grammar rule allows here: skip it rather than loop forever
      continue
    }
    skipWs()
    if (current !== undefined && header[i] === '=') {
      // `name=` then a value (`name==…` is the tail of a token68 and is dropped).
      i++
      skipWs()
      if (header[i] === '"') current.params[name.toLowerCase()] = readQuoted()
      else {
        // Unquoted: a token by the grammar, but some servers send bare URLs, so read to ',' or space.
        const m = /^[^,\s]*/.exec(header.slice(i))
        const v = m === null ? '' : m[0]
        i += v.length
        if (v !== '' && !v.startsWith('=')) current.params[name.toLowerCase()] = v
      }
      continue
    }
    // A token not followed by '=' starts a new challenge.
    current = { scheme: name.toLowerCase(), params: {} }
    out.push(current)
    // A token68 directly after the scheme (`Basic dXNlcg==`) is a credential form, not params: skip it.
    skipWs()
    const t68 = /^[A-Za-z0-9\-._~+/]+=*[ \t]*(?=,|$)/.exec(header.slice(i))
    if (t68 !== null) i += t68[0].length
  }
  return out
}

/** Where a registry's Bearer tokens come from (from its 401 challenge). */
export interface BearerRealm {
  realm: string
  service?: string
}

/**
 * The scheme a 401 challenge asks for: Bearer preferred (it scopes what we may do), else Basic;
 * undefined when the challenge names neither.
 */
export function schemeFromChallenges(challenges: Challenge[]): { scheme: 'bearer'; bearer: BearerRealm } | { scheme: 'basic' } | undefined {
  const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm)
  if (bearer !== undefined) {
    return { scheme: 'bearer', bearer: { realm: bearer.params.realm as string, ...(bearer.params.service === undefined ? {} : { service: bearer.params.service }) } }
  }
  return challenges.some((c) => c.scheme === 'basic') ? { scheme: 'basic' } : undefined
}

/** `Authorization: Basic …` for these credentials, if any. */
export function basicAuthorization(c: Credentials | undefined): string | undefined {
  return c === undefined ? undefined : `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`
}

export interface Credentials {
  readonly username: string
  readonly password: string
  /** Where they came from, for messages: '--creds', 'BALE_REGISTRY_CREDS', or the config file path. */
  readonly source: string
}

/** `user:pass` (the password may itself contain ':'). */
export function parseCredsString(s: string, source: string): Credentials {
  const colon = s.indexOf(':')
  if (colon <= 0) {
    throw new BaleError('E_USAGE', `${source}: want USER:PASSWORD`, { subject: source })
  }
  return { username: s.slice(0, colon), password: s.slice(colon + 1), source }
}

/** Environment variable with `user:pass` for the registry being pulled from (kept out of `ps`). */
export const CREDS_ENV = 'BALE_REGISTRY_CREDS'

/** Docker's own notion of a config.json key's host: scheme and path stripped (registry/auth.go ConvertToHostname). */
function keyHost(key: string): string {
  return key
    .replace(/^https?:\/\//, '')
    .split('/')[0]!
    .toLowerCase()
}

/** Hosts under which `docker login` may have stored Docker Hub credentials. */
const DOCKER_HUB_KEYS = new Set(['index.docker.io', 'docker.io', 'registry-1.docker.io'])

export function dockerConfigPath(env: NodeJS.ProcessEnv): string {
  if (env.DOCKER_CONFIG) return path.join(env.DOCKER_CONFIG, 'config.json')
  return path.join(env.HOME || os.homedir(), '.docker', 'config.json')
}

/**
 * Credentials for `domain` (as in a canonical reference: `docker.io` or host[:port]), first
 * match wins: `--creds`, then $BALE_REGISTRY_CREDS, then `auths` in ~/.docker/config.json
 * (`auth` = base64 of user:pass, or `username`/`password`). Credential helpers (`credsStore`,
 * `credHelpers`) are not run: bale does not execute programs named by a config file.
 */
export async function findCredentials(domain: string, opts: { creds?: string; env: NodeJS.ProcessEnv }): Promise<Credentials | undefined> {
  if (opts.creds !== undefined) return parseCredsString(opts.creds, '--creds')
  const fromEnv = opts.env[CREDS_ENV]
  if (fromEnv !== undefined && fromEnv !== '') return parseCredsString(fromEnv, CREDS_ENV)
  const file = dockerConfigPath(opts.env)
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined
    throw new BaleError('E_INPUT', `${file}: ${(e as Error).message}`, { subject: file, cause: e })
  }
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch {
    throw new BaleError('E_INPUT', `${file}: not valid JSON`, { subject: file })
  }
  const auths = typeof doc === 'object' && doc !== null ? (doc as { auths?: unknown }).auths : undefined
  if (typeof auths !== 'object' || auths === null) return undefined
  const want = domain.toLowerCase()
  for (const [key, entry] of Object.entries(auths as Record<string, unknown>)) {
    const host = keyHost(key)
    const matches = host === want || (want === 'docker.io' && DOCKER_HUB_KEYS.has(host))
    if (!matches || typeof entry !== 'object' || entry === null) continue
    const e = entry as { auth?: unknown; username?: unknown; password?: unknown }
    if (typeof e.auth === 'string' && e.auth !== '') {
      const decoded = Buffer.from(e.auth, 'base64').toString('utf8')
      return parseCredsString(decoded, `${file} auths["${key}"]`)
    }
    if (typeof e.username === 'string' && typeof e.password === 'string') {
      return { username: e.username, password: e.password, source: `${file} auths["${key}"]` }
    }
  }
  return undefined
}

/**
 * Bearer tokens by realm, service, scope and user. A token without `expires_in` lives 60 s
 * (the Docker token spec's default); each is dropped 10 s before it expires so a request never
 * leaves with a token that dies in flight.
 */
export const DEFAULT_TOKEN_LIFETIME_S = 60
const EXPIRY_MARGIN_MS = 10_000

export class TokenCache {
  private readonly tokens = new Map<string, { token: string; expiresAt: number }>()

  constructor(private readonly now: () => number = Date.now) {}

  static key(realm: string, service: string | undefined, scope: string, username: string | undefined): string {
    return JSON.stringify([realm, service ?? '', scope, username ?? ''])
  }

  get(key: string): string | undefined {
    const t = this.tokens.get(key)
    if (t === undefined) return undefined
    if (this.now() >= t.expiresAt - EXPIRY_MARGIN_MS) {
      this.tokens.delete(key)
      return undefined
    }
    return t.token
  }

  delete(key: string): void {
    this.tokens.delete(key)
  }

  set(key: string, token: string, expiresInS: number | undefined): void {
    const life = expiresInS !== undefined && expiresInS > 0 ? expiresInS : DEFAULT_TOKEN_LIFETIME_S
    this.tokens.set(key, { token, expiresAt: this.now() + life * 1000 })
  }
}
