/**
 * Boot time: `bale runtime boot --detach` until the guest agent answers, against a bare QEMU
 * boot of the same kernel (same microvm options, CPU, memory and command line basics) whose
 * initramfs powers off at once. Both are timed from QEMU's spawn: bale's `helloMs` (its --json
 * result) against the bare QEMU's spawn-to-exit. The whole `bale runtime boot --detach` command
 * (Node + oclif start-up, bundle hash, overlay, record, spawn, hello) is reported too. Runs
 * alternate, median of N. Target: bale/bare <= 1.2x. Not a test.
 *
 *   npm run build && npx tsc --outDir .cache/bench --module nodenext --moduleResolution nodenext \
 *     --target es2022 --skipLibCheck --strict bench/boot.ts src/runtime/kernel/lz4js.d.ts &&
 *     node .cache/bench/bench/boot.js [RUNS]
 *
 * Uses KVM where `--accel auto` would (usable /dev/kvm and vmx/svm), TCG elsewhere: the
 * accelerator is printed with the numbers, which only compare within one accelerator.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { promises as fs, readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { buildInitramfs, resolveKernel } from '../src/runtime/kernel/index.js'
import { chooseAccel, tscKhzFromCpuinfo } from '../src/runtime/vmm/accel.js'

/** Run from the repository root (wherever the compiled file lives). */
const ROOT = process.cwd()
const BALE = path.join(ROOT, 'bin', 'run.js')

/** The smallest /init that powers off: what a boot costs before any guest work. */
const POWEROFF_C = `#include <sys/reboot.h>
#include <unistd.h>
int main(void) { sync(); reboot(RB_POWER_OFF); return 0; }
`

/**
 * A long-running entrypoint, so the VM is up when the agent answers. Named explicitly, so the
 * benchmark does not depend on what the demo fixture's config says.
 */
const HTTPD = ['--entrypoint', '/usr/sbin/httpd', '--', '-f', '-p', '8080', '-h', '/www']

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

function bale(args: string[], env: NodeJS.ProcessEnv): { ms: number; stdout: string } {
  const t0 = process.hrtime.bigint()
  const r = spawnSync(process.execPath, [BALE, ...args], { env: { ...process.env, CI: 'true', ...env }, encoding: 'utf8', cwd: ROOT })
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  if (r.status !== 0) throw new Error(`bale ${args.join(' ')} failed (${r.status}): ${`${r.stdout}\n${r.stderr}`.trim().split('\n').slice(-3).join(' | ')}`)
  return { ms, stdout: r.stdout }
}

/** Spawn QEMU and time it until it exits (the guest powered off). */
function bareBoot(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint()
    const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let err = ''
    child.stderr.on('data', (b: Buffer) => (err += b.toString()))
    // A boot that hangs (it should not) must not hang the benchmark.
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
    child.on('error', reject)
    child.on('exit', (code) => {
      clearTimeout(timer)
      if (code !== 0) reject(new Error(`bare QEMU exited ${code}: ${err.trim()}`))
      else resolve(Number(process.hrtime.bigint() - t0) / 1e6)
    })
  })
}

async function main(): Promise<void> {
  await fs.access(path.join(ROOT, 'dist', 'commands', 'runtime', 'boot.js')).catch(() => {
    throw new Error('run from the repository root after `npm run build` (dist/commands/runtime/boot.js is missing)')
  })
  const runs = Number(process.argv[2] ?? 5)
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-bench-boot-'))
  const env = { BALE_DATA_DIR: path.join(work, 'data') }
  try {
    const deb = execFileSync('bash', [path.join(ROOT, 'scripts', 'fetch-kernel.sh')], { encoding: 'utf8' }).trim()
    bale(['kernel', 'import', '--deb', deb, '--default', '--quiet'], env)
    const oci = path.join(work, 'demo-oci')
    execFileSync('bash', [path.join(ROOT, 'fixtures', 'demo', 'build.sh'), oci], { stdio: 'ignore' })
    const bundle = path.join(work, 'demo.tar.zst')
    bale(['make-bundle', '--oci-layout', `${oci}:latest`, '--out', bundle, '--name', 'demo', '--quiet'], env)

    const kernel = await resolveKernel('default', { dir: path.join(env.BALE_DATA_DIR, 'kernels') })
    await fs.writeFile(path.join(work, 'poweroff.c'), POWEROFF_C)
    execFileSync('musl-gcc', ['-static', '-Os', '-s', '-o', path.join(work, 'poweroff'), path.join(work, 'poweroff.c')])
    const initrd = await buildInitramfs({ init: path.join(work, 'poweroff'), output: path.join(work, 'poweroff.cpio.gz') })
    const { accel } = await chooseAccel('auto')
    const khz = tscKhzFromCpuinfo(readFileSync('/proc/cpuinfo', 'utf8'))
    const bareArgs = [
      '-M', 'microvm,x-option-roms=off,pit=off,pic=off,rtc=on,isa-serial=on',
      '-accel', accel, '-cpu', accel === 'kvm' ? 'host' : 'max', '-smp', '1', '-m', '512M',
      '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
      '-kernel', kernel.vmlinux, '-initrd', initrd.path,
      // The runtime's kernel-wide switches (not its root= and bale.* ones): the baseline is the same kernel start.
      '-append', `console=ttyS0 quiet panic=-1 cryptomgr.notests${accel === 'tcg' && khz ? ` tsc_early_khz=${khz}` : ''}`,
      '-serial', `file:${path.join(work, 'bare-console.log')}`,
    ]

    // One boot of each first: the bundle's first boot extracts its rootfs, and page caches warm.
    bale(['runtime', 'boot', bundle, '--detach', '--name', 'warmup', '--accel', accel, ...HTTPD], env)
    bale(['runtime', 'rm', '--force', 'warmup'], env)
    await bareBoot(bareArgs)

    const hello: number[] = []
    const cli: number[] = []
    const bare: number[] = []
    for (let i = 0; i < runs; i++) {
      const r = bale(['runtime', 'boot', bundle, '--detach', '--json', '--name', `bench-${i}`, '--accel', accel, ...HTTPD], env)
      const res = JSON.parse(r.stdout) as { helloMs: number | null }
      if (res.helloMs === null) throw new Error(`bench-${i}: the guest stopped before its agent answered`)
      hello.push(res.helloMs)
      cli.push(r.ms)
      bale(['runtime', 'rm', '--force', `bench-${i}`], env)
      bare.push(await bareBoot(bareArgs))
    }
    const h = median(hello)
    const c = median(cli)
    const b = median(bare)
    const fmt = (ms: number): string => `${(ms / 1000).toFixed(2)} s`
    console.log(`accelerator: ${accel}, ${runs} runs each, medians (load average ${os.loadavg()[0]?.toFixed(1)})`)
    console.log(`bare QEMU, same kernel, initramfs that powers off:  ${fmt(b)}   [${bare.map(fmt).join(', ')}]`)
    console.log(`bale: QEMU spawn -> agent hello:                   ${fmt(h)}   [${hello.map(fmt).join(', ')}]   ratio ${(h / b).toFixed(2)}x`)
    console.log(`bale runtime boot --detach, whole command:         ${fmt(c)}   [${cli.map(fmt).join(', ')}]   ratio ${(c / b).toFixed(2)}x`)
  } finally {
    await fs.rm(work, { recursive: true, force: true })
  }
}

await main()
