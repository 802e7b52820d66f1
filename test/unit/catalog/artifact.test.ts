import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type ArtifactManifest,
  BUNDLE_ARTIFACT_TYPE,
  BUNDLE_CONFIG_TYPE,
  encodeManifest,
  OCI_MANIFEST_TYPE,
  parseArtifactManifest,
  parseOciTarget,
  readZstdLayer,
  subReference,
  writeZstdLayer,
} from '../../../src/catalog/artifact.js'
import { FRAME_SIZE } from '../../../src/pipeline/bundle/writer.js'
import { bytes } from './fixtures.js'

/** Compare big buffers by digest: vitest's deep equality walks them byte by byte, very slowly. */
function digestOf(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

let dir: string
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-artifact-'))
})
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true })
})

async function* chunks(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let off = 0; off < data.length; off += size) yield data.subarray(off, off + size)
}

async function roundTrip(data: Buffer, label: string): Promise<Buffer> {
  const file = path.join(dir, `${label}.zst`)
  const made = await writeZstdLayer(chunks(data, 65536), file, 3)
  const stored = await fs.readFile(file)
  expect(made).toEqual({ digest: `sha256:${createHash('sha256').update(stored).digest('hex')}`, size: stored.length })
  const out: Buffer[] = []
  for await (const b of readZstdLayer(file, label)) out.push(b)
  return Buffer.concat(out)
}

describe('rootfs zstd layer', () => {
  // @mongodb-js/zstd 1.2.2's compress() drops its level argument: every level came out as 3.
  it('artifact-level-honoured: a higher level gives a smaller layer', async () => {
    const text = Buffer.from(Array.from({ length: 60_000 }, (_, i) => `line ${i} ${(i * 7919) % 1000}\n`).join(''))
    const sizes: number[] = []
    for (const level of [1, 19]) sizes.push((await writeZstdLayer(chunks(text, 65536), path.join(dir, `level-${level}.zst`), level)).size)
    expect(sizes[1]).toBeLessThan(sizes[0]!)
  })

  it('round-trips through independent frames, deterministically', async () => {
    const data = bytes('layer', 3 * 1024 * 1024 + 12345)
    expect(digestOf(await roundTrip(data, 'a'))).toBe(digestOf(data))
    const again = path.join(dir, 'a2.zst')
    await writeZstdLayer(chunks(data, 4096), again, 3)
    expect(digestOf(await fs.readFile(again))).toBe(digestOf(await fs.readFile(path.join(dir, 'a.zst'))))
  })

  // An ext4 image is a whole number of MiB, so its last frame's content is a multiple of zstd's
  // 128 KiB block size and the frame ends with an empty block: the reader must not trip on it.
  it('rootfs-layer-empty-last-block: a rootfs whose last frame is a multiple of 128 KiB decodes', async () => {
    const data = Buffer.concat([bytes('mib', FRAME_SIZE + 256 * 1024)])
    expect(digestOf(await roundTrip(data, 'mib'))).toBe(digestOf(data))
    const zeros = Buffer.alloc(FRAME_SIZE + 1024 * 1024)
    expect(digestOf(await roundTrip(zeros, 'zeros'))).toBe(digestOf(zeros))
  })
})

describe('artifact manifests', () => {
  const good: ArtifactManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST_TYPE,
    artifactType: BUNDLE_ARTIFACT_TYPE,
    config: { mediaType: BUNDLE_CONFIG_TYPE, digest: `sha256:${'a'.repeat(64)}`, size: 10 },
    layers: [],
  }

  it('accepts a bundle artifact, also when the registry dropped artifactType', () => {
    expect(parseArtifactManifest(encodeManifest(good), 'r', BUNDLE_ARTIFACT_TYPE, BUNDLE_CONFIG_TYPE).config.size).toBe(10)
    const { artifactType: _drop, ...older } = good
    expect(parseArtifactManifest(Buffer.from(JSON.stringify(older)), 'r', BUNDLE_ARTIFACT_TYPE, BUNDLE_CONFIG_TYPE).artifactType).toBeUndefined()
  })

  it('refuses an ordinary container image where a bundle was expected, naming it', () => {
    const image = { ...good, artifactType: undefined, config: { ...good.config, mediaType: 'application/vnd.oci.image.config.v1+json' } }
    expect(() => parseArtifactManifest(Buffer.from(JSON.stringify(image)), 'host/bale/demo:1', BUNDLE_ARTIFACT_TYPE, BUNDLE_CONFIG_TYPE)).toThrow(
      /^host\/bale\/demo:1: not a application\/vnd\.bale\.bundle\.v1 artifact/,
    )
  })
})

describe('oci:// targets', () => {
  it('parses HOST[:PORT]/REPO and derives per-bundle repositories', () => {
    const base = parseOciTarget('oci://127.0.0.1:5000/team/bale')
    expect(base.registry).toBe('127.0.0.1:5000')
    expect(subReference(base, 'demo', '1.0').canonical).toBe('127.0.0.1:5000/team/bale/demo:1.0')
  })

  it.each(['oci://host:5000', 'oci://host/repo:tag', 'oci://host/repo@sha256:' + 'a'.repeat(64), 'oci://'])('refuses %s', (t) => {
    expect(() => parseOciTarget(t)).toThrow()
  })
})
