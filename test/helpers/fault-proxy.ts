/**
 * A loopback HTTP proxy in front of a real registry that records every request and injects
 * the faults real networks and registries produce: 429 with Retry-After, 5xx, a connection
 * reset part-way through a body, corrupted bytes, a transfer that stalls, and redirects to
 * another origin. Rules are consumed in order; each applies to requests it matches, `times` times.
 */
import http from 'node:http'
import type { Socket } from 'node:net'

export type Fault =
  | { kind: 'status'; status: number; retryAfter?: string }
  /**
   * Send `afterBytes` of the body, then reset the connection (RST). The reset waits `delayMs`
   * (default 200) so that the client has read what was sent: an RST makes the receiving kernel
   * drop unread data, and the tests want a known amount to have arrived.
   */
  | { kind: 'reset'; afterBytes: number; delayMs?: number }
  | { kind: 'corrupt'; atByte: number }
  | { kind: 'stall'; afterBytes: number }
  | { kind: 'redirect'; to: string; status?: number }
  /** Forward, but serve the response with this Content-Type. */
  | { kind: 'content-type'; value: string }

export interface FaultRule {
  /** Which requests: a predicate on method and path (query included). */
  match: (method: string, path: string) => boolean
  fault: Fault
  /** How many matching requests get the fault (default 1). */
  times?: number
}

export interface RecordedRequest {
  method: string
  path: string
  range?: string
  authorization?: string
  /** What the proxy did: 'forwarded' or the fault kind. */
  outcome: string
  /** Bytes of response body sent to the client. */
  bytes: number
  at: number
}

export interface FaultProxy {
  /** host:port, to use as the registry in a reference. */
  readonly address: string
  readonly origin: string
  readonly requests: RecordedRequest[]
  addRule(rule: FaultRule): void
  clearRules(): void
  reset(): void
  stop(): Promise<void>
}

export const isBlob = (method: string, p: string): boolean => method === 'GET' && /\/blobs\/sha256:/.test(p)
export const isBlobDigest =
  (digest: string) =>
  (method: string, p: string): boolean =>
    method === 'GET' && p.includes(`/blobs/${digest}`)
export const isManifest = (method: string, p: string): boolean => /\/manifests\//.test(p)

/**
 * `upstream` is host:port of the registry. `upstreamAuthorization`, when given, is sent upstream
 * in place of whatever the client sent (a stand-in for blob storage that authorizes by signed
 * URL rather than by the client's credentials).
 */
export async function startFaultProxy(upstream: string, opts: { upstreamAuthorization?: string } = {}): Promise<FaultProxy> {
  const [upHost, upPortStr] = upstream.split(':') as [string, string]
  const upPort = Number(upPortStr)
  const rules: Array<FaultRule & { left: number }> = []
  const requests: RecordedRequest[] = []
  const sockets = new Set<Socket>()

  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET'
    const p = req.url ?? '/'
    const rec: RecordedRequest = {
      method,
      path: p,
      ...(req.headers.range === undefined ? {} : { range: req.headers.range }),
      ...(req.headers.authorization === undefined ? {} : { authorization: req.headers.authorization }),
      outcome: 'forwarded',
      bytes: 0,
      at: Date.now(),
    }
    requests.push(rec)
    const rule = rules.find((r) => r.left > 0 && r.match(method, p))
    if (rule !== undefined) rule.left--
    const fault = rule?.fault
    if (fault !== undefined) rec.outcome = fault.kind
    if (fault?.kind === 'status') {
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      if (fault.retryAfter !== undefined) headers['retry-after'] = fault.retryAfter
      res.writeHead(fault.status, headers).end(JSON.stringify({ errors: [{ code: 'INJECTED', message: `injected ${fault.status}` }] }))
      req.resume()
      return
    }
    if (fault?.kind === 'redirect') {
      res.writeHead(fault.status ?? 307, { location: `${fault.to}${p}` }).end()
      req.resume()
      return
    }
    const headers = { ...req.headers, host: upstream }
    if (opts.upstreamAuthorization !== undefined) headers.authorization = opts.upstreamAuthorization
    const up = http.request({ host: upHost, port: upPort, method, path: p, headers }, (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, fault?.kind === 'content-type' ? { ...upRes.headers, 'content-type': fault.value } : upRes.headers)
      let sent = 0
      upRes.on('data', (chunk: Buffer) => {
        let b = chunk
        if (fault?.kind === 'reset' || fault?.kind === 'stall') {
          const room = fault.afterBytes - sent
          if (room <= 0) return
          if (b.length >= room) {
            const head = b.subarray(0, room)
            sent += head.length
            rec.bytes = sent
            res.write(head, () => {
              if (fault.kind === 'reset') {
                upRes.destroy()
                // An RST, not a clean FIN: what a dropped connection looks like to the client.
                setTimeout(() => res.socket?.resetAndDestroy(), fault.delayMs ?? 200)
              }
              // 'stall': keep the connection open and send nothing more.
            })
            return
          }
        }
        if (fault?.kind === 'corrupt' && sent <= fault.atByte && fault.atByte < sent + b.length) {
          b = Buffer.from(b)
          const i = fault.atByte - sent
          b[i] = (b[i] as number) ^ 0xff
        }
        sent += b.length
        rec.bytes = sent
        res.write(b)
      })
      upRes.on('end', () => {
        if (fault?.kind !== 'reset' && fault?.kind !== 'stall') res.end()
      })
    })
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  server.on('connection', (s: Socket) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const addr = server.address()
  const port = typeof addr === 'object' && addr !== null ? addr.port : 0
  return {
    address: `127.0.0.1:${port}`,
    origin: `http://127.0.0.1:${port}`,
    requests,
    addRule: (rule) => rules.push({ ...rule, left: rule.times ?? 1 }),
    clearRules: () => {
      rules.length = 0
    },
    reset: () => {
      rules.length = 0
      requests.length = 0
    },
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}
