#!/bin/bash
# tests/slurm/debian13.sh - a Debian 13 (trixie) root with Slurm 24.11, for running the Slurm
# suite against a current Slurm beside Debian 12's 22.05. Run as root.
#
#   debian13.sh root              build the root if it is not cached; print its path
#   debian13.sh enter CMD ARGS... run CMD inside the root (its own mount namespace)
#   debian13.sh suite             the Slurm suite (tests/slurm/run.sh) on Slurm 24.11: the plugin
#                                 built against the root's <slurm/spank.h>, berth's oci.conf and
#                                 runner on the nodes, a cluster of its own beside 22.05's
#                                 (BERTH_SLURM_DIR=/tmp/berth-slurm-24.11, netns btnodeN)
#
# The root is made with debootstrap and cached by content (suite + package list) under
# $BERTH_ROOTS (default /var/cache/berth/roots), so later runs on one machine start at once.
# `enter` shares with the host what the suite needs to see at the same paths: /proc, /sys, /dev,
# /run (network namespaces), /tmp, /home, the checkout, /var/cache/berth (test images), and the
# host's users (copied into the root's passwd/group/shadow before each entry, so files keep
# their owners' names on both sides). Everything else (Slurm, munge, PMIx, glibc 2.41,
# squashfuse, the MPI libraries) is the root's own: the daemons, srun and the plugin's host
# see Debian 13.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROOTS=${BERTH_ROOTS:-/var/cache/berth/roots}
SUITE=trixie
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PKGS="slurmd slurmctld slurm-client munge libslurm-dev slurm-wlm-basic-plugins
      libpmix-dev openmpi-bin libopenmpi-dev mpich libmpich-dev gcc libc6-dev
      squashfuse fuse3 squashfs-tools busybox-static file procps iproute2 util-linux
      docker-registry skopeo apparmor
"

log() { printf '[debian13] %s\n' "$*" >&2; }

root_path() {
    local key
    key=$(printf '%s\n' "$SUITE" $PKGS | sha256sum | cut -c1-16)
    echo "$ROOTS/$SUITE-slurm-$key"
}

build_root() {
    local root; root=$(root_path)
    if [ -f "$root/.complete" ]; then echo "$root"; return; fi
    command -v debootstrap >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    install -d -m 0755 "$ROOTS"
    local tmp="$root.part.$$"
    rm -rf "$tmp"
    log "debootstrap $SUITE with Slurm into $root (a few minutes, once per machine)"
    # A minimal base first, then the packages with apt inside it: debootstrap's own resolver
    # does not configure a list this long in a working order.
    if ! { debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" &&
           chroot "$tmp" env DEBIAN_FRONTEND=noninteractive sh -c \
               "apt-get update -qq && apt-get install -y -qq --no-install-recommends $(echo $PKGS)"; } \
        > "$tmp.log" 2>&1; then
        tail -20 "$tmp.log" >&2; rm -rf "$tmp" "$tmp.log"; log "building the root failed (log above)"; exit 1
    fi
    rm -f "$tmp.log"
    # The daemons are started by hand; nothing in the root starts services of its own.
    chroot "$tmp" sh -c 'rm -f /etc/munge/munge.key; apt-get clean' >/dev/null 2>&1 || true
    touch "$tmp/.complete"
    rm -rf "$root"; mv "$tmp" "$root"
    # Roots of other package lists are stale: one at a time on a machine.
    local old
    for old in "$ROOTS/$SUITE-slurm-"*; do
        [ "$old" = "$root" ] || [ ! -d "$old" ] || case $old in *.part.*) ;; *) rm -rf "$old" ;; esac
    done
    echo "$root"
}

# Users of the host, so the test users the harness makes and the files they own agree on
# both sides; the root's own system users (slurm, munge) keep their ids, taken from the root.
sync_users() {  # root
    local root=$1 f
    for f in passwd group shadow; do
        [ -f "$root/etc/$f.debian13" ] || cp -a "$root/etc/$f" "$root/etc/$f.debian13"
        {
            cat "$root/etc/$f.debian13"
            awk -F: 'NR == FNR { seen[$1] = 1; next } !($1 in seen)' "$root/etc/$f.debian13" "/etc/$f"
        } > "$root/etc/$f.new"
        chmod --reference="$root/etc/$f.debian13" "$root/etc/$f.new"
        mv -f "$root/etc/$f.new" "$root/etc/$f"
    done
}

