import { promises as fs } from 'node:fs'
import path from 'node:path'
import { PassThrough } from 'node:stream'
import { gzipSync } from 'node:zlib'
import { compress as zstdCompress } from '@mongodb-js/zstd'
import { describe, expect, it } from 'vitest'
import { openSource } from '../../../src/pipeline/source/index.js'
import { rootfsTarSource } from '../../../src/pipeline/source/rootfs-tar.js'
import { layerTar, readLayer, useTempDir } from './util.js'

const tempDir = useTempDir()

describe('rootfsTarSource', () => {
  it.each([
    ['none', (b: Buffer) => Promise.resolve(b), 'application/vnd.oci.image.layer.v1.tar'],
    ['gzip', (b: Buffer) => Promise.resolve(gzipSync(b)), 'application/vnd.oci.image.layer.v1.tar+gzip'],
    ['zstd', (b: Buffer) => zstdCompress(b, 3), 'application/vnd.oci.image.layer.v1.tar+zstd'],
  ] as const)('a %s file is one layer whose media type says its compression', async (compression, compress, mediaType) => {
    const file = path.join(await tempDir(), 'rootfs.tar')
    const stored = await compress(layerTar('rootfs'))
    await fs.writeFile(file, stored)
    const src = openSource({ kind: 'rootfs-tar', value: file, platform: 'linux/arm64' })
    const img = await src.resolve()
    expect(img).toMatchObject({ ref: `rootfs-tar:${file}`, platform: 'linux/arm64', architecture: 'arm64', os: 'linux', config: {} })
    expect(img.layers).toHaveLength(1)
    expect(img.layers[0]).toMatchObject({ compression, mediaType, size: stored.length })
    expect(img.layers[0]!.digest).toBeUndefined()
    expect((await readLayer(img.layers[0]!)).tar.equals(layerTar('rootfs'))).toBe(true)
    // A regular file can be read again.
    expect((await readLayer(img.layers[0]!)).tar.equals(layerTar('rootfs'))).toBe(true)
    await src.close()
  })

  it('stdin (-) is peeked for its compression and can be opened once', async () => {
    const stdin = new PassThrough()
    stdin.end(gzipSync(layerTar('stdin')))
    const src = rootfsTarSource('-', { stdin })
    const img = await src.resolve()
    expect(img.ref).toBe('rootfs-tar:-')
    expect(img.layers[0]!.compression).toBe('gzip')
    expect((await readLayer(img.layers[0]!)).tar.equals(layerTar('stdin'))).toBe(true)
    await expect(img.layers[0]!.open()).rejects.toMatchObject({ code: 'E_USAGE', message: 'stdin: can be read only once' })
  })

  it('a missing file is E_NOT_FOUND naming it; a directory is E_INPUT', async () => {
    const dir = await tempDir()
    await expect(rootfsTarSource(path.join(dir, 'nope.tar')).resolve()).rejects.toMatchObject({ code: 'E_NOT_FOUND', message: `${path.join(dir, 'nope.tar')}: no such file` })
    await expect(rootfsTarSource(dir).resolve()).rejects.toMatchObject({ code: 'E_INPUT', message: `${dir}: is a directory (expected a tar file)` })
  })

  it('a file that shrinks after resolve is reported as truncated', async () => {
    const file = path.join(await tempDir(), 'rootfs.tar')
    const tar = layerTar('rootfs')
    await fs.writeFile(file, tar)
    const src = rootfsTarSource(file)
    const img = await src.resolve()
    await src.close()
    await fs.truncate(file, 1024)
    await expect(readLayer(img.layers[0]!, file)).rejects.toMatchObject({ code: 'E_DIGEST', message: `${file}: truncated: expected ${tar.length} bytes, got 1024` })
  })
})
