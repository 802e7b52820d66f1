// `bale runtime` end to end: the real CLI, real QEMU microvm under TCG, the real Debian cloud
// kernel (scripts/fetch-kernel.sh + `bale kernel import`), the guest init built from guest/, and
// the demo bundle made by `bale make-bundle` from fixtures/demo. Everything lives under a temp
// BALE_DATA_DIR; every VM started here is stopped, and the suite checks that no QEMU is left.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { copyFileSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync, closeSync, statSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { commitBundle } from '../../src/catalog/store.js'
import { bale, ensureBuilt, ROOT, type CliResult } from '../helpers/cli.js'

const work = mkdtempSync(path.join(os.tmpdir(), 'bale-runtime-it-'))
const env = { BALE_DATA_DIR: path.join(work, 'data') }
const bundle = path.join(work, 'demo.tar.zst')
/** VM ids seen by the suite: none may have a QEMU left at the end. */
const ids = new Set<string>()

/**
 * The demo image's config names /bin/httpd, but Debian's busybox-static installs the applet as
 * /usr/sbin/httpd; naming it here keeps these tests about the runtime (and exercises
 * --entrypoint and -- CMD on the way).
 */
const HTTPD = ['--entrypoint', '/usr/sbin/httpd', '--', '-f', '-v', '-p', '8080', '-h', '/www']

function run(args: string[], input?: string): Promise<CliResult> {
  return bale(args, { env, input })
}

