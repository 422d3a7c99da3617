//! The holder protocol: one process per node and job step sets a container up and keeps it,
//! so that every task of the step joins the same namespaces (shared-memory transports between
//! MPI ranks need that; one user namespace per rank breaks them).
//!
//! This module owns every part of it: the [`Spec`] a front end hands a holder, how a holder is
//! started ([`spawn`], the one place that starts one: [`Spawn::Fork`] from a single-threaded
//! starter, [`Spawn::Exec`] of `berth holder --spec-stdin --ready-fd 3` from a process that
//! cannot fork one, slurmstepd), the ready handshake (`wait_ready`, read by both), the state
//! record joiners find it by (`<state_dir>/holders/NAME.json`, spelled only in [`record_path`]),
//! who is inside ([`members`]), and [`stop`].
//!
//! Concurrent starters on one node are serialised by a `flock` on `<holders>/.<name>.lock`, so
//! exactly one of them creates the holder and the others wait for it to be ready.
#![warn(missing_docs)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::ForkResult;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::container::{self, ensure_state_dir, Joined};
use crate::error::{Error, Result};
use crate::plan::{EnvPlan, Plan};
use crate::request::Request;
use crate::sys::proc;
pub use crate::sys::proc::start_time;
use crate::sys::process;

/// What a holder records so joiners can find and verify it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderState {
    /// The holder's name.
    pub name: String,
    /// The holder process.
    pub pid: i32,
    /// Process start time (clock ticks since boot), guards against pid reuse.
    pub start_time: u64,
    /// Inode of the container's user namespace (`/proc/PID/ns/user`).
    pub user_ns: u64,
    /// Inode of the container's mount namespace (`/proc/PID/ns/mnt`).
    pub mnt_ns: u64,
    /// Inode of the PID namespace the holder runs in (`/proc/PID/ns/pid`; 0 in records
    /// written before it was kept). `pid` and `start_time` mean something only there.
    #[serde(default)]
    pub pid_ns: u64,
    /// The image file (absolute) the container runs.
    pub image: PathBuf,
    /// The environment rules of the holder's plan, which joiners apply to their own.
    pub(crate) env: EnvPlan,
    /// Whether the request asked for `--cleanenv`.
    pub cleanenv: bool,
    /// Working directory candidates, in order.
    pub workdir: Vec<PathBuf>,
    /// The first candidate was asked for explicitly and must exist.
    pub workdir_required: bool,
    /// The kept writable layer the container has mounted (`--overlay DIR`, a Slurm named
    /// container's directory), so that a step asking for that named container finds the
    /// running one ([`find_holding`]) instead of mounting the layer a second time.
    #[serde(default)]
    pub overlay: Option<PathBuf>,
}

/// Whether `name` may name a holder (it becomes a file name in the state directory).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
}

/// What a front end hands a holder: everything it needs to set the container up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The name joiners use (see [`valid_name`]).
    pub name: String,
    /// The container, as any front end asks for one (its action is not run: tasks join).
    pub request: Request,
    /// The program the first tasks will run, read into the page cache while they start.
    /// Empty: the shell a shell action would run in the image (a job's batch shell).
    pub warm: Option<String>,
    /// Set when root starts the holder (a scheduler's root context): the user the container
    /// is for. The image is mounted with the kernel driver when the site allows it, then the
    /// holder becomes that user for good before anything the user controls is used.
    pub user: Option<u32>,
}

/// The descriptor on which a holder started by [`Spawn::Exec`] writes its ready line.
const READY_FD: i32 = 3;

/// The arguments (after the `berth` program) that start a holder which reads its [`Spec`] as
/// JSON on stdin and reports on [`READY_FD`].
fn command_args() -> Vec<String> {
    ["holder", "--spec-stdin", "--ready-fd", &READY_FD.to_string()].map(String::from).to_vec()
}

/// The spec as the holder reads it on stdin.
fn encode_spec(spec: &Spec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

/// Read a [`Spec`] as [`Spawn::Exec`] writes it on a holder's stdin (JSON).
pub fn decode_spec(mut r: impl Read) -> Result<Spec> {
    let mut text = String::new();
    r.read_to_string(&mut text)
        .map_err(|e| Error::request("berth holder --spec-stdin", format!("cannot read the spec: {e}"), ""))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::request("berth holder --spec-stdin", format!("not a holder spec: {e}"), ""))
}

/// The directory of a user's holder records, in their state directory `state_dir`.
pub(crate) fn dir_in(state_dir: &Path) -> PathBuf {
    state_dir.join("holders")
}

/// The directory of `uid`'s holder records under the site configuration.
pub(crate) fn dir(cfg: &Config, uid: u32) -> PathBuf {
    dir_in(&cfg.state_dir_for(uid))
}

/// The file name of holder `name`'s record, and of the temporary file it is written through.
fn record_names(name: &str) -> (String, String) {
    (format!("{name}.json"), format!(".{name}.json.tmp"))
}

/// Where the record of holder `name` of user `uid` lives.
pub fn record_path(cfg: &Config, uid: u32, name: &str) -> PathBuf {
    dir(cfg, uid).join(record_names(name).0)
}

