/**
 * The local sources against layouts and archives written by real tools (skopeo, umoci), not
 * only by our own fixture writer: their index.json has no platforms, their docker-archive is
 * the legacy layout, their zstd layers come from the Go zstd encoder.
 */
import { execFileSync } from 'node:child_process'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openLayerTar } from '../../src/pipeline/source/layer.js'
import { openSource } from '../../src/pipeline/source/index.js'
import type { LayerBlob } from '../../src/pipeline/source/types.js'
import { type OciLayoutResult, writeOciLayout } from '../helpers/oci-layout.js'
import { buildTar } from '../helpers/tar.js'

let work: string
let fixture: string
let written: OciLayoutResult
const tars = [
  buildTar([
    { name: 'etc', type: 'dir' },
    { name: 'etc/os-release', content: 'ID=itest\n' },
    { name: 'bin', type: 'dir' },
    { name: 'bin/tool', content: Buffer.alloc(200_000, 'x'), mode: 0o755 },
  ]),
  buildTar([
    { name: 'etc', type: 'dir' },
    { name: 'etc/.wh.os-release', content: '' },
    { name: 'etc/motd', content: 'top layer\n' },
  ]),
]

async function untar(blob: LayerBlob): Promise<Buffer> {
  const { tar, digests } = await openLayerTar(blob, 'layer')
  const chunks: Buffer[] = []
  await pipeline(
    tar,
    new Writable({
      write(c: Buffer, _e, cb) {
        chunks.push(c)
        cb()
      },
    }),
  )
  await digests
  return Buffer.concat(chunks)
}

function skopeo(...args: string[]): void {
  execFileSync('skopeo', ['--insecure-policy', ...args], { stdio: 'pipe' })
}

beforeAll(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-sources-it-'))
  fixture = path.join(work, 'fixture')
  written = await writeOciLayout(
    fixture,
    [{ layers: [{ tar: tars[0] as Buffer, compression: 'gzip' }, { tar: tars[1] as Buffer, compression: 'none' }], config: { Cmd: ['/bin/tool'], Env: ['A=1'] } }],
    { tag: 'v1' },
  )
})

afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true })
})

describe('sources read what real tools write', () => {
  it('an OCI layout copied by skopeo (no platform in index.json)', async () => {
    const dest = path.join(work, 'skopeo-oci')
    skopeo('copy', `oci:${fixture}:v1`, `oci:${dest}:copied`)
    const index = JSON.parse(await fs.readFile(path.join(dest, 'index.json'), 'utf8')) as { manifests: Array<{ platform?: unknown }> }
    expect(index.manifests[0]?.platform).toBeUndefined()
    const img = await openSource({ kind: 'oci-layout', value: `${dest}:copied`, platform: 'linux/amd64' }).resolve()
    expect(img.config).toMatchObject({ cmd: ['/bin/tool'], env: ['A=1'] })
    expect(img.layers.map((l) => l.diffId)).toEqual(written.diffIds[0])
    for (const [i, l] of img.layers.entries()) expect((await untar(l)).equals(tars[i] as Buffer)).toBe(true)
  })

  it('zstd layers recompressed by skopeo (Go encoder) stream through fzstd and match their diff_ids', async () => {
    const dest = path.join(work, 'skopeo-zstd')
    skopeo('copy', '--dest-compress-format', 'zstd', '--dest-compress', `oci:${fixture}:v1`, `oci:${dest}:zstd`)
    const img = await openSource({ kind: 'oci-layout', value: `${dest}:zstd`, platform: 'linux/amd64' }).resolve()
    expect(img.layers.map((l) => l.compression)).toContain('zstd')
    for (const [i, l] of img.layers.entries()) expect((await untar(l)).equals(tars[i] as Buffer)).toBe(true)
  })

  it('a docker-archive written by skopeo', async () => {
    const file = path.join(work, 'skopeo-docker.tar')
    skopeo('copy', `oci:${fixture}:v1`, `docker-archive:${file}:itest:v1`)
    const img = await openSource({ kind: 'docker-archive', value: file, platform: 'linux/amd64' }).resolve()
    expect(img.ref).toBe(`docker-archive:${file}`)
    expect(img.layers.map((l) => l.diffId)).toEqual(written.diffIds[0])
    for (const [i, l] of img.layers.entries()) expect((await untar(l)).equals(tars[i] as Buffer)).toBe(true)
  })

  it('an image built by umoci', async () => {
    const layout = path.join(work, 'umoci')
    const env = { ...process.env, LC_ALL: 'C' }
    execFileSync('umoci', ['init', '--layout', layout], { env })
    execFileSync('umoci', ['new', '--image', `${layout}:base`], { env })
    const content = path.join(work, 'umoci-file')
    await fs.writeFile(content, 'inserted by umoci\n')
    execFileSync('umoci', ['insert', '--rootless', '--image', `${layout}:base`, content, '/srv/hello'], { env })
    execFileSync('umoci', ['config', '--image', `${layout}:base`, '--config.entrypoint', '/srv/hello'], { env })
    const img = await openSource({ kind: 'oci-layout', value: `${layout}:base`, platform: 'linux/amd64' }).resolve()
    expect(img.config.entrypoint).toEqual(['/srv/hello'])
    expect(img.layers).toHaveLength(1)
    const tar = await untar(img.layers[0] as LayerBlob)
    expect(tar.includes(Buffer.from('inserted by umoci\n'))).toBe(true)
  })
})
