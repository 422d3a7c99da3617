//! Container lifecycle: set up (namespaces + plan), then run a program, hold the container for
//! others to join, or join one.
//!
//! One container per node per job step; tasks join it. A holder sets the container up once and
//! records how to find it; joiners `setns()` into its user and mount namespaces, so processes
//! of one step share namespaces (and so shared memory transports between MPI ranks work).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::env::{compose, Env};
use crate::error::{Error, Result};
use crate::metadata::{self, Metadata};
use crate::plan::{EnvPlan, HostFacts, Plan};
use crate::request::Action;
use crate::sys::process::{self, Ended};
use crate::sys::real::{FuseServer, RealSys};

/// A container set up in this process's namespaces, root already pivoted.
pub struct Entered {
    pub fuse: Option<FuseServer>,
    pub meta: Metadata,
    pub env: Env,
    pub workdir: PathBuf,
}

/// Make sure the per-user state directory exists, is ours and is private. It may live in a
/// world-writable place such as /tmp, so anything we did not create ourselves is refused.
pub fn ensure_state_dir(dir: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().recursive(false).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("cannot create", dir, e))?,
        Err(e) => return Err(Error::io("cannot create", dir, e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| Error::io("cannot stat", dir, e))?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(Error::Io {
            what: "unsafe state directory".into(),
            path: dir.to_path_buf(),
            source: std::io::Error::other(format!(
                "must be a directory owned by uid {uid} with mode 0700 (it is owned by {} with mode {:o})",
                m.uid(),
                m.mode() & 0o7777
            )),
            hint: "remove it, or set state_dir in berth.toml".into(),
        });
    }
    Ok(())
}

/// Set up the container of `plan` in this process: new namespaces, mounts, pivot_root.
pub fn enter(plan: &Plan) -> Result<Entered> {
    ensure_state_dir(&plan.state_dir, plan.user.uid)?;
    process::enter_user_and_mount_ns(plan.user.uid, plan.user.gid)?;
    let mut sys = RealSys::new(plan.user.uid, plan.user.gid);
    crate::apply::apply(plan, &mut sys)?;
    let meta = metadata::read(Path::new("/"));
    let env = crate::env::try_compose(&plan.env, &meta.env_files)?;
    let workdir = choose_workdir(&plan.workdir, plan.workdir_required)?;
    Ok(Entered { fuse: sys.fuse.take(), meta, env, workdir })
}

fn choose_workdir(candidates: &[PathBuf], required: bool) -> Result<PathBuf> {
    for (i, w) in candidates.iter().enumerate() {
        if w.is_dir() {
            return Ok(w.clone());
        }
        if required && i == 0 {
            return Err(Error::request(
                format!("workdir {}", w.display()),
                "does not exist in the container",
                "create it in the image or bind a host directory there (-B host_dir:/path)",
            ));
        }
    }
    Ok(PathBuf::from("/"))
}

/// The argv an action runs, given the image's metadata.
pub fn action_argv(action: &Action, meta: &Metadata, env: &Env) -> Result<Vec<String>> {
    Ok(match action {
        Action::Exec(argv) => argv.clone(),
        Action::Run(args) => {
            if meta.runscript.is_some() {
                let mut v = vec!["/bin/sh".to_string(), format!("/{}/runscript", metadata::META_DIR)];
                v.extend(args.iter().cloned());
                v
            } else {
                return Err(Error::request(
                    "berth run",
                    "the image has no runscript",
                    "use `berth exec IMAGE COMMAND` to run a program from it",
                ));
            }
        }
        Action::Shell => {
            let shell = env
                .get("SHELL")
                .filter(|s| Path::new(s).exists())
                .map(str::to_string)
                .or_else(|| {
                    ["/bin/bash", "/bin/sh"].iter().find(|s| Path::new(s).exists()).map(|s| s.to_string())
                })
                .ok_or_else(|| {
                    Error::request(
                        "berth shell",
                        "the image has no /bin/sh",
                        "use `berth exec` with a program it has",
                    )
                })?;
            vec![shell]
        }
    })
}

