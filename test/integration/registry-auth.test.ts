/**
 * Authentication against real registries: docker-registry behind htpasswd (bcrypt) basic auth
 * and behind token auth (test/helpers/token-server.ts signs the JWTs), credentials from
 * --creds, the environment and ~/.docker/config.json, and redirects that must not carry
 * Authorization to another origin.
 */
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, beforeEach, describe, expect, inject, it } from 'vitest'
import { BaleError } from '../../src/lib/errors.js'
import { pull } from '../../src/registry/pull.js'
import { type FaultProxy, isBlob, startFaultProxy } from '../helpers/fault-proxy.js'
import { filesLayer, type PushedImage, pushImage, pseudoRandom } from '../helpers/registry.js'
import { resetTokenServer, setTokenField, tokenStats } from '../helpers/token-server.js'

const regs = inject('registries')
const creds = `${regs.user}:${regs.password}`

let work: string
let basicImg: PushedImage
let tokenImg: PushedImage
/** An empty environment: no BALE_REGISTRY_CREDS, no real ~/.docker/config.json. */
let cleanEnv: NodeJS.ProcessEnv

async function newStore(): Promise<string> {
  return fs.mkdtemp(path.join(work, 'store-'))
}

async function failure(p: Promise<unknown>): Promise<BaleError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  )
  expect(e).toBeInstanceOf(BaleError)
  return e as BaleError
}

const image = (seed: string) => [{ layers: [filesLayer({ 'data.bin': pseudoRandom(seed, 256 * 1024) }, 'gzip' as const), filesLayer({ 'etc/x': 'x\n' }, 'none' as const)] }]

beforeAll(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-auth-test-'))
  cleanEnv = { HOME: path.join(work, 'home'), DOCKER_CONFIG: path.join(work, 'no-docker-config') }
  basicImg = await pushImage(work, regs.basic, 'auth/basic:v1', image('basic'), { creds })
  tokenImg = await pushImage(work, regs.token, 'auth/token:v1', image('token'), { creds })
})

afterAll(async () => {
  if (work) await fs.rm(work, { recursive: true, force: true })
})

describe('basic auth (htpasswd)', () => {
  it('pulls with --creds', async () => {
    const res = await pull(basicImg.ref, { storeDir: await newStore(), creds, env: cleanEnv })
    expect(res.manifestDigest).toBe(basicImg.manifestDigests[0])
  })

  it('without credentials fails at once with a clear 401 message', async () => {
    const e = await failure(pull(basicImg.ref, { storeDir: await newStore(), env: cleanEnv }))
    expect(e.code).toBe('E_AUTH')
    expect(e.message).toBe(
      `${regs.basic}/auth/basic:v1: authentication required (401) (UNAUTHORIZED: authentication required); pass --creds USER:PASSWORD, set BALE_REGISTRY_CREDS, or docker login`,
    )
  })

  it('with a wrong password fails naming where the credentials came from', async () => {
    const e = await failure(pull(basicImg.ref, { storeDir: await newStore(), creds: `${regs.user}:wrong`, env: cleanEnv }))
    expect(e.code).toBe('E_AUTH')
    expect(e.message).toMatch(/the credentials from --creds were rejected \(401\)/)
  })

  it('takes credentials from BALE_REGISTRY_CREDS', async () => {
    const res = await pull(basicImg.ref, { storeDir: await newStore(), env: { ...cleanEnv, BALE_REGISTRY_CREDS: creds } })
    expect(res.manifestDigest).toBe(basicImg.manifestDigests[0])
  })

  it('takes credentials from ~/.docker/config.json auths (base64 auth)', async () => {
    const dockerDir = path.join(work, 'docker-config')
    await fs.mkdir(dockerDir, { recursive: true })
    await fs.writeFile(
      path.join(dockerDir, 'config.json'),
      JSON.stringify({ auths: { 'other.example:5000': { auth: Buffer.from('x:y').toString('base64') }, [`http://${regs.basic}`]: { auth: Buffer.from(creds).toString('base64') } } }),
    )
    const res = await pull(basicImg.ref, { storeDir: await newStore(), env: { ...cleanEnv, DOCKER_CONFIG: dockerDir } })
    expect(res.manifestDigest).toBe(basicImg.manifestDigests[0])
  })
})

describe('token auth', () => {
  beforeEach(async () => {
    await resetTokenServer(regs.tokenServer)
  })

  it('pulls with credentials, fetching one token for the whole pull (cached)', async () => {
    const res = await pull(tokenImg.ref, { storeDir: await newStore(), creds, env: cleanEnv })
    expect(res.manifestDigest).toBe(tokenImg.manifestDigests[0])
    const stats = await tokenStats(regs.tokenServer)
    // manifest + config + 2 layers, all under one token
    expect(stats.requests).toBe(1)
    expect(stats.byUser).toEqual({ [regs.user]: 1 })
    expect(stats.scopes).toEqual(['repository:auth/token:pull'])
  })

  it('accepts an access_token answer (OAuth2-style token servers)', async () => {
    await setTokenField(regs.tokenServer, 'access_token')
    const res = await pull(tokenImg.ref, { storeDir: await newStore(), creds, env: cleanEnv })
    expect(res.manifestDigest).toBe(tokenImg.manifestDigests[0])
  })

  it('anonymous access to a protected repository fails with a clear 401', async () => {
    const e = await failure(pull(tokenImg.ref, { storeDir: await newStore(), env: cleanEnv }))
    expect(e.code).toBe('E_AUTH')
    expect(e.message).toMatch(new RegExp(`^${regs.token}/auth/token:v1: authentication required \\(401\\)`))
  })

  it('credentials the token server refuses fail at once, naming their source', async () => {
    const e = await failure(pull(tokenImg.ref, { storeDir: await newStore(), env: { ...cleanEnv, BALE_REGISTRY_CREDS: `${regs.user}:nope` } }))
    expect(e.code).toBe('E_AUTH')
    expect(e.message).toBe(`${regs.token}: token server ${regs.tokenServer}/token refused the credentials from BALE_REGISTRY_CREDS (401)`)
    expect((await tokenStats(regs.tokenServer)).requests).toBe(1) // no retry of a refusal
  })
})

describe('redirects', () => {
  let front: FaultProxy
  let storage: FaultProxy

  beforeAll(async () => {
    // `storage` stands in for blob storage behind a signed URL: it authorizes upstream itself.
    storage = await startFaultProxy(regs.basic, { upstreamAuthorization: `Basic ${Buffer.from(creds).toString('base64')}` })
    front = await startFaultProxy(regs.basic)
  })
  afterAll(async () => {
    await front?.stop()
    await storage?.stop()
  })

  it('follows a blob redirect to another host without sending Authorization there', async () => {
    // Another host name, not only another port: localhost resolves to the same loopback.
    const storagePort = storage.address.split(':')[1]
    front.addRule({ match: isBlob, fault: { kind: 'redirect', to: `http://localhost:${storagePort}` }, times: 100 })
    const ref = `${front.address}/auth/basic:v1`
    const res = await pull(ref, { storeDir: await newStore(), creds, env: cleanEnv })
    expect(res.layers.map((l) => l.digest)).toEqual(basicImg.layerDigests[0])
    const redirected = front.requests.filter((r) => r.outcome === 'redirect')
    expect(redirected).toHaveLength(3) // config + 2 layers
    for (const r of redirected) expect(r.authorization).toMatch(/^Basic /)
    expect(storage.requests).toHaveLength(3)
    for (const r of storage.requests) expect(r.authorization).toBeUndefined()
  })
})
