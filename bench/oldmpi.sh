#!/usr/bin/env bash
# MPI start-up of an image whose MPI stack is older than the host's: the same program
# (berth-mpitest -h: MPI_Init, MPI_Finalize, exit) from defs/openmpi.def built on Debian 12
# (Open MPI 4.1.4, PMIx 4.2.2 like the host) and on Debian 11 (Open MPI 4.1.0, PMIx 4.0.0),
# as `srun --mpi=pmix -N2 -n2 --container=IMG` on the test cluster (tests/slurm/cluster.sh,
# Slurm 22.05 with the host's PMIx 4.2.2), with and without the Open MPI setting that avoids
# the old client's wait (OMPI_MCA_pml: one PML named, see README.md), with both ranks on one
# node, and as `berth exec IMG` outside Slurm (a singleton). Medians of BENCH_RUNS interleaved
# rounds, in ms.
#
# Run as root. Takes /tmp/berth-it.lock for the whole run (the cluster is shared) and brings
# the cluster down at the end. The images are built once and cached (tests/build-mpi-images.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${BENCH_RUNS:-5}
user=${TEST_USER:-berthuser}
DIR=${BERTH_SLURM_DIR:-/tmp/berth-slurm}
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 2; }
cd "$here"
cargo build -q -p berth -p spank-berth
# The build's %test runs `berth exec` through the running berth: give it a copy that a
# concurrent `cargo build` cannot replace under it.
berth_copy=$(mktemp /var/tmp/berth-oldmpi.XXXXXX)
install -m 0755 target/debug/berth "$berth_copy"
eval "$(BERTH=$berth_copy bash tests/build-mpi-images.sh openmpi openmpi-bullseye)"
rm -f "$berth_copy"
new=$BERTH_TEST_OPENMPI_IMAGE old=$BERTH_TEST_OPENMPI_BULLSEYE_IMAGE

exec 9>/tmp/berth-it.lock
flock 9
trap 'bash "$here/tests/slurm/cluster.sh" down >/dev/null 2>&1 || true' EXIT
install -d -m 0755 "$DIR/bin"
install -m 0755 target/debug/berth "$DIR/bin/.berth.new" && mv -f "$DIR/bin/.berth.new" "$DIR/bin/berth"
PLUGIN_ARGS="berth=$DIR/bin/berth timeout=60" bash tests/slurm/cluster.sh up >/dev/null
eval "$(bash tests/slurm/cluster.sh env)"
install -d -m 1777 "$DIR/work"

as_user() { timeout 120 runuser -u "$user" -- env -i -C "$DIR/work" HOME=/tmp USER="$user" PATH=/usr/bin:/bin SLURM_CONF="$SLURM_CONF" "$@"; }
one_us() { # command... ; one run's wall time in microseconds
  local s e; s=$(date +%s%N)
  as_user "$@" >/dev/null 2>&1 || { echo "bench: $* failed" >&2; exit 1; }
  e=$(date +%s%N); echo $(( (e - s) / 1000 ))
}
median_ms() { sort -n | awk '{a[NR]=$1} END {printf "%.0f", a[int((NR+1)/2)]/1000}'; }
step() { echo srun --mpi=pmix "$1" -n2 --container="$2" berth-mpitest -h; }
# Each case, its command, and the case it is compared with (refs: an index into both).
labels=("srun -N2, Debian 12 image" "srun -N2, Debian 11 image" "srun -N2, Debian 12, OMPI_MCA_pml=ob1"
        "srun -N2, Debian 11, OMPI_MCA_pml=ob1" "srun -N1, Debian 12 image" "srun -N1, Debian 11 image"
        "berth exec, Debian 12 (no Slurm)" "berth exec, Debian 11 (no Slurm)")
cmds=("$(step -N2 "$new")" "$(step -N2 "$old")" "env OMPI_MCA_pml=ob1 $(step -N2 "$new")"
      "env OMPI_MCA_pml=ob1 $(step -N2 "$old")" "$(step -N1 "$new")" "$(step -N1 "$old")"
      "$DIR/bin/berth exec $new berth-mpitest -h" "$DIR/bin/berth exec $old berth-mpitest -h")
refs=(0 0 0 2 4 4 6 6)
declare -A t
load=$(cut -d' ' -f1-3 /proc/loadavg)
for _ in $(seq "$runs"); do   # interleaved: drift on a busy machine hits every case alike
  for i in "${!cmds[@]}"; do t[$i]+="$(one_us ${cmds[$i]}) "; done
done
printf 'load average before: %s, after: %s\n' "$load" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-42s %8s %8s %11s\n' "   case ($runs runs, median)" "ms" "vs case" "difference"
for i in "${!cmds[@]}"; do m[$i]=$(printf '%s\n' ${t[$i]} | median_ms); done
for i in "${!cmds[@]}"; do
  r=${refs[$i]}
  printf '%2d %-39s %8s %8s %+11d\n' "$((i + 1))" "${labels[$i]}" "${m[$i]}" "$((r + 1))" "$(( m[i] - m[r] ))"
done
echo "goal: a Debian 11 step at most 200 ms over the same step with the Debian 12 image"
