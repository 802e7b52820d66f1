import { spawnSync } from 'node:child_process'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { withDirLock } from '../../../src/catalog/lock.js'

let dir: string
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-lock-'))
})
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true })
})

describe('directory lock', () => {
  it('serialises writers: the second waits for the first', async () => {
    const order: string[] = []
    const slow = withDirLock(dir, 'test', async () => {
      order.push('a-start')
      await new Promise((r) => setTimeout(r, 300))
      order.push('a-end')
    })
    await new Promise((r) => setTimeout(r, 50))
    await withDirLock(dir, 'test', async () => {
      order.push('b')
    })
    await slow
    expect(order).toEqual(['a-start', 'a-end', 'b'])
    expect(await fs.readdir(dir)).toEqual([])
  })

  it('takes over at once a lock left by a killed process on this host (killed-publish-lock)', async () => {
    // A pid that existed and is gone: a child that has exited.
    const dead = spawnSync(process.execPath, ['-e', '0']).pid as number
    await fs.writeFile(path.join(dir, '.bale.lock'), `${os.hostname()} ${dead}\n`)
    const t = Date.now()
    await withDirLock(dir, 'test', async () => undefined)
    expect(Date.now() - t).toBeLessThan(5000)
  })
})
