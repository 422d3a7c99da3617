#!/usr/bin/env bash
# Build defs/openmpi.def and defs/mpich.def for real with `berth build` (debootstrap bookworm,
# MPI from Debian, berth-mpitest compiled in %post, %test run in the container), as the test
# run's MPI images. Built images are kept in $BERTH_TEST_IMAGE_DIR keyed by the content of the
# recipe and the test program, so a rebuild happens only when one changes (the build tests
# cover the build code itself);
# the debootstrap base is cached by berth itself (/var/cache/berth/bootstrap). Prints the
# variables the tests read: BERTH_TEST_OPENMPI_IMAGE=..., BERTH_TEST_MPICH_IMAGE=...
# Arguments name the recipes to build (default: openmpi mpich). NAME-SUITE (e.g. openmpi-bullseye)
# builds defs/NAME.def on another Debian suite (its bookworm lines rewritten), for the old-MPI-stack
# checks (bench/oldmpi.sh): Debian 11 brings Open MPI 4.1.0 with PMIx 4.0 against the host's 4.2.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${BERTH_TEST_IMAGE_DIR:-/var/cache/berth/test-images}
berth=${BERTH:-$here/target/debug/berth}
install -d -m 0755 "$dir"
cd "$here"
names=("$@"); [ $# -gt 0 ] || names=(openmpi mpich)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for name in "${names[@]}"; do
  def="defs/$name.def"
  if [ ! -f "$def" ] && [ -f "defs/${name%-*}.def" ]; then
    def="$tmp/$name.def"
    sed "s/bookworm/${name##*-}/g" "defs/${name%-*}.def" >"$def"
  fi
  key=$(cat "$def" tests/mpi/berth-mpitest.c | sha256sum | cut -c1-16)
  img="$dir/$name-$key.img"
  if [ ! -f "$img" ]; then
    # Only this recipe's older builds (openmpi-<key>, not openmpi-bullseye-<key>).
    find "$dir" -maxdepth 1 -regextype egrep -regex ".*/$name-[0-9a-f]{16}\.img" -delete
    echo "build-mpi-images: building $name (a few minutes the first time)" >&2
    start=$(date +%s)
    "$berth" build --log "$dir/$name.log" "$img" "$def" >&2
    echo "build-mpi-images: $name built in $(( $(date +%s) - start )) s" >&2
  fi
  chmod 0644 "$img"
  echo "BERTH_TEST_$(echo "$name" | tr a-z- A-Z_)_IMAGE=$img"
done
