#!/usr/bin/env bash
# Step start-up under Slurm: `srun -n N --container=IMG true` vs `srun -n N true`, for N = 1, 8,
# 32 on one node (--overcommit) and N = 4 over 2 nodes; median of repeated runs, in one session,
# on the project's test cluster (tests/slurm/cluster.sh: 3 slurmd in network namespaces).
# Run as root. The release build of berth and the plugin are used.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${BENCH_RUNS:-15}
user=${TEST_USER:-berthuser}
DIR=${BERTH_SLURM_DIR:-/tmp/berth-slurm}
(cd "$here" && cargo build --release -q -p berth -p spank-berth)
install -d "$DIR/bin"
install -m 0755 "$here/target/release/berth" "$DIR/bin/berth"
PLUGIN="$here/target/release/libspank_berth.so" PLUGIN_ARGS="berth=$DIR/bin/berth timeout=60" \
  bash "$here/tests/slurm/cluster.sh" up >/dev/null
eval "$(bash "$here/tests/slurm/cluster.sh" env)"
work=/var/tmp/berth-bench-slurm
rm -rf "$work"; mkdir -p "$work/root"/{bin,etc,tmp,proc,dev,sys,home}
cp /bin/busybox "$work/root/bin/"; for a in sh true; do ln -s busybox "$work/root/bin/$a"; done
# The default (gzip) image, and the same files with lz4 (`berth build --compression lz4`): a
# step's first exec decompresses the program, which on a slow CPU is most of a step's overhead.
mksquashfs "$work/root" "$work/img.sqsh" -noappend -quiet -no-progress -all-root >/dev/null
mksquashfs "$work/root" "$work/img-lz4.sqsh" -noappend -quiet -no-progress -all-root -comp lz4 >/dev/null
chmod -R a+rX "$work"

as_user() { timeout 120 runuser -u "$user" -- env -i -C "$work" HOME=/tmp USER="$user" PATH=/usr/bin:/bin SLURM_CONF="$SLURM_CONF" "$@"; }
one_us() { # srun args... ; prints one run's wall time in microseconds
  local s e; s=$(date +%s%N); as_user srun "$@" >/dev/null 2>&1 || { echo "bench: srun $* failed" >&2; exit 1; }; e=$(date +%s%N)
  echo $(( (e - s) / 1000 ))
}
median_ms() { sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'; }
ratio() { awk -v c="$1" -v n="$2" 'BEGIN { printf "%.3f", c / n }'; }
# Both mount modes in one run: unprivileged (squashfuse, the default) and privileged (the
# site opt-in: kernel squashfs on a loop device, the holder started as root by the plugin).
priv_on()  { install -d -m 0755 /etc/berth; printf 'mount_mode = "privileged"\n[privileged]\nallowed_dirs = ["%s"]\n' "$work" > /etc/berth/berth.toml; }
priv_off() { rm -f /etc/berth/berth.toml; }
[ -e /etc/berth/berth.toml ] && { echo "bench: /etc/berth/berth.toml exists; it would be replaced: move it away first" >&2; exit 2; }
trap priv_off EXIT
printf '%-16s %10s %12s %7s %12s %7s %12s %7s\n' "case" "native ms" "unpriv ms" "ratio" "lz4 ms" "ratio" "priv ms" "ratio"
for spec in "1 -N1 -n1" "8 -N1 -n8 --overcommit" "32 -N1 -n32 --overcommit" "4x2 -N2 -n4"; do
  set -- $spec; label=$1; shift
  # Interleaved (one run of each variant per round), so drift on a busy machine hits all alike.
  n=(); c=(); z=(); p=()
  for _ in $(seq "$runs"); do
    n+=("$(one_us "$@" true)")
    c+=("$(one_us "$@" --container="$work/img.sqsh" true)")
    z+=("$(one_us "$@" --container="$work/img-lz4.sqsh" true)")
    priv_on; p+=("$(one_us "$@" --container="$work/img.sqsh" true)"); priv_off
  done
  n=$(printf '%s\n' "${n[@]}" | median_ms); c=$(printf '%s\n' "${c[@]}" | median_ms)
  z=$(printf '%s\n' "${z[@]}" | median_ms); p=$(printf '%s\n' "${p[@]}" | median_ms)
  printf '%-16s %10s %12s %7s %12s %7s %12s %7s\n' "srun $label" "$n" "$c" "$(ratio "$c" "$n")" \
    "$z" "$(ratio "$z" "$n")" "$p" "$(ratio "$p" "$n")"
done
echo "target: ratio <= 1.10 at N = 32"
