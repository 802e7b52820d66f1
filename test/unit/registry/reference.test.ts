import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { hostOf, isLoopbackHost, parseReference, plainHttpAllowed, registryOrigin } from '../../../src/registry/reference.js'

const D = `sha256:${'a'.repeat(64)}`

describe('parseReference', () => {
  it.each([
    // input, registry (to connect to), domain (canonical), repository, tag, digest, canonical
    ['debian', 'registry-1.docker.io', 'docker.io', 'library/debian', 'latest', undefined, 'docker.io/library/debian:latest'],
    ['debian:bookworm', 'registry-1.docker.io', 'docker.io', 'library/debian', 'bookworm', undefined, 'docker.io/library/debian:bookworm'],
    ['docker.io/library/debian', 'registry-1.docker.io', 'docker.io', 'library/debian', 'latest', undefined, 'docker.io/library/debian:latest'],
    ['docker.io/debian:12', 'registry-1.docker.io', 'docker.io', 'library/debian', '12', undefined, 'docker.io/library/debian:12'],
    ['index.docker.io/library/debian:12', 'registry-1.docker.io', 'docker.io', 'library/debian', '12', undefined, 'docker.io/library/debian:12'],
    ['bitnami/redis:7.2', 'registry-1.docker.io', 'docker.io', 'bitnami/redis', '7.2', undefined, 'docker.io/bitnami/redis:7.2'],
    ['host:5000/a/b:tag', 'host:5000', 'host:5000', 'a/b', 'tag', undefined, 'host:5000/a/b:tag'],
    ['host:5000/a/b', 'host:5000', 'host:5000', 'a/b', 'latest', undefined, 'host:5000/a/b:latest'],
    ['localhost/img', 'localhost', 'localhost', 'img', 'latest', undefined, 'localhost/img:latest'],
    ['127.0.0.1:5000/x', '127.0.0.1:5000', '127.0.0.1:5000', 'x', 'latest', undefined, '127.0.0.1:5000/x:latest'],
    ['[::1]:5000/x:y', '[::1]:5000', '[::1]:5000', 'x', 'y', undefined, '[::1]:5000/x:y'],
    ['ghcr.io/org/sub/app:v1.2.3-rc_1', 'ghcr.io', 'ghcr.io', 'org/sub/app', 'v1.2.3-rc_1', undefined, 'ghcr.io/org/sub/app:v1.2.3-rc_1'],
    [`debian@${D}`, 'registry-1.docker.io', 'docker.io', 'library/debian', undefined, D, `docker.io/library/debian@${D}`],
    [`host:5000/a@${D}`, 'host:5000', 'host:5000', 'a', undefined, D, `host:5000/a@${D}`],
    [`debian:12@${D}`, 'registry-1.docker.io', 'docker.io', 'library/debian', '12', D, `docker.io/library/debian:12@${D}`],
    ['a.b-c/d__e--f.g_h', 'a.b-c', 'a.b-c', 'd__e--f.g_h', 'latest', undefined, 'a.b-c/d__e--f.g_h:latest'],
  ])('%s', (input, registry, domain, repository, tag, digest, canonical) => {
    const r = parseReference(input)
    expect(r).toEqual({ registry, domain, repository, ...(tag === undefined ? {} : { tag }), ...(digest === undefined ? {} : { digest }), canonical })
  })

  it.each([
    ['', /empty/],
    ['Debian', /repository name must be lowercase \('Debian'\)/],
    ['host:5000/A/b', /must be lowercase/],
    ['a//b', /empty path component/],
    ['debian:', /malformed tag ''/],
    ['debian:-bad', /malformed tag '-bad'/],
    [`debian:${'x'.repeat(129)}`, /malformed tag/],
    ['debian@sha256:abc', /malformed digest/],
    [`debian@sha512:${'a'.repeat(128)}`, /unsupported digest algorithm/],
    [`debian@sha256:${'A'.repeat(64)}`, /malformed digest/],
    ['https://host/x', /not a URL/],
    ['a b', /whitespace/],
    ['host:5000/', /empty path component/],
    ['-bad.host:5000/x', /malformed registry host/],
    ['under_score.host/x', /malformed registry host 'under_score.host'/],
    ['x/_y', /malformed path component '_y'/],
    [`host/${'a'.repeat(260)}`, /longer than 255/],
  ])('rejects %j', (input, why) => {
    let err: unknown
    try {
      parseReference(input)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(BaleError)
    expect((err as BaleError).code).toBe('E_INPUT')
    expect((err as BaleError).message).toMatch(why)
    expect((err as BaleError).subject).toBe(input)
  })
})

describe('loopback', () => {
  it.each([
    ['localhost:5000', true],
    ['127.0.0.1:5000', true],
    ['127.1.2.3', true],
    ['[::1]:5000', true],
    ['foo.localhost', true],
    ['registry-1.docker.io', false],
    ['10.0.0.1:5000', false],
    ['127.0.0.1.example.com', false],
  ])('%s → %s', (registry, loop) => {
    expect(isLoopbackHost(hostOf(registry))).toBe(loop)
  })
})

describe('plain HTTP rule', () => {
  it.each([
    ['127.0.0.1', false, true],
    ['localhost', false, true],
    ['[::1]', false, true], // a URL's hostname keeps IPv6 brackets
    ['::1', false, true],
    ['registry.example', false, false],
    ['[2001:db8::1]', false, false],
    ['registry.example', true, true],
  ])('%s (insecure=%s): plain HTTP allowed = %s', (host, insecure, allowed) => {
    expect(plainHttpAllowed(host, insecure)).toBe(allowed)
  })

  it('picks the origin scheme by the same rule', () => {
    expect(registryOrigin(parseReference('127.0.0.1:5000/a/b:t'), false)).toBe('http://127.0.0.1:5000')
    expect(registryOrigin(parseReference('[::1]:5000/a/b:t'), false)).toBe('http://[::1]:5000')
    expect(registryOrigin(parseReference('registry.example/a/b:t'), false)).toBe('https://registry.example')
    expect(registryOrigin(parseReference('registry.example/a/b:t'), true)).toBe('http://registry.example')
  })
})
