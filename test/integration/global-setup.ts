// Global setup for integration tests: check that the real tools exist, then start real
// registries (the Debian docker-registry) on 127.0.0.1 with free ports and temp storage —
// open, htpasswd basic auth, and token auth in front of test/helpers/token-server.ts — and
// provide their addresses to tests as inject('registries'). Teardown stops them all and
// removes their storage; a failure half-way through stops whatever had started.
import { execFileSync } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { TestProject } from 'vitest/node'
import { type RegistryEnv, type RegistryProcess, startRegistry, writeHtpasswd } from '../helpers/registry.js'
import { startTokenServer, type TokenServer } from '../helpers/token-server.js'

declare module 'vitest' {
  export interface ProvidedContext {
    registries: RegistryEnv
  }
}

const USER = 'bale'
const PASSWORD = 'pa:ss w0rd' // a ':' and a space: credentials must survive both

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  for (const tool of ['mkfs.ext4', 'debugfs', 'e2fsck', 'docker-registry', 'skopeo', 'htpasswd', 'openssl']) {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' })
  }
  const root = await mkdtemp(path.join(os.tmpdir(), 'bale-registries-'))
  const registries: RegistryProcess[] = []
  let tokenServer: TokenServer | undefined
  const teardown = async (): Promise<void> => {
    await Promise.all(registries.map((r) => r.stop()))
    registries.length = 0
    await tokenServer?.stop()
    tokenServer = undefined
    await rm(root, { recursive: true, force: true })
  }
  try {
    const plain = await startRegistry(path.join(root, 'plain'))
    registries.push(plain)

    const htpasswd = path.join(root, 'htpasswd')
    await writeHtpasswd(htpasswd, USER, PASSWORD)
    const basic = await startRegistry(path.join(root, 'basic'), { kind: 'htpasswd', file: htpasswd })
    registries.push(basic)

    tokenServer = await startTokenServer({ dir: path.join(root, 'token-server'), users: { [USER]: PASSWORD } })
    const token = await startRegistry(path.join(root, 'token'), {
      kind: 'token',
      realm: tokenServer.realm,
      service: tokenServer.service,
      issuer: tokenServer.issuer,
      rootCertBundle: tokenServer.certFile,
    })
    registries.push(token)

    project.provide('registries', {
      plain: plain.address,
      basic: basic.address,
      token: token.address,
      tokenServer: tokenServer.origin,
      user: USER,
      password: PASSWORD,
    })
  } catch (e) {
    await teardown()
    throw e
  }
  return teardown
}
