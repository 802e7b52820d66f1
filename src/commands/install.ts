import { Args, Flags } from '@oclif/core'
import { BaseCommand } from '../lib/base-command.js'
import { installFromMirror, type InstallResult } from '../catalog/install.js'

export default class Install extends BaseCommand {
  static override summary = 'Install bundles and their kernels from a mirror directory, with no network access.'
  static override description =
    'Every file is checked against the mirror\'s SHA256SUMS and index.json (size, sha256, ssri integrity) while it is copied ' +
    'into the local store; nothing is installed unless everything matches. `bale runtime boot NAME` then boots it.'
  static override examples = ['<%= config.bin %> install --from /media/usb/bale debian', '<%= config.bin %> install --from /media/usb/bale debian@12 alpine --sha256sums 3f…']
  static override strict = false

  static override args = {
    bundles: Args.string({ required: true, description: 'NAME or NAME@VERSION, one or more' }),
  }

  static override flags = {
    from: Flags.string({ summary: 'Mirror directory written by `bale catalog mirror`', required: true, helpValue: 'DIR' }),
    sha256sums: Flags.string({ summary: 'Expected sha256 of the mirror\'s SHA256SUMS (as `catalog mirror` printed it)', helpValue: 'HEX' }),
  }

  public async run(): Promise<InstallResult> {
    const { argv, flags } = await this.parse(Install)
    const res = await installFromMirror(Object.freeze({ from: flags.from, selectors: argv as string[], ...(flags.sha256sums === undefined ? {} : { sumsSha256: flags.sha256sums }) }))
    for (const k of res.kernels) this.log(`${k.status.padEnd(9)} kernel ${k.ref}`)
    for (const b of res.bundles) this.log(`${b.status.padEnd(9)} ${b.name}@${b.version} ${b.path}`)
    return res
  }
}
