#!/usr/bin/env bash
# Check host NVIDIA injection on a real GPU node.
#
#   tests/gpu/check-real-gpu.sh            # from the repository root, as root (for step 2)
#
# 1. builds berth and a tiny image tree: the host's own glibc (so the glibc check passes and
#    the injected driver libraries can load) plus `cuinit-check`, a program that dlopens
#    libcuda.so.1 like the CUDA runtime does and calls cuInit / cuDeviceGetCount;
# 2. prints the injection plan (runtime example `inject-plan --nv IMAGE`) and applies it by
#    hand with bind mounts + chroot in a private mount namespace, independently of berth's
#    container code: `nvidia-smi -L` and `cuinit-check` must see every GPU, and with
#    SLURM_STEP_GPUS=<one minor> exactly one GPU, numbered 0 (what Slurm's ConstrainDevices does);
# 3. when `berth exec` has `--nv`, the same through berth itself, from a SquashFS image.
#
# Exit status: 0 all passed, 1 a check failed, 77 skipped (no GPU here).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
WORK=$(mktemp -d /tmp/berth-gpu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

if ! command -v nvidia-smi >/dev/null || [ ! -e /dev/nvidiactl ]; then
    echo "SKIP: no NVIDIA GPU on this machine (nvidia-smi or /dev/nvidiactl missing)"
    exit 77
fi
HOST_GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
echo "host: $HOST_GPUS GPU(s), driver $(cat /sys/module/nvidia/version 2>/dev/null || echo '?')"
[ "$HOST_GPUS" -ge 1 ] || fail "host nvidia-smi -L lists no GPU"

echo "== build"
(cd "$REPO" && cargo build -q -p berth-runtime --example inject-plan && cargo build -q -p berth) || fail "cargo build"
PLAN_BIN=$CARGO_TARGET_DIR/debug/examples/inject-plan
BERTH=$CARGO_TARGET_DIR/debug/berth

echo "== image tree"
IMG=$WORK/img
mkdir -p "$IMG"/{usr/bin,bin,etc,dev,proc,sys,tmp,lib64} "$IMG/usr/lib/x86_64-linux-gnu"
cat > "$WORK/cuinit-check.c" <<'C'
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
typedef int (*cu_init_fn)(unsigned);
typedef int (*cu_int_fn)(int *);
int main(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror()); return 2; }
    cu_init_fn cu_init = (cu_init_fn)dlsym(h, "cuInit");
    cu_int_fn count = (cu_int_fn)dlsym(h, "cuDeviceGetCount");
    cu_int_fn driver = (cu_int_fn)dlsym(h, "cuDriverGetVersion");
    if (!cu_init || !count || !driver) { fprintf(stderr, "libcuda.so.1 lacks cuInit\n"); return 2; }
    int r = cu_init(0);
    if (r != 0) { fprintf(stderr, "cuInit failed: CUresult %d\n", r); return 3; }
    int n = 0, v = 0;
    count(&n);
    driver(&v);
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    printf("cuInit ok devices=%d cuda=%d.%d CUDA_VISIBLE_DEVICES=%s\n", n, v / 1000, (v % 1000) / 10, cvd ? cvd : "(unset)");
    return 0;
}
C
cc -O1 -o "$IMG/usr/bin/cuinit-check" "$WORK/cuinit-check.c" -ldl || fail "cc cuinit-check"
# The host's glibc (and nothing else: the driver libraries must come from injection).
for bin in "$IMG/usr/bin/cuinit-check" "$(command -v nvidia-smi)"; do
    ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r lib; do
        case "$(basename "$lib")" in
            libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|ld-linux*) ;;
            *) continue ;;
        esac
        [ -e "$lib" ] || continue
        cp -L "$lib" "$IMG/usr/lib/x86_64-linux-gnu/$(basename "$lib")"
    done
done
cp -L /lib64/ld-linux-x86-64.so.2 "$IMG/lib64/" 2>/dev/null || true
if command -v busybox >/dev/null && file -L "$(command -v busybox)" | grep -q static; then
    cp -L "$(command -v busybox)" "$IMG/bin/busybox" && ln -s busybox "$IMG/bin/sh"
fi
echo /usr/lib/x86_64-linux-gnu > "$IMG/etc/ld.so.conf"
ldconfig -r "$IMG" 2>/dev/null || echo "(no ldconfig -r: the image has no ld.so.cache, standard directories are used)"
mkdir -p "$IMG/usr/local/cuda"
echo '{"cuda":{"name":"CUDA SDK","version":"12.0.0"}}' > "$IMG/usr/local/cuda/version.json"

