import { Flags, type Interfaces } from '@oclif/core'
import path from 'node:path'
import { BaseCommand } from '../lib/base-command.js'
import { BaleError } from '../lib/errors.js'
import { defaultInitBinary, guestVersion } from '../lib/guest.js'
import { parseSize } from '../lib/size.js'
import { DEFAULT_ZSTD_LEVEL } from '../pipeline/bundle/writer.js'
import { makeBundle, type MakeBundleEvent, type MakeBundleOptions } from '../pipeline/make-bundle.js'
import { openSource, type SourceSpec } from '../pipeline/source/index.js'
import { createPullProgress } from '../registry/progress.js'
import type { PullEvent } from '../registry/pull.js'

export interface MakeBundleJson {
  path: string
  sha256: string
  size: number
  integrity: string
}

export default class MakeBundle extends BaseCommand {
  static override summary = 'Build a bootable microVM bundle (bundle.tar.zst) from a container image.'
  static override description =
    'Exactly one source: --image (registry), --oci-layout, --docker-archive or --rootfs-tar. Runs as an ordinary user; ' +
    'ownership, modes, devices and xattrs are written into the ext4 image with debugfs.'
  static override examples = [
    '<%= config.bin %> make-bundle --oci-layout ./img:latest --out demo.tar.zst --name demo --version 1.0',
    'docker export $(docker create alpine) | <%= config.bin %> make-bundle --rootfs-tar - --out alpine.tar.zst',
  ]

  static override flags = {
    image: Flags.string({ summary: 'Registry reference, e.g. debian:bookworm or host:5000/app@sha256:…', helpValue: 'REF' }),
    'oci-layout': Flags.string({ summary: 'OCI image layout directory, optionally with :TAG', helpValue: 'DIR[:TAG]' }),
    'docker-archive': Flags.string({ summary: '`docker save` tarball', helpValue: 'FILE' }),
    'rootfs-tar': Flags.string({ summary: '`docker export`-style root filesystem tar (gzip/zstd ok); - reads stdin', helpValue: 'FILE|-' }),
    platform: Flags.string({ summary: 'Platform to select from an index', default: 'linux/amd64', helpValue: 'OS/ARCH[/VARIANT]' }),
    out: Flags.string({ char: 'o', summary: 'Bundle to write', default: 'bundle.tar.zst', helpValue: 'FILE' }),
    name: Flags.string({ summary: 'Bundle name (default: from the image reference)' }),
    version: Flags.string({ summary: 'Bundle version (default: the tag, or latest)' }),
    description: Flags.string({ summary: 'Bundle description', default: '' }),
    distro: Flags.string({ summary: 'Distribution (default: ID-VERSION_ID from the image os-release)' }),
    arch: Flags.string({ summary: 'Architecture (default: from the image config)' }),
    'kernel-ref': Flags.string({ summary: 'Kernel the bundle boots with (see `bale kernel ls`)', default: 'default' }),
    size: Flags.string({ summary: 'ext4 image size instead of the computed one, e.g. 2G', helpValue: 'SIZE' }),
    level: Flags.integer({ summary: 'zstd compression level (1-19)', min: 1, max: 19, default: DEFAULT_ZSTD_LEVEL }),
    tmpdir: Flags.string({ summary: 'Where to stage the image (default: $TMPDIR)', helpValue: 'DIR' }),
    'init-binary': Flags.string({ summary: 'Guest init/agent binary to inject', hidden: true }),
    quiet: Flags.boolean({ char: 'q', summary: 'No progress on stderr' }),
    creds: Flags.string({ summary: 'Registry credentials (default: $BALE_REGISTRY_CREDS, then ~/.docker/config.json)', helpValue: 'USER:PASS' }),
    insecure: Flags.boolean({ summary: 'Allow plain HTTP to a registry that is not on loopback' }),
    offline: Flags.boolean({ summary: 'Use only the local image store; make no network request' }),
    refresh: Flags.boolean({ summary: 'Ask the registry what the tag points to now, even if it is cached' }),
    concurrency: Flags.integer({ summary: 'Layers downloaded at once', min: 1, max: 16, default: 3 }),
  }