/// True when nothing of holder `name` of user `uid` exists on this node: no record, no lock,
/// no record being written. Only existence is looked at (no symlink followed, nothing opened),
/// so a root caller (the PBS epilogue) can skip the work for jobs that never used berth here.
pub fn nothing_left(cfg: &Config, uid: u32, name: &str) -> bool {
    let dir = dir(cfg, uid);
    let (record, tmp) = record_names(name);
    [record, tmp, lock_name(name)].iter().all(
        |f| matches!(std::fs::symlink_metadata(dir.join(f)), Err(e) if e.kind() == std::io::ErrorKind::NotFound),
    )
}

/// The lock file guarding creation of holder `name`.
fn lock_name(name: &str) -> String {
    format!(".{name}.lock")
}

fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::request(
            format!("container name {name:?}"),
            "may hold only letters, digits and . _ - + @, and must not start with '.'",
            "",
        ))
    }
}

/// Whether the holder of record `st` runs in this process's PID namespace, where its pid and
/// start time can be checked (records without the namespace are taken as from here).
fn in_this_pid_namespace(st: &HolderState) -> bool {
    st.pid_ns == 0 || proc::ns_inode("self", "pid").is_none_or(|here| here == st.pid_ns)
}

fn held_elsewhere(name: &str) -> Error {
    Error::request(
        format!("container {name}"),
        "is held from another PID namespace on this node (another job's or container's), where \
         berth cannot see or check it from here",
        "use another container name; `berth exec` keeps its warm containers apart per PID namespace",
    )
}

/// How long a holder keeps its container (besides until SIGTERM/SIGINT/SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Until `berth stop` or the scheduler's epilogue.
    UntilStopped,
    /// Until process `pid` ends: the MPI launcher whose ranks share the container.
    WhileRunning(i32),
    /// Until no process has been inside for this long: kept warm for the next identical run.
    UntilIdle(std::time::Duration),
}

/// Set up the container and keep it for its `lifetime`, so others can join it.
/// `ready` (a pipe) gets "ready\n" once joiners may come; set-up errors are returned.
/// `warm`: the program the first tasks will run, read ahead (see [`container::warm_in_background`]).
pub(crate) fn hold(
    plan: &Plan,
    cleanenv: bool,
    name: &str,
    ready: Option<OwnedFd>,
    lifetime: Lifetime,
    warm: Option<&str>,
) -> Result<i32> {
    let watch = match lifetime {
        Lifetime::WhileRunning(pid) => Some(process::pidfd(pid)?),
        _ => None,
    };
    check_name(name)?;
    ensure_state_dir(&plan.state_dir, plan.user.uid)?;
    let dir = dir_in(&plan.state_dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
    let (record, tmp) = record_names(name);
    if let Ok(text) = std::fs::read_to_string(dir.join(&record)) {
        if let Ok(old) = serde_json::from_str::<HolderState>(&text) {
            if !in_this_pid_namespace(&old) {
                return Err(held_elsewhere(name));
            }
            if proc::still_running(old.pid, old.start_time) {
                return Err(Error::request(
                    format!("container {name}"),
                    format!("already running (holder pid {})", old.pid),
                    format!(
                        "join it with `berth exec --join {name} ...` or stop it with `berth stop {name}`"
                    ),
                ));
            }
        }
    }
    // Kept open across pivot_root: the state file is written once the container is complete.
    let dirfd = std::fs::File::open(&dir).map_err(|e| Error::io("cannot open", &dir, e))?;
    // Read from the host's side, before the root changes.
    let slow_image = container::slow_to_decompress(&plan.image);
    let mut entered = container::enter(plan)?;
    let state = HolderState {
        name: name.to_string(),
        pid: std::process::id() as i32,
        start_time: proc::start_time("self").unwrap_or(0),
        user_ns: proc::ns_inode("self", "user").unwrap_or(0),
        mnt_ns: proc::ns_inode("self", "mnt").unwrap_or(0),
        pid_ns: proc::ns_inode("self", "pid").unwrap_or(0),
        image: plan.image.path.clone(),
        env: plan.env.clone(),
        cleanenv,
        workdir: plan.workdir.clone(),
        workdir_required: plan.workdir_required,
        overlay: plan.kept_layer().map(Path::to_path_buf),
    };
    let state_path = format!("/proc/self/fd/{}/{record}", dirfd.as_raw_fd());
    let tmp_path = format!("/proc/self/fd/{}/{tmp}", dirfd.as_raw_fd());
    std::fs::write(&tmp_path, serde_json::to_vec_pretty(&state).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp_path, &state_path))
        .map_err(|e| Error::io("cannot record container", &dir.join(&record), e))?;
    // The record as written; the holder lives only while it stays there (below).
    let record_id = |dirfd: &std::fs::File| {
        nix::sys::stat::fstatat(
            Some(dirfd.as_raw_fd()),
            record.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
    };
    let written = record_id(&dirfd);
    // The job's shell comes from the image the first time each job starts: paged in by
    // faults from a compressed image it costs several times one sequential read (tens of
    // milliseconds for bash), so it is read ahead while the starter joins.
    let shell = match warm {
        Some("") if !entered.fuse.is_empty() && slow_image => {
            container::action_argv(&crate::request::Action::Shell, &entered.meta, &entered.env)
                .ok()
                .and_then(|a| a.into_iter().next())
        }
        _ => None,
    };
    if let Some(program) = shell.as_deref().or(warm).filter(|p| !p.is_empty()) {
        container::warm_in_background(program, &entered.env, &entered.workdir);
    }
    if let Some(fd) = ready {
        signal_ready(fd);
    }
    let fuse_pids: Vec<i32> = entered.fuse.iter().map(|f| f.pid()).collect();
    // Kept from the moment the holder decides it is idle until its record is gone, so that
    // no joiner can find the record of a container that is going away.
    let lock_path = format!("/proc/self/fd/{}/{}", dirfd.as_raw_fd(), lock_name(name));
    let mut closing_lock = None;
    let mut idle_since: Option<std::time::Instant> = None;
    let mut no_longer_needed = || {
        // Nobody can join a holder without its record: one whose record (or whole state
        // directory) was removed, or replaced, would otherwise keep its container forever. It
        // ends once the processes still inside have: they run from its image (a cleaner of
        // old files in /tmp must not take a running job's image away).
        if record_id(&dirfd) != written {
            return members(&state).is_empty();
        }
        let Lifetime::UntilIdle(keep) = lifetime else { return false };
        if !members(&state).is_empty() {
            idle_since = None;
            return false;
        }
        if idle_since.get_or_insert_with(std::time::Instant::now).elapsed() < keep {
            return false;
        }
        // Joiners enter while holding this lock: once we hold it and nobody is inside, nobody
        // is about to be.
        match try_lock(Path::new(&lock_path)) {
            Some(lock) if members(&state).is_empty() => {
                closing_lock = Some(lock);
                true
            }
            _ => false,
        }
    };
    let period = Some(match lifetime {
        Lifetime::UntilIdle(keep) => {
            keep.clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(1))
        }
        _ => std::time::Duration::from_secs(1),
    });
    let stopped = process::wait_for_stop(
        |pid, _| fuse_pids.contains(&pid.as_raw()),
        watch,
        period.map(|p| (p, &mut no_longer_needed as &mut dyn FnMut() -> bool)),
    );
    // Not a record that replaced ours (a new holder of the same name).
    if record_id(&dirfd) == written {
        let _ = std::fs::remove_file(&state_path);
    }
    // The lock file of a holder that is not the scheduler's goes with it (the epilogue
    // removes those): waiting joiners notice it was replaced and start a new holder, and after
    // an MPI launcher ended no rank of it comes again.
    if lifetime != Lifetime::UntilStopped {
        let _ = std::fs::remove_file(&lock_path);
    }
    drop(closing_lock);
    crate::sys::real::stop_all(std::mem::take(&mut entered.fuse));
    match stopped? {
        Some(_) => Ok(0),
        None => Err(Error::image(&plan.image.path, "the FUSE server ended while the container was held", "")),
    }
}

