#!/usr/bin/env bash
# The packages as an administrator meets them (root, Debian): build the three .debs
# (packaging/build.sh --dev: the debug build the suite already has), install them with dpkg,
# check what they promise (man pages found and rendered by man, completions, conffiles, the
# version, the plugin's Slurm dependency), then remove and purge them and check that nothing
# is left: after `dpkg -r` only the conffiles (the plugstack snippet moved out of Slurm's way),
# after `dpkg -P` nothing of them in the file system, dpkg's database or the alternatives, and
# the system holds exactly the files it held before. Files the packages would replace that no
# package owns (a berth installed by hand, e.g. by scripts/demo.sh) are put aside and put back.
#
#   bash tests/packages.sh            # the packages alone (about 30 s with the debug build done)
#   SLURM=1 bash tests/packages.sh    # what CI runs (tests/run.sh): between install and removal,
#                                     # the Slurm suite against the installed packages
#                                     # (PACKAGED=1 tests/slurm/run.sh), and after `dpkg -r`
#                                     # an srun on that cluster, which must run without berth
# Ends with the time of each phase and "N passed, M failed".
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
command -v man >/dev/null || apt-get install -y -qq man-db >/dev/null

PASS=0 FAIL=0 times="" t=$SECONDS
# phase NAME: the time since the last phase ended, for the summary
phase() { times="$times${times:+, }$1 $((SECONDS - t)) s"; t=$SECONDS; }
ok()  { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
# logged LOG COMMAND...: run it, its output in LOG, shown when it fails
logged() { local log=$1; shift; "$@" > "$log" 2>&1 || { sed 's/^/    /' "$log"; return 1; }; }
finish() { echo "times: $times"; echo "$PASS passed, $FAIL failed"; [ $FAIL = 0 ]; exit $?; }
slurm_dir=${BERTH_SLURM_DIR:-/tmp/berth-slurm}

work=$(mktemp -d /tmp/berth-packages.XXXXXX)
debs=$(bash "$here/packaging/build.sh" --dev) || { bad "packaging/build.sh --dev"; finish; }
debs=$(echo "$debs" | grep '\.deb$')
[ "$(echo "$debs" | wc -l)" = 3 ] && ok "build.sh made 3 packages" || { bad "build.sh made: $debs"; finish; }
phase build
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

# What the packages touch: every path in them, and whatever their directories hold that is
# named after berth or its plugin (what a maintainer script may leave beside them:
# berth.conf.removed, a generated file). Only these are compared before and after, so other
# software installing files meanwhile (apt, a cron job, another test) does not count as the
# packages' leftovers.
for d in $debs; do dpkg-deb --fsys-tarfile "$d" | tar -t | sed 's|^\./|/|; s|/$||'; done | grep . | LC_ALL=C sort -u > "$work/paths"
snapshot() {
    local p
    while read -r p; do
        if [ -d "$p" ]; then echo "dir $p"; ls -A "$p" | grep -i -e berth -e spank | sed "s|^|  in $p: |"
        elif [ -e "$p" ] || [ -L "$p" ]; then echo "file $p"; fi
    done < "$work/paths"
}
snapshot > "$work/before"

excl=$(grep -rls '^path-exclude.*/usr/share/man' /etc/dpkg/dpkg.cfg.d/ 2>/dev/null | tr '\n' ' ')
[ -z "$excl" ] || echo "note: dpkg on this machine leaves out man pages ($excl): the man checks will fail"
check "dpkg -i the three packages" logged "$work/install.log" dpkg -i $debs
commit=$(git -C "$here" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
version=$(/usr/bin/berth --version 2>&1)
check "berth --version names the release and commit ($version)" \
    [ "$version" = "berth $(dpkg-query -W -f='${Version}' berth | sed 's/-[^-]*$//') (commit $commit)" ]
for page in berth berth-exec berth-run berth-shell berth-inspect berth.toml spank_berth berth-pbs; do
    check "man -w $page finds the installed page" sh -c "man -w $page 2>/dev/null | grep -q '^/usr/share/man/'"
done
check "man berth-exec renders, with --containall" sh -c "MANWIDTH=100 man berth-exec 2>/dev/null | grep -q -- '--containall'"
check "man 5 berth.toml renders, with state_dir" \
    sh -c "MANWIDTH=100 man 5 berth.toml 2>/dev/null | grep -q \"berth.toml - berth's site configuration\" && MANWIDTH=100 man 5 berth.toml | grep -q state_dir"
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
series=${slurm%.*}
next_series=$(printf '%s.%02d' "${series%.*}" $((10#${series#*.} + 1)))
check "berth-slurm depends on the Slurm release series it was built for ($series, from $slurm)" \
    sh -c "dpkg-query -W -f='\${Depends}' berth-slurm | grep -q 'slurm-wlm-basic-plugins (>= $series), slurm-wlm-basic-plugins (<< $next_series~)'"
check "berth-slurm ships berth's oci.conf and its static task runner" \
    sh -c "test -s /usr/share/berth-slurm/oci.conf && file -L /usr/libexec/berth/berth-oci-run | grep -q 'statically linked'"
check "berth config check reports the plugin's Slurm release" \
    sh -c "/usr/bin/berth config check 2>&1 | grep -q 'spank_berth.so built for Slurm $slurm'"
check "berth-pbs starter and rsh agent" test -x /usr/libexec/berth/berth-pbs -a -x /usr/libexec/berth/berth-pbs-rsh
check "berth-pbs is static" sh -c "file -L /usr/libexec/berth/berth-pbs | grep -q 'static'"

phase install+checks

# What the packages installed, for the checks after removal: files (not directories, which
# other packages may share) and conffiles.
dpkg -L $pkgs 2>/dev/null | while read -r f; do [ -d "$f" ] || echo "$f"; done | LC_ALL=C sort -u > "$work/files"
dpkg-query -W -f='${Conffiles}\n' $pkgs | awk 'NF >= 2 { print $1 }' | LC_ALL=C sort -u > "$work/conffiles"
snippet=/etc/slurm/plugstack.conf.d/berth.conf

if [ "${SLURM:-0}" = 1 ]; then
    echo "== the Slurm suite against the installed packages (PACKAGED=1 tests/slurm/run.sh)"
    PACKAGED=1 bash "$here/tests/slurm/run.sh" 2>&1 | tee "$work/slurm.log"
    rc=${PIPESTATUS[0]}
    check "Slurm suite with the packaged plugin and berth (rc=$rc; $(tail -1 "$work/slurm.log"))" \
        bash -c "[ $rc = 0 ] && grep -q '^ok   - (p) the step.s holder runs /usr/bin/berth' '$work/slurm.log'"
    phase slurm
fi

# Removal. The cluster (SLURM=1) is still up: with the plugin gone, jobs must run without it.
check "dpkg -r" logged "$work/remove.log" dpkg -r $pkgs
# dpkg keeps a removed package's record while it has conffiles (status rc, "config-files");
# berth-pbs has none, so it is not installed at once (rn).
removed_status() {
    local got; got=$(for p in $pkgs; do echo "$p $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)"; done)
    [[ "$(echo $got)" =~ ^"berth rc berth-slurm rc berth-pbs"( [a-z]n)?$ ]] || { echo "    dpkg status: $(echo $got)"; return 1; }
}
check "... dpkg status: berth and berth-slurm config-files, berth-pbs not installed" removed_status
gone_but_conffiles() { local f; while read -r f; do grep -qxF "$f" "$work/conffiles" || [ ! -e "$f" ] || return 1; done < "$work/files"; }
check "... every file the packages installed is gone but the conffiles ($(wc -l < "$work/files") files)" gone_but_conffiles
check "... /etc/berth/berth.toml kept" test -f /etc/berth/berth.toml
# A kept snippet would still load the `required` plugin that is gone: every srun would fail.
check "... the plugstack snippet is out of plugstack.conf.d/*.conf (kept as berth.conf.removed)" \
    bash -c "! ls /etc/slurm/plugstack.conf.d/*.conf 2>/dev/null | grep -qx '$snippet' && test -f '$snippet.removed'"
if [ "${SLURM:-0}" = 1 ]; then
    out=$(SLURM_CONF=$slurm_dir/etc/slurm.conf timeout -k 5 60 srun -N1 --chdir=/ cat /proc/sys/kernel/hostname 2>&1)
    help=$(SLURM_CONF=$slurm_dir/etc/slurm.conf srun --help 2>&1)
    check "... srun on the cluster still runs, without the plugin's options ($(echo $out))" \
        bash -c '[[ $1 =~ ^bnode[0-9]$ ]] && ! [[ $2 == *container-image* ]]' _ "$out" "$help"
    bash "$here/tests/slurm/cluster.sh" down >/dev/null 2>&1 || true
fi
snippet_back() {
    logged "$work/reinstall.log" dpkg -i $debs || return 1
    dpkg-deb --fsys-tarfile "$(echo "$debs" | grep /berth-slurm_)" | tar -xO ".$snippet" | cmp -s - "$snippet" \
        && ! test -e "$snippet.removed"
}
check "dpkg -i again after dpkg -r puts the snippet back as packaged" snippet_back
check "dpkg -r again" logged "$work/remove.log" dpkg -r $pkgs
check "dpkg -P" logged "$work/purge.log" dpkg -P $pkgs
check "... dpkg knows none of the packages any more" \
    bash -c "! dpkg-query -W -f='\${db:Status-Abbrev}\n' $pkgs 2>/dev/null | grep -qv '^[up]n'"
check "... no maintainer files of them in /var/lib/dpkg/info" \
    bash -c "! ls /var/lib/dpkg/info/ | grep -E '^(berth|berth-slurm|berth-pbs)(:[a-z0-9]+)?\.'"
check "... no alternatives naming berth" \
    bash -c "! update-alternatives --get-selections | grep -qi berth && ! grep -rqi berth /var/lib/dpkg/alternatives/"
all_gone() { local f; while read -r f; do [ ! -e "$f" ] || { echo "left: $f"; return 1; }; done < "$work/files"; }
check "... every file the packages installed is gone, conffiles too" all_gone
check "... no plugstack snippet (berth.conf, berth.conf.removed), no /usr/bin/berth, no plugin" \
    bash -c "! ls -d '$snippet'* /usr/bin/berth /usr/lib/*/slurm-wlm/spank_berth.so 2>/dev/null | grep -q ."
phase remove+purge
if [ -f "$work/dirs" ]; then
    while read -r mode user group d; do install -d -m "$mode" -o "$user" -g "$group" "$d"; done < "$work/dirs"
fi
snapshot > "$work/after"
if diff "$work/before" "$work/after" > "$work/diff"; then
    ok "after dpkg -P the system holds exactly the files it held before"
else
    bad "files differ after dpkg -P:"; cat "$work/diff"
fi
phase final-snapshot
finish
