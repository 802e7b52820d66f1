/**
 * validate.ts's hand-written checks against manifest.ts's zod schemas, on generated documents
 * that are mostly valid with every field sometimes missing, null, or of the wrong type: the two
 * must accept the same documents and return the same objects.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import type { z } from 'zod'
import { ConfigFileSchema, DescriptorSchema, IndexSchema, ManifestSchema } from '../../../src/registry/schemas.js'
import { checkConfigFile, checkDescriptor, checkIndex, checkManifest } from '../../../src/registry/validate.js'

const digestA = fc.stringMatching(/^[0-9a-f]{64}$/).map((h) => `sha256:${h}`)
/** A field: usually a good value, sometimes absent (undefined key dropped by JSON), null or junk. */
const field = <T>(good: fc.Arbitrary<T>): fc.Arbitrary<unknown> =>
  fc.oneof({ weight: 60, arbitrary: good }, fc.constant(undefined), fc.constant(null), fc.jsonValue({ maxDepth: 1 }), fc.constant(''), fc.constant(-1), fc.constant(1.5))
const strRecord = fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof({ weight: 20, arbitrary: fc.string({ maxLength: 8 }) }, fc.integer()), { maxKeys: 3 })
const platform = fc.record({ os: field(fc.constantFrom('linux', 'windows')), architecture: field(fc.constantFrom('amd64', 'arm')), variant: field(fc.constant('v7')), 'os.version': field(fc.string()), extra: field(fc.string()) })
const descriptor = fc.record({
  mediaType: field(fc.constantFrom('application/vnd.oci.image.layer.v1.tar+gzip', 'x')),
  digest: field(fc.oneof({ weight: 20, arbitrary: digestA }, fc.constant('sha256:short'))),
  size: field(fc.oneof({ weight: 20, arbitrary: fc.nat() }, fc.constant(2 ** 53))),
  platform: field(platform),
  annotations: field(strRecord),
  urls: field(fc.array(fc.oneof({ weight: 20, arbitrary: fc.webUrl() }, fc.integer()), { maxLength: 2 })),
  unknownKey: field(fc.string()),
})
const index = fc.record({ schemaVersion: field(fc.oneof({ weight: 20, arbitrary: fc.constant(2) }, fc.constant(1))), mediaType: field(fc.string()), manifests: field(fc.array(descriptor, { maxLength: 3 })), annotations: field(strRecord) })
const manifest = fc.record({ schemaVersion: field(fc.oneof({ weight: 20, arbitrary: fc.constant(2) }, fc.constant(1))), mediaType: field(fc.string()), config: field(descriptor), layers: field(fc.array(descriptor, { maxLength: 3 })), annotations: field(strRecord) })
const strings = fc.array(fc.oneof({ weight: 20, arbitrary: fc.string({ maxLength: 6 }) }, fc.integer()), { maxLength: 3 })
const config = fc.record({
  architecture: field(fc.constant('amd64')),
  os: field(fc.constant('linux')),
  variant: field(fc.constant('v8')),
  created: field(fc.constant('2024-01-01T00:00:00Z')),
  config: field(
    fc.record({
      Entrypoint: field(strings),
      Cmd: field(strings),
      Env: field(strings),
      User: field(fc.string()),
      WorkingDir: field(fc.string()),
      ExposedPorts: field(fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 2 })),
      Labels: field(strRecord),
      StopSignal: field(fc.string()),
      Other: field(fc.string()),
    }),
  ),
  rootfs: field(fc.record({ type: field(fc.oneof({ weight: 20, arbitrary: fc.constant('layers') }, fc.constant('other'))), diff_ids: field(fc.array(fc.oneof({ weight: 20, arbitrary: digestA }, fc.constant('md5:x')), { maxLength: 3 })) })),
})

/** Through JSON, as documents arrive: undefined-valued keys vanish. */
const asJson = (v: unknown): unknown => JSON.parse(JSON.stringify(v)) as unknown

function agree(arb: fc.Arbitrary<unknown>, schema: z.ZodType, check: (v: unknown) => unknown): void {
  const seen = { accepted: 0, refused: 0 }
  fc.assert(
    fc.property(arb, (raw) => {
      const doc = asJson(raw)
      const z = schema.safeParse(doc)
      let mine: { ok: true; value: unknown } | { ok: false }
      try {
        mine = { ok: true, value: check(doc) }
      } catch {
        mine = { ok: false }
      }
      expect(mine.ok).toBe(z.success)
      seen[mine.ok ? 'accepted' : 'refused']++
      if (mine.ok && z.success) expect(mine.value).toStrictEqual(z.data)
    }),
    { numRuns: 3000 },
  )
  // The generator must exercise both answers, or agreement says nothing.
  expect(seen.accepted).toBeGreaterThan(50)
  expect(seen.refused).toBeGreaterThan(50)
}

describe('hand-written checks accept exactly what the zod schemas accept', () => {
  it('descriptors', () => agree(descriptor, DescriptorSchema, checkDescriptor))
  it('image indexes', () => agree(index, IndexSchema, checkIndex))
  it('image manifests', () => agree(manifest, ManifestSchema, checkManifest))
  it('image configs', () => agree(config, ConfigFileSchema, checkConfigFile))
  it('a top-level non-object is refused by both', () => {
    for (const v of [null, [], 'x', 1]) {
      expect(() => checkManifest(v)).toThrow(/expected an object/)
      expect(ManifestSchema.safeParse(v).success).toBe(false)
    }
  })
})
