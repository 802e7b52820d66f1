#!/usr/bin/env bash
# Fetch the Debian cloud kernel package for `bale kernel import --deb`, without installing it
# (nothing goes to /boot or the package database). Prints the .deb path on stdout, and only that.
#
# Idempotent: when the cache already holds the package version apt would fetch, with the SHA256
# the archive index records for it, nothing is downloaded. `apt-get update` runs only when apt
# knows no candidate for the package (a fresh machine with empty lists).
#
#   BALE_KERNEL_PACKAGE  meta package to follow (default linux-image-cloud-amd64)
#   BALE_KERNEL_CACHE    where the .deb goes (default .cache/kernel in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

meta=${BALE_KERNEL_PACKAGE:-linux-image-cloud-amd64}
cache=${BALE_KERNEL_CACHE:-.cache/kernel}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

log() { echo "fetch-kernel: $*" >&2; }

# The versioned package the meta package depends on, e.g. linux-image-6.1.0-56-cloud-amd64.
# The meta package itself holds no kernel, only this dependency.
kernel_package() {
  apt-cache depends --no-recommends --no-suggests "$meta" 2>/dev/null |
    awk '/^ *Depends: linux-image-[0-9]/ { print $2; exit }'
}

# "<version> <sha256>" of the candidate apt would download for package $1.
candidate() {
  apt-cache show --no-all-versions "$1" 2>/dev/null |
    awk '/^Version: / { v = $2 } /^SHA256: / { s = $2 } END { if (v != "" && s != "") print v, s }'
}

pkg=$(kernel_package || true)
if [ -z "$pkg" ]; then
  log "apt knows no candidate for $meta; running apt-get update"
  if ! apt-get update -qq >&2; then
    # Offline with a package already cached: use the newest one rather than failing.
    cached=$(ls -1 "$cache"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$cached" ]; then
      log "apt-get update failed; using the cached $(basename "$cached")"
      echo "$cached"
      exit 0
    fi
    log "apt-get update failed (run as root, with network access)"
    exit 1
  fi
  pkg=$(kernel_package || true)
  [ -n "$pkg" ] || { log "no linux-image-<release> dependency found for $meta"; exit 1; }
fi

read -r version sha256 < <(candidate "$pkg") || { log "apt has no candidate version for $pkg"; exit 1; }
# apt-get download names files <package>_<version with ':' as %3a>_<arch>.deb.
file="$cache/${pkg}_${version//:/%3a}_amd64.deb"

if [ -f "$file" ] && [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$sha256" ]; then
  echo "$file"
  exit 0
fi

log "downloading $pkg $version"
tmp=$(mktemp -d "$cache/.download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# apt-get download verifies the file against the signed index. When run as root, the _apt
# sandbox user cannot write into this directory; apt then downloads as root and says so.
(cd "$tmp" && apt-get download -q "$pkg=$version" 2>&1 | grep -v 'Download is performed unsandboxed' >&2) || true
got=$(ls -1 "$tmp"/*.deb 2>/dev/null | head -n1 || true)
if [ -z "$got" ] || [ "$(sha256sum "$got" | cut -d' ' -f1)" != "$sha256" ]; then
  log "apt-get download $pkg=$version failed or gave a file whose sha256 is not $sha256"
  exit 1
fi
mv -f "$got" "$file"
echo "$file"
