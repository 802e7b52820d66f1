#!/usr/bin/env bash
# make-bundle vs its peers on a real Debian image (fixtures/debian/build.sh: bookworm minbase,
# two layers), run side by side, alternating, median of N runs. Prints wall-time ratios and
# peak RSS. Not a test: numbers go into notes and bench/README.md.
#
#   peer         umoci unpack --rootless + mkfs.ext4 -d + zstd -T2 at the same level
#   irreducible  mkfs.ext4 -d of the same tree + zstd -T2 of the result (what bale cannot avoid)
#
# Usage: bench/make-bundle.sh [RUNS] [LEVEL]   (needs root once, for debootstrap)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
level=${2:-$(node -e 'import("./dist/pipeline/bundle/writer.js").then(m=>console.log(m.DEFAULT_ZSTD_LEVEL))')}
layout=$(bash fixtures/debian/build.sh)
work=$(mktemp -d /var/tmp/bale-bench.XXXXXX)
trap 'chmod -R u+rwX "$work" 2>/dev/null; rm -rf "$work"' EXIT
size=1G   # same fixed ext4 size for all three, so mkfs does the same work

timed() { # timed NAME CMD... → appends "seconds maxrss_kb" to $work/NAME
  local name=$1; shift
  /usr/bin/time -f '%e %M' -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/t" >> "$work/$name"
}

bale_run() { rm -f "$work/b.tar.zst"; node bin/run.js make-bundle --oci-layout "$layout:bookworm" --out "$work/b.tar.zst" --size $size --level "$level" --tmpdir "$work" --quiet; }
peer_run() {
  rm -rf "$work/u" "$work/u.ext4" "$work/u.ext4.zst"
  umoci unpack --rootless --image "$layout:bookworm" "$work/u"
  mkfs.ext4 -q -F -d "$work/u/rootfs" "$work/u.ext4" $size
  zstd -q -T2 -"$level" "$work/u.ext4" -o "$work/u.ext4.zst"
}
# The irreducible parts run on the tree umoci left (same content), unpacked once beforehand.
irreducible_run() {
  rm -f "$work/i.ext4" "$work/i.ext4.zst"
  mkfs.ext4 -q -F -d "$work/tree/rootfs" "$work/i.ext4" $size
  zstd -q -T2 -"$level" "$work/i.ext4" -o "$work/i.ext4.zst"
}
umoci unpack --rootless --image "$layout:bookworm" "$work/tree" >/dev/null
bale_run >/dev/null # warm the page cache once
for _ in $(seq "$runs"); do
  timed bale bash -c "$(declare -f bale_run); work=$work layout=$layout size=$size level=$level bale_run"
  timed peer bash -c "$(declare -f peer_run); work=$work layout=$layout size=$size level=$level peer_run"
  timed irreducible bash -c "$(declare -f irreducible_run); work=$work size=$size level=$level irreducible_run"
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(cut -d' ' -f1 "$work/bale" | median); p=$(cut -d' ' -f1 "$work/peer" | median); i=$(cut -d' ' -f1 "$work/irreducible" | median)
rss=$(cut -d' ' -f2 "$work/bale" | sort -n | tail -1)
echo "image: $(du -sh "$work/tree/rootfs" | cut -f1) rootfs, $(find "$work/tree/rootfs" | wc -l) entries; zstd level $level; $runs runs, median"
printf 'bale make-bundle   %6.2f s   peak RSS %d MB   bundle %d MB\n' "$b" $((rss / 1024)) $(( $(stat -c %s "$work/b.tar.zst") / 1048576 ))
printf 'peer (umoci+mkfs+zstd) %6.2f s   ratio bale/peer        %.2f  (target <= 0.6)\n' "$p" "$(echo "$b / $p" | bc -l)"
printf 'irreducible (mkfs+zstd) %5.2f s   ratio bale/irreducible %.2f  (target <= 1.3)\n' "$i" "$(echo "$b / $i" | bc -l)"
