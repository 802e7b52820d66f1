import path from 'node:path'
import { cacheDir, projectRoot } from '../lib/paths.js'

/**
 * Catalog bundles are built once and downloaded many times, so they are compressed harder than
 * make-bundle's default (3): level 10 gives ~6% smaller files for ~4× the compression time on a
 * 400 MB rootfs (measurements in pipeline/bundle/writer.ts); above 10 the time grows to minutes
 * for single-digit gains.
 */
export const CATALOG_ZSTD_LEVEL = 10

/** The catalog this project ships (`catalog/catalog.json` in the package). */
export function defaultCatalogFile(): string {
  return path.join(projectRoot(), 'catalog', 'catalog.json')
}

/** Where `catalog build` writes and `catalog publish`/`mirror` read by default. */
export function defaultBuildDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(cacheDir(env), 'catalog', 'build')
}

/** `bale fetch` reads its catalog from --catalog, else from this variable. */
export const CATALOG_ENV = 'BALE_CATALOG'