# The host's names too (srun tells slurmctld its host name, which must resolve there), with the
# lines cluster.sh keeps for the test cluster's own names.
sync_hosts() {  # root
    local root=$1 tag='# berth-slurm-test$'
    { grep -v -- "$tag" /etc/hosts || true; grep -- "$tag" "$root/etc/hosts" 2>/dev/null || true; } > "$root/etc/hosts.new"
    mv -f "$root/etc/hosts.new" "$root/etc/hosts"
}

enter() {
    local root; root=$(build_root)
    sync_users "$root"
    sync_hosts "$root"
    local shared=(/proc /sys /dev /run /tmp /home /var/cache/berth "$REPO")
    # shellcheck disable=SC2016
    OLDPWD_IN_ROOT=$PWD unshare --mount --propagation private -- bash -c '
        root=$1; shift; n=$1; shift
        # The root is a mount of its own, so that "/" inside is a mount point: the nodes make
        # their mount namespaces slaves of it (unshare --propagation slave).
        mount --bind "$root" "$root"
        for ((i = 0; i < n; i++)); do
            d=$1; shift
            mkdir -p "$root$d"
            mount --rbind "$d" "$root$d"
        done
        # pivot_root, not chroot: the kernel refuses a chrooted process a user namespace,
        # and berth makes one for every container.
        mkdir -p "$root/.host"
        cd "$root" && pivot_root . .host && umount -l /.host || exit 1
        exec /usr/bin/env -C "$OLDPWD_IN_ROOT" "$@"
    ' _ "$root" "${#shared[@]}" "${shared[@]}" "$@"
}

# The suite against Slurm 24.11. berth itself is the workspace's debug build (built on the host:
# Debian 12's glibc runs on 13's); the plugin must be built against the Slurm it is loaded by.
suite() {
    local root target
    root=$(build_root)
    target=${CARGO_TARGET_DIR:-$REPO/target}
    export PATH="$HOME/.cargo/bin:$PATH"
    log "spank-berth against $root/usr/include (Slurm $(sed -n 's/^#define SLURM_VERSION_STRING "\(.*\)"/\1/p' "$root/usr/include/slurm/slurm_version.h"))"
    (cd "$REPO" && SLURM_INCLUDE_DIR="$root/usr/include" CARGO_TARGET_DIR="$target/slurm-24.11" \
        cargo build -q -p spank-berth) || { echo "0 passed, 1 failed"; return 1; }
    export BERTH_SLURM_DIR=${BERTH_SLURM_DIR_2411:-/tmp/berth-slurm-24.11} BERTH_SLURM_NS=bt \
        BERTH_SLURM_NET=10.77.0 BERTH_SLURM_PORT=6837 SKIP_APT=1 \
        PLUGIN="$target/slurm-24.11/debug/libspank_berth.so" BERTH="$target/debug/berth" \
        OCI_CONF="$REPO/packaging/slurm/oci.conf"
    install -d -m 0755 "$BERTH_SLURM_DIR/plugin"

    # The runner runs inside images whose C library is not the host's: static.
    export OCI_RUN=$BERTH_SLURM_DIR/plugin/berth-oci-run
    gcc -static -Os -Wall -Werror -o "$OCI_RUN.new" "$REPO/spank-plugin/oci-run.c" && mv -f "$OCI_RUN.new" "$OCI_RUN" \
        || { echo "0 passed, 1 failed"; return 1; }
    # One mount namespace for the whole run: `ip netns add` mounts the nodes' namespaces on
    # /run/netns/NAME inside it (a later `enter` sees the names but not those mounts), so the
    # cluster is brought down and up, used and brought down again within it.
    enter bash -c 'bash "$1/cluster.sh" down >/dev/null 2>&1; bash "$1/run.sh"; rc=$?
                   bash "$1/cluster.sh" down >/dev/null 2>&1; exit $rc' _ "$HERE"
}

case ${1:-} in
    root) build_root ;;
    suite) suite ;;
    enter) shift; [ $# -gt 0 ] || { echo "usage: $0 enter CMD ARGS..." >&2; exit 2; }; enter "$@" ;;
    *) echo "usage: $0 root | enter CMD ARGS... | suite" >&2; exit 2 ;;
esac
