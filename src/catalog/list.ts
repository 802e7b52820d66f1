import { HttpClient } from './http.js'
import { indexUrl } from './fetch.js'
import { loadCatalog, parseIndex } from './schema.js'
import { listInstalled } from './store.js'

/**
 * `bale catalog ls`: what a catalog offers — the definitions file (what would be built), a
 * published index over HTTP (what can be fetched) — or, with `installed`, the local store.
 */
export interface ListedEntry {
  readonly name: string
  readonly version: string
  readonly kernel_ref: string
  readonly description: string
  /** Definitions: the pinned source; index: the bundle URL; store: the bundle path. */
  readonly location: string
  readonly size?: number
}

export type ListSource = { kind: 'file'; path: string } | { kind: 'url'; url: string; insecure?: boolean } | { kind: 'installed'; env?: NodeJS.ProcessEnv }

export async function listCatalog(src: ListSource): Promise<ListedEntry[]> {
  switch (src.kind) {
    case 'file': {
      const c = await loadCatalog(src.path)
      return c.entries.map((e) => ({ name: e.name, version: e.version, kernel_ref: e.kernel_ref, description: e.description, location: e.source }))
    }
    case 'url': {
      const http = new HttpClient({ insecure: src.insecure })
      try {
        const doc = await http.getDocument(indexUrl(src.url))
        const index = parseIndex(doc.text, String(doc.url))
        return index.bundles.map((b) => ({
          name: b.name,
          version: b.version,
          kernel_ref: b.kernel_ref,
          description: b.description ?? '',
          location: String(new URL(b.url, doc.url)),
          size: b.size,
        }))
      } finally {
        await http.close()
      }
    }
    case 'installed':
      return (await listInstalled(src.env)).map((b) => ({ name: b.name, version: b.version, kernel_ref: b.kernel_ref, description: '', location: b.path, size: b.size }))
  }
}