/// Run the plan's action in a new container and return how it ended. The FUSE server is
/// stopped before returning; all mounts go with the namespace.
pub fn run(plan: &Plan) -> Result<Ended> {
    let mut entered = enter(plan)?;
    if matches!(plan.action, Action::Shell) {
        entered.env.set("PS1", "Berth> ");
    }
    let argv = action_argv(&plan.action, &entered.meta, &entered.env)?;
    let env = entered.env.vars().to_vec();
    let workdir = entered.workdir.clone();
    // Read the program ahead while it starts (the child is forked after the thread exists;
    // glibc's fork keeps malloc usable in the child, and the child only execs).
    if let Some(program) = argv.first() {
        warm_in_background(program, &entered.env, &workdir);
    }
    let fuse_pid = entered.fuse.as_ref().map(|f| f.pid());
    let ended = process::fork_and_wait(
        || {
            if let Err(e) =
                nix::unistd::chdir(&workdir).map_err(|e| Error::sys("chdir", workdir.display(), e))
            {
                eprintln!("berth: {e}");
                return crate::error::EXIT_BERTH_ERROR;
            }
            if let Err(e) = process::harden_before_exec() {
                eprintln!("berth: {e}");
                return crate::error::EXIT_BERTH_ERROR;
            }
            let e = process::exec(&argv, &env);
            eprintln!("berth: {e}");
            e.exit_code()
        },
        |pid, st| {
            if Some(pid.as_raw()) == fuse_pid {
                tracing::warn!("the image's FUSE server ended early: {st:?}");
            }
        },
    );
    if let Some(f) = entered.fuse.take() {
        f.stop();
    }
    ended
}

/// What a holder records so joiners can find and verify it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderState {
    pub name: String,
    pub pid: i32,
    /// Process start time (clock ticks since boot), guards against pid reuse.
    pub start_time: u64,
    pub user_ns: u64,
    pub mnt_ns: u64,
    pub image: PathBuf,
    pub env: EnvPlan,
    pub cleanenv: bool,
    pub workdir: Vec<PathBuf>,
    pub workdir_required: bool,
}

pub fn valid_holder_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
}

pub fn holders_dir(cfg: &Config, uid: u32) -> PathBuf {
    cfg.state_dir_for(uid).join("holders")
}

fn check_name(name: &str) -> Result<()> {
    if valid_holder_name(name) {
        Ok(())
    } else {
        Err(Error::request(
            format!("container name {name:?}"),
            "may hold only letters, digits and . _ - + @, and must not start with '.'",
            "",
        ))
    }
}

