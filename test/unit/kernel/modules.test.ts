import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import { afterAll, describe, expect, it } from 'vitest'
import { readSection } from '../../../src/runtime/kernel/elf.js'
import { GUEST_MODULES, moduleName, orderModules, parseModinfo, resolveModules } from '../../../src/runtime/kernel/modules.js'
import { makeModule } from './helpers.js'

const root = mkdtempSync(path.join(os.tmpdir(), 'bale-mods-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
let n = 0

const VERMAGIC = 'vermagic=6.1.0-99-test-amd64 SMP preempt mod_unload modversions '

/** A lib/modules/<release> tree laid out like Debian's, from {relative path: [modinfo strings]}. */
function tree(mods: Record<string, string[] | Buffer>, builtin: string[] = []): string {
  const dir = path.join(root, `t${n++}`, '6.1.0-99-test-amd64')
  for (const [rel, info] of Object.entries(mods)) {
    const p = path.join(dir, rel)
    mkdirSync(path.dirname(p), { recursive: true })
    writeFileSync(p, Buffer.isBuffer(info) ? info : makeModule([...info, VERMAGIC]))
  }
  mkdirSync(dir, { recursive: true })
  writeFileSync(path.join(dir, 'modules.builtin'), builtin.map((b) => `${b}\n`).join(''))
  return dir
}

/** The shape of Debian 6.1's cloud kernel: every guest driver is a module. */
function debianLike(): Record<string, string[]> {
  return {
    'kernel/drivers/virtio/virtio_ring.ko': ['name=virtio_ring', 'depends='],
    'kernel/drivers/virtio/virtio.ko': ['name=virtio', 'depends=virtio_ring'],
    'kernel/drivers/virtio/virtio_mmio.ko': ['name=virtio_mmio', 'depends=virtio,virtio_ring'],
    'kernel/drivers/block/virtio_blk.ko': ['name=virtio_blk', 'depends=virtio,virtio_ring'],
    'kernel/drivers/char/virtio_console.ko': ['name=virtio_console', 'depends=virtio,virtio_ring'],
    'kernel/net/core/failover.ko': ['name=failover', 'depends='],
    'kernel/drivers/net/net_failover.ko': ['name=net_failover', 'depends=failover'],
    'kernel/drivers/net/virtio_net.ko': ['name=virtio_net', 'depends=virtio_ring,virtio,net_failover'],
    'kernel/drivers/char/hw_random/virtio-rng.ko': ['name=virtio_rng', 'depends=virtio,virtio_ring'],
    'kernel/drivers/scsi/virtio_scsi.ko': ['name=virtio_scsi', 'depends=virtio'],
  }
}

describe('.modinfo', () => {
  it('reads name, depends and vermagic from the ELF section', () => {
    const ko = makeModule(['license=GPL', 'depends=virtio_ring,virtio', 'name=virtio_blk', VERMAGIC, 'alias=virtio:d00000002v*'])
    const info = parseModinfo(readSection(ko, '.modinfo', 'ko')!)
    expect(info).toEqual({ name: 'virtio_blk', depends: ['virtio_ring', 'virtio'], vermagic: VERMAGIC.slice('vermagic='.length) })
  })

  it('an empty depends= means no dependencies', () => {
    expect(parseModinfo(Buffer.from('depends=\0name=failover\0')).depends).toEqual([])
  })

  it('finds no section in an ELF without one, and refuses a non-ELF', () => {
    expect(readSection(makeModule(['name=x']), '.nosuch', 'ko')).toBeUndefined()
    expect(() => readSection(Buffer.from('not an elf at all, just some text to fill 64 bytes of header......'), '.modinfo', 'x.ko')).toThrow(/x\.ko: not an ELF/)
  })

  // Trap: file names use '-' where module names use '_' (virtio-rng.ko is module virtio_rng).
  it('module-file-name-hyphen-vs-underscore: names are normalised', () => {
    expect(moduleName('kernel/drivers/char/hw_random/virtio-rng.ko')).toBe('virtio_rng')
    expect(moduleName('virtio_net.ko.zst')).toBe('virtio_net')
    expect(moduleName('virtio-rng')).toBe('virtio_rng')
  })
})

describe('resolveModules', () => {
  it('orders the guest modules after their dependencies, keeping the requested order otherwise', async () => {
    const dir = tree(debianLike())
    const r = await resolveModules(dir)
    expect(r.modules.map((m) => m.name)).toEqual(['virtio_ring', 'virtio', 'virtio_mmio', 'virtio_blk', 'virtio_console', 'failover', 'net_failover', 'virtio_net', 'virtio_rng'])
    expect(r.modules.find((m) => m.name === 'virtio_rng')?.file).toBe('virtio-rng.ko')
    expect(r.builtin).toEqual([])
    expect(r.absent).toEqual([])
  })

  it('puts a dependency first even when it was requested later', async () => {
    const dir = tree({ 'a.ko': ['name=a', 'depends=b'], 'b.ko': ['name=b', 'depends=c'], 'c.ko': ['name=c', 'depends='] })
    const r = await resolveModules(dir, [{ name: 'a' }, { name: 'b' }])
    expect(r.modules.map((m) => m.name)).toEqual(['c', 'b', 'a'])
  })

  it('pulls in dependencies that were not requested (from depends=, not modules.dep)', async () => {
    const mods: Record<string, string[]> = { ...debianLike() }
    mods['kernel/drivers/virtio/virtio_mmio.ko'] = ['name=virtio_mmio', 'depends=virtio,virtio_ring,virtio_helper']
    mods['kernel/drivers/virtio/virtio_helper.ko'] = ['name=virtio_helper', 'depends=virtio_ring']
    const dir = tree(mods)
    writeFileSync(path.join(dir, 'modules.dep'), 'this file is stale and must not be read\n')
    const names = (await resolveModules(dir)).modules.map((m) => m.name)
    expect(names.indexOf('virtio_helper')).toBeGreaterThan(names.indexOf('virtio_ring'))
    expect(names.indexOf('virtio_helper')).toBeLessThan(names.indexOf('virtio_mmio'))
  })

  it('skips built-in drivers and an absent optional one', async () => {
    const mods = debianLike()
    delete mods['kernel/drivers/virtio/virtio_ring.ko']
    delete mods['kernel/drivers/virtio/virtio.ko']
    delete mods['kernel/drivers/char/hw_random/virtio-rng.ko']
    const dir = tree(mods, ['kernel/drivers/virtio/virtio_ring.ko', 'kernel/drivers/virtio/virtio.ko'])
    const r = await resolveModules(dir)
    expect(r.modules.map((m) => m.name)).toEqual(['virtio_mmio', 'virtio_blk', 'virtio_console', 'failover', 'net_failover', 'virtio_net'])
    expect(r.builtin).toEqual(['virtio_ring', 'virtio'])
    expect(r.absent).toEqual(['virtio_rng'])
  })

  it('fails naming a required module that is neither a file nor built in, and who needs it', async () => {
    const mods = debianLike()
    delete mods['kernel/net/core/failover.ko']
    const dir = tree(mods)
    await expect(resolveModules(dir)).rejects.toThrow(`${dir}: kernel module failover (a virtio driver bale guests need) is neither a module file here nor listed in modules.builtin`)
    const dir2 = tree({ 'a.ko': ['name=a', 'depends=gone'] })
    await expect(resolveModules(dir2, [{ name: 'a' }])).rejects.toThrow(`${dir2}: kernel module gone (needed by a)`)
  })

  it('reads .ko.xz, .ko.zst and .ko.gz modules and records the uncompressed file name', async () => {
    const ko = (info: string[]): Buffer => makeModule([...info, VERMAGIC])
    const dir = tree({
      'kernel/a.ko.xz': execFileSync('xz', ['--check=crc32', '-c'], { input: ko(['name=a', 'depends=b,c']) }),
      'kernel/b.ko.zst': execFileSync('zstd', ['-q', '-c'], { input: ko(['name=b', 'depends=']) }),
      'kernel/c.ko.gz': zlib.gzipSync(ko(['name=c', 'depends='])),
    })
    const r = await resolveModules(dir, [{ name: 'a' }])
    expect(r.modules.map((m) => [m.name, m.file])).toEqual([
      ['b', 'b.ko'],
      ['c', 'c.ko'],
      ['a', 'a.ko'],
    ])
  })

  it('refuses a module whose .modinfo name contradicts its file name', async () => {
    const dir = tree({ 'kernel/virtio.ko': ['name=something_else', 'depends='] })
    await expect(resolveModules(dir, [{ name: 'virtio' }])).rejects.toThrow(/says its name is something_else/)
  })

  it('refuses a missing modules directory with its path', async () => {
    await expect(resolveModules(path.join(root, 'nope'))).rejects.toThrow(/nope: cannot read the modules directory \(ENOENT\)/)
  })

  it('the default request is the guest list', () => {
    expect(GUEST_MODULES.map((m) => m.name)).toEqual(['virtio_ring', 'virtio', 'virtio_mmio', 'virtio_blk', 'virtio_console', 'failover', 'net_failover', 'virtio_net', 'virtio_rng'])
  })
})

describe('orderModules', () => {
  it('is deterministic whatever the input order, and refuses a cycle', () => {
    const mods = [
      { name: 'z', depends: [] },
      { name: 'y', depends: ['z'] },
      { name: 'x', depends: [] },
      { name: 'w', depends: ['x', 'y'] },
    ]
    const once = orderModules(mods).map((m) => m.name)
    expect(once).toEqual(['x', 'z', 'y', 'w'])
    expect(orderModules([...mods].reverse()).map((m) => m.name)).toEqual(once)
    expect(() => orderModules([{ name: 'a', depends: ['b'] }, { name: 'b', depends: ['a'] }])).toThrow(/cycle: a, b/)
  })
})
