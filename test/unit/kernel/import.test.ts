import { execFileSync } from 'node:child_process'
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import { afterAll, describe, expect, it } from 'vitest'
import { importKernel, listKernels, resolveKernel, type KernelStore } from '../../../src/runtime/kernel/index.js'
import { validateRef } from '../../../src/runtime/kernel/store.js'
import { makeBzImage, makeModule, makeVmlinux, pseudoRandomBody } from './helpers.js'

const root = mkdtempSync(path.join(os.tmpdir(), 'bale-kimport-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
let n = 0
const fresh = (): string => {
  const d = path.join(root, `d${n++}`)
  mkdirSync(d, { recursive: true })
  return d
}

const RELEASE = '6.1.0-99-test-amd64'
const KVERSION = `${RELEASE} (nobody@example) #1 SMP PREEMPT_DYNAMIC Debian 6.1.999-1 (2026-01-01)`
const MODS: Record<string, string> = {
  'kernel/drivers/virtio/virtio_ring.ko': '',
  'kernel/drivers/virtio/virtio.ko': 'virtio_ring',
  'kernel/drivers/virtio/virtio_mmio.ko': 'virtio,virtio_ring',
  'kernel/drivers/block/virtio_blk.ko': 'virtio,virtio_ring',
  'kernel/drivers/char/virtio_console.ko': 'virtio,virtio_ring',
  'kernel/net/core/failover.ko': '',
  'kernel/drivers/net/net_failover.ko': 'failover',
  'kernel/drivers/net/virtio_net.ko': 'virtio_ring,virtio,net_failover',
  'kernel/drivers/char/hw_random/virtio-rng.ko': 'virtio,virtio_ring',
}

/** A kernel "package tree": boot/vmlinuz-<release>, boot/config-<release>, lib/modules/<release>. */
function kernelTree(opts: { vermagic?: string; kernelVersion?: string; config?: string } = {}): { top: string; vmlinuz: string; modules: string } {
  const top = fresh()
  const modules = path.join(top, 'lib/modules', RELEASE)
  for (const [rel, deps] of Object.entries(MODS)) {
    const p = path.join(modules, rel)
    mkdirSync(path.dirname(p), { recursive: true })
    const name = path.basename(rel, '.ko').replace(/-/g, '_')
    writeFileSync(p, makeModule([`name=${name}`, `depends=${deps}`, `vermagic=${opts.vermagic ?? RELEASE} SMP mod_unload modversions `]))
  }
  writeFileSync(path.join(modules, 'modules.builtin'), 'kernel/fs/ext4/ext4.ko\n')
  mkdirSync(path.join(top, 'boot'))
  const vmlinuz = path.join(top, 'boot', `vmlinuz-${RELEASE}`)
  writeFileSync(vmlinuz, makeBzImage(makeVmlinux({ pvhEntry: 0x1000850, fill: pseudoRandomBody(200_000) }), 'lz4', { kernelVersion: opts.kernelVersion ?? KVERSION }))
  writeFileSync(path.join(top, 'boot', `config-${RELEASE}`), opts.config ?? 'CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_DEVTMPFS=y\nCONFIG_PVH=y\n')
  return { top, vmlinuz, modules }
}

function initBinary(body = '#!/bin/sh\necho stage1\n'): string {
  const p = path.join(fresh(), 'bale-init')
  writeFileSync(p, body, { mode: 0o755 })
  return p
}

function store(): KernelStore {
  return { dir: path.join(fresh(), 'kernels') }
}

/** A real .deb built with dpkg-deb from a tree. */
function deb(top: string, pkg: string, depends?: string): string {
  mkdirSync(path.join(top, 'DEBIAN'), { recursive: true })
  writeFileSync(
    path.join(top, 'DEBIAN/control'),
    `Package: ${pkg}\nVersion: 6.1.999-1\nArchitecture: amd64\nMaintainer: test <t@example>\nDescription: test kernel\n${depends ? `Depends: ${depends}\n` : ''}`,
  )
  const out = path.join(fresh(), `${pkg}_6.1.999-1_amd64.deb`)
  execFileSync('dpkg-deb', ['--build', '-Zgzip', '--root-owner-group', top, out], { stdio: 'ignore' })
  return out
}

describe('importKernel --vmlinuz --modules', () => {
  it('stores vmlinux, initramfs and kernel.json under debian-<release> and resolves it', async () => {
    const k = kernelTree()
    const s = store()
    const init = initBinary()
    const res = await importKernel({ source: { kind: 'vmlinuz', vmlinuz: k.vmlinuz, modulesDir: k.modules }, init, store: s })
    expect(res.ref).toBe(`debian-${RELEASE}`) // the version string says Debian
    expect(res.unchanged).toBe(false)
    expect(res.info.release).toBe(RELEASE)
    expect(res.info.version).toBe(KVERSION)
    expect(res.info.vmlinux.payload_compression).toBe('lz4')
    expect(res.info.vmlinux.pvh_entry).toBe('0x1000850')
    expect(res.info.modules.map((m) => m.file)).toEqual([
      'virtio_ring.ko', 'virtio.ko', 'virtio_mmio.ko', 'virtio_blk.ko', 'virtio_console.ko', 'failover.ko', 'net_failover.ko', 'virtio_net.ko', 'virtio-rng.ko',
    ])
    expect(res.info.source).toMatchObject({ kind: 'vmlinuz', file: path.basename(k.vmlinuz), modules_dir: k.modules })

    const resolved = await resolveKernel(res.ref, s)
    expect(resolved.ref).toBe(res.ref)
    expect(readFileSync(resolved.vmlinux).subarray(0, 4).toString('latin1')).toBe('\x7fELF')
    const archive = zlib.gunzipSync(readFileSync(resolved.initramfs))
    const names = execFileSync('cpio', ['-t', '--quiet'], { input: archive }).toString().trim().split('\n')
    expect(names).toContain('init')
    expect(names.filter((x) => x.endsWith('.ko'))).toEqual(res.info.modules.map((m) => `lib/modules/${m.file}`))
    // <kernelsDir>/<ref> is the stable path: a symlink to the current version directory.
    expect(lstatSync(path.join(s.dir, res.ref)).isSymbolicLink()).toBe(true)
    expect(existsSync(path.join(s.dir, res.ref, 'kernel.json'))).toBe(true)
    expect(readdirSync(s.dir).filter((x) => x.startsWith('.staging'))).toEqual([])
  })

  it('a second import of the same inputs is a no-op; a new init, or --force, rebuilds and replaces', async () => {
    const k = kernelTree()
    const s = store()
    const init = initBinary()
    const source = { kind: 'vmlinuz' as const, vmlinuz: k.vmlinuz, modulesDir: k.modules }
    const first = await importKernel({ source, init, store: s })
    const again = await importKernel({ source, init, store: s })
    expect(again.unchanged).toBe(true)
    expect(again.dir).toBe(first.dir)
    const changed = await importKernel({ source, init: initBinary('#!/bin/sh\necho other\n'), store: s })
    expect(changed.unchanged).toBe(false)
    expect(changed.dir).not.toBe(first.dir)
    expect(existsSync(first.dir)).toBe(false) // the old version is gone once the swap is done
    const forced = await importKernel({ source, init, store: s, force: true, ref: changed.ref })
    expect(forced.unchanged).toBe(false)
    expect(readdirSync(s.dir).filter((x) => x.startsWith(`.${changed.ref}@`))).toHaveLength(1)
  })

  it('--ref names the kernel; a ref that is not a plain name is refused', async () => {
    const k = kernelTree()
    const s = store()
    const res = await importKernel({ source: { kind: 'vmlinuz', vmlinuz: k.vmlinuz, modulesDir: k.modules }, init: initBinary(), store: s, ref: 'mine' })
    expect(res.ref).toBe('mine')
    expect((await listKernels(s)).map((x) => x.ref)).toEqual(['mine'])
    for (const bad of ['../x', 'a/b', '.hidden', 'default', '']) expect(() => validateRef(bad, '--ref')).toThrow(/--ref/)
  })

  it('refuses modules built for another kernel, naming the module', async () => {
    const k = kernelTree({ vermagic: '6.1.0-1-other-amd64' })
    await expect(importKernel({ source: { kind: 'vmlinuz', vmlinuz: k.vmlinuz, modulesDir: k.modules }, init: initBinary(), store: store() })).rejects.toThrow(
      /virtio_ring\.ko: module built for kernel 6\.1\.0-1-other-amd64, not 6\.1\.0-99-test-amd64/,
    )
  })

  it('refuses a vmlinuz whose version is not the modules directory release', async () => {
    const k = kernelTree({ kernelVersion: '6.1.0-1-other-amd64 (x) #1 SMP' })
    await expect(importKernel({ source: { kind: 'vmlinuz', vmlinuz: k.vmlinuz, modulesDir: k.modules }, init: initBinary(), store: store() })).rejects.toThrow(
      /is kernel 6\.1\.0-1-other-amd64 but the modules in .* are for 6\.1\.0-99-test-amd64/,
    )
  })

  it('refuses a kernel whose config lacks gzip initramfs support', async () => {
    const k = kernelTree({ config: 'CONFIG_BLK_DEV_INITRD=y\n# CONFIG_RD_GZIP is not set\nCONFIG_DEVTMPFS=y\n' })
    await expect(importKernel({ source: { kind: 'vmlinuz', vmlinuz: k.vmlinuz, modulesDir: k.modules }, init: initBinary(), store: store() })).rejects.toThrow(
      /config-6\.1\.0-99-test-amd64: CONFIG_RD_GZIP is not =y/,
    )
  })

  it('says how to build the guest when the init binary is missing', async () => {
    const k = kernelTree()
    await expect(
      importKernel({ source: { kind: 'vmlinuz', vmlinuz: k.vmlinuz, modulesDir: k.modules }, init: path.join(root, 'no-init'), store: store() }),
    ).rejects.toThrow(/guest init .*no-init not found: build it with `npm run build:guest`/)
  })
})

describe('importKernel --deb', () => {
  it('imports a linux-image package (dpkg -x, never installed) and records its name, version and sha256', async () => {
    const k = kernelTree()
    rmSync(path.join(k.top, 'lib/modules', RELEASE, 'kernel/drivers/char/hw_random/virtio-rng.ko'))
    const file = deb(k.top, `linux-image-${RELEASE}`)
    const s = store()
    const res = await importKernel({ source: { kind: 'deb', deb: file }, init: initBinary(), store: s, makeDefault: true })
    expect(res.ref).toBe(`debian-${RELEASE}`)
    expect(res.info.source).toMatchObject({ kind: 'deb', file: path.basename(file), package: `linux-image-${RELEASE}`, package_version: '6.1.999-1' })
    expect(res.info.source.sha256).toBe(execFileSync('sha256sum', [file]).toString().split(' ')[0])
    expect(res.info.modules.map((m) => m.name)).not.toContain('virtio_rng') // optional, and absent here
    expect(readlinkSync(path.join(s.dir, 'default'))).toBe(res.ref)
    expect((await resolveKernel('default', s)).ref).toBe(res.ref)
    const again = await importKernel({ source: { kind: 'deb', deb: file }, init: res.info.init.file, store: s })
    expect(again.unchanged).toBe(true)
  })

  // Trap: `apt-get download linux-image-cloud-amd64` fetches the meta package, which holds no kernel.
  it('meta-package-has-no-kernel: says which package to fetch instead', async () => {
    const top = fresh()
    mkdirSync(path.join(top, 'usr/share/doc/linux-image-cloud-amd64'), { recursive: true })
    const file = deb(top, 'linux-image-cloud-amd64', `linux-image-${RELEASE} (= 6.1.999-1)`)
    await expect(importKernel({ source: { kind: 'deb', deb: file }, init: initBinary(), store: store() })).rejects.toThrow(
      new RegExp(`holds no boot/vmlinuz-\\*: it is a meta package; import its dependency \\(apt-get download linux-image-${RELEASE}\\)`),
    )
  })

  it('refuses a file that is not a Debian package', async () => {
    const bogus = path.join(fresh(), 'x.deb')
    writeFileSync(bogus, 'not an ar archive')
    await expect(importKernel({ source: { kind: 'deb', deb: bogus }, init: initBinary(), store: store() })).rejects.toThrow(/x\.deb: not a Debian package/)
  })
})

describe('resolveKernel and listKernels', () => {
  it('a missing kernel is E_NOT_FOUND saying how to import one', async () => {
    const s = store()
    await expect(resolveKernel('debian-6.1.0-1-cloud-amd64', s)).rejects.toMatchObject({
      code: 'E_NOT_FOUND',
      message: 'kernel debian-6.1.0-1-cloud-amd64 is not imported; run: bale kernel import --deb <linux-image-…deb>',
    })
    await expect(resolveKernel('default', s)).rejects.toThrow(/kernel default is not imported; run: bale kernel import --deb <linux-image-…deb> --default/)
    await expect(resolveKernel('../../etc', s)).rejects.toMatchObject({ code: 'E_INPUT' })
    expect(await listKernels(s)).toEqual([])
  })

  it('a truncated vmlinux is reported, and a broken entry is listed with its error', async () => {
    const k = kernelTree()
    const s = store()
    const res = await importKernel({ source: { kind: 'vmlinuz', vmlinuz: k.vmlinuz, modulesDir: k.modules }, init: initBinary(), store: s })
    truncateSync(res.vmlinux, 100)
    await expect(resolveKernel(res.ref, s)).rejects.toThrow(/vmlinux .* has 100 bytes, kernel\.json says \d+; re-import it/)
    writeFileSync(path.join(res.dir, 'kernel.json'), '{"schema_version": 1}')
    const [entry] = await listKernels(s)
    expect(entry?.ref).toBe(res.ref)
    expect(entry?.info).toBeUndefined()
    expect(entry?.error).toMatch(/kernel\.json: kernel_ref: /)
  })
})
