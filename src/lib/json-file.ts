import { promises as fs } from 'node:fs'

/**
 * A JSON file that may not exist yet (a store's index before the first write): its parsed
 * content, or undefined when absent. For text that is not JSON, `notJson` throws the caller's
 * own error or returns what to use instead, since what a damaged file means (corrupt state, bad
 * input, a cache entry to rebuild) depends on whose file it is.
 */
export async function readJsonIfExists(file: string, notJson: () => unknown): Promise<unknown> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw e
  }
  try {
    return JSON.parse(text) as unknown
  } catch {
    return notJson()
  }
}
