import { Args, Flags } from '@oclif/core'
import { BaseCommand } from '../../lib/base-command.js'
import { Interrupts, vmLogs } from '../../runtime/index.js'

export default class RuntimeLogs extends BaseCommand {
  static override summary = "Print a VM's console: the entrypoint's output and the guest init's messages."
  static override examples = ['<%= config.bin %> runtime logs web', '<%= config.bin %> runtime logs -f web']
  // The output is the log itself.
  static override enableJsonFlag = false

  static override args = { name: Args.string({ description: 'VM name', required: true }) }
  static override flags = {
    follow: Flags.boolean({ char: 'f', summary: 'Keep printing until the VM stops (Ctrl-C ends it)' }),
    all: Flags.boolean({ summary: 'Include kernel messages' }),
  }

  private readonly interrupts = new Interrupts()

  public async run(): Promise<void> {
    const { args, flags } = await this.parse(RuntimeLogs)
    await vmLogs({ name: args.name, follow: flags.follow, all: flags.all }, { stdout: process.stdout, interrupts: this.interrupts })
  }

  protected override onSignal(sig: NodeJS.Signals): void {
    if (!this.interrupts.deliver(sig)) super.onSignal(sig)
  }
}
