import { createHash, randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import ssri from 'ssri'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { commitBundle, findInstalled, listInstalled, resolveInstalled } from '../../../src/catalog/store.js'

let root: string
let env: NodeJS.ProcessEnv

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-store-'))
  env = { BALE_DATA_DIR: path.join(root, 'data') }
})
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true })
})

async function fakeBundle(content: Buffer): Promise<{ file: string; size: number; sha256: string; integrity: string }> {
  const file = path.join(root, `in-${randomBytes(4).toString('hex')}`)
  await fs.writeFile(file, content)
  return { file, size: content.length, sha256: createHash('sha256').update(content).digest('hex'), integrity: ssri.fromData(content).toString() }
}

async function install(name: string, version: string, content: Buffer): Promise<{ status: string; path: string }> {
  const b = await fakeBundle(content)
  return commitBundle(b.file, { name, version, size: b.size, sha256: b.sha256, integrity: b.integrity, kernel_ref: 'k1', created: '2024-01-02T03:04:05.000Z', origin: 'test' }, env)
}

describe('local bundle store', () => {
  it('store-index-never-written-invalid: a reserved version is refused and the store stays readable', async () => {
    const before = await listInstalled(env)
    await expect(install('demo', 'latest', Buffer.from('x'))).rejects.toThrow(/demo@latest: cannot be installed/)
    expect(await listInstalled(env)).toEqual(before)
    await expect(fs.access(path.join(env.BALE_DATA_DIR as string, 'bundles', 'demo', 'latest'))).rejects.toThrow()
  })

  it('installs, records, and resolves NAME to its newest version by natural order', async () => {
    const v9 = await install('demo', '3.9', Buffer.from('nine'))
    const v10 = await install('demo', '3.10', Buffer.from('ten'))
    expect(v9.status).toBe('installed')
    expect(await resolveInstalled('demo', env)).toBe(v10.path)
    expect(await resolveInstalled('demo@3.9', env)).toBe(v9.path)
    expect(await fs.readFile(v10.path, 'utf8')).toBe('ten')
    expect((await listInstalled(env)).map((b) => `${b.name}@${b.version}`)).toEqual(['demo@3.9', 'demo@3.10'])
  })

  it('committing the same bytes again changes nothing; different bytes replace the version', async () => {
    expect((await install('demo', '3.9', Buffer.from('nine'))).status).toBe('unchanged')
    const r = await install('demo', '3.9', Buffer.from('nine, rebuilt'))
    expect(r.status).toBe('replaced')
    expect((await findInstalled('demo', '3.9', env))?.sha256).toBe(createHash('sha256').update('nine, rebuilt').digest('hex'))
  })

  it('an unknown bundle fails with a hint naming it', async () => {
    await expect(resolveInstalled('nosuch', env)).rejects.toMatchObject({ code: 'E_NOT_FOUND', message: expect.stringContaining('bale fetch nosuch') })
    await expect(resolveInstalled('demo@4', env)).rejects.toMatchObject({ code: 'E_NOT_FOUND' })
  })

  it('a record whose file vanished is reported as store damage, not as not-installed', async () => {
    const r = await install('gone', '1', Buffer.from('x'))
    await fs.rm(r.path)
    await expect(resolveInstalled('gone', env)).rejects.toMatchObject({ code: 'E_STATE' })
  })
})
