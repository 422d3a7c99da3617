#!/usr/bin/env bash
# The main job, end to end, on one Debian 12 machine (run as root):
#   1. install the dependencies, build berth and the Slurm plugin, install berth as /usr/bin/berth
#      (the plugin's default berth= path);
#   2. start a small local Slurm (tests/slurm/cluster.sh: munge, slurmctld, slurmd "nodes" in
#      network namespaces) with the plugin in plugstack.conf;
#   3. build a small MPI image from defs/openmpi.def (Debian 12 + Open MPI + berth-mpitest; cached
#      in /var/cache/berth/test-images, so only the first run pays for it);
#   4. submit `sbatch -N2 -n4 --container=demo.img job.sh` as an ordinary user, wait for it, and
#      show its output: each rank's host and OS, and the MPI result;
#   5. run the same image standalone with `berth exec` and `berth run`;
#   6. stop the cluster (KEEP_CLUSTER=1 or --keep leaves it running).
set -euo pipefail
keep=${KEEP_CLUSTER:-0}
for a in "$@"; do
    case $a in
        --keep) keep=1 ;;
        *) echo "usage: $0 [--keep]   (--keep: leave the Slurm cluster running)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it installs packages and starts Slurm daemons)" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
t0=$SECONDS
step() { printf '\n== [%3ds] %s\n' $((SECONDS - t0)) "$*"; }
user=berthdemo
demo=/var/tmp/berth-demo
cluster() { TEST_USER=$user PLUGIN="$here/target/release/libspank_berth.so" bash "$here/tests/slurm/cluster.sh" "$@"; }

step "installing dependencies (Debian packages)"
bash "$here/scripts/install-deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "demo: cargo not found; install Rust (rustup) first" >&2; exit 1; }

step "building berth and the Slurm plugin (cargo build --release)"
(cd "$here" && cargo build --release -q -p berth -p spank-berth)
install -m 0755 "$here/target/release/berth" /usr/bin/berth
ln -sf berth /usr/bin/run-singularity      # SIF images start with #!/usr/bin/env run-singularity
if [ "$(command -v berth)" != /usr/bin/berth ]; then
    echo "note: $(command -v berth) comes before /usr/bin/berth in PATH; the demo uses /usr/bin/berth"
fi

step "starting a local Slurm with the berth plugin (plugstack.conf: no berth=, so /usr/bin/berth)"
cluster up
export SLURM_CONF=/tmp/berth-slurm/etc/slurm.conf
stop_hint="bash $here/tests/slurm/cluster.sh down"
if [ "$keep" != 1 ]; then trap 'step "stopping the cluster ($stop_hint)"; cluster down >/dev/null 2>&1 || true' EXIT; fi

step "building the MPI image from defs/openmpi.def (cached after the first build)"
img=$(BERTH=/usr/bin/berth bash "$here/tests/build-mpi-images.sh" openmpi | sed -n 's/^BERTH_TEST_OPENMPI_IMAGE=//p')
[ -f "$img" ] || { echo "demo: the image build failed" >&2; exit 1; }
rm -rf "$demo"; install -d -m 0755 "$demo"
ln -s "$img" "$demo/demo.img"
ls -lL "$demo/demo.img"

# The job: a plain Slurm batch script. `--container` on sbatch puts every srun step in the image.
install -d -o "$user" -m 0755 "$demo/job"
cat > "$demo/job/job.sh" <<'JOB'
#!/bin/sh
. /etc/os-release
echo "batch script on $(hostname) (on the node: $PRETTY_NAME, berth-mpitest: $(command -v berth-mpitest || echo none))"
# one line per rank: where it runs, which OS it sees, and that the image's program is there
srun --mpi=pmix sh -c '. /etc/os-release
    echo "rank $SLURM_PROCID on $(hostname): $PRETTY_NAME, image ${BERTH_CONTAINER_IMAGE:-none}, berth-mpitest: $(command -v berth-mpitest)"'
# an MPI program from the image: rank/size/host, a ring, an allreduce, ping-pong over the network
srun --mpi=pmix berth-mpitest
JOB
chmod 0755 "$demo/job/job.sh"
as_user() {
    runuser -u "$user" -- env -i -C "$demo/job" HOME="$demo/job" USER="$user" PATH=/usr/bin:/bin LANG=C.UTF-8 \
        SLURM_CONF="$SLURM_CONF" "$@"
}

step "sbatch -N2 -n4 --container=demo.img job.sh (as $user), waiting for the job"
as_user sbatch -N2 -n4 --wait -o job.out --container="$demo/demo.img" job.sh || rc=$?
echo "--- job output ($demo/job/job.out)"
cat "$demo/job/job.out"
echo "---"
[ "${rc:-0}" = 0 ] || { echo "demo: the job failed (exit ${rc})" >&2; exit 1; }

step "berth exec, standalone (no scheduler)"
as_user berth exec "$demo/demo.img" sh -c '. /etc/os-release; echo "berth exec: $PRETTY_NAME, I am $(id -un), in $(pwd)"'
step "berth run: the image's runscript (mpirun -n 2 berth-mpitest -q on this machine)"
as_user berth run "$demo/demo.img" -q

echo "demo: $((SECONDS - t0)) s so far"
if [ "$keep" = 1 ]; then
    step "done; the cluster keeps running. As $user: SLURM_CONF=$SLURM_CONF srun -N2 --container=$demo/demo.img hostname"
    echo "stop it with: $stop_hint"
else
    step "done (the cluster is stopped next; --keep leaves it running, $stop_hint stops it)"
fi
