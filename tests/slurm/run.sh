#!/bin/bash
# tests/slurm/run.sh - end-to-end tests of the SPANK plugin on the test cluster (cluster.sh).
# Run as root from anywhere; jobs run as the non-root test user. Ends with "N passed, M failed".
#
#   bash tests/slurm/run.sh            # brings the cluster up (idempotent) with the plugin and berth
#   NO_UP=1 bash tests/slurm/run.sh    # use the cluster as it is
#
# Knobs: BERTH=path of the berth binary (default: the workspace's target/debug/berth), PLUGIN
# (see cluster.sh), STEPS=100 (consecutive container steps in the leftover test).
# PACKAGED=1: test the installed packages instead (what CI does, through tests/packages.sh):
# the cluster's plugstack.conf includes /etc/slurm/plugstack.conf.d/*.conf as Debian's own
# does, so berth-slurm's snippet loads the packaged plugin with its default berth=/usr/bin/berth;
# the (p) checks assert that (dpkg owners, the snippet, the commit) and that a step's slurmstepd
# mapped that plugin and its holder runs that berth (in the default mode: the workspace's files).
# Without the packages installed this mode fails.
# Otherwise the container scenarios (d) need a berth with the `holder` command; without one
# they are reported as skipped, not passed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIR=${BERTH_SLURM_DIR:-/tmp/berth-slurm}
TEST_USER=${TEST_USER:-berthuser}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
PACKAGED=${PACKAGED:-0}
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
if [ "$PACKAGED" = 1 ]; then
    BERTH=/usr/bin/berth
    SNIPPET=/etc/slurm/plugstack.conf.d/berth.conf
    PLUGIN_FILE=/usr/lib/$MULTIARCH/slurm-wlm/spank_berth.so
    NODE_BERTH=/usr/bin/berth
else
    BERTH=${BERTH:-$TARGET/debug/berth}
    PLUGIN_FILE=$DIR/plugin/libspank_berth.so   # cluster.sh copies the workspace's build there
    NODE_BERTH=$DIR/bin/berth
fi
STEPS=${STEPS:-100}
WORK=$DIR/work/run.$$
export SLURM_CONF=$DIR/etc/slurm.conf

