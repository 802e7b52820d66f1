import path from 'node:path'
import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import { parseOciTarget } from './artifact.js'
import { loadBuilt } from './build.js'
import { type DirPublishResult, publishToDir } from './publish-dir.js'
import { type OciPublishResult, publishToRegistry } from './oci.js'

/**
 * `bale catalog publish` and `bale catalog mirror`: take built bundles from a build directory
 * and put them where consumers get them. A publish target is a directory (served over HTTP) or
 * `oci://HOST/REPO` (a registry); a mirror is a directory with kernels and SHA256SUMS, for
 * `bale install --from` on a host without network.
 */
export interface PublishOptions {
  /** Build directory (`bale catalog build --out`). */
  readonly from: string
  /** NAME or NAME@VERSION; empty: everything built. */
  readonly selectors: readonly string[]
  /** A directory, or oci://HOST/REPO. */
  readonly to: string
  /** Carry the bundles' kernels too (default true). */
  readonly kernels?: boolean
  readonly creds?: string
  readonly insecure?: boolean
  readonly env?: NodeJS.ProcessEnv
  readonly onEvent?: (e: { type: 'copy' | 'push'; what: string; bytes: number }) => void
}

export type PublishResult = ({ kind: 'dir' } & DirPublishResult) | ({ kind: 'oci' } & OciPublishResult)

export async function publishCatalog(opts: PublishOptions): Promise<PublishResult> {
  const bundles = await loadBuilt(path.resolve(opts.from), opts.selectors)
  if (opts.to.startsWith('oci://')) {
    const res = await publishToRegistry({
      base: parseOciTarget(opts.to),
      bundles,
      kernels: opts.kernels ?? true,
      creds: opts.creds,
      insecure: opts.insecure,
      env: opts.env,
      onEvent: opts.onEvent,
    })
    return { kind: 'oci', ...res }
  }
  const res = await publishToDir({ dir: opts.to, bundles, kernels: opts.kernels ?? true, checksums: false, env: opts.env, onEvent: opts.onEvent })
  return { kind: 'dir', ...res }
}

export interface MirrorOptions {
  readonly from: string
  readonly selectors: readonly string[]
  readonly to: string
  readonly env?: NodeJS.ProcessEnv
  readonly onEvent?: (e: { type: 'copy'; what: string; bytes: number }) => void
}

export interface MirrorResult extends DirPublishResult {
  /** sha256 of SHA256SUMS, to pin with `bale install --sha256sums` on the isolated host. */
  readonly sha256sums: string
}

export async function mirrorCatalog(opts: MirrorOptions): Promise<MirrorResult> {
  const bundles = await loadBuilt(path.resolve(opts.from), opts.selectors)
  const res = await publishToDir({ dir: opts.to, bundles, kernels: true, checksums: true, env: opts.env, onEvent: opts.onEvent })
  const sums = await fs.readFile(res.checksums as string)
  return { ...res, sha256sums: createHash('sha256').update(sums).digest('hex') }
}
