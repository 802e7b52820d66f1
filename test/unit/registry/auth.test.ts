import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { findCredentials, parseCredsString, parseWwwAuthenticate, TokenCache } from '../../../src/registry/auth.js'

describe('parseWwwAuthenticate', () => {
  it.each([
    [
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"',
      [{ scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/debian:pull' } }],
    ],
    ['Basic realm="Registry Realm"', [{ scheme: 'basic', params: { realm: 'Registry Realm' } }]],
    // distribution's insufficient_scope form, with an error param
    [
      'Bearer realm="http://127.0.0.1:1/token",service="s",scope="repository:a/b:pull",error="insufficient_scope"',
      [{ scheme: 'bearer', params: { realm: 'http://127.0.0.1:1/token', service: 's', scope: 'repository:a/b:pull', error: 'insufficient_scope' } }],
    ],
    // scheme case, spaces around '=', escaped quote
    ['BEARER Realm = "a\\"b" , Service=svc', [{ scheme: 'bearer', params: { realm: 'a"b', service: 'svc' } }]],
    // two challenges in one header
    ['Basic realm="x", Bearer realm="https://t/token",service="y"', [
      { scheme: 'basic', params: { realm: 'x' } },
      { scheme: 'bearer', params: { realm: 'https://t/token', service: 'y' } },
    ]],
    // a token68 credential is skipped, and the next challenge still parses
    ['Negotiate dGVzdA==, Basic realm="r"', [{ scheme: 'negotiate', params: {} }, { scheme: 'basic', params: { realm: 'r' } }]],
    // an unquoted URL (seen from some servers)
    ['Bearer realm=https://auth.example/token,service=reg', [{ scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'reg' } }]],
    ['', []],
    // an unterminated quote does not loop or throw
    ['Bearer realm="abc', [{ scheme: 'bearer', params: { realm: 'abc' } }]],
  ])('%s', (header, want) => {
    expect(parseWwwAuthenticate(header)).toEqual(want)
  })
})

describe('credentials', () => {
  let dir: string
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-auth-unit-'))
  })
  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true })
  })

  const writeConfig = async (name: string, doc: unknown): Promise<string> => {
    const d = path.join(dir, name)
    await fs.mkdir(d, { recursive: true })
    await fs.writeFile(path.join(d, 'config.json'), typeof doc === 'string' ? doc : JSON.stringify(doc))
    return d
  }
  const b64 = (s: string): string => Buffer.from(s).toString('base64')

  it('user:pass keeps colons in the password; a missing colon is a usage error', () => {
    expect(parseCredsString('u:p:q', '--creds')).toEqual({ username: 'u', password: 'p:q', source: '--creds' })
    expect(() => parseCredsString('nocolon', '--creds')).toThrow(BaleError)
    expect(() => parseCredsString(':p', '--creds')).toThrow(/--creds: want USER:PASSWORD/)
  })

  it('--creds beats the environment, which beats the docker config', async () => {
    const cfg = await writeConfig('prio', { auths: { 'host:5000': { auth: b64('file:f') } } })
    const env = { DOCKER_CONFIG: cfg, BALE_REGISTRY_CREDS: 'env:e' }
    expect(await findCredentials('host:5000', { creds: 'flag:x', env })).toMatchObject({ username: 'flag', source: '--creds' })
    expect(await findCredentials('host:5000', { env })).toMatchObject({ username: 'env', source: 'BALE_REGISTRY_CREDS' })
    expect(await findCredentials('host:5000', { env: { DOCKER_CONFIG: cfg } })).toMatchObject({ username: 'file', password: 'f' })
  })

  it('matches config.json keys by host, with or without scheme and path', async () => {
    const cfg = await writeConfig('keys', {
      auths: {
        'https://index.docker.io/v1/': { auth: b64('hub:h') },
        'http://reg.example:5000/v2/': { auth: b64('reg:r') },
        'other.example': { username: 'o', password: 'pw' },
      },
    })
    const env = { DOCKER_CONFIG: cfg }
    expect(await findCredentials('docker.io', { env })).toMatchObject({ username: 'hub', password: 'h' })
    expect(await findCredentials('reg.example:5000', { env })).toMatchObject({ username: 'reg', password: 'r' })
    expect(await findCredentials('other.example', { env })).toMatchObject({ username: 'o', password: 'pw' })
    expect(await findCredentials('reg.example', { env })).toBeUndefined() // the port is part of the host
    expect(await findCredentials('nowhere.example', { env })).toBeUndefined()
  })

  it('no config file means anonymous; a broken one is an error naming the file', async () => {
    expect(await findCredentials('x', { env: { DOCKER_CONFIG: path.join(dir, 'absent') } })).toBeUndefined()
    expect(await findCredentials('x', { env: { HOME: path.join(dir, 'absent-home') } })).toBeUndefined()
    const bad = await writeConfig('bad', '{not json')
    await expect(findCredentials('x', { env: { DOCKER_CONFIG: bad } })).rejects.toThrow(`${path.join(bad, 'config.json')}: not valid JSON`)
  })
})

describe('TokenCache', () => {
  it('keeps a token until 10 s before it expires; 60 s when the server gives no lifetime', () => {
    let now = 1_000_000
    const cache = new TokenCache(() => now)
    const k = TokenCache.key('https://t/token', 'svc', 'repository:a:pull', undefined)
    cache.set(k, 'tok', 300)
    now += 289_000
    expect(cache.get(k)).toBe('tok')
    now += 1_000
    expect(cache.get(k)).toBeUndefined()
    cache.set(k, 'tok2', undefined)
    now += 49_999
    expect(cache.get(k)).toBe('tok2')
    now += 1
    expect(cache.get(k)).toBeUndefined()
  })

  it('keys tokens by realm, service, scope and user', () => {
    const keys = new Set([
      TokenCache.key('r', 's', 'repository:a:pull', undefined),
      TokenCache.key('r', 's', 'repository:b:pull', undefined),
      TokenCache.key('r', 's', 'repository:a:pull', 'alice'),
      TokenCache.key('r2', 's', 'repository:a:pull', undefined),
      TokenCache.key('r', undefined, 'repository:a:pull', undefined),
    ])
    expect(keys.size).toBe(5)
  })
})
