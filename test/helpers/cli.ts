/**
 * Run the real `bale` CLI (bin/run.js over dist/) from integration tests, optionally as an
 * unprivileged user: CI runs as root, which would hide permission bugs, so builds are also run
 * as uid/gid 65534 with no supplementary groups.
 */
import { execFileSync, spawn } from 'node:child_process'
import { accessSync, constants, existsSync, readdirSync, statSync } from 'node:fs'
import path from 'node:path'

export const ROOT = path.resolve(import.meta.dirname, '..', '..')
export const NOBODY = 65534

export interface CliResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** PATH of an ordinary user on Debian (/etc/profile), without the games directories. */
export const USER_PATH = '/usr/local/bin:/usr/bin:/bin'

export interface CliOptions {
  input?: Buffer | string
  env?: NodeJS.ProcessEnv
  cwd?: string
  /** Run as uid/gid 65534 (setpriv), the way an ordinary CI user would. */
  unprivileged?: boolean
  /** Called with the child once spawned (e.g. to send it a signal). */
  onSpawn?: (pid: number) => void
}

function newestMtime(dir: string): number {
  let max = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    max = Math.max(max, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs)
  }
  return max
}

/** Build dist/ (tsc) when any source is newer, and the guest binary when missing. */
export function ensureBuilt(): void {
  const marker = path.join(ROOT, 'dist', 'commands')
  if (!existsSync(marker) || newestMtime(path.join(ROOT, 'src')) > statSync(marker).mtimeMs) {
    execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: 'inherit' })
  }
  execFileSync('make', ['-s', '-C', path.join(ROOT, 'guest')], { stdio: 'inherit' })
}

/** Whether uid 65534 can read the checkout (it cannot under a 0700 home, e.g. /root). */
export function checkoutReadableByNobody(): boolean {
  try {
    execFileSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'test', '-r', path.join(ROOT, 'bin', 'run.js')])
    return true
  } catch {
    return false
  }
}

export function bale(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const node = process.execPath
  accessSync(node, constants.X_OK)
  const argv = opts.unprivileged
    ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', node, path.join(ROOT, 'bin', 'run.js'), ...args]
    : [node, path.join(ROOT, 'bin', 'run.js'), ...args]
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: opts.cwd ?? ROOT,
      // An ordinary Debian user's PATH has no /usr/sbin, where e2fsprogs lives: run with that one.
      env: { ...process.env, CI: 'true', ...(opts.unprivileged ? { PATH: USER_PATH } : {}), ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => err.push(b))
    child.on('error', reject)
    child.on('close', (code, signal) =>
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
    )
    child.stdin.on('error', () => undefined) // the CLI may exit before reading all of stdin
    if (opts.input !== undefined) child.stdin.end(opts.input)
    else child.stdin.end()
    if (child.pid !== undefined) opts.onSpawn?.(child.pid)
  })
}
