import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { removeQuietly } from '../../lib/atomic.js'
import { registerCleanup } from '../../lib/cleanup.js'
import { BaleError, fromSystemError } from '../../lib/errors.js'
import { sha256File as hashFile } from '../../lib/hash.js'
import { run } from '../../lib/exec.js'
import { extractRootfs } from '../../pipeline/bundle/reader.js'
import type { BundleManifest } from '../../pipeline/bundle/manifest.js'

/**
 * Read-only base images, one per rootfs digest: `<imagesDir>/<sha256>/rootfs.ext4` (mode 0444),
 * beside `bundles`, the sha256 of every bundle file that was read through and found to carry
 * exactly this rootfs.
 *
 * Every boot hashes the bundle file (one streaming pass over the compressed bytes: ~3 ms for the
 * demo, ~0.2 s for a 78 MB Debian bundle). A digest already listed proves the same bytes were
 * verified before (zstd frames, tar layout, manifest, rootfs size and sha256), so nothing is
 * decompressed. Any other bundle, corrupt or just new, is read through and verified by the
 * bundle reader while its rootfs is extracted, before QEMU exists; the first one of a digest
 * becomes the base (staging directory renamed into place, so a present directory is complete).
 */
export const BASE_FILE = 'rootfs.ext4'
const VERIFIED_FILE = 'bundles'

export interface BaseImage {
  readonly path: string
  /** sha256 (hex) of the bundle file. */
  readonly bundleSha256: string
  /** True when this call read the whole bundle and verified it (first boot of these bytes). */
  readonly verified: boolean
}

/** The bundle's digest; a missing or unreadable bundle is reported by its path. */
export async function sha256File(file: string): Promise<string> {
  try {
    return await hashFile(file)
  } catch (e) {
    throw fromSystemError(e, file) ?? e
  }
}

async function verifiedDigests(dir: string): Promise<Set<string>> {
  const text = await fs.readFile(path.join(dir, VERIFIED_FILE), 'utf8').catch(() => '')
  return new Set(text.split('\n').filter((l) => /^[0-9a-f]{64}$/.test(l)))
}

export async function ensureBaseImage(imagesRoot: string, bundle: string, manifest: BundleManifest): Promise<BaseImage> {
  const sha = manifest.rootfs.sha256
  const dir = path.join(imagesRoot, sha)
  const file = path.join(dir, BASE_FILE)
  const bundleSha256 = await sha256File(bundle)
  const st = await fs.stat(file).catch(() => undefined)
  if (st !== undefined && (!st.isFile() || st.size !== manifest.rootfs.size)) {
    throw new BaleError('E_STATE', `${file}: ${st.size} bytes where rootfs.size is ${manifest.rootfs.size}; remove ${dir} to extract it again`, { subject: file })
  }
  if (st !== undefined && (await verifiedDigests(dir)).has(bundleSha256)) return { path: file, bundleSha256, verified: false }

  await fs.mkdir(imagesRoot, { recursive: true })
  const staging = path.join(imagesRoot, `.${sha}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`)
  const unregister = registerCleanup(staging)
  try {
    await fs.mkdir(staging, { mode: 0o755 })
    const got = await extractRootfs(bundle, path.join(staging, BASE_FILE))
    if (got.sha256 !== sha) {
      // extractRootfs compares with the manifest it read itself; this guards a bundle replaced
      // on disk between our manifest read and the extraction.
      throw new BaleError('E_DIGEST', `${bundle}: rootfs.ext4: expected sha256 ${sha} got ${got.sha256}`, { subject: bundle })
    }
    if (st !== undefined) {
      // The base was already there (from another bundle file with this rootfs): remember these
      // bytes as verified too. One short O_APPEND write: concurrent boots do not interleave.
      await fs.appendFile(path.join(dir, VERIFIED_FILE), `${bundleSha256}\n`)
      return { path: file, bundleSha256, verified: true }
    }
    // Read-only: the base is shared by every VM of this digest; only overlays are written.
    await fs.chmod(path.join(staging, BASE_FILE), 0o444)
    await fs.writeFile(path.join(staging, VERIFIED_FILE), `${bundleSha256}\n`)
    try {
      await fs.rename(staging, dir)
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e
      // A concurrent boot of the same digest got there first: its copy is as good as ours.
      await fs.appendFile(path.join(dir, VERIFIED_FILE), `${bundleSha256}\n`)
    }
    return { path: file, bundleSha256, verified: true }
  } finally {
    await removeQuietly(staging)
    unregister()
  }
}

/** A per-VM copy-on-write overlay over the base (QEMU reads the base, writes only the overlay). */
export async function createOverlay(base: string, overlay: string): Promise<void> {
  // -F raw: name the backing format explicitly; QEMU refuses to probe it (a raw image could
  // otherwise pass for a qcow2 header and redirect reads).
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay])
}
