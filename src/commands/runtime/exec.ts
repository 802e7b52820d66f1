import { Args, Flags } from '@oclif/core'
import { BaseCommand } from '../../lib/base-command.js'
import { BaleError } from '../../lib/errors.js'
import { execInVm, Interrupts, resolveEnv, type ExecOptions } from '../../runtime/index.js'

export default class RuntimeExec extends BaseCommand {
  static override summary = 'Run a command in a running VM through its agent; the exit code is the command\'s.'
  static override examples = [
    '<%= config.bin %> runtime exec web -- cat /etc/os-release',
    'echo hello | <%= config.bin %> runtime exec -i web -- tr a-z A-Z',
  ]
  // stdout and stderr are the command's own.
  static override enableJsonFlag = false

  static override args = { name: Args.string({ description: 'VM name', required: true }) }
  static override flags = {
    interactive: Flags.boolean({ char: 'i', summary: "Forward stdin to the command (otherwise it reads /dev/null)" }),
    env: Flags.string({ char: 'e', summary: 'Set an environment variable', helpValue: 'KEY=VAL', multiple: true, multipleNonGreedy: true, default: [] }),
    user: Flags.string({ char: 'u', summary: "User: name, uid or uid:gid (default: the image's)" }),
    workdir: Flags.string({ char: 'w', summary: "Working directory (default: the image's)" }),
  }

  private readonly interrupts = new Interrupts()

  public async run(): Promise<void> {
    // Everything after `--` is the command, verbatim.
    // (Taken before parse(), which replaces this.argv.)
    const dd = this.argv.indexOf('--')
    const argv = dd < 0 ? [] : this.argv.slice(dd + 1)
    const { args, flags } = await this.parse(RuntimeExec, dd < 0 ? this.argv : this.argv.slice(0, dd))
    if (argv.length === 0) throw new BaleError('E_USAGE', 'no command: bale runtime exec NAME -- CMD [ARG…]', { subject: 'CMD' })
    const opts: ExecOptions = Object.freeze({
      name: args.name,
      argv: Object.freeze(argv),
      interactive: flags.interactive,
      env: Object.freeze(resolveEnv(flags.env, process.env)),
      user: flags.user,
      workdir: flags.workdir,
    })
    const res = await execInVm(opts, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, interrupts: this.interrupts })
    process.exitCode = res.exitCode
  }

  protected override onSignal(sig: NodeJS.Signals): void {
    if (!this.interrupts.deliver(sig)) return super.onSignal(sig)
    process.once(sig, () => this.onSignal(sig))
  }
}
