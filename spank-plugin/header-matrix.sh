#!/usr/bin/env bash
# Build the SPANK plugin against the <slurm/spank.h> of several Slurm releases, from a clone of
# SchedMD/slurm (its headers are not committed here):
#
#   bash spank-plugin/header-matrix.sh /path/to/slurm.git [TAG...]
#
# Default tags: the first release of each series from 23.02 to 26.05. slurm_version.h is made
# from slurm_version.h.in as Slurm's configure makes it (the version of the tag). Prints one
# line per tag, "TAG VERSION: built" or "TAG VERSION: FAILED" (with the compiler's last lines),
# and exits non-zero when one failed. The builds share target/header-matrix.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=${1:?usage: header-matrix.sh SLURM_GIT_DIR [TAG...]}
shift
tags=("$@")
[ ${#tags[@]} -gt 0 ] || tags=(slurm-23-02-0-1 slurm-23-11-0-1 slurm-24-05-0-1 slurm-24-11-0-1
                              slurm-25-05-0-1 slurm-25-11-0-1 slurm-26-05-0-1)
export PATH="$HOME/.cargo/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
for tag in "${tags[@]}"; do
    inc=$work/$tag
    mkdir -p "$inc"
    if ! git --git-dir="$src" archive "$tag" slurm | tar -x -C "$inc"; then
        echo "$tag: no such tag in $src"; failed=1; continue
    fi
    IFS=- read -r _ major minor micro _ <<< "$tag"
    number=$(printf '0x%02x%02x%02x' "$((10#$major))" "$((10#$minor))" "$((10#$micro))")
    version="$major.$minor.$micro"
    sed -e "s/^#undef SLURM_VERSION_NUMBER$/#define SLURM_VERSION_NUMBER $number/" \
        -e "/^#define SLURM_VERSION_NUMBER/a #define SLURM_VERSION_STRING \"$version\"" \
        "$inc/slurm/slurm_version.h.in" > "$inc/slurm/slurm_version.h"
    if (cd "$here" && SLURM_INCLUDE_DIR="$inc" CARGO_TARGET_DIR="$here/target/header-matrix" \
            cargo build -q -p spank-berth) > "$work/log" 2>&1; then
        echo "$tag $version: built"
    else
        echo "$tag $version: FAILED"; tail -15 "$work/log" | sed 's/^/    /'; failed=1
    fi
done
exit $failed
