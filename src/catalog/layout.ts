/**
 * Where things are inside a publish or mirror directory (docs/catalog.md):
 *
 *   index.json                                     bundles and kernels, with size and integrity
 *   bundles/<name>/<name>-<version>.bundle.tar.zst
 *   kernels/<ref>/<file>                           vmlinux, initramfs, kernel.json, … as imported
 *   SHA256SUMS                                     (mirrors) every file above, `sha256sum -c` format
 *
 * The URLs in index.json are these paths, relative to index.json, so a directory works the same
 * served over HTTP and read from removable media.
 */
export const INDEX_FILE = 'index.json'
export const SUMS_FILE = 'SHA256SUMS'

export function bundleFileName(name: string, version: string): string {
  return `${name}-${version}.bundle.tar.zst`
}

export function bundleUrl(name: string, version: string): string {
  return `bundles/${name}/${bundleFileName(name, version)}`
}

export function kernelUrl(ref: string, file: string): string {
  return `kernels/${ref}/${file}`
}
