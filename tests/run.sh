#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests that start real services and run
# berth as an unprivileged user the harness creates. Run as root on Debian 12.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/install-deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$here"
status=0
cargo test --workspace --no-fail-fast 2>&1 || status=1

# After the suite: nothing may be left on the machine by any test (processes of the test
# users, FUSE servers, mounts of berth's state directories, loop devices).
left=0
check() { # WHAT COMMAND...
  local what=$1; shift
  local out; out=$("$@" 2>/dev/null || true)
  if [ -n "$out" ]; then echo "LEFTOVER $what:"; echo "$out"; left=1; fi
}
sleep 0.5
check "processes of the test user" pgrep -a -u berthtest
check "FUSE servers" pgrep -a squashfuse_ll
check "mounts" grep -E '/berth-[0-9]+/' /proc/self/mountinfo
check "loop devices" sh -c "losetup -a | grep -i berth"
if [ $left -eq 0 ]; then echo "leftovers: none (processes, FUSE servers, mounts, loop devices)"; else status=1; fi
exit $status
