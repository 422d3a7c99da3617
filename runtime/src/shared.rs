//! One container per node per job (step), shared by every task of it on the node: the first
//! task to arrive creates a detached holder, later ones join it.
//!
//! Used by scheduler frontends that have no single per-node process of their own to hold the
//! container (TORQUE's `$job_starter`, an rsh agent; the Slurm plugin may reuse it too).
//! Concurrent starters on one node are serialised by a `flock` on `<holders>/.<name>.lock`, so
//! exactly one of them creates the holder and the others wait for it to be ready.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::ForkResult;

use crate::config::Config;
use crate::container::{self, Joined, Lifetime};
use crate::error::{Error, Result};
use crate::plan::Plan;

/// The lock file guarding creation of holder `name`.
pub fn lock_path(cfg: &Config, uid: u32, name: &str) -> PathBuf {
    container::holders_dir(cfg, uid).join(format!(".{name}.lock"))
}

/// How [`join_or_create`] got into the container.
pub struct Shared {
    pub joined: Joined,
    /// This call started the holder.
    pub created: bool,
}

/// Join holder `name` if it runs on this node, else start it (detached: it outlives the
/// caller, for its `lifetime`) from the plan `make_plan` returns, then join it.
///
/// `make_plan` is only called when the holder has to be created, so joiners never read the
/// image. `image` (absolute) is compared with a running holder's: a job cannot silently get
/// another image than the one it asked for. Must be called single-threaded (it forks and joins
/// namespaces); on return this process is inside the container, cwd `/`.
pub fn join_or_create(
    cfg: &Config,
    uid: u32,
    name: &str,
    image: &Path,
    make_plan: impl FnOnce() -> Result<(Plan, bool)>,
    lifetime: Lifetime,
) -> Result<Shared> {
    if !container::valid_holder_name(name) {
        return Err(Error::request(
            format!("container name {name:?}"),
            "is not a valid holder name",
            "letters, digits and . _ - + @ only",
        ));
    }
    container::ensure_state_dir(&cfg.state_dir_for(uid), uid)?;
    let dir = container::holders_dir(cfg, uid);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
    let lock_file = lock_path(cfg, uid, name);
    let lock = lock_exclusive(&lock_file)?;

    let mut created = false;
    let state = match container::find_holder(cfg, uid, name) {
        Ok(st) => st,
        Err(_) => {
            let started = make_plan()
                .and_then(|(plan, cleanenv)| spawn_holder(&plan, cleanenv, name, lock.as_raw_fd(), lifetime));
            if let Err(e) = started {
                // Nothing is left behind; waiters holding the unlinked lock notice and retry.
                let _ = std::fs::remove_file(&lock_file);
                return Err(e);
            }
            created = true;
            container::find_holder(cfg, uid, name)?
        }
    };
    if state.image != image {
        return Err(Error::request(
            format!("container {name}"),
            format!("already runs image {} on this node, not {}", state.image.display(), image.display()),
            "one job uses one image on a node; use the same CONTAINER for every task of the job",
        ));
    }
    // Entered before the lock goes: a holder kept warm stops only when it can take the lock
    // and finds nobody inside.
    let joined = container::join_in_process(cfg, uid, name)?;
    drop(lock);
    Ok(Shared { joined, created })
}

/// Take the lock at `path`, making sure the file we locked is still the one at `path` (it is
/// removed when creation fails, by a warm holder that stops, or by the epilogue).
fn lock_exclusive(path: &Path) -> Result<Flock<std::fs::File>> {
    for _ in 0..100 {
        if let Some(lock) = lock_at(path, FlockArg::LockExclusive)? {
            return Ok(lock);
        }
    }
    Err(Error::request(format!("lock {}", path.display()), "keeps being replaced", "remove it and try again"))
}

/// The lock at `path` if nobody holds it now.
pub(crate) fn try_lock(path: &Path) -> Option<Flock<std::fs::File>> {
    lock_at(path, FlockArg::LockExclusiveNonblock).ok().flatten()
}

