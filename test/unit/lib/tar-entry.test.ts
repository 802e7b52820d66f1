import * as tarStream from 'tar-stream'
import { describe, expect, it } from 'vitest'
import { drained } from '../../../src/lib/tar-entry.js'

/** An entry written into until it says it is full. */
function fullEntry(): { pack: tarStream.Pack; sink: ReturnType<tarStream.Pack['entry']> } {
  const pack = tarStream.pack()
  const sink = pack.entry({ name: 'f', size: 64 << 20 }, () => undefined)
  sink.on('error', () => undefined)
  while (sink.write(Buffer.alloc(64 << 10))) {
    // keep writing until backpressure
  }
  return { pack, sink }
}

describe('drained', () => {
  it('is true once the pack is read and the entry drains', async () => {
    const { pack, sink } = fullEntry()
    const wait = drained(sink)
    pack.resume()
    await expect(wait).resolves.toBe(true)
    pack.destroy()
  })

  it('is false when the pack is torn down instead (no drain would ever come)', async () => {
    const { pack, sink } = fullEntry()
    const wait = drained(sink)
    pack.destroy()
    await expect(wait).resolves.toBe(false)
  })
})
