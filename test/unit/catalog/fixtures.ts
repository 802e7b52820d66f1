/**
 * Fixtures for catalog tests: a kernel in the kernel store as `bale kernel import` lays it out
 * (committed with the kernel store's own commitKernel; the catalog carries kernel files byte
 * for byte, so their content only has to agree with kernel.json), and small real bundles
 * written with the bundle writer around an arbitrary rootfs file.
 */
import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { BuiltBundle } from '../../../src/catalog/build.js'
import type { BundleManifest } from '../../../src/pipeline/bundle/manifest.js'
import { writeBundle } from '../../../src/pipeline/bundle/writer.js'
import { commitKernel, KERNEL_FORMAT_VERSION } from '../../../src/runtime/kernel/store.js'

function hex(b: Buffer | string): string {
  return createHash('sha256').update(b).digest('hex')
}

/** Deterministic bytes (SHA-256 in counter mode). */
export function bytes(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size)
  for (let off = 0, i = 0; off < size; i++) off += createHash('sha256').update(`${seed}:${i}`).digest().copy(out, off)
  return out
}

export async function addKernel(dataDir: string, ref: string): Promise<void> {
  const kernels = path.join(dataDir, 'kernels')
  await fs.mkdir(kernels, { recursive: true })
  const staging = await fs.mkdtemp(path.join(kernels, '.staging-'))
  const vmlinux = bytes(`vmlinux-${ref}`, 300 * 1024)
  const initramfs = bytes(`initramfs-${ref}`, 100 * 1024)
  await fs.writeFile(path.join(staging, 'vmlinux'), vmlinux)
  await fs.writeFile(path.join(staging, 'initramfs.cpio.gz'), initramfs)
  const info = {
    schema_version: KERNEL_FORMAT_VERSION,
    kernel_ref: ref,
    release: '6.1.0-test',
    version: null,
    source: { kind: 'vmlinuz', file: 'vmlinuz-test', sha256: hex(vmlinux), package: null, package_version: null, modules_dir: null },
    vmlinux: { file: 'vmlinux', sha256: hex(vmlinux), size: vmlinux.length, payload_compression: 'none', pvh_entry: '0x1000000' },
    initramfs: { file: 'initramfs.cpio.gz', sha256: hex(initramfs), size: initramfs.length, compression: 'gzip' },
    init: { file: 'init', sha256: hex('init') },
    modules: [],
    builtin_modules: [],
    input_digest: hex(ref),
    created: '2024-01-02T03:04:05.000Z',
  }
  await fs.writeFile(path.join(staging, 'kernel.json'), `${JSON.stringify(info, null, 2)}\n`)
  await commitKernel({ dir: kernels }, ref, staging, false)
}

/** A real bundle (manifest.json + an arbitrary "rootfs") at `dir/<name>-<version>.bundle.tar.zst`, as a build would record it. */
export async function makeBuilt(dir: string, name: string, version: string, opts: { kernelRef?: string; rootfsSize?: number; manifestName?: string } = {}): Promise<BuiltBundle> {
  await fs.mkdir(dir, { recursive: true })
  const rootfs = bytes(`rootfs-${name}-${version}`, opts.rootfsSize ?? 64 * 1024)
  const rootfsPath = path.join(dir, `${name}-${version}.rootfs`)
  await fs.writeFile(rootfsPath, rootfs)
  const manifest: BundleManifest = {
    schema_version: 1,
    name: opts.manifestName ?? name,
    version,
    description: `${name} test bundle`,
    distro: 'test-1',
    arch: 'amd64',
    kernel_ref: opts.kernelRef ?? 'k1',
    created: '2024-01-02T03:04:05.000Z',
    source: { ref: `test/${name}`, platform: 'linux/amd64', layers: [] },
    config: { entrypoint: [], cmd: [], env: [], user: '', workdir: '', exposed_ports: [] },
    rootfs: { file: 'rootfs.ext4', size: rootfs.length, sha256: hex(rootfs) },
    agent: { version: 'test', sha256: hex('agent') },
  }
  const file = path.join(dir, `${name}-${version}.bundle.tar.zst`)
  const w = await writeBundle({ manifest, rootfsPath, out: file, level: 3 })
  await fs.rm(rootfsPath)
  return {
    name,
    version,
    file,
    size: w.size,
    sha256: w.sha256,
    integrity: w.integrity,
    zstdLevel: 3,
    kernel_ref: manifest.kernel_ref,
    created: manifest.created,
    description: manifest.description,
    arch: manifest.arch,
    distro: manifest.distro,
  }
}
