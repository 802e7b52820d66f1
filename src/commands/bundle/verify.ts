import { Args } from '@oclif/core'
import { BaseCommand } from '../../lib/base-command.js'
import { verifyBundle, type VerifyReport } from '../../pipeline/bundle/reader.js'

export default class BundleVerify extends BaseCommand {
  static override summary = 'Check a bundle: zstd frames, tar layout, manifest schema, rootfs sha256, e2fsck.'
  static override description =
    'Exit status 0 when every check passes; otherwise the first failure is printed with the file, member or digest it concerns. ' +
    'rootfs.ext4 is extracted to a temporary file for e2fsck -fn and removed afterwards.'
  static override examples = ['<%= config.bin %> bundle verify demo.tar.zst', '<%= config.bin %> bundle verify demo.tar.zst --json']
  static override args = { file: Args.string({ description: 'Bundle (.tar.zst)', required: true }) }

  public async run(): Promise<VerifyReport> {
    const { args } = await this.parse(BundleVerify)
    const report = await verifyBundle(args.file)
    for (const check of report.checks) this.log(`ok  ${check}`)
    this.log(`${report.file}: ${report.manifest.name} ${report.manifest.version}, ${report.size} bytes, sha256 ${report.sha256}`)
    return report
  }
}
