#!/usr/bin/env bash
# Cold start only (`berth exec --no-share IMG true`, the case of every new job step) against
# Charliecloud's ch-run on the same files, per SquashFS compression and on a directory.
# On a busy machine one hyperfine pass is skewed by whatever else runs then, so the cases are
# measured in ROUNDS interleaved passes and the table shows the median of the per-pass medians,
# with the load average before each pass. BENCH_BASE=/path/to/an/older/berth adds its cold rows
# to the same passes (before/after in one run). Run as root; same needs as bench/start.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
user=${BENCH_USER:-berthbench}
runs=${BENCH_RUNS:-60}
rounds=${BENCH_ROUNDS:-3}
work=${BENCH_DIR:-/var/tmp/berth-bench}
berth=${BENCH_BERTH:-$here/target/release/berth}

for t in hyperfine ch-run mksquashfs squashfuse_ll busybox; do
  command -v "$t" >/dev/null || { echo "bench: $t missing" >&2; exit 2; }
done
chmod 0666 /dev/fuse
id -u "$user" >/dev/null 2>&1 || useradd -m -s /bin/sh "$user"
install -d -m 0755 "$work"
install -m 0755 "$berth" "$work/berth-cold"
base=()
if [ -n "${BENCH_BASE:-}" ]; then install -m 0755 "$BENCH_BASE" "$work/berth-base"; fi
if [ ! -f "$work/small-none.sqsh" ]; then
  d="$work/small"; rm -rf "$d"; mkdir -p "$d"/{bin,etc,tmp,proc,sys,dev,home,data}
  cp /bin/busybox "$d/bin/"; for a in sh true cat ls; do ln -sf busybox "$d/bin/$a"; done
  printf 'root:x:0:0::/root:/bin/sh\n%s:x:%s:%s::/home/%s:/bin/sh\n' "$user" "$(id -u "$user")" "$(id -g "$user")" "$user" > "$d/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$user" "$(id -g "$user")" > "$d/etc/group"
  head -c $((10 * 1024 * 1024)) /dev/urandom > "$d/data/blob"
  mksquashfs "$d" "$work/small.sqsh" -noappend -quiet -no-progress -all-root >/dev/null
  for c in lz4 zstd; do mksquashfs "$d" "$work/small-$c.sqsh" -comp $c -noappend -quiet -no-progress -all-root >/dev/null; done
  mksquashfs "$d" "$work/small-none.sqsh" -noI -noD -noF -noX -noappend -quiet -no-progress -all-root >/dev/null
fi
chmod -R a+rX "$work"
as_user() { runuser -u "$user" -- env -i HOME="/home/$user" USER="$user" PATH=/usr/bin:/bin "$@"; }
out=$(mktemp -d); chown "$user" "$out"; trap 'rm -rf "$out"' EXIT
C="$work/berth-cold exec --no-share"
if [ -n "${BENCH_BASE:-}" ]; then
  B="$work/berth-base exec --no-share"
  base=(-n 'base gzip' "$B $work/small.sqsh /bin/true" -n 'base lz4' "$B $work/small-lz4.sqsh /bin/true"
    -n 'base zstd' "$B $work/small-zstd.sqsh /bin/true" -n 'base none' "$B $work/small-none.sqsh /bin/true"
    -n 'base directory' "$B $work/small /bin/true")
fi
for r in $(seq "$rounds"); do
  echo "pass $r: $(uptime | sed 's/.*load/load/')" >&2
  as_user hyperfine -N --warmup 5 --runs "$runs" --export-json "$out/$r.json" --style none \
    -n 'berth gzip' "$C $work/small.sqsh /bin/true" -n 'ch-run gzip' "ch-run $work/small.sqsh -- /bin/true" \
    -n 'berth lz4' "$C $work/small-lz4.sqsh /bin/true" -n 'ch-run lz4' "ch-run $work/small-lz4.sqsh -- /bin/true" \
    -n 'berth zstd' "$C $work/small-zstd.sqsh /bin/true" -n 'ch-run zstd' "ch-run $work/small-zstd.sqsh -- /bin/true" \
    -n 'berth none' "$C $work/small-none.sqsh /bin/true" -n 'ch-run none' "ch-run $work/small-none.sqsh -- /bin/true" \
    -n 'berth directory' "$C $work/small /bin/true" -n 'ch-run directory' "ch-run $work/small -- /bin/true" \
    "${base[@]}" >/dev/null
done
echo "after: $(uptime | sed 's/.*load/load/')" >&2
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
per = {}
for r in range(1, n + 1):
    for x in json.load(open(f"{d}/{r}.json"))["results"]:
        per.setdefault(x["command"], []).append(x["median"] * 1000)
med = {k: statistics.median(v) for k, v in per.items()}
has_base = "base gzip" in med
head = f"{'image':<13} {'berth cold':>10} {'ch-run':>8} {'ratio':>6} {'diff ms':>8}"
print(head + (f" {'before':>8} {'ratio':>6}" if has_base else "") + "   per-pass berth / ch-run")
for c in ("gzip", "lz4", "zstd", "none", "directory"):
    b, ch = med[f"berth {c}"], med[f"ch-run {c}"]
    passes = " ".join(f"{x:.1f}/{y:.1f}" for x, y in zip(per[f"berth {c}"], per[f"ch-run {c}"]))
    extra = f" {med[f'base {c}']:>8.2f} {med[f'base {c}']/ch:>6.2f}" if has_base else ""
    print(f"{c:<13} {b:>10.2f} {ch:>8.2f} {b/ch:>6.2f} {b-ch:>8.2f}{extra}   {passes}")
PY
