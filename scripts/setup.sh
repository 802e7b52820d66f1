#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian (bookworm) machine, run as root: system packages,
# npm dependencies, the TypeScript build, the static guest binary, and the Debian cloud
# kernel imported for the runtime. Each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  e2fsprogs            # mkfs.ext4 -d, debugfs, e2fsck: the ext4 stage
  libarchive13         # loaded by mkfs.ext4 (>= 1.47.1) to read a tar on stdin
  libeatmydata1        # preloaded into mkfs.ext4/debugfs: no fsync of the intermediate image
  qemu-system-x86      # the microVM runtime (-M microvm)
  qemu-utils           # qemu-img: per-VM qcow2 overlays
  musl-tools           # musl-gcc: the static guest init/agent
  make
  busybox-static       # the demo image
  skopeo               # registry interop in tests and benchmarks
  docker-registry      # a real OCI registry for integration tests
  apache2-utils        # htpasswd for the basic-auth registry
  umoci                # peer tool in benchmarks
  debootstrap          # builds the Debian image for benchmarks
  zstd lz4 xz-utils cpio
  util-linux           # setpriv, unshare: unprivileged and namespaced tests
  procps               # pgrep: tests count QEMU processes as an operator would
  openssl              # token-auth test certificates
  ca-certificates
  time                 # /usr/bin/time for peak RSS in benchmarks
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages (${missing[*]}); run this script as root" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# mkfs.ext4 reads a tar on stdin from e2fsprogs 1.47.1 on (with libarchive), which spares the
# build a file per image file (see src/pipeline/ext4/tar-input.ts). Bookworm has 1.47.0, its
# backports 1.47.2: take that one there. Later Debian releases already have it. bale works with
# 1.47.0 too (it stages a directory instead); this only makes builds faster.
e2fs_version=$(dpkg-query -W -f='${Version}' e2fsprogs)
if dpkg --compare-versions "$e2fs_version" lt 1.47.1 && grep -q '^VERSION_CODENAME=bookworm$' /etc/os-release; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: e2fsprogs $e2fs_version is older than 1.47.1; run this script as root to install it from bookworm-backports" >&2
    exit 1
  fi
  echo "setup: installing e2fsprogs from bookworm-backports (tar input for mkfs.ext4 -d)" >&2
  cat > /etc/apt/sources.list.d/bale-bookworm-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports e2fsprogs >/dev/null
fi

# The docker-registry package starts a system service on :5000; tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

# npm dependencies: only when the lock file changed since the last install.
stamp=node_modules/.bale-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

npm run --silent build
make -s -C guest

# The Debian cloud kernel, fetched as a package (never installed into /boot) and imported.
deb=$(bash scripts/fetch-kernel.sh)
node bin/run.js kernel import --deb "$deb" --default --quiet >/dev/null
