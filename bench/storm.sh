#!/usr/bin/env bash
# The import storm: N processes at once running `python3 -c "import numpy, scipy"` (about 1,500
# files opened and read by each) in ONE container, so what is measured is the image's filesystem
# under concurrent reads, not N container starts. The same image (bench/numpy.def, built with
# `berth build` and cached in /var/cache/berth/bench keyed by the recipe's hash) is run as
#   - a SquashFS file served by a forked berth through libsquashfuse_ll, one thread (the
#     unprivileged default), by the squashfuse_ll program (multithreaded; `squashfuse_library
#     = ""`), and by it with options (`-o clone_fd`, `-o max_threads=N`, `-s`: berth's
#     `squashfuse` set to a wrapper);
#   - a SquashFS file on the kernel's squashfs driver (mount_mode = "privileged": a holder
#     started by root with --user, the way the Slurm plugin starts it);
#   - the same tree unpacked (unsquashfs) into a host directory, run with `berth exec` too, so
#     only the filesystem differs (the reference of every ratio);
#   - native python3 on the host, when the host has numpy and scipy (else the row is skipped);
#   - N separate `berth exec IMG python3 ...` (they share one warm container), unprivileged.
# Cold: the page cache dropped and a new container (new mount, empty squashfuse cache) before
# the first storm; warm: the same storm again in the same container. The time is taken inside
# the container (first process started to last one done). Medians of BENCH_ROUNDS interleaved
# rounds, in ms. Run as root; takes /tmp/berth-it.lock (drop_caches and the load of 64
# processes would disturb other measurements, and theirs this one).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
user=${BENCH_USER:-berthbench}
rounds=${BENCH_ROUNDS:-3}
sizes=${BENCH_N:-32 64}
cache=${BENCH_CACHE:-/var/cache/berth/bench}
[ "$(id -u)" = 0 ] || { echo "storm: run as root" >&2; exit 2; }
for t in squashfuse_ll unsquashfs python3; do command -v "$t" >/dev/null || { echo "storm: $t missing" >&2; exit 2; }; done
cd "$here"
cargo build -q -p berth
work=$(mktemp -d /var/tmp/berth-storm.XXXXXX)
chmod 0755 "$work"
install -m 0755 target/debug/berth "$work/berth"
key=$(sha256sum bench/numpy.def | cut -c1-16)
install -d -m 0755 "$cache"
img="$cache/numpy-$key.sqsh" dir="$cache/numpy-$key.dir"
if [ ! -f "$img" ]; then
  echo "storm: building $img (a few minutes the first time)" >&2
  find "$cache" -maxdepth 1 -regextype egrep -regex ".*/numpy-[0-9a-f]{16}\.(sqsh|dir)" -exec rm -rf {} +
  "$work/berth" build --log "$cache/numpy.log" "$img.part" bench/numpy.def >&2 && mv "$img.part" "$img"
fi
if [ ! -d "$dir" ]; then unsquashfs -q -n -d "$dir.part" "$img" >/dev/null && mv "$dir.part" "$dir"; fi
chmod 0644 "$img"; chmod 0755 "$cache"
chmod 0666 /dev/fuse
id -u "$user" >/dev/null 2>&1 || useradd -m -s /bin/sh "$user"
uid=$(id -u "$user")

# The storm itself, run inside the container: N pythons started together, the time from the
# first start to the last exit in ms on stdout (a failed import fails the run).
cat >"$work/storm" <<'EOF'
#!/bin/sh
n=$1; s=$(date +%s%N); pids=""
for i in $(seq "$n"); do python3 -c "import numpy, scipy" & pids="$pids $!"; done
for p in $pids; do wait "$p" || { echo "storm: an import failed" >&2; exit 1; }; done
echo $(( ($(date +%s%N) - s) / 1000000 ))
EOF
# squashfuse_ll with extra options, as berth.toml's `squashfuse` names a program (no arguments);
# the library left out so that the program serves.
printf 'squashfuse_library = ""\n' >"$work/program.toml"
for v in "clone_fd:-o clone_fd" "threads64:-o max_threads=64" "single:-s"; do
  printf '#!/bin/sh\nexec squashfuse_ll %s "$@"\n' "${v#*:}" >"$work/sqfuse-${v%%:*}"; chmod 0755 "$work/sqfuse-${v%%:*}"
  printf 'squashfuse_library = ""\nsquashfuse = "%s"\n' "$work/sqfuse-${v%%:*}" >"$work/${v%%:*}.toml"
done
printf 'mount_mode = "privileged"\n[privileged]\nallowed_dirs = ["%s"]\n' "$cache" >"$work/priv.toml"
chmod -R a+rX "$work"

