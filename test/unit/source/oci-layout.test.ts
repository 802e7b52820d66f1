import { promises as fs } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { ociLayoutSource } from '../../../src/pipeline/source/oci-layout.js'
import { type FixtureImage, MEDIA, sha256, writeOciLayout } from '../../helpers/oci-layout.js'
import { layerTar, readLayer, useTempDir } from './util.js'

const tempDir = useTempDir()

const amd64: FixtureImage = {
  layers: [
    { tar: layerTar('amd64-base'), compression: 'gzip' },
    { tar: layerTar('amd64-top'), compression: 'zstd' },
  ],
  config: { Entrypoint: ['/bin/sh', '-c'], Cmd: ['echo hi'], Env: ['PATH=/bin'], User: '1000:1000', WorkingDir: '/srv', ExposedPorts: { '8080/tcp': {}, '53/udp': {} } },
  created: '2023-11-14T22:13:20Z',
}
const arm64: FixtureImage = {
  platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
  layers: [{ tar: layerTar('arm64'), compression: 'none' }],
}

async function editJson(file: string, edit: (v: Record<string, unknown>) => void): Promise<void> {
  const v = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, unknown>
  edit(v)
  await fs.writeFile(file, JSON.stringify(v))
}

type IndexJson = { manifests: Array<Record<string, unknown>> }

async function failure(p: Promise<unknown>): Promise<BaleError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  )
  expect(e).toBeInstanceOf(BaleError)
  return e as BaleError
}

