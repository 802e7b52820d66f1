// The real Debian cloud kernel, fetched by scripts/fetch-kernel.sh, imported, and booted under
// QEMU microvm with TCG: once with a busybox /init that loads the modules in modules.order, and
// once with the guest's own stage 1 (guest/out/bale-init, built with make -C guest) switching
// root into an ext4 disk.
import { execFileSync, spawn } from 'node:child_process'
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readPvhEntry } from '../../src/runtime/kernel/elf.js'
import { buildInitramfs, importKernel, listKernels, resolveKernel, type ImportKernelResult, type KernelStore } from '../../src/runtime/kernel/index.js'

const repo = path.resolve(import.meta.dirname, '..', '..')
const work = mkdtempSync(path.join(os.tmpdir(), 'bale-kernel-it-'))
const store: KernelStore = { dir: path.join(work, 'kernels') }
const BUSYBOX = '/bin/busybox'
const BALE_INIT = path.join(repo, 'guest', 'out', 'bale-init')
/** A TCG boot of this kernel takes ~2.5 s on an idle core; the CI machine's 2 cores are shared. */
const BOOT_TIMEOUT_MS = 120_000

let deb: string
let imported: ImportKernelResult
let initUsed: string

/** Files and modules.order extracted from an initramfs with the real cpio. */
function unpackInitramfs(file: string): { dir: string; names: string[] } {
  const dir = mkdtempSync(path.join(work, 'ird-'))
  const archive = zlib.gunzipSync(readFileSync(file))
  const names = execFileSync('cpio', ['-t', '--quiet'], { input: archive }).toString().trim().split('\n')
  execFileSync('cpio', ['-i', '-d', '--quiet', '--no-absolute-filenames'], { cwd: dir, input: archive })
  return { dir, names }
}

/**
 * The host's TSC rate for `tsc_early_khz=`. Under TCG the guest's TSC runs at the host's rate,
 * and the kernel's early calibration against the emulated PIT fails when the host is busy
 * ("tsc: Unable to calibrate against PIT"), after which this kernel hangs in early boot; giving
 * the rate skips that calibration.
 */
function tscKhz(): number | undefined {
  const m = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))
  return m ? Math.round(Number(m[1]) * 1000) : undefined
}

interface Boot {
  output: string
  code: number | null
  ms: number
}

/** Boot with microvm + TCG, console on the serial port; QEMU is always killed by the deadline. */
async function boot(kernel: string, initrd: string, append: string, extra: string[] = []): Promise<Boot> {
  const khz = tscKhz()
  const args = [
    '-M', 'microvm,x-option-roms=off,rtc=on',
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-accel', 'tcg', '-cpu', 'max', '-m', '256',
    '-kernel', kernel, '-initrd', initrd,
    '-append', `console=ttyS0 panic=-1 ${khz ? `tsc_early_khz=${khz} ` : ''}${append}`,
    '-serial', 'stdio',
    ...extra,
  ]
  const started = Date.now()
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (b: Buffer) => (output += b.toString('latin1')))
  child.stderr.on('data', (b: Buffer) => (output += b.toString('latin1')))
  const timer = setTimeout(() => child.kill('SIGKILL'), BOOT_TIMEOUT_MS)
  try {
    const code = await new Promise<number | null>((resolve, reject) => {
      child.on('error', reject)
      child.on('close', (c) => resolve(c))
    })
    return { output, code, ms: Date.now() - started }
  } finally {
    clearTimeout(timer)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
}

/** The virtio devices a bale VM has, so that every module has hardware to bind. */
function devices(disk: string): string[] {
  return [
    '-drive', `id=root,file=${disk},format=raw,if=none`,
    '-device', 'virtio-blk-device,drive=root',
    '-netdev', 'user,id=net0',
    '-device', 'virtio-net-device,netdev=net0',
    '-device', 'virtio-serial-device',
    '-chardev', 'null,id=agent',
    '-device', 'virtserialport,chardev=agent,name=org.bale.agent',
    '-device', 'virtio-rng-device',
  ]
}

