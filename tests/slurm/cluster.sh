#!/bin/bash
# tests/slurm/cluster.sh - a real multi-node Slurm (Debian 12: 22.05) on this one machine, for
# berth's SPANK plugin tests. Run as root.
#
#   cluster.sh up       install missing packages, start munged + slurmctld + N slurmd, wait idle
#   cluster.sh down     stop what `up` started (PIDs in $DIR/pids), remove netns/bridge/hosts lines
#   cluster.sh status   what is running, sinfo
#   cluster.sh env      print the `export SLURM_CONF=...` a client needs
#
# Layout (all names are berth's own, so it can run beside other test clusters):
#   host netns:   bridge $BR  $NET.1/24   munged (own socket), slurmctld (own UTS ns, host "bctl")
#   bnodeN:       netns ${NS}nodeN, veth ${NS}vN <-> eth0 $NET.(10+N), own UTS ns (hostname bnodeN) and
#                 own mount ns (propagation slave), slurmd -N bnodeN, per-node spool and TmpFS
#   everything else (config, state, spool, logs, munge key) lives under $DIR; nothing in /etc/slurm.
#   When $DIR is /tmp/NAME, each node sees its own /tmp ($DIR/nodes/N/roottmp, with $DIR at
#   its usual place inside): put test images and scripts under $DIR, e.g. $DIR/work.
#   The namespaces have no default route: nodes reach only $NET.0/24 and their own loopback.
#
# Knobs (environment):
#   BERTH_SLURM_DIR=/tmp/berth-slurm  NODES=3 (1..9)  BERTH_SLURM_NET=10.78.0
#   BERTH_SLURM_PORT=6827 (slurmctld; slurmd uses +1)  BERTH_SLURM_TIMEOUT=60 (seconds to idle)
#   BERTH_SLURM_NS=bs (prefix of the bridge ${NS}br0, netns ${NS}nodeN and veths ${NS}vN: two
#   clusters, e.g. Slurm 22.05 and 24.11 from tests/slurm/debian13.sh, run side by side)
#   PLUGIN=path/to/libspank_berth.so (default: the workspace's target/debug build, if present)
#   PLUGIN_ARGS="berth=/usr/bin/berth ..." (plugstack.conf arguments)   SKIP_APT=1
#   PLUGSTACK_INCLUDE=FILE: plugstack.conf is `include FILE` instead of PLUGIN and PLUGIN_ARGS
#   PACKAGED=1: the installed berth-slurm package, included as Debian's own plugstack.conf does
#   (PLUGSTACK_INCLUDE='/etc/slurm/plugstack.conf.d/*.conf')
#   slurmd load plugstack.conf when they start: `up` restarts running ones when it changed.
#   TEST_USER=berthuser TEST_UID=2001 (created if missing)
#   OCI_CONF=FILE: installed as the nodes' oci.conf (berth's, for Slurm 23.02 and later)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIR=${BERTH_SLURM_DIR:-/tmp/berth-slurm}
NODES=${NODES:-3}
NET=${BERTH_SLURM_NET:-10.78.0}
PORT=${BERTH_SLURM_PORT:-6827}
TIMEOUT=${BERTH_SLURM_TIMEOUT:-60}
TEST_USER=${TEST_USER:-berthuser}
TEST_UID=${TEST_UID:-2001}
PLUGIN=${PLUGIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/libspank_berth.so}
PLUGIN_ARGS=${PLUGIN_ARGS:-}
if [ "${PACKAGED:-0}" = 1 ]; then PLUGSTACK_INCLUDE=${PLUGSTACK_INCLUDE:-/etc/slurm/plugstack.conf.d/*.conf}; fi
PLUGSTACK_CHANGED=0
NS=${BERTH_SLURM_NS:-bs}
BR=${NS}br0
TAG='# berth-slurm-test'
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
is() { alive "$1" && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }   # pid comm
pidfile() { [ -s "$1" ] && cat "$1" || true; }
munge_ok() { munge -n -S "$DIR/munge/munge.socket" 2>/dev/null | unmunge -S "$DIR/munge/munge.socket" >/dev/null 2>&1; }

PKGS="slurm-wlm slurmctld slurmd slurm-client munge libslurm-dev libpmix-dev openmpi-bin
      libopenmpi-dev mpich libmpich-dev iproute2 libclang-dev util-linux procps
      squashfs-tools squashfuse busybox-static"

install_packages() {
    [ "${SKIP_APT:-0}" = 1 ] && return
    local missing="" p
    for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
    done
    [ -z "$missing" ] && return
    log "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

write_config() {
    local proctrack i
    # proctrack/cgroup needs the v1 freezer hierarchy (this machine: hybrid v1); otherwise linuxproc.
    if [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] && [ -d /sys/fs/cgroup/freezer ]; then
        proctrack=proctrack/cgroup
    else
        proctrack=proctrack/linuxproc
    fi
    install -d -m 0755 "$DIR/etc" "$DIR/run" "$DIR/plugin"
    install -d -o slurm -g slurm -m 0755 "$DIR/state" "$DIR/log"
    install -d -m 1777 "$DIR/work"
    for i in $(seq "$NODES"); do
        install -d -m 0755 "$DIR/nodes/bnode$i/spool"   # slurmd does not create it before checking it
        install -d -m 1777 "$DIR/nodes/bnode$i/tmp"     # TmpFS: per node, or PMIx dirs collide
    done
    cat > "$CONF.new" <<CONF
# written by tests/slurm/cluster.sh
ClusterName=berthtest
SlurmctldHost=bctl($NET.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/nodes/%n/spool
TmpFS=$DIR/nodes/%n/tmp
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/etc/plugstack.conf
ProctrackType=$proctrack
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
Waittime=0
CONF
    for i in $(seq "$NODES"); do
        echo "NodeName=bnode$i NodeAddr=$NET.$((10 + i)) CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=2000 State=UNKNOWN" >> "$CONF.new"
    done
    echo "PartitionName=debug Nodes=bnode[1-$NODES] Default=YES MaxTime=INFINITE State=UP" >> "$CONF.new"
    mv -f "$CONF.new" "$CONF"
    printf 'CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n' \
        > "$DIR/etc/cgroup.conf"

    # The plugin: copied (new inode each time, so running slurmd keep their mapped copy) and
    # loaded `required`, so a plugin that fails to load fails every srun instead of hiding.
    if [ -n "${PLUGSTACK_INCLUDE:-}" ]; then
        # Nothing of a workspace build stays where a test could pick it up by mistake.
        rm -f "$DIR/plugin/libspank_berth.so"
        echo "include $PLUGSTACK_INCLUDE" > "$DIR/etc/plugstack.conf.new"
        log "plugstack.conf includes $PLUGSTACK_INCLUDE"
    elif [ -f "$PLUGIN" ]; then
        install -m 0755 "$PLUGIN" "$DIR/plugin/.libspank_berth.so.new"
        mv -f "$DIR/plugin/.libspank_berth.so.new" "$DIR/plugin/libspank_berth.so"
        echo "required $DIR/plugin/libspank_berth.so $PLUGIN_ARGS" > "$DIR/etc/plugstack.conf.new"
        log "plugin $PLUGIN ${PLUGIN_ARGS:+($PLUGIN_ARGS)}"
    else
        log "no plugin at $PLUGIN (cargo build -p spank-berth); plugstack.conf is empty"
        : > "$DIR/etc/plugstack.conf.new"
    fi
    # OCI_CONF=FILE: the nodes' oci.conf (berth's packaging/slurm/oci.conf on Slurm 23.02 and
    # later, where Slurm runs --container tasks through it); none otherwise.
    if [ -n "${OCI_CONF:-}" ]; then install -m 0644 "$OCI_CONF" "$DIR/etc/oci.conf"; else rm -f "$DIR/etc/oci.conf"; fi
    cmp -s "$DIR/etc/plugstack.conf.new" "$DIR/etc/plugstack.conf" || PLUGSTACK_CHANGED=1
    mv -f "$DIR/etc/plugstack.conf.new" "$DIR/etc/plugstack.conf"
}

start_munge() {
    install -d -o munge -g munge -m 0700 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        mungekey --create --keyfile="$DIR/munge/munge.key"
        chown munge:munge "$DIR/munge/munge.key"; chmod 0400 "$DIR/munge/munge.key"
    fi
    chmod 0755 "$DIR/munge"      # clients need the socket
    local pid; pid=$(pidfile "$DIR/munge/munged.pid")
    if is "$pid" munged && munge_ok; then return; fi
    rm -f "$DIR/munge/munged.pid"
    # A root with other ids (tests/slurm/debian13.sh, rebuilt) finds the files of an earlier one.
    chown -R munge:munge "$DIR/munge"
    runuser -u munge -- /usr/sbin/munged --key-file="$DIR/munge/munge.key" \
        --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
        --seed-file="$DIR/munge/munged.seed" --log-file="$DIR/munge/munged.log"
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged did not come up; see $DIR/munge/munged.log"
}

start_network() {
    local i ns
    if ! ip link show "$BR" >/dev/null 2>&1; then
        ip link add "$BR" type bridge
        ip addr add "$NET.1/24" dev "$BR"
    fi
    ip link set "$BR" up
    for i in $(seq "$NODES"); do
        ns=${NS}node$i
        [ -e "/run/netns/$ns" ] || ip netns add "$ns"
        if ! ip link show "${NS}v$i" >/dev/null 2>&1; then
            ip link add "${NS}v$i" type veth peer name eth0 netns "$ns"
            ip link set "${NS}v$i" master "$BR" up
            ip -n "$ns" addr add "$NET.$((10 + i))/24" dev eth0   # `ip -n` is fine for addresses
            ip -n "$ns" link set eth0 up
        fi
        ip -n "$ns" link set lo up
    done
    # Names resolve locally; rewrite in place (/etc/hosts may be a bind mount: no sed -i).
    { grep -v -- "$TAG\$" /etc/hosts || true
      echo "$NET.1 bctl $TAG"
      for i in $(seq "$NODES"); do echo "$NET.$((10 + i)) bnode$i $TAG"; done
    } > "$DIR/hosts.new"
    cat "$DIR/hosts.new" > /etc/hosts; rm -f "$DIR/hosts.new"
}

start_slurmctld() {
    local pid; pid=$(pidfile "$DIR/run/slurmctld.pid")
    if ! is "$pid" slurmctld; then
        rm -f "$DIR/run/slurmctld.pid"
        # own UTS namespace: the controller must believe it is "bctl" (SlurmctldHost)
        unshare --uts sh -c 'hostname bctl && exec /usr/sbin/slurmctld'
        for _ in $(seq 100); do [ -s "$DIR/run/slurmctld.pid" ] && break; sleep 0.1; done
    fi
    for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && return; sleep 0.2; done
    die "slurmctld did not answer; see $DIR/log/slurmctld.log"
}

start_slurmd() {
    local i n pid
    for i in $(seq "$NODES"); do
        n=bnode$i
        pid=$(pidfile "$DIR/run/slurmd-$n.pid")
        # slurmd runs the plugins' slurmd_init when it starts: one started with another
        # plugstack.conf (a workspace build, then the package) would keep the other plugin.
        if is "$pid" slurmd && [ "$PLUGSTACK_CHANGED" = 1 ]; then stop_pid "slurmd-$n" "$pid" slurmd; fi
        is "$pid" slurmd && continue
        rm -f "$DIR/run/slurmd-$n.pid"
        # Each node gets its own /tmp, as real nodes have (berth keeps per-node holder state in
        # /tmp/berth-<uid>): $DIR/nodes/N/roottmp over /tmp, with $DIR itself bound back at its
        # place inside it. Only when $DIR is directly under /tmp.
        local setup_tmp=""
        if [ "$(dirname "$DIR")" = /tmp ]; then
            install -d -m 1777 "$DIR/nodes/$n/roottmp"
            install -d -m 0755 "$DIR/nodes/$n/roottmp/$(basename "$DIR")"
            setup_tmp="mount --bind $DIR $DIR/nodes/$n/roottmp/$(basename "$DIR") && mount --rbind $DIR/nodes/$n/roottmp /tmp &&"
        fi
        # Each node gets its own boot id: UCX takes /proc/sys/kernel/random/boot_id as the host's
        # identity, so with one shared id it treats all nodes as one host and tries shared memory
        # between them (that fails once ranks of two nodes sit in two containers' user namespaces).
        [ -s "$DIR/nodes/$n/boot_id" ] || cat /proc/sys/kernel/random/uuid > "$DIR/nodes/$n/boot_id"
        chmod 0444 "$DIR/nodes/$n/boot_id"
        setup_tmp="mount --bind $DIR/nodes/$n/boot_id /proc/sys/kernel/random/boot_id && $setup_tmp"
        # And its own /run/berth, where the plugin makes each job user's state directory, and
        # /run/berth-oci, where slurmstepd makes the OCI spool directories of --container steps
        # under berth's oci.conf (Slurm 23.02+; root's, as berth-slurm's tmpfiles.d makes it).
        install -d -m 0755 /run/berth "$DIR/nodes/$n/runberth" /run/berth-oci "$DIR/nodes/$n/runoci"
        setup_tmp="mount --bind $DIR/nodes/$n/runberth /run/berth && mount --bind $DIR/nodes/$n/runoci /run/berth-oci && $setup_tmp"
        # nsenter --net, NOT `ip netns exec` (that remounts /sys and hides the cgroup v1 trees).
        nsenter --net="/run/netns/${NS}node$i" unshare --uts --mount --propagation slave \
            sh -c "hostname $n && $setup_tmp exec /usr/sbin/slurmd -N $n"
        for _ in $(seq 100); do [ -s "$DIR/run/slurmd-$n.pid" ] && break; sleep 0.1; done
        [ -s "$DIR/run/slurmd-$n.pid" ] || die "slurmd $n did not start; see $DIR/log/slurmd-$n.log"
    done
}

record_pids() {
    local i
    { echo "munged $(pidfile "$DIR/munge/munged.pid")"
      echo "slurmctld $(pidfile "$DIR/run/slurmctld.pid")"
      for i in $(seq "$NODES"); do echo "slurmd-bnode$i $(pidfile "$DIR/run/slurmd-bnode$i.pid")"; done
    } > "$DIR/pids"
}

wait_idle() {
    local st end=$((SECONDS + TIMEOUT))
    while [ $SECONDS -lt $end ]; do
        st=$(sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
        [ "$st" = "idle " ] && return 0
        # a node left down/drained by an earlier run comes back with an explicit resume
        if echo "$st" | grep -Eq 'drain|down'; then
            scontrol update nodename="bnode[1-$NODES]" state=resume 2>/dev/null || true
        fi
        sleep 0.5
    done
    sinfo -N >&2 || true
    die "nodes not idle after ${TIMEOUT}s; see $DIR/log/"
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root"
    # Descriptors a caller passed down (`flock LOCK bash run.sh` passes its lock) must not reach
    # the daemons started here: munged keeps what it inherits and would hold the lock until
    # `down`. 255 is the descriptor bash reads this script from.
    local fd
    for fd in /proc/$$/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-"; fi
    done
    install_packages
    mkdir -p "$DIR"
    if ! id "$TEST_USER" >/dev/null 2>&1; then
        if getent passwd "$TEST_UID" >/dev/null; then useradd -m -s /bin/bash "$TEST_USER"
        else useradd -m -u "$TEST_UID" -s /bin/bash "$TEST_USER"; fi
        log "created user $TEST_USER ($(id -u "$TEST_USER"))"
    fi
    # Unprivileged squashfuse needs /dev/fuse usable by users (0666 on real systems, 0600 here).
    if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
        [ -s "$DIR/fuse.mode" ] || stat -c %a /dev/fuse > "$DIR/fuse.mode"
        chmod 0666 /dev/fuse
    fi
    write_config
    start_munge
    start_network
    start_slurmctld
    start_slurmd
    record_pids
    wait_idle
    sinfo -N
    log "up; PIDs in $DIR/pids. As the test user: SLURM_CONF=$CONF runuser -u $TEST_USER -- srun -N2 hostname"
}

stop_pid() {  # name pid comm
    local name=$1 pid=$2 comm=$3
    is "$pid" "$comm" || { log "$name not running"; return 0; }
    kill "$pid"
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "$name still alive, SIGKILL"; kill -9 "$pid"; fi
    log "stopped $name ($pid)"
}

down() {
    [ "$(id -u)" = 0 ] || die "run as root"
    if [ -f "$DIR/pids" ]; then
        if scontrol ping 2>/dev/null | grep -q UP; then
            local ids; ids=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
            if [ -n "${ids// }" ]; then log "cancelling jobs $ids"; scancel $ids || true; sleep 3; fi
        fi
        local name pid
        while read -r name pid; do case $name in slurmd-*) stop_pid "$name" "$pid" slurmd ;; esac; done < "$DIR/pids"
        while read -r name pid; do [ "$name" = slurmctld ] && stop_pid "$name" "$pid" slurmctld; done < "$DIR/pids"
        while read -r name pid; do [ "$name" = munged ] && stop_pid "$name" "$pid" munged; done < "$DIR/pids"
        rm -f "$DIR/pids"
    fi
    # Daemons of this cluster that `pids` does not name: Slurm 24.11's `scontrol reconfigure`
    # restarts slurmctld and slurmd under new PIDs. They are this cluster's by their SLURM_CONF.
    local p comm
    for p in $(pgrep -x 'slurmctld|slurmd' || true); do
        comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
        tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" && stop_pid "$comm" "$p" "$comm"
    done
    local ns v d
    for ns in $(ip netns list | awk -v re="^${NS}node[0-9]+" '$1 ~ re {print $1}'); do ip netns del "$ns"; log "netns $ns removed"; done
    for v in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${NS}v[0-9]+\$" || true); do ip link del "$v" 2>/dev/null || true; done
    if ip link show "$BR" >/dev/null 2>&1; then ip link del "$BR"; log "bridge $BR removed"; fi
    if grep -q -- "$TAG\$" /etc/hosts; then
        grep -v -- "$TAG\$" /etc/hosts > "$DIR/hosts.new" || true
        cat "$DIR/hosts.new" > /etc/hosts; rm -f "$DIR/hosts.new"
    fi
    for d in /sys/fs/cgroup/*/slurm_bnode*; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    if [ -s "$DIR/fuse.mode" ]; then chmod "$(cat "$DIR/fuse.mode")" /dev/fuse; rm -f "$DIR/fuse.mode"; fi
    if [ "${PURGE:-0}" = 1 ]; then rm -rf "$DIR"; log "removed $DIR"; fi
    log down
}

status() {
    local name pid comm rc=0
    [ -f "$DIR/pids" ] || { echo "not up (no $DIR/pids)"; return 1; }
    while read -r name pid; do
        comm=${name%%-*}
        if is "$pid" "$comm"; then echo "$name $pid running"; else echo "$name $pid NOT running"; rc=1; fi
    done < "$DIR/pids"
    sinfo -N 2>&1 || rc=1
    return $rc
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
