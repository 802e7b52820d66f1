import os from 'node:os'
import path from 'node:path'

/**
 * Where bale keeps things. Resolved once, from the environment, the way XDG tools do:
 * BALE_DATA_DIR / BALE_CACHE_DIR win (tests and air-gapped installs point them elsewhere);
 * root uses the system locations (/var/lib/bale, /var/cache/bale); everyone else the XDG dirs.
 */
function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0
}

export function dataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.BALE_DATA_DIR) return path.resolve(env.BALE_DATA_DIR)
  if (isRoot()) return '/var/lib/bale'
  return path.join(env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share'), 'bale')
}

export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.BALE_CACHE_DIR) return path.resolve(env.BALE_CACHE_DIR)
  if (isRoot()) return '/var/cache/bale'
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'bale')
}

/** Imported kernels: `<data>/kernels/<kernel_ref>/`. */
export function kernelsDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(dataDir(env), 'kernels')
}

/** Runtime state: one directory per VM, `<data>/vms/<name>/`. */
export function vmsDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(dataDir(env), 'vms')
}

/** Read-only base images, one per bundle digest: `<data>/images/<sha256>/`. */
export function imagesDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(dataDir(env), 'images')
}

/** Registry blob store: an OCI image layout, `<cache>/oci/` (itself a valid --oci-layout source). */
export function ociStoreDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(cacheDir(env), 'oci')
}

/** The repository root (for the guest binary built by `npm run build:guest`). */
export function projectRoot(): string {
  return path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..')
}
