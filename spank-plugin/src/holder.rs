//! Start and stop the per-node, per-step `berth holder` from slurmstepd. slurmstepd has
//! threads and runs as root, so it cannot fork a holder that sets the container up itself: it
//! execs `berth holder` with the holder's spec on stdin (the protocol is `berth_runtime::holder`'s).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_runtime::holder::{self as protocol, Ready, Spec};
use berth_runtime::sys::proc;

use crate::sys;

pub use crate::sys::Creds;

/// A running holder, as slurmstepd remembers it until `slurm_spank_exit`.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat, to never signal a recycled pid.
    pub start_time: Option<u64>,
    pub name: String,
    pub uid: u32,
}

/// What the holder needs besides its command line.
pub struct Launch<'a> {
    pub berth: &'a Path,
    pub config: Option<&'a Path>,
    pub creds: Creds,
    /// The job's HOME, USER, ... (the holder's own environment; the container's comes from
    /// the image and `--env`).
    pub env: Vec<(String, String)>,
    /// The holder's current directory, which it binds into the container (None: `/`).
    pub workdir: Option<&'a Path>,
    pub timeout: Duration,
    /// Start `berth holder --user UID` as root (privileged mount mode) instead of as the user.
    pub as_root: bool,
}

/// Start `berth holder` as the job's user (or as root, `launch.as_root`, which then becomes
/// the user itself) and wait for its ready line. Errors are one message for people (the
/// holder's own stderr line when it has one).
pub fn start(spec: &Spec, launch: Launch) -> Result<Running, String> {
    let berth = launch.berth;
    if !berth.is_file() {
        return Err(format!(
            "the berth binary {} does not exist on this node; the administrator sets it with berth=PATH in plugstack.conf",
            berth.display()
        ));
    }
    let (ready_r, ready_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let errfile = sys::memfd("berth-holder-stderr").map_err(|e| format!("memfd: {e}"))?;
    // The spec on stdin, from a file: the holder reads it whenever it starts, nobody waits.
    let mut spec_file = sys::memfd("berth-holder-spec").map_err(|e| format!("memfd: {e}"))?;
    let mut spec = spec.clone();
    spec.user = launch.as_root.then_some(launch.creds.uid);
    spec_file
        .write_all(protocol::encode_spec(&spec).as_bytes())
        .and_then(|_| spec_file.seek(SeekFrom::Start(0)).map(drop))
        .map_err(|e| format!("memfd: {e}"))?;
    let mut cmd = Command::new(berth);
    cmd.args(protocol::command_args())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        // std changes directory in the child before `run_as` changes credentials, so with the
        // euid slurmstepd has in user_init: the user's own permissions apply.
        .current_dir(launch.workdir.unwrap_or(Path::new("/")))
        .stdin(spec_file)
        .stdout(Stdio::null())
        .stderr(errfile.try_clone().map_err(|e| format!("memfd: {e}"))?);
    if let Some(c) = launch.config {
        cmd.env("BERTH_CONFIG", c);
    }
    sys::run_as(&mut cmd, (!launch.as_root).then(|| launch.creds.clone()), ready_w.as_raw_fd());
    let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", berth.display()))?;
    drop(ready_w);
    let pid = child.id() as i32;
    // The Child handle is dropped without wait: slurmstepd reaps children itself, and
    // slurm_spank_exit reaps the holder by pid.
    drop(child);

    match protocol::wait_ready(&std::fs::File::from(ready_r), Some(launch.timeout)) {
        Ready::Ready => {
            return Ok(Running {
                pid,
                start_time: proc::start_time(pid),
                name: spec.name.clone(),
                uid: launch.creds.uid,
            })
        }
        Ready::TimedOut => {
            sys::kill(pid, libc::SIGKILL);
            wait_gone(pid, Duration::from_secs(2));
            return Err(format!(
                "the container for {} was not ready after {}s{}",
                spec.request.image.display(),
                launch.timeout.as_secs(),
                stderr_tail(&errfile).map(|m| format!(": {m}")).unwrap_or_default()
            ));
        }
        Ready::Ended(_) => {}
    }
    // EOF without "ready": the holder failed.
    let status = wait_gone(pid, Duration::from_secs(5));
    let why = stderr_tail(&errfile).unwrap_or_else(|| match status {
        Some(s) if libc::WIFEXITED(s) => format!("berth holder exited with status {}", libc::WEXITSTATUS(s)),
        Some(s) if libc::WIFSIGNALED(s) => format!("berth holder was killed by signal {}", libc::WTERMSIG(s)),
        _ => "berth holder stopped before it was ready".into(),
    });
    Err(why)
}

/// The holder's message for people: its last `berth: ...` line and the lines after it
/// (a message may carry a `hint:` line).
fn stderr_tail(f: &std::fs::File) -> Option<String> {
    let mut f = f;
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).ok()?;
    f.take(64 * 1024).read_to_string(&mut s).ok()?;
    let lines: Vec<&str> = s.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    let start = lines.iter().rposition(|l| l.starts_with("berth: ")).unwrap_or(lines.len().checked_sub(1)?);
    let msg = lines[start..].join("\n");
    Some(msg.strip_prefix("berth: ").unwrap_or(&msg).to_string())
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
    let running = || h.start_time.is_some() && proc::start_time(h.pid) == h.start_time;
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

/// Where the holder keeps its state.
pub fn state_file(cfg: &berth_runtime::config::Config, uid: u32, name: &str) -> std::path::PathBuf {
    protocol::record_path(cfg, uid, name)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let gone = Running { pid: i32::MAX, start_time: None, name: "slurm-7.0".into(), uid: 0 };
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
