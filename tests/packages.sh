#!/usr/bin/env bash
# The packages as an administrator meets them (root, Debian): build the three .debs
# (packaging/build.sh --dev: the debug build the suite already has), install them with dpkg,
# check what they promise (man pages found by man, completions, conffiles, the version, the
# plugin's Slurm dependency), then remove and purge them and check that the system holds
# exactly the files it held before. Files the packages would replace that no package owns
# (a berth installed by hand, e.g. by scripts/demo.sh) are put aside and put back.
# SLURM=1: also run the Slurm suite (tests/slurm/run.sh) against the installed packages.
# Ends with "N passed, M failed".
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
command -v man >/dev/null || apt-get install -y -qq man-db >/dev/null

PASS=0 FAIL=0
ok()  { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
finish() { echo "$PASS passed, $FAIL failed"; [ $FAIL = 0 ]; exit $?; }

work=$(mktemp -d /tmp/berth-packages.XXXXXX)
debs=$(bash "$here/packaging/build.sh" --dev) || { bad "packaging/build.sh --dev"; finish; }
debs=$(echo "$debs" | grep '\.deb$')
[ "$(echo "$debs" | wc -l)" = 3 ] && ok "build.sh made 3 packages" || { bad "build.sh made: $debs"; finish; }
pkgs="berth berth-slurm berth-pbs"
dpkg -r $pkgs >/dev/null 2>&1; dpkg -P $pkgs >/dev/null 2>&1

# Unowned files in the packages' way, put back whatever happens.
aside=$work/aside
for d in $debs; do
    dpkg-deb --fsys-tarfile "$d" | tar -t | sed 's|^\./|/|' | while read -r f; do
        f=${f%/}
        [ -n "$f" ] && [ -e "$f" ] && ! dpkg -S "$f" >/dev/null 2>&1 || continue
        if [ -d "$f" ]; then # dpkg removes it when empty: made again after the purge
            stat -c '%a %U %G %n' "$f" >> "$work/dirs"
        else
            install -D -m 0600 /dev/null "$aside$f" && cp -a "$f" "$aside$f" && rm -f "$f"
        fi
    done
done
restore() { [ -d "$aside" ] && cp -a "$aside/." / ; rm -rf "$work"; }
trap restore EXIT

snapshot() {
    find /etc /usr /opt /var -xdev \( -path /var/lib/dpkg -o -path /var/cache -o -path /var/log \
        -o -path /var/tmp -o -path /var/lib/apt -o -path /var/spool \) -prune -o -print 2>/dev/null | LC_ALL=C sort
}
snapshot > "$work/before"

check "dpkg -i the three packages" dpkg -i $debs >"$work/install.log" 2>&1 || cat "$work/install.log"
commit=$(git -C "$here" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
version=$(/usr/bin/berth --version 2>&1)
check "berth --version names the release and commit ($version)" \
    [ "$version" = "berth $(dpkg-query -W -f='${Version}' berth | sed 's/-[^-]*$//') (commit $commit)" ]
for page in berth berth-exec berth-run berth-shell berth-inspect berth.toml spank_berth berth-pbs; do
    check "man -w $page finds the installed page" sh -c "man -w $page 2>/dev/null | grep -q '^/usr/share/man/'"
done
check "man berth-exec documents --containall" sh -c "MANWIDTH=100 man berth-exec 2>/dev/null | grep -q -- '--containall'"
check "bash completion for berth" bash -c '. /usr/share/bash-completion/completions/berth && complete -p berth >/dev/null'
check "zsh and fish completions" test -s /usr/share/zsh/vendor-completions/_berth -a -s /usr/share/fish/vendor_completions.d/berth.fish
check "/etc/berth/berth.toml is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' berth | grep -q /etc/berth/berth.toml"
check "the plugstack.conf.d snippet is a conffile" \
    sh -c "dpkg-query -W -f='\${Conffiles}' berth-slurm | grep -q /etc/slurm/plugstack.conf.d/berth.conf"
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
check "the snippet names the installed plugin and berth" \
    grep -q "^required /usr/lib/$multiarch/slurm-wlm/spank_berth.so berth=/usr/bin/berth" /etc/slurm/plugstack.conf.d/berth.conf
check "the plugin is where the snippet says" test -f "/usr/lib/$multiarch/slurm-wlm/spank_berth.so"
slurm=$(dpkg-query -W -f='${Version}' slurm-wlm-basic-plugins | sed 's/-[^-]*$//')
check "berth-slurm depends on the Slurm release it was built for ($slurm)" \
    sh -c "dpkg-query -W -f='\${Depends}' berth-slurm | grep -q 'slurm-wlm-basic-plugins (>= $slurm)'"
check "berth config check reports the plugin's Slurm release" \
    sh -c "/usr/bin/berth config check 2>&1 | grep -q 'spank_berth.so built for Slurm $slurm'"
check "berth-pbs starter and rsh agent" test -x /usr/libexec/berth/berth-pbs -a -x /usr/libexec/berth/berth-pbs-rsh
check "berth-pbs is static" sh -c "file -L /usr/libexec/berth/berth-pbs | grep -q 'static'"

if [ "${SLURM:-0}" = 1 ]; then
    echo "== the Slurm suite against the installed packages (PACKAGED=1 tests/slurm/run.sh)"
    if PACKAGED=1 bash "$here/tests/slurm/run.sh" > "$work/slurm.log" 2>&1; then
        ok "Slurm suite with the packaged plugin and berth: $(tail -1 "$work/slurm.log")"
    else
        cat "$work/slurm.log"; bad "Slurm suite with the packaged plugin and berth"
    fi
    bash "$here/tests/slurm/cluster.sh" down >/dev/null 2>&1 || true
fi

check "dpkg -r keeps only the conffiles" sh -c "dpkg -r $pkgs >/dev/null 2>&1 && test -f /etc/berth/berth.toml && ! test -e /usr/bin/berth"
check "dpkg -P" dpkg -P $pkgs >"$work/purge.log" 2>&1 || cat "$work/purge.log"
if [ -f "$work/dirs" ]; then
    while read -r mode user group d; do install -d -m "$mode" -o "$user" -g "$group" "$d"; done < "$work/dirs"
fi
snapshot > "$work/after"
if diff "$work/before" "$work/after" > "$work/diff"; then
    ok "after dpkg -P the system holds exactly the files it held before"
else
    bad "files differ after dpkg -P:"; cat "$work/diff"
fi
finish