PASS=0 FAIL=0 SKIP=0
ok()   { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad()  { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
skip() { SKIP=$((SKIP + 1)); echo "skip - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
# run as the test user in $WORK, with a clean login-like environment
as_user() {   # every job command is bounded in time: a hang fails its test, not the run
    timeout -k 5 "${T:-120}" runuser -u "$TEST_USER" -- env -i -C "$WORK" HOME="$(getent passwd "$TEST_USER" | cut -d: -f6)" \
        USER="$TEST_USER" PATH=/usr/local/bin:/usr/bin:/bin SLURM_CONF="$SLURM_CONF" "$@"
}
nodes_idle() { [ "$(sinfo -h -N -o '%T' | sort -u | tr '\n' ' ')" = "idle " ]; }
wait_idle() { for _ in $(seq 60); do nodes_idle && return 0; sleep 0.5; done; return 1; }
has() { grep -q -- "$1" "$2"; }
# How many of the cluster's nodes a file names. Slurm gives a -N2 step the first two nodes that
# are free, which need not be bnode1 and bnode2 while a node still completes the last step.
hosts_in() { grep -o 'bnode[0-9]*' "$1" | sort -u | wc -l; }
export -f hosts_in
# no process of the test user left (slurmstepd may take a moment after srun returns)
no_user_procs() { for _ in $(seq 40); do pgrep -u "$TEST_USER" >/dev/null || return 0; sleep 0.25; done
                  pgrep -u "$TEST_USER" -a; return 1; }

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }

# ------------------------------------------------------------------------- setup
install -d -m 0755 "$DIR/bin"
HAVE_RUNTIME=0
if [ "$PACKAGED" = 1 ]; then
    # Nothing of a workspace build stays where a test could pick it up by mistake.
    rm -f "$DIR/bin/berth"
    "$BERTH" holder --help >/dev/null 2>&1 && HAVE_RUNTIME=1 \
        || { echo "PACKAGED=1: no installed $BERTH with a holder command"; echo "0 passed, 1 failed"; exit 1; }
elif [ -x "$BERTH" ] && "$BERTH" holder --help >/dev/null 2>&1; then
    install -m 0755 "$BERTH" "$DIR/bin/.berth.new" && mv -f "$DIR/bin/.berth.new" "$DIR/bin/berth"
    HAVE_RUNTIME=1
else
    echo "note: no berth with a holder command at $BERTH; container scenarios will be skipped"
    rm -f "$DIR/bin/berth"
fi
if [ "${NO_UP:-0}" != 1 ] && [ "$PACKAGED" = 1 ]; then
    PACKAGED=1 bash "$HERE/cluster.sh" up >/dev/null \
        || { echo "cluster.sh up failed"; echo "0 passed, 1 failed"; exit 1; }
elif [ "${NO_UP:-0}" != 1 ]; then
    PLUGIN_ARGS="berth=$DIR/bin/berth timeout=60${OCI_RUN:+ oci_run=$OCI_RUN}" bash "$HERE/cluster.sh" up >/dev/null \
        || { echo "cluster.sh up failed"; echo "0 passed, 1 failed"; exit 1; }
fi
install -d -m 0777 "$WORK"
trap 'rm -rf "$WORK"' EXIT

# test images: busybox + an os-release that names the image
mkimage() {  # name pretty
    local root=$WORK/$1.root
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/dev" "$root/sys" "$root/home" "$root/data"
    cp "$(command -v busybox)" "$root/bin/busybox"
    for a in sh cat env id ls pwd hostname true false echo sleep grep touch; do ln -sf busybox "$root/bin/$a"; done
    printf 'NAME="%s"\nID=%s\nPRETTY_NAME="%s"\n' "$2" "$1" "$2" > "$root/etc/os-release"
    # pyxis' examples start scripts with #!/bin/bash; busybox has no bash applet.
    printf '#!/bin/sh\nexec /bin/sh "$@"\n' > "$root/bin/bash"; chmod 0755 "$root/bin/bash"
    mksquashfs "$root" "$WORK/$1.sqsh" -noappend -quiet >/dev/null
    chmod 0644 "$WORK/$1.sqsh"
}
mkimage imga "berth test image A"
# MPI programs (hybrid model: the test image borrows the host's /usr for its MPI libraries)
mpicc.openmpi -O1 -o "$WORK/ring_ompi" "$HERE/mpi_ring.c"
mpicc.mpich -O1 -o "$WORK/ring_mpich" "$HERE/mpi_ring.c"
ln -s usr/lib "$WORK/imga.root/lib" 2>/dev/null; ln -s usr/lib64 "$WORK/imga.root/lib64" 2>/dev/null
mkdir -p "$WORK/imga.root/usr" "$WORK/imga.root/etc/alternatives" "$WORK/imga.root/etc/openmpi"
mksquashfs "$WORK/imga.root" "$WORK/imga.sqsh" -noappend -quiet >/dev/null; chmod 0644 "$WORK/imga.sqsh"
MPI_MOUNTS="/usr:/usr:ro,/etc/alternatives:/etc/alternatives:ro,/etc/openmpi:/etc/openmpi:ro,$WORK:$WORK"
mkimage imgb "berth test image B"
# An image with an entrypoint (berth's: the runscript) that announces itself, then runs its arguments.
mkimage imge "berth test image E"
mkdir -p "$WORK/imge.root/.singularity.d"
printf '#!/bin/sh\necho "entrypoint-marker on $(hostname) argc=$# 0=$0 1=$1"\nexec "$@"\n' > "$WORK/imge.root/.singularity.d/runscript"
chmod 0755 "$WORK/imge.root/.singularity.d/runscript"
mksquashfs "$WORK/imge.root" "$WORK/imge.sqsh" -noappend -quiet >/dev/null; chmod 0644 "$WORK/imge.sqsh"
echo "data-file" > "$WORK/datafile"; chmod 0644 "$WORK/datafile"
OUT=$WORK/out ERR=$WORK/err

# Writable layers of named containers that a killed earlier run left in the nodes' /tmp (a
# run that ends cleans up its own; the checks below must see only this run's).
rm -rf "$DIR"/nodes/*/roottmp/berth-"$(id -u "$TEST_USER" 2>/dev/null || echo none)"-*-[0-9a-f]*

# ------------------------------------------------------------------------- (p) what is tested
if [ "$PACKAGED" = 1 ]; then
    check "(p) the cluster's plugstack.conf includes plugstack.conf.d/*.conf, as Debian's does" \
        test "$(cat "$DIR/etc/plugstack.conf")" = "include /etc/slurm/plugstack.conf.d/*.conf"
    line=$(grep -Ev '^[[:space:]]*(#|$)' "$SNIPPET" 2>/dev/null)
    snippet_ok() { # one line: required PLUGIN_FILE, berth= absent or the default
        [ "$(printf '%s\n' "$line" | wc -l)" = 1 ] || return 1
        set -- $line
        [ "${1:-}" = required ] && [ "${2:-}" = "$PLUGIN_FILE" ] || return 1
        shift 2
        for a in "$@"; do case $a in berth=*) [ "$a" = berth=/usr/bin/berth ] || return 1 ;; esac; done
    }
    check "(p) the installed snippet loads the packaged plugin, required, berth=/usr/bin/berth ($line)" snippet_ok
    owned() { dpkg -S "$2" 2>/dev/null | grep -q "^$1: "; }
    check "(p) dpkg -S: berth-slurm owns $PLUGIN_FILE" owned berth-slurm "$PLUGIN_FILE"
    check "(p) dpkg -S: berth-slurm owns $SNIPPET" owned berth-slurm "$SNIPPET"
    check "(p) dpkg -S: berth owns /usr/bin/berth" owned berth /usr/bin/berth
    commit=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    version=$(/usr/bin/berth --version 2>&1)
    check "(p) /usr/bin/berth was built from this checkout ($version; HEAD $commit)" \
        test "${version##* (commit }" = "$commit)"
fi
if [ "$HAVE_RUNTIME" = 1 ]; then
    # The plugin a step's slurmstepd mapped and the berth its holder runs, compared by file
    # identity (a node sees $DIR through its own /tmp): the files this mode means to test.
    as_user srun -N1 --container="$WORK/imga.sqsh" sleep 6 > /dev/null 2>&1 &
    bg=$!
    plugin_ino=$(stat -Lc %i "$PLUGIN_FILE" 2>/dev/null)
    maps="" holders=""
    for _ in $(seq 60); do
        holders=$(pgrep -u "$TEST_USER" -x berth)
        [ -n "$holders" ] && maps=$(for p in $(pgrep -x slurmstepd); do grep spank_berth "/proc/$p/maps"; done 2>/dev/null)
        [ -n "$maps" ] && break
        sleep 0.1
    done
    holder_exes=$(for p in $holders; do
        if [ "/proc/$p/exe" -ef "$NODE_BERTH" ]; then echo "$NODE_BERTH"; else readlink "/proc/$p/exe"; fi
    done | sort -u)
    mapped=$(echo "$maps" | awk 'NF >= 6 { print $5, $6 }' | sort -u | tr '\n' ' ')
    wait "$bg"
    only_plugin() { [ -n "$plugin_ino" ] && [ -n "$maps" ] && ! echo "$maps" | awk 'NF >= 6 { print $5 }' | grep -vqx "$plugin_ino"; }
    check "(p) the step's slurmstepd mapped $PLUGIN_FILE (inode $plugin_ino), no other spank_berth ($mapped)" only_plugin
    check "(p) the step's holder runs $NODE_BERTH (${holder_exes:-none seen})" test "$holder_exes" = "$NODE_BERTH"
fi

# ------------------------------------------------------------------------- (a) plugin loads
as_user srun --help > "$OUT" 2> "$ERR"
for o in container-image container-mounts container-workdir container-env container-mount-home \
         no-container-mount-home container-writable container-readonly container-batch container-name \
         container-save container-remap-root no-container-remap-root container-entrypoint \
         no-container-entrypoint container-entrypoint-log container-mpi container-nv container-rocm; do
    check "(a) srun --help lists --$o" has "--$o" "$OUT"
done
as_user sbatch --help > "$OUT" 2>&1
check "(a) sbatch --help lists --container-image" has "--container-image" "$OUT"
check "(a) no 'conflicting option' error" bash -c "! grep -q -i conflicting '$ERR' '$OUT'"

# berth's AppArmor profile (packaging/apparmor/berth, for nodes that restrict user namespaces
# through AppArmor) parses with AppArmor 4, where its `userns` rule exists (Debian 13's root).
aa_major=$(apparmor_parser --version 2>/dev/null | awk 'NR == 1 { split($NF, v, "."); print v[1] }')
if [ "${aa_major:-0}" -ge 4 ]; then
    check "(a) berth's AppArmor profile parses (apparmor_parser -Q, $(apparmor_parser --version | awk 'NR == 1 { print $NF }'))" \
        apparmor_parser -Q -K -T "$REPO/packaging/apparmor/berth"
else
    skip "(a) berth's AppArmor profile (no AppArmor 4 parser here)"
fi

# ------------------------------------------------------------------------- (b) no container: unchanged
as_user srun -N2 -l hostname > "$OUT" 2> "$ERR"; rc=$?
check "(b) srun -N2 without --container runs natively (rc=$rc)" \
    bash -c "[ $rc = 0 ] && [ \"\$(cut -d' ' -f1 '$OUT' | sort | tr '\n' ' ')\" = '0: 1: ' ] && [ \$(hosts_in '$OUT') = 2 ]"
check "(b) ... and says nothing" bash -c "! [ -s '$ERR' ]"
as_user srun -N1 sh -c 'echo "img=[${BERTH_CONTAINER_IMAGE:-}]"; cat /etc/os-release' > "$OUT" 2>&1
check "(b) no image in the env, host's os-release" bash -c "grep -q 'img=\[\]' '$OUT' && ! grep -q 'berth test image' '$OUT'"

# ------------------------------------------------------------------------- (c) errors: step fails, node stays up
as_user srun -N2 --container=/nonexistent/missing.sqsh true > "$OUT" 2> "$ERR"; rc=$?
check "(c) bad image fails the step (rc=$rc)" test "$rc" != 0
check "(c) ... with the message on srun's stderr" has "berth: error: image /nonexistent/missing.sqsh: No such file" "$ERR"
check "(c) ... from both nodes" bash -c "[ \$(hosts_in '$ERR') = 2 ]"
wait_idle; check "(c) ... nodes idle, not drained" nodes_idle

as_user srun --container=missing-relative.sqsh true > "$OUT" 2> "$ERR"
check "(c) relative image resolved against the submit dir" has "image $WORK/missing-relative.sqsh" "$ERR"

printf '#!/bin/sh\nsrun -N2 true\necho after=$?\n' > "$WORK/bad.sh"; chmod 0755 "$WORK/bad.sh"
as_user sbatch -N2 --wait -o "$WORK/bad.out" --container=/nonexistent/batch.sqsh "$WORK/bad.sh" > "$OUT" 2>&1
check "(c) sbatch: bad image fails the srun inside with the message in the job output" \
    bash -c "grep -q 'berth: error: image /nonexistent/batch.sqsh' '$WORK/bad.out' && grep -q 'after=[1-9]' '$WORK/bad.out'"
wait_idle; check "(c) ... nodes idle, not drained" nodes_idle

as_user srun --container-image="$WORK/imga.sqsh" --container-mounts=/a:relative true > "$OUT" 2> "$ERR"; rc=$?
check "(c) bad --container-mounts refused by srun (rc=$rc)" \
    bash -c "[ $rc != 0 ] && grep -q 'container-mounts=/a:relative' '$ERR' && grep -q 'must be an absolute path' '$ERR'"
as_user srun --container=a.sqsh --container-image=b.sqsh true > "$OUT" 2> "$ERR"; rc=$?
check "(c) --container and --container-image naming different images refused" \
    bash -c "[ $rc != 0 ] && grep -q 'name different images' '$ERR'"
as_user sbatch --container-batch=sometimes --wrap true > "$OUT" 2>&1; rc=$?
check "(c) bad --container-batch refused by sbatch" bash -c "[ $rc != 0 ] && grep -q 'not a batch mode' '$OUT'"
as_user srun -N2 --container-image="$WORK/imga.sqsh" --container-mpi=openmpi true > "$OUT" 2> "$ERR"; rc=$?
check "(c) bad --container-mpi refused by srun with the choices" \
    bash -c "[ $rc != 0 ] && grep -q 'container-mpi=openmpi: not an MPI model (use hybrid, host or none)' '$ERR'"
as_user srun -N1 --container-image="$WORK/imga.sqsh" --container-name=train:later true > "$OUT" 2> "$ERR"; rc=$?
check "(c) bad --container-name flag refused by srun" \
    bash -c "[ $rc != 0 ] && grep -q 'is not a flag (use auto, create, exec or no_exec)' '$ERR'"
# --container-name: bad names are refused by srun itself; a name that no step of the job made,
# without an image, fails the step with the reason (and never runs the command on the host).
as_user srun -N1 --container-image="$WORK/imga.sqsh" --container-name=../x touch "$WORK/ran" > "$OUT" 2> "$ERR"; rc=$?
check "(c) --container-name=../x: an invalid name refused by srun (rc=$rc)" \
    bash -c "[ $rc != 0 ] && grep -q 'container-name=../x: the name may hold only' '$ERR' && ! [ -e '$WORK/ran' ]"
as_user srun -N2 --container-name=train touch "$WORK/ran" > "$OUT" 2> "$ERR"; rc=$?
check "(c) srun --container-name=train without an image, no such container: the reason from both nodes, not run on the host (rc=$rc)" \
    bash -c "[ $rc != 0 ] && [ \$(grep -c 'berth: error: --container-name=train: no container named train exists in this job on this node, and no --container-image' '$ERR') = 2 ] && ! [ -e '$WORK/ran' ]"
as_user srun -N1 --container-image="$WORK/imga.sqsh" --container-name=train --container-readonly true > "$OUT" 2> "$ERR"; rc=$?
check "(c) --container-name with --container-readonly refused by srun (rc=$rc)" \
    bash -c "[ $rc != 0 ] && grep -q 'with --container-readonly: a named container keeps its changes' '$ERR'"
as_user srun -N1 --container-image=/nonexistent/named.sqsh --container-name=train true > "$OUT" 2> "$ERR"; rc=$?
check "(c) --container-name with a bad image: the image's reason (rc=$rc)" \
    bash -c "[ $rc != 0 ] && grep -q 'berth: error: image /nonexistent/named.sqsh: No such file' '$ERR'"
wait_idle; check "(c) ... nodes idle, not drained" nodes_idle
# A named container's record (state directory) and its writable layer ([named] layers_dir:
# the job's TMPDIR, the node's /tmp, or /var/tmp, which the nodes share).
named_left() { ls -d "$DIR"/nodes/*/runberth/*/named/*/* "$DIR"/nodes/*/roottmp/berth-*/named/*/* "$DIR"/nodes/*/roottmp/berth-[0-9]*-* /var/tmp/berth-[0-9]*-* 2>/dev/null; }
for _ in $(seq 40); do [ -z "$(named_left)" ] && break; sleep 0.25; done
check "(c) ... no named container left on the nodes ($(named_left | tr '\n' ' '))" test -z "$(named_left)"

# Another runtime's oci.conf (Slurm's own example for runc): Slurm's OCI support owns
# --container there. berth's own (Slurm 23.02 and later: OCI_CONF) is put back afterwards.
[ -f "$DIR/etc/oci.conf" ] && mv "$DIR/etc/oci.conf" "$WORK/oci.conf.berth"
printf '%s\n' 'RunTimeQuery="runc --rootless=true --root=/run/user/%U/ state %n.%u.%j.%s.%t"' \
    'RunTimeKill="runc --rootless=true --root=/run/user/%U/ kill -a %n.%u.%j.%s.%t"' \
    'RunTimeDelete="runc --rootless=true --root=/run/user/%U/ delete --force %n.%u.%j.%s.%t"' \
    'RunTimeRun="runc --rootless=true --root=/run/user/%U/ run %n.%u.%j.%s.%t -b %b"' > "$DIR/etc/oci.conf"
as_user srun -N1 --container-image="$WORK/imga.sqsh" true > "$OUT" 2> "$ERR"; rc=$?
rm -f "$DIR/etc/oci.conf"
[ -f "$WORK/oci.conf.berth" ] && mv "$WORK/oci.conf.berth" "$DIR/etc/oci.conf"
check "(c) refuses on a node whose oci.conf names another runtime" bash -c "[ $rc != 0 ] && grep -q \"is not berth's\" '$ERR'"

for i in $(seq 20); do as_user srun -N2 --container=/nonexistent/x.sqsh true >/dev/null 2>&1; done
wait_idle; check "(c) 20 failing container steps: nodes idle" nodes_idle
check "(c) ... no processes of $TEST_USER left" no_user_procs

# ------------------------------------------------------------------------- (d) containers
if [ "$HAVE_RUNTIME" != 1 ]; then
    for t in "srun -N2 -n4 --container: image OS on all ranks" "sbatch --container + srun inside" \
             "nested srun --container=OTHER" "pyxis-style options" "Open MPI in the image" "MPICH in the image" \
             "$STEPS container steps leave nothing behind"; do
        skip "(d) $t (no berth runtime)"
    done
else
    as_user srun -N2 -n4 -l --container=imga.sqsh cat /etc/os-release > "$OUT" 2> "$ERR"; rc=$?
    check "(d) srun -N2 -n4 --container=IMG cat /etc/os-release: image OS on all 4 ranks (rc=$rc)" \
        bash -c "[ \$(grep -c 'PRETTY_NAME=\"berth test image A\"' '$OUT') = 4 ] && [ \$(cut -d: -f1 '$OUT' | sort -u | wc -l) = 4 ]"
    [ "$rc" = 0 ] || sed 's/^/    /' "$ERR"

    cat > "$WORK/job.sh" <<'JOB'
#!/bin/sh
srun -l grep PRETTY_NAME /etc/os-release
srun -l --container=imgb.sqsh grep PRETTY_NAME /etc/os-release
JOB
    chmod 0755 "$WORK/job.sh"
    as_user sbatch -N2 -n2 --wait -o "$WORK/job.out" --container=imga.sqsh "$WORK/job.sh" > "$OUT" 2>&1
    check "(d) sbatch --container=IMG: srun inside runs in the image on both nodes" \
        bash -c "[ \$(grep -c 'berth test image A' '$WORK/job.out') = 2 ]"
    check "(d) nested srun --container=OTHER gets OTHER" \
        bash -c "[ \$(grep -c 'berth test image B' '$WORK/job.out') = 2 ]"

    as_user srun -N1 --container-image="$WORK/imga.sqsh" --container-mounts="$WORK:/data" \
        --container-workdir=/data --container-env=FOO=bar sh -c 'pwd; cat datafile; echo "FOO=$FOO"; grep PRETTY /etc/os-release' \
        > "$OUT" 2> "$ERR"
    check "(d) pyxis options: --container-image/-mounts/-workdir/-env" \
        bash -c "grep -qx /data '$OUT' && grep -qx data-file '$OUT' && grep -qx FOO=bar '$OUT' && grep -q 'image A' '$OUT'"

    # The pyxis README's examples, unchanged (a SquashFS path as the image).
    as_user srun --container-image="$WORK/imga.sqsh" grep PRETTY /etc/os-release > "$OUT" 2> "$ERR"; rc=$?
    check "(d) pyxis README: srun --container-image=IMG grep PRETTY /etc/os-release (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \"\$(cat '$OUT')\" = 'PRETTY_NAME=\"berth test image A\"' ]"
    as_user srun --container-image="$WORK/imga.sqsh" --container-mounts=/etc/os-release:/host/os-release \
        grep PRETTY /host/os-release > "$OUT" 2> "$ERR"; rc=$?
    check "(d) pyxis README: --container-mounts=/etc/os-release:/host/os-release shows the host's (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \"\$(cat '$OUT')\" = \"\$(grep PRETTY /etc/os-release)\" ]"
    as_user srun --container-image="$WORK/imga.sqsh" --container-mounts="$WORK:/d:ro+rprivate" \
        sh -c 'cat /d/datafile; touch /d/x || echo refused' > "$OUT" 2>&1; rc=$?
    check "(d) pyxis mount flags: --container-mounts=SRC:DST:ro+rprivate binds read-only" \
        bash -c "grep -qx data-file '$OUT' && grep -qx refused '$OUT' && ! [ -e '$WORK/x' ]"
    # The sbatch example: pyxis runs the script in the image, which is berth's batch=image.
    printf '#!/bin/bash\n#SBATCH --container-image %s\n\ngrep PRETTY /etc/os-release\n' "$WORK/imga.sqsh" > "$WORK/readme.sh"
    as_user sbatch --container-batch=image --wait -o "$WORK/readme.out" "$WORK/readme.sh" > "$OUT" 2>&1; rc=$?
    check "(d) pyxis README: sbatch script with #SBATCH --container-image runs in the image (batch=image) (rc=$rc)" \
        bash -c "[ $rc = 0 ] && grep -qx 'PRETTY_NAME=\"berth test image A\"' '$WORK/readme.out'"

    # --container-remap-root: uid 0 inside on every node, the user outside.
    as_user srun -N2 -l --container-image="$WORK/imga.sqsh" --container-remap-root \
        sh -c 'echo "id=$(id -u):$(id -g)"; touch "$0/remap.$(hostname)"' "$WORK" > "$OUT" 2> "$ERR"; rc=$?
    owners=$(stat -c %U "$WORK"/remap.bnode* 2>/dev/null | sort -u | tr '\n' ' ')
    made=$(ls "$WORK" | grep -c '^remap\.bnode')
    check "(d) --container-remap-root: uid/gid 0 inside on both nodes, files owned by the user outside (rc=$rc, $made: $owners)" \
        bash -c "[ $rc = 0 ] && [ \$(grep -c 'id=0:0' '$OUT') = 2 ] && [ $made = 2 ] && [ '$owners' = '$TEST_USER ' ]"
    [ "$rc" = 0 ] || sed 's/^/    /' "$ERR"
    as_user srun -N1 --container-image="$WORK/imga.sqsh" --no-container-remap-root --no-container-entrypoint \
        --container-entrypoint-log id -u > "$OUT" 2> "$ERR"; rc=$?
    check "(d) --no-container-remap-root --no-container-entrypoint --container-entrypoint-log: the user's own uid" \
        bash -c "[ $rc = 0 ] && [ \"\$(cat '$OUT')\" = $(id -u "$TEST_USER") ]"

    # --container-entrypoint: the image's runscript runs with the command as its arguments.
    as_user srun -N2 --container-image="$WORK/imge.sqsh" --container-entrypoint echo hi > "$OUT" 2> "$ERR"; rc=$?
    check "(d) srun -N2 --container-entrypoint echo hi: the runscript (\$0 the runscript, \$1 the program), then hi, on both nodes (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \$(grep -c '^entrypoint-marker on bnode[0-9]* argc=2 0=/.singularity.d/runscript 1=echo\$' '$OUT') = 2 ] && [ \$(hosts_in '$OUT') = 2 ] && [ \$(grep -cx hi '$OUT') = 2 ] && [ \$(wc -l < '$OUT') = 4 ]"
    [ "$rc" = 0 ] || sed 's/^/    /' "$ERR"
    # Two tasks on one node, each through the launcher: the program starts with the descriptors
    # it has when the runscript runs it without berth's launcher (Slurm's own, the image shell's
    # copy of the runscript: busybox sh leaves it open), and none open on a launcher.
    as_user srun -N1 -n2 -l --container-image="$WORK/imge.sqsh" --container-entrypoint ls -l /proc/self/fd > "$OUT" 2> "$ERR"; rc=$?
    as_user srun -N1 -n2 -l --container-image="$WORK/imge.sqsh" sh /.singularity.d/runscript ls -l /proc/self/fd > "$OUT.base" 2>&1
    fds() { grep -E "^ *$1: [lrwx-]{10} " "$2" | awk '{print $10}' | sort -n | tr '\n' ' '; }
    check "(d) --container-entrypoint: each task's program has the descriptors of the runscript run directly, none on a launcher (rc=$rc; task 0: $(fds 0 "$OUT"); task 1: $(fds 1 "$OUT"); directly: $(fds 0 "$OUT.base"))" \
        bash -c "[ $rc = 0 ] && [ \$(grep -c 'entrypoint-marker' '$OUT') = 2 ] && [ -n '$(fds 0 "$OUT.base")' ] && [ '$(fds 0 "$OUT")' = '$(fds 0 "$OUT.base")' ] && [ '$(fds 1 "$OUT")' = '$(fds 0 "$OUT.base")' ] && ! grep -Eq 'memfd|entrypoint\$|/.berth' '$OUT'"
    [ "$rc" = 0 ] || sed 's/^/    /' "$OUT" "$ERR"
    as_user srun -N1 --container-image="$WORK/imge.sqsh" --container-entrypoint \
        cat /proc/self/cmdline /proc/self/environ > "$OUT" 2> "$ERR"; rc=$?
    tr '\0' '\n' < "$OUT" > "$OUT.lines"
    check "(d) --container-entrypoint: the program's argv is the command as given, the launcher's variable is gone (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \"\$(sed -n 2,4p '$OUT.lines' | tr '\n' ' ')\" = 'cat /proc/self/cmdline /proc/self/environ ' ] && grep -q '^PATH=' '$OUT.lines' && ! grep -q BERTH_ENTRYPOINT '$OUT.lines'"
    [ "$rc" = 0 ] || sed 's/^/    /' "$OUT.lines" "$ERR"
    as_user srun -N2 --container-image="$WORK/imge.sqsh" echo hi > "$OUT" 2> "$ERR"; rc=$?
    check "(d) srun -N2 without --container-entrypoint: only hi, no runscript (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \"\$(sort -u '$OUT')\" = hi ] && [ \$(wc -l < '$OUT') = 2 ]"
    as_user srun -N2 --container-image="$WORK/imge.sqsh" --container-entrypoint --no-container-entrypoint echo hi > "$OUT" 2> "$ERR"; rc=$?
    check "(d) --no-container-entrypoint after --container-entrypoint: only hi (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \"\$(sort -u '$OUT')\" = hi ]"
    as_user srun -N1 --container-image="$WORK/imge.sqsh" --container-entrypoint \
        sh -c 'echo "args:$0|$1|$2"' "a b" "it's" > "$OUT" 2> "$ERR"; rc=$?
    check "(d) --container-entrypoint keeps the command's arguments as they were (rc=$rc)" \
        bash -c "[ $rc = 0 ] && grep -qx 'entrypoint-marker on bnode[0-9]* argc=5 0=/.singularity.d/runscript 1=sh' '$OUT' && grep -qxF \"args:a b|it's|\" '$OUT'"
    as_user srun -N2 --container-image="$WORK/imga.sqsh" --container-entrypoint touch "$WORK/ran" > "$OUT" 2> "$ERR"; rc=$?
    check "(d) --container-entrypoint with an image without a runscript: the reason from both nodes, nothing ran (rc=$rc)" \
        bash -c "[ $rc != 0 ] && [ \$(grep -c 'berth: error: --container-entrypoint: the image has no runscript (/.singularity.d/runscript)' '$ERR') = 2 ] && ! [ -e '$WORK/ran' ]"
    printf '#!/bin/sh\n#SBATCH --container-image %s\necho "script args:$*"\ngrep PRETTY /etc/os-release\n' "$WORK/imge.sqsh" > "$WORK/entry.sh"
    as_user sbatch --container-batch=image --container-entrypoint --wait -o "$WORK/entry.out" "$WORK/entry.sh" x1 > "$OUT" 2>&1; rc=$?
    check "(d) sbatch --container-batch=image --container-entrypoint: the runscript runs the script in the image (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \"\$(head -1 '$WORK/entry.out')\" = \"\$(grep -x 'entrypoint-marker on bnode[0-9]* argc=2 0=/.singularity.d/runscript 1=/.*' '$WORK/entry.out')\" ] && grep -qx 'script args:x1' '$WORK/entry.out' && grep -q 'image E' '$WORK/entry.out'"
    wait_idle; check "(d) ... nodes idle, not drained" nodes_idle

    # --container-writable: a throwaway writable layer; --container-readonly (default): refused writes.
    as_user srun -N2 --container-image="$WORK/imga.sqsh" --container-writable sh -c 'touch /new && echo wrote' > "$OUT" 2> "$ERR"; rc=$?
    check "(d) --container-writable: the image's root is writable on both nodes (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \$(grep -cx wrote '$OUT') = 2 ]"
    as_user srun -N1 --container-image="$WORK/imga.sqsh" --container-readonly sh -c 'touch /new && echo wrote' > "$OUT" 2>&1; rc=$?
    check "(d) --container-readonly: writing to the image fails (rc=$rc)" \
        bash -c "[ $rc != 0 ] && grep -q 'Read-only file system' '$OUT'"

    # --container-mpi: the step's MPI model; none runs without any injection.
    as_user srun -N2 --container-image="$WORK/imga.sqsh" --container-mpi=none grep PRETTY /etc/os-release > "$OUT" 2> "$ERR"; rc=$?
    check "(d) --container-mpi=none: the step runs in the image (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \$(grep -c 'image A' '$OUT') = 2 ]"
    as_user srun --mpi=pmix -N2 -n4 --container=imga.sqsh --container-mpi=none --container-mounts="$MPI_MOUNTS" \
        "$WORK/ring_ompi" > "$OUT" 2> "$ERR"
    check "(d) --container-mpi=none: Open MPI -N2 -n4 from the image's own libraries: ring and allreduce" \
        bash -c "[ \$(grep -c 'ring rank [0-3]/4 host bnode[1-3] sum 6' '$OUT') = 4 ]"
    # Asked for explicitly, the model is required, as with `berth exec --mpi=hybrid`: this
    # cluster has no fabric libraries, so the step fails with berth's reason.
    as_user srun -N1 --container-image="$WORK/imga.sqsh" --container-mpi=hybrid true > "$OUT" 2> "$ERR"; rc=$?
    check "(d) --container-mpi=hybrid reaches the holder: required, fails with berth's reason here (rc=$rc)" \
        bash -c "[ $rc != 0 ] && grep -q 'berth: error: host library injection' '$ERR'"
    [ "$rc" != 0 ] || sed 's/^/    /' "$ERR"
    as_user srun -N2 --container-image="$WORK/imga.sqsh" --container-nv true > "$OUT" 2> "$ERR"; rc=$?
    check "(d) --container-nv on nodes without NVIDIA GPUs: the step fails with the reason from both nodes (rc=$rc)" \
        bash -c "[ $rc != 0 ] && [ \$(grep -c 'berth: error: --nv: no NVIDIA driver on this host' '$ERR') = 2 ]"
    wait_idle; check "(d) ... nodes idle, not drained" nodes_idle
    as_user srun -N2 --container-image="$WORK/imga.sqsh" --container-rocm true > "$OUT" 2> "$ERR"; rc=$?
    check "(d) --container-rocm on nodes without AMD GPUs: the step fails with the reason from both nodes (rc=$rc)" \
        bash -c "[ $rc != 0 ] && [ \$(grep -c 'berth: error: --rocm: no AMD GPU driver on this host' '$ERR') = 2 ]"
    wait_idle; check "(d) ... nodes idle, not drained" nodes_idle

    # Named containers (pyxis' --container-name): kept for the job's later steps on each node,
    # with what they wrote; removed at the end of the job (the job epilog, as the user).
    cat > "$WORK/named.sh" <<NAMED
#!/bin/sh
srun -N2 --container-image=$WORK/imga.sqsh --container-name=n1 sh -c 'echo x > /state; hostname > /made-on'
echo "rc1=\$?"
srun -N2 --container-name=n1 sh -c 'echo "s2 \$(cat /state) \$(cat /made-on) \$(hostname)"'
echo "rc2=\$?"
srun -N2 --container-image=$WORK/imga.sqsh --container-name=n1:no_exec sh -c 'echo "s3 \$(cat /state)"'
srun -N2 --container-image=$WORK/imga.sqsh sh -c 'cat /state 2>/dev/null || echo "unnamed: no state"'
srun -N1 -w \$SLURMD_NODENAME --container-image=$WORK/imga.sqsh --container-name=n2:create sh -c 'test -e /state || echo "n2: fresh"'
srun -N1 --container-name=n1:create --container-image=$WORK/imga.sqsh true; echo "create-existing=\$?"
srun -N1 --container-name=n1:exec true; echo "exec-stopped=\$?"
srun -N1 --container-name=n9:exec --container-image=$WORK/imga.sqsh true; echo "exec-missing=\$?"
srun -N1 --container-name=n1 --container-image=$WORK/imgb.sqsh true; echo "other-image=\$?"
srun -N1 -w \$SLURMD_NODENAME --container-name=n1 sleep 10 &
sleep 2
srun -N1 -w \$SLURMD_NODENAME --overlap --container-name=n1 true; echo "concurrent=\$?"
wait
srun -N1 -w \$SLURMD_NODENAME $NODE_BERTH list
srun -N1 --container-name=n1 --container-save=$WORK/named-saved.sqsh true; echo "saved=\$?"
ls -d $DIR/nodes/*/runberth/*/named/\$SLURM_JOB_ID/* | sed 's|.*/nodes/\([^/]*\)/.*/named/[0-9]*/|dir \1 |'
NAMED
    chmod 0755 "$WORK/named.sh"
    job=$(as_user sbatch -N2 --parsable --wait -o "$WORK/named.out" "$WORK/named.sh" 2> "$ERR"); rc=$?
    job=${job%%;*}
    N=$WORK/named.out
    check "(n) step 1 writes /state in the named container on both nodes (rc=$rc)" has '^rc1=0$' "$N"
    check "(n) step 2, --container-name alone: both nodes see what step 1 wrote there" \
        bash -c "grep -q '^rc2=0$' '$N' && [ \$(grep -c '^s2 x bnode[0-9]' '$N') = 2 ] && [ \$(grep '^s2 ' '$N' | awk '\$3 != \$4' | wc -l) = 0 ]"
    check "(n) :no_exec with the same image runs in it too" bash -c "[ \$(grep -c '^s3 x$' '$N') = 2 ]"
    check "(n) an unnamed step of the job does not see it" bash -c "[ \$(grep -c '^unnamed: no state$' '$N') = 2 ]"
    check "(n) :create of a new name makes a fresh container" grep -qx 'n2: fresh' "$N"
    check "(n) :create of an existing name fails with the reason" \
        bash -c "grep -q '^create-existing=[1-9]' '$N' && grep -q 'berth: error: --container-name=n1:create: a container named n1 already exists in this job' '$N'"
    check "(n) :exec of a container no step runs fails with the reason" \
        bash -c "grep -q '^exec-stopped=[1-9]' '$N' && grep -q 'berth: error: --container-name=n1:exec: the container n1 is not running' '$N'"
    check "(n) :exec of a missing name fails with the reason" \
        bash -c "grep -q '^exec-missing=[1-9]' '$N' && grep -q 'berth: error: --container-name=n9:exec: no container named n9 exists' '$N'"
    check "(n) the name with another image is refused with both images named" \
        bash -c "grep -q '^other-image=[1-9]' '$N' && grep -q 'made from image $WORK/imga.sqsh .*asks for $WORK/imgb.sqsh' '$N'"
    check "(n) a second step while one runs in it joins it (pyxis' auto)" grep -q '^concurrent=0$' "$N"
    check "(n) berth list on the node shows the job's named containers and their image" \
        bash -c "grep -Eq '^n1 +$job +[0-9]+[sm].* +$WORK/imga.sqsh\$' '$N' && grep -Eq '^n2 +$job ' '$N'"
    check "(n) during the job: n1 on both nodes, n2 on one, the refused names left nothing" \
        bash -c "[ \$(grep -c '^dir bnode[0-9] n1$' '$N') = 2 ] && [ \$(grep -c '^dir bnode[0-9] n2$' '$N') = 1 ] && ! grep -q '^dir .* n9$' '$N'"
    as_user srun -N1 --container-image="$WORK/named-saved.sqsh" cat /state > "$OUT" 2> "$ERR"
    check "(n) --container-save of a named container: the saved file holds what step 1 wrote" \
        bash -c "grep -q '^saved=0$' '$N' && [ \"\$(cat '$OUT')\" = x ]"
    [ "$rc" = 0 ] || { sed 's/^/    /' "$N" "$ERR"; }
    for _ in $(seq 40); do [ -z "$(named_left)" ] && break; sleep 0.25; done
    check "(n) after the job: nothing of its named containers left on any node ($(named_left | tr '\n' ' '))" \
        test -z "$(named_left)"
    wait_idle; check "(n) ... nodes idle" nodes_idle

    # Joining a running named container (pyxis' reuse of a running container's namespaces): while
    # step A runs in container c on both nodes, :exec and the default auto run their tasks in
    # A's container on each node (same mount namespace, same files); :no_exec is refused with the
    # reason; A's end ends the tasks still in it, with the reason; :exec after A fails with the
    # reason; the files stay for later steps; nothing is left after the job.
    rm -f "$WORK"/xa.* "$WORK"/xe.* "$WORK/xstop"
    cat > "$WORK/exec.sh" <<EXEC
#!/bin/sh
srun -N2 --overlap --container-name=c --container-image=$WORK/imga.sqsh sh -c 'echo x > /state; echo "A \$(hostname) \$(readlink /proc/self/ns/mnt)"; touch $WORK/xa.\$(hostname); while ! [ -e $WORK/xstop ]; do sleep 0.2; done' &
for i in \$(seq 300); do [ \$(ls $WORK/xa.* 2>/dev/null | wc -l) = 2 ] && break; sleep 0.2; done
srun -N2 --overlap --container-name=c:exec --container-save=$WORK/joined-saved.sqsh sh -c 'echo "B \$(hostname) \$(cat /state) \$(readlink /proc/self/ns/mnt)"; echo y > /from-b'; echo "exec-running=\$?"
srun -N2 --overlap --container-name=c --container-mounts=$WORK:/data sh -c 'echo "C \$(hostname) \$(cat /from-b) \$(readlink /proc/self/ns/mnt)"; ls /data/datafile >/dev/null 2>&1 || echo "no-data \$(hostname)"'; echo "auto-running=\$?"
srun -N1 --overlap --container-name=c:no_exec --container-image=$WORK/imga.sqsh true; echo "no_exec-running=\$?"
srun -N2 --overlap --container-name=c:exec sh -c 'echo "E \$(hostname) in"; touch $WORK/xe.\$(hostname); sleep 60; echo "E survived"' &
e=\$!
for i in \$(seq 300); do [ \$(ls $WORK/xe.* 2>/dev/null | wc -l) = 2 ] && break; sleep 0.2; done
t0=\$(date +%s%N); touch $WORK/xstop
wait \$e; echo "joined-at-end=\$? after \$(( (\$(date +%s%N) - t0) / 1000000 )) ms"
wait
srun -N2 --container-name=c:exec true; echo "exec-ended=\$?"
srun -N2 --container-name=c sh -c 'echo "D \$(hostname) \$(cat /state /from-b | tr "\n" " ")"'
EXEC
    chmod 0755 "$WORK/exec.sh"
    job=$(T=180 as_user sbatch -N2 --parsable --wait -o "$WORK/exec.out" "$WORK/exec.sh" 2> "$ERR"); rc=$?
    job=${job%%;*}
    X=$WORK/exec.out
    # Each joiner's line names its host and mount namespace: the same as A's on that host.
    same_ns() { awk -v t="$1" '$1 == "A" { ns[$2] = $3; na++ } $1 == t { n++; if (ns[$2] == "" || ns[$2] != $NF) bad++ }
                 END { exit !(n == 2 && bad == 0 && na == 2) }' "$X"; }
    export -f same_ns; export X
    check "(x) srun --container-name=c:exec while step A runs there: joins A's container on both nodes, sees /state, A's mount namespace (rc=$rc)" \
        bash -c "grep -q '^exec-running=0$' '$X' && [ \$(grep -c '^B bnode[0-9]* x mnt:' '$X') = 2 ] && same_ns B"
    unsquashfs -l "$WORK/joined-saved.sqsh" > "$WORK/joined-saved.list" 2>&1
    check "(x) ... its --container-save saves the joined container: A's /state and its own /from-b" \
        bash -c "grep -qx 'squashfs-root/state' '$WORK/joined-saved.list' && grep -qx 'squashfs-root/from-b' '$WORK/joined-saved.list'"
    check "(x) the default auto joins too, sees what the :exec step wrote, A's mount namespace" \
        bash -c "grep -q '^auto-running=0$' '$X' && [ \$(grep -c '^C bnode[0-9]* y mnt:' '$X') = 2 ] && same_ns C"
    check "(x) ... its --container-mounts is ignored, with pyxis' reason, once per node" \
        bash -c "[ \$(grep -c '^no-data bnode[0-9]*$' '$X') = 2 ] && [ \$(grep -c 'berth: --container-name=c: joined the running container of step [0-9]*\.0 (on bnode[0-9]*); ignoring --container-mounts' '$X') = 2 ]"
    check "(x) :no_exec while A runs: refused with the reason" \
        bash -c "grep -q '^no_exec-running=[1-9]' '$X' && grep -q 'berth: error: --container-name=c:no_exec: the container c is running in this job on this node (step [0-9]*\.0), and :no_exec does not join a running container; running it a second time would mount its writable layer twice' '$X'"
    check "(x) A ends while a joined step runs: that step's tasks are ended, with the reason, and A's end is not held up" \
        bash -c "[ \$(grep -c '^E bnode[0-9]* in$' '$X') = 2 ] && grep -Eq '^joined-at-end=[1-9][0-9]* after [0-9]{1,4} ms$' '$X' && ! grep -q 'E survived' '$X' && [ \$(grep -c 'berth: --container-name=c: step [0-9]*\.0, which runs this container, ended on bnode[0-9]*; the container ends with the step that runs it' '$X') = 2 ]"
    check "(x) :exec after A ended: fails with the reason" \
        bash -c "grep -q '^exec-ended=[1-9]' '$X' && grep -q 'berth: error: --container-name=c:exec: the container c is not running in this job on this node' '$X'"
    check "(x) ... the container's files stay for the job's later steps (both nodes: A's and the joiner's writes)" \
        bash -c "[ \$(grep -c '^D bnode[0-9]* x y $' '$X') = 2 ]"
    echo "note: a joined step ended by the end of the container's step: $(grep -o 'after [0-9]* ms' "$X" | tr '\n' ' ')(from A's tasks' end to the joined srun's return)"
    [ "$rc" = 0 ] && grep -q '^exec-running=0$' "$X" || sed 's/^/    /' "$X" "$ERR"
    for _ in $(seq 40); do [ -z "$(named_left)" ] && break; sleep 0.25; done
    left=$(named_left | tr '\n' ' ')
    check "(x) after the job: no holder record, no named container left on any node ($left)" \
        bash -c "[ -z '$left' ] && ! ls $DIR/nodes/*/runberth/*/holders/*.json $DIR/nodes/*/roottmp/berth-*/holders/*.json 2>/dev/null | grep -q ."
    check "(x) ... no holder or FUSE process of $TEST_USER left" no_user_procs
    wait_idle; check "(x) ... nodes idle, not drained" nodes_idle

    # --container-save (pyxis): at the end of the step, the container's root (the image with the
    # step's changes, without what is mounted in it) as a SquashFS file, written by the user
    # from the step's first node, whole or not at all.
    as_user srun -N2 --container-image="$WORK/imga.sqsh" --container-writable --container-save=saved.sqsh \
        sh -c 'echo kept > /saved-marker; hostname > /saved-on' > "$OUT" 2> "$ERR"; rc=$?
    check "(s) --container-save=REL: the file in the submit dir, the user's, no temporary file left (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ -f '$WORK/saved.sqsh' ] && [ \$(stat -c %U '$WORK/saved.sqsh') = $TEST_USER ] && ! ls -a '$WORK' | grep -q berth-save"
    [ "$rc" = 0 ] || sed 's/^/    /' "$ERR"
    as_user srun -N1 --container-image="$WORK/saved.sqsh" sh -c 'cat /saved-marker /saved-on; grep PRETTY /etc/os-release; ls /proc/self >/dev/null && echo proc-mounted' \
        > "$OUT" 2> "$ERR"; rc=$?
    check "(s) ... it runs: the step's changes over image A, from one node, /proc mounted anew (rc=$rc)" \
        bash -c "[ $rc = 0 ] && grep -qx kept '$OUT' && [ \$(grep -c '^bnode' '$OUT') = 1 ] && grep -q 'image A' '$OUT' && grep -qx proc-mounted '$OUT'"
    [ "$rc" = 0 ] || sed 's/^/    /' "$OUT" "$ERR"
    unsquashfs -l "$WORK/saved.sqsh" > "$WORK/saved.list" 2>&1
    check "(s) ... the host's binds are not in it (no $WORK, no /proc contents)" \
        bash -c "! grep -q 'squashfs-root$WORK' '$WORK/saved.list' && ! grep -q 'squashfs-root/proc/' '$WORK/saved.list'"
    as_user srun -N1 --container-image="$WORK/imga.sqsh" --container-save=/etc/berth-save-test.sqsh true > "$OUT" 2> "$ERR"; rc=$?
    check "(s) --container-save into a directory the user cannot write (/etc): nothing written there, the reason on srun's stderr" \
        bash -c "! ls -a /etc | grep -q berth-save && grep -q 'error: berth: --container-save=/etc/berth-save-test.sqsh: .*Permission denied' '$ERR'"
    wait_idle; check "(s) ... nodes idle" nodes_idle

    # A hostile user swaps the job's named-container directory for a link to root's files before
    # the job ends: the epilog removes as the user, so root's files and their modes stay.
    install -d -m 0755 "$WORK/rootonly"; echo root > "$WORK/rootonly/precious"; chmod 0644 "$WORK/rootonly/precious"
    cat > "$WORK/hostile.sh" <<HOSTILE
#!/bin/sh
srun -N1 -w \$SLURMD_NODENAME --container-image=$WORK/imga.sqsh --container-name=h true
d=/run/berth/\$(id -u)/named/\$SLURM_JOB_ID
chmod -R u+rwx "\$d"; rm -rf "\$d" && ln -s $WORK/rootonly "\$d" && echo swapped
HOSTILE
    chmod 0755 "$WORK/hostile.sh"
    as_user sbatch -N1 --wait -o "$WORK/hostile.out" "$WORK/hostile.sh" > "$OUT" 2>&1
    for _ in $(seq 40); do [ -z "$(named_left)" ] && ! ls "$DIR"/nodes/*/runberth/*/named/[0-9]* >/dev/null 2>&1 && break; sleep 0.25; done
    check "(n) hostile: the job's directory swapped for a link to root's files: they stay, with their modes, and the link goes" \
        bash -c "grep -qx swapped '$WORK/hostile.out' && [ \"\$(stat -c '%U %a' '$WORK/rootonly' '$WORK/rootonly/precious' | tr '\n' ' ')\" = 'root 755 root 644 ' ] \
                 && ! ls '$DIR'/nodes/*/runberth/*/named/[0-9]* >/dev/null 2>&1"
    [ -n "$(grep -x swapped "$WORK/hostile.out")" ] || sed 's/^/    /' "$WORK/hostile.out"
    # The user removed the record that names the container's writable layer: the layer (the
    # user's own directory in the node's /tmp) stays for the node's tmp cleaner, here this one.
    rm -rf "$DIR"/nodes/*/roottmp/berth-"$(id -u "$TEST_USER")"-h-*

    # container_scope=global (plugstack.conf argument, read by srun and by each step's
    # slurmstepd when it starts: no restart): a name outlives its job on the node and is shared
    # by the user's jobs there, until the user removes it with `berth rm`.
    if [ "$PACKAGED" != 1 ]; then
        cp "$DIR/etc/plugstack.conf" "$WORK/plugstack.conf.saved"
        sed -i '1s/$/ container_scope=global/' "$DIR/etc/plugstack.conf"
        GDIR=$DIR/nodes/bnode1/runberth/$(id -u "$TEST_USER")/named/global/g
        printf '#!/bin/sh\nsrun --container-image=%s --container-name=g sh -c "echo kept-by-$SLURM_JOB_ID > /gstate"\necho "rc=$?"\n' \
            "$WORK/imga.sqsh" > "$WORK/g1.sh"
        cat > "$WORK/g2.sh" <<GLOBAL
#!/bin/sh
srun --container-name=g cat /gstate; echo "read=\$?"
$NODE_BERTH list | grep '^g '
srun --container-name=g sleep 6 &
sleep 1.5
$NODE_BERTH rm g; echo "rm-busy=\$?"
wait
$NODE_BERTH rm g; echo "rm=\$?"
srun --container-name=g true; echo "after-rm=\$?"
GLOBAL
        chmod 0755 "$WORK/g1.sh" "$WORK/g2.sh"
        g1=$(as_user sbatch -N1 -w bnode1 --parsable --wait -o "$WORK/g1.out" "$WORK/g1.sh" 2>&1); g1=${g1%%;*}
        for _ in $(seq 20); do nodes_idle && break; sleep 0.25; done
        GLAYER=$(head -n 1 "$GDIR/layer" 2>/dev/null)
        kept=$( [ -n "$GLAYER" ] && [ -d "$GLAYER/upper" ] && case $GLAYER in /run/*) false ;; esac && echo yes || echo no)
        as_user sbatch -N1 -w bnode1 --wait -o "$WORK/g2.out" "$WORK/g2.sh" > "$OUT" 2>&1
        cp "$WORK/plugstack.conf.saved" "$DIR/etc/plugstack.conf"
        G=$WORK/g2.out
        check "(g) container_scope=global: job $g1 writes in --container-name=g; its layer stays after the job, outside /run ($kept: $GLAYER)" \
            bash -c "grep -qx rc=0 '$WORK/g1.out' && [ $kept = yes ]"
        check "(g) ... another job sees what job $g1 wrote there" \
            bash -c "grep -qx 'kept-by-$g1' '$G' && grep -qx read=0 '$G'"
        check "(g) ... berth list on the node shows it as job global with its image" \
            bash -c "grep -Eq '^g +global +[0-9]+[smh].* +$WORK/imga.sqsh\$' '$G'"
        check "(g) ... berth rm g while a step runs in it is refused with the reason" \
            bash -c "grep -q '^rm-busy=[1-9]' '$G' && grep -q 'berth: rm g: a job step is running in it' '$G'"
        check "(g) ... berth rm g once no step has it removes it: a later job's step finds no g ($(ls -d "$GDIR" 2>/dev/null))" \
            bash -c "grep -qx rm=0 '$G' && grep -q '^after-rm=[1-9]' '$G' && grep -q 'no container named g exists on this node' '$G' && ! [ -e '$GDIR' ] && ! [ -e '${GLAYER:-/nonexistent}' ]"
        grep -qx rm=0 "$G" || { sed 's/^/    /' "$WORK/g1.out" "$G"; rm -rf "$GDIR" ${GLAYER:+"$GLAYER"}; }
        wait_idle
    fi

    # berth list, on the node, while a step's container is held there.
    cat > "$WORK/list.sh" <<LIST
#!/bin/sh
srun -N1 --container-image=$WORK/imga.sqsh sleep 6 &
sleep 3
srun -N1 --overlap $NODE_BERTH list
srun -N1 --overlap $NODE_BERTH list --json
wait
LIST
    chmod 0755 "$WORK/list.sh"
    as_user sbatch -N1 -w bnode1 --wait -o "$WORK/list.out" "$WORK/list.sh" > "$OUT" 2>&1; rc=$?
    check "(d) berth list on the node: the step's container with its image and one member, and --json (rc=$rc)" \
        bash -c "grep -Eq '^slurm-[0-9]+\.0 +[0-9]+ +[0-9]+s +1  $WORK/imga.sqsh\$' '$WORK/list.out' \
                 && grep -q '\"members\": 1' '$WORK/list.out' && grep -q '\"image\": \"$WORK/imga.sqsh\"' '$WORK/list.out'"
    [ "$rc" = 0 ] || sed 's/^/    /' "$WORK/list.out"

    # Tasks start where srun was started, also outside /tmp and $HOME: that directory is bound
    # into the image on every node, as `berth exec` binds its current directory.
    CWD_DIR=/var/tmp/berth-slurm-cwd.$$ IMGA=$WORK/imga.sqsh
    install -d -o "$TEST_USER" -m 0755 "$CWD_DIR"; echo cwd-file > "$CWD_DIR/marker"
    WORK=$CWD_DIR as_user srun -N2 -n2 --container="$IMGA" sh -c 'pwd; cat marker' > "$OUT" 2> "$ERR"
    check "(d) tasks start in srun's directory (outside /tmp and \$HOME), bound into the image on both nodes" \
        bash -c "[ \$(grep -cx '$CWD_DIR' '$OUT') = 2 ] && [ \$(grep -cx cwd-file '$OUT') = 2 ]"
    rm -rf "$CWD_DIR"

    as_user srun --mpi=pmix -N2 -n4 --container=imga.sqsh --container-mounts="$MPI_MOUNTS" "$WORK/ring_ompi" > "$OUT" 2> "$ERR"
    check "(d) Open MPI (--mpi=pmix) -N2 -n4 in the image: ring and allreduce" \
        bash -c "[ \$(grep -c 'ring rank [0-3]/4 host bnode[1-3] sum 6' '$OUT') = 4 ] && grep -q 'ring rank 0/4 .* token 4' '$OUT'"
    # MPICH runs on one node here. Debian 12's MPICH 4.0.2 (ch4:ucx) deadlocks in MPI_Finalize
    # across nodes over UCX 1.13's TCP transport, without Slurm or berth too: every rank closes
    # its endpoints, waits for the closes, then blocks in a PMI barrier without progressing UCX;
    # a rank whose close of a TCP endpoint needs its peer's progress then waits forever
    # (pmodels/mpich#6596 removed that barrier later; openucx/ucx#8738); mpich-tcp-finalize.sh
    # reproduces it. The test cluster's only link between nodes is TCP. Across nodes, Open MPI
    # is tested below.
    T=60 as_user srun --mpi=pmi2 -N1 -n2 --container=imga.sqsh --container-mounts="$MPI_MOUNTS" \
        "$WORK/ring_mpich" allreduce > "$OUT" 2> "$ERR"; rc=$?
    check "(d) MPICH (--mpi=pmi2) -N1 -n2 in the image: allreduce, step ends (rc=$rc)" \
        bash -c "[ $rc = 0 ] && [ \$(grep -c 'ring rank [01]/2 host bnode[123] sum 1' '$OUT') = 2 ]"
    [ "$rc" = 0 ] || tail -n 12 "$OUT" "$ERR" | sed 's/^/    /'

    # Ranks on one node share one container: one mount namespace per node, not per rank.
    as_user srun -N2 -n4 --container=imga.sqsh sh -c 'echo "$(hostname) $(ls -l /proc/self/ns/mnt | sed "s/.*-> //")"' > "$OUT" 2> "$ERR"
    check "(d) ranks on one node share the container (one mount namespace per node)" \
        bash -c "[ \$(wc -l < '$OUT') = 4 ] && [ \$(sort -u '$OUT' | wc -l) = 2 ] && [ \$(cut -d' ' -f1 '$OUT' | sort -u | wc -l) = 2 ]"

    # Images built from defs/ by `berth build` (tests/build-mpi-images.sh), MPI from the image.
    # One attempt, judged on what the ranks printed and on the step's exit status; a failure
    # shows the end of the step's output.
    mpi_step() { # JUDGE SRUN-ARGS...
        local judge=$1; shift
        as_user srun "$@" > "$OUT" 2> "$ERR"; rc=$?
        [ "$rc" = 0 ] && bash -c "$judge" && return 0
        echo "note: srun $* failed (rc=$rc); its output ends:"
        tail -n 12 "$OUT" "$ERR" | sed 's/^/    /'
        wait_idle
        return 1
    }
    if [ -n "${BERTH_TEST_OPENMPI_IMAGE:-}" ]; then
        check "(d) defs/openmpi.def image: srun --mpi=pmix -N2 -n4 berth-mpitest (rank/size/host, ring, allreduce)" \
            mpi_step "[ \$(grep -c 'rank [0-3]/4 on bnode[1-3]' '$OUT') = 4 ] && [ \$(hosts_in '$OUT') = 2 ] && grep -q 'allreduce: sum over 4 ranks = 10: ok' '$OUT'" \
            --mpi=pmix -N2 -n4 --container="$BERTH_TEST_OPENMPI_IMAGE" berth-mpitest -q
        # Intra-node shared memory only (no TCP allowed): works only if the two ranks share
        # the container's namespaces (vader's shared memory and CMA). The value holds a comma,
        # so it is exported and named (pyxis style), not given as NAME=VALUE.
        as_user env OMPI_MCA_btl=self,vader srun --mpi=pmix -N1 -n2 --container="$BERTH_TEST_OPENMPI_IMAGE" \
            --container-env=OMPI_MCA_btl berth-mpitest -q > "$OUT" 2> "$ERR"
        check "(d) ... two ranks on one node over shared memory alone (btl self,vader)" \
            bash -c "grep -q 'allreduce: sum over 2 ranks = 3: ok' '$OUT' && grep -q 'ping-pong latency' '$OUT'"
    else
        skip "(d) defs/openmpi.def image (BERTH_TEST_OPENMPI_IMAGE not set)"
    fi
    if [ -n "${BERTH_TEST_MPICH_IMAGE:-}" ]; then
        # One node, for the MPI_Finalize deadlock of Debian 12's MPICH over TCP described above.
        T=60 check "(d) defs/mpich.def image: srun --mpi=pmi2 -N1 -n2 berth-mpitest (rank/size/host, ring, allreduce, ping-pong)" \
            mpi_step "[ \$(grep -c 'rank [01]/2 on bnode[123]' '$OUT') = 2 ] && grep -q 'allreduce: sum over 2 ranks = 3: ok' '$OUT' && grep -q 'all checks passed' '$OUT'" \
            --mpi=pmi2 -N1 -n2 --container="$BERTH_TEST_MPICH_IMAGE" berth-mpitest -q
        wait_idle
    else
        skip "(d) defs/mpich.def image (BERTH_TEST_MPICH_IMAGE not set)"
    fi

    # Slurm from inside the image: the site lends the host's Slurm clients
    # (inject.scheduler_clients), so a batch script that runs in an image without Slurm
    # starts steps with srun, and a nested `srun --container` starts its step as from the host.
    if [ -n "${BERTH_TEST_OPENMPI_IMAGE:-}" ]; then
        install -d -m 0755 /etc/berth
        saved_cfg=""; [ -e /etc/berth/berth.toml ] && { saved_cfg=$WORK/berth.toml.saved; cp /etc/berth/berth.toml "$saved_cfg"; }
        printf '[inject]\nscheduler_clients = ["slurm"]\n' > /etc/berth/berth.toml
        cat > "$WORK/nested.sh" <<JOB
#!/bin/sh
echo "srun=\$(command -v srun)"
echo "in=\$BERTH_CONTAINER"
srun -l hostname
srun -N1 -n1 --container=$WORK/imga.sqsh grep PRETTY /etc/os-release
JOB
        as_user sbatch -N2 --wait --container-batch=image --container="$BERTH_TEST_OPENMPI_IMAGE" \
            -o "$WORK/nested.out" "$WORK/nested.sh" > "$OUT" 2>&1; rc=$?
        # The lent commands are the host's, run with the image's C library: a host newer than
        # the image (Debian 13's Slurm 24.11 and a Debian 12 image) lends none, by design.
        host_glibc=$(ldd --version 2>/dev/null | awk 'NR == 1 { print $NF }')
        # --no-share: no warm container (and its FUSE server) stays after this run.
        image_glibc=$(as_user "$NODE_BERTH" exec --no-share "$BERTH_TEST_OPENMPI_IMAGE" ldd --version 2>/dev/null | awk 'NR == 1 { print $NF }')
        if [ -n "$host_glibc" ] && [ -n "$image_glibc" ] && [ "$host_glibc" != "$image_glibc" ] &&
           [ "$(printf '%s\n%s\n' "$host_glibc" "$image_glibc" | sort -V | tail -1)" = "$host_glibc" ]; then
            check "(d) Slurm in the image: the host's srun (glibc $host_glibc) is not lent to an image with glibc $image_glibc" \
                grep -qx 'srun=' "$WORK/nested.out"
            skip "(d) ... its srun and a nested srun --container (no srun in this image on this host)"
        else
        check "(d) Slurm in the image: the batch script runs the host's srun (inject.scheduler_clients) (rc=$rc)" \
            bash -c "[ $rc = 0 ] && grep -qx 'srun=/.berth/host/bin/srun' '$WORK/nested.out' && grep -qx 'in=$BERTH_TEST_OPENMPI_IMAGE' '$WORK/nested.out'"
        check "(d) ... its srun starts a step on both nodes" \
            bash -c "[ \$(grep -c '^[01]: bnode' '$WORK/nested.out') = 2 ] && [ \$(hosts_in '$WORK/nested.out') = 2 ]"
        check "(d) ... and a nested srun --container runs in that image" \
            grep -q 'PRETTY_NAME="berth test image A"' "$WORK/nested.out"
        [ "$rc" = 0 ] || sed 's/^/    /' "$WORK/nested.out" "$OUT"
        fi
        if [ -n "$saved_cfg" ]; then mv -f "$saved_cfg" /etc/berth/berth.toml; else rm -f /etc/berth/berth.toml; fi
        wait_idle
    else
        skip "(d) Slurm in the image (BERTH_TEST_OPENMPI_IMAGE not set)"
    fi

    # Privileged mount mode (site opt-in in berth.toml): the plugin starts each node's holder as
    # root; berth mounts the vetted image with the kernel's squashfs on a loop device and
    # becomes the user before anything else.
    install -d -m 0755 /etc/berth
    saved_cfg=""; [ -e /etc/berth/berth.toml ] && { saved_cfg=$WORK/berth.toml.saved; cp /etc/berth/berth.toml "$saved_cfg"; }
    printf 'mount_mode = "privileged"\n[privileged]\nallowed_dirs = ["%s"]\n' "$WORK" > /etc/berth/berth.toml
    as_user srun -N2 -n4 -l --container=imga.sqsh sh -c 'echo "uid=$(id -u) $(grep PRETTY /etc/os-release)"' > "$OUT" 2> "$ERR"; rc=$?
    n=$(grep -c "uid=$(id -u "$TEST_USER") PRETTY_NAME=\"berth test image A\"" "$OUT")
    check "(d) privileged mode: srun -N2 -n4 runs as the user in the image (rc=$rc)" test "$rc:$n" = 0:4
    [ "$rc" = 0 ] || sed 's/^/    /' "$ERR"
    as_user srun -N1 --container=imga.sqsh sleep 4 > /dev/null 2>&1 &
    bg=$!
    seen_loop=0
    # By its path, or by device and inode ("/dev/loopN: [DEV]:INODE (PATH)"): the path is the
    # one the holder's mount namespace gave, which a reader in another may see otherwise.
    image_id="[$(stat -c %d "$WORK/imga.sqsh")]:$(stat -c %i "$WORK/imga.sqsh") "
    for _ in $(seq 30); do losetup -a | grep -qF -e "$WORK/imga.sqsh" -e "$image_id" && { seen_loop=1; break; }; sleep 0.1; done
    # By name: the image's server is named squashfuse_ll whether berth exec'd the program or
    # forked itself (its command line is then the holder's, which does not name the image).
    fuse_for_image=$(pgrep -u "$TEST_USER" -x squashfuse_ll | wc -l)
    wait "$bg"
    check "(d) ... the image is on a kernel loop device, no FUSE server" test "$seen_loop$fuse_for_image" = 10
    [ "$seen_loop$fuse_for_image" = 10 ] || { echo "    loop device seen: $seen_loop, FUSE servers of $TEST_USER: $fuse_for_image"; losetup -a | sed 's/^/    /'; }
    cp "$WORK/imgb.sqsh" "$DIR/work/unvetted.$$.sqsh"; chown "$TEST_USER" "$DIR/work/unvetted.$$.sqsh"
    as_user srun -N1 --container="$DIR/work/unvetted.$$.sqsh" true > "$OUT" 2> "$ERR"; rc=$?
    rm -f "$DIR/work/unvetted.$$.sqsh"
    check "(d) ... an image outside allowed_dirs fails the step with the reason (rc=$rc)" \
        bash -c "[ $rc != 0 ] && grep -q 'not under an allowed directory' '$ERR'"
    # Root mounts only what the user could open: a root-only image in the vetted directory.
    cp "$WORK/imgb.sqsh" "$WORK/secret.$$.sqsh"; chmod 0600 "$WORK/secret.$$.sqsh"
    as_user srun -N1 --container="$WORK/secret.$$.sqsh" true > "$OUT" 2> "$ERR"; rc=$?
    rm -f "$WORK/secret.$$.sqsh"
    check "(d) ... a root-only image under allowed_dirs fails the step, as the user could not read it (rc=$rc)" \
        bash -c "[ $rc != 0 ] && grep -q 'Permission denied' '$ERR'"
    # A named container in privileged mode: root mounts the image, the kept layer is the user's.
    # And a step that joins it while the first runs (:exec) sees the same.
    rm -f "$WORK"/pa.* "$WORK/pstop"
    cat > "$WORK/pnamed.sh" <<PNAMED
#!/bin/sh
srun -N2 --overlap --container-image=$WORK/imga.sqsh --container-name=p sh -c 'echo p > /pstate; touch $WORK/pa.\$(hostname); while ! [ -e $WORK/pstop ]; do sleep 0.2; done' &
for i in \$(seq 300); do [ \$(ls $WORK/pa.* 2>/dev/null | wc -l) = 2 ] && break; sleep 0.2; done
srun -N2 --overlap --container-name=p:exec sh -c 'echo "joined \$(cat /pstate)"'
touch $WORK/pstop; wait
srun -N2 --container-name=p cat /pstate
PNAMED
    chmod 0755 "$WORK/pnamed.sh"
    as_user sbatch -N2 --wait -o "$WORK/pnamed.out" "$WORK/pnamed.sh" > "$OUT" 2>&1; rc=$?
    check "(d) ... a named container: a step joining the running one (:exec) and the next step see what the first wrote, on both nodes (rc=$rc)" \
        bash -c "[ \$(grep -cx 'joined p' '$WORK/pnamed.out') = 2 ] && [ \$(grep -cx p '$WORK/pnamed.out') = 2 ]"
    [ "$(grep -cx p "$WORK/pnamed.out")" = 2 ] || sed 's/^/    /' "$WORK/pnamed.out"
    if [ -n "$saved_cfg" ]; then mv -f "$saved_cfg" /etc/berth/berth.toml; else rm -f /etc/berth/berth.toml; fi
    wait_idle
    left=$(losetup -a | grep -c -F -e "$WORK/" -e "$image_id")
    check "(d) ... no loop device left ($left), nodes idle" bash -c "[ $left = 0 ] && [ \"\$(sinfo -h -N -o '%T' | sort -u | tr '\n' ' ')\" = 'idle ' ]"

    # Registry images: a docker-registry on the bridge's host address (the nodes reach only
    # that network), an image pushed with skopeo from an OCI layout written here, a site cache
    # in $DIR (every node sees it). Each node's holder converts through the per-digest lock:
    # one conversion, the other node waits and mounts the same file.
    REG_HOST=${BERTH_SLURM_NET:-10.78.0}.1 REG_PORT=$((15000 + $$ % 1000))
    mkdir -p "$WORK/reg/storage"
    printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s:%s\n' \
        "$WORK/reg/storage" "$REG_HOST" "$REG_PORT" > "$WORK/reg/config.yml"
    # Without the descriptors this script got (the caller's lock among them).
    ( for fd in /proc/$BASHPID/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
      exec docker-registry serve "$WORK/reg/config.yml" ) > "$WORK/reg/log" 2>&1 &
    reg_pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/$REG_HOST/$REG_PORT") 2>/dev/null && break; sleep 0.1; done
    mkimage imgr "berth test image R"
    oci=$WORK/imgr.oci; mkdir -p "$oci/blobs/sha256"
    put() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$oci/blobs/sha256/$d"; echo "$d $(stat -c %s "$oci/blobs/sha256/$d")"; }
    tar -C "$WORK/imgr.root" --numeric-owner --owner=0 --group=0 -czf "$oci/l" .
    diff_id=$(gzip -dc "$oci/l" | sha256sum | cut -d' ' -f1); read -r ld lsz < <(put "$oci/l")
    printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$(dpkg --print-architecture)" "$diff_id" > "$oci/c"; read -r cd cs < <(put "$oci/c")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$cd" "$cs" "$ld" "$lsz" > "$oci/m"; read -r md ms < <(put "$oci/m")
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
        "$md" "$ms" > "$oci/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' > "$oci/oci-layout"
    REF=$REG_HOST:$REG_PORT/test/imgr:v1
    skopeo copy --quiet --dest-tls-verify=false "oci:$oci:v1" "docker://$REF" || echo "note: skopeo copy to $REF failed"
    SITE_CACHE=$DIR/work/regcache.$$; install -d -m 1777 "$SITE_CACHE"
    saved_cfg=""; [ -e /etc/berth/berth.toml ] && { saved_cfg=$WORK/berth.toml.saved; cp /etc/berth/berth.toml "$saved_cfg"; }
    printf '[registry]\ncache_dir = "%s"\ninsecure_hosts = ["%s:%s"]\n' "$SITE_CACHE" "$REG_HOST" "$REG_PORT" > /etc/berth/berth.toml
    CONV_LOG=$SITE_CACHE/$(id -u "$TEST_USER")/conversions.log
    as_user srun -N2 -n2 -l --container="docker://$REF" sh -c 'echo "$(hostname) $(grep PRETTY /etc/os-release)"' > "$OUT" 2> "$ERR"; rc=$?
    conv=$(cat "$CONV_LOG" 2>/dev/null | wc -l)
    check "(e) srun -N2 --container=docker://HOST:PORT/REPO:TAG: both ranks in the image (rc=$rc)" \
        bash -c "[ \$(grep -c 'PRETTY_NAME=\"berth test image R\"' '$OUT') = 2 ] && [ \$(cut -d' ' -f2 '$OUT' | sort -u | wc -l) = 2 ]"
    [ "$rc" = 0 ] || sed 's/^/    /' "$ERR"
    check "(e) ... one conversion for the 2 nodes ($conv: $(cut -d' ' -f2 "$CONV_LOG" 2>/dev/null | tr '\n' ' '))" test "$conv" = 1
    echo "note: 2-node registry step: $conv conversion(s)"
    as_user srun -N2 -n2 --container-image="$REG_HOST:$REG_PORT#test/imgr:v1" grep PRETTY /etc/os-release > "$OUT" 2> "$ERR"; rc=$?
    conv=$(cat "$CONV_LOG" 2>/dev/null | wc -l)
    check "(e) pyxis' --container-image=REG#IMG: the cached file, no second conversion (rc=$rc, $conv)" \
        bash -c "[ $rc = 0 ] && [ \$(grep -c 'image R' '$OUT') = 2 ] && [ $conv = 1 ]"
    as_user srun -N2 --container="$REG_HOST:$REG_PORT/test/imgr:nope" true > "$OUT" 2> "$ERR"; rc=$?
    check "(e) an unknown tag fails the step with the registry's reason on srun's stderr (rc=$rc)" \
        bash -c "[ $rc != 0 ] && grep -q 'berth: error' '$ERR' && grep -q 'imgr:nope' '$ERR'"
    [ "$rc" != 0 ] || sed 's/^/    /' "$ERR"
    if [ -n "$saved_cfg" ]; then mv -f "$saved_cfg" /etc/berth/berth.toml; else rm -f /etc/berth/berth.toml; fi
    kill "$reg_pid"; wait "$reg_pid" 2>/dev/null
    rm -rf "$SITE_CACHE"
    wait_idle; check "(e) ... nodes idle, not drained" nodes_idle

    fails=0
    for i in $(seq "$STEPS"); do as_user srun -N2 --container=imga.sqsh true >/dev/null 2>&1 || fails=$((fails + 1)); done
    wait_idle
    check "(d) $STEPS consecutive container steps all succeed ($fails failed)" test "$fails" = 0
    check "(d) ... no processes of $TEST_USER left" no_user_procs
    # The suite's FUSE servers run as the test user (privileged mode uses loop devices): other
    # users' squashfuse_ll on a shared machine are not this suite's leftovers.
    check "(d) ... no squashfuse of $TEST_USER left" bash -c "! pgrep -u '$TEST_USER' -x squashfuse_ll >/dev/null"
    check "(d) ... no holder state left" bash -c "! ls $DIR/nodes/*/roottmp/berth-*/holders/*.json $DIR/nodes/*/runberth/*/holders/*.json 2>/dev/null | grep -q ."
    check "(d) ... nodes idle" nodes_idle
fi

echo "$SKIP skipped"
# The closing line names the Slurm release the suite ran against (tests/run.sh runs it on
# 22.05 and on 24.11).
echo "slurm $(srun --version 2>/dev/null | awk '{print $2}'): $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
