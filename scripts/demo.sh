#!/usr/bin/env bash
# The demo, from a fresh Debian machine: set-up (idempotent), build the busybox demo image from
# Debian packages, turn it into a bundle with `bale make-bundle` (as an ordinary user when run as
# root, to show no root is needed), boot it, run a command in it through the agent, fetch its
# published web page, and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bale() { node bin/run.js "$@"; }

out=.cache/demo
mkdir -p "$out"
bash fixtures/demo/build.sh "$out/oci" >/dev/null

builder=()
if [ "$(id -u)" -eq 0 ]; then
  # Build unprivileged (uid/gid 65534) in a directory that user may write.
  build=$(mktemp -d /tmp/bale-demo.XXXXXX); chmod 0755 "$build"
  cp -r "$out/oci" "$build/oci"; chown -R 65534:65534 "$build"
  # An ordinary user's PATH, without /usr/sbin where e2fsprogs lives: bale must find it anyway.
  builder=(setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$build" TMPDIR="$build" PATH=/usr/local/bin:/usr/bin:/bin)
else
  build=$(cd "$out" && pwd)
fi
echo "== make-bundle (as uid $( "${builder[@]}" id -u 2>/dev/null || id -u))"
"${builder[@]}" "$(command -v node)" bin/run.js make-bundle --oci-layout "$build/oci:latest" --out "$build/demo.tar.zst" \
  --name demo --version 1.0.0 --description "busybox httpd demo" --quiet
cp "$build/demo.tar.zst" "$out/demo.tar.zst"
[ "$build" != "$(cd "$out" && pwd)" ] && rm -rf "$build"
bale bundle inspect "$out/demo.tar.zst"

echo "== boot"
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
bale runtime rm --force demo >/dev/null 2>&1 || true
bale runtime boot "$out/demo.tar.zst" --name demo --detach --publish "$port:8080"
trap 'bale runtime stop demo >/dev/null 2>&1 || true; bale runtime rm --force demo >/dev/null 2>&1 || true' EXIT
echo "== exec in the VM"
bale runtime exec demo -- /usr/local/bin/hello
echo "== published port 127.0.0.1:$port -> guest 8080"
node -e 'fetch(process.argv[1]).then(r=>r.text()).then(t=>process.stdout.write(t))' "http://127.0.0.1:$port/"
echo "== stop"
bale runtime stop demo
bale runtime rm demo
trap - EXIT
echo "demo done"
