import { BaseCommand } from '../../lib/base-command.js'
import { listKernels } from '../../runtime/kernel/index.js'

export interface KernelLsEntry {
  ref: string
  default: boolean
  release: string | null
  version: string | null
  modules: string[]
  source: string | null
  created: string | null
  dir: string
  error: string | null
}

export default class KernelLs extends BaseCommand {
  static override summary = 'List imported kernels.'
  static override examples = ['<%= config.bin %> kernel ls', '<%= config.bin %> kernel ls --json']

  public async run(): Promise<KernelLsEntry[]> {
    await this.parse(KernelLs)
    const rows: KernelLsEntry[] = (await listKernels()).map((k) => ({
      ref: k.ref,
      default: k.default,
      release: k.info?.release ?? null,
      version: k.info?.version ?? null,
      modules: k.info?.modules.map((m) => m.name) ?? [],
      source: k.info?.source.file ?? null,
      created: k.info?.created ?? null,
      dir: k.dir,
      error: k.error ?? null,
    }))
    if (rows.length === 0) {
      this.log('no kernels imported; run: bale kernel import --deb <linux-image-…deb> --default')
      return rows
    }
    const table = [['REF', 'DEFAULT', 'RELEASE', 'MODULES', 'SOURCE', 'CREATED']]
    for (const r of rows) {
      table.push(
        r.error === null
          ? [r.ref, r.default ? '*' : '', r.release ?? '', String(r.modules.length), r.source ?? '', r.created ?? '']
          : [r.ref, r.default ? '*' : '', `broken: ${r.error}`, '', '', ''],
      )
    }
    const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)))
    for (const row of table) this.log(row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  '))
    return rows
  }
}
