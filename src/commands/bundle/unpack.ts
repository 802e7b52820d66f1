import { Args } from '@oclif/core'
import path from 'node:path'
import { BaseCommand } from '../../lib/base-command.js'
import { MANIFEST_FILE } from '../../pipeline/bundle/manifest.js'
import { unpackBundle } from '../../pipeline/bundle/reader.js'

export interface BundleUnpackJson {
  manifest: string
  rootfs: string
}

export default class BundleUnpack extends BaseCommand {
  static override summary = 'Extract manifest.json and rootfs.ext4 from a bundle into a directory.'
  static override description = 'DIR is created if needed. rootfs.ext4 is checked against the sha256 in the manifest before either file appears in DIR.'
  static override examples = ['<%= config.bin %> bundle unpack demo.tar.zst ./demo']
  static override args = {
    file: Args.string({ description: 'Bundle (.tar.zst)', required: true }),
    dir: Args.string({ description: 'Directory to extract into', required: true }),
  }

  public async run(): Promise<BundleUnpackJson> {
    const { args } = await this.parse(BundleUnpack)
    const res = await unpackBundle(args.file, args.dir)
    const out = { manifest: path.join(args.dir, MANIFEST_FILE), rootfs: res.rootfs }
    this.log(out.manifest)
    this.log(out.rootfs)
    return out
  }
}
