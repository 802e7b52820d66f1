import { describe, expect, it } from 'vitest'
import { run, toolPath } from '../../../src/lib/exec.js'

describe('toolPath', () => {
  it("appends the sbin directories to an ordinary Debian user's PATH, where e2fsprogs lives", () => {
    expect(toolPath('/usr/local/bin:/usr/bin:/bin')).toBe('/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin')
  })

  it("keeps the user's order and adds nothing already there", () => {
    expect(toolPath('/opt/e2fs/sbin:/usr/sbin:/usr/bin')).toBe('/opt/e2fs/sbin:/usr/sbin:/usr/bin:/usr/local/sbin:/sbin')
  })

  it('an unset PATH is the shell default plus the sbin directories; empty entries are dropped', () => {
    expect(toolPath(undefined)).toBe('/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin')
    expect(toolPath('::/usr/bin:')).toBe('/usr/bin:/usr/local/sbin:/usr/sbin:/sbin')
  })

  it('run() finds a tool in /usr/sbin with a PATH that lacks it', async () => {
    // e2fsck is in /usr/sbin on Debian: found through the appended directories.
    const r = await run('e2fsck', ['-V'], { env: { PATH: '/usr/bin:/bin' } })
    expect(`${r.stdout}${r.stderr}`).toMatch(/^e2fsck \d+\.\d+/m)
  })
})
