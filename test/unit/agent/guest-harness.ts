/**
 * Shared by the guest tests: build bale-init with `make -C guest` (as `npm run build:guest`
 * does), run it on this host, and talk to it over raw frames. Not a test file itself.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { promises as fs } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { FrameDecoder, encodeFrame, type Frame } from '../../../src/runtime/agent/protocol.js'

const execFileP = promisify(execFile)

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
export const GUEST_DIR = path.join(REPO, 'guest')
/** The binary `make -C guest` builds (what bundles carry). */
export const GUEST_BUILT = path.join(GUEST_DIR, 'out', 'bale-init')
/**
 * The binary the agent tests run: the built one, or another build of the same sources named by
 * BALE_GUEST_BIN (`make -C guest asan` gives one with AddressSanitizer and UBSan).
 */
export const GUEST_BIN = process.env.BALE_GUEST_BIN ? path.resolve(process.env.BALE_GUEST_BIN) : GUEST_BUILT

/** Build the binary (make is incremental, and its output is renamed into place atomically). */
export async function buildGuest(): Promise<string> {
  await execFileP('make', ['-C', GUEST_DIR, '--no-print-directory', '-s'], { timeout: 120_000 })
  await fs.access(GUEST_BIN)
  return GUEST_BIN
}

/** The version constant as written in the C source, for comparison with what the binary says. */
export async function sourceVersion(): Promise<string> {
  const src = await fs.readFile(path.join(GUEST_DIR, 'src', 'common.h'), 'utf8')
  const m = /#define BALE_AGENT_VERSION "([^"]+)"/.exec(src)
  if (!m?.[1]) throw new Error('BALE_AGENT_VERSION not found in guest/src/common.h')
  return m[1]
}

export async function tempDir(prefix: string): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), `bale-${prefix}-`))
}

export interface Running {
  proc: ChildProcess
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  kill(): Promise<void>
}

export function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Running {
  const proc = spawn(cmd, args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout?.on('data', (b: Buffer) => (out += b.toString('utf8')))
  proc.stderr?.on('data', (b: Buffer) => (out += b.toString('utf8')))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.on('close', (code, signal) => resolve({ code, signal }))
  })
  return {
    proc,
    output: () => out,
    exited,
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
      await exited
    },
  }
}

/** bale-init in agent-only host mode, serving `socket`. Resolves once the socket exists. */
export async function startAgent(socket: string, extra: string[] = []): Promise<Running> {
  const r = run(GUEST_BIN, ['--agent-only', '--no-system', '--no-poweroff', '--agent-listen', socket, ...extra])
  await waitForPath(socket, 5000, r)
  return r
}

export async function waitForPath(p: string, timeoutMs: number, r?: Running): Promise<void> {
  const until = Date.now() + timeoutMs
  for (;;) {
    try {
      await fs.stat(p)
      return
    } catch {
      if (Date.now() > until) throw new Error(`${p} did not appear within ${timeoutMs} ms; output: ${r?.output() ?? ''}`)
      await new Promise((res) => setTimeout(res, 10))
    }
  }
}

/** A client that speaks raw frames, for tests of what the typed client never sends. */
export class RawConn {
  private decoder = new FrameDecoder(false)
  private frames: Frame[] = []
  private waiters: Array<() => void> = []

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (b: Buffer) => {
      this.frames.push(...this.decoder.push(b))
      for (const w of this.waiters.splice(0)) w()
    })
  }

  static async open(p: string): Promise<RawConn> {
    const s = net.createConnection(p)
    await once(s, 'connect')
    return new RawConn(s)
  }

  send(type: number, id: number, payload: Buffer | string = Buffer.alloc(0)): void {
    this.socket.write(encodeFrame(type, id, payload))
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes)
  }

  /** The next frame matching `pred` (earlier non-matching frames are kept for later calls). */
  async next(pred: (f: Frame) => boolean = () => true, timeoutMs = 5000): Promise<Frame> {
    const until = Date.now() + timeoutMs
    for (;;) {
      const i = this.frames.findIndex(pred)
      if (i >= 0) return this.frames.splice(i, 1)[0] as Frame
      const left = until - Date.now()
      if (left <= 0) throw new Error(`no matching frame within ${timeoutMs} ms; have ${JSON.stringify(this.frames.map((f) => [f.type, f.id, f.payload.toString()]))}`)
      await new Promise<void>((res) => {
        const t = setTimeout(res, left)
        this.waiters.push(() => {
          clearTimeout(t)
          res()
        })
      })
    }
  }

  close(): void {
    this.socket.destroy()
  }
}

/** The uid and gid of a user in this host's /etc/passwd (tests compare, never hard-code). */
export async function hostUser(name: string): Promise<{ uid: number; gid: number }> {
  const passwd = await fs.readFile('/etc/passwd', 'utf8')
  const line = passwd.split('\n').find((l) => l.startsWith(`${name}:`))
  if (!line) throw new Error(`no ${name} in /etc/passwd`)
  const f = line.split(':')
  return { uid: Number(f[2]), gid: Number(f[3]) }
}

/** Collect a readable stream into a Buffer. */
export async function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of stream) chunks.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer))
  return Buffer.concat(chunks)
}
