import { describe, expect, it } from 'vitest'
import { defaultName, defaultVersion, uuidFrom } from '../../../src/pipeline/make-bundle.js'

describe('bundle name and version defaults', () => {
  it.each([
    ['debian:bookworm', 'debian', 'bookworm'],
    ['host:5000/team/app:1.2', 'app', '1.2'],
    ['host:5000/team/app', 'app', 'latest'],
    ['docker.io/library/debian@sha256:' + 'a'.repeat(64), 'debian', 'latest'],
    ['oci-layout:/x/my-img:v3', 'my-img', 'v3'],
    ['/tmp/Demo Image.tar.gz', 'demo-image', 'latest'],
  ])('%s → %s %s', (ref, name, version) => {
    expect(defaultName(ref)).toBe(name)
    expect(defaultVersion(ref)).toBe(version)
  })
})

describe('uuidFrom', () => {
  it('is stable, RFC 4122 shaped, and differs by purpose and key', () => {
    const a = uuidFrom('fs-uuid', 'k')
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(uuidFrom('fs-uuid', 'k')).toBe(a)
    expect(uuidFrom('hash-seed', 'k')).not.toBe(a)
    expect(uuidFrom('fs-uuid', 'k2')).not.toBe(a)
  })
})
