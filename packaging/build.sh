#!/usr/bin/env bash
# Build the Debian packages (and, with --rpm, the RPMs) from this checkout:
#
#   bash packaging/build.sh              # release build -> target/packages/*.deb
#   bash packaging/build.sh --dev        # the debug build (fast; what the test suite installs)
#   bash packaging/build.sh --rpm        # also target/packages/rpm/*.rpm (needs rpmbuild)
#
# berth        /usr/bin/berth, /etc/berth/berth.toml (conffile), man pages, bash/zsh/fish completions
# berth-slurm  the SPANK plugin for the Slurm release it is built against, the plugstack.conf.d
#              snippet (conffile)
# berth-pbs    the TORQUE/OpenPBS starter (static), its rsh agent, mom_priv and hook files
#
# The trees are staged here and packed with dpkg-deb rather than cargo-deb (which installs from
# crates.io in about 2 minutes on a 2-core VM): cargo-deb reads Depends from static Cargo.toml
# metadata, while berth-slurm must depend on the Slurm release of the header it was compiled
# against, known only on the build host; dpkg-deb, dpkg-shlibdeps and this script need nothing
# beyond dpkg-dev.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export PATH="$HOME/.cargo/bin:$PATH"

profile=release rpm=0
for a in "$@"; do
    case $a in
        --dev) profile=dev ;;
        --rpm) rpm=1 ;;
        *) echo "build.sh: unknown option $a (use --dev, --rpm)" >&2; exit 2 ;;
    esac
