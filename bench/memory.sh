#!/usr/bin/env bash
# Per-node memory of a running step: the holder, its FUSE server and anything else berth keeps
# running beside the ranks (not the ranks' own programs), with 1 and with N ranks joined to
# one holder. Prints RSS and PSS (from /proc/PID/smaps_rollup; PSS shares pages fairly between
# processes, so the PSS sum is what the node really spends). Run as root; uses the image of
# bench/cold.sh (BENCH_IMAGE to choose another).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
user=${BENCH_USER:-berthbench}
work=${BENCH_DIR:-/var/tmp/berth-bench}
image=${BENCH_IMAGE:-$work/small.sqsh}
berth=${BENCH_BERTH:-$here/target/release/berth}
[ -f "$image" ] || { echo "memory: $image missing (run bench/cold.sh first)" >&2; exit 2; }
install -m 0755 "$berth" "$work/berth-mem"
as_user() { runuser -u "$user" -- env -i HOME="/home/$user" USER="$user" PATH=/usr/bin:/bin "$@"; }
uid=$(id -u "$user")
measure() { # N
  local n=$1 name="mem$1" out; out=$(mktemp); chown "$user" "$out"
  as_user bash -c "cd /tmp && exec $work/berth-mem holder --name $name $image > $out 2>&1" &
  for _ in $(seq 100); do grep -q ready "$out" && break; sleep 0.05; done
  grep -q ready "$out" || { echo "memory: holder did not start: $(cat "$out")" >&2; exit 1; }
  for _ in $(seq "$n"); do as_user bash -c "cd /tmp && exec $work/berth-mem exec --join $name /bin/busybox sleep 6" & done
  sleep 2
  # Every process of the user that is berth or its FUSE server; the ranks' programs (busybox sleep) are theirs.
  local rss=0 pss=0 count=0 line
  for pid in $(pgrep -u "$uid" -f "berth-mem|squashfuse_ll"); do
    [ -r "/proc/$pid/smaps_rollup" ] || continue
    comm=$(cat "/proc/$pid/comm")
    case $comm in berth-mem|squashfuse_ll) ;; *) continue ;; esac
    line=$(awk '/^Rss:/{r=$2} /^Pss:/{p=$2} END{print r, p}' "/proc/$pid/smaps_rollup")
    rss=$((rss + ${line% *})); pss=$((pss + ${line#* })); count=$((count + 1))
    printf '  N=%-3s %-16s pid %-7s rss %6s KiB pss %6s KiB\n' "$n" "$comm" "$pid" ${line% *} ${line#* } >&2
  done
  printf '%-6s %9s %12s %12s %9s\n' "N=$n" "$count" "$((rss / 1024)).$(( (rss % 1024) * 10 / 1024 ))" \
    "$((pss / 1024)).$(( (pss % 1024) * 10 / 1024 ))" "$(pgrep -u "$uid" -f "busybox sleep" | wc -l)"
  as_user "$work/berth-mem" stop "$name" >/dev/null 2>&1 || true
  wait  # the ranks end by themselves
  rm -f "$out"
}
echo "image: $image; $(uptime | sed 's/.*load/load/')"
printf '%-6s %9s %12s %12s %9s\n' ranks processes 'RSS MiB' 'PSS MiB' 'sleeping'
for n in ${BENCH_RANKS:-1 32}; do measure "$n"; done
