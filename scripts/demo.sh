#!/usr/bin/env bash
# The main job on an embedded default: install, build, make a small demo image, and run a
# program inside it as an ordinary (unprivileged) user. Run as root on a Debian 12 machine.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/install-deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
(cd "$here" && cargo build --release -q)
install -m 0755 "$here/target/release/berth" /usr/local/bin/berth
ln -sf berth /usr/local/bin/run-singularity

demo=/var/tmp/berth-demo
rm -rf "$demo"; mkdir -p "$demo/root"/{bin,etc,.singularity.d/env}
cp /bin/busybox "$demo/root/bin/"
# Debian 12's busybox lists itself as an applet: linking that name would replace the binary
# with a link to itself ("too many symbolic links").
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$demo/root/bin/$a"; done
cat > "$demo/root/etc/os-release" <<'OS'
PRETTY_NAME="berth demo image (busybox)"
NAME="berth-demo"
OS
printf 'root:x:0:0::/root:/bin/sh\n' > "$demo/root/etc/passwd"
printf 'root:x:0:\n' > "$demo/root/etc/group"
cat > "$demo/root/.singularity.d/runscript" <<'RS'
#!/bin/sh
. /etc/os-release
echo "Hello from $PRETTY_NAME"
echo "I am $(id -un) (uid $(id -u)), working in $(pwd), args: $*"
RS
chmod 0755 "$demo/root/.singularity.d/runscript"
echo 'export DEMO_GREETING="set by the image"' > "$demo/root/.singularity.d/env/90-environment.sh"
mksquashfs "$demo/root" "$demo/demo.sqsh" -noappend -quiet -no-progress -all-root >/dev/null
chmod -R a+rX "$demo"

id -u berthdemo >/dev/null 2>&1 || useradd -m -s /bin/sh berthdemo
echo "== berth run demo.sqsh (as the unprivileged user berthdemo)"
runuser -u berthdemo -- sh -c "cd ~ && berth run $demo/demo.sqsh first 'second arg'"
echo "== berth exec demo.sqsh sh -c 'echo \$DEMO_GREETING; cat /etc/os-release'"
runuser -u berthdemo -- sh -c "cd ~ && berth exec $demo/demo.sqsh sh -c 'echo \$DEMO_GREETING; head -1 /etc/os-release'"
echo "== berth inspect demo.sqsh"
runuser -u berthdemo -- berth inspect "$demo/demo.sqsh" | head -8
