#!/usr/bin/env bash
# Step start-up under Slurm: `srun -n N --container=IMG true` vs `srun -n N true`, for N = 1, 8,
# 32 on one node (--overcommit) and N = 4 over 2 nodes; median of repeated runs, in one session,
# on the project's test cluster (tests/slurm/cluster.sh: 3 slurmd in network namespaces).
# Then a 2-node MPI step in the image vs on the host (ping-pong latency and bandwidth from
# berth-mpitest, MPI_Allreduce from bench/allreduce.c; the Open MPI image of
# tests/build-mpi-images.sh, the same sources built with the host's Open MPI), and a step with a
# 1.6 GB image vs a 10 MB one (cold: page cache dropped before the step; warm: not).
# Run as root. The release build of berth and the plugin are used. Takes /tmp/berth-it.lock
# while the cluster is up (it is shared) and brings the cluster down at the end.
# BENCH_PARTS (default "start mpi size") chooses the parts.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${BENCH_RUNS:-15}
mpiruns=${BENCH_MPI_RUNS:-7}
parts=${BENCH_PARTS:-start mpi size}
user=${TEST_USER:-berthuser}
DIR=${BERTH_SLURM_DIR:-/tmp/berth-slurm}
cache=${BENCH_CACHE:-/var/cache/berth/bench}
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 2; }
(cd "$here" && cargo build --release -q -p berth -p spank-berth)
work=/var/tmp/berth-bench-slurm
rm -rf "$work"; mkdir -p "$work/root"/{bin,etc,tmp,proc,dev,sys,home}
cp /bin/busybox "$work/root/bin/"; for a in sh true; do ln -s busybox "$work/root/bin/$a"; done
# The default (gzip) image, and the same files with lz4 (`berth build --compression lz4`): a
# step's first exec decompresses the program, which on a slow CPU is most of a step's overhead.
mksquashfs "$work/root" "$work/img.sqsh" -noappend -quiet -no-progress -all-root >/dev/null
mksquashfs "$work/root" "$work/img-lz4.sqsh" -noappend -quiet -no-progress -all-root -comp lz4 >/dev/null
case " $parts " in *" mpi "*)
  # The image's MPI (built once, cached); the host's build of the same programs.
  install -m 0755 "$here/target/release/berth" "$work/berth"
  eval "$(BERTH="$work/berth" bash "$here/tests/build-mpi-images.sh" openmpi)"
  mpi_img=$BERTH_TEST_OPENMPI_IMAGE
  mpicc -O2 -o "$work/berth-mpitest" "$here/tests/mpi/berth-mpitest.c"
  mpicc -O2 -o "$work/allreduce" "$here/bench/allreduce.c"
  install -d -o "$user" "$work/img-build"; cp "$here/bench/allreduce.c" "$work/img-build/"
  chmod -R a+rX "$work"
  runuser -u "$user" -- env -i -C "$work/img-build" HOME=/tmp PATH=/usr/bin:/bin \
    "$work/berth" exec "$mpi_img" mpicc -O2 -o allreduce allreduce.c
  install -m 0755 "$work/img-build/allreduce" "$work/allreduce-img"
  ;;
esac
case " $parts " in *" size "*)
  # Busybox and 10 MB of random data; the same plus 1.6 GB of random files (incompressible, so
  # the file is that large), cached.
  small="$cache/size-10m.sqsh" big="$cache/size-1600m.sqsh"
  if [ ! -f "$big" ]; then
    echo "bench: building the 10 MB and 1.6 GB images once (cached in $cache)" >&2
    install -d -m 0755 "$cache"; t=$(mktemp -d /var/tmp/berth-size.XXXXXX)
    cp -a "$work/root" "$t/root"; mkdir "$t/root/data"; head -c $((10 << 20)) /dev/urandom >"$t/root/data/blob"
    mksquashfs "$t/root" "$small.part" -noappend -quiet -no-progress -all-root >/dev/null
    for i in $(seq 16); do head -c $((100 << 20)) /dev/urandom >"$t/root/data/big$i"; done
    mksquashfs "$t/root" "$big.part" -noappend -quiet -no-progress -all-root >/dev/null
    rm -rf "$t"; mv "$small.part" "$small"; mv "$big.part" "$big"
  fi
  chmod 0644 "$small" "$big"
  ;;
esac
chmod -R a+rX "$work"

# Both mount modes in one run: unprivileged (squashfuse, the default) and privileged (the
# site opt-in: kernel squashfs on a loop device, the holder started as root by the plugin).
priv_on()  { install -d -m 0755 /etc/berth; printf 'mount_mode = "privileged"\n[privileged]\nallowed_dirs = ["%s"]\n' "$work" > /etc/berth/berth.toml; }
priv_off() { rm -f /etc/berth/berth.toml; }
exec 9>/tmp/berth-it.lock
flock 9
[ -e /etc/berth/berth.toml ] && { echo "bench: /etc/berth/berth.toml exists; it would be replaced: move it away first" >&2; exit 2; }
trap 'priv_off; bash "$here/tests/slurm/cluster.sh" down >/dev/null 2>&1 || true' EXIT
install -d "$DIR/bin"
install -m 0755 "$here/target/release/berth" "$DIR/bin/berth"
PLUGIN="$here/target/release/libspank_berth.so" PLUGIN_ARGS="berth=$DIR/bin/berth timeout=60" \
  bash "$here/tests/slurm/cluster.sh" up >/dev/null
