import { dockerArchiveSource } from './docker-archive.js'
import { ociLayoutSource } from './oci-layout.js'
import { registrySource } from './registry.js'
import { rootfsTarSource } from './rootfs-tar.js'
import type { PullEvent, PullOptions } from '../../registry/pull.js'
import type { ImageSource } from './types.js'

export type SourceKind = 'oci-layout' | 'docker-archive' | 'rootfs-tar' | 'registry'

/** Where the image comes from, as the command's flags said it (`--oci-layout DIR[:TAG]`, …). */
export interface SourceSpec {
  kind: SourceKind
  value: string
  /** OS/ARCH[/VARIANT], e.g. 'linux/amd64'. */
  platform: string
  /** Registry options (kind 'registry' only): credentials, --insecure, --offline, --refresh, --concurrency. */
  registry?: Omit<PullOptions, 'platform'>
  /** Pull progress (kind 'registry' only). */
  onPullEvent?: (e: PullEvent) => void
}

type SourceFactory = (spec: SourceSpec) => ImageSource

/**
 * One entry per kind: adding a source is adding a line here. Each factory only builds the source; nothing is read until resolve().
 */
const FACTORIES: Record<SourceKind, SourceFactory> = {
  'oci-layout': (s) => ociLayoutSource(s.value, { platform: s.platform }),
  'docker-archive': (s) => dockerArchiveSource(s.value, { platform: s.platform }),
  'rootfs-tar': (s) => rootfsTarSource(s.value, { platform: s.platform }),
  registry: (s) => registrySource(s.value, { ...s.registry, platform: s.platform }, s.onPullEvent),
}

export function openSource(spec: SourceSpec): ImageSource {
  return FACTORIES[spec.kind](spec)
}

export type { ImageSource, ResolvedImage, LayerBlob, ImageConfig, LayerCompression } from './types.js'
export { openLayerTar, type LayerDigests, type OpenedLayer } from './layer.js'
