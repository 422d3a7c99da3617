#!/usr/bin/env bash
# rpmbuild the RPMs of packaging/rpm/berth.spec from this tree (tracked and new files):
#   bash packaging/rpm/build.sh [release|dev]  -> target/packages/rpm/RPMS/<arch>/*.rpm
# The build requirements are EL package names, unknown to a Debian build host's rpm database,
# hence --nodeps; cargo's target directory is shared with the tree's own builds.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
export PATH="$HOME/.cargo/bin:$PATH"
profile=${1:-release}
command -v rpmbuild >/dev/null || { echo "rpm/build.sh: rpmbuild not found (Debian: apt-get install rpm)" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-$here/target}
top=$target/packages/rpm
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
export BERTH_GIT_COMMIT=${BERTH_GIT_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
rm -rf "$top"; mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}
git ls-files -z -c -o --exclude-standard | grep -zv '^target/' \
    | tar -czf "$top/SOURCES/berth-$version.tar.gz" --null -T - --transform "s|^|berth-$version/|"
rpmbuild -bb --nodeps --quiet \
    --define "_topdir $top" --define "cargo_target_dir $target" \
    --define "cargo_profile $profile" --define "berth_version $version" \
    packaging/rpm/berth.spec
find "$top/RPMS" -name '*.rpm' | sort