fn proc_start_time(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) may contain spaces, so count from its closing ')'.
    // A zombie (state Z) has ended already: it only waits for its parent to reap it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn ns_inode(pid: &str, ns: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}")).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m))
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
/// `warm`: the program the first tasks will run, read ahead (see [`warm_in_background`]).
pub fn hold(
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
    let dir = plan.state_dir.join("holders");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
    if let Ok(text) = std::fs::read_to_string(dir.join(format!("{name}.json"))) {
        if let Ok(old) = serde_json::from_str::<HolderState>(&text) {
            if proc_start_time(&old.pid.to_string()) == Some(old.start_time) {
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
    let mut entered = enter(plan)?;
    let state = HolderState {
        name: name.to_string(),
        pid: std::process::id() as i32,
        start_time: proc_start_time("self").unwrap_or(0),
        user_ns: ns_inode("self", "user").unwrap_or(0),
        mnt_ns: ns_inode("self", "mnt").unwrap_or(0),
        image: plan.image.path.clone(),
        env: plan.env.clone(),
        cleanenv,
        workdir: plan.workdir.clone(),
        workdir_required: plan.workdir_required,
    };
    let state_path = format!("/proc/self/fd/{}/{name}.json", dirfd.as_raw_fd());
    let tmp_path = format!("/proc/self/fd/{}/.{name}.json.tmp", dirfd.as_raw_fd());
    std::fs::write(&tmp_path, serde_json::to_vec_pretty(&state).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp_path, &state_path))
        .map_err(|e| Error::io("cannot record container", &dir.join(format!("{name}.json")), e))?;
    if let Some(program) = warm {
        warm_in_background(program, &entered.env, &entered.workdir);
    }
    if let Some(fd) = ready {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(b"ready\n");
    }
    let fuse_pid = entered.fuse.as_ref().map(|f| f.pid());
    // Kept from the moment the holder decides it is idle until its record is gone, so that
    // no joiner can find the record of a container that is going away.
    let lock_path = format!("/proc/self/fd/{}/.{name}.lock", dirfd.as_raw_fd());
    let mut closing_lock = None;
    let mut idle_since: Option<std::time::Instant> = None;
    let mut no_longer_needed = || {
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
        match crate::shared::try_lock(Path::new(&lock_path)) {
            Some(lock) if members(&state).is_empty() => {
                closing_lock = Some(lock);
                true
            }
            _ => false,
        }
    };
    let period = match lifetime {
        Lifetime::UntilIdle(keep) => {
            Some(keep.clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(1)))
        }
        _ => None,
    };
    let stopped = process::wait_for_stop(
        |pid, _| Some(pid.as_raw()) == fuse_pid,
        watch,
        period.map(|p| (p, &mut no_longer_needed as &mut dyn FnMut() -> bool)),
    );
    let _ = std::fs::remove_file(&state_path);
    // The lock file of a holder that is not the scheduler's goes with it (the epilogue
    // removes those): waiting joiners notice it was replaced and start a new holder, and after
    // an MPI launcher ended no rank of it comes again.
    if lifetime != Lifetime::UntilStopped {
        let _ = std::fs::remove_file(&lock_path);
    }
    drop(closing_lock);
    if let Some(f) = entered.fuse.take() {
        f.stop();
    }
    match stopped? {
        Some(_) => Ok(0),
        None => Err(Error::image(&plan.image.path, "the FUSE server ended while the container was held", "")),
    }
}

/// The most of a program [`warm_in_background`] reads: the start of very large binaries only,
/// so a program that touches little of itself does not pay for decompressing all of it.
const WARM_LIMIT: u64 = 64 << 20;

/// Read `program` (found the way exec finds it: the container's PATH, or relative to the
/// working directory) into the page cache in a background thread. The first exec of a binary
/// in a compressed image otherwise pages it in by faults, each a small read for which the
/// image's whole block is decompressed again, while every rank of the node waits on them; one
/// sequential read decompresses each block once. Best effort: it never delays the holder and
/// a program it cannot find is simply not warmed.
pub fn warm_in_background(program: &str, env: &Env, workdir: &Path) {
    let Some(path) = find_program(program, env.get("PATH"), workdir) else { return };
    process::spawn_without_signals("berth-warm", move || {
        use std::io::Read;
        let Ok(f) = std::fs::File::open(&path) else { return };
        let mut buf = vec![0u8; 1 << 20];
        let mut f = f.take(WARM_LIMIT);
        while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
    });
}

/// The file exec would run for `program` (see [`process::path_candidates`]), relative paths
/// taken from `workdir`, where the program will start.
fn find_program(program: &str, path: Option<&str>, workdir: &Path) -> Option<PathBuf> {
    process::path_candidates(program, path).into_iter().map(|c| workdir.join(c)).find(|p| p.is_file())
}

/// Read and verify the state of holder `name`.
pub fn find_holder(cfg: &Config, uid: u32, name: &str) -> Result<HolderState> {
    check_name(name)?;
    let path = holders_dir(cfg, uid).join(format!("{name}.json"));
    let gone = || {
        Error::request(
            format!("container {name}"),
            "is not running on this node",
            "start it with `berth holder --name NAME IMAGE` (the Slurm and PBS plugins do this per job step)",
        )
    };
    let text = std::fs::read_to_string(&path).map_err(|_| gone())?;
    let st: HolderState = serde_json::from_str(&text).map_err(|_| gone())?;
    if proc_start_time(&st.pid.to_string()) != Some(st.start_time) {
        let _ = std::fs::remove_file(&path);
        return Err(gone());
    }
    Ok(st)
}

/// A process that joined a held container (cwd `/` of the container).
pub struct Joined {
    pub state: HolderState,
    pub meta: Metadata,
}

/// Join holder `name` in this process (must be single-threaded). Used by `berth exec --join`
/// and by the Slurm plugin in each task.
pub fn join_in_process(cfg: &Config, uid: u32, name: &str) -> Result<Joined> {
    let state = find_holder(cfg, uid, name)?;
    process::join_namespaces(state.pid, state.user_ns, state.mnt_ns)?;
    let meta = Metadata { env_files: metadata::read_env_files(Path::new("/")), ..Metadata::default() };
    Ok(Joined { meta, state })
}

impl Joined {
    /// The environment for a joining task: its own host variables filtered like the holder's,
    /// the image's environment, then the holder's overrides.
    pub fn env(&self, cfg: &Config, host: &HostFacts) -> Env {
        let mut envplan = crate::plan::filter_host_env(&host.env, self.state.cleanenv, cfg, &host.user);
        envplan.overrides = self.state.env.overrides.clone();
        envplan.ld_library_path_prepend = self.state.env.ld_library_path_prepend.clone();
        envplan.path_append = self.state.env.path_append.clone();
        compose(&envplan, &self.meta.env_files)
    }

    /// Only what the container defines (the image's environment, the holder's overrides,
    /// PATH and injected library paths), for a frontend that adds it to a task environment
    /// it does not own (the Slurm plugin, through spank_setenv).
    pub fn container_env(&self, cfg: &Config, user: &crate::plan::UserInfo) -> Env {
        let mut envplan = crate::plan::filter_host_env(&[], true, cfg, user);
        envplan.overrides = self.state.env.overrides.clone();
        envplan.ld_library_path_prepend = self.state.env.ld_library_path_prepend.clone();
        envplan.path_append = self.state.env.path_append.clone();
        compose(&envplan, &self.meta.env_files)
    }

    pub fn workdir(&self, cwd: Option<&Path>) -> Result<PathBuf> {
        let mut cands = self.state.workdir.clone();
        if !self.state.workdir_required {
            if let Some(c) = cwd {
                cands.insert(0, c.to_path_buf());
            }
        }
        choose_workdir(&cands, self.state.workdir_required)
    }
}

fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Processes inside the container's mount namespace other than the holder and the FUSE
/// server it owns.
pub fn members(st: &HolderState) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != st.pid && ns_inode(&pid.to_string(), "mnt") == Some(st.mnt_ns))
        .filter(|&pid| parent_pid(pid) != Some(st.pid))
        .collect()
}

