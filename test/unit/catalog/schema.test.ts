import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { z } from 'zod'
import { CatalogSchema, compareVersions, IndexSchema, parseCatalog, parseIndex, parseNameAtVersion, serializeIndex } from '../../../src/catalog/schema.js'
import { isBaleError } from '../../../src/lib/errors.js'

const ROOT = path.resolve(import.meta.dirname, '..', '..', '..')
const SHIPPED = path.join(ROOT, 'catalog', 'catalog.json')

/** The JSON Schema files are generated from the zod schemas; BALE_UPDATE_SCHEMAS=1 rewrites them. */
function generated(schema: z.ZodType): string {
  return `${JSON.stringify(z.toJSONSchema(schema, { target: 'draft-2020-12', io: 'input' }), null, 2)}\n`
}

function entry(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'demo',
    version: '1.0',
    source: `127.0.0.1:5000/test/demo@sha256:${'a'.repeat(64)}`,
    platform: 'linux/amd64',
    kernel_ref: 'debian-6.1.0-56-cloud-amd64',
    description: 'a demo',
    ...over,
  }
}

function catalogText(entries: unknown[]): string {
  return JSON.stringify({ schema_version: 1, entries })
}

function rejection(text: string): string {
  try {
    parseCatalog(text, 'c.json')
  } catch (e) {
    expect(isBaleError(e)).toBe(true)
    return (e as Error).message
  }
  throw new Error('accepted')
}

describe('catalog schema', () => {
  it('the shipped catalog satisfies the schema, with every source pinned by digest', () => {
    const c = parseCatalog(readFileSync(SHIPPED, 'utf8'), SHIPPED)
    expect(c.entries.length).toBeGreaterThan(0)
    for (const e of c.entries) expect(e.source).toMatch(/@sha256:[0-9a-f]{64}$/)
  })

  for (const [file, schema] of [
    ['catalog.schema.json', CatalogSchema],
    ['index.schema.json', IndexSchema],
  ] as const) {
    it(`catalog/${file} is the JSON Schema generated from the zod schema`, () => {
      const p = path.join(ROOT, 'catalog', file)
      if (process.env.BALE_UPDATE_SCHEMAS === '1') writeFileSync(p, generated(schema))
      expect(readFileSync(p, 'utf8')).toBe(generated(schema))
    })
  }

  it('accepts a minimal entry', () => {
    expect(parseCatalog(catalogText([entry()]), 'c.json').entries[0]?.name).toBe('demo')
  })

  it.each([
    ['a tag instead of a digest', { source: '127.0.0.1:5000/test/demo:1.0' }, 'source'],
    ['an uppercase name', { name: 'Demo' }, 'name'],
    ['the reserved name kernels', { name: 'kernels' }, 'reserved'],
    ['the reserved version latest', { version: 'latest' }, 'reserved'],
    ['kernel_ref default', { kernel_ref: 'default' }, 'default'],
    ['a version that is not an OCI tag', { version: '1.0/2' }, 'version'],
    ['a two-line description', { description: 'a\nb' }, 'description'],
    ['an unknown field', { colour: 'blue' }, 'colour'],
    ['a malformed platform', { platform: 'amd64' }, 'platform'],
  ])('rejects %s', (_what, over, word) => {
    expect(rejection(catalogText([entry(over)]))).toContain(word)
  })

  it('rejects two entries with the same name, naming it', () => {
    expect(rejection(catalogText([entry(), entry({ version: '2.0' })]))).toContain("'demo' appears twice")
  })

  it('rejects invalid JSON with the file name', () => {
    expect(rejection('{')).toMatch(/^c\.json: not valid JSON/)
  })
})

describe('index', () => {
  const bundle = {
    name: 'demo',
    version: '1.0',
    url: 'bundles/demo/demo-1.0.bundle.tar.zst',
    size: 10,
    integrity: `sha512-${Buffer.alloc(64, 1).toString('base64')}`,
    sha256: 'b'.repeat(64),
    kernel_ref: 'k1',
    created: '2024-01-02T03:04:05.000Z',
  }

  it('serializes sorted and stable, and parses back', () => {
    const a = serializeIndex({ schema_version: 1, bundles: [{ ...bundle, version: '10' }, { ...bundle, version: '9' }], kernels: [] })
    const b = serializeIndex({ schema_version: 1, bundles: [{ ...bundle, version: '9' }, { ...bundle, version: '10' }], kernels: [] })
    expect(a).toBe(b)
    expect(parseIndex(a, 'i.json').bundles.map((x) => x.version)).toEqual(['9', '10'])
  })

  it('rejects the same NAME@VERSION twice', () => {
    expect(() => parseIndex(JSON.stringify({ schema_version: 1, bundles: [bundle, bundle], kernels: [] }), 'i.json')).toThrow('demo@1.0 appears twice')
  })
})

describe('versions', () => {
  it('orders digit runs numerically', () => {
    const sorted = ['3.10', '3.9', '12', '12.1', '1.36', '2', '3.20'].sort(compareVersions)
    expect(sorted).toEqual(['1.36', '2', '3.9', '3.10', '3.20', '12', '12.1'])
  })

  it('parses NAME and NAME@VERSION and rejects anything else by name', () => {
    expect(parseNameAtVersion('debian')).toEqual({ name: 'debian' })
    expect(parseNameAtVersion('debian@12-slim')).toEqual({ name: 'debian', version: '12-slim' })
    expect(() => parseNameAtVersion('Debian')).toThrow("'Debian'")
    expect(() => parseNameAtVersion('debian@')).toThrow("'debian@'")
  })
})
