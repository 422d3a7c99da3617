#!/bin/sh
# Install berth-pbs on a TORQUE compute node (as root):
#   sh packaging/torque/install.sh [PBS_HOME] [BERTH_PBS_BINARY]
# - /usr/libexec/berth/berth-pbs (0755 root) and the rsh agent berth-pbs-rsh (0755 root)
# - mom_priv/prologue, epilogue, prologue.parallel, epilogue.parallel as copies of berth-pbs
#   (it acts on the name it is called by). pbs_mom runs them only if they are regular files
#   owned by root, readable and executable by root, and not writable by group or others;
#   otherwise it fails the job with "permission Error". Installed root:root 0500.
#   Existing prologue/epilogue scripts are left alone: call
#   `/usr/libexec/berth/berth-pbs prologue "$@" || exit $?` (or epilogue) from them instead.
# - the $job_starter line in mom_priv/config (printed, not edited: see mom_priv-config).
# - warns when BERTH_PBS_BINARY is dynamically linked (see README.md: build it static).
# DESTDIR=DIR installs under DIR instead of / (a staging tree).
set -eu
PBS_HOME=${1:-/var/spool/torque}
BIN=${2:-target/release/berth-pbs}
D=${DESTDIR:-}
here=$(cd "$(dirname "$0")" && pwd)

# u8 FILE OFFSET / u16, u32, u64: an unsigned little-endian integer of the file.
u() { od -An -j "$2" -N "$3" -t u"$3" "$1" | tr -d ' '; }
# linkage FILE: "dynamic" when the ELF file asks for a program interpreter (a PT_INTERP
# program header: the dynamic loader, which reads LD_PRELOAD and friends), "static" when it
# does not (static and static-pie builds; `ldd` succeeds on static-pie ones, so its exit
# status says nothing), "unknown" for what is not a little-endian 64-bit ELF file.
linkage() {
    [ "$(od -An -N 6 -t x1 "$1" | tr -d ' ')" = 7f454c460201 ] || { echo unknown; return; }
    phoff=$(u "$1" 32 8) phentsize=$(u "$1" 54 2) phnum=$(u "$1" 56 2) i=0
    while [ "$i" -lt "$phnum" ]; do
        [ "$(u "$1" $((phoff + i * phentsize)) 4)" = 3 ] && { echo dynamic; return; }
        i=$((i + 1))
    done
    echo static
}
case $(linkage "$BIN") in
    dynamic) echo "install.sh: note: $BIN is dynamically linked; the README's static build is preferred" >&2 ;;
    unknown) echo "install.sh: note: $BIN is not a 64-bit little-endian ELF program; is it berth-pbs?" >&2 ;;
esac
install -d -o root -g root -m 0755 "$D/usr/libexec/berth"
install -o root -g root -m 0755 "$BIN" "$D/usr/libexec/berth/berth-pbs"
install -o root -g root -m 0755 "$here/berth-pbs-rsh" "$D/usr/libexec/berth/berth-pbs-rsh"
for h in prologue epilogue prologue.parallel epilogue.parallel; do
    if [ -e "$D$PBS_HOME/mom_priv/$h" ] && ! cmp -s "$BIN" "$D$PBS_HOME/mom_priv/$h"; then
        echo "install.sh: $PBS_HOME/mom_priv/$h exists; add to it: /usr/libexec/berth/berth-pbs $h \"\$@\" || exit \$?" >&2
        continue
    fi
    install -o root -g root -m 0500 "$BIN" "$D$PBS_HOME/mom_priv/$h"
done
echo "now add to $PBS_HOME/mom_priv/config:"
grep -v '^#' "$here/mom_priv-config" | grep .
echo "and create /etc/berth/berth.toml if the defaults do not fit (packaging/berth.toml);"
echo "check the node with: berth config check"
