import { rmSync } from 'node:fs'

/**
 * Paths to remove if the process is interrupted. Work registers its temporaries and staging
 * directories here and unregisters them once they are committed or removed. On SIGINT/SIGTERM
 * the base command removes them synchronously before exiting, so an interrupted build leaves
 * nothing half-written at the destination and no staging tree behind.
 */
const pending = new Set<string>()
/** Called first, synchronously: stop other threads writing into the paths about to be removed. */
const stoppers = new Set<() => void>()

export function registerCleanup(p: string): () => void {
  pending.add(p)
  return () => {
    pending.delete(p)
  }
}

/**
 * Register `stop`, run on interrupt before anything is removed: a thread still creating files in
 * a staging directory would race its removal. It must return only once that thread has stopped.
 */
export function registerStopper(stop: () => void): () => void {
  stoppers.add(stop)
  return () => {
    stoppers.delete(stop)
  }
}

export function cleanupAllSync(): void {
  for (const stop of stoppers) {
    try {
      stop()
    } catch {
      // Best effort, as below.
    }
  }
  stoppers.clear()
  for (const p of pending) {
    try {
      rmSync(p, { recursive: true, force: true })
    } catch {
      // Best effort: a path we cannot remove is reported by nothing; the process is exiting.
    }
  }
  pending.clear()
}
