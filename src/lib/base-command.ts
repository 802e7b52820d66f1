import { Command, Errors, Interfaces } from '@oclif/core'
import { cleanupAllSync } from './cleanup.js'
import { BaleError, ERROR_CODES, fromSystemError, isBaleError } from './errors.js'

/**
 * The one place where errors become exit codes and output. Commands parse their flags into an
 * options object, call one pipeline/runtime/catalog function, and render the typed result;
 * they never call process.exit and never print stacks for expected failures.
 */
export abstract class BaseCommand extends Command {
  static override enableJsonFlag = true

  private signalHandlers: Array<[NodeJS.Signals, () => void]> = []

  public override async init(): Promise<void> {
    await super.init()
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      const handler = (): void => this.onSignal(sig)
      process.once(sig, handler)
      this.signalHandlers.push([sig, handler])
    }
  }

  /** Interrupted: remove registered temporaries, then die by the same signal (shell sees 128+n). */
  protected onSignal(sig: NodeJS.Signals): void {
    cleanupAllSync()
    process.stderr.write(`bale: interrupted (${sig}); partial output removed\n`)
    this.removeSignalHandlers()
    process.kill(process.pid, sig)
  }

  private removeSignalHandlers(): void {
    for (const [sig, h] of this.signalHandlers) process.removeListener(sig, h)
    this.signalHandlers = []
  }

  protected override async finally(err: Error | undefined): Promise<void> {
    this.removeSignalHandlers()
    return super.finally(err)
  }

  protected override async catch(err: Error & { exitCode?: number }): Promise<void> {
    cleanupAllSync()
    const bale = toBaleError(err)
    if (bale === undefined) {
      // Not an expected failure: a bug. Let oclif print it with its stack.
      throw err
    }
    if (this.jsonEnabled()) {
      this.logJson({ error: { code: bale.code, message: bale.message, subject: bale.subject ?? null } })
    } else {
      process.stderr.write(`bale: ${bale.message}\n`)
    }
    process.exitCode = bale.exitCode
  }
}

function toBaleError(err: Error & { exitCode?: number; oclif?: { exit?: number } }): BaleError | undefined {
  if (isBaleError(err)) return err
  const sys = fromSystemError(err, '')
  if (sys) return sys
  // oclif's flag/argument parse errors: one line, usage exit code.
  if (err instanceof Errors.CLIError || (err as { oclif?: unknown }).oclif !== undefined) {
    // oclif wraps some parse errors ("The following error occurred:" / "errors occurred:") around
    // the line that names the flag: keep that line only, one line for the user.
    const lines = stripAnsi(err.message)
      .split('\n')
      .map((l) => l.replace(/^\s*[›»]?\s*/, '').trim())
      .filter((l) => l !== '' && !/^The following errors? occurred:?$/i.test(l) && !/^See more help with/i.test(l))
    // "Parsing --level" is followed by the reason on its own line: one line, flag first.
    const [first, second] = lines
    const line = first !== undefined && /^Parsing --/.test(first) && second !== undefined ? `${first.replace(/^Parsing /, '')}: ${second}` : first
    return new BaleError('E_USAGE', line ?? err.message.trim(), { subject: /--[\w-]+/.exec(line ?? '')?.[0] })
  }
  return undefined
}

function stripAnsi(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\u001b\[[0-9;]*m/g, '')
}

export type Flags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>
export { ERROR_CODES }
