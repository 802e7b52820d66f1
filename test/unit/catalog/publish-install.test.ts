import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { installFromMirror } from '../../../src/catalog/install.js'
import { publishToDir } from '../../../src/catalog/publish-dir.js'
import { resolveInstalled } from '../../../src/catalog/store.js'
import type { BuiltBundle } from '../../../src/catalog/build.js'
import { addKernel, makeBuilt } from './fixtures.js'

/** Compare big buffers by digest: vitest's deep equality walks them byte by byte, very slowly. */
function digestOf(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

let root: string
let builder: NodeJS.ProcessEnv
let demo1: BuiltBundle
let demo2: BuiltBundle
let other: BuiltBundle

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-publish-'))
  builder = { BALE_DATA_DIR: path.join(root, 'builder'), BALE_CACHE_DIR: path.join(root, 'builder-cache') }
  await addKernel(builder.BALE_DATA_DIR as string, 'k1')
  demo1 = await makeBuilt(path.join(root, 'build'), 'demo', '1.9')
  demo2 = await makeBuilt(path.join(root, 'build'), 'demo', '1.10')
  other = await makeBuilt(path.join(root, 'build'), 'other', '1')
})
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true })
})

async function fresh(label: string): Promise<NodeJS.ProcessEnv> {
  const d = await fs.mkdtemp(path.join(root, `${label}-`))
  return { BALE_DATA_DIR: path.join(d, 'data'), BALE_CACHE_DIR: path.join(d, 'cache') }
}

describe('publish to a directory', () => {
  it('keeps entries of earlier publishes and replaces only what is republished', async () => {
    const dir = path.join(root, 'pub-merge')
    await publishToDir({ dir, bundles: [demo1], kernels: false, checksums: false, env: builder })
    const r = await publishToDir({ dir, bundles: [other], kernels: false, checksums: false, env: builder })
    expect(r.index_changed).toBe(true)
    const index = JSON.parse(await fs.readFile(path.join(dir, 'index.json'), 'utf8')) as { bundles: Array<{ name: string; version: string }> }
    expect(index.bundles.map((b) => `${b.name}@${b.version}`)).toEqual(['demo@1.9', 'other@1'])
  })

  it('refuses to overwrite a foreign index.json', async () => {
    const dir = path.join(root, 'pub-foreign')
    await fs.mkdir(dir)
    await fs.writeFile(path.join(dir, 'index.json'), '{"something": "else"}')
    await expect(publishToDir({ dir, bundles: [demo1], kernels: false, checksums: false, env: builder })).rejects.toMatchObject({ code: 'E_INPUT' })
    expect(await fs.readFile(path.join(dir, 'index.json'), 'utf8')).toBe('{"something": "else"}')
  })

  it('a build output that no longer matches its record is refused and the index is untouched', async () => {
    const dir = path.join(root, 'pub-corrupt')
    const src = await makeBuilt(path.join(root, 'build-corrupt'), 'corrupt', '1')
    await publishToDir({ dir, bundles: [demo1], kernels: false, checksums: false, env: builder })
    const before = await fs.readFile(path.join(dir, 'index.json'), 'utf8')
    const data = await fs.readFile(src.file)
    data[100] = (data[100] as number) ^ 1
    await fs.writeFile(src.file, data)
    await expect(publishToDir({ dir, bundles: [src], kernels: false, checksums: false, env: builder })).rejects.toThrow(/^corrupt@1 \(.*\): expected sha512-/)
    expect(await fs.readFile(path.join(dir, 'index.json'), 'utf8')).toBe(before)
    expect(await fs.readdir(path.join(dir, 'bundles', 'corrupt'))).toEqual([])
  })

  it('a damaged published copy is replaced on the next publish', async () => {
    const dir = path.join(root, 'pub-repair')
    await publishToDir({ dir, bundles: [demo1], kernels: false, checksums: false, env: builder })
    const published = path.join(dir, 'bundles', 'demo', 'demo-1.9.bundle.tar.zst')
    await fs.writeFile(published, 'damaged')
    await publishToDir({ dir, bundles: [demo1], kernels: false, checksums: false, env: builder })
    expect(digestOf(await fs.readFile(published))).toBe(digestOf(await fs.readFile(demo1.file)))
  })
})

