import { BaleError } from './errors.js'

const UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }

/**
 * Parse a size flag the way mkfs/qemu-img users write it: `512M`, `2G`, `1.5G`, `4096`
 * (binary units; an optional trailing `B`/`iB`). Anything else names the flag in the error.
 */
export function parseSize(value: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(value.trim())
  if (!m) throw new BaleError('E_USAGE', `${flag}: invalid size '${value}' (e.g. 512M, 2G)`, { subject: flag })
  const bytes = Math.round(Number(m[1]) * UNITS[(m[2] ?? '').toUpperCase()]!)
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new BaleError('E_USAGE', `${flag}: size '${value}' out of range`, { subject: flag })
  return bytes
}
