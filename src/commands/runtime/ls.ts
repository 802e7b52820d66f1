import { BaseCommand } from '../../lib/base-command.js'
import { listVms, type VmSummary } from '../../runtime/index.js'

export default class RuntimeLs extends BaseCommand {
  static override summary = 'List VMs (dead ones are marked stopped on the way).'
  static override examples = ['<%= config.bin %> runtime ls', '<%= config.bin %> runtime ls --json']

  public async run(): Promise<VmSummary[]> {
    await this.parse(RuntimeLs)
    const vms = await listVms(undefined, (m) => process.stderr.write(`bale: warning: ${m}\n`))
    const table = [['NAME', 'STATUS', 'BUNDLE', 'PID', 'ACCEL', 'PORTS', 'CREATED']]
    for (const v of vms) {
      const status = v.status === 'stopped' && v.exitCode !== null ? `stopped (${v.exitCode})` : v.status
      table.push([v.name, status, v.bundle, v.pid === null ? '' : String(v.pid), v.accel, v.ports.join(',') || '', v.created])
    }
    const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)))
    for (const row of table) this.log(row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  '))
    return vms
  }
}
