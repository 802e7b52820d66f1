import { Args, Flags } from '@oclif/core'
import path from 'node:path'
import { BaseCommand } from '../../lib/base-command.js'
import { BaleError } from '../../lib/errors.js'
import { defaultInitBinary, guestVersion } from '../../lib/guest.js'
import { buildCatalog, type CatalogBuildEvent, type BuiltEntry } from '../../catalog/build.js'
import { defaultBuildDir, defaultCatalogFile, CATALOG_ZSTD_LEVEL } from '../../catalog/defaults.js'

export interface CatalogBuildJson {
  out: string
  built: number
  cached: number
  entries: BuiltEntry[]
}

export default class CatalogBuild extends BaseCommand {
  static override summary = 'Build catalog entries into bundles; unchanged entries are not rebuilt.'
  static override description =
    'Each entry is built with make-bundle from its pinned source image. A build is keyed by its inputs (source digest, ' +
    'entry fields, zstd level, guest binary, bale version): re-running with the same inputs reports the entry as cached.'
  static override examples = ['<%= config.bin %> catalog build --out build/catalog --json', '<%= config.bin %> catalog build debian alpine --catalog catalog/catalog.json']
  static override strict = false

  static override args = {
    names: Args.string({ description: 'Entries to build (default: all)', required: false }),
  }

  static override flags = {
    catalog: Flags.string({ summary: 'Catalog definitions (default: the catalog/catalog.json shipped with bale)', helpValue: 'FILE' }),
    out: Flags.string({ char: 'o', summary: 'Build directory (default: <cache>/catalog/build)', helpValue: 'DIR' }),
    level: Flags.integer({ summary: 'zstd level for the bundles', min: 1, max: 19, default: CATALOG_ZSTD_LEVEL }),
    creds: Flags.string({ summary: 'Registry credentials for the sources (or BALE_REGISTRY_CREDS)', helpValue: 'USER:PASSWORD' }),
    insecure: Flags.boolean({ summary: 'Allow plain HTTP to non-loopback source registries' }),
    force: Flags.boolean({ summary: 'Rebuild even if the inputs are unchanged' }),
    tmpdir: Flags.string({ summary: 'Where to stage images (default: $TMPDIR)', helpValue: 'DIR' }),
    'init-binary': Flags.string({ summary: 'Guest init/agent binary to inject', hidden: true }),
    quiet: Flags.boolean({ char: 'q', summary: 'No progress on stderr' }),
  }

  public async run(): Promise<CatalogBuildJson> {
    const { argv, flags } = await this.parse(CatalogBuild)
    const env = process.env
    const sde = env.SOURCE_DATE_EPOCH
    if (sde !== undefined && !/^\d+$/.test(sde)) throw new BaleError('E_USAGE', `SOURCE_DATE_EPOCH: not a number: '${sde}'`, { subject: 'SOURCE_DATE_EPOCH' })
    const initBinary = flags['init-binary'] ? path.resolve(flags['init-binary']) : defaultInitBinary(env)
    const out = path.resolve(flags.out ?? defaultBuildDir(env))
    const quiet = flags.quiet || this.jsonEnabled()
    const res = await buildCatalog(
      Object.freeze({
        catalogFile: path.resolve(flags.catalog ?? defaultCatalogFile()),
        names: argv as string[],
        outDir: out,
        level: flags.level,
        initBinary,
        agentVersion: await guestVersion(initBinary),
        baleVersion: this.config.version,
        tmpDir: flags.tmpdir ? path.resolve(flags.tmpdir) : undefined,
        sourceDateEpoch: sde === undefined ? undefined : Number(sde),
        creds: flags.creds,
        insecure: flags.insecure,
        force: flags.force,
      }),
      quiet ? undefined : (e) => progress(e),
    )
    for (const e of res.entries) this.log(`${e.status.padEnd(6)} ${e.name}@${e.version} ${e.path} ${e.sha256}`)
    return {
      out: res.out,
      built: res.entries.filter((e) => e.status === 'built').length,
      cached: res.entries.filter((e) => e.status === 'cached').length,
      entries: [...res.entries],
    }
  }
}

function progress(e: CatalogBuildEvent): void {
  if (e.type === 'start') process.stderr.write(`building ${e.name}@${e.version} from ${e.source}\n`)
  else if (e.type === 'stage' && e.event.stage === 'resolve') process.stderr.write(`  ${e.name}: ${e.event.layers} layer(s), ${e.event.platform}\n`)
  else if (e.type === 'stage' && e.event.stage === 'ext4') process.stderr.write(`  ${e.name}: ext4 ${Math.ceil(e.event.sizeBytes / 1048576)} MiB\n`)
}
