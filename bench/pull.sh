#!/bin/bash
# berth pull vs skopeo copy + umoci unpack + mksquashfs on the same image, pulled from a local
# docker-registry: wall time and peak disk use (sampled every 0.1 s with du over each tool's
# working directories). Run as root (it starts a registry); the pulls run as BENCH_USER.
# Usage: bench/pull.sh [BERTH_BINARY]   (needs docker-registry skopeo umoci squashfs-tools)
set -euo pipefail
BERTH=${1:-$(pwd)/target/release/berth}
USER_=${BENCH_USER:-berthtest}
W=$(mktemp -d /var/tmp/berth-pullbench.XXXX)
chmod 755 "$W"
trap 'kill $REG 2>/dev/null || true; rm -rf "$W"' EXIT
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')

# The image: two gzip layers of real files (Python's stdlib and docs, Perl), ~250 MB unpacked.
mkdir -p "$W/layout/blobs/sha256"
tar -C / --numeric-owner -czf "$W/l1.tgz" usr/lib/python3 usr/lib/python3.11 usr/share/doc
tar -C / --numeric-owner -czf "$W/l2.tgz" usr/lib/x86_64-linux-gnu/perl usr/share/perl
python3 - "$W" <<'PY'
import hashlib, json, os, sys, gzip
w = sys.argv[1]; b = f"{w}/layout/blobs/sha256"
def put(data):
    h = hashlib.sha256(data).hexdigest(); open(f"{b}/{h}", "wb").write(data); return "sha256:" + h, len(data)
layers, diffs = [], []
for f in ("l1.tgz", "l2.tgz"):
    data = open(f"{w}/{f}", "rb").read()
    d, n = put(data); layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
    diffs.append("sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest())
cd, cn = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diffs}}).encode())
md, mn = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn}, "layers": layers}).encode())
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
    "size": mn, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, open(f"{w}/layout/index.json", "w"))
open(f"{w}/layout/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
cat > "$W/reg.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/storage
http:
  addr: 127.0.0.1:$PORT
YML
docker-registry serve "$W/reg.yml" >"$W/reg.log" 2>&1 &
REG=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy --quiet --dest-tls-verify=false "oci:$W/layout:v1" "docker://127.0.0.1:$PORT/bench/app:v1"
REF="docker://127.0.0.1:$PORT/bench/app:v1"
cp "$BERTH" "$W/berth"; chmod 755 "$W/berth"

# measure NAME DIR CMD: run CMD as the user with DIR as its scratch, sample du -s DIR.
measure() {
    local name=$1 dir=$2; shift 2
    rm -rf "$dir"; mkdir -p "$dir"; chown "$USER_" "$dir"; sync
    local peak=0 start end
    start=$(date +%s.%N)
    runuser -u "$USER_" -- env HOME="$dir" BERTH_CACHE_DIR="$dir/cache" sh -c "cd $dir && $*" >"$W/$name.log" 2>&1 &
    local pid=$!
    while kill -0 $pid 2>/dev/null; do
        local s; s=$(du -sk "$dir" 2>/dev/null | cut -f1 || echo 0)
        [ "${s:-0}" -gt "$peak" ] && peak=$s
        sleep 0.1
    done
    wait $pid || { echo "$name failed:"; cat "$W/$name.log"; exit 1; }
    end=$(date +%s.%N)
    local out; out=$(du -k "$dir"/*.sqsh | cut -f1)
    printf '| %-44s | %7.1f | %9d | %9d |\n' "$name" "$(echo "$end - $start" | bc)" $((peak / 1024)) $((out / 1024))
}
echo "image: $(du -sh "$W/layout" | cut -f1) compressed in 2 layers; files: $(tar -tzf "$W/l1.tgz" | wc -l) + $(tar -tzf "$W/l2.tgz" | wc -l)"
echo "| method | time (s) | peak disk (MiB) | image (MiB) |"
echo "|---|---|---|---|"
measure "berth pull (cold cache)" "$W/b" "$W/berth pull -q --insecure $REF out.sqsh"
measure "skopeo copy + umoci unpack --rootless + mksquashfs" "$W/s" \
    "skopeo copy --quiet --src-tls-verify=false $REF oci:img:v1 && umoci unpack --rootless --image img:v1 bundle >/dev/null && mksquashfs bundle/rootfs out.sqsh -quiet -no-progress -comp gzip >/dev/null"
# Warm: berth's blob cache already holds the layers.
rm -f "$W/b/out.sqsh"
start=$(date +%s.%N)
runuser -u "$USER_" -- env HOME="$W/b" BERTH_CACHE_DIR="$W/b/cache" sh -c "cd $W/b && $W/berth pull -q --insecure $REF out.sqsh"
printf '| %-44s | %7.1f | %9s | %9s |\n' "berth pull (warm blob cache)" "$(echo "$(date +%s.%N) - $start" | bc)" "-" "-"
echo "owners in berth's image:  $(unsquashfs -lln "$W/b/out.sqsh" | awk '{print $2}' | sort | uniq -c | tr '\n' ' ')"
echo "owners in umoci's image:  $(unsquashfs -lln "$W/s/out.sqsh" | awk '{print $2}' | sort | uniq -c | tr '\n' ' ')"
