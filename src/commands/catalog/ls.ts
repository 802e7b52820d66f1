import { Flags } from '@oclif/core'
import path from 'node:path'
import { BaseCommand } from '../../lib/base-command.js'
import { defaultCatalogFile } from '../../catalog/defaults.js'
import { listCatalog, type ListedEntry } from '../../catalog/list.js'

export default class CatalogLs extends BaseCommand {
  static override summary = 'List catalog entries: the definitions, a published catalog, or the installed bundles.'
  static override examples = [
    '<%= config.bin %> catalog ls',
    '<%= config.bin %> catalog ls --catalog https://bale.example.com/catalog/',
    '<%= config.bin %> catalog ls --installed --json',
  ]

  static override flags = {
    catalog: Flags.string({ summary: 'Definitions FILE or published http(s) URL (default: the shipped catalog/catalog.json)', helpValue: 'FILE|URL', exclusive: ['installed'] }),
    installed: Flags.boolean({ summary: 'List the bundles installed in the local store' }),
    insecure: Flags.boolean({ summary: 'Allow plain HTTP to a non-loopback host' }),
  }

  public async run(): Promise<{ entries: ListedEntry[] }> {
    const { flags } = await this.parse(CatalogLs)
    const c = flags.catalog
    const entries = await listCatalog(
      flags.installed
        ? { kind: 'installed' }
        : c !== undefined && /^https?:\/\//.test(c)
          ? { kind: 'url', url: c, insecure: flags.insecure }
          : { kind: 'file', path: path.resolve(c ?? defaultCatalogFile()) },
    )
    for (const e of entries) this.log(`${`${e.name}@${e.version}`.padEnd(28)} ${e.kernel_ref.padEnd(30)} ${e.description || e.location}`)
    return { entries }
  }
}
