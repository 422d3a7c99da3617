#!/usr/bin/env bash
# MPI start-up of an image whose MPI stack is older than the host's: the same program
# (berth-mpitest -h: MPI_Init, MPI_Finalize, exit) from defs/openmpi.def built on Debian 12
# (Open MPI 4.1.4, PMIx 4.2.2 like the host) and on Debian 11 (Open MPI 4.1.0, PMIx 4.0.0),
# as `srun --mpi=pmix -N2 -n2 --container=IMG` on the test cluster (tests/slurm/cluster.sh,
# Slurm 22.05 with the host's PMIx 4.2.2), with and without the Open MPI setting that avoids
# the old client's wait (OMPI_MCA_pml: one PML named, see the table's last lines), and as
# `berth exec IMG` outside Slurm (a singleton). Medians of BENCH_RUNS interleaved rounds, ms.
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
step() { echo srun --mpi=pmix -N2 -n2 --container="$1" berth-mpitest -h; }
labels=("srun, Debian 12 image" "srun, Debian 11 image" "srun, Debian 12, OMPI_MCA_pml=ob1"
        "srun, Debian 11, OMPI_MCA_pml=ob1" "berth exec, Debian 12 (no Slurm)" "berth exec, Debian 11 (no Slurm)")
cmds=("$(step "$new")" "$(step "$old")" "env OMPI_MCA_pml=ob1 $(step "$new")" "env OMPI_MCA_pml=ob1 $(step "$old")"
      "$DIR/bin/berth exec $new berth-mpitest -h" "$DIR/bin/berth exec $old berth-mpitest -h")
declare -A t
load=$(cut -d' ' -f1-3 /proc/loadavg)
for _ in $(seq "$runs"); do   # interleaved: drift on a busy machine hits every case alike
  for i in "${!cmds[@]}"; do t[$i]+="$(one_us ${cmds[$i]}) "; done
done
printf 'load average before: %s, after: %s\n' "$load" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-40s %10s %12s\n' "case ($runs runs, median)" "ms" "vs Debian 12"
for i in "${!cmds[@]}"; do
  m[$i]=$(printf '%s\n' ${t[$i]} | median_ms)
  ref=${m[0]}; [ "$i" = 3 ] && ref=${m[2]}; [ "$i" -ge 4 ] && ref=${m[4]}
  printf '%-40s %10s %+12d\n' "${labels[$i]}" "${m[$i]}" "$(( m[i] - ref ))"
done
echo "goal: a Debian 11 step at most 200 ms over the same step with the Debian 12 image"
