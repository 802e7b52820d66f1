import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { MEDIA_TYPES, parseConfigFile, parseManifest } from '../../../src/registry/manifest.js'

const D = (c: string): string => `sha256:${c.repeat(64)}`
const desc = (mediaType: string, c: string) => ({ mediaType, digest: D(c), size: 10 })
const manifestDoc = (mediaType?: string) => ({
  schemaVersion: 2,
  ...(mediaType === undefined ? {} : { mediaType }),
  config: desc(MEDIA_TYPES.ociConfig, 'c'),
  layers: [desc('application/vnd.oci.image.layer.v1.tar+gzip', 'a')],
})
const indexDoc = (mediaType?: string) => ({
  schemaVersion: 2,
  ...(mediaType === undefined ? {} : { mediaType }),
  manifests: [{ ...desc(MEDIA_TYPES.ociManifest, 'b'), platform: { os: 'linux', architecture: 'amd64' } }],
})
const buf = (doc: unknown): Buffer => Buffer.from(JSON.stringify(doc))

function fails(fn: () => unknown): BaleError {
  try {
    fn()
  } catch (e) {
    expect(e).toBeInstanceOf(BaleError)
    return e as BaleError
  }
  throw new Error('did not throw')
}

describe('parseManifest', () => {
  it('takes the type from the body, else the Content-Type, else the shape', () => {
    expect(parseManifest(buf(manifestDoc(MEDIA_TYPES.dockerManifest)), 'application/json', 'w').mediaType).toBe(MEDIA_TYPES.dockerManifest)
    expect(parseManifest(buf(manifestDoc()), `${MEDIA_TYPES.dockerManifest}; charset=utf-8`, 'w').mediaType).toBe(MEDIA_TYPES.dockerManifest)
    expect(parseManifest(buf(manifestDoc()), undefined, 'w')).toMatchObject({ kind: 'manifest', mediaType: MEDIA_TYPES.ociManifest })
    expect(parseManifest(buf(indexDoc()), 'application/octet-stream', 'w')).toMatchObject({ kind: 'index', mediaType: MEDIA_TYPES.ociIndex })
    expect(parseManifest(buf(indexDoc(MEDIA_TYPES.dockerList)), MEDIA_TYPES.dockerList, 'w').kind).toBe('index')
  })

  it('mediatype-contradicts-content-type: refused, naming both', () => {
    const e = fails(() => parseManifest(buf(manifestDoc(MEDIA_TYPES.ociManifest)), MEDIA_TYPES.ociIndex, 'reg/repo:tag'))
    expect(e.code).toBe('E_INPUT')
    expect(e.message).toBe(
      `reg/repo:tag: mediaType ${MEDIA_TYPES.ociManifest} in the body contradicts ${MEDIA_TYPES.ociIndex} it was served or described as`,
    )
    // Docker vs OCI flavours of the same kind are still a contradiction.
    expect(() => parseManifest(buf(indexDoc(MEDIA_TYPES.dockerList)), MEDIA_TYPES.ociIndex, 'w')).toThrow(/contradicts/)
  })

  it('ambiguous-index-and-manifest (CVE-2021-41190): refused', () => {
    const doc = { ...manifestDoc(), manifests: indexDoc().manifests }
    expect(fails(() => parseManifest(buf(doc), undefined, 'w')).message).toMatch(/both 'manifests' and 'layers'\/'config'/)
  })

  it('a body typed as an index must have the shape of one', () => {
    const e = fails(() => parseManifest(buf({ ...manifestDoc(), mediaType: MEDIA_TYPES.ociIndex }), undefined, 'w'))
    expect(e.message).toMatch(/^w: (malformed image index: manifests: |document has both)/)
  })

  it('schema 1 is refused with a reason', () => {
    expect(fails(() => parseManifest(buf({ schemaVersion: 1, name: 'x', fsLayers: [] }), 'application/json', 'w')).message).toMatch(/Docker schema 1 manifests are not supported/)
    expect(() => parseManifest(buf(manifestDoc()), MEDIA_TYPES.dockerSchema1Signed, 'w')).toThrow(/schema 1/)
  })

  it.each([
    ['not json', 'w: manifest is not valid JSON'],
    ['[1]', 'w: manifest is not a JSON object'],
    [JSON.stringify({ ...manifestDoc(), config: { ...desc(MEDIA_TYPES.ociConfig, 'c'), digest: 'sha256:short' } }), /config\.digest: not a sha256 digest/],
    [JSON.stringify({ ...manifestDoc(), layers: [{ ...desc('x', 'a'), size: -1 }] }), /layers\.0\.size/],
    [JSON.stringify({ ...manifestDoc(), schemaVersion: 3 }), /schemaVersion/],
    [JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.example+json' }), /unsupported manifest media type application\/vnd\.example\+json/],
  ])('malformed %s', (text, why) => {
    expect(() => parseManifest(Buffer.from(text), undefined, 'w')).toThrow(why)
  })
})

describe('parseConfigFile', () => {
  it('accepts Docker nulls and requires diff_ids', () => {
    const c = parseConfigFile(buf({ architecture: 'amd64', os: 'linux', config: { Entrypoint: null, Cmd: ['sh'], ExposedPorts: null }, rootfs: { type: 'layers', diff_ids: [D('d')] } }), 'cfg')
    expect(c.rootfs.diff_ids).toEqual([D('d')])
    expect(() => parseConfigFile(buf({ rootfs: { type: 'layers', diff_ids: ['md5:x'] } }), 'cfg')).toThrow(/cfg: malformed image config: rootfs\.diff_ids\.0/)
    expect(() => parseConfigFile(buf({ architecture: 'amd64' }), 'cfg')).toThrow(/rootfs/)
  })
})
