import { Args, Flags } from '@oclif/core'
import { BaseCommand } from '../lib/base-command.js'
import { BaleError } from '../lib/errors.js'
import { CATALOG_ENV } from '../catalog/defaults.js'
import { fetchBundle, type FetchResult } from '../catalog/fetch.js'

export default class Fetch extends BaseCommand {
  static override summary = 'Download a published bundle (and its kernel) into the local store, verified.'
  static override description =
    'From a catalog directory served over HTTP (its index.json) or from a registry (oci://HOST/REPO). Downloads resume ' +
    'after an interruption; a file that does not match its integrity is deleted and the fetch fails. ' +
    `The catalog comes from --catalog or $${CATALOG_ENV}.`
  static override examples = [
    '<%= config.bin %> fetch debian --catalog https://bale.example.com/catalog/',
    '<%= config.bin %> fetch debian@12 --catalog oci://registry.example.com/bale --json',
  ]

  static override args = {
    bundle: Args.string({ required: true, description: 'NAME or NAME@VERSION (NAME alone: the newest version)' }),
  }

  static override flags = {
    catalog: Flags.string({ summary: `Catalog: http(s)://…[/index.json] or oci://HOST/REPO (default: $${CATALOG_ENV})`, helpValue: 'URL' }),
    creds: Flags.string({ summary: 'Registry credentials for oci:// catalogs (or BALE_REGISTRY_CREDS)', helpValue: 'USER:PASSWORD' }),
    insecure: Flags.boolean({ summary: 'Allow plain HTTP to a non-loopback host' }),
    'no-kernel': Flags.boolean({ summary: "Do not fetch the bundle's kernel" }),
  }

  public async run(): Promise<FetchResult> {
    const { args, flags } = await this.parse(Fetch)
    const catalog = flags.catalog ?? process.env[CATALOG_ENV]
    if (catalog === undefined || catalog === '') {
      throw new BaleError('E_USAGE', `no catalog: pass --catalog URL|oci://HOST/REPO or set ${CATALOG_ENV}`, { subject: '--catalog' })
    }
    const res = await fetchBundle(Object.freeze({ selector: args.bundle, catalog, creds: flags.creds, insecure: flags.insecure, kernel: !flags['no-kernel'] }))
    this.log(`${res.status} ${res.name}@${res.version} ${res.path}`)
    this.log(`${res.sha256} ${res.size}`)
    this.log(`kernel ${res.kernel.ref}: ${res.kernel.status}`)
    return res
  }
}
