/**
 * Signals the command receives (Ctrl-C, SIGTERM, SIGHUP), handed to whichever phase of a
 * runtime operation is current: while booting an interrupt aborts the boot (QEMU killed and
 * reaped, state removed); while a foreground VM or an exec runs, the first is forwarded to the
 * guest process and the second stops it. The command owns the process's signal handlers and
 * calls deliver(); the runtime never installs any.
 */
export type InterruptHandler = (sig: NodeJS.Signals, count: number) => void

export class Interrupts {
  private handler: InterruptHandler | undefined
  private count = 0

  /** True when a handler took the signal; false means nobody is listening (default handling applies). */
  deliver(sig: NodeJS.Signals): boolean {
    if (this.handler === undefined) return false
    this.count++
    this.handler(sig, this.count)
    return true
  }

  /** Install the handler of the current phase; returns its removal. Counting restarts per phase. */
  on(handler: InterruptHandler): () => void {
    this.handler = handler
    this.count = 0
    return () => {
      if (this.handler === handler) this.handler = undefined
    }
  }
}
