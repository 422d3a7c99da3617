#!/usr/bin/env bash
# The whole test suite, as root on Debian 12: unit tests, integration tests that run berth as
# an unprivileged user the harness creates (images, holders, injection, PBS emulator), then the
# Debian packages: built, installed, and tested with a real multi-node Slurm cluster (munge,
# slurmctld, 3 slurmd in network namespaces) that loads the installed SPANK plugin and berth,
# then removed and purged; then the same Slurm suite on Slurm 24.11, run from a Debian 13 root.
# Ends with a check that nothing was left on the machine and one closing line per Slurm
# release ("slurm 22.05.8: N passed, 0 failed", "slurm 24.11.5: ...").
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/install-deps.sh" || exit 1
export PATH="$HOME/.cargo/bin:$PATH"
cd "$here"
status=0
echo "== formatting and lints (rustfmt.toml; clippy with warnings as errors)"
cargo fmt --all --check 2>&1 || status=1
cargo clippy --workspace --all-targets -q -- -D warnings 2>&1 || status=1
cargo build --workspace 2>&1 || exit 1

echo "== MPI images from defs/ (berth build, debootstrap; cached by content between runs)"
if images=$(bash tests/build-mpi-images.sh); then
  echo "$images"
  set -a; eval "$images"; set +a
  # The PBS emulator's two-node MPI job (mpirun through berth-pbs-rsh) runs the Open MPI image's test program.
  if [ -n "${BERTH_TEST_OPENMPI_IMAGE:-}" ]; then
    export BERTH_TEST_MPI_IMAGE=$BERTH_TEST_OPENMPI_IMAGE BERTH_TEST_MPI_PROGRAM="/usr/local/bin/berth-mpitest -q"
  fi
else
  echo "building the MPI images failed: the MPI tests will say so"; status=1
fi

cargo test --workspace --no-fail-fast 2>&1 || status=1

echo "== fuzz: image, environment-file, definition-file, ld.so.cache, ELF, labels and layer parsers (30 s)"
cargo run -q -p berth-build --example fuzz -- --seconds 30 --seed "$(date +%j)" 2>&1 || status=1

# The Slurm suite runs once, against what an administrator installs: the .debs built from
# this checkout (plugin at the packaged path, its plugstack.conf.d snippet, /usr/bin/berth),
# then `dpkg -r` and `dpkg -P` must leave nothing behind. A developer runs the same suite
# against target/debug with `bash tests/slurm/run.sh`.
echo "== packages and Slurm: build, install, check, Slurm suite on the packages, remove, purge"
suite_log=$(mktemp /tmp/berth-suite.XXXXXX)
SLURM=1 bash tests/packages.sh 2>&1 | tee "$suite_log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
bash tests/slurm/cluster.sh down >/dev/null 2>&1 || true

# The same Slurm suite on a current Slurm: Debian 13's 24.11, its daemons run from a Debian 13
# root (debootstrap, cached by content), the plugin built against its headers, berth's
# oci.conf on the nodes (Slurm 23.02 and later run --container tasks through it).
echo "== Slurm 24.11: the Slurm suite in a Debian 13 root (tests/slurm/debian13.sh suite)"
bash tests/slurm/debian13.sh suite 2>&1 | tee -a "$suite_log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1

# After the suite: nothing may be left on the machine by any test (processes of the test
# users, FUSE servers, mounts of berth's state directories, loop devices).
left=0
check() { # WHAT COMMAND...
  local what=$1; shift
  local out; out=$("$@" 2>/dev/null || true)
  if [ -n "$out" ]; then echo "LEFTOVER $what:"; echo "$out"; left=1; fi
}
sleep 0.5
for u in berthtest berthuser; do check "processes of $u" pgrep -a -u "$u"; done
check "FUSE servers" pgrep -a squashfuse_ll
check "mounts" grep -E '/berth-[0-9]+/' /proc/self/mountinfo
check "loop devices" sh -c "losetup -a | grep -i berth"
check "berth packages known to dpkg" sh -c "dpkg-query -W -f='\${Package} \${db:Status-Abbrev}\n' berth berth-slurm berth-pbs | grep -v ' [up]n'"
check "the test clusters" sh -c "ip netns list | grep -E '^b[st]node'; ls \${BERTH_SLURM_DIR:-/tmp/berth-slurm}/pids /tmp/berth-slurm-24.11/pids"
if [ $left -eq 0 ]; then echo "leftovers: none (processes, FUSE servers, mounts, loop devices, packages, cluster)"; else status=1; fi
# One closing line per Slurm release the suite ran against.
for release in 22.05 24.11; do
    grep -E "^slurm $release[.0-9]*: [0-9]+ passed, [0-9]+ failed$" "$suite_log" | tail -1 | grep . \
        || { echo "slurm $release: the suite did not finish"; status=1; }
done
rm -f "$suite_log"
exit $status