/// Stop holder `name`: its remaining member processes first (they would only fail once the
/// image is unmounted), then the holder with SIGTERM, SIGKILL after `grace`.
pub fn stop(cfg: &Config, uid: u32, name: &str, grace: std::time::Duration) -> Result<()> {
    let st = find_holder(cfg, uid, name)?;
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
    let t0 = std::time::Instant::now();
    while proc_start_time(&st.pid.to_string()) == Some(st.start_time) {
        if t0.elapsed() > grace {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        if t0.elapsed() > grace * 2 {
            break;
        }
    }
    let _ = std::fs::remove_file(holders_dir(cfg, uid).join(format!("{name}.json")));
    Ok(())
}

/// Read an image's metadata without starting anything in it: a short-lived child mounts the
/// image in its own namespaces and sends the metadata back as JSON.
pub fn read_image_metadata(image: &crate::image::Image, cfg: &Config) -> Result<Metadata> {
    use crate::image::{FsType, RootFs};
    let (offset, path) = match &image.root {
        RootFs::Directory { path } => return Ok(metadata::read(path)),
        RootFs::Embedded { fs: FsType::Squashfs, offset, .. } => (*offset, image.path.clone()),
        RootFs::Embedded { fs: FsType::Ext3, .. } => return Ok(Metadata::default()),
    };
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let state = cfg.state_dir_for(uid);
    ensure_state_dir(&state, uid)?;
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    // An unlinked file rather than a pipe: the child can write any amount without waiting
    // for a reader.
    let scratch = state.join(format!(".meta-{}", std::process::id()));
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&scratch)
        .map_err(|e| Error::io("cannot create", &scratch, e))?;
    let _ = std::fs::remove_file(&scratch);
    let mut out_child = out.try_clone().map_err(|e| Error::io("cannot dup", &scratch, e))?;
    let program = cfg.squashfuse.clone();
    let ended = process::fork_and_wait(
        move || {
            let result = (|| -> Result<Metadata> {
                use crate::sys::MountOps;
                process::enter_user_and_mount_ns(uid, gid)?;
                let mut sys = RealSys::new(uid, gid);
                let at = state.join("mnt");
                sys.mkdir_all(&at)?;
                sys.mount(
                    Some(Path::new("tmpfs")),
                    &at,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    None,
                )?;
                let img = at.join("image");
                sys.mkdir_all(&img)?;
                sys.start_squashfuse(&program, &path, offset, &img)?;
                Ok(metadata::read(&img))
            })();
            let msg = match result {
                Ok(m) => serde_json::json!({ "ok": m }),
                Err(e) => serde_json::json!({ "err": e.to_string() }),
            };
            let _ = out_child.write_all(msg.to_string().as_bytes());
            0
        },
        |_, _| {},
    )?;
    let mut text = String::new();
    let mut out = out;
    std::io::Seek::rewind(&mut out).map_err(|e| Error::io("cannot read", &scratch, e))?;
    std::io::Read::read_to_string(&mut out, &mut text).map_err(|e| Error::io("cannot read", &scratch, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| Error::image(&image.path, format!("reading its metadata failed ({ended:?})"), ""))?;
    if let Some(e) = v.get("err").and_then(|e| e.as_str()) {
        return Err(Error::image(&image.path, format!("cannot read metadata: {e}"), ""));
    }
    serde_json::from_value(v["ok"].clone())
        .map_err(|e| Error::image(&image.path, format!("bad metadata: {e}"), ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_exec_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(b.join("prog")).unwrap(); // a directory is not a program
        std::fs::write(a.join("prog"), b"x").unwrap();
        std::fs::write(b.join("only_b"), b"x").unwrap();
        let path = format!("{}:{}:relative", b.display(), a.display());
        assert_eq!(find_program("prog", Some(&path), Path::new("/")), Some(a.join("prog")));
        assert_eq!(find_program("only_b", Some(&path), Path::new("/")), Some(b.join("only_b")));
        assert_eq!(find_program("missing", Some(&path), Path::new("/")), None);
        assert_eq!(find_program("a/prog", None, dir.path()), Some(dir.path().join("a/prog")));
        assert_eq!(
            find_program(&a.join("prog").display().to_string(), None, Path::new("/x")),
            Some(a.join("prog"))
        );
        assert_eq!(find_program("", Some(&path), dir.path()), None);
    }
}
