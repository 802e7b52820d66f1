import { promises as fs } from 'node:fs'
import { StringDecoder } from 'node:string_decoder'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseExitLine } from '../state/store.js'

/**
 * The serial console carries three kinds of lines: the kernel's (`[    1.234567] …`, few with
 * `quiet`), the guest init's (`bale-init: …`), and the entrypoint's output (stage 2 gives the
 * console to the main process as stdout and stderr). The filter separates them while streaming,
 * passing entrypoint output through as soon as a line's start shows it is neither of the other
 * two, so a prompt without a newline is not held back. The tty turns `\n` into `\r\n`; that `\r`
 * is removed.
 */
export interface ConsoleSink {
  /** Entrypoint output. */
  output(text: string): void
  /** A complete `bale-init: …` line (without the prefix and newline). */
  guest?(line: string): void
  /** A complete kernel line; dropped when absent. */
  kernel?(line: string): void
}

const GUEST_PREFIX = 'bale-init: '
/** The start of a printk timestamp: `[`, its spaces, digits and dot, and the `]` before the space that decides. */
const PRINTK_PARTIAL = /^\[[ 0-9.]*\]?$/
const PRINTK = /^\[ *[0-9]+\.[0-9]+\] /

type Mode = 'start' | 'pass' | 'guest' | 'kernel'

export class ConsoleFilter {
  private mode: Mode = 'start'
  private line = ''
  /** The end of a passed-through piece that may be the start of `bale-init: `. */
  private held = ''
  /** A `\r` at the end of a chunk: dropped if `\n` follows, emitted otherwise. */
  private cr = false
  private readonly decoder = new StringDecoder('utf8')

  constructor(private readonly sink: ConsoleSink) {}

  push(chunk: Buffer | string): void {
    this.feed(typeof chunk === 'string' ? chunk : this.decoder.write(chunk))
  }

  /** End of the log: flush whatever line is pending. */
  end(): void {
    this.feed(this.decoder.end())
    if (this.cr) this.emitText('\r')
    this.cr = false
    if (this.held !== '') this.sink.output(this.held)
    this.held = ''
    if (this.line !== '') {
      if (this.mode === 'guest') this.sink.guest?.(this.line.slice(GUEST_PREFIX.length))
      else if (this.mode === 'kernel') this.sink.kernel?.(this.line)
      else this.sink.output(this.line)
    }
    this.line = ''
    this.mode = 'start'
  }

  private feed(text: string): void {
    let i = 0
    while (i < text.length) {
      if (this.cr) {
        this.cr = false
        if (text[i] !== '\n') this.emitText('\r')
      }
      const nl = text.indexOf('\n', i)
      const end = nl < 0 ? text.length : nl
      let piece = text.slice(i, end)
      if (nl < 0 && piece.endsWith('\r')) {
        piece = piece.slice(0, -1)
        this.cr = true
      } else if (nl >= 0 && piece.endsWith('\r')) {
        piece = piece.slice(0, -1)
      }
      this.emitText(piece)
      if (nl >= 0) this.newline()
      i = nl < 0 ? text.length : nl + 1
    }
  }

  /** Text within one line (no `\n`). */
  private emitText(piece: string): void {
    if (piece === '') return
    if (this.mode === 'pass') {
      this.passText(this.held + piece)
      return
    }
    this.line += piece
    if (this.mode === 'start') this.decide()
  }

  /**
   * Entrypoint output mid-line. stage 2's messages start where the entrypoint left the cursor:
   * after `printf "no newline"` its `bale-init: exit status 3` shares that line. So the prefix is
   * looked for here too, and a piece ending in the first characters of it is held back until the
   * next piece shows whether the prefix follows.
   */
  private passText(text: string): void {
    this.held = ''
    const at = text.indexOf(GUEST_PREFIX)
    if (at >= 0) {
      if (at > 0) this.sink.output(text.slice(0, at))
      this.mode = 'guest'
      this.line = text.slice(at)
      return
    }
    for (let n = Math.min(GUEST_PREFIX.length - 1, text.length); n > 0; n--) {
      if (GUEST_PREFIX.startsWith(text.slice(text.length - n))) {
        this.held = text.slice(text.length - n)
        text = text.slice(0, text.length - n)
        break
      }
    }
    if (text !== '') this.sink.output(text)
  }

  private decide(): void {
    const l = this.line
    if (l.startsWith(GUEST_PREFIX)) this.mode = 'guest'
    else if (PRINTK.test(l)) this.mode = 'kernel'
    else if (GUEST_PREFIX.startsWith(l) || PRINTK_PARTIAL.test(l)) return // not decidable yet
    else {
      this.mode = 'pass'
      this.line = ''
      this.passText(l)
    }
  }

  private newline(): void {
    switch (this.mode) {
      case 'pass':
        this.sink.output(`${this.held}\n`)
        this.held = ''
        break
      case 'guest':
        this.sink.guest?.(this.line.slice(GUEST_PREFIX.length))
        break
      case 'kernel':
        this.sink.kernel?.(this.line)
        break
      case 'start':
        // A short line that never became decidable ("[", "bale") is entrypoint output.
        this.sink.output(`${this.line}\n`)
        break
    }
    this.line = ''
    this.mode = 'start'
  }
}

/** stage 2's exit report (`exit status N` / `signal N`) as an exit code, or undefined for other guest lines. */
export function exitCodeOfGuestLine(line: string): number | undefined {
  return parseExitLine(`${GUEST_PREFIX}${line}`) ?? undefined
}

/** How often a followed log is polled: console output is for people; 50 ms is below what they notice. */
const POLL_MS = 50
/** Read size per poll: bounded memory whatever the log's size. */
const READ_CHUNK = 64 * 1024

/**
 * Read a growing file from `offset`, handing each chunk to `onChunk`, until `stop()` resolves
 * (then the rest is read once more, so nothing written before the stop is lost). Without `stop`
 * it reads to the current end and returns.
 */
export async function tailFile(file: string, onChunk: (b: Buffer) => void, stop?: Promise<unknown>, offset = 0): Promise<number> {
  let stopped = stop === undefined
  void stop?.then(
    () => (stopped = true),
    () => (stopped = true),
  )
  let fh: fs.FileHandle | undefined
  const buf = Buffer.alloc(READ_CHUNK)
  let pos = offset
  try {
    for (;;) {
      if (fh === undefined) fh = await fs.open(file, 'r').catch(() => undefined)
      const wasStopped = stopped
      if (fh !== undefined) {
        for (;;) {
          const { bytesRead } = await fh.read(buf, 0, READ_CHUNK, pos)
          if (bytesRead === 0) break
          pos += bytesRead
          onChunk(Buffer.from(buf.subarray(0, bytesRead)))
        }
      }
      if (wasStopped) return pos
      await sleep(POLL_MS)
    }
  } finally {
    await fh?.close()
  }
}