echo "== plan"
"$PLAN_BIN" --mpi=none --nv "$IMG" > "$WORK/plan.json" || fail "inject-plan refused: $(cat "$WORK/plan.json")"
python3 - "$WORK/plan.json" <<'PY' || fail "plan is missing NVIDIA items"
import json, sys
p = json.load(open(sys.argv[1]))
paths = [i["container_path"] for i in p["items"]]
need = ["/dev/nvidiactl", "/.berth/host/lib/libcuda.so.1", "/.berth/host/lib/libnvidia-ml.so.1", "/.berth/host/bin/nvidia-smi"]
missing = [n for n in need if n not in paths]
for i in p["items"]:
    print(f'  {i["kind"]:6} {i["container_path"]}  <- {i["host_path"]}  ({i["why"]})')
for n in p["notes"]:
    print("  note:", n)
if missing:
    print("missing:", missing); sys.exit(1)
PY
pass "plan has devices, libcuda, NVML and nvidia-smi"

# Apply a plan by hand: bind every item into a scratch copy of the image, chroot, run.
run_in_plan() { # $1 plan.json, rest: command
    local plan=$1; shift
    local root=$WORK/root
    rm -rf "$root" && cp -a "$IMG" "$root"
    python3 - "$plan" "$root" > "$WORK/apply.sh" <<'PY'
import json, shlex, sys
p, root = json.load(open(sys.argv[1])), sys.argv[2]
print("set -e")
print(f"mount -t proc proc {shlex.quote(root)}/proc")
for i in p["items"]:
    if i["container_path"].startswith("/proc/"):
        continue  # the fresh procfs has it
    dst = shlex.quote(root + i["container_path"])
    src = shlex.quote(i["host_path"])
    if i["kind"] == "dir":
        print(f"mkdir -p {dst}")
    else:
        print(f"mkdir -p $(dirname {dst}) && touch {dst}")
    print(f"mount --bind {src} {dst}")
    if i["readonly"]:
        print(f"mount -o remount,bind,ro {dst}")
env = dict(p["env"])
env["LD_LIBRARY_PATH"] = ":".join(p["lib_dirs"])
env["PATH"] = ":".join(["/usr/bin", "/bin"] + p["bin_dirs"])
# The host's env and chroot: the image need not have either.
print("exec env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " \"$(command -v chroot)\" " + shlex.quote(root) + ' "$@"')
PY
    unshare -m --propagation private bash "$WORK/apply.sh" "$@"
}

if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null; then
    echo "== applied by hand (bind mounts + chroot), all GPUs"
    out=$(run_in_plan "$WORK/plan.json" nvidia-smi -L) || fail "nvidia-smi -L in the chroot: $out"
    echo "$out"
    [ "$(echo "$out" | grep -c '^GPU ')" -eq "$HOST_GPUS" ] || fail "nvidia-smi -L inside lists a different number of GPUs than the host"
    out=$(run_in_plan "$WORK/plan.json" cuinit-check) || fail "cuinit-check in the chroot: $out"
    echo "$out"
    echo "$out" | grep -q "devices=$HOST_GPUS" || fail "cuInit sees a different number of GPUs than the host"
    pass "all GPUs visible through the injected stack"

    LAST_MINOR=$(ls /dev | sed -n 's/^nvidia\([0-9][0-9]*\)$/\1/p' | sort -n | tail -1)
    echo "== only GPU minor $LAST_MINOR (SLURM_STEP_GPUS=$LAST_MINOR)"
    SLURM_STEP_GPUS=$LAST_MINOR CUDA_VISIBLE_DEVICES=$LAST_MINOR "$PLAN_BIN" --mpi=none --nv "$IMG" > "$WORK/plan1.json" || fail "plan for one GPU"
    out=$(run_in_plan "$WORK/plan1.json" cuinit-check) || fail "cuinit-check with one GPU: $out"
    echo "$out"
    echo "$out" | grep -q "devices=1 .*CUDA_VISIBLE_DEVICES=0" || fail "expected exactly one GPU, numbered 0"
    out=$(run_in_plan "$WORK/plan1.json" nvidia-smi -L) || true
    echo "$out"
    pass "one GPU given, one GPU seen, renumbered to 0"
else
    echo "(not root: skipping the by-hand application)"
fi

echo "== berth exec --nv"
if [ -x "$BERTH" ] && "$BERTH" exec --help 2>&1 | grep -q -- '--nv'; then
    mksquashfs "$IMG" "$WORK/gpu.sqsh" -noappend -quiet -all-root || fail "mksquashfs"
    out=$("$BERTH" exec --nv "$WORK/gpu.sqsh" nvidia-smi -L) || fail "berth exec --nv nvidia-smi -L: $out"
    echo "$out"
    [ "$(echo "$out" | grep -c '^GPU ')" -eq "$HOST_GPUS" ] || fail "berth: nvidia-smi -L lists a different number of GPUs"
    out=$("$BERTH" exec --nv "$WORK/gpu.sqsh" cuinit-check) || fail "berth exec --nv cuinit-check: $out"
    echo "$out"
    echo "$out" | grep -q "devices=$HOST_GPUS" || fail "berth: cuInit sees a different number of GPUs"
    pass "berth exec --nv"
else
    echo "SKIP: berth exec has no --nv yet (the launcher wires it)"
fi
echo "all GPU checks passed"