describe('install from a mirror', () => {
  let mirror: string

  beforeAll(async () => {
    mirror = path.join(root, 'mirror')
    await publishToDir({ dir: mirror, bundles: [demo1, demo2, other], kernels: true, checksums: true, env: builder })
  })

  it('installs NAME as its newest version (natural order), with its kernel', async () => {
    const env = await fresh('inst')
    const r = await installFromMirror({ from: mirror, selectors: ['demo'], env })
    expect(r.bundles.map((b) => `${b.name}@${b.version}:${b.status}`)).toEqual(['demo@1.10:installed'])
    expect(r.kernels).toEqual([{ ref: 'k1', status: 'installed' }])
    expect(await resolveInstalled('demo', env)).toBe(r.bundles[0]?.path)
    expect((await fs.readdir(path.join(env.BALE_DATA_DIR as string, 'bundles', '.incoming'))).length).toBe(0)
  })

  it('names the missing entry and what the mirror has', async () => {
    await expect(installFromMirror({ from: mirror, selectors: ['demo@3'], env: await fresh('inst') })).rejects.toThrow(/^demo@3: not in .* \(it has: demo@1.9, demo@1.10, other\)$/)
  })

  async function editedMirror(edit: (index: { bundles: Array<Record<string, unknown>> }) => void, sums = true): Promise<string> {
    const copy = await fs.mkdtemp(path.join(root, 'edited-'))
    await fs.cp(mirror, copy, { recursive: true })
    const file = path.join(copy, 'index.json')
    const index = JSON.parse(await fs.readFile(file, 'utf8')) as { bundles: Array<Record<string, unknown>> }
    edit(index)
    const text = `${JSON.stringify(index, null, 2)}\n`
    await fs.writeFile(file, text)
    if (sums) {
      // Re-sign SHA256SUMS for the edited index, as an attacker rewriting both would.
      const s = (await fs.readFile(path.join(copy, 'SHA256SUMS'), 'utf8')).replace(/^[0-9a-f]{64}(?= {2}index\.json$)/m, createHash('sha256').update(text).digest('hex'))
      await fs.writeFile(path.join(copy, 'SHA256SUMS'), s)
    }
    return copy
  }

  it('refuses an index URL that leaves the mirror (mirror-url-escape)', async () => {
    const copy = await editedMirror((i) => {
      for (const b of i.bundles) if (b.name === 'other') b.url = '../build/other-1.bundle.tar.zst'
    })
    await expect(installFromMirror({ from: copy, selectors: ['other'], env: await fresh('esc') })).rejects.toMatchObject({ code: 'E_UNSAFE_PATH' })
  })

  it('refuses an index whose sha256 disagrees with SHA256SUMS for a file', async () => {
    const copy = await editedMirror((i) => {
      for (const b of i.bundles) if (b.name === 'other') b.sha256 = 'e'.repeat(64)
    })
    await expect(installFromMirror({ from: copy, selectors: ['other'], env: await fresh('dis') })).rejects.toThrow('SHA256SUMS says sha256:')
  })

  it('refuses a bundle whose manifest.json names another bundle than the index entry', async () => {
    const build = path.join(root, 'build-liar')
    const liar = await makeBuilt(build, 'liar', '1', { manifestName: 'demo' })
    const m = path.join(root, 'mirror-liar')
    await publishToDir({ dir: m, bundles: [demo1, liar], kernels: true, checksums: true, env: builder })
    const env = await fresh('liar')
    await expect(installFromMirror({ from: m, selectors: ['liar'], env })).rejects.toThrow("manifest.json says name 'demo', the index says 'liar'")
    await expect(resolveInstalled('liar', env)).rejects.toMatchObject({ code: 'E_NOT_FOUND' })
    await expect(resolveInstalled('demo', env)).rejects.toMatchObject({ code: 'E_NOT_FOUND' })
  })
})
