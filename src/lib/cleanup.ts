import { rmSync } from 'node:fs'

/**
 * Paths to remove if the process is interrupted. Work registers its temporaries and staging
 * directories here and unregisters them once they are committed or removed. On SIGINT/SIGTERM
 * the base command removes them synchronously before exiting, so an interrupted build leaves
 * nothing half-written at the destination and no staging tree behind.
 */
const pending = new Set<string>()

export function registerCleanup(p: string): () => void {
  pending.add(p)
  return () => {
    pending.delete(p)
  }
}

export function cleanupAllSync(): void {
  for (const p of pending) {
    try {
      rmSync(p, { recursive: true, force: true })
    } catch {
      // Best effort: a path we cannot remove is reported by nothing; the process is exiting.
    }
  }
  pending.clear()
}
