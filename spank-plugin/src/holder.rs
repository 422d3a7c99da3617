//! Start and stop the per-node, per-step holder from slurmstepd. slurmstepd has threads and
//! runs as root, so it cannot fork a holder that sets the container up itself: it starts one
//! with `berth_runtime::holder::spawn` and `Spawn::Exec` (the holder protocol is the runtime's),
//! and remembers it until the end of the step.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_runtime::holder::{self as protocol, Exec, Spawn, Spec};

use crate::sys;

/// A running holder, as slurmstepd remembers it until `slurm_spank_exit`.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat, to never signal a recycled pid.
    pub start_time: Option<u64>,
    pub name: String,
    pub uid: u32,
    /// Inode of its container's mount namespace, read when it started: the end of the step
    /// ends what other steps' tasks left in there, also when the holder itself has ended.
    pub mnt_ns: Option<u64>,
}

/// Start the holder for `spec` (as the job's user, or as root with `exec.as_root`, which then
/// becomes the user itself) and wait for its ready line. Errors are one message for people
/// (the holder's own stderr line when it has one).
pub fn start(spec: &Spec, exec: Exec) -> Result<Running, String> {
    let uid = exec.creds.uid;
    let spawned = protocol::spawn(spec, Spawn::Exec(exec)).map_err(|e| e.to_string())?;
    Ok(Running {
        pid: spawned.pid,
        start_time: spawned.start_time,
        name: spec.name.clone(),
        uid,
        mnt_ns: protocol::namespace_inode(spawned.pid, "mnt"),
    })
}

/// Reap our child `pid` within `timeout`; its wait status if we reaped it.
fn wait_gone(pid: i32, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = sys::try_reap(pid) {
            return (st >= 0).then_some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Stop the holder: SIGTERM, then SIGKILL after `grace`; reap it; remove its state file if
/// it left one. Runs in slurmstepd (root) in `slurm_spank_exit`.
pub fn stop(h: &Running, state_file: Option<&Path>, grace: Duration) {
    let running = || h.start_time.is_some() && protocol::start_time(h.pid) == h.start_time;
    if running() {
        sys::kill(h.pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        // The holder exits within a few milliseconds of SIGTERM; poll finely, since every
        // step's end waits on this. An exited, unreaped holder counts as gone.
        while running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if running() {
            sys::kill(h.pid, libc::SIGKILL);
        }
        wait_gone(h.pid, Duration::from_secs(2));
    } else if h.start_time.is_some() {
        // Ended before we asked (a zombie counts as gone): reap it if it is still ours.
        let _ = sys::try_reap(h.pid);
    }
    // The record sits in a directory the user owns: never follow a link of theirs as root.
    if let Some(f) = state_file {
        let _ = protocol::remove_file_nofollow(f);
    }
}

/// `/bin/sh -c script sh ARGS...` (arguments appended by the caller) run from root as user
/// `uid`, group `gid` and supplementary `groups` (none: only the user's own rights), with a
/// clean environment, from `/`, stdin closed and none of slurmstepd's other descriptors (as a
/// holder is started: `protocol::run_as_user`): what the plugin does in a user's tree as root.
fn user_shell(script: &str, uid: u32, gid: u32, groups: Vec<u32>) -> std::process::Command {
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", script, "sh"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(std::process::Stdio::null());
    protocol::run_as_user(&mut cmd, protocol::Creds { uid, gid, groups });
    cmd
}

/// Remove job directory `dir` of named containers and everything in it as user `uid` (group
/// `gid`, no supplementary groups), from root, with each container's writable layer, wherever
/// its `layer` file says (the site's `[named] layers_dir`, outside the state directory). A
/// child process drops to the user before it touches anything, so the kernel checks every
/// step with the user's rights and a link of theirs leads nowhere they could not go
/// themselves; root never reads the user's files (the `layer` records are read by the user's
/// shell: one that is no regular file is skipped, a read that blocks, on a FIFO swapped in
/// meanwhile, is given up after 5 seconds). Directories the user made unreadable (and
/// overlayfs' `work/work`, mode 0) are opened up first.
pub fn remove_as_user(uid: u32, gid: u32, dir: &Path) -> Result<(), String> {
    let out = user_shell(
        r#"for l in "$1"/*/layer; do
             [ -f "$l" ] && [ ! -L "$l" ] || continue
             p=$(timeout 5 head -n 1 -- "$l") || continue
             case $p in /?*) chmod -R u+rwx -- "$p" 2>/dev/null; rm -rf -- "$p" ;; esac
           done
           chmod -R u+rwx -- "$1" 2>/dev/null; exec rm -rf -- "$1""#,
        uid,
        gid,
        vec![],
    )
    .arg(dir)
    .output()
    .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Write `msg` (one line) on the stderr of each process in `pids` whose stderr is not already
/// told (a task's processes share one), as user `uid`/`gid`: a child drops to the user and
/// opens `/proc/PID/fd/2` for appending, so the kernel checks the user's own rights on what
/// that descriptor names (root reopening it could write where the user may not). Bounded in
/// time: a stderr nobody reads never holds up the caller.
pub fn tell(pids: &[i32], uid: u32, gid: u32, msg: &str) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let pids: Vec<String> = pids
        .iter()
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/fd/2")).is_ok_and(|m| seen.insert((m.dev(), m.ino())))
        })
        .map(|p| p.to_string())
        .collect();
    if pids.is_empty() {
        return;
    }
    let child = user_shell(
        r#"m=$1; shift; for p; do printf '%s\n' "$m" 2>/dev/null >> "/proc/$p/fd/2"; done"#,
        uid,
        gid,
        vec![],
    )
    .arg(msg)
    .args(&pids)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn();
    let Ok(mut child) = child else { return };
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `--container-save=DEST`: the container's root as the step leaves it (the image with the
/// step's changes) into the SquashFS file `dest`, while the holder still holds it. Runs as
/// the user (their uid, gid and groups) from root: `mksquashfs` reads the root through
/// `/proc/PID/root` of the user's own holder, writes a temporary file beside `dest` and renames
/// it into place, so `dest` is whole or untouched. Mounts inside the container (binds from the
/// host, `/proc`, `/dev`, the files berth generates) are left out: they are not the container's.
pub fn save_root(h: &Running, uid: u32, gid: u32, groups: Vec<u32>, dest: &Path) -> Result<(), String> {
    if protocol::start_time(h.pid) != h.start_time || h.start_time.is_none() {
        return Err("the container ended before it could be saved".into());
    }
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", h.pid))
        .map_err(|e| format!("cannot read the container's mounts: {e}"))?;
    let excluded = mount_points(&mountinfo);
    let name = dest.file_name().ok_or("not a file path")?.to_string_lossy().into_owned();
    let tmp = dest.with_file_name(format!(".{name}.berth-save.{}", std::process::id()));
    let mut cmd = user_shell(
        r#"src=$1 tmp=$2 dest=$3; shift 3; [ $# = 0 ] || set -- -e "$@"
           mksquashfs "$src" "$tmp" -noappend -quiet -no-progress "$@" >/dev/null || { rm -f -- "$tmp"; exit 1; }
           mv -f -- "$tmp" "$dest" || { rm -f -- "$tmp"; exit 1; }"#,
        uid,
        gid,
        groups,
    );
    cmd.arg(format!("/proc/{}/root/", h.pid)).arg(&tmp).arg(dest).args(&excluded);
    let out = cmd.output().map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("mksquashfs failed").trim().to_string())
    }
}