beforeAll(async () => {
  deb = execFileSync('bash', [path.join(repo, 'scripts', 'fetch-kernel.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim()
  // What `npm run build:guest` does; incremental, and atomic when other test files run it too.
  execFileSync('make', ['-s', '-C', path.join(repo, 'guest')], { stdio: ['ignore', 'ignore', 'inherit'] })
  initUsed = BALE_INIT
  imported = await importKernel({ source: { kind: 'deb', deb }, init: initUsed, store, makeDefault: true })
}, 600_000)

afterAll(() => rmSync(work, { recursive: true, force: true }))

describe('bale kernel import of the Debian cloud kernel', () => {
  it('stores a PVH ELF vmlinux under debian-<release>', async () => {
    const release = /linux-image-(.+?)_/.exec(path.basename(deb))![1]!
    expect(imported.ref).toBe(`debian-${release}`)
    expect(imported.info.release).toBe(release)
    expect(imported.info.version).toMatch(new RegExp(`^${release.replace(/[.+]/g, '\\$&')} .*Debian`))
    expect(imported.info.vmlinux.payload_compression).toBe('lz4')
    const head = readFileSync(imported.vmlinux).subarray(0, 4)
    expect(head.toString('latin1')).toBe('\x7fELF')
    const pvh = await readPvhEntry(imported.vmlinux)
    expect(pvh?.entry).toBeGreaterThan(0)
    expect(imported.info.vmlinux.pvh_entry).toBe(`0x${pvh!.entry.toString(16)}`)
    // Cross-check against the real readelf: note type 0x12 is XEN_ELFNOTE_PHYS32_ENTRY.
    expect(execFileSync('readelf', ['-n', imported.vmlinux]).toString()).toMatch(/Xen\s+0x\S+\s+Unknown note type: \(0x00000012\)/)
  })

  it('puts /init and the virtio modules, dependencies first, in the initramfs', () => {
    const { dir, names } = unpackInitramfs(imported.initramfs)
    expect(names).toContain('init')
    expect(names).toContain('dev/console')
    const order = readFileSync(path.join(dir, 'lib/modules/modules.order'), 'utf8').trim().split('\n')
    expect(order).toEqual(['virtio_ring.ko', 'virtio.ko', 'virtio_mmio.ko', 'virtio_blk.ko', 'virtio_console.ko', 'failover.ko', 'net_failover.ko', 'virtio_net.ko', 'virtio-rng.ko'])
    expect(names.filter((n) => n.endsWith('.ko'))).toEqual(order.map((f) => `lib/modules/${f}`))
    expect(readFileSync(path.join(dir, 'init')).equals(readFileSync(initUsed))).toBe(true)
  })

  it('is listed, is the default, and a re-import of the same .deb changes nothing', async () => {
    const listed = await listKernels(store)
    expect(listed.map((k) => [k.ref, k.default])).toEqual([[imported.ref, true]])
    expect((await resolveKernel('default', store)).vmlinux).toBe(imported.vmlinux)
    const again = await importKernel({ source: { kind: 'deb', deb }, init: initUsed, store })
    expect(again.unchanged).toBe(true)
    expect(again.dir).toBe(imported.dir)
  })
})

describe('booting it under QEMU microvm (TCG)', () => {
  it('loads every module in modules.order and binds the virtio devices (busybox /init)', async () => {
    const { dir } = unpackInitramfs(imported.initramfs)
    const order = readFileSync(path.join(dir, 'lib/modules/modules.order'), 'utf8').trim().split('\n')
    const script = path.join(work, 'busybox-init.sh')
    writeFileSync(
      script,
      [
        '#!/bin/busybox sh',
        'bb=/bin/busybox',
        '$bb mount -t proc proc /proc',
        '$bb mount -t sysfs sysfs /sys',
        '$bb mount -t devtmpfs devtmpfs /dev',
        'while read m; do $bb insmod /lib/modules/$m || echo "BALE-TEST insmod-failed $m"; done < /lib/modules/modules.order',
        'echo "BALE-TEST modules: $($bb cut -d" " -f1 /proc/modules | $bb sort | $bb tr "\\n" " ")"',
        'echo "BALE-TEST block: $($bb ls /sys/block)"',
        'echo "BALE-TEST net: $($bb ls /sys/class/net | $bb tr "\\n" " ")"',
        'echo "BALE-TEST ports: $($bb cat /sys/class/virtio-ports/*/name)"',
        'echo "BALE-TEST rng: $($bb cat /sys/class/misc/hw_random/rng_current)"',
        'echo BALE-TEST-DONE',
        '$bb poweroff -f',
        '',
      ].join('\n'),
    )
    const initrd = path.join(work, 'busybox-initramfs.cpio.gz')
    await buildInitramfs({
      init: script,
      modules: order.map((file) => ({ file, source: path.join(dir, 'lib/modules', file) })),
      extraFiles: [{ type: 'file', path: 'bin/busybox', mode: 0o755, source: BUSYBOX }],
      output: initrd,
    })
    const disk = path.join(work, 'blank.raw')
    writeFileSync(disk, Buffer.alloc(1 << 20))
    const r = await boot(imported.vmlinux, initrd, 'quiet', devices(disk))
    expect(r.output).toContain('BALE-TEST-DONE')
    expect(r.output).not.toContain('insmod-failed')
    const loaded = /BALE-TEST modules: (.*)/.exec(r.output)?.[1]?.trim().split(' ').sort()
    expect(loaded).toEqual(order.map((f) => f.replace(/\.ko$/, '').replace(/-/g, '_')).sort())
    expect(r.output).toMatch(/BALE-TEST block: vda/)
    expect(r.output).toMatch(/BALE-TEST net: .*eth0/)
    expect(r.output).toMatch(/BALE-TEST ports: org\.bale\.agent/)
    expect(r.output).toMatch(/BALE-TEST rng: virtio_rng/)
    expect(r.code).toBe(0) // poweroff, not a panic or the deadline
    console.log(`busybox boot to poweroff: ${r.ms} ms`)
  })

  it('boots with the guest stage 1: modules, root disk, switch_root into /.bale/init', async () => {
    const rootDir = path.join(work, 'rootfs')
    for (const d of ['bin', 'dev', 'proc', 'sys', '.bale']) mkdirSync(path.join(rootDir, d), { recursive: true })
    copyFileSync(BUSYBOX, path.join(rootDir, 'bin/busybox'))
    chmodSync(path.join(rootDir, 'bin/busybox'), 0o755)
    writeFileSync(
      path.join(rootDir, '.bale/init'),
      [
        '#!/bin/busybox sh',
        'echo "BALE-TEST stage2 pid $$ as $0"',
        'echo "BALE-TEST vda mounted: $(/bin/busybox grep -c "^/dev/vda / ext4" /proc/mounts)"',
        '/bin/busybox poweroff -f',
        '',
      ].join('\n'),
      { mode: 0o755 },
    )
    const disk = path.join(work, 'root.ext4')
    execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', rootDir, disk, '16M'], { stdio: 'ignore' })
    const r = await boot(imported.vmlinux, imported.initramfs, 'quiet root=/dev/vda bale.debug', devices(disk))
    expect(r.output).toMatch(/bale-init: stage 1 at \d+ ms/)
    expect(r.output).toMatch(/bale-init: modules loaded at \d+ ms/)
    expect(r.output).toMatch(/bale-init: root device at \d+ ms/)
    expect(r.output).toMatch(/bale-init: switch_root at \d+ ms/)
    // Loaded modules log "module <path>: <n> ms"; a failure logs the errno text instead.
    expect(r.output).toMatch(/bale-init: module \/lib\/modules\/virtio_blk\.ko: \d+ ms/)
    expect(r.output).not.toMatch(/bale-init: module \S+: (?!\d+ ms)/)
    expect(r.output).toMatch(/BALE-TEST stage2 pid 1 as \/\.bale\/init/)
    expect(r.output).toMatch(/BALE-TEST vda mounted: 1/)
    expect(r.code).toBe(0)
    console.log(`stage 1 boot to poweroff: ${r.ms} ms`)
  })
})
