import { promises as fs } from 'node:fs'
import type { BaleError } from './errors.js'

/**
 * A JSON file that may not exist yet (a store's index before the first write): its parsed
 * content, or undefined when absent. Text that is not JSON becomes the caller's own error,
 * since what a damaged file means (corrupt state, bad input) depends on whose file it is.
 */
export async function readJsonIfExists(file: string, notJson: () => BaleError): Promise<unknown | undefined> {
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
    throw notJson()
  }
}