/// Read and verify the state of holder `name`.
pub fn find(cfg: &Config, uid: u32, name: &str) -> Result<HolderState> {
    find_in(&dir(cfg, uid), name)
}

/// [`find`] in the holders directory `dir`.
fn find_in(dir: &Path, name: &str) -> Result<HolderState> {
    check_name(name)?;
    let path = dir.join(record_names(name).0);
    let gone = || {
        Error::request(
            format!("container {name}"),
            "is not running on this node",
            "start it with `berth holder --name NAME IMAGE` (the Slurm and PBS plugins do this per job step)",
        )
    };
    let text = std::fs::read_to_string(&path).map_err(|_| gone())?;
    let st: HolderState = serde_json::from_str(&text).map_err(|_| gone())?;
    // Its pid says nothing here: it may well be running. Removing its record would make it
    // stop under the processes inside (another job's, on a site with a PID namespace per job).
    if !in_this_pid_namespace(&st) {
        return Err(held_elsewhere(name));
    }
    if !proc::still_running(st.pid, st.start_time) {
        let _ = std::fs::remove_file(&path);
        return Err(gone());
    }
    Ok(st)
}

/// Processes inside the container's mount namespace other than the holder and the FUSE
/// server it owns.
pub fn members(st: &HolderState) -> Vec<i32> {
    members_in(st.pid, st.mnt_ns)
}

/// Processes in mount namespace `mnt_ns` (inode) other than `holder` and its children (the
/// FUSE servers it owns). Also once the holder has ended: the namespace lives on while a
/// process is inside.
pub fn members_in(holder: i32, mnt_ns: u64) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != holder && proc::ns_inode(pid, "mnt") == Some(mnt_ns))
        .filter(|&pid| proc::stat(pid).map(|s| s.ppid) != Some(holder))
        .collect()
}

/// The inode of namespace `ns` (`mnt`, `user`) of process `pid`, while it runs.
pub fn namespace_inode(pid: i32, ns: &str) -> Option<u64> {
    proc::ns_inode(pid, ns)
}

/// The running holder of user `uid` whose container has the kept writable layer `overlay`
/// mounted (a Slurm named container's directory), found by its record and verified: the
/// process it names runs with the recorded start time and namespaces. None when no holder has
/// it. As the user: the records are the user's own, and a record the user forged leads only
/// to the user's own processes (joining needs the user's rights in the namespaces).
pub fn find_holding(cfg: &Config, uid: u32, overlay: &Path) -> Option<HolderState> {
    let dir = dir(cfg, uid);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(String::from))
        .filter(|n| valid_name(n))
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let st = find_in(&dir, &name).ok()?;
        (st.name == name
            && st.overlay.as_deref() == Some(overlay)
            && namespace_inode(st.pid, "mnt") == Some(st.mnt_ns)
            && namespace_inode(st.pid, "user") == Some(st.user_ns))
        .then_some(st)
    })
}

