import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { removeQuietly } from '../../lib/atomic.js'
import { registerCleanup } from '../../lib/cleanup.js'
import { BaleError } from '../../lib/errors.js'
import { run } from '../../lib/exec.js'
import { extractRootfs } from '../../pipeline/bundle/reader.js'
import type { BundleManifest } from '../../pipeline/bundle/manifest.js'

/**
 * Read-only base images, one per rootfs digest: `<imagesDir>/<sha256>/rootfs.ext4` (mode 0444).
 * Extracted once from the first bundle that needs it (streamed, size and sha256 checked against
 * the manifest by the bundle reader) into a staging directory renamed into place, so a present
 * directory always holds a complete, verified image. Content-addressed: "already there with the
 * right size" means done, whichever bundle file carried it.
 */
export const BASE_FILE = 'rootfs.ext4'

export interface BaseImage {
  readonly path: string
  /** True when this call extracted it (the bundle's rootfs was read and verified just now). */
  readonly extracted: boolean
}

export async function ensureBaseImage(imagesRoot: string, bundle: string, manifest: BundleManifest): Promise<BaseImage> {
  const sha = manifest.rootfs.sha256
  const dir = path.join(imagesRoot, sha)
  const file = path.join(dir, BASE_FILE)
  const st = await fs.stat(file).catch(() => undefined)
  if (st !== undefined) {
    if (st.isFile() && st.size === manifest.rootfs.size) return { path: file, extracted: false }
    throw new BaleError('E_STATE', `${file}: ${st.size} bytes where rootfs.size is ${manifest.rootfs.size}; remove ${dir} to extract it again`, { subject: file })
  }
  await fs.mkdir(imagesRoot, { recursive: true })
  const staging = path.join(imagesRoot, `.${sha}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`)
  const unregister = registerCleanup(staging)
  try {
    await fs.mkdir(staging, { mode: 0o755 })
    const got = await extractRootfs(bundle, path.join(staging, BASE_FILE))
    if (got.sha256 !== sha) {
      // extractRootfs already compares with the manifest it read; this guards a bundle replaced
      // on disk between our manifest read and the extraction.
      throw new BaleError('E_DIGEST', `${bundle}: rootfs.ext4: expected sha256 ${sha} got ${got.sha256}`, { subject: bundle })
    }
    // Read-only: the base is shared by every VM of this digest; only overlays are written.
    await fs.chmod(path.join(staging, BASE_FILE), 0o444)
    try {
      await fs.rename(staging, dir)
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      // A concurrent boot of the same digest got there first: its copy is as good as ours.
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e
      await removeQuietly(staging)
    }
    return { path: file, extracted: true }
  } catch (e) {
    await removeQuietly(staging)
    throw e
  } finally {
    unregister()
  }
}

/** A per-VM copy-on-write overlay over the base (QEMU reads the base, writes only the overlay). */
export async function createOverlay(base: string, overlay: string): Promise<void> {
  // -F raw: name the backing format explicitly; QEMU refuses to probe it (a raw image could
  // otherwise pass for a qcow2 header and redirect reads).
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay])
}