eval "$(bash "$here/tests/slurm/cluster.sh" env)"

as_user() { timeout 120 runuser -u "$user" -- env -i -C "$work" HOME=/tmp USER="$user" PATH=/usr/bin:/bin SLURM_CONF="$SLURM_CONF" "$@"; }
one_us() { # srun args... ; prints one run's wall time in microseconds
  local s e; s=$(date +%s%N); as_user srun "$@" >/dev/null 2>&1 || { echo "bench: srun $* failed" >&2; exit 1; }; e=$(date +%s%N)
  echo $(( (e - s) / 1000 ))
}
median_ms() { sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v c="$1" -v n="$2" 'BEGIN { printf "%.3f", c / n }'; }
printf 'load average before: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
if [[ " $parts " == *" start "* ]]; then
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
fi

if [[ " $parts " == *" mpi "* ]]; then
  # Rank 0's lines of one 2-node step, reduced to: latency_us bandwidth_MBps(4 MiB) ar8_us ar1M_us
  mpi_run() { # PINGPONG_PROG ALLREDUCE_PROG [srun options...]
    local pp=$1 ar=$2; shift 2; local o
    o=$(as_user srun --mpi=pmix -N2 -n2 "$@" "$pp"; as_user srun --mpi=pmix -N2 -n2 "$@" "$ar") ||
      { echo "bench: MPI step $* failed: $o" >&2; exit 1; }
    awk '/ping-pong latency/ {l=$3} /ping-pong bandwidth/ {b=$3} /allreduce 8 B/ {a=$4} /allreduce 1048576 B/ {m=$4}
         END {print l, b, a, m}' <<<"$o"
  }
  declare -a host img
  for _ in $(seq "$mpiruns"); do  # interleaved
    host+=("$(mpi_run "$work/berth-mpitest" "$work/allreduce")")
    img+=("$(mpi_run berth-mpitest "$work/allreduce-img" --container="$mpi_img")")
  done
  printf '\n2-node MPI (srun --mpi=pmix -N2 -n2, Open MPI 4.1; %s rounds, medians)\n' "$mpiruns"
  # Medians, and the best round of each side (least disturbed by the rest of a busy machine).
  printf '%-34s %9s %9s %6s %9s %9s %6s   %s\n' measure host image ratio "best host" image ratio "per-round host/image"
  names=("ping-pong latency (us, 8 B)" "ping-pong bandwidth (MB/s, 4 MiB)" "allreduce (us, 8 B)" "allreduce (us, 1 MiB)")
  for k in 0 1 2 3; do
    col() { for x in "$@"; do set -- $x; shift $k; echo "$1"; done; }
    best() { if [ $k = 1 ]; then sort -g | tail -1; else sort -g | head -1; fi; }
    h=$(col "${host[@]}" | median); c=$(col "${img[@]}" | median)
    hb=$(col "${host[@]}" | best); cb=$(col "${img[@]}" | best)
    per=$(paste -d/ <(col "${host[@]}") <(col "${img[@]}") | tr '\n' ' ')
    printf '%-34s %9s %9s %6s %9s %9s %6s   %s\n' "${names[$k]}" "$h" "$c" "$(ratio "$c" "$h")" \
      "$hb" "$cb" "$(ratio "$cb" "$hb")" "$per"
  done
  echo "goal: image / host between 0.98 and 1.02 (bandwidth: higher is better, the others lower)"
fi

if [[ " $parts " == *" size "* ]]; then
  declare -a sc sw bc bw
  for _ in $(seq "$runs"); do  # interleaved; cold = the page cache dropped before the step
    sync; echo 3 >/proc/sys/vm/drop_caches; sc+=("$(one_us -N1 -n1 --container="$small" true)")
    sync; echo 3 >/proc/sys/vm/drop_caches; bc+=("$(one_us -N1 -n1 --container="$big" true)")
    sw+=("$(one_us -N1 -n1 --container="$small" true)"); bw+=("$(one_us -N1 -n1 --container="$big" true)")
  done
  printf '\nImage size (srun -N1 -n1 --container=IMG true; %s rounds, median ms)\n' "$runs"
  printf '%-22s %10s %10s %7s\n' step "10 MB" "1.6 GB" ratio
  for v in cold warm; do
    if [ $v = cold ]; then a=$(printf '%s\n' "${sc[@]}" | median_ms); b=$(printf '%s\n' "${bc[@]}" | median_ms)
    else a=$(printf '%s\n' "${sw[@]}" | median_ms); b=$(printf '%s\n' "${bw[@]}" | median_ms); fi
    printf '%-22s %10s %10s %7s\n' "$v" "$a" "$b" "$(ratio "$b" "$a")"
  done
  echo "images: $(du -m "$small" | cut -f1) MB and $(du -m "$big" | cut -f1) MB; goal: ratio at most 1.05"
fi
printf 'load average after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
