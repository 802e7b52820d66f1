import { Args, Flags } from '@oclif/core'
import { BaseCommand } from '../../lib/base-command.js'
import { defaultBuildDir } from '../../catalog/defaults.js'
import { publishCatalog, type PublishResult } from '../../catalog/publish.js'

export default class CatalogPublish extends BaseCommand {
  static override summary = 'Publish built bundles (and their kernels) to a directory served over HTTP, or to a registry as OCI artifacts.'
  static override description =
    'To a directory: bundles, kernels and index.json (name, version, url, size, ssri integrity, kernel_ref, created), ' +
    'index written last and atomically. To oci://HOST/REPO: each bundle as HOST/REPO/<name>:<version> (and :latest), ' +
    'kernels as HOST/REPO/kernels:<ref>. Publishing the same bundles again changes nothing.'
  static override examples = [
    '<%= config.bin %> catalog publish --to /srv/www/bale',
    '<%= config.bin %> catalog publish --to oci://registry.example.com/bale debian --json',
  ]
  static override strict = false

  static override args = {
    names: Args.string({ description: 'NAME or NAME@VERSION to publish (default: everything built)', required: false }),
  }

  static override flags = {
    to: Flags.string({ summary: 'Target directory, or oci://HOST/REPO', required: true, helpValue: 'DIR|oci://HOST/REPO' }),
    from: Flags.string({ summary: 'Build directory (default: <cache>/catalog/build)', helpValue: 'DIR' }),
    'no-kernels': Flags.boolean({ summary: "Do not publish the bundles' kernels" }),
    creds: Flags.string({ summary: 'Registry credentials (or BALE_REGISTRY_CREDS)', helpValue: 'USER:PASSWORD' }),
    insecure: Flags.boolean({ summary: 'Allow plain HTTP to a non-loopback registry' }),
    quiet: Flags.boolean({ char: 'q', summary: 'No progress on stderr' }),
  }

  public async run(): Promise<PublishResult> {
    const { argv, flags } = await this.parse(CatalogPublish)
    const quiet = flags.quiet || this.jsonEnabled()
    const res = await publishCatalog(
      Object.freeze({
        from: flags.from ?? defaultBuildDir(process.env),
        selectors: argv as string[],
        to: flags.to,
        kernels: !flags['no-kernels'],
        creds: flags.creds,
        insecure: flags.insecure,
        onEvent: quiet ? undefined : (e: { type: string; what: string; bytes: number }) => process.stderr.write(`${e.type} ${e.what} (${e.bytes} bytes)\n`),
      }),
    )
    if (res.kind === 'dir') {
      for (const b of res.bundles) this.log(`${b.status.padEnd(9)} ${b.name}@${b.version} ${b.url}`)
      for (const k of res.kernels) this.log(`${k.status.padEnd(9)} kernel ${k.ref}`)
      this.log(`${res.index_changed ? 'wrote' : 'unchanged'} ${res.index}`)
    } else {
      for (const b of res.bundles) this.log(`${b.status.padEnd(9)} ${b.name}@${b.version} ${b.reference}@${b.digest}`)
      for (const k of res.kernels) this.log(`${k.status.padEnd(9)} kernel ${k.ref} ${k.reference}@${k.digest}`)
    }
    return res
  }
}
