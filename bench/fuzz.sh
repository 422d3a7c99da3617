#!/usr/bin/env bash
# Long fuzzing runs of berth's parsers of untrusted input (build/examples/fuzz.rs): one run of
# SECONDS per seed, seeds FIRST.. until HOURS have passed; stops at the first panic or hang
# (the input is saved under target/fuzz-findings) and prints the totals.
#   bash bench/fuzz.sh [HOURS=4] [SECONDS_PER_SEED=600] [FIRST_SEED=1]
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
hours=${1:-4} per=${2:-600} seed=${3:-1}
cargo build --release -q -p berth-build --example fuzz || exit 1
end=$(( $(date +%s) + hours * 3600 ))
cases=0 runs=0
while [ "$(date +%s)" -lt "$end" ]; do
  out=$(target/release/examples/fuzz --seconds "$per" --seed "$seed" 2>&1); rc=$?
  echo "$out" | tail -n 2
  n=$(echo "$out" | sed -n 's/^fuzz: cases \([0-9]*\),.*/\1/p' | tail -n 1)
  cases=$(( cases + ${n:-0} )); runs=$(( runs + 1 ))
  if [ $rc -ne 0 ]; then echo "fuzz: seed $seed failed (exit $rc) after $cases cases in $runs runs"; exit 1; fi
  seed=$(( seed + 1 ))
done
echo "fuzz: $runs runs, cases $cases, panics 0, hangs 0"
