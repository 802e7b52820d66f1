import { createHash } from 'node:crypto'
import type { BundleManifest } from '../../../src/pipeline/bundle/manifest.js'

/** A valid manifest for a rootfs with the given bytes. */
export function manifestFor(rootfs: Buffer, over: Partial<BundleManifest> = {}): BundleManifest {
  return {
    schema_version: 1,
    name: 'demo',
    version: '1.0.0',
    description: 'a test bundle',
    distro: 'busybox-1.35.0',
    arch: 'amd64',
    kernel_ref: 'default',
    created: '2023-11-14T22:13:20.000Z',
    source: {
      ref: 'oci-layout:/tmp/oci:latest',
      platform: 'linux/amd64',
      manifest_digest: `sha256:${'a'.repeat(64)}`,
      config_digest: `sha256:${'b'.repeat(64)}`,
      layers: [{ digest: `sha256:${'c'.repeat(64)}`, diff_id: `sha256:${'d'.repeat(64)}`, media_type: 'application/vnd.oci.image.layer.v1.tar+gzip', size: 1234 }],
    },
    config: { entrypoint: ['/bin/httpd', '-f'], cmd: [], env: ['PATH=/bin'], user: '', workdir: '/www', exposed_ports: ['8080/tcp'] },
    rootfs: { file: 'rootfs.ext4', size: rootfs.length, sha256: createHash('sha256').update(rootfs).digest('hex') },
    agent: { version: '0.1.0', sha256: 'e'.repeat(64) },
    ...over,
  }
}
