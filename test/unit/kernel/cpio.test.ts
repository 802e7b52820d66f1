import { execFileSync } from 'node:child_process'
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { PassThrough } from 'node:stream'
import zlib from 'node:zlib'
import { afterAll, describe, expect, it } from 'vitest'
import { writeCpio, type CpioEntry } from '../../../src/runtime/kernel/cpio.js'
import { buildInitramfs } from '../../../src/runtime/kernel/initramfs.js'
import { makeModule, pseudoRandomBody } from './helpers.js'

const root = mkdtempSync(path.join(os.tmpdir(), 'bale-cpio-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
let n = 0
const fresh = (): string => {
  const d = path.join(root, `d${n++}`)
  mkdirSync(d)
  return d
}

async function cpioBytes(entries: CpioEntry[], mtime?: number): Promise<Buffer> {
  const out = new PassThrough()
  const parts: Buffer[] = []
  out.on('data', (b: Buffer) => parts.push(b))
  await writeCpio(entries, out, { mtime })
  return Buffer.concat(parts)
}

/** `cpio -t -v` listing lines: "mode links owner group size date name" (devices show "maj, min"). */
function listing(archive: Buffer): string[] {
  return execFileSync('cpio', ['-t', '-v', '--quiet'], { input: archive, env: { ...process.env, LC_ALL: 'C', TZ: 'UTC' } })
    .toString()
    .trim()
    .split('\n')
}

describe('cpio newc writer', () => {
  const big = pseudoRandomBody(3 * 1024 * 1024 + 3) // several stream chunks and an odd length (padding)

  it('round-trips through the real cpio -i: contents, modes, links, parents', async () => {
    const src = path.join(fresh(), 'big.bin')
    writeFileSync(src, big)
    const archive = await cpioBytes([
      { type: 'dir', path: 'dev' },
      { type: 'file', path: '/init', mode: 0o755, data: '#!/bin/sh\necho hi\n' },
      { type: 'file', path: 'usr/lib/deep/big.bin', source: src },
      { type: 'file', path: 'empty', data: '' },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
      { type: 'dir', path: 'tmp', mode: 0o1777 },
    ])
    const dest = fresh()
    execFileSync('cpio', ['-i', '-d', '--quiet', '--no-absolute-filenames'], { cwd: dest, input: archive })
    expect(readFileSync(path.join(dest, 'init'), 'utf8')).toBe('#!/bin/sh\necho hi\n')
    expect(statSync(path.join(dest, 'init')).mode & 0o7777).toBe(0o755)
    expect(readFileSync(path.join(dest, 'usr/lib/deep/big.bin')).equals(big)).toBe(true)
    expect(readFileSync(path.join(dest, 'empty')).length).toBe(0)
    expect(readlinkSync(path.join(dest, 'bin/sh'))).toBe('busybox')
    expect(lstatSync(path.join(dest, 'tmp')).isDirectory()).toBe(true)
    expect(readdirSync(dest).sort()).toEqual(['bin', 'dev', 'empty', 'init', 'tmp', 'usr'])
  })

  // Trap: the kernel's unpacker does not create missing parent directories.
  it('cpio-missing-parent-dirs: emits each parent directory before its children', async () => {
    const lines = listing(await cpioBytes([{ type: 'file', path: 'a/b/c/file', data: 'x' }]))
    expect(lines.map((l) => l.split(/\s+/).pop())).toEqual(['a', 'a/b', 'a/b/c', 'a/b/c/file'])
    expect(lines[0]).toMatch(/^drwxr-xr-x/)
  })

  it('writes device nodes, owners 0:0 and the given mtime', async () => {
    const lines = listing(await cpioBytes([{ type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 }], 1700000000))
    expect(lines[1]).toMatch(/^crw------- +1 root +root +5, +1 Nov 14 {2}2023 dev\/console$/)
  })

  it('is deterministic: the same entries give the same bytes, with inode numbers from 1', async () => {
    const entries: CpioEntry[] = [
      { type: 'file', path: 'x', data: 'one' },
      { type: 'file', path: 'y/z', data: 'two' },
    ]
    const a = await cpioBytes(entries)
    const b = await cpioBytes(entries)
    expect(a.equals(b)).toBe(true)
    // newc header: magic then c_ino as 8 hex digits.
    expect(a.subarray(0, 14).toString('latin1')).toBe('07070100000001')
    expect(a.length % 4).toBe(0)
    expect(a.includes(Buffer.from('TRAILER!!!\0'))).toBe(true)
  })

  it('refuses .., a path given twice and the trailer name', async () => {
    await expect(cpioBytes([{ type: 'file', path: '../etc/passwd', data: '' }])).rejects.toThrow(/must name something below \/ without \.\./)
    await expect(
      cpioBytes([
        { type: 'file', path: 'a', data: '1' },
        { type: 'file', path: '/a', data: '2' },
      ]),
    ).rejects.toThrow(/initramfs path \/a given twice/)
    await expect(cpioBytes([{ type: 'file', path: 'TRAILER!!!', data: '' }])).rejects.toThrow(/TRAILER/)
  })
})

describe('buildInitramfs', () => {
  function inputs(): { init: string; modules: { file: string; source: string }[] } {
    const d = fresh()
    const init = path.join(d, 'bale-init')
    writeFileSync(init, '#!/bin/sh\nexit 0\n')
    chmodSync(init, 0o644) // the archive makes /init executable whatever the source mode
    const modules = ['virtio_ring', 'virtio', 'virtio-rng'].map((m) => {
      const source = path.join(d, `${m}.ko`)
      writeFileSync(source, makeModule([`name=${m.replace('-', '_')}`]))
      return { file: `${m}.ko`, source }
    })
    const xz = path.join(d, 'virtio_net.ko.xz')
    writeFileSync(xz, execFileSync('xz', ['-c', '--check=crc32'], { input: makeModule(['name=virtio_net']) }))
    modules.push({ file: 'virtio_net.ko', source: xz })
    return { init, modules }
  }

  it('lays out /init, /dev/console, the modules and modules.order for stage 1', async () => {
    const { init, modules } = inputs()
    const output = path.join(fresh(), 'initramfs.cpio.gz')
    const res = await buildInitramfs({ init, modules, output, extraFiles: [{ type: 'file', path: 'etc/marker', data: 'm' }] })
    const archive = zlib.gunzipSync(readFileSync(output))
    expect(res.size).toBe(statSync(output).size)
    const lines = listing(archive)
    const names = lines.map((l) => l.split(/\s+/).pop())
    expect(names).toEqual([
      'dev', 'proc', 'sys', 'run', 'tmp', 'mnt', 'newroot', 'lib', 'lib/modules', 'dev/console', 'init',
      'lib/modules/virtio_ring.ko', 'lib/modules/virtio.ko', 'lib/modules/virtio-rng.ko', 'lib/modules/virtio_net.ko', 'lib/modules/modules.order',
      'etc', 'etc/marker',
    ])
    expect(lines[names.indexOf('init')]).toMatch(/^-rwxr-xr-x/)
    expect(lines[names.indexOf('dev/console')]).toMatch(/^crw------- .* 5, +1 /)
    const dest = fresh()
    execFileSync('cpio', ['-i', '-d', '--quiet'], { cwd: dest, input: archive })
    expect(readFileSync(path.join(dest, 'lib/modules/modules.order'), 'utf8')).toBe('virtio_ring.ko\nvirtio.ko\nvirtio-rng.ko\nvirtio_net.ko\n')
    // The .ko.xz went in decompressed.
    expect(readFileSync(path.join(dest, 'lib/modules/virtio_net.ko')).equals(makeModule(['name=virtio_net']))).toBe(true)
  })

  it('is byte-identical across builds (fixed mtimes, inodes, owners; zero gzip mtime)', async () => {
    const { init, modules } = inputs()
    const d = fresh()
    const a = await buildInitramfs({ init, modules, output: path.join(d, 'a.gz') })
    const b = await buildInitramfs({ init, modules, output: path.join(d, 'b.gz') })
    expect(a.sha256).toBe(b.sha256)
    expect(readFileSync(path.join(d, 'a.gz')).equals(readFileSync(path.join(d, 'b.gz')))).toBe(true)
  })

  it('fails naming a missing init, and leaves no temporary behind', async () => {
    const d = fresh()
    await expect(buildInitramfs({ init: path.join(d, 'nope'), output: path.join(d, 'out.gz') })).rejects.toThrow(/init .*nope: no such file/)
    const { init } = inputs()
    await expect(buildInitramfs({ init, modules: [{ file: 'x.ko', source: path.join(d, 'missing.ko') }], output: path.join(d, 'out.gz') })).rejects.toThrow(/ENOENT/)
    expect(readdirSync(d)).toEqual([])
  })

  it('refuses a module file name with a slash', async () => {
    const { init } = inputs()
    await expect(buildInitramfs({ init, modules: [{ file: '../x.ko', source: init }], output: path.join(fresh(), 'o') })).rejects.toThrow(/must be a bare \*\.ko file name/)
  })
})
