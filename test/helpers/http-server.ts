/**
 * A static file server on 127.0.0.1 for tests: serves a directory (a published catalog) with
 * GET/HEAD, `Range: bytes=N-` / `bytes=N-M` (206, Content-Range; 416 past the end), and records
 * every request so tests can assert what the client asked for (e.g. that a resumed download sent
 * a Range header, or that a cached fetch sent nothing). Faults are opt-in per path:
 * `cutAfter` closes the connection after sending that many body bytes (a dropped download),
 * `ignoreRange` answers 200 with the whole file to a Range request (as some servers do).
 */
import { createReadStream, promises as fs } from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import path from 'node:path'

export interface RequestRecord {
  method: string
  path: string
  range?: string
  status: number
}

export interface Fault {
  /** Close the socket after this many body bytes (once per fault, then serve normally). */
  cutAfter?: number
  /** How many requests the fault applies to (default 1). */
  times?: number
  /** Ignore Range and always answer 200 with the whole file. */
  ignoreRange?: boolean
}

export interface StaticServer {
  url: string
  port: number
  requests: RequestRecord[]
  faults: Map<string, Fault>
  close(): Promise<void>
}

export async function serveDirectory(root: string): Promise<StaticServer> {
  const requests: RequestRecord[] = []
  const faults = new Map<string, Fault>()
  const server = http.createServer((req, res) => {
    void handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500)
      res.end()
    })
  })

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const urlPath = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)
    const record: RequestRecord = { method: req.method ?? '', path: urlPath, status: 0, ...(req.headers.range === undefined ? {} : { range: req.headers.range }) }
    requests.push(record)
    const reply = (status: number, headers: http.OutgoingHttpHeaders = {}): void => {
      record.status = status
      res.writeHead(status, headers)
    }
    const file = path.join(root, path.normalize(urlPath))
    if (!file.startsWith(path.resolve(root) + path.sep) || (req.method !== 'GET' && req.method !== 'HEAD')) {
      reply(404)
      res.end()
      return
    }
    let size: number
    try {
      const st = await fs.stat(file)
      if (!st.isFile()) throw new Error('not a file')
      size = st.size
    } catch {
      reply(404)
      res.end()
      return
    }
    const fault = faults.get(urlPath)
    const active = fault !== undefined && (fault.times ?? 1) > 0
    if (active && fault !== undefined) fault.times = (fault.times ?? 1) - 1

    let start = 0
    let end = size - 1
    let status = 200
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '')
    if (m !== null && !(active && fault?.ignoreRange)) {
      start = Number(m[1])
      if (m[2] !== '') end = Math.min(end, Number(m[2]))
      if (start >= size) {
        reply(416, { 'content-range': `bytes */${size}` })
        res.end()
        return
      }
      status = 206
    }
    const length = end - start + 1
    reply(status, {
      'content-length': String(length),
      'content-type': 'application/octet-stream',
      'accept-ranges': 'bytes',
      ...(status === 206 ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
    })
    if (req.method === 'HEAD' || length === 0) {
      res.end()
      return
    }
    const stream = createReadStream(file, { start, end })
    const cut = active ? fault?.cutAfter : undefined
    if (cut === undefined) {
      stream.pipe(res)
      return
    }
    let sent = 0
    stream.on('data', (data: string | Buffer) => {
      const chunk = Buffer.isBuffer(data) ? data : Buffer.from(data)
      if (sent >= cut) return
      const part = chunk.subarray(0, Math.max(0, cut - sent))
      sent += part.length
      res.write(part)
      if (sent >= cut) {
        stream.destroy()
        // Let the written bytes reach the client, then drop the connection mid-body.
        setTimeout(() => res.socket?.destroy(), 50)
      }
    })
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    faults,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
