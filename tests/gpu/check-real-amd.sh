#!/usr/bin/env bash
# Check host ROCm injection (`berth exec --rocm`) on a real AMD GPU node.
#
#   tests/gpu/check-real-amd.sh         # from the repository root, as a user in the render group
#
# 1. builds berth and a SquashFS image holding the host's glibc and `hip-check`, a program that
#    dlopens the HIP runtime by SONAME (as HIP programs do) and counts devices; no ROCm inside;
# 2. runs it natively, then through `berth exec --rocm`: the same device count, /dev/kfd and
#    the render nodes inside, rocminfo (injected) lists the GPUs;
# 3. with ROCR_VISIBLE_DEVICES=<last GPU> (what Slurm's gres sets): exactly one device, numbered 0
#    inside, and only its render node bound;
# 4. with SLURM_STEP_GPUS=<its render minor> and no --rocm: the same, automatically.
#
# Exit status: 0 all passed, 1 a check failed, 77 skipped (no AMD GPU here).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
WORK=$(mktemp -d /tmp/berth-amd.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

if [ ! -e /dev/kfd ] || ! ls /dev/dri/renderD* >/dev/null 2>&1; then
    echo "SKIP: no AMD GPU on this machine (/dev/kfd or /dev/dri/renderD* missing)"
    exit 77
fi
command -v mksquashfs >/dev/null || fail "mksquashfs missing (apt-get install squashfs-tools)"

echo "== build"
(cd "$REPO" && cargo build -q -p berth) || fail "cargo build"
BERTH=$CARGO_TARGET_DIR/debug/berth

echo "== image"
IMG=$WORK/img
mkdir -p "$IMG"/{usr/bin,bin,etc,dev,proc,sys,tmp,lib64} "$IMG/usr/lib/x86_64-linux-gnu"
cat > "$WORK/hip-check.c" <<'C'
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    const char *names[] = {"libamdhip64.so.6", "libamdhip64.so.7", "libamdhip64.so.5", NULL};
    void *h = NULL;
    for (int i = 0; names[i] && !h; i++) h = dlopen(names[i], RTLD_NOW);
    if (!h) { fprintf(stderr, "dlopen libamdhip64: %s\n", dlerror()); return 2; }
    int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, "hipInit");
    int (*count)(int *) = (int (*)(int *))dlsym(h, "hipGetDeviceCount");
    if (!init || !count) { fprintf(stderr, "libamdhip64 lacks hipInit\n"); return 2; }
    int r = init(0);
    if (r != 0) { fprintf(stderr, "hipInit failed: %d\n", r); return 3; }
    int n = 0;
    count(&n);
    const char *v = getenv("ROCR_VISIBLE_DEVICES");
    printf("devices=%d ROCR_VISIBLE_DEVICES=%s\n", n, v ? v : "(unset)");
    return 0;
}
C
cc -O1 -o "$IMG/usr/bin/hip-check" "$WORK/hip-check.c" -ldl || fail "cc hip-check"
for lib in $(ldd "$IMG/usr/bin/hip-check" | awk '/=>/ {print $3}'); do
    cp -L "$lib" "$IMG/usr/lib/x86_64-linux-gnu/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$IMG/lib64/"
if command -v busybox >/dev/null; then
    cp -L "$(command -v busybox)" "$IMG/bin/busybox"
    for t in sh ls grep wc cat; do ln -s busybox "$IMG/bin/$t"; done
else
    cp -L /bin/dash "$IMG/bin/sh"
fi
echo /usr/lib/x86_64-linux-gnu > "$IMG/etc/ld.so.conf"
ldconfig -r "$IMG" 2>/dev/null || true
mksquashfs "$IMG" "$WORK/hip.sqsh" -quiet -noappend -all-root >/dev/null || fail mksquashfs
SQ=$WORK/hip.sqsh

echo "== native"
NATIVE=$(env -u ROCR_VISIBLE_DEVICES -u HIP_VISIBLE_DEVICES "$IMG/usr/bin/hip-check") || fail "hip-check natively"
echo "$NATIVE"
N=$(echo "$NATIVE" | sed -n 's/^devices=\([0-9]*\).*/\1/p')
[ "${N:-0}" -ge 1 ] || fail "no GPU natively"

echo "== berth exec --rocm (all GPUs)"
"$BERTH" exec --rocm --dry-run "$SQ" true | sed -n '/host injection/,/^ *[0-9]*\. [^ ]/p' | head -40
OUT=$(env -u ROCR_VISIBLE_DEVICES -u HIP_VISIBLE_DEVICES -u SLURM_STEP_GPUS \
    "$BERTH" exec --rocm "$SQ" sh -c 'hip-check; ls /dev/kfd; ls /dev/dri | grep -c renderD') || fail "berth exec --rocm: $OUT"
echo "$OUT"
echo "$OUT" | grep -q "^devices=$N " || fail "expected $N device(s) inside"
echo "$OUT" | grep -qx /dev/kfd || fail "/dev/kfd missing inside"
pass "$N GPU(s) inside, as natively"
if "$BERTH" exec --rocm "$SQ" sh -c 'command -v rocminfo' >/dev/null 2>&1; then
    AGENTS=$("$BERTH" exec --rocm "$SQ" rocminfo 2>/dev/null | grep -c 'Name: *gfx' || true)
    echo "rocminfo inside: $AGENTS gfx agent(s)"
fi

LAST=$((N - 1))
echo "== ROCR_VISIBLE_DEVICES=$LAST (one GPU)"
OUT=$(env ROCR_VISIBLE_DEVICES=$LAST "$BERTH" exec --rocm "$SQ" sh -c 'hip-check; ls /dev/dri | grep -c renderD') \
    || fail "berth exec with ROCR_VISIBLE_DEVICES=$LAST: $OUT"
echo "$OUT"
echo "$OUT" | grep -q '^devices=1 ROCR_VISIBLE_DEVICES=0$' || fail "expected one device, numbered 0"
[ "$(echo "$OUT" | tail -1)" = 1 ] || fail "expected exactly one render node inside"
pass "one GPU, renumbered 0"

MINOR=$(ls /dev/dri | sed -n 's/^renderD//p' | sort -n | sed -n "$((LAST + 1))p")
echo "== SLURM_STEP_GPUS=$MINOR without --rocm (automatic)"
OUT=$(env -u ROCR_VISIBLE_DEVICES SLURM_STEP_GPUS=$MINOR "$BERTH" exec "$SQ" hip-check) || fail "automatic: $OUT"
echo "$OUT"
echo "$OUT" | grep -q '^devices=1 ROCR_VISIBLE_DEVICES=0$' || fail "expected one device from SLURM_STEP_GPUS"
pass "Slurm's GPU, automatically"
echo "all AMD checks passed"