  public async run(): Promise<MakeBundleJson> {
    const { flags } = await this.parse(MakeBundle)
    const quiet = flags.quiet || this.jsonEnabled()
    const pullProgress = quiet ? undefined : createPullProgress({ stream: process.stderr, env: process.env })
    const opts = await resolveOptions(flags, process.env, pullProgress?.onEvent)
    const progress = quiet ? () => {} : (e: MakeBundleEvent) => process.stderr.write(`${describe(e)}\n`)
    const res = await makeBundle(opts, (e) => {
      if (e.stage === 'resolve') pullProgress?.stop()
      progress(e)
    }).finally(() => pullProgress?.stop())
    this.log(res.path)
    this.log(res.sha256)
    this.log(String(res.size))
    return { path: res.path, sha256: res.sha256, size: res.size, integrity: res.integrity }
  }
}

type ParsedFlags = Interfaces.InferredFlags<typeof MakeBundle.flags>

/** Flags → one validated, immutable options object, before any work starts. */
async function resolveOptions(flags: ParsedFlags, env: NodeJS.ProcessEnv, onPullEvent?: (e: PullEvent) => void): Promise<MakeBundleOptions> {
  const given = (['image', 'oci-layout', 'docker-archive', 'rootfs-tar'] as const).filter((k) => flags[k] !== undefined)
  if (given.length !== 1) {
    throw new BaleError(
      'E_USAGE',
      given.length === 0
        ? 'no source: give one of --image, --oci-layout, --docker-archive, --rootfs-tar'
        : `conflicting sources: ${given.map((g) => `--${g}`).join(', ')} (give exactly one)`,
      { subject: given.map((g) => `--${g}`).join(',') },
    )
  }
  const kind = given[0]!
  const spec: SourceSpec = {
    kind: kind === 'image' ? 'registry' : kind,
    value: flags[kind]!,
    platform: flags.platform,
    registry: { creds: flags.creds, insecure: flags.insecure, offline: flags.offline, refresh: flags.refresh, concurrency: flags.concurrency },
    onPullEvent,
  }
  const sde = env.SOURCE_DATE_EPOCH
  if (sde !== undefined && !/^\d+$/.test(sde)) throw new BaleError('E_USAGE', `SOURCE_DATE_EPOCH: not a number: '${sde}'`, { subject: 'SOURCE_DATE_EPOCH' })
  const initBinary = flags['init-binary'] ? path.resolve(flags['init-binary']) : defaultInitBinary(env)
  return Object.freeze({
    source: openSource(spec),
    out: path.resolve(flags.out),
    name: flags.name,
    version: flags.version,
    description: flags.description,
    distro: flags.distro,
    arch: flags.arch,
    kernelRef: flags['kernel-ref'],
    sizeBytes: flags.size === undefined ? undefined : parseSize(flags.size, '--size'),
    level: flags.level,
    initBinary,
    agentVersion: await guestVersion(initBinary),
    tmpDir: flags.tmpdir ? path.resolve(flags.tmpdir) : undefined,
    sourceDateEpoch: sde === undefined ? undefined : Number(sde),
  })
}

function describe(e: MakeBundleEvent): string {
  switch (e.stage) {
    case 'resolve':
      return `resolved ${e.ref} (${e.platform}, ${e.layers} layer${e.layers === 1 ? '' : 's'}${e.manifestDigest ? `, ${e.manifestDigest}` : ''})`
    case 'layer':
      return `layer ${e.index + 1}/${e.total}${e.digest ? ` ${e.digest.slice(0, 19)}` : ''}: ${e.entries} entries, ${e.bytes} bytes`
    case 'ext4':
      return `ext4: ${Math.ceil(e.sizeBytes / 1048576)} MiB, ${e.inodes} inodes`
    case 'bundle':
      return 'compressing bundle'
  }
}
