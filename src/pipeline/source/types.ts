import type { Readable } from 'node:stream'

/**
 * Where layers come from. A source implements only this small core (the ggcr `partial`
 * idea): describe the image and open each layer's *stored* bytes. Decompression, digest
 * and size verification and diff_id checks are derived once, in layer.ts, for every source.
 */
export interface ImageConfig {
  entrypoint?: string[]
  cmd?: string[]
  env?: string[]
  user?: string
  workingDir?: string
  /** e.g. ['80/tcp', '53/udp'] */
  exposedPorts?: string[]
  labels?: Record<string, string>
  stopSignal?: string
}

export type LayerCompression = 'none' | 'gzip' | 'zstd' | 'detect'

export interface LayerBlob {
  /** Digest of the stored bytes (`sha256:…`); absent for a bare rootfs tar. */
  digest?: string
  /** Size of the stored bytes; absent when unknown (stdin). */
  size?: number
  mediaType: string
  compression: LayerCompression
  /** Expected digest of the uncompressed tar (config rootfs.diff_ids[i]); absent for a bare tar. */
  diffId?: string
  /** Open the stored bytes. Each call returns a fresh stream (sources that cannot reopen, e.g. stdin, may throw). */
  open(): Promise<Readable>
}

export interface ResolvedImage {
  /** What the user asked for, for messages and the manifest (`oci-layout:DIR:TAG`, a file path, a registry ref). */
  ref: string
  /** Platform chosen, e.g. 'linux/amd64'. */
  platform: string
  manifestDigest?: string
  configDigest?: string
  /** Image config's `created`, if any (ISO 8601). */
  created?: string
  architecture?: string
  os?: string
  config: ImageConfig
  layers: LayerBlob[]
}

export interface ImageSource {
  resolve(): Promise<ResolvedImage>
  /** Release anything held open (temp files, connections). */
  close(): Promise<void>
}