/// One attempt: the lock, or None when the file was replaced meanwhile (or is busy, when
/// not blocking).
fn lock_at(path: &Path, how: FlockArg) -> Result<Option<Flock<std::fs::File>>> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("cannot open lock file", path, e))?;
    let lock = match Flock::lock(file, how) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(Error::sys("flock", path.display(), e)),
    };
    let locked = lock.metadata().map(|m| (m.dev(), m.ino())).ok();
    let current = std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    Ok((locked.is_some() && locked == current).then_some(lock))
}

/// Start a detached holder for `plan` and wait until it is ready (or report why it failed).
fn spawn_holder(plan: &Plan, cleanenv: bool, name: &str, lock_fd: i32, lifetime: Lifetime) -> Result<()> {
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", "holder", e))?;
    // SAFETY: callers are single-threaded (documented on `join_or_create`), so the child may
    // run arbitrary code before it exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork", "holder", e))? {
        ForkResult::Child => {
            drop(rd);
            let _ = nix::unistd::close(lock_fd);
            let _ = nix::unistd::setsid();
            // SAFETY: still single-threaded (we are the forked child of a single-threaded process).
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => {
                    let code = run_holder(plan, cleanenv, name, wr, lifetime);
                    // SAFETY: leaving the forked process without running the parent's destructors.
                    unsafe { libc::_exit(code) }
                }
                Ok(ForkResult::Parent { .. }) => {
                    // SAFETY: as above.
                    unsafe { libc::_exit(0) }
                }
                Err(e) => {
                    let mut w = std::fs::File::from(wr);
                    let _ = writeln!(w, "fork: {e}");
                    // SAFETY: as above.
                    unsafe { libc::_exit(1) }
                }
            }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut r = std::fs::File::from(rd);
            let line = read_line(&mut r);
            if line == "ready" {
                Ok(())
            } else if line.is_empty() {
                Err(Error::request(
                    format!("container {name}"),
                    "the holder ended while setting the container up",
                    "run `berth exec IMAGE true` by hand to see why",
                ))
            } else {
                Err(Error::request(format!("container {name}"), line, ""))
            }
        }
    }
}

/// In the detached grandchild: hold the container; report a set-up failure through `wr`.
fn run_holder(plan: &Plan, cleanenv: bool, name: &str, wr: OwnedFd, lifetime: Lifetime) -> i32 {
    // Named for `ps -o comm`/`top` (its command line is still the first starter's).
    let _ = nix::sys::prctl::set_name(c"berth-holder");
    // Nothing of the starter's but the ready pipe: a launcher waiting for EOF on its ranks'
    // output (MPICH's hydra) must not wait for the holder.
    crate::sys::process::close_fds_except(&[wr.as_raw_fd()]);
    // Keep no descriptor of the caller's (job output pipes, the terminal) open for days.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // An ignored SIGTERM (inherited from whoever started the task) would make `stop` wait
    // for its SIGKILL fallback: the holder must hear the signals that end it.
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        // SAFETY: restoring a default disposition installs no handler; we are single-threaded.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
    let errfd = match nix::fcntl::fcntl(wr.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) {
        // SAFETY: fcntl just returned this new descriptor; we own it.
        Ok(fd) => Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
        Err(_) => None,
    };
    // The first starter's program is what the others are about to run too (MPI ranks, a
    // loop of identical runs): read it ahead once.
    let warm = match &plan.action {
        crate::request::Action::Exec(argv) => argv.first().map(String::as_str),
        _ => None,
    };
    match container::hold(plan, cleanenv, name, Some(wr), lifetime, warm) {
        Ok(code) => code,
        Err(e) => {
            if let Some(fd) = errfd {
                let mut f = std::fs::File::from(fd);
                let _ = writeln!(f, "{}", e.to_string().replace('\n', " "));
            }
            1
        }
    }
}

fn read_line(r: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while let Ok(1) = r.read(&mut b) {
        if b[0] == b'\n' {
            break;
        }
        out.push(b[0]);
        if out.len() > 64 * 1024 {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remove what a stopped shared container may leave: its lock file and a stale state file.
pub fn remove_leftovers(cfg: &Config, uid: u32, name: &str) {
    let _ = std::fs::remove_file(lock_path(cfg, uid, name));
    let dir = container::holders_dir(cfg, uid);
    for f in [format!("{name}.json"), format!(".{name}.json.tmp")] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}
