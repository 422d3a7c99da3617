#!/bin/bash
# tests/slurm/mpich-tcp-finalize.sh - reproduce, without Slurm or berth, the MPI_Finalize hang of
# Debian 12's MPICH 4.0.2 (ch4:ucx) over UCX's TCP transport between two "nodes" (README:
# "MPICH across nodes over TCP"). Run as root; it needs mpich, libmpich-dev, iproute2, util-linux.
#
#   bash tests/slurm/mpich-tcp-finalize.sh [RUNS]        # default 20
#   HOSTS=n1:2 NP=2 bash tests/slurm/mpich-tcp-finalize.sh   # both ranks on one node: no hang
#   GENV="-genv UCX_TLS tcp,self" ...                     # try a setting on every rank
#   PROG=allreduce|mpitest (default allreduce: tests/slurm/mpi_ring.c; mpitest: tests/mpi/berth-mpitest.c)
#
# Each node is a network namespace on a bridge (10.79.0.0/24) with its own UTS and mount
# namespace and its own boot id (UCX would otherwise treat both as one host and use shared
# memory); mpiexec.mpich (hydra) starts its proxies there through an nsenter launcher. A run
# that has not ended after T seconds (default 10) counts as a hang. Everything it creates is
# removed at the end.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RUNS=${1:-20} T=${T:-10} HOSTS=${HOSTS:-n1:2,n2:2} NP=${NP:-4} GENV=${GENV:-} PROG=${PROG:-allreduce}
NET=10.79.0 BR=bmfbr0
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
W=$(mktemp -d /tmp/mpich-tcp-finalize.XXXXXX)
cleanup() {
    local i
    for i in 1 2; do ip netns del "bmf$i" 2>/dev/null; done
    ip link del "$BR" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

ip link add "$BR" type bridge && ip addr add "$NET.1/24" dev "$BR" && ip link set "$BR" up || exit 1
for i in 1 2; do
    ip netns add "bmf$i" || exit 1
    ip link add "bmfv$i" type veth peer name eth0 netns "bmf$i"
    ip link set "bmfv$i" master "$BR" up
    ip -n "bmf$i" addr add "$NET.$((10 + i))/24" dev eth0
    ip -n "bmf$i" link set eth0 up; ip -n "bmf$i" link set lo up
    cat /proc/sys/kernel/random/uuid > "$W/boot_id.$i"
done
# hydra calls the launcher as: LAUNCHER HOST COMMAND...
cat > "$W/launch" <<'EOF'
#!/bin/sh
h=$1; shift; i=${h#n}; w=$(dirname "$0")
exec nsenter --net="/run/netns/bmf$i" unshare --uts --mount --propagation slave sh -c \
    'hostname "$1" && mount --bind "$2" /proc/sys/kernel/random/boot_id && shift 2 && exec sh -c "$*"' \
    sh "$h" "$w/boot_id.$i" "$@"
EOF
chmod 0755 "$W/launch"
case $PROG in
    allreduce) mpicc.mpich -O1 -o "$W/prog" "$HERE/mpi_ring.c" || exit 1; args=allreduce ;;
    mpitest) mpicc.mpich -O2 -o "$W/prog" "$REPO/tests/mpi/berth-mpitest.c" || exit 1; args=-q ;;
    *) echo "PROG is allreduce or mpitest" >&2; exit 2 ;;
esac

ok=0 hang=0 bad=0
for i in $(seq "$RUNS"); do
    # shellcheck disable=SC2086
    timeout -k 2 "$T" mpiexec.mpich $GENV -launcher rsh -launcher-exec "$W/launch" -localhost "$NET.1" \
        -hosts "$HOSTS" -n "$NP" "$W/prog" $args > "$W/out" 2>&1
    case $? in
        0) ok=$((ok + 1)) ;;
        124|137) hang=$((hang + 1)) ;;
        *) bad=$((bad + 1)); tail -n 5 "$W/out" ;;
    esac
done
echo "$RUNS runs of $PROG on $HOSTS (-n $NP)${GENV:+ with $GENV}: $ok ended, $hang hung (> ${T}s), $bad failed"