async function ok(args: string[], input?: string): Promise<CliResult> {
  const r = await run(args, input)
  if (r.code !== 0) throw new Error(`bale ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  return r
}

interface LsRow {
  name: string
  id: string
  status: string
  pid: number | null
  ports: string[]
  exitCode: number | null
}

async function ls(): Promise<LsRow[]> {
  return JSON.parse((await ok(['runtime', 'ls', '--json'])).stdout) as LsRow[]
}

async function vm(name: string): Promise<LsRow | undefined> {
  const row = (await ls()).find((r) => r.name === name)
  if (row) ids.add(row.id)
  return row
}

/** QEMU processes whose command line carries this VM id (pgrep -f, as an operator would look). */
function qemuPids(id: string): number[] {
  const r = spawnSync('pgrep', ['-f', `bale-${id}`], { encoding: 'utf8' })
  return r.stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map(Number)
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port
      srv.close(() => resolve(port))
    })
  })
}

async function bootDetached(name: string, extra: string[] = []): Promise<LsRow> {
  const r = await ok(['runtime', 'boot', bundle, '--detach', '--name', name, ...extra])
  expect(r.stdout.trim()).toBe(name)
  const row = await vm(name)
  if (!row) throw new Error(`${name} not listed after boot`)
  return row
}

beforeAll(async () => {
  ensureBuilt()
  const deb = execFileSync('bash', [path.join(ROOT, 'scripts', 'fetch-kernel.sh')], { encoding: 'utf8' }).trim()
  await ok(['kernel', 'import', '--deb', deb, '--default', '--quiet'])
  const oci = path.join(work, 'demo-oci')
  execFileSync('bash', [path.join(ROOT, 'fixtures', 'demo', 'build.sh'), oci], { stdio: 'ignore' })
  await ok(['make-bundle', '--oci-layout', `${oci}:latest`, '--out', bundle, '--name', 'demo', '--quiet'])
}, 600_000)

afterAll(async () => {
  // Whatever a failed test left running is stopped here, then the suite's last word: no QEMU.
  for (const row of await ls().catch(() => [])) {
    if (row.status !== 'stopped') await run(['runtime', 'rm', '--force', row.name])
  }
  const left = [...ids].flatMap(qemuPids)
  rmSync(work, { recursive: true, force: true })
  expect(left).toEqual([])
})

describe('bale runtime (TCG, real QEMU and kernel)', () => {
  describe('a detached VM of the demo bundle', () => {
    let port: number
    let web: LsRow

    beforeAll(async () => {
      port = await freePort()
      web = await bootDetached('web', ['--publish', `${port}:8080`, ...HTTPD])
    })

    it('is listed as running with its pid and port, and that pid is its QEMU', async () => {
      expect(web).toMatchObject({ status: 'running', ports: [`127.0.0.1:${port}->8080/tcp`] })
      expect(qemuPids(web.id)).toEqual([web.pid])
    })

    it('serves the published port to the host (busybox httpd on 8080)', async () => {
      const res = await fetch(`http://127.0.0.1:${port}/`)
      expect(res.status).toBe(200)
      expect(await res.text()).toContain('hello from a bale microVM')
    })

    it('exec echo: streamed stdout, exit code 0', async () => {
      const r = await run(['runtime', 'exec', 'web', '--', 'echo', 'hello', 'from', 'exec'])
      expect(r).toMatchObject({ code: 0, stdout: 'hello from exec\n' })
    })

    it('exec -i: the command reads our stdin (1 MiB through the agent\'s flow control)', async () => {
      expect(await run(['runtime', 'exec', '-i', 'web', '--', 'tr', 'a-z', 'A-Z'], 'hello stdin\n')).toMatchObject({ code: 0, stdout: 'HELLO STDIN\n' })
      const big = 'x'.repeat(1024 * 1024)
      expect(await run(['runtime', 'exec', '-i', 'web', '--', 'wc', '-c'], big)).toMatchObject({ code: 0, stdout: expect.stringMatching(/^\s*1048576\n$/) })
    })

    it('exec exit codes are the command\'s: 0, 3, and 127 for a missing program', async () => {
      expect((await run(['runtime', 'exec', 'web', '--', 'sh', '-c', 'exit 0'])).code).toBe(0)
      expect((await run(['runtime', 'exec', 'web', '--', 'sh', '-c', 'echo err >&2; exit 3'])).code).toBe(3)
      const missing = await run(['runtime', 'exec', 'web', '--', '/no/such/program'])
      expect(missing.code).toBe(127)
      expect(missing.stderr).toContain('/no/such/program')
    })

    it('execs run side by side, each on its own agent channel', async () => {
      const order: string[] = []
      const slow = run(['runtime', 'exec', 'web', '--', 'sh', '-c', 'sleep 4; echo slow']).then((r) => {
        order.push('slow')
        return r
      })
      await new Promise((r) => setTimeout(r, 500))
      const fast = await run(['runtime', 'exec', 'web', '--', 'echo', 'fast'])
      order.push('fast')
      expect(fast).toMatchObject({ code: 0, stdout: 'fast\n' })
      expect(await slow).toMatchObject({ code: 0, stdout: 'slow\n' })
      expect(order).toEqual(['fast', 'slow'])
    })

    it('the image config\'s env and workdir apply to exec; -e overrides one variable', async () => {
      const r = await run(['runtime', 'exec', 'web', '--', 'sh', '-c', 'echo "$GREETING"; pwd; echo "$PATH"'])
      expect(r.stdout).toBe('hello from bale\n/www\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n')
      const o = await run(['runtime', 'exec', '-e', 'GREETING=overridden', 'web', '--', 'sh', '-c', 'echo "$GREETING"'])
      expect(o.stdout).toBe('overridden\n')
    })

    it('logs show the entrypoint\'s output (httpd\'s access log) and no kernel lines', async () => {
      const r = await ok(['runtime', 'logs', 'web'])
      expect(r.stdout).toMatch(/response:200/)
      expect(r.stdout).not.toMatch(/^\[ *\d+\.\d+\]/m)
    })

    it('rm refuses a running VM without --force', async () => {
      const r = await run(['runtime', 'rm', 'web'])
      expect(r.code).toBe(10) // E_STATE
      expect(r.stderr).toMatch(/VM web is running: remove needs it stopped/)
      expect((await vm('web'))?.status).toBe('running')
    })

    it('stop ends it through the agent; rm then leaves no QEMU and no state', async () => {
      const s = JSON.parse((await ok(['runtime', 'stop', 'web', '--json'])).stdout) as { stoppedBy: string; exitCode: number | null }
      expect(s.stoppedBy).toBe('agent')
      expect(s.exitCode).toBe(143) // httpd ended by the SIGTERM of the shutdown
      expect(qemuPids(web.id)).toEqual([])
      expect(await vm('web')).toMatchObject({ status: 'stopped', pid: null })
      await ok(['runtime', 'rm', 'web'])
      expect(await vm('web')).toBeUndefined()
      expect(existsSync(path.join(env.BALE_DATA_DIR, 'vms', 'web'))).toBe(false)
    })
  })

  it('foreground: streams the entrypoint\'s output and exits with its exit code; -e and -- CMD reach it', async () => {
    const r = await run(['runtime', 'boot', bundle, '--name', 'fg', '-e', 'EXTRA=yes', '--entrypoint', '/bin/sh', '--', '-c', 'echo "$GREETING/$EXTRA"; pwd; exit 7'])
    expect(r.code).toBe(7)
    expect(r.stdout).toBe('hello from bale/yes\n/www\n')
    const row = await vm('fg')
    expect(row).toMatchObject({ status: 'stopped', exitCode: 7 })
    expect(qemuPids(row!.id)).toEqual([])
    await ok(['runtime', 'rm', 'fg'])
  })

  it('foreground Ctrl-C: the first is forwarded to the entrypoint, the second stops the VM', async () => {
    const record = path.join(env.BALE_DATA_DIR, 'vms', 'ctrlc', 'vm.json')
    const script = 'trap "echo got-INT" INT; echo ready; while :; do sleep 1; done'
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'runtime', 'boot', bundle, '--name', 'ctrlc', '--entrypoint', '/bin/sh', '--', '-c', script], {
      env: { ...process.env, CI: 'true', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    let err = ''
    let exited: number | null | undefined
    child.stdout.on('data', (b: Buffer) => (out += b.toString()))
    child.stderr.on('data', (b: Buffer) => (err += b.toString()))
    const closed = new Promise<number | null>((resolve) =>
      child.on('close', (code) => {
        exited = code
        resolve(code)
      }),
    )
    const consoleLog = path.join(env.BALE_DATA_DIR, 'vms', 'ctrlc', 'console.log')
    const until = async (what: string, cond: () => boolean): Promise<void> => {
      for (let i = 0; !cond(); i++) {
        if (i > 1200 || exited !== undefined) {
          // Everything needed to tell a lost line from a guest that never got there.
          const rec = existsSync(record) ? readFileSync(record, 'utf8') : '(no record)'
          const log = existsSync(consoleLog) ? JSON.stringify(readFileSync(consoleLog, 'utf8').slice(-4000)) : '(no console log)'
          throw new Error(`gave up waiting for ${what}; bale exit ${String(exited)}\nstdout: ${JSON.stringify(out)}\nstderr: ${err}\nrecord: ${rec}\nconsole: ${log}`)
        }
        await new Promise((r) => setTimeout(r, 100))
      }
    }
    await until('the agent hello', () => existsSync(record) && readFileSync(record, 'utf8').includes('"status": "running"') && out.includes('ready'))
    child.kill('SIGINT')
    await until('the trap to run', () => out.includes('got-INT'))
    child.kill('SIGINT')
    expect(await closed).toBe(143) // the stop's SIGTERM ended the shell
    const row = await vm('ctrlc')
    expect(row).toMatchObject({ status: 'stopped', exitCode: 143 })
    expect(qemuPids(row!.id)).toEqual([])
    await ok(['runtime', 'rm', 'ctrlc'])
  })

  it('logs -f follows a detached VM until it stops', async () => {
    await bootDetached('follow', ['--entrypoint', '/bin/sh', '--', '-c', 'for i in 1 2 3; do echo "line $i"; sleep 1; done; exit 4'])
    const r = await ok(['runtime', 'logs', '-f', 'follow'])
    expect(r.stdout).toMatch(/line 1\nline 2\nline 3\nbale-init: exit status 4\n$/)
    expect(await vm('follow')).toMatchObject({ status: 'stopped', exitCode: 4 })
    await ok(['runtime', 'rm', 'follow'])
  })

  it('rm --force kills a running VM and removes it', async () => {
    const row = await bootDetached('forced', HTTPD)
    const r = JSON.parse((await ok(['runtime', 'rm', '--force', 'forced', '--json'])).stdout) as { killed: boolean }
    expect(r.killed).toBe(true)
    expect(qemuPids(row.id)).toEqual([])
    expect(await vm('forced')).toBeUndefined()
  })

  it('bale SIGKILLed mid-boot: the VM is still listed, and stop ends it', async () => {
    const record = path.join(env.BALE_DATA_DIR, 'vms', 'orphan', 'vm.json')
    let killed = false
    const res = await bale(['runtime', 'boot', bundle, '--detach', '--name', 'orphan', ...HTTPD], {
      env,
      onSpawn: (pid) => {
        // Kill bale as soon as its QEMU is recorded, long before the guest can answer.
        const poll = setInterval(() => {
          try {
            const rec = JSON.parse(readFileSync(record, 'utf8')) as { pid: number | null }
            if (rec.pid !== null) {
              clearInterval(poll)
              killed = true
              process.kill(pid, 'SIGKILL')
            }
          } catch {
            // not written yet
          }
        }, 5)
        setTimeout(() => clearInterval(poll), 60_000)
      },
    })
    expect(killed).toBe(true)
    expect(res.signal).toBe('SIGKILL')
    const row = await vm('orphan')
    expect(row?.status).toMatch(/^(starting|running)$/)
    expect(qemuPids(row!.id)).toEqual([row!.pid])
    await ok(['runtime', 'stop', 'orphan'])
    expect(qemuPids(row!.id)).toEqual([])
    expect((await vm('orphan'))?.status).toBe('stopped')
    await ok(['runtime', 'rm', 'orphan'])
  })

  it('boots an installed bundle by name with no network at all (unshare -n), then stops it', async () => {
    const m = JSON.parse((await ok(['bundle', 'inspect', bundle, '--json'])).stdout) as { name: string; version: string; kernel_ref: string; created: string; rootfs: { sha256: string } }
    const copy = path.join(work, 'to-install.tar.zst')
    copyFileSync(bundle, copy)
    const sha256 = createHash('sha256').update(readFileSync(copy)).digest('hex')
    const size = statSync(copy).size
    // What `bale install --from` ends with (tested with the catalog): the verified file committed to the store.
    // Recorded as a catalog install records it: a real version ('latest' is the OCI tag that follows
    // the newest) and the concrete kernel ref ('default' is only a local alias).
    const kernels = JSON.parse((await ok(['kernel', 'ls', '--json'])).stdout) as Array<{ ref: string; default: boolean }>
    const kernelRef = kernels.find((k) => k.default)?.ref as string
    await commitBundle(copy, { name: m.name, version: '1.0.0', size, sha256, integrity: `sha256-${Buffer.from(sha256, 'hex').toString('base64')}`, kernel_ref: kernelRef, created: m.created, origin: 'test' }, env)
    const boot = await new Promise<CliResult>((resolve) => {
      const c = spawn('unshare', ['-n', '--', process.execPath, path.join(ROOT, 'bin', 'run.js'), 'runtime', 'boot', 'demo', '--detach', '--name', 'byname', ...HTTPD], { cwd: ROOT, env: { ...process.env, CI: 'true', ...env } })
      let stdout = ''
      let stderr = ''
      c.stdout.on('data', (b: Buffer) => (stdout += b))
      c.stderr.on('data', (b: Buffer) => (stderr += b))
      c.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
    })
    expect(boot.code, boot.stderr).toBe(0)
    expect(boot.stdout.trim()).toBe('byname')
    const row = await vm('byname')
    expect(row).toMatchObject({ status: 'running' })
    expect(await run(['runtime', 'exec', 'byname', '--', 'cat', '/www/index.html'])).toMatchObject({ code: 0, stdout: expect.stringContaining('hello from a bale microVM') })
    await ok(['runtime', 'stop', 'byname'])
    await ok(['runtime', 'rm', 'byname'])
    expect(qemuPids(row!.id)).toEqual([])
    const missing = await run(['runtime', 'boot', 'nosuchbundle', '--detach'])
    expect(missing.code).toBe(6)
    expect(missing.stderr).toMatch(/nosuchbundle is not installed/)
  })

  it('a corrupt bundle is refused before QEMU starts', async () => {
    const bad = path.join(work, 'corrupt.tar.zst')
    copyFileSync(bundle, bad)
    // Flip bytes in the middle of the compressed rootfs: the manifest still reads fine.
    const size = statSync(bad).size
    const fd = openSync(bad, 'r+')
    writeSync(fd, Buffer.alloc(64, 0xa5), 0, 64, Math.floor(size / 2))
    closeSync(fd)
    const before = readdirSync(path.join(env.BALE_DATA_DIR, 'vms')).length
    // --accel tcg: no fallback warning, so stderr is the error alone.
    const r = await run(['runtime', 'boot', bad, '--detach', '--name', 'corrupt', '--accel', 'tcg'])
    expect(r.code === 3 || r.code === 4).toBe(true) // E_INPUT (bad frame/tar) or E_DIGEST (rootfs sha256)
    expect(r.stderr).toContain(bad)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(await vm('corrupt')).toBeUndefined()
    expect(readdirSync(path.join(env.BALE_DATA_DIR, 'vms'))).toHaveLength(before)
    expect(spawnSync('pgrep', ['-f', path.join(env.BALE_DATA_DIR, 'vms', 'corrupt')]).status).toBe(1)
  })

  it('10 boot/stop cycles leave 0 QEMU processes', async () => {
    const cycleIds: string[] = []
    for (let i = 0; i < 10; i++) {
      const row = await bootDetached(`cycle-${i}`, HTTPD)
      cycleIds.push(row.id)
      await ok(['runtime', 'stop', `cycle-${i}`, '--timeout', '2'])
      await ok(['runtime', 'rm', `cycle-${i}`])
    }
    expect(new Set(cycleIds).size).toBe(10)
    expect(cycleIds.flatMap(qemuPids)).toEqual([])
    expect((await ls()).filter((r) => r.name.startsWith('cycle-'))).toEqual([])
  }, 900_000)
})