/// End (SIGKILL) the processes of user `uid` in mount namespace `mnt_ns` of holder `holder`
/// (see [`members_in`]) and wait up to `wait` for them to be gone; how many were signalled.
/// For a scheduler's end of step, as root: processes of other steps that joined the step's
/// container would otherwise keep its writable layer mounted after the step released it, in
/// a container whose image is no longer served. Each process is signalled through a pidfd
/// taken before its namespace and owner are checked, so a pid reused meanwhile is never hit.
pub fn kill_members(holder: i32, mnt_ns: u64, uid: u32, wait: std::time::Duration) -> usize {
    let owner = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next()?.parse::<u32>().ok())
    };
    let mut signalled = 0;
    for pid in members_in(holder, mnt_ns) {
        let Ok(fd) = process::pidfd(pid) else { continue };
        if namespace_inode(pid, "mnt") != Some(mnt_ns) || owner(pid) != Some(uid) {
            continue;
        }
        // SAFETY: pidfd_send_signal takes a pidfd we own, a signal number, a null siginfo
        // (the kernel fills one in as for kill) and flags 0.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            signalled += 1;
        }
    }
    let deadline = std::time::Instant::now() + wait;
    while signalled > 0 && !members_in(holder, mnt_ns).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    signalled
}

/// Stop holder `name`: its remaining member processes first (they would only fail once the
/// image is unmounted), then the holder with SIGTERM, SIGKILL after `grace`.
pub fn stop(cfg: &Config, uid: u32, name: &str, grace: std::time::Duration) -> Result<()> {
    let st = find(cfg, uid, name)?;
    // A signal refused with EPERM means the process is not the user's (a record pointing at
    // someone else's pid): say so and leave the record, rather than report a stop that did
    // not happen. ESRCH (already gone) is what stopping wants.
    let refused = |pid: i32, e: nix::Error| {
        Error::request(
            format!("stop {name}"),
            format!("cannot signal process {pid}: {e}"),
            "the process is not yours (another user's, or running with other credentials); \
             ask its owner or an administrator to stop it",
        )
    };
    let signal = |pid: i32, sig| match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
        Err(e @ nix::Error::EPERM) => Err(refused(pid, e)),
        _ => Ok(()),
    };
    for pid in members(&st) {
        signal(pid, nix::sys::signal::Signal::SIGKILL)?;
    }
    let pid = nix::unistd::Pid::from_raw(st.pid);
    signal(st.pid, nix::sys::signal::Signal::SIGTERM)?;
    if !wait_gone(st.pid, st.start_time, grace) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        wait_gone(st.pid, st.start_time, grace);
    }
    let _ = std::fs::remove_file(record_path(cfg, uid, name));
    Ok(())
}

/// Wait at most `limit` for process `pid` (started at `start_time`) to end; true once it has.
/// A holder is no child of ours (it was detached): its pidfd says when it ends, the moment it
/// does, where polling `/proc` would add up to a whole poll period to every job's epilogue.
fn wait_gone(pid: i32, start_time: u64, limit: std::time::Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + limit;
    // Opened before the identity check: a pid reused after the check would otherwise give
    // the descriptor of a stranger, whose end we would wait for.
    let fd = process::pidfd(pid).ok();
    loop {
        if !proc::still_running(pid, start_time) {
            return true;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        match &fd {
            Some(fd) => {
                let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                let _ = poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], wait);
            }
            // Kernels before 5.3 have no pidfd_open.
            None => std::thread::sleep(left.min(std::time::Duration::from_millis(2))),
        }
    }
}

/// The lock file guarding creation of holder `name`.
pub(crate) fn lock_path(cfg: &Config, uid: u32, name: &str) -> PathBuf {
    dir(cfg, uid).join(lock_name(name))
}

