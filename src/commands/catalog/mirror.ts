import { Args, Flags } from '@oclif/core'
import { BaseCommand } from '../../lib/base-command.js'
import { defaultBuildDir } from '../../catalog/defaults.js'
import { mirrorCatalog, type MirrorResult } from '../../catalog/publish.js'

export default class CatalogMirror extends BaseCommand {
  static override summary = 'Write an air-gap mirror: bundles, their kernels, index.json and SHA256SUMS, for `bale install --from`.'
  static override description =
    'The directory can be carried on removable media (or served over HTTP: it is also a publish directory). ' +
    '`sha256sum -c SHA256SUMS` checks it with standard tools; the printed sha256 of SHA256SUMS can be passed to ' +
    '`bale install --sha256sums` to pin the whole mirror.'
  static override examples = ['<%= config.bin %> catalog mirror --to /media/usb/bale', '<%= config.bin %> catalog mirror --to /media/usb/bale debian@12 --json']
  static override strict = false

  static override args = {
    names: Args.string({ description: 'NAME or NAME@VERSION to mirror (default: everything built)', required: false }),
  }

  static override flags = {
    to: Flags.string({ summary: 'Mirror directory', required: true, helpValue: 'DIR' }),
    from: Flags.string({ summary: 'Build directory (default: <cache>/catalog/build)', helpValue: 'DIR' }),
    quiet: Flags.boolean({ char: 'q', summary: 'No progress on stderr' }),
  }

  public async run(): Promise<MirrorResult> {
    const { argv, flags } = await this.parse(CatalogMirror)
    const quiet = flags.quiet || this.jsonEnabled()
    const res = await mirrorCatalog(
      Object.freeze({
        from: flags.from ?? defaultBuildDir(process.env),
        selectors: argv as string[],
        to: flags.to,
        onEvent: quiet ? undefined : (e: { what: string; bytes: number }) => process.stderr.write(`copy ${e.what} (${e.bytes} bytes)\n`),
      }),
    )
    for (const b of res.bundles) this.log(`${b.status.padEnd(9)} ${b.name}@${b.version} ${b.url}`)
    for (const k of res.kernels) this.log(`${k.status.padEnd(9)} kernel ${k.ref}`)
    this.log(`SHA256SUMS sha256 ${res.sha256sums}`)
    return res
  }
}
