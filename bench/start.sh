#!/usr/bin/env bash
# Container start-up cost, measured in one run on one machine:
#   /bin/true natively; `berth exec IMG true` on a SquashFS file; Charliecloud's ch-run on the
#   same file and on the unpacked directory; joining a held container; and berth on a 10 MB
#   vs a 2 GB image (start cost must not grow with image size: berth mounts, never unpacks).
# Prints a table of medians and ratios. Run as root (it creates the unprivileged user that
# runs everything); needs: hyperfine, charliecloud-runtime, squashfs-tools, squashfuse, busybox-static.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
user=${BENCH_USER:-berthbench}
runs=${BENCH_RUNS:-200}
work=${BENCH_DIR:-/var/tmp/berth-bench}

for t in hyperfine ch-run mksquashfs squashfuse_ll busybox; do
  command -v "$t" >/dev/null || { echo "bench: $t missing (apt-get install hyperfine charliecloud-runtime squashfs-tools squashfuse busybox-static)" >&2; exit 2; }
done
chmod 0666 /dev/fuse
id -u "$user" >/dev/null 2>&1 || useradd -m -s /bin/sh "$user"
(cd "$here" && cargo build --release -q -p berth)
install -d -m 0755 "$work"
install -m 0755 "$here/target/release/berth" "$work/berth"

make_root() { # DIR EXTRA_MB
  rm -rf "$1"; mkdir -p "$1"/{bin,etc,tmp,proc,sys,dev,home}
  cp /bin/busybox "$1/bin/"; for a in sh true cat ls; do ln -sf busybox "$1/bin/$a"; done
  printf 'root:x:0:0::/root:/bin/sh\n%s:x:%s:%s::/home/%s:/bin/sh\n' "$user" "$(id -u "$user")" "$(id -g "$user")" "$user" > "$1/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$user" "$(id -g "$user")" > "$1/etc/group"
  if [ "$2" -gt 0 ]; then mkdir -p "$1/data"; head -c "$(( $2 * 1024 * 1024 ))" /dev/urandom > "$1/data/blob"; fi
}
if [ ! -f "$work/small.sqsh" ]; then
  make_root "$work/small" 10
  # mksquashfs's default (gzip) and the faster-to-decompress choices, same content.
  mksquashfs "$work/small" "$work/small.sqsh" -noappend -quiet -no-progress -all-root >/dev/null
  for c in lz4 zstd; do mksquashfs "$work/small" "$work/small-$c.sqsh" -comp $c -noappend -quiet -no-progress -all-root >/dev/null; done
  mksquashfs "$work/small" "$work/small-none.sqsh" -noI -noD -noF -noX -noappend -quiet -no-progress -all-root >/dev/null
fi
if [ ! -f "$work/big2g.sqsh" ]; then
  echo "bench: building a 2 GB image once (cached in $work)" >&2
  make_root "$work/big" 2048
  # Same compression as the 10 MB image, so the two differ in size only (the random data
  # stays stored as is: it does not compress).
  mksquashfs "$work/big" "$work/big2g.sqsh" -noappend -quiet -no-progress -all-root >/dev/null
  rm -rf "$work/big" "$work/big.sqsh"
fi
chmod -R a+rX "$work"

as_user() { runuser -u "$user" -- env -i HOME="/home/$user" USER="$user" PATH=/usr/bin:/bin "$@"; }
json=$(mktemp --suffix=.json); chown "$user" "$json"
hout=$(mktemp); chown "$user" "$hout"
as_user bash -c "cd /tmp && $work/berth holder --name bench $work/small.sqsh > $hout 2>&1 &"
for _ in $(seq 100); do grep -q ready "$hout" && break; sleep 0.05; done
grep -q ready "$hout" || { echo "bench: holder did not start: $(cat "$hout")" >&2; exit 1; }
trap 'as_user "$work/berth" stop bench >/dev/null 2>&1 || true; rm -f "$hout" "$json"' EXIT

# berth rows without a suffix are what a user gets by default: a run joins the warm container
# of the previous identical run (keep_warm_seconds). "cold" rows (--no-share) mount and
# decompress anew every time, as ch-run does.
B="$work/berth exec"; C="$work/berth exec --no-share"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
as_user hyperfine -N --warmup 10 --runs "$runs" --export-json "$json" --style none \
  -n native '/bin/true' \
  -n 'berth squashfs' "$B $work/small.sqsh /bin/true" \
  -n 'berth squashfs cold' "$C $work/small.sqsh /bin/true" \
  -n 'ch-run squashfs' "ch-run $work/small.sqsh -- /bin/true" \
  -n 'berth lz4' "$B $work/small-lz4.sqsh /bin/true" \
  -n 'berth lz4 cold' "$C $work/small-lz4.sqsh /bin/true" \
  -n 'ch-run lz4' "ch-run $work/small-lz4.sqsh -- /bin/true" \
  -n 'berth zstd' "$B $work/small-zstd.sqsh /bin/true" \
  -n 'berth zstd cold' "$C $work/small-zstd.sqsh /bin/true" \
  -n 'ch-run zstd' "ch-run $work/small-zstd.sqsh -- /bin/true" \
  -n 'berth uncompressed' "$B $work/small-none.sqsh /bin/true" \
  -n 'berth uncompressed cold' "$C $work/small-none.sqsh /bin/true" \
  -n 'ch-run uncompressed' "ch-run $work/small-none.sqsh -- /bin/true" \
  -n 'berth directory' "$B $work/small /bin/true" \
  -n 'berth directory cold' "$C $work/small /bin/true" \
  -n 'ch-run directory' "ch-run $work/small -- /bin/true" \
  -n 'berth join' "$work/berth exec --join bench /bin/true" \
  -n 'berth 10 MB image' "$B $work/small.sqsh /bin/true" \
  -n 'berth 2 GB image' "$B $work/big2g.sqsh /bin/true" \
  -n 'berth 10 MB image cold' "$C $work/small.sqsh /bin/true" \
  -n 'berth 2 GB image cold' "$C $work/big2g.sqsh /bin/true" >/dev/null

printf 'load average before: %s, after: %s\n' "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
med = {k: v["median"] * 1000 for k, v in r.items()}
print(f"{'case':<20} {'median ms':>10} {'mean ms':>9} {'stddev':>8}")
for k, v in r.items():
    print(f"{k:<20} {med[k]:>10.3f} {v['mean']*1000:>9.3f} {v['stddev']*1000:>8.3f}")
print()
def ratio(a, b, target=None):
    x = med[a] / med[b]
    verdict = "" if target is None else f"target <= {target}  {'OK' if x <= target else 'MISSED'}"
    print(f"{a + ' / ' + b:<42} {x:>7.3f}   {verdict}")
def over(a, b, target):
    d = med[a] - med[b]
    print(f"{a + ' - ' + b:<42} {d:>7.3f} ms target <= {target} ms  {'OK' if d <= target else 'MISSED'}")
print("warm (the default: an identical run joins the container the previous one left):")
for c in ("squashfs", "lz4", "zstd", "uncompressed"):
    ratio(f"berth {c}", f"ch-run {c}", 0.5)
ratio("berth directory", "ch-run directory")
print("cold (--no-share: what every new job step pays):")
for c in ("squashfs", "lz4", "zstd", "uncompressed"):
    ratio(f"berth {c} cold", f"ch-run {c}", 1.0)
over("berth directory cold", "ch-run directory", 1)
ratio("berth squashfs", "native")
ratio("berth 2 GB image", "berth 10 MB image", 1.05)
ratio("berth 2 GB image cold", "berth 10 MB image cold", 1.05)
over("berth join", "native", 1)
PY
