import { BaleError } from '../../lib/errors.js'
import { dockerArchiveSource } from './docker-archive.js'
import { ociLayoutSource } from './oci-layout.js'
import { rootfsTarSource } from './rootfs-tar.js'
import type { ImageSource } from './types.js'

export type SourceKind = 'oci-layout' | 'docker-archive' | 'rootfs-tar' | 'registry'

/** Where the image comes from, as the command's flags said it (`--oci-layout DIR[:TAG]`, …). */
export interface SourceSpec {
  kind: SourceKind
  value: string
  /** OS/ARCH[/VARIANT], e.g. 'linux/amd64'. */
  platform: string
}

type SourceFactory = (spec: SourceSpec) => ImageSource

/**
 * One entry per kind: adding a source is adding a line here (the registry source, issue 3,
 * registers `registry`). Each factory only builds the source; nothing is read until resolve().
 */
const FACTORIES: Partial<Record<SourceKind, SourceFactory>> = {
  'oci-layout': (s) => ociLayoutSource(s.value, { platform: s.platform }),
  'docker-archive': (s) => dockerArchiveSource(s.value, { platform: s.platform }),
  'rootfs-tar': (s) => rootfsTarSource(s.value, { platform: s.platform }),
}

export function openSource(spec: SourceSpec): ImageSource {
  const factory = FACTORIES[spec.kind]
  if (factory === undefined) throw new BaleError('E_USAGE', `--${spec.kind}: this source is not available in this build of bale`, { subject: spec.kind })
  return factory(spec)
}

export type { ImageSource, ResolvedImage, LayerBlob, ImageConfig, LayerCompression } from './types.js'
export { openLayerTar, type LayerDigests, type OpenedLayer } from './layer.js'
