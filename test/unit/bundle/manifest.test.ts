import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { type BundleManifest, parseManifest, parseManifestBytes, serializeManifest } from '../../../src/pipeline/bundle/manifest.js'
import { manifestFor } from './fixtures.js'

function errorOf(f: () => unknown): BaleError {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(BaleError)
    return e as BaleError
  }
  throw new Error('expected a BaleError')
}

describe('bundle manifest schema', () => {
  const good = manifestFor(Buffer.from('rootfs'))

  it('accepts a complete manifest and returns it typed', () => {
    expect(parseManifest(JSON.parse(JSON.stringify(good)), 'm.json')).toEqual(good)
  })

  it('accepts a bare rootfs tar source (no manifest/config/layer digests, no sizes)', () => {
    const bare: BundleManifest = {
      ...good,
      source: { ref: 'rootfs-tar:-', platform: 'linux/amd64', layers: [{ diff_id: `sha256:${'d'.repeat(64)}`, media_type: 'application/vnd.oci.image.layer.v1.tar' }] },
    }
    expect(parseManifest(bare, 'm.json').source.manifest_digest).toBeUndefined()
  })

  it.each([
    ['rootfs.sha256', (m: Record<string, unknown>) => ((m.rootfs as Record<string, unknown>).sha256 = 'xyz'), 'm.json: rootfs.sha256: expected 64 lowercase hex digits'],
    ['rootfs.file', (m: Record<string, unknown>) => ((m.rootfs as Record<string, unknown>).file = '../etc/passwd'), 'm.json: rootfs.file: '],
    ['name', (m: Record<string, unknown>) => (m.name = ''), 'm.json: name: must not be empty'],
    ['name with a newline', (m: Record<string, unknown>) => (m.name = 'a\nb'), 'm.json: name: must not contain control characters'],
    ['created', (m: Record<string, unknown>) => (m.created = 'yesterday'), 'm.json: created: '],
    ['a layer diff_id', (m: Record<string, unknown>) => (((m.source as { layers: Array<Record<string, unknown>> }).layers[0] as Record<string, unknown>).diff_id = 'sha256:1'), 'm.json: source.layers.0.diff_id: expected sha256:<64 hex digits>'],
    ['config.env', (m: Record<string, unknown>) => ((m.config as Record<string, unknown>).env = 'PATH=/bin'), 'm.json: config.env: '],
    ['agent', (m: Record<string, unknown>) => delete m.agent, 'm.json: agent: '],
  ])('names the first bad field: %s', (_what, mutate, message) => {
    const m = JSON.parse(JSON.stringify(good)) as Record<string, unknown>
    mutate(m)
    const e = errorOf(() => parseManifest(m, 'm.json'))
    expect(e.code).toBe('E_INPUT')
    expect(e.message.startsWith(message)).toBe(true)
    expect(e.message).not.toContain('\n')
  })

  it('says which schema versions it reads', () => {
    const e = errorOf(() => parseManifest({ ...good, schema_version: 2 }, 'm.json'))
    expect(e.message).toBe('m.json: schema_version 2 is not supported (this bale reads 1)')
  })

  it('reports bad JSON with the document name', () => {
    const e = errorOf(() => parseManifestBytes(Buffer.from('{"schema_version": 1,'), 'b.tar.zst: manifest.json'))
    expect(e.message).toMatch(/^b\.tar\.zst: manifest\.json: not valid JSON \(/)
  })

  it('serializes canonically: the same content built in another key order gives the same bytes', () => {
    const reordered = Object.fromEntries(Object.entries(good).reverse()) as BundleManifest
    reordered.rootfs = { sha256: good.rootfs.sha256, size: good.rootfs.size, file: 'rootfs.ext4' }
    const a = serializeManifest(good)
    expect(serializeManifest(reordered).equals(a)).toBe(true)
    expect(a.toString().startsWith('{\n  "schema_version": 1,\n  "name": "demo",')).toBe(true)
    expect(a.toString().endsWith('}\n')).toBe(true)
  })
})
