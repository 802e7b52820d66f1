import { Args, Flags } from '@oclif/core'
import { BaseCommand } from '../lib/base-command.js'
import { createPullProgress, formatBytes } from '../registry/progress.js'
// The engine itself, not pipeline/source/registry.ts's re-export, which also loads the image-config
// mapping that only make-bundle needs: less to load before `bale pull` sends its first request.
import { DEFAULT_CONCURRENCY, pull, type PullOptions } from '../registry/pull.js'

export interface PullJson {
  ref: string
  manifest_digest: string
  index_digest: string | null
  config_digest: string
  platform: string
  layers: Array<{ digest: string; size: number; media_type: string }>
}

export default class Pull extends BaseCommand {
  static override summary = 'Pull an image from an OCI registry into the local content-addressed store.'
  static override description =
    'Every blob is verified against its digest before it enters the store (an OCI image layout under the cache dir). ' +
    'A tag already in the store is used without asking the registry (--refresh asks); --offline uses only the store.'
  static override examples = [
    '<%= config.bin %> pull debian:bookworm',
    '<%= config.bin %> pull --platform linux/arm64 registry.example.com:5000/team/app:1.2 --json',
    'BALE_REGISTRY_CREDS=user:token <%= config.bin %> pull ghcr.io/org/private@sha256:…',
  ]

  static override args = {
    ref: Args.string({ required: true, description: 'Image reference: NAME[:TAG|@sha256:…], e.g. debian:bookworm, host:5000/a/b:tag' }),
  }

  static override flags = {
    platform: Flags.string({ summary: 'Platform to select from an image index', default: 'linux/amd64', helpValue: 'OS/ARCH[/VARIANT]' }),
    creds: Flags.string({ summary: 'Registry credentials (or set BALE_REGISTRY_CREDS; ~/.docker/config.json is read too)', helpValue: 'USER:PASSWORD' }),
    insecure: Flags.boolean({ summary: 'Allow plain HTTP to a non-loopback registry' }),
    offline: Flags.boolean({ summary: 'Use only the local store; make no network request' }),
    refresh: Flags.boolean({ summary: 'Ask the registry what the tag points to now, even if the store has it', exclusive: ['offline'] }),
    // 32: well past any gain (images rarely have more layers in flight) and below where registries start refusing connections.
    concurrency: Flags.integer({ summary: 'Parallel blob downloads', default: DEFAULT_CONCURRENCY, min: 1, max: 32 }),
    quiet: Flags.boolean({ char: 'q', summary: 'No progress on stderr' }),
  }

  public async run(): Promise<PullJson> {
    const { args, flags } = await this.parse(Pull)
    const opts: PullOptions = Object.freeze({
      platform: flags.platform,
      ...(flags.creds === undefined ? {} : { creds: flags.creds }),
      insecure: flags.insecure,
      offline: flags.offline,
      refresh: flags.refresh,
      concurrency: flags.concurrency,
    })
    const quiet = flags.quiet || this.jsonEnabled()
    const progress = quiet ? undefined : createPullProgress({ stream: process.stderr, env: process.env })
    let res
    try {
      res = await pull(args.ref, opts, progress?.onEvent)
    } finally {
      progress?.stop()
    }
    const total = res.layers.reduce((n, l) => n + l.size, 0)
    this.log(`${res.ref} ${res.platform}`)
    this.log(`manifest ${res.manifestDigest}`)
    this.log(`config ${res.configDigest}`)
    this.log(`layers ${res.layers.length} (${formatBytes(total)}), ${res.downloaded === 0 ? 'all from the store' : `${res.downloaded} blob(s), ${formatBytes(res.downloadedBytes)} downloaded`}`)
    return {
      ref: res.ref,
      manifest_digest: res.manifestDigest,
      index_digest: res.indexDigest ?? null,
      config_digest: res.configDigest,
      platform: res.platform,
      layers: res.layers.map((l) => ({ digest: l.digest, size: l.size, media_type: l.mediaType })),
    }
  }
}
