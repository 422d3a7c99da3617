#!/bin/sh
# Make a small Open MPI directory image from this host's Open MPI (Debian openmpi-bin,
# libopenmpi-dev, busybox-static), for the gated MPI test when no image built from
# defs/openmpi.def is at hand:
#   sh tests/pbs/make-mpi-image.sh /tmp/mpiroot
#   BERTH_TEST_MPI_IMAGE=/tmp/mpiroot BERTH_TEST_MPI_PROGRAM=/usr/bin/mpi_allreduce \
#       cargo test -p berth-pbs --test pbs mpi -- --nocapture
# It holds busybox (sh, sed...), mpirun/orted with their plugins and libraries (ldd closure),
# and mpi_allreduce (2+ ranks: MPI_Allreduce of the ranks, exits 1 on a wrong sum).
set -eu
R=${1:?usage: make-mpi-image.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$R"
mkdir -p "$R/bin" "$R/usr/bin" "$R/etc" "$R/tmp" "$R/usr/lib/x86_64-linux-gnu" "$R/usr/share"
# busybox lists itself among its applets (Debian 12): skip that name, never link the binary to itself.
for a in $(busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
cp /bin/busybox "$R/bin/busybox"
M=/usr/lib/x86_64-linux-gnu
cp -a $M/openmpi $M/pmix2 "$R$M/"
cp -a /usr/share/openmpi "$R/usr/share/"
[ -d /etc/openmpi ] && cp -a /etc/openmpi "$R/etc/"
cp -L /usr/bin/mpirun "$R/usr/bin/mpirun"
cp /usr/bin/orted "$R/usr/bin/orted"
mpicc -O2 -o "$R/usr/bin/mpi_allreduce" "$here/mpi_allreduce.c"
for f in "$R/usr/bin/mpirun" "$R/usr/bin/orted" "$R/usr/bin/mpi_allreduce" $(find $M/openmpi $M/pmix2 -name '*.so*' -type f); do
    ldd "$f" 2>/dev/null | awk '/=>/ {print $3} /ld-linux/ {print $1}'
done | sort -u | grep '^/' | while read -r l; do
    mkdir -p "$R$(dirname "$l")"
    cp -L "$l" "$R$(dirname "$l")/"
done
printf 'NAME="berth-openmpi-test"\n' > "$R/etc/os-release"
printf 'root:x:0:0::/root:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"
chmod -R a+rX "$R"
echo "made $R ($(du -sh "$R" | cut -f1))"