exec 9>/tmp/berth-it.lock
flock 9
as_user() { runuser -u "$user" -- env -i -C "$work" HOME="/home/$user" USER="$user" PATH=/usr/bin:/bin "$@"; }
cleanup() { for i in 0 1 2 3 4 5 6; do as_user "$work/berth" stop "storm-$i" >/dev/null 2>&1 || true; done; rm -rf "$work"; }
trap cleanup EXIT
holder() { # NAME CONFIG|- IMAGE: a held container for the user; privileged when CONFIG is priv.toml
  local out="$work/$1.out" conf=()
  [ "$2" = - ] || conf=(BERTH_CONFIG="$2")
  if [ "$2" = "$work/priv.toml" ]; then
    env -C "$work" "${conf[@]}" "$work/berth" holder --user "$uid" --name "$1" "$3" >"$out" 2>&1 &
  else
    as_user env "${conf[@]}" "$work/berth" holder --name "$1" "$3" >"$out" 2>&1 &
  fi
  for _ in $(seq 200); do grep -q ready "$out" && return 0; sleep 0.05; done
  echo "storm: holder $1 did not start: $(cat "$out")" >&2; exit 1
}
storm() { as_user "$work/berth" exec --join "$1" /bin/sh "$work/storm" "$2"; }
# CPU time (user + system, in 1/100 s) the FUSE server has spent so far: what it takes from
# the cores the imports run on. The newest server is the holder's just started (named
# squashfuse_ll, exec'd or forked).
fuse_cpu() { awk '{print $14 + $15}' "/proc/$(pgrep -n -u "$uid" -x squashfuse_ll)/stat"; }
separate() { # N: N `berth exec IMG python3` at once, ms
  local s; s=$(date +%s%N)
  for _ in $(seq "$1"); do as_user "$work/berth" exec "$img" python3 -c "import numpy, scipy" & done
  wait; echo $(( ($(date +%s%N) - s) / 1000000 ))
}
native=0; python3 -c "import numpy, scipy" 2>/dev/null && native=1

cases=("directory (reference)" "libsquashfuse_ll in berth (default)" "squashfuse_ll program"
       "squashfuse_ll -o clone_fd" "squashfuse_ll -o max_threads=64" "squashfuse_ll -s (one thread)"
       "kernel squashfs (privileged)")
confs=(- - "$work/program.toml" "$work/clone_fd.toml" "$work/threads64.toml" "$work/single.toml" "$work/priv.toml")
imgs=("$dir" "$img" "$img" "$img" "$img" "$img" "$img")
declare -A cold warm fcold fwarm
load=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$rounds"); do
  for n in $sizes; do
    for i in "${!cases[@]}"; do
      sync; echo 3 >/proc/sys/vm/drop_caches
      holder "storm-$i" "${confs[$i]}" "${imgs[$i]}"
      cold[$n,$i]+="$(storm "storm-$i" "$n") "
      if [ "${imgs[$i]}" = "$img" ] && [ "${confs[$i]}" != "$work/priv.toml" ]; then
        f=$(fuse_cpu); warm[$n,$i]+="$(storm "storm-$i" "$n") "
        fcold[$n,$i]+="$f "; fwarm[$n,$i]+="$(( $(fuse_cpu) - f )) "
      else
        warm[$n,$i]+="$(storm "storm-$i" "$n") "
      fi
      as_user "$work/berth" stop "storm-$i" >/dev/null 2>&1 || true; wait
    done
    if [ "$native" = 1 ]; then
      sync; echo 3 >/proc/sys/vm/drop_caches
      cold[$n,native]+="$(as_user /bin/sh "$work/storm" "$n") "; warm[$n,native]+="$(as_user /bin/sh "$work/storm" "$n") "
    fi
    sleep 11  # the previous separate runs' warm container (keep_warm_seconds = 10) is gone
    sync; echo 3 >/proc/sys/vm/drop_caches
    cold[$n,sep]+="$(separate "$n") "; warm[$n,sep]+="$(separate "$n") "
  done
  echo "round $r done: load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done
med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "image: $img ($(du -m "$img" | cut -f1) MB, $(find "$dir" -type f | wc -l) files); $(nproc) cores"
printf 'load average before: %s, after: %s\n' "$load" "$(cut -d' ' -f1-3 /proc/loadavg)"
for n in $sizes; do
  printf '\nN = %s concurrent imports (%s rounds, median ms; ratio to the directory in the same run)\n' "$n" "$rounds"
  printf '%-36s %8s %6s %8s %6s %11s   %s\n' case cold ratio warm ratio "FUSE CPU ms" "per-round cold / warm"
  dc=$(med "${cold[$n,0]}"); dw=$(med "${warm[$n,0]}")
  rows=("${!cases[@]}"); [ "$native" = 1 ] && rows+=(native); rows+=(sep)
  for i in "${rows[@]}"; do
    case $i in native) label="native python3 on the host" ;; sep) label="$n separate berth exec (image)" ;; *) label=${cases[$i]} ;; esac
    c=$(med "${cold[$n,$i]}"); w=$(med "${warm[$n,$i]}")
    fc=-; [ -n "${fcold[$n,$i]:-}" ] && fc="$(( $(med "${fcold[$n,$i]}") * 10 ))/$(( $(med "${fwarm[$n,$i]}") * 10 ))"
    printf '%-36s %8s %6s %8s %6s %11s   %s / %s\n' "$label" "$c" "$(ratio "$c" "$dc")" "$w" "$(ratio "$w" "$dw")" \
      "$fc" "${cold[$n,$i]% }" "${warm[$n,$i]% }"
  done
done
[ "$native" = 1 ] || echo "(no numpy/scipy on the host: no native row)"
echo "FUSE CPU ms: the squashfuse_ll server's CPU time during the cold / the warm storm (medians)"
echo "goal: squashfuse at most 1.5x the directory, the kernel driver (privileged) 1.0x"