done
dir=$([ $profile = dev ] && echo debug || echo release)
target=${CARGO_TARGET_DIR:-$here/target}
out=$target/packages
stage=$target/packages/stage
triple=x86_64-unknown-linux-gnu
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
arch=$(dpkg --print-architecture)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
debversion=$version-1
# The commit `berth --version` names: also right when building from an unpacked tarball
# inside another repository.
export BERTH_GIT_COMMIT=${BERTH_GIT_COMMIT:-$(git -C "$here" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}

echo "== cargo build --profile $profile (berth, spank-berth; berth-pbs static)"
cargo build -q --profile $profile -p berth -p spank-berth
# berth-pbs static: no dynamic loader acts on a job's environment (packaging/torque/README.md).
# --target keeps the flag off build scripts.
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile $profile -p berth-pbs --target $triple
berth=$target/$dir/berth
plugin=$target/$dir/libspank_berth.so
pbs=$target/$triple/$dir/berth-pbs

rm -rf "$stage"; mkdir -p "$stage" "$out"
rm -f "$out"/*.deb

# shlibdeps BINARY...: the Depends line for the libraries these ELF files link against.
shlibdeps() {
    local tmp; tmp=$(mktemp -d)
    mkdir "$tmp/debian"
    printf 'Source: berth\n\nPackage: berth\nArchitecture: any\n' > "$tmp/debian/control"
    (cd "$tmp" && dpkg-shlibdeps -O "$@" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
    rm -rf "$tmp"
}

# control PKG DEPENDS DESCRIPTION: DEBIAN/control, md5sums and the conffiles list for $stage/PKG.
control() {
    local pkg=$1 depends=$2 desc=$3 root=$stage/$1
    mkdir -p "$root/DEBIAN"
    {
        echo "Package: $pkg"
        echo "Version: $debversion"
        echo "Architecture: $arch"
        echo "Maintainer: berth developers <berth@localhost>"
        echo "Section: admin"
        echo "Priority: optional"
        echo "Homepage: https://github.com/berth-hpc/berth"
        echo "Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)"
        [ -n "$depends" ] && echo "Depends: $depends"
        echo "Description: $desc"
        sed 's/^$/./; s/^/ /' "$root/DEBIAN/description"
    } > "$root/DEBIAN/control"
    rm "$root/DEBIAN/description"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs -r md5sum) \
        > "$root/DEBIAN/md5sums"
    if [ -d "$root/etc" ]; then
        (cd "$root" && find etc -type f -printf '/%p\n' | LC_ALL=C sort) > "$root/DEBIAN/conffiles"
    fi
    chmod 0644 "$root/DEBIAN"/*
}

doc() { # PKG: copyright
    install -d "$stage/$1/usr/share/doc/$1" "$stage/$1/DEBIAN"
    {
        echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        echo "Upstream-Name: berth"
        echo
        echo "Files: *"
        echo "Copyright: berth developers"
        echo "License: Apache-2.0"
        echo " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0."
    } > "$stage/$1/usr/share/doc/$1/copyright"
}

man_gz() { # SRC... DIR: install compressed man pages
    local dest=${*: -1}
    install -d "$dest"
    for f in "${@:1:$#-1}"; do gzip -9n -c "$f" > "$dest/$(basename "$f").gz"; chmod 0644 "$dest/$(basename "$f").gz"; done
}

echo "== berth"
r=$stage/berth
install -D -m 0755 "$berth" "$r/usr/bin/berth"
strip --strip-unneeded "$r/usr/bin/berth"
install -D -m 0644 packaging/berth.toml "$r/etc/berth/berth.toml"
# Ubuntu 23.10+ restricts unprivileged user namespaces to programs an AppArmor profile allows.
install -D -m 0644 packaging/apparmor/berth "$r/etc/apparmor.d/berth"
gen=$stage/generated
"$berth" generate man "$gen/man"
"$berth" generate completions "$gen/completions"
man_gz "$gen"/man/*.1 "$r/usr/share/man/man1"
man_gz packaging/man/berth.toml.5 "$r/usr/share/man/man5"
install -D -m 0644 "$gen/completions/bash/berth" "$r/usr/share/bash-completion/completions/berth"
install -D -m 0644 "$gen/completions/zsh/_berth" "$r/usr/share/zsh/vendor-completions/_berth"
install -D -m 0644 "$gen/completions/fish/berth.fish" "$r/usr/share/fish/vendor_completions.d/berth.fish"
doc berth
cat > "$r/DEBIAN/description" <<'TXT'
run single-file container images as the user, standalone or under Slurm/PBS
berth runs SquashFS, SIF and Singularity images as the calling user in a user
namespace (`berth exec IMAGE COMMAND`), with the host's MPI fabric and NVIDIA
driver injected on request. Check a node with `berth config check`.
TXT
# libsquashfuse0: the image's server loads libsquashfuse_ll.so.0 with dlopen, which
# dpkg-shlibdeps cannot see.
control berth "$(shlibdeps -e"$r/usr/bin/berth"), squashfuse, libsquashfuse0" \
    "run single-file container images as the user, standalone or under Slurm/PBS"
# After control, which makes DEBIAN's files 0644. The profile is loaded where the kernel
# restricts user namespaces through AppArmor (its `userns` rule needs AppArmor 4); elsewhere
# it stays a file.
cat > "$r/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -e /proc/sys/kernel/apparmor_restrict_unprivileged_userns ] \
    && command -v apparmor_parser >/dev/null 2>&1 && aa-enabled --quiet 2>/dev/null; then
    apparmor_parser -r -T -W /etc/apparmor.d/berth \
        || echo "berth: loading /etc/apparmor.d/berth failed; unprivileged containers may be refused (berth config check)" >&2
fi
exit 0
SH
chmod 0755 "$r/DEBIAN/postinst"

echo "== berth-slurm"
# A SPANK plugin loads only on the Slurm release whose SLURM_VERSION_NUMBER it exports (the
# header's): the package depends on that upstream release (any Debian revision of it, since
# rebuilds for security fixes keep the number).
slurm_number=$(sed -n 's/^#define SLURM_VERSION_NUMBER \(0x[0-9a-fA-F]*\).*/\1/p' \
    "${SLURM_INCLUDE_DIR:-/usr/include}/slurm/slurm_version.h")
[ -n "$slurm_number" ] || { echo "build.sh: no SLURM_VERSION_NUMBER in slurm/slurm_version.h" >&2; exit 1; }
n=$((slurm_number))
slurm_release=$(printf '%d.%02d.%d' $((n >> 16)) $(((n >> 8) & 255)) $((n & 255)))
# Slurm checks a plugin's major.minor only (24.11 loads a plugin built on 24.11.4 as well as
# on 24.11.6): the package pins the release series, so point releases upgrade under it and a
# new series (which would refuse the plugin) waits for berth-slurm built against it.
slurm_series=$(printf '%d.%02d' $((n >> 16)) $(((n >> 8) & 255)))
slurm_next=$(printf '%d.%02d~' $((n >> 16)) $((((n >> 8) & 255) + 1)))
r=$stage/berth-slurm
install -D -m 0644 "$plugin" "$r/usr/lib/$multiarch/slurm-wlm/spank_berth.so"
strip --strip-unneeded "$r/usr/lib/$multiarch/slurm-wlm/spank_berth.so"
install -D -m 0644 packaging/plugstack.conf.d/berth.conf "$r/etc/slurm/plugstack.conf.d/berth.conf"
# Slurm 23.02 and later: the oci.conf that makes berth the runtime of Slurm's --container
# (the administrator installs it beside slurm.conf) and the static runner it starts each task
# with, inside images whose C library is not the host's.
install -D -m 0644 packaging/slurm/oci.conf "$r/usr/share/berth-slurm/oci.conf"
install -D -m 0644 packaging/slurm/berth-slurm.tmpfiles "$r/usr/lib/tmpfiles.d/berth-slurm.conf"
install -d "$r/usr/libexec/berth"
gcc -static -Os -Wall -Werror -o "$r/usr/libexec/berth/berth-oci-run" spank-plugin/oci-run.c
strip --strip-unneeded "$r/usr/libexec/berth/berth-oci-run"
chmod 0755 "$r/usr/libexec/berth/berth-oci-run"
man_gz packaging/man/spank_berth.8 "$r/usr/share/man/man8"
doc berth-slurm
cat > "$r/DEBIAN/description" <<TXT
Slurm SPANK plugin for berth: srun/sbatch --container=IMAGE
Every task of a step runs inside the image, one container per node and step.
Built for Slurm $slurm_release; Slurm loads a SPANK plugin only on the release
series it was built for ($slurm_series). On Slurm 23.02 and later, Slurm's own
--container needs /usr/share/berth-slurm/oci.conf installed beside slurm.conf.
TXT
control berth-slurm \
    "berth (= $debversion), slurm-wlm-basic-plugins (>= $slurm_series), slurm-wlm-basic-plugins (<< $slurm_next), $(shlibdeps -e"$r/usr/lib/$multiarch/slurm-wlm/spank_berth.so")" \
    "Slurm SPANK plugin for berth: srun/sbatch --container=IMAGE"
# The snippet loads the plugin `required`, and dpkg keeps conffiles until purge: a snippet left
# by `dpkg -r` would name a plugin that is gone and fail every srun and sbatch. postrm moves it
# out of plugstack.conf's `include plugstack.conf.d/*.conf` on remove (and deletes it on
# purge); preinst puts it back when the package is installed again, before dpkg looks at it.
conf=/etc/slurm/plugstack.conf.d/berth.conf
cat > "$r/DEBIAN/postrm" <<SH
#!/bin/sh
set -e
case "\$1" in
    remove) if [ -e $conf ]; then mv -f $conf $conf.removed; fi ;;
    purge) rm -f $conf.removed; rmdir /run/berth-oci 2>/dev/null || true ;;