/// The mount points of a mountinfo table other than the root, relative to the root, in the
/// form `mksquashfs -e` takes (octal escapes decoded).
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    let unescape = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
            match (b[i], octal) {
                (b'\\', Some(d)) => {
                    out.push(d.iter().fold(0u8, |a, c| a.wrapping_mul(8) + (c - b'0')));
                    i += 4;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut v: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|p| p != "/")
        .map(|p| p.trim_start_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Where the holder keeps its state.
pub fn state_file(cfg: &berth_runtime::config::Config, uid: u32, name: &str) -> std::path::PathBuf {
    protocol::record_path(cfg, uid, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell the plugin runs as the user gets none of slurmstepd's descriptors (one that is
    /// not close-on-exec here, as slurmstepd leaves some open across its forks).
    #[test]
    fn user_shells_inherit_no_descriptor_of_slurmstepd() {
        use std::os::fd::AsRawFd;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let secret = tempfile::tempfile().unwrap();
        let fd = nix::unistd::dup(secret.as_raw_fd()).unwrap();
        let inherited = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_eq!(inherited & libc::FD_CLOEXEC, 0, "the test's descriptor crosses exec");
        let out =
            user_shell(r#"[ -e "/proc/$$/fd/$1" ] && echo open || echo closed; id -u"#, 65534, 65534, vec![])
                .arg(fd.to_string())
                .output()
                .unwrap();
        let _ = nix::unistd::close(fd);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "closed\n65534\n");
    }

    /// An ordinary user of this host, when the test runs as root (the removal runs as that user).
    fn unprivileged_user_as_root() -> Option<nix::unistd::User> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        ["berthuser", "berthtest", "nobody"]
            .iter()
            .find_map(|n| nix::unistd::User::from_name(n).ok().flatten())
    }

    /// The job epilog removes a job's named containers from root as the user: a user's link
    /// to root's files gets nothing removed there, and the user's own tree goes, locked
    /// directories included.
    #[test]
    fn remove_as_user_removes_only_what_the_user_could() {
        use std::os::unix::fs::PermissionsExt;
        let Some(user) = unprivileged_user_as_root() else { return };
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let roots = t.path().join("roots");
        std::fs::create_dir(&roots).unwrap();
        std::fs::write(roots.join("precious"), "root's").unwrap();
        let job = t.path().join("job");
        std::fs::create_dir_all(job.join("n1/upper/locked/deep")).unwrap();
        std::fs::write(job.join("n1/upper/locked/deep/f"), "x").unwrap();
        std::os::unix::fs::symlink(&roots, job.join("n1/upper/link")).unwrap();
        nix::unistd::chown(t.path(), Some(user.uid), Some(user.gid)).unwrap();
        for e in walk(&job) {
            std::os::unix::fs::lchown(&e, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
        }
        std::fs::set_permissions(job.join("n1/upper/locked"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        // A link named like the job's directory, pointing at root's: nothing of root's goes.
        let link = t.path().join("linkjob");
        std::os::unix::fs::symlink(&roots, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
        let _ = remove_as_user(user.uid.as_raw(), user.gid.as_raw(), &link);
        assert!(roots.join("precious").exists());
        remove_as_user(user.uid.as_raw(), user.gid.as_raw(), &job).unwrap();
        assert!(!job.exists());
        assert!(roots.join("precious").exists());
    }

    /// The end of the job removes each named container's writable layer where it lives
    /// (outside the state directory, `[named] layers_dir`), as the user: a `layer` record
    /// naming root's directory removes nothing there, and a FIFO in its place does not hang
    /// the epilog.
    #[test]
    fn remove_as_user_removes_the_layers_the_records_name() {
        use std::os::unix::fs::PermissionsExt;
        let Some(user) = unprivileged_user_as_root() else { return };
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let roots = t.path().join("roots");
        std::fs::create_dir(&roots).unwrap();
        std::fs::write(roots.join("precious"), "root's").unwrap();
        let scratch = t.path().join("scratch");
        let layer = scratch.join("berth-x-n1-0123");
        std::fs::create_dir_all(layer.join("upper/d")).unwrap();
        std::fs::create_dir_all(layer.join("work/work")).unwrap();
        std::fs::write(layer.join("upper/d/f"), "x").unwrap();
        let job = t.path().join("job");
        for n in ["n1", "n2", "n3"] {
            std::fs::create_dir_all(job.join(n)).unwrap();
        }
        std::fs::write(job.join("n1/layer"), format!("{}\n", layer.display())).unwrap();
        std::fs::write(job.join("n2/layer"), format!("{}\n", roots.display())).unwrap();
        nix::unistd::mkfifo(&job.join("n3/layer"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        nix::unistd::chown(t.path(), Some(user.uid), Some(user.gid)).unwrap();
        for e in walk(&job).into_iter().chain(walk(&scratch)) {
            std::os::unix::fs::lchown(&e, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(layer.join("work/work"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let t0 = std::time::Instant::now();
        remove_as_user(uid, gid, &job).unwrap();
        assert!(t0.elapsed() < std::time::Duration::from_secs(4), "{:?}", t0.elapsed());
        assert!(!job.exists() && !layer.exists());
        assert!(roots.join("precious").exists());
    }

    /// The end of a container's step tells the processes of other steps still inside why they
    /// end, on their own stderr, once per stderr, without waiting on it.
    #[test]
    fn tell_writes_once_on_each_stderr() {
        use std::io::Read;
        let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        let mut a = std::process::Command::new("sleep")
            .arg("30")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        tell(&[a.id() as i32, a.id() as i32, i32::MAX], uid, gid, "berth: why");
        let took = t0.elapsed();
        a.kill().unwrap();
        a.wait().unwrap();
        let mut got = String::new();
        a.stderr.take().unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "berth: why\n");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn mount_points_are_relative_and_unescaped() {
        let mi = "1 0 0:50 / / rw - overlay overlay rw\n\
                  2 1 0:51 / /proc rw - proc proc rw\n\
                  3 1 8:1 /home/u /home/u rw - ext4 /dev/vda rw\n\
                  4 1 8:1 /x /my\\040dir rw - ext4 /dev/vda rw\n\
                  5 1 0:52 /passwd /etc/passwd ro - tmpfs tmpfs rw\n\
                  6 2 0:51 / /proc rw - proc proc rw\n";
        assert_eq!(mount_points(mi), ["etc/passwd", "home/u", "my dir", "proc"]);
    }

    fn walk(p: &Path) -> Vec<std::path::PathBuf> {
        let mut v = vec![p.to_path_buf()];
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(p).unwrap() {
                v.extend(walk(&e.unwrap().path()));
            }
        }
        v
    }

    /// `slurm_spank_exit` runs this as root; the record's directory is the user's. A user who
    /// turns `holders` into a link to another directory gets nothing removed there.
    #[test]
    fn stop_removes_no_file_through_the_users_link() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("etc");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("slurm-7.0.json"), b"not the user's").unwrap();
        let state = t.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.join("holders")).unwrap();
        // A holder that already ended (no start time): only the record is left to remove.
        let gone =
            Running { pid: i32::MAX, start_time: None, name: "slurm-7.0".into(), uid: 0, mnt_ns: None };
        stop(&gone, Some(&state.join("holders/slurm-7.0.json")), Duration::from_millis(1));
        assert!(elsewhere.join("slurm-7.0.json").exists());
        // Its own record in a real directory goes.
        std::fs::remove_file(state.join("holders")).unwrap();
        std::fs::create_dir(state.join("holders")).unwrap();
        std::fs::write(state.join("holders/slurm-7.0.json"), b"{}").unwrap();
        stop(&gone, Some(&state.join("holders/slurm-7.0.json")), Duration::from_millis(1));
        assert!(!state.join("holders/slurm-7.0.json").exists());
    }
}
