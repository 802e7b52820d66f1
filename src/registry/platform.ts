import { BaleError } from '../lib/errors.js'
import type { Descriptor, ImageIndex } from './manifest.js'

/**
 * Platforms (`os/arch[/variant]`) and choosing one manifest from an index, with containerd's
 * normalization (platforms/database.go): aliases such as x86_64 and aarch64 map to the OCI
 * names, and an absent variant means the architecture's baseline (arm64 → v8, arm → v7,
 * amd64 → v1), so `linux/arm64` and `linux/arm64/v8` name the same thing.
 */
export interface Platform {
  readonly os: string
  readonly architecture: string
  readonly variant?: string
}

export const DEFAULT_PLATFORM = 'linux/amd64'

const ARCH_ALIASES: Record<string, { architecture: string; variant?: string }> = {
  x86_64: { architecture: 'amd64' },
  'x86-64': { architecture: 'amd64' },
  aarch64: { architecture: 'arm64' },
  armhf: { architecture: 'arm', variant: 'v7' },
  armel: { architecture: 'arm', variant: 'v6' },
  i386: { architecture: '386' },
  i686: { architecture: '386' },
}

const BASELINE_VARIANT: Record<string, string> = { arm64: 'v8', arm: 'v7', amd64: 'v1' }

export function normalizePlatform(p: Platform): Platform {
  const os = p.os.toLowerCase() === 'macos' ? 'darwin' : p.os.toLowerCase()
  let architecture = p.architecture.toLowerCase()
  let variant = p.variant?.toLowerCase() || undefined
  const alias = ARCH_ALIASES[architecture]
  if (alias !== undefined) {
    architecture = alias.architecture
    variant = variant ?? alias.variant
  }
  if (architecture === 'arm64' && variant === '8') variant = 'v8'
  if (architecture === 'arm' && variant !== undefined && /^\d$/.test(variant)) variant = `v${variant}`
  // The baseline is stored as "no variant" so that equality is plain comparison.
  if (variant !== undefined && BASELINE_VARIANT[architecture] === variant) variant = undefined
  return variant === undefined ? { os, architecture } : { os, architecture, variant }
}

export function parsePlatform(s: string): Platform {
  const parts = s.split('/')
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[A-Za-z0-9_.-]+$/.test(p))) {
    throw new BaleError('E_USAGE', `--platform '${s}': want OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm/v7`, { subject: '--platform' })
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined]
  // Kept as written (for messages); every comparison goes through samePlatform, which normalizes.
  return { os, architecture, ...(variant === undefined ? {} : { variant }) }
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`
}

export function samePlatform(a: Platform, b: Platform): boolean {
  const x = normalizePlatform(a)
  const y = normalizePlatform(b)
  return x.os === y.os && x.architecture === y.architecture && x.variant === y.variant
}

/**
 * Entries that are not runnable images: BuildKit's attestation manifests (annotated
 * `vnd.docker.reference.type: attestation-manifest`, platform unknown/unknown) and anything
 * without a platform.
 */
export function isRunnableEntry(d: Descriptor): boolean {
  if (d.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest') return false
  if (d.platform === undefined) return false
  return d.platform.os !== 'unknown' && d.platform.architecture !== 'unknown'
}

/** Pick the manifest for `want` from an index; `where` names the index in errors. */
export function selectPlatform(index: ImageIndex, want: Platform, where: string): Descriptor {
  const runnable = index.manifests.filter(isRunnableEntry)
  const match = runnable.find((d) => d.platform !== undefined && samePlatform(d.platform, want))
  if (match !== undefined) return match
  const available = [...new Set(runnable.map((d) => formatPlatform(d.platform as Platform)))]
  throw new BaleError(
    'E_NOT_FOUND',
    `${where}: no ${formatPlatform(want)} image in the index (available: ${available.length === 0 ? 'none' : available.join(', ')}); choose one with --platform`,
    { subject: where },
  )
}