describe('ociLayoutSource', () => {
  it('resolves a single-image layout: config, digests, and layers that verify while streaming', async () => {
    const dir = await tempDir()
    const w = await writeOciLayout(dir, [amd64])
    const img = await ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve()
    expect(img).toMatchObject({
      ref: `oci-layout:${dir}`,
      platform: 'linux/amd64',
      manifestDigest: w.manifestDigests[0],
      configDigest: w.configDigests[0],
      created: '2023-11-14T22:13:20Z',
      architecture: 'amd64',
      os: 'linux',
      config: { entrypoint: ['/bin/sh', '-c'], cmd: ['echo hi'], env: ['PATH=/bin'], user: '1000:1000', workingDir: '/srv', exposedPorts: ['53/udp', '8080/tcp'] },
    })
    expect(img.layers.map((l) => [l.digest, l.diffId, l.compression, l.mediaType])).toEqual([
      [w.layerDigests[0]?.[0], w.diffIds[0]?.[0], 'gzip', MEDIA.layer.gzip],
      [w.layerDigests[0]?.[1], w.diffIds[0]?.[1], 'zstd', MEDIA.layer.zstd],
    ])
    const first = await readLayer(img.layers[0]!)
    expect(first.tar.equals(layerTar('amd64-base'))).toBe(true)
    const second = await readLayer(img.layers[1]!)
    expect(second.tar.equals(layerTar('amd64-top'))).toBe(true)
  })

  it('selects by tag among several images, and lists the tags when the tag is unknown', async () => {
    const dir = await tempDir()
    const other = await tempDir()
    await writeOciLayout(dir, [amd64], { tag: 'one' })
    await writeOciLayout(other, [{ layers: [{ tar: layerTar('two'), compression: 'gzip' }] }], { tag: 'two' })
    for (const f of await fs.readdir(path.join(other, 'blobs/sha256'))) await fs.copyFile(path.join(other, 'blobs/sha256', f), path.join(dir, 'blobs/sha256', f))
    const otherIndex = JSON.parse(await fs.readFile(path.join(other, 'index.json'), 'utf8')) as IndexJson
    await editJson(path.join(dir, 'index.json'), (v) => (v as IndexJson).manifests.push(...otherIndex.manifests))

    const two = await ociLayoutSource(`${dir}:two`, { platform: 'linux/amd64' }).resolve()
    expect(two.ref).toBe(`oci-layout:${dir}:two`)
    expect((await readLayer(two.layers[0]!)).tar.equals(layerTar('two'))).toBe(true)

    const unknown = await failure(ociLayoutSource(`${dir}:three`, { platform: 'linux/amd64' }).resolve())
    expect(unknown.code).toBe('E_NOT_FOUND')
    expect(unknown.message).toBe(`${dir}: no image tagged 'three' (tags: one, two)`)

    const ambiguous = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(ambiguous.code).toBe('E_NOT_FOUND')
    expect(ambiguous.message).toContain('holds several images (tags: one, two)')
  })

  it('walks a nested multi-platform index and picks the platform asked for', async () => {
    const dir = await tempDir()
    const w = await writeOciLayout(dir, [amd64, arm64], { tag: 'multi', index: true })
    const def = await ociLayoutSource(`${dir}:multi`, { platform: 'linux/amd64' }).resolve()
    expect(def.manifestDigest).toBe(w.manifestDigests[0])
    const arm = await ociLayoutSource(`${dir}:multi`, { platform: 'linux/arm64' }).resolve()
    expect(arm.manifestDigest).toBe(w.manifestDigests[1])
    expect(arm.platform).toBe('linux/arm64/v8')
    expect((await readLayer(arm.layers[0]!)).tar.equals(layerTar('arm64'))).toBe(true)
    const aliased = await ociLayoutSource(`${dir}:multi`, { platform: 'linux/aarch64' }).resolve()
    expect(aliased.manifestDigest).toBe(w.manifestDigests[1])

    const none = await failure(ociLayoutSource(`${dir}:multi`, { platform: 'linux/s390x' }).resolve())
    expect(none.code).toBe('E_NOT_FOUND')
    expect(none.message).toBe(`oci-layout:${dir}:multi: no image for linux/s390x (available: linux/amd64, linux/arm64/v8)`)
  })

  it('learns the platform from the config when the descriptor has none (skopeo/umoci layouts)', async () => {
    const dir = await tempDir()
    await writeOciLayout(dir, [arm64], { tag: 'latest' })
    await editJson(path.join(dir, 'index.json'), (v) => {
      for (const m of (v as IndexJson).manifests) delete m.platform
    })
    const e = await failure(ociLayoutSource(`${dir}:latest`, { platform: 'linux/amd64' }).resolve())
    expect(e.message).toContain('no image for linux/amd64 (available: linux/arm64/v8)')
    const img = await ociLayoutSource(`${dir}:latest`, { platform: 'linux/arm64/v8' }).resolve()
    expect(img.platform).toBe('linux/arm64/v8')
  })

  it('a directory whose name contains ":" is a directory, not DIR:TAG', async () => {
    const parent = await tempDir()
    const dir = path.join(parent, 'img:v1')
    await writeOciLayout(dir, [amd64])
    const img = await ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve()
    expect(img.ref).toBe(`oci-layout:${dir}`)
  })

  describe('hostile-digest-path: a descriptor cannot name a file outside blobs/', () => {
    it('in index.json', async () => {
      const dir = await tempDir()
      await writeOciLayout(dir, [amd64])
      await fs.writeFile(path.join(dir, 'secret'), '{}')
      await editJson(path.join(dir, 'index.json'), (v) => {
        ;(v as IndexJson).manifests[0]!.digest = 'sha256:../../secret'
      })
      const e = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
      expect(e.code).toBe('E_INPUT')
      expect(e.message).toContain('invalid digest "sha256:../../secret"')
    })

    it('in a manifest (layer digest), even with the manifest digest recomputed to match', async () => {
      const dir = await tempDir()
      const w = await writeOciLayout(dir, [amd64])
      const mHex = w.manifestDigests[0]!.slice(7)
      const manifest = JSON.parse(await fs.readFile(path.join(dir, 'blobs/sha256', mHex), 'utf8')) as { layers: Array<{ digest: string }> }
      manifest.layers[0]!.digest = `sha256:${'../'.repeat(8)}etc/passwd`
      const data = Buffer.from(JSON.stringify(manifest))
      await fs.writeFile(path.join(dir, 'blobs/sha256', sha256(data).slice(7)), data)
      await editJson(path.join(dir, 'index.json'), (v) => {
        const d = (v as IndexJson).manifests[0]!
        d.digest = sha256(data)
        d.size = data.length
      })
      const e = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
      expect(e.code).toBe('E_INPUT')
      expect(e.message).toContain('layers[0]: invalid digest')
    })

    it('uppercase hex is refused too (it would name a different file)', async () => {
      const dir = await tempDir()
      const w = await writeOciLayout(dir, [amd64])
      await editJson(path.join(dir, 'index.json'), (v) => {
        ;(v as IndexJson).manifests[0]!.digest = w.manifestDigests[0]!.toUpperCase().replace('SHA256', 'sha256')
      })
      expect((await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())).code).toBe('E_INPUT')
    })
  })

  it('hostile-index-fanout: an index listing one nested index thousands of times is refused', async () => {
    const dir = await tempDir()
    const w = await writeOciLayout(dir, [amd64, arm64], { index: true })
    await editJson(path.join(dir, 'index.json'), (v) => {
      const d = (v as IndexJson).manifests[0]!
      ;(v as IndexJson).manifests = Array.from({ length: 5000 }, () => d)
    })
    const e = await failure(ociLayoutSource(dir, { platform: 'linux/riscv64' }).resolve())
    expect(e.code).toBe('E_INPUT')
    expect(e.message).toBe(`${dir}: more than 512 index/manifest/config documents to read for one image`)
    expect(w.indexDigest).toBeDefined()
  })

  it('a tampered manifest blob fails with E_DIGEST naming its digest', async () => {
    const dir = await tempDir()
    const w = await writeOciLayout(dir, [amd64])
    const file = path.join(dir, 'blobs/sha256', w.manifestDigests[0]!.slice(7))
    const data = await fs.readFile(file)
    data[data.length - 2] = 0x20 // same size, different bytes
    await fs.writeFile(file, data)
    const e = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(e.code).toBe('E_DIGEST')
    expect(e.message).toMatch(new RegExp(`manifest ${w.manifestDigests[0]}: expected ${w.manifestDigests[0]} got sha256:[0-9a-f]{64}$`))
  })

  it('a tampered config blob fails with E_DIGEST', async () => {
    const dir = await tempDir()
    const w = await writeOciLayout(dir, [amd64])
    await fs.appendFile(path.join(dir, 'blobs/sha256', w.configDigests[0]!.slice(7)), ' ')
    const e = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(e.code).toBe('E_DIGEST')
    expect(e.message).toContain(`config ${w.configDigests[0]}: expected`)
  })

  it('a missing layer blob fails at resolve with E_NOT_FOUND naming the digest', async () => {
    const dir = await tempDir()
    const w = await writeOciLayout(dir, [amd64])
    await fs.rm(path.join(dir, 'blobs/sha256', w.layerDigests[0]![1]!.slice(7)))
    const e = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(e.code).toBe('E_NOT_FOUND')
    expect(e.message).toBe(`${dir}: layer 2 blob ${w.layerDigests[0]![1]} not found`)
  })

  it('a corrupt layer blob fails while streaming with E_DIGEST', async () => {
    const dir = await tempDir()
    const w = await writeOciLayout(dir, [amd64])
    const file = path.join(dir, 'blobs/sha256', w.layerDigests[0]![0]!.slice(7))
    const data = await fs.readFile(file)
    data[Math.floor(data.length / 2)] = (data[Math.floor(data.length / 2)] ?? 0) ^ 0x01
    await fs.writeFile(file, data)
    const img = await ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve()
    const e = await failure(readLayer(img.layers[0]!, 'layer 1'))
    expect(e.code).toBe('E_DIGEST')
    expect(e.subject).toBe(w.layerDigests[0]![0])
  })

  it('diff_ids and layers must pair up', async () => {
    const dir = await tempDir()
    const w = await writeOciLayout(dir, [amd64])
    // Rewrite the config with one diff_id dropped, then the manifest and index to match.
    const cfgFile = path.join(dir, 'blobs/sha256', w.configDigests[0]!.slice(7))
    const cfg = JSON.parse(await fs.readFile(cfgFile, 'utf8')) as { rootfs: { diff_ids: string[] } }
    cfg.rootfs.diff_ids.pop()
    const cfgData = Buffer.from(JSON.stringify(cfg))
    await fs.writeFile(path.join(dir, 'blobs/sha256', sha256(cfgData).slice(7)), cfgData)
    const mFile = path.join(dir, 'blobs/sha256', w.manifestDigests[0]!.slice(7))
    const m = JSON.parse(await fs.readFile(mFile, 'utf8')) as { config: { digest: string; size: number } }
    m.config = { ...m.config, digest: sha256(cfgData), size: cfgData.length }
    const mData = Buffer.from(JSON.stringify(m))
    await fs.writeFile(path.join(dir, 'blobs/sha256', sha256(mData).slice(7)), mData)
    await editJson(path.join(dir, 'index.json'), (v) => {
      Object.assign((v as IndexJson).manifests[0]!, { digest: sha256(mData), size: mData.length })
    })
    const e = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(e.code).toBe('E_INPUT')
    expect(e.message).toContain('2 layers but the config lists 1 diff_ids')
  })

  it('refuses a layer media type that is not an image layer', async () => {
    const dir = await tempDir()
    const w = await writeOciLayout(dir, [amd64])
    const mFile = path.join(dir, 'blobs/sha256', w.manifestDigests[0]!.slice(7))
    const m = JSON.parse(await fs.readFile(mFile, 'utf8')) as { layers: Array<{ mediaType: string }> }
    m.layers[1]!.mediaType = 'application/vnd.cncf.helm.chart.content.v1.tar+gzip'
    const mData = Buffer.from(JSON.stringify(m))
    await fs.writeFile(path.join(dir, 'blobs/sha256', sha256(mData).slice(7)), mData)
    await editJson(path.join(dir, 'index.json'), (v) => {
      Object.assign((v as IndexJson).manifests[0]!, { digest: sha256(mData), size: mData.length })
    })
    const e = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(e.code).toBe('E_INPUT')
    expect(e.message).toContain('layer 2: unsupported layer media type "application/vnd.cncf.helm.chart.content.v1.tar+gzip"')
  })

  it('refuses an oversized manifest by its descriptor, without reading it', async () => {
    const dir = await tempDir()
    await writeOciLayout(dir, [amd64])
    await editJson(path.join(dir, 'index.json'), (v) => {
      ;(v as IndexJson).manifests[0]!.size = 1024 * 1024 * 1024
    })
    const e = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(e.code).toBe('E_INPUT')
    expect(e.message).toContain('over the 4194304-byte limit')
  })

  it('names what is missing or malformed', async () => {
    const dir = await tempDir()
    const missing = await failure(ociLayoutSource(path.join(dir, 'nope'), { platform: 'linux/amd64' }).resolve())
    expect(missing).toMatchObject({ code: 'E_NOT_FOUND', message: `${path.join(dir, 'nope')}: no such directory` })

    const notLayout = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(notLayout).toMatchObject({ code: 'E_INPUT', message: `${dir}: not an OCI image layout (no oci-layout file)` })

    await writeOciLayout(dir, [amd64])
    await fs.writeFile(path.join(dir, 'index.json'), '{"schemaVersion": 2, "manifests": [')
    const badJson = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(badJson.code).toBe('E_INPUT')
    expect(badJson.message).toMatch(new RegExp(`^${dir}/index.json: not valid JSON`))

    await fs.writeFile(path.join(dir, 'index.json'), '{"schemaVersion": 2, "manifests": [{"digest": 5}]}')
    const badShape = await failure(ociLayoutSource(dir, { platform: 'linux/amd64' }).resolve())
    expect(badShape.message).toMatch(new RegExp(`^${dir}/index.json: manifests.0.digest: `))

    const badPlatform = await failure(ociLayoutSource(dir, { platform: 'amd64' }).resolve())
    expect(badPlatform.code).toBe('E_USAGE')
  })
})
