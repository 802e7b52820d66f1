import { Args } from '@oclif/core'
import { BaseCommand } from '../../lib/base-command.js'
import type { BundleManifest } from '../../pipeline/bundle/manifest.js'
import { readBundleManifest } from '../../pipeline/bundle/reader.js'

export default class BundleInspect extends BaseCommand {
  static override summary = "Print a bundle's manifest."
  static override description = 'Reads only the start of the bundle (manifest.json is its first member). --json prints manifest.json itself.'
  static override examples = ['<%= config.bin %> bundle inspect demo.tar.zst', '<%= config.bin %> bundle inspect demo.tar.zst --json']
  static override args = { file: Args.string({ description: 'Bundle (.tar.zst)', required: true }) }

  public async run(): Promise<BundleManifest> {
    const { args } = await this.parse(BundleInspect)
    const manifest = await readBundleManifest(args.file)
    for (const line of describeManifest(manifest)) this.log(line)
    return manifest
  }
}

/** One "label: value" line per field, nested lists indented; lists of words shown as JSON arrays. */
function describeManifest(m: BundleManifest): string[] {
  const rows: Array<[string, string]> = [
    ['name', m.name],
    ['version', m.version],
    ['description', m.description],
    ['distro', m.distro],
    ['arch', m.arch],
    ['kernel', m.kernel_ref],
    ['created', m.created],
    ['source', `${m.source.ref} (${m.source.platform})`],
  ]
  if (m.source.manifest_digest) rows.push(['  manifest', m.source.manifest_digest])
  if (m.source.config_digest) rows.push(['  config', m.source.config_digest])
  m.source.layers.forEach((l, i) => {
    rows.push([`  layer ${i + 1}`, `${l.digest ?? '(no stored digest)'} ${l.media_type}${l.size === undefined ? '' : ` ${l.size} bytes`}`])
    rows.push(['    diff_id', l.diff_id])
  })
  rows.push(
    ['entrypoint', JSON.stringify(m.config.entrypoint)],
    ['cmd', JSON.stringify(m.config.cmd)],
    ['env', m.config.env.length === 0 ? '(none)' : (m.config.env[0] ?? '')],
    ...m.config.env.slice(1).map((e): [string, string] => ['', e]),
    ['user', m.config.user || '(image default: root)'],
    ['workdir', m.config.workdir || '/'],
    ['ports', m.config.exposed_ports.join(' ') || '(none)'],
    ['rootfs', `${m.rootfs.file} ${m.rootfs.size} bytes sha256 ${m.rootfs.sha256}`],
    ['agent', `${m.agent.version} sha256 ${m.agent.sha256}`],
  )
  const width = Math.max(...rows.map(([k]) => k.length)) + 2
  return rows.map(([k, v]) => `${(k === '' ? '' : `${k}:`).padEnd(width)}${v}`.trimEnd())
}
