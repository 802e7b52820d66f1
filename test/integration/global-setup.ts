// Global setup for integration tests. The registry work (issue 3) extends this to start the
// Debian docker-registry on 127.0.0.1; until then it only checks that the real tools exist.
import { execFileSync } from 'node:child_process'

export default function setup(): void {
  for (const tool of ['mkfs.ext4', 'debugfs', 'e2fsck']) {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' })
  }
}