/// Join holder `name` if it runs on this node, else start it (detached: it outlives the
/// caller, for its `lifetime`) from what `make` returns, then join it.
///
/// `make` (the request and its plan) is only called when the holder has to be created, so joiners never read the
/// image. `image` (absolute) is compared with a running holder's: a job cannot silently get
/// another image than the one it asked for. Must be called single-threaded (it forks and joins
/// namespaces); on return this process is inside the container, cwd `/`.
pub(crate) fn join_or_create(
    cfg: &Config,
    uid: u32,
    name: &str,
    image: &Path,
    make: impl FnOnce() -> Result<(Request, Plan)>,
    lifetime: Lifetime,
) -> Result<Joined> {
    if !valid_name(name) {
        return Err(Error::request(
            format!("container name {name:?}"),
            "is not a valid holder name",
            "letters, digits and . _ - + @ only",
        ));
    }
    ensure_state_dir(&cfg.state_dir_for(uid), uid)?;
    let dir = dir(cfg, uid);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
    let lock_file = lock_path(cfg, uid, name);
    let lock = lock_exclusive(&lock_file)?;

    let state = match find(cfg, uid, name) {
        Ok(st) => st,
        Err(_) => {
            let started = make().and_then(|(request, plan)| {
                // The first starter's program is what the others are about to run too (MPI
                // ranks, a loop of identical runs): read it ahead once.
                let warm = match &plan.action {
                    crate::request::Action::Exec(argv) => argv.first().cloned(),
                    // A scheduler's job shell (PBS): found in the image once it is mounted.
                    crate::request::Action::Shell => Some(String::new()),
                    _ => None,
                };
                let spec = Spec { name: name.to_string(), request, warm, user: None };
                spawn(&spec, Spawn::Fork { plan: &plan, lifetime })
            });
            if let Err(e) = started {
                // Nothing is left behind; waiters holding the unlinked lock notice and retry.
                let _ = std::fs::remove_file(&lock_file);
                return Err(e);
            }
            find(cfg, uid, name)?
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
    Ok(joined)
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

/// Credentials a holder started by [`Spawn::Exec`] drops to, fully, before exec.
#[derive(Debug, Clone)]
pub struct Creds {
    /// The user id (real, effective and saved).
    pub uid: u32,
    /// The group id (real, effective and saved).
    pub gid: u32,
    /// The supplementary groups.
    pub groups: Vec<u32>,
}

/// Make `cmd` run as `creds` (real, effective and saved ids; from a root process, also one
/// whose effective uid is the user's, as slurmstepd's `user_init`), with no descriptor of the
/// caller's above stderr (slurmstepd's own, not close-on-exec, would otherwise reach a
/// process of the user's) and SIGKILL when the thread that started it ends: what a holder
/// started by [`Spawn::Exec`] gets, for the other programs a scheduler's root side runs as
/// the user.
pub fn run_as_user(cmd: &mut std::process::Command, creds: Creds) {
    process::run_as(cmd, Some((creds.uid, creds.gid, creds.groups)), -1, 2);
}

/// How [`spawn`] starts a holder process.
pub enum Spawn<'a> {
    /// Fork a detached holder (double fork, its own session) from this process, which must be
    /// single-threaded: the launcher's shared containers, berth-pbs. It holds `plan`, made from
    /// the spec's request, for `lifetime`.
    Fork {
        /// The container to set up.
        plan: &'a Plan,
        /// How long the holder keeps it.
        lifetime: Lifetime,
    },
    /// Exec `berth holder --spec-stdin --ready-fd 3`, the spec as JSON on its stdin: for a
    /// starter that cannot fork a holder that sets a container up itself (slurmstepd has
    /// threads and runs as root). The holder keeps its container until it is stopped.
    Exec(Exec<'a>),
}

/// What [`Spawn::Exec`] needs besides the spec.
pub struct Exec<'a> {
    /// The `berth` program to exec.
    pub berth: &'a Path,
    /// The site configuration the holder reads (`BERTH_CONFIG`); None: its default.
    pub config: Option<&'a Path>,
    /// The user the holder is for.
    pub creds: Creds,
    /// The holder's own environment (HOME, USER, ...; the container's comes from the image and
    /// the request), besides a standard PATH.
    pub env: Vec<(String, String)>,
    /// The holder's current directory, which it binds into the container (None: `/`).
    pub workdir: Option<&'a Path>,
    /// How long to wait for the ready line before the holder is killed.
    pub timeout: std::time::Duration,
    /// Start the holder as root with `spec.user` set (privileged mount mode: it becomes the
    /// user itself once the image is mounted) instead of as the user.
    pub as_root: bool,
}

/// A holder [`spawn`] started; it is ready for joiners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// The holder process.
    pub pid: i32,
    /// Its start time (field 22 of `/proc/PID/stat`), so a recycled pid is never signalled.
    pub start_time: Option<u64>,
}

/// Start a holder for `spec` the way `how` says and wait until it is ready, or say why it is
/// not. The one place a holder process is started; both ways read the same ready handshake
/// (`wait_ready`).
pub fn spawn(spec: &Spec, how: Spawn) -> Result<Spawned> {
    check_name(&spec.name)?;
    match how {
        Spawn::Fork { plan, lifetime } => fork_holder(spec, plan, lifetime),
        Spawn::Exec(exec) => exec_holder(spec, exec),
    }
}

/// [`Spawn::Fork`]: a detached holder, reporting a set-up failure on the ready pipe.
fn fork_holder(spec: &Spec, plan: &Plan, lifetime: Lifetime) -> Result<Spawned> {
    let name = spec.name.as_str();
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", "holder", e))?;
    // SAFETY: callers are single-threaded (documented on `Spawn::Fork`), so the child may run
    // arbitrary code before it exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork", "holder", e))? {
        ForkResult::Child => {
            drop(rd);
            let _ = nix::unistd::setsid();
            // SAFETY: still single-threaded (we are the forked child of a single-threaded process).
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => {
                    let code = run_holder(plan, spec, wr, lifetime);
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
            let line = match wait_ready(&std::fs::File::from(rd), None) {
                Handshake::Ready => {
                    let st = find_in(&dir_in(&plan.state_dir), name)?;
                    return Ok(Spawned { pid: st.pid, start_time: Some(st.start_time) });
                }
                Handshake::Ended(line) => line,
                Handshake::TimedOut => String::new(),
            };
            if line.is_empty() {
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

/// [`Spawn::Exec`]: `berth holder` as the user (or as root, which then becomes the user
/// itself). Errors are one message for people: the holder's own stderr when it has one.
fn exec_holder(spec: &Spec, exec: Exec) -> Result<Spawned> {
    use std::io::{Seek, SeekFrom};
    use std::process::{Command, Stdio};
    let failed = |msg: String| Error::Holder(msg);
    let berth = exec.berth;
    if !berth.is_file() {
        return Err(failed(format!(
            "the berth binary {} does not exist on this node; the administrator sets it with berth=PATH in plugstack.conf",
            berth.display()
        )));
    }
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed(format!("pipe: {e}")))?;
    let errfile = process::memfd("berth-holder-stderr").map_err(|e| failed(format!("memfd: {e}")))?;
    // The spec on stdin, from a file: the holder reads it whenever it starts, nobody waits.
    let mut spec_file = process::memfd("berth-holder-spec").map_err(|e| failed(format!("memfd: {e}")))?;
    let mut spec = spec.clone();
    spec.user = exec.as_root.then_some(exec.creds.uid);
    spec_file
        .write_all(encode_spec(&spec).as_bytes())
        .and_then(|_| spec_file.seek(SeekFrom::Start(0)).map(drop))
        .map_err(|e| failed(format!("memfd: {e}")))?;
    let mut cmd = Command::new(berth);
    cmd.args(command_args())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
        .envs(exec.env.iter().map(|(k, v)| (k, v)))
        // std changes directory in the child before `run_as` changes credentials, so with the
        // euid slurmstepd has in user_init: the user's own permissions apply.
        .current_dir(exec.workdir.unwrap_or(Path::new("/")))
        .stdin(spec_file)
        .stdout(Stdio::null())
        .stderr(errfile.try_clone().map_err(|e| failed(format!("memfd: {e}")))?);
    if let Some(c) = exec.config {
        cmd.env("BERTH_CONFIG", c);
    }
    let creds = (!exec.as_root).then(|| exec.creds.clone());
    process::run_as(&mut cmd, creds.map(|c| (c.uid, c.gid, c.groups)), ready_w.as_raw_fd(), READY_FD);
    let child = cmd.spawn().map_err(|e| failed(format!("cannot start {}: {e}", berth.display())))?;
    drop(ready_w);
    let pid = child.id() as i32;
    // The Child handle is dropped without wait: slurmstepd reaps children itself, and the
    // plugin's end of step reaps the holder by pid.
    drop(child);

    match wait_ready(&std::fs::File::from(ready_r), Some(exec.timeout)) {
        Handshake::Ready => return Ok(Spawned { pid, start_time: proc::start_time(pid) }),
        Handshake::TimedOut => {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            process::reap_within(pid, std::time::Duration::from_secs(2));
            return Err(failed(format!(
                "the container for {} was not ready after {}s{}",
                spec.request.image.display(),
                exec.timeout.as_secs(),
                stderr_tail(&errfile).map(|m| format!(": {m}")).unwrap_or_default()
            )));
        }
        Handshake::Ended(_) => {}
    }
    // EOF without "ready": the holder failed.
    let status = process::reap_within(pid, std::time::Duration::from_secs(5));
    let why = stderr_tail(&errfile).unwrap_or_else(|| match status {
        Some(s) if libc::WIFEXITED(s) => format!("berth holder exited with status {}", libc::WEXITSTATUS(s)),
        Some(s) if libc::WIFSIGNALED(s) => format!("berth holder was killed by signal {}", libc::WTERMSIG(s)),
        _ => "berth holder stopped before it was ready".into(),
    });
    Err(failed(why))
}

/// The holder's message for people: its last `berth: ...` line and the lines after it
/// (a message may carry a `hint:` line).
fn stderr_tail(f: &std::fs::File) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).ok()?;
    f.take(64 * 1024).read_to_string(&mut s).ok()?;
    let lines: Vec<&str> = s.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    let start = lines.iter().rposition(|l| l.starts_with("berth: ")).unwrap_or(lines.len().checked_sub(1)?);
    let msg = lines[start..].join("\n");
    Some(msg.strip_prefix("berth: ").unwrap_or(&msg).to_string())
}

/// In the detached grandchild: hold the container; report a set-up failure through `wr`.
fn run_holder(plan: &Plan, spec: &Spec, wr: OwnedFd, lifetime: Lifetime) -> i32 {
    // Named for `ps -o comm`/`top`, and its command line (else the first starter's) for `ps`.
    let _ = nix::sys::prctl::set_name(c"berth-holder");
    crate::sys::process::set_cmdline(&format!("berth-holder {}", spec.name));
    // Nothing of the starter's but the ready pipe (not the creation lock either): a launcher
    // waiting for EOF on its ranks' output (MPICH's hydra) must not wait for the holder.
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
    match hold(plan, spec.request.cleanenv, &spec.name, Some(wr), lifetime, spec.warm.as_deref()) {
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

/// The line a holder writes on its ready descriptor once joiners may come.
const READY_LINE: &[u8] = b"ready\n";

/// Tell the starter that joiners may come (the write end of the ready pipe).
fn signal_ready(fd: OwnedFd) {
    let _ = std::fs::File::from(fd).write_all(READY_LINE);
}

/// What the starter learnt on a holder's ready pipe.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// The container is set up; joiners may come.
    Ready,
    /// The pipe closed without the ready line: the holder ended. What it wrote instead (its
    /// error, when it reports errors there), possibly empty.
    Ended(String),
    /// Nothing came within the time allowed.
    TimedOut,
}

/// Wait (up to `timeout`, or for good) for the ready line on `r`, the read end of the pipe
/// whose write end the holder got.
pub(crate) fn wait_ready(r: &std::fs::File, timeout: Option<std::time::Duration>) -> Handshake {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    loop {
        let wait = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Handshake::TimedOut;
                }
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut [PollFd::new(r.as_fd(), PollFlags::POLLIN)], wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Handshake::Ended(String::new()),
            Ok(_) => {}
        }
        match (&*r).read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
        if got.starts_with(READY_LINE) {
            return Handshake::Ready;
        }
        if got.len() > 64 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    Handshake::Ended(text.lines().next().unwrap_or("").trim_end().to_string())
}

/// Remove the file at the absolute `path` without following a symlink anywhere on the way:
/// each directory is opened from the previous one with `O_NOFOLLOW|O_DIRECTORY`, and the
/// file is removed with `unlinkat` in the last. For root removing a record in a directory the
/// user owns (`slurm_spank_exit`): a `holders` that the user turned into a symlink to
/// somewhere else makes this fail instead of removing a file there.
pub fn remove_file_nofollow(path: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(file)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    let dir = crate::safedir::open_dir_nofollow(parent, |_, _| Ok(()))?;
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), file, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
    Ok(())
}

/// Remove what a stopped shared container may leave: its lock file and a stale state file.
pub fn remove_leftovers(cfg: &Config, uid: u32, name: &str) {
    let _ = std::fs::remove_file(lock_path(cfg, uid, name));
    let dir = dir(cfg, uid);
    let (record, tmp) = record_names(name);
    for f in [record, tmp] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Action, BindSpec};

    #[test]
    fn a_spec_travels_whole() {
        let mut request = Request::new("/i.sqsh".into(), Action::Shell);
        request.binds.push(BindSpec { src: "/a".into(), dst: "/b".into(), readonly: true });
        request.env.push(("A".into(), "b c".into()));
        request.mount_home = false;
        let spec =
            Spec { name: "slurm-1.0".into(), request, warm: Some("vasp_std".into()), user: Some(1000) };
        let back = decode_spec(encode_spec(&spec).as_bytes()).unwrap();
        assert_eq!(encode_spec(&back), encode_spec(&spec));
        assert_eq!(back.request.binds, spec.request.binds);
        assert!(!back.request.mount_home && back.user == Some(1000));
        let e = decode_spec(&b"--name x"[..]).unwrap_err().to_string();
        assert!(e.contains("not a holder spec"), "{e}");
    }

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (r.into(), w.into())
    }

    #[test]
    fn the_ready_handshake() {
        let (r, w) = pipe();
        signal_ready(w.into());
        assert_eq!(wait_ready(&r, Some(std::time::Duration::from_secs(5))), Handshake::Ready);

        let (r, mut w) = pipe();
        w.write_all(b"image /x: not found\nmore\n").unwrap();
        drop(w);
        assert_eq!(wait_ready(&r, None), Handshake::Ended("image /x: not found".into()));

        let (r, w) = pipe();
        let t0 = std::time::Instant::now();
        assert_eq!(wait_ready(&r, Some(std::time::Duration::from_millis(100))), Handshake::TimedOut);
        assert!(t0.elapsed() >= std::time::Duration::from_millis(100));
        drop(w);
        assert_eq!(wait_ready(&r, None), Handshake::Ended(String::new()));
    }

    /// `Spawn::Exec` (what slurmstepd uses): the program gets the spec as JSON on stdin and
    /// the ready descriptor as fd 3; a holder that fails is reported with its own message.
    #[test]
    fn exec_spawn_hands_over_the_spec_and_reads_the_handshake() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: starting a holder with credentials needs root");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let fake = |name: &str, body: &str| {
            let p = t.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let spec = Spec {
            name: "slurm-5.0".into(),
            request: Request::new("/i.sqsh".into(), crate::request::Action::Shell),
            warm: None,
            user: None,
        };
        let exec = |berth: &'static Path, timeout_ms| Exec {
            berth,
            config: None,
            creds: Creds { uid: 0, gid: 0, groups: vec![] },
            env: vec![("HOME".into(), "/root".into())],
            workdir: Some(t.path()),
            timeout: std::time::Duration::from_millis(timeout_ms),
            as_root: true,
        };
        let leak = |p: PathBuf| -> &'static Path { Box::leak(p.into_boxed_path()) };

        let ok =
            leak(fake("ok", r#"echo "$@ $HOME" > args; cat > spec.json; echo ready >&3; exec sleep 30"#));
        let got = spawn(&spec, Spawn::Exec(exec(ok, 5000))).unwrap();
        assert_eq!(got.start_time, proc::start_time(got.pid));
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(got.pid), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(got.pid), None);
        let args = std::fs::read_to_string(t.path().join("args")).unwrap();
        assert_eq!(args.trim(), "holder --spec-stdin --ready-fd 3 /root");
        let sent = decode_spec(std::fs::File::open(t.path().join("spec.json")).unwrap()).unwrap();
        assert_eq!(sent.name, "slurm-5.0");
        assert_eq!(sent.user, Some(0), "started as root: the spec names the user");

        let bad = leak(fake("bad", "echo noise >&2; echo 'berth: image /i.sqsh: not found' >&2; exit 1"));
        let e = spawn(&spec, Spawn::Exec(exec(bad, 5000))).unwrap_err();
        assert_eq!(e.to_string(), "image /i.sqsh: not found");

        let slow = leak(fake("slow", "exec sleep 30"));
        let e = spawn(&spec, Spawn::Exec(exec(slow, 100))).unwrap_err().to_string();
        assert!(e.contains("was not ready after 0s"), "{e}");

        let e = spawn(&spec, Spawn::Exec(exec(leak(t.path().join("missing")), 100))).unwrap_err().to_string();
        assert!(e.contains("does not exist on this node"), "{e}");
        let mut bad_name = spec.clone();
        bad_name.name = "../x".into();
        assert!(spawn(&bad_name, Spawn::Exec(exec(ok, 100))).is_err());
    }

    /// A step asking for a named container finds the holder that has its layer mounted, by a
    /// A record written in another PID namespace (a job with its own) names a pid that means
    /// nothing here: it is neither joined nor taken for dead, removed or replaced.
    #[test]
    fn a_holder_of_another_pid_namespace_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let holders = t.path().join("holders");
        std::fs::create_dir_all(&holders).unwrap();
        let here = namespace_inode(std::process::id() as i32, "pid").unwrap();
        let write = |name: &str, pid_ns: u64| {
            let rec = serde_json::json!({"name": name, "pid": i32::MAX, "start_time": 1, "user_ns": 1,
                "mnt_ns": 1, "pid_ns": pid_ns, "image": "/i.sqsh", "env": EnvPlan::default(),
                "cleanenv": false, "workdir": [], "workdir_required": false});
            std::fs::write(holders.join(format!("{name}.json")), rec.to_string()).unwrap();
        };
        write("theirs", here + 1);
        let e = find_in(&holders, "theirs").unwrap_err().to_string();
        assert!(e.contains("another PID namespace"), "{e}");
        assert!(holders.join("theirs.json").exists(), "the other namespace's record is kept");
        // The same record from this namespace is a dead holder's: removed.
        write("ours", here);
        assert!(find_in(&holders, "ours").unwrap_err().to_string().contains("is not running"));
        assert!(!holders.join("ours.json").exists());
    }

    /// record whose process runs with the recorded start time and namespaces; nothing else.
    #[test]
    fn the_holder_of_a_kept_layer_is_found_and_verified() {
        let t = tempfile::tempdir().unwrap();
        let cfg = Config { state_dir: t.path().join("st").display().to_string(), ..Config::default() };
        let uid = nix::unistd::getuid().as_raw();
        let holders = dir(&cfg, uid);
        std::fs::create_dir_all(&holders).unwrap();
        let me = std::process::id() as i32;
        let record = |name: &str, overlay: &str, pid: i32, mnt_ns: u64| {
            let st = HolderState {
                name: name.into(),
                pid,
                start_time: proc::start_time(pid).unwrap_or(1),
                user_ns: namespace_inode(me, "user").unwrap(),
                mnt_ns,
                pid_ns: namespace_inode(me, "pid").unwrap(),
                image: "/i.sqsh".into(),
                env: EnvPlan::default(),
                cleanenv: false,
                workdir: vec![],
                workdir_required: false,
                overlay: Some(overlay.into()),
            };
            std::fs::write(holders.join(format!("{name}.json")), serde_json::to_vec(&st).unwrap()).unwrap();
        };
        let mnt = namespace_inode(me, "mnt").unwrap();
        record("slurm-1.0", "/named/1/a", me, mnt);
        record("slurm-1.1", "/named/1/b", me, mnt + 1);
        record("slurm-1.2", "/named/1/c", i32::MAX, mnt);
        let found = find_holding(&cfg, uid, Path::new("/named/1/a")).unwrap();
        assert_eq!((found.name.as_str(), found.pid), ("slurm-1.0", me));
        assert!(find_holding(&cfg, uid, Path::new("/named/1/b")).is_none(), "namespace not the recorded one");
        assert!(find_holding(&cfg, uid, Path::new("/named/1/c")).is_none(), "process gone");
        assert!(!holders.join("slurm-1.2.json").exists(), "a dead holder's record is removed");
        assert!(find_holding(&cfg, uid, Path::new("/named/1/x")).is_none());
        // A record from before the field existed has no layer.
        let old = std::fs::read_to_string(holders.join("slurm-1.0.json"))
            .unwrap()
            .replace(r#","overlay":"/named/1/a""#, "");
        std::fs::write(holders.join("slurm-1.0.json"), old).unwrap();
        assert!(find_holding(&cfg, uid, Path::new("/named/1/a")).is_none());
        assert!(find(&cfg, uid, "slurm-1.0").unwrap().overlay.is_none());
    }

    #[test]
    fn records_are_removed_without_following_links() {
        let t = tempfile::tempdir().unwrap();
        let holders = t.path().join("holders");
        std::fs::create_dir(&holders).unwrap();
        std::fs::write(holders.join("a.json"), b"{}").unwrap();
        remove_file_nofollow(&holders.join("a.json")).unwrap();
        assert!(!holders.join("a.json").exists());
        // `holders` pointing elsewhere: nothing there is removed.
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("a.json"), b"{}").unwrap();
        std::fs::remove_dir(&holders).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &holders).unwrap();
        assert!(remove_file_nofollow(&holders.join("a.json")).is_err());
        assert!(elsewhere.join("a.json").exists());
        assert!(remove_file_nofollow(Path::new("relative/a.json")).is_err());
        assert!(remove_file_nofollow(&t.path().join("x/../a.json")).is_err());
    }
}
