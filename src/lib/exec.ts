import { spawn, type SpawnOptions } from 'node:child_process'
import { BaleError } from './errors.js'

export interface RunResult {
  stdout: string
  stderr: string
  code: number
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv
  cwd?: string
  /** Data written to the child's stdin (then closed). */
  input?: string | Buffer
  /** Exit codes treated as success (default [0]). */
  okCodes?: number[]
  signal?: AbortSignal
}

/**
 * Where e2fsprogs lives: mkfs.ext4, debugfs, e2fsck and filefrag are in /usr/sbin (/sbin), which
 * Debian leaves off an ordinary user's PATH (/usr/local/bin:/usr/bin:/bin), and make-bundle is
 * meant to run as an ordinary user. Appended, so a directory the user put first still wins.
 */
const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin']
/** What a POSIX shell searches when PATH is unset. */
const DEFAULT_PATH = '/usr/local/bin:/usr/bin:/bin'

/** `pathVar` with the sbin directories appended where missing: the PATH external tools are found on. */
export function toolPath(pathVar: string | undefined): string {
  const dirs = (pathVar ?? DEFAULT_PATH).split(':').filter((d) => d !== '')
  for (const d of SBIN_DIRS) if (!dirs.includes(d)) dirs.push(d)
  return dirs.join(':')
}

/**
 * Run an external tool (mkfs.ext4, debugfs, e2fsck, qemu-img, …) and capture its output.
 * LC_ALL=C so that messages we parse are in English. A non-zero exit becomes E_TOOL with the
 * tool's last stderr line, which is what a user needs to see.
 */
export async function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const spawnOpts: SpawnOptions = {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env, PATH: toolPath(opts.env?.PATH ?? process.env.PATH), LC_ALL: 'C' },
    stdio: ['pipe', 'pipe', 'pipe'],
    signal: opts.signal,
  }
  return new Promise<RunResult>((resolve, reject) => {
    const child = spawn(cmd, args, spawnOpts)
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout?.on('data', (b: Buffer) => out.push(b))
    child.stderr?.on('data', (b: Buffer) => err.push(b))
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') reject(new BaleError('E_TOOL', `${cmd}: not found on PATH (run the README's set-up command)`, { subject: cmd }))
      else reject(new BaleError('E_TOOL', `${cmd}: ${e.message}`, { subject: cmd, cause: e }))
    })
    child.on('close', (code, sig) => {
      const res = { stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), code: code ?? 128 }
      if (sig) return reject(new BaleError('E_TOOL', `${cmd} killed by ${sig}`, { subject: cmd }))
      if (!(opts.okCodes ?? [0]).includes(res.code)) {
        const last = lastLine(res.stderr) || lastLine(res.stdout) || `exit status ${res.code}`
        return reject(new BaleError('E_TOOL', `${cmd} failed: ${last}`, { subject: cmd }))
      }
      resolve(res)
    })
    if (opts.input !== undefined) child.stdin?.end(opts.input)
    else child.stdin?.end()
  })
}

function lastLine(s: string): string {
  const lines = s.split('\n').map((l) => l.trim()).filter(Boolean)
  return lines[lines.length - 1] ?? ''
}
