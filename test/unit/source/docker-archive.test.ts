import { promises as fs } from 'node:fs'
import path from 'node:path'
import { gzipSync } from 'node:zlib'
import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { dockerArchiveSource } from '../../../src/pipeline/source/docker-archive.js'
import { indexTar, resolveMember } from '../../../src/pipeline/source/tar-index.js'
import { type FixtureImage, MEDIA, sha256, writeDockerArchive } from '../../helpers/oci-layout.js'
import { buildTar } from '../../helpers/tar.js'
import { layerTar, readLayer, useTempDir } from './util.js'

const tempDir = useTempDir()

const image: FixtureImage = {
  layers: [
    { tar: layerTar('base'), compression: 'none' },
    { tar: layerTar('top'), compression: 'none' },
  ],
  config: { Cmd: ['/bin/sh'], Env: ['A=1'] },
}

async function failure(p: Promise<unknown>): Promise<BaleError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  )
  expect(e).toBeInstanceOf(BaleError)
  return e as BaleError
}

describe('dockerArchiveSource', () => {
  it('legacy layout (<id>/layer.tar): config, layers streamed in place, diff_ids verified', async () => {
    const file = path.join(await tempDir(), 'img.tar')
    const w = await writeDockerArchive(file, image)
    const img = await dockerArchiveSource(file, { platform: 'linux/amd64' }).resolve()
    expect(img).toMatchObject({ ref: `docker-archive:${file}`, platform: 'linux/amd64', configDigest: w.configDigest, config: { cmd: ['/bin/sh'], env: ['A=1'] } })
    expect(img.manifestDigest).toBeUndefined()
    expect(img.layers.map((l) => [l.digest, l.diffId, l.mediaType])).toEqual([
      [undefined, w.diffIds[0], 'application/vnd.docker.image.rootfs.diff.tar'],
      [undefined, w.diffIds[1], 'application/vnd.docker.image.rootfs.diff.tar'],
    ])
    expect((await readLayer(img.layers[0]!)).tar.equals(layerTar('base'))).toBe(true)
    expect((await readLayer(img.layers[1]!)).tar.equals(layerTar('top'))).toBe(true)
  })

  it('OCI-style layout (Docker >= 25, blobs/sha256): digests from names, manifest digest from index.json', async () => {
    const file = path.join(await tempDir(), 'img.tar')
    const w = await writeDockerArchive(file, { ...image, layers: [{ tar: layerTar('base'), compression: 'gzip' }, image.layers[1]!] }, { layout: 'oci' })
    const img = await dockerArchiveSource(file, { platform: 'linux/amd64' }).resolve()
    expect(img.configDigest).toBe(w.configDigest)
    expect(img.manifestDigest).toMatch(/^sha256:[0-9a-f]{64}$/)
    expect(img.layers.map((l) => l.mediaType)).toEqual([MEDIA.layer.gzip, MEDIA.layer.none])
    expect(img.layers[0]!.digest).toBe(`sha256:${w.layerPaths[0]!.slice('blobs/sha256/'.length)}`)
    const first = await readLayer(img.layers[0]!)
    expect(first.tar.equals(layerTar('base'))).toBe(true)
    expect(first.digest).toBe(img.layers[0]!.digest)
  })

  it('a corrupt byte in a legacy layer (no stored digest) is caught by its diff_id', async () => {
    const file = path.join(await tempDir(), 'img.tar')
    const w = await writeDockerArchive(file, image)
    const data = await fs.readFile(file)
    const at = data.indexOf(Buffer.from('top\n'))
    data[at] = 'X'.charCodeAt(0)
    await fs.writeFile(file, data)
    const img = await dockerArchiveSource(file).resolve()
    await readLayer(img.layers[0]!, 'layer 1')
    const e = await failure(readLayer(img.layers[1]!, 'layer 2'))
    expect(e.code).toBe('E_DIGEST')
    expect(e.message).toMatch(new RegExp(`^layer 2: expected diff_id ${w.diffIds[1]} got sha256:`))
  })

  it('a tampered config is caught by the digest in its name', async () => {
    const file = path.join(await tempDir(), 'img.tar')
    const w = await writeDockerArchive(file, image)
    const data = await fs.readFile(file)
    const at = data.indexOf(Buffer.from('"A=1"'))
    data[at + 3] = '2'.charCodeAt(0)
    await fs.writeFile(file, data)
    const e = await failure(dockerArchiveSource(file).resolve())
    expect(e.code).toBe('E_DIGEST')
    expect(e.message).toContain(`config ${w.configDigest}: expected ${w.configDigest} got`)
  })

  it('an image for another platform is refused, naming both', async () => {
    const file = path.join(await tempDir(), 'img.tar')
    await writeDockerArchive(file, { ...image, platform: { os: 'linux', architecture: 'arm64' } })
    const e = await failure(dockerArchiveSource(file, { platform: 'linux/amd64' }).resolve())
    expect(e).toMatchObject({ code: 'E_NOT_FOUND', message: `${file}: the image is for linux/arm64, not linux/amd64 (available: linux/arm64)` })
  })

  it('says to decompress a gzipped archive', async () => {
    const dir = await tempDir()
    const file = path.join(dir, 'img.tar')
    await writeDockerArchive(file, image)
    await fs.writeFile(`${file}.gz`, gzipSync(await fs.readFile(file)))
    const e = await failure(dockerArchiveSource(`${file}.gz`).resolve())
    expect(e.message).toBe(`${file}.gz: gzip-compressed; decompress it first (gunzip -k ${file}.gz)`)
  })

  it('names what is missing or malformed', async () => {
    const dir = await tempDir()
    expect(await failure(dockerArchiveSource(path.join(dir, 'nope.tar')).resolve())).toMatchObject({ code: 'E_NOT_FOUND', message: `${path.join(dir, 'nope.tar')}: no such file` })

    const notTar = path.join(dir, 'not.tar')
    await fs.writeFile(notTar, Buffer.alloc(2048, 0x41))
    expect((await failure(dockerArchiveSource(notTar).resolve())).message).toBe(`${notTar}: not a tar archive (bad header checksum at offset 0)`)

    const noManifest = path.join(dir, 'plain.tar')
    await fs.writeFile(noManifest, layerTar('x'))
    expect((await failure(dockerArchiveSource(noManifest).resolve())).message).toBe(`${noManifest}: not a docker save archive (no manifest.json)`)

    const missingLayer = path.join(dir, 'missing-layer.tar')
    await fs.writeFile(
      missingLayer,
      buildTar([
        { name: `${'a'.repeat(64)}.json`, content: JSON.stringify({ rootfs: { type: 'layers', diff_ids: [sha256('x')] } }) },
        { name: 'manifest.json', content: JSON.stringify([{ Config: `${'a'.repeat(64)}.json`, Layers: ['abc/layer.tar'] }]) },
      ]),
    )
    // The config's name claims a digest it does not have: that is checked first.
    expect((await failure(dockerArchiveSource(missingLayer).resolve())).code).toBe('E_DIGEST')

    const twoImages = path.join(dir, 'two.tar')
    await fs.writeFile(twoImages, buildTar([{ name: 'manifest.json', content: JSON.stringify([{ Config: 'a.json', RepoTags: ['a:1'], Layers: [] }, { Config: 'b.json', RepoTags: ['b:1'], Layers: [] }]) }]))
    expect((await failure(dockerArchiveSource(twoImages).resolve())).message).toBe(`${twoImages}: holds 2 images (a:1, b:1); save one image per archive`)
  })

  it('a repeated legacy layer stored as a symlink to the first copy is followed inside the archive', async () => {
    const file = path.join(await tempDir(), 'img.tar')
    const layer = layerTar('same')
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256(layer), sha256(layer)] } }))
    const cfgName = `${sha256(config).slice(7)}.json`
    await fs.writeFile(
      file,
      buildTar([
        { name: cfgName, content: config },
        { name: 'aaa', type: 'dir' },
        { name: 'aaa/layer.tar', content: layer },
        { name: 'bbb', type: 'dir' },
        { name: 'bbb/layer.tar', type: 'symlink', linkname: '../aaa/layer.tar' },
        { name: 'manifest.json', content: JSON.stringify([{ Config: cfgName, RepoTags: null, Layers: ['aaa/layer.tar', 'bbb/layer.tar'] }]) },
      ]),
    )
    const img = await dockerArchiveSource(file).resolve()
    expect((await readLayer(img.layers[1]!)).tar.equals(layer)).toBe(true)
  })
})

