import { Args, Flags } from '@oclif/core'
import { BaseCommand } from '../../lib/base-command.js'
import { DEFAULT_GRACE_MS, stopVm, type StopResult } from '../../runtime/index.js'

export default class RuntimeStop extends BaseCommand {
  static override summary = 'Stop a VM: agent shutdown, then QMP quit, then SIGKILL, each bounded.'
  static override examples = ['<%= config.bin %> runtime stop web', '<%= config.bin %> runtime stop web --timeout 2']

  static override args = { name: Args.string({ description: 'VM name', required: true }) }
  static override flags = {
    timeout: Flags.integer({ char: 't', summary: 'Seconds the entrypoint gets after SIGTERM before SIGKILL', default: DEFAULT_GRACE_MS / 1000, min: 0 }),
  }

  public async run(): Promise<StopResult> {
    const { args, flags } = await this.parse(RuntimeStop)
    const res = await stopVm(args.name, { graceMs: flags.timeout * 1000 })
    this.log(res.name)
    return res
  }
}
