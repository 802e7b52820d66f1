import { createReadStream } from 'node:fs'
import type { Readable } from 'node:stream'
import { BaleError, fromSystemError } from '../../lib/errors.js'
import { detectCompression, MAGIC_PEEK, peek } from './layer.js'
import { formatPlatform, parsePlatform } from './oci.js'
import { statOr } from './read.js'
import type { ImageSource, LayerBlob, LayerCompression, ResolvedImage } from './types.js'

const MEDIA_TYPE: Record<Exclude<LayerCompression, 'detect'>, string> = {
  none: 'application/vnd.oci.image.layer.v1.tar',
  gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
}

/**
 * A `docker export`-style tar (FILE, or `-` for stdin) as a one-layer image with an empty
 * config and no digests to check. The compression is read from the first bytes during
 * resolve(), so the layer's media type is exact. The stream opened to look at those bytes is
 * handed to the first open(); a regular file can be opened again, stdin or a pipe cannot.
 */
export function rootfsTarSource(fileOrDash: string, opts: { platform?: string; stdin?: Readable } = {}): ImageSource {
  const isStdin = fileOrDash === '-'
  const label = isStdin ? 'stdin' : fileOrDash
  let first: Readable | undefined
  let reopenable = false
  let resolved: Promise<ResolvedImage> | undefined

  const openRaw = (): Readable => (isStdin ? (opts.stdin ?? process.stdin) : createReadStream(fileOrDash))

  async function resolveOnce(): Promise<ResolvedImage> {
    const platform = parsePlatform(opts.platform ?? 'linux/amd64')
    let size: number | undefined
    if (!isStdin) {
      const st = await statOr(fileOrDash, () => new BaleError('E_NOT_FOUND', `${fileOrDash}: no such file`, { subject: fileOrDash }))
      if (st.isDirectory()) throw new BaleError('E_INPUT', `${fileOrDash}: is a directory (expected a tar file)`, { subject: fileOrDash })
      reopenable = st.isFile()
      // A regular file's size is known: reading fewer or more bytes means it changed under us.
      if (st.isFile()) size = st.size
    }
    const raw = openRaw()
    let head: Buffer
    try {
      const p = await peek(raw, MAGIC_PEEK)
      head = p.head
      first = p.stream
    } catch (e) {
      raw.destroy()
      throw fromSystemError(e, label) ?? new BaleError('E_INPUT', `${label}: ${e instanceof Error ? e.message : String(e)}`, { subject: label, cause: e })
    }
    const compression = detectCompression(head, label)
    const layer: LayerBlob = {
      ...(size === undefined ? {} : { size }),
      mediaType: MEDIA_TYPE[compression],
      compression,
      open: async () => {
        if (first !== undefined) {
          const s = first
          first = undefined
          return s
        }
        if (!reopenable) throw new BaleError('E_USAGE', `${label}: can be read only once`, { subject: label })
        return openRaw()
      },
    }
    return {
      ref: `rootfs-tar:${fileOrDash}`,
      platform: formatPlatform(platform),
      architecture: platform.architecture,
      os: platform.os,
      config: {},
      layers: [layer],
    }
  }

  return {
    resolve: () => (resolved ??= resolveOnce()),
    close: async () => {
      // A peeked stream nobody consumed: release the file (never destroy the process's stdin).
      if (first !== undefined && !isStdin) first.destroy()
      first = undefined
    },
  }
}
