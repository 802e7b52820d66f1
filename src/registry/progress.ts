import type { MultiBar, SingleBar } from 'cli-progress'
import { createRequire } from 'node:module'
import type { PullEvent } from './pull.js'

// cli-progress is loaded only when there is a terminal to draw on (CI and pipes never need it).
const requireCjs = createRequire(import.meta.url)

/**
 * Pull progress for people: one bar per blob on a terminal, plain lines otherwise (CI logs,
 * pipes), where a redraw would only add noise. Shared by `bale pull` and `make-bundle --image`.
 */
export interface PullProgress {
  onEvent(e: PullEvent): void
  stop(): void
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n / 1024
  let u = 0
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024
    u++
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`
}

/** `sha256:` and the first 12 hex digits: what docker prints, enough to tell layers apart. */
export function shortDigest(d: string): string {
  return d.slice(0, 'sha256:'.length + 12)
}

function line(e: PullEvent): string | undefined {
  switch (e.type) {
    case 'resolved':
      return `${e.ref}: ${e.platform} manifest ${e.manifestDigest}, ${e.layers} layer${e.layers === 1 ? '' : 's'} (${formatBytes(e.bytes)})`
    case 'blob-done':
      if (e.cached) return `${e.role} ${shortDigest(e.digest)}: cached`
      return `${e.role} ${shortDigest(e.digest)}: ${formatBytes(e.size)} downloaded${e.resumedFrom > 0 ? ` (resumed at ${formatBytes(e.resumedFrom)})` : ''}`
    case 'waiting':
      return `${e.role} ${shortDigest(e.digest)}: waiting for ${e.lock} (another bale is downloading it, or one was killed: taken over within 10 s)`
    case 'retry':
      return `retry: ${e.what}: ${e.reason}; try ${e.attempt + 1} in ${(e.delayMs / 1000).toFixed(1)} s`
    default:
      return undefined
  }
}

export function createPullProgress(opts: { stream: NodeJS.WriteStream; env: NodeJS.ProcessEnv }): PullProgress {
  const tty = opts.stream.isTTY === true && opts.env.CI !== 'true' && opts.env.CI !== '1'
  if (!tty) {
    return {
      onEvent: (e) => {
        const l = line(e)
        if (l !== undefined) opts.stream.write(`${l}\n`)
      },
      stop: () => undefined,
    }
  }
  const cliProgress = requireCjs('cli-progress') as typeof import('cli-progress')
  const multi: MultiBar = new cliProgress.MultiBar(
    {
      stream: opts.stream,
      hideCursor: true,
      clearOnComplete: false,
      format: '{label} [{bar}] {percentage}% {done}/{all}',
      barsize: 30,
    },
    cliProgress.Presets.shades_classic,
  )
  const bars = new Map<string, SingleBar>()
  const barFor = (digest: string, role: string, size: number): SingleBar => {
    let bar = bars.get(digest)
    if (bar === undefined) {
      bar = multi.create(size, 0, { label: `${role.padEnd(6)} ${shortDigest(digest)}`, done: formatBytes(0), all: formatBytes(size) })
      bars.set(digest, bar)
    }
    return bar
  }
  return {
    onEvent: (e) => {
      switch (e.type) {
        case 'blob-start':
          barFor(e.digest, e.role, e.size).update(e.offset, { done: formatBytes(e.offset) })
          break
        case 'blob-progress':
          barFor(e.digest, e.role, e.size).update(e.bytes, { done: formatBytes(e.bytes) })
          break
        case 'blob-done': {
          const bar = barFor(e.digest, e.role, e.size)
          bar.update(e.size, { done: e.cached ? 'cached' : formatBytes(e.size) })
          bar.stop()
          break
        }
        default: {
          const l = line(e)
          if (l !== undefined) multi.log(`${l}\n`)
        }
      }
    },
    stop: () => multi.stop(),
  }
}
