#!/usr/bin/env bash
# Install what berth needs to build, run and be tested on Debian 12. Idempotent; apt's own
# cache (/var/cache/apt/archives) makes repeated runs on one machine fast.
set -euo pipefail
pkgs=(
  # run time: FUSE SquashFS server, image tools; fuse-overlayfs for --overlay DIR on kernels
  # without unprivileged overlayfs (before Linux 5.11)
  squashfuse fuse3 squashfs-tools e2fsprogs fuse-overlayfs
  # build (the SPANK plugin is generated with bindgen from Slurm's own header)
  build-essential pkg-config libclang-dev libslurm-dev
  # Slurm test cluster: real munge, slurmctld, slurmd, PMIx
  slurm-wlm slurmctld slurmd slurm-client munge libpmix-dev
  # tests: static busybox and static libc for test images, peers for the benchmarks
  busybox-static libc6-dev hyperfine charliecloud-runtime
  # berth build: bootstrap agents
  debootstrap
  # host injection tests: real rdma-core libraries and a verbs tool
  ibverbs-utils ibverbs-providers librdmacm1 libibverbs1
  # MPI: the replace-model test, the MPI images and the Slurm tests
  mpich libmpich-dev openmpi-bin libopenmpi-dev
  util-linux procps iproute2
  # tests: the OpenPBS hook runs under python3 with a fake `pbs` module
  python3
  # berth pull trusts the system's CA store (ca-certificates); tests start a real registry,
  # push with skopeo, make the TLS CA with openssl and the htpasswd file; umoci for the pull
  # benchmark
  ca-certificates docker-registry skopeo openssl apache2-utils umoci
  # packages: dpkg-deb/dpkg-shlibdeps, rpmbuild, and man and file for checking them
  dpkg-dev rpm man-db file
)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || {
  echo "install-deps: no Rust toolchain: install one with rustup (Rust >= 1.75; Debian 12's cargo is too old)" >&2
  exit 1
}
# The suite checks formatting and lints first.
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >&2
fi
# Real systems let users open /dev/fuse; some minimal VMs ship it 0600.
[ -c /dev/fuse ] && chmod 0666 /dev/fuse
exit 0
