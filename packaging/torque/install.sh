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
set -eu
PBS_HOME=${1:-/var/spool/torque}
BIN=${2:-target/release/berth-pbs}
here=$(cd "$(dirname "$0")" && pwd)
if ldd "$BIN" >/dev/null 2>&1; then
    echo "install.sh: note: $BIN is dynamically linked; the README's static build is preferred" >&2
fi
install -d -o root -g root -m 0755 /usr/libexec/berth
install -o root -g root -m 0755 "$BIN" /usr/libexec/berth/berth-pbs
install -o root -g root -m 0755 "$here/berth-pbs-rsh" /usr/libexec/berth/berth-pbs-rsh
for h in prologue epilogue prologue.parallel epilogue.parallel; do
    if [ -e "$PBS_HOME/mom_priv/$h" ] && ! cmp -s "$BIN" "$PBS_HOME/mom_priv/$h"; then
        echo "install.sh: $PBS_HOME/mom_priv/$h exists; add to it: /usr/libexec/berth/berth-pbs $h \"\$@\" || exit \$?" >&2
        continue
    fi
    install -o root -g root -m 0500 "$BIN" "$PBS_HOME/mom_priv/$h"
done
echo "now add to $PBS_HOME/mom_priv/config:"
grep -v '^#' "$here/mom_priv-config" | grep .
echo "and create /etc/berth/berth.toml if the defaults do not fit (packaging/berth.toml);"
echo "check the node with: berth config check"