esac
exit 0
SH
# /run/berth-oci (tmpfiles.d makes it at boot): now, for the oci.conf to work without a reboot.
cat > "$r/DEBIAN/postinst" <<SH
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/berth-slurm.conf 2>/dev/null || install -d -m 0755 -o root -g root /run/berth-oci
fi
exit 0
SH
cat > "$r/DEBIAN/preinst" <<SH
#!/bin/sh
set -e
case "\$1" in
    install|upgrade) if [ -e $conf.removed ] && [ ! -e $conf ]; then mv $conf.removed $conf; fi ;;
esac
exit 0
SH
chmod 0755 "$r/DEBIAN/postrm" "$r/DEBIAN/preinst" "$r/DEBIAN/postinst"

echo "== berth-pbs"
r=$stage/berth-pbs
install -D -m 0755 "$pbs" "$r/usr/libexec/berth/berth-pbs"
strip --strip-unneeded "$r/usr/libexec/berth/berth-pbs"
install -D -m 0755 packaging/torque/berth-pbs-rsh "$r/usr/libexec/berth/berth-pbs-rsh"
for f in torque/README.md torque/mom_priv-config torque/install.sh openpbs/README.md openpbs/berth_launch.py openpbs/berth_end.py; do
    install -D -m 0644 "packaging/$f" "$r/usr/share/berth-pbs/$f"
done
man_gz packaging/man/berth-pbs.8 "$r/usr/share/man/man8"
doc berth-pbs
cat > "$r/DEBIAN/description" <<'TXT'
TORQUE and OpenPBS support for berth: qsub -v CONTAINER=IMAGE
The job starter, prologue/epilogue and rsh agent that run a job's shell and every
TM task inside its image. Set-up: berth-pbs(8) and /usr/share/berth-pbs/.
TXT
control berth-pbs "squashfuse" "TORQUE and OpenPBS support for berth: qsub -v CONTAINER=IMAGE"

for p in berth berth-slurm berth-pbs; do
    dpkg-deb --root-owner-group -Zxz --build "$stage/$p" "$out/${p}_${debversion}_$arch.deb" >/dev/null
    echo "$out/${p}_${debversion}_$arch.deb"
done

if [ $rpm = 1 ]; then
    echo "== rpm"
    bash packaging/rpm/build.sh "$profile"
fi