describe('indexTar', () => {
  it('finds members through PAX and GNU long names, hard links and ./ prefixes, reading headers only', async () => {
    const file = path.join(await tempDir(), 'x.tar')
    const long = `${'d'.repeat(120)}/file`
    await fs.writeFile(
      file,
      buildTar([
        { name: './short', content: 'abc' },
        { name: long, content: 'pax long name', longNames: 'pax' },
        { name: `${'g'.repeat(150)}`, content: 'gnu long name', longNames: 'gnu' },
        { name: 'hard', type: 'link', linkname: 'short' },
        { name: 'loop', type: 'symlink', linkname: 'loop' },
        { name: 'escape', type: 'symlink', linkname: '../../../etc/passwd' },
      ]),
    )
    const members = await indexTar(file)
    const data = await fs.readFile(file)
    const text = (name: string): string | undefined => {
      const m = resolveMember(members, name)
      return m === undefined ? undefined : data.toString('utf8', m.offset, m.offset + m.size)
    }
    expect(text('short')).toBe('abc')
    expect(text(long)).toBe('pax long name')
    expect(text('g'.repeat(150))).toBe('gnu long name')
    expect(text('hard')).toBe('abc')
    // Loops and links leaving the archive resolve to nothing rather than hanging or escaping.
    expect(resolveMember(members, 'loop')).toBeUndefined()
    expect(resolveMember(members, 'escape')).toBeUndefined()
  })

  it('refuses a member that runs past the end of the file', async () => {
    const file = path.join(await tempDir(), 'x.tar')
    const full = buildTar([{ name: 'big', content: Buffer.alloc(4096, 1) }], { endMarker: false })
    await fs.writeFile(file, full.subarray(0, 2048))
    await expect(indexTar(file)).rejects.toThrow(`${file}: truncated: member at offset 0 needs 4096 bytes, the file ends at 2048`)
  })
})
