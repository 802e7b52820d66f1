import { Args, Flags } from '@oclif/core'
import { BaseCommand } from '../../lib/base-command.js'
import { removeVm, type RemoveResult } from '../../runtime/index.js'

export default class RuntimeRm extends BaseCommand {
  static override summary = "Remove a stopped VM's state (overlay, logs, record)."
  static override examples = ['<%= config.bin %> runtime rm web', '<%= config.bin %> runtime rm --force web']

  static override args = { name: Args.string({ description: 'VM name', required: true }) }
  static override flags = {
    force: Flags.boolean({ char: 'f', summary: 'Kill the VM first if it is running' }),
  }

  public async run(): Promise<RemoveResult> {
    const { args, flags } = await this.parse(RuntimeRm)
    const res = await removeVm({ name: args.name, force: flags.force })
    this.log(res.name)
    return res
  }
}
