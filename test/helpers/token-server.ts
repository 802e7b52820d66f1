/**
 * A small Docker token server (the `auth: token:` protocol of distribution): GET /token with
 * `service` and `scope` query parameters and optional Basic credentials answers a JWT signed
 * RS256 with a key whose self-signed certificate the registry trusts (`rootcertbundle`), the
 * certificate itself in the `x5c` header. Known users get pull+push on every repository they ask
 * for; anonymous callers get a token with no access, so the registry refuses them, as Docker
 * Hub does for private repositories.
 *
 * Test hooks: GET /stats (requests so far, by user), POST /reset, POST /field?name=access_token
 * (answer with `access_token` instead of `token`, as OAuth2-style servers do).
 */
import { execFile } from 'node:child_process'
import { createPrivateKey, randomBytes, sign, X509Certificate } from 'node:crypto'
import { promises as fs } from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { promisify } from 'node:util'

const execFileP = promisify(execFile)

export interface TokenServer {
  readonly origin: string
  readonly realm: string
  readonly service: string
  readonly issuer: string
  /** The PEM certificate to give the registry as rootcertbundle. */
  readonly certFile: string
  stop(): Promise<void>
}

export interface TokenStats {
  requests: number
  byUser: Record<string, number>
  scopes: string[]
}

/** Key and self-signed certificate for signing tokens (openssl: node:crypto cannot issue X.509). */
export async function makeSigningCert(dir: string): Promise<{ keyFile: string; certFile: string }> {
  await fs.mkdir(dir, { recursive: true })
  const keyFile = path.join(dir, 'token.key')
  const certFile = path.join(dir, 'token.crt')
  await execFileP('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=bale-test-token-issuer'])
  return { keyFile, certFile }
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url')
}

export async function startTokenServer(opts: { dir: string; users: Record<string, string>; service?: string; issuer?: string; lifetimeS?: number }): Promise<TokenServer> {
  const { keyFile, certFile } = await makeSigningCert(opts.dir)
  const key = createPrivateKey(await fs.readFile(keyFile))
  const certDer = new X509Certificate(await fs.readFile(certFile)).raw
  const service = opts.service ?? 'bale-test-registry'
  const issuer = opts.issuer ?? 'bale-test-issuer'
  const lifetime = opts.lifetimeS ?? 300
  let stats: TokenStats = { requests: 0, byUser: {}, scopes: [] }
  let field: 'token' | 'access_token' = 'token'

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x')
    if (url.pathname === '/stats') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats))
      return
    }
    if (url.pathname === '/reset' && req.method === 'POST') {
      stats = { requests: 0, byUser: {}, scopes: [] }
      field = 'token'
      res.writeHead(204).end()
      return
    }
    if (url.pathname === '/field' && req.method === 'POST') {
      field = url.searchParams.get('name') === 'access_token' ? 'access_token' : 'token'
      res.writeHead(204).end()
      return
    }
    if (url.pathname !== '/token') {
      res.writeHead(404).end()
      return
    }
    let user = ''
    const authz = req.headers.authorization
    if (authz !== undefined) {
      const m = /^Basic (.+)$/i.exec(authz)
      const [u, ...rest] = m === null ? [] : Buffer.from(m[1] as string, 'base64').toString('utf8').split(':')
      if (u === undefined || opts.users[u] !== rest.join(':')) {
        stats.requests++
        res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ details: 'incorrect username or password' }))
        return
      }
      user = u
    }
    stats.requests++
    stats.byUser[user || 'anonymous'] = (stats.byUser[user || 'anonymous'] ?? 0) + 1
    const scopes = url.searchParams.getAll('scope')
    stats.scopes.push(...scopes)
    const access =
      user === ''
        ? []
        : scopes.flatMap((s) => {
            const [type, ...more] = s.split(':')
            const actions = more.pop() ?? ''
            return type === 'repository' ? [{ type, name: more.join(':'), actions: actions.split(',').filter((a) => a === 'pull' || a === 'push') }] : []
          })
    const now = Math.floor(Date.now() / 1000)
    const header = { typ: 'JWT', alg: 'RS256', x5c: [certDer.toString('base64')] }
    const claims = { iss: issuer, sub: user, aud: url.searchParams.get('service') ?? service, exp: now + lifetime, nbf: now - 10, iat: now, jti: randomBytes(8).toString('hex'), access }
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`
    const token = `${signingInput}.${b64url(sign('sha256', Buffer.from(signingInput), key))}`
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ [field]: token, expires_in: lifetime, issued_at: new Date(now * 1000).toISOString() }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const addr = server.address()
  const port = typeof addr === 'object' && addr !== null ? addr.port : 0
  const origin = `http://127.0.0.1:${port}`
  return {
    origin,
    realm: `${origin}/token`,
    service,
    issuer,
    certFile,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

export async function tokenStats(origin: string): Promise<TokenStats> {
  return (await (await fetch(`${origin}/stats`)).json()) as TokenStats
}

export async function resetTokenServer(origin: string): Promise<void> {
  await fetch(`${origin}/reset`, { method: 'POST' })
}

export async function setTokenField(origin: string, name: 'token' | 'access_token'): Promise<void> {
  await fetch(`${origin}/field?name=${name}`, { method: 'POST' })
}
