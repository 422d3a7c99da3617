//! Named containers (pyxis' `--container-name`): a container kept for the later steps of a job
//! on each node. Nothing is unpacked: a named container is the image it was made from plus a
//! kept writable layer (the `--overlay` layout, `upper/` and `work/`). Its small files are in
//! the user's state directory; the layer, which can grow as large as what the job writes, is
//! where the site says (`[named] layers_dir`, by default the job's node-local `TMPDIR` or
//! `/var/tmp`), never in the state directory (`/run/berth/<uid>` on compute nodes: memory):
//!
//! ```text
//! <state_dir>/named/<jobid>/<NAME>/layer    the writable layer's directory (one line):
//!                                           <layers_dir>/berth-<uid>-<NAME>-<random>/{upper,work}
//!                                  image    the image it was made from (one line)
//!                                  lock     flock'ed by the step that has it mounted
//!                                  running  flock'ed while that step's tasks run
//! ```
//!
//! (`named/global/<NAME>` with the site's `container_scope=global`.) All of a user's layers on
//! a node together may take `[named] per_user_limit_mib` ([`check_limit`], when a step opens
//! one). A container made before layers moved has `upper/` and `work/` in its own directory
//! and keeps them there. Every step mounts the same
//! image with the same upper layer, so what one step wrote the next one sees. One step at a
//! time has it mounted (a writable layer cannot be mounted twice): a step that asks for it
//! while another runs in it joins that step's holder instead (found by the layer the holder's
//! record names, `holder::find_holding`). The job's directory is removed at the end of the job, as the user (the Slurm plugin's `remove_as_user`).
#![warn(missing_docs)]

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};

/// Which steps see a name: those of the same job (pyxis' default), or every job of the user
/// on the node (`container_scope=global`, kept until the user removes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Per job: removed at the end of the job.
    Job,
    /// Across jobs: kept.
    Global,
}

/// The user's directory of named containers (`<state_dir>/named`). The state directory is
/// the one the scheduler's side and the holder agree on: no `XDG_RUNTIME_DIR` (slurmstepd's
/// and the job epilog's environment are not the user's session).
pub fn root(cfg: &Config, uid: u32) -> PathBuf {
    let cfg = Config { runtime_dir: None, ..cfg.clone() };
    cfg.state_dir_for(uid).join("named")
}

/// The directory of job `job`'s named containers (what the end of the job removes).
pub fn job_dir(cfg: &Config, uid: u32, job: u32) -> PathBuf {
    root(cfg, uid).join(job.to_string())
}

/// The directory of named container `name` of job `job` (or the global one).
pub fn dir(cfg: &Config, uid: u32, scope: Scope, job: u32, name: &str) -> PathBuf {
    match scope {
        Scope::Job => job_dir(cfg, uid, job).join(name),
        Scope::Global => root(cfg, uid).join("global").join(name),
    }
}

/// Where the writable layers of `uid`'s named containers of `scope` are made: `[named]
/// layers_dir` (`{uid}` replaced); else, for a job's containers, the job's `tmpdir` (its
/// node-local scratch) when that is an absolute path outside `/run` and `/dev/shm` (memory)
/// and a directory that may hold the user's layer ([`safe_base`]) on a filesystem overlays
/// can write to (not NFS or a parallel filesystem); else `/var/tmp` (a per-job
/// `TMPDIR` goes with its job, a global container does not).
pub fn layers_base(cfg: &Config, uid: u32, scope: Scope, tmpdir: Option<&Path>) -> PathBuf {
    if !cfg.named.layers_dir.is_empty() {
        return PathBuf::from(cfg.named.layers_dir.replace("{uid}", &uid.to_string()));
    }
    let in_memory = |p: &Path| p.starts_with("/run") || p.starts_with("/dev/shm");
    let usable = |t: &Path| {
        std::fs::symlink_metadata(t).is_ok_and(|m| safe_base(&m, uid)) && crate::overlay::can_hold_layers(t)
    };
    match tmpdir.filter(|t| scope == Scope::Job && t.is_absolute() && !in_memory(t) && usable(t)) {
        Some(t) => t.to_path_buf(),
        None => PathBuf::from("/var/tmp"),
    }
}

/// The file of a named container's directory that names its writable layer.
const LAYER: &str = "layer";

/// The writable layer of named container `dir` (the `--overlay` directory of its steps): the
/// directory its `layer` file names, or, for a container made before layers moved out of the
/// state directory, `dir` itself when it holds `upper/`. None: no layer made yet.
pub fn recorded_layer(dir: &Path) -> Option<PathBuf> {
    let named = read_record(dir, LAYER).filter(|s| s.starts_with('/')).map(PathBuf::from);
    named.or_else(|| {
        std::fs::symlink_metadata(dir.join("upper")).is_ok_and(|m| m.is_dir()).then(|| dir.to_path_buf())
    })
}

/// A named container opened by one step: its directory, made if it was missing, and locked
/// for as long as this value lives (two steps never mount one upper layer at the same time).
#[derive(Debug)]
pub struct Opened {
    /// The container's directory (its lock, records and the name of its layer).
    pub dir: PathBuf,
    /// Its writable layer, the `--overlay` directory of the step ([`Opened::make_layer`]);
    /// None: not made yet.
    pub layer: Option<PathBuf>,
    /// The image it was made from; None: it does not exist yet (no step made it).
    pub image: Option<PathBuf>,
    /// True when this call made the directory (removed again if the step fails).
    pub created: bool,
    _lock: nix::fcntl::Flock<File>,
}

/// Why [`open`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// Another step on this node has the container now.
    InUse,
    /// Anything else, with the reason.
    Other(Error),
}

/// Open (and make, as the calling user) named container directory `dir` of `uid` and lock it,
/// waiting up to `wait` for a step that has it. Runs as the user: everything under the state
/// directory is the user's own.
pub fn open(
    cfg: &Config,
    uid: u32,
    dir: &Path,
    wait: std::time::Duration,
) -> std::result::Result<Opened, OpenError> {
    let state = cfg_state_dir(cfg, uid);
    crate::container::ensure_state_dir(&state, uid).map_err(OpenError::Other)?;
    let created = !dir.exists();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| OpenError::Other(Error::io("cannot create", dir, e)))?;
    let lock_path = dir.join("lock");
    let lock = open_lock_file(&lock_path).map_err(OpenError::Other)?;
    let deadline = std::time::Instant::now() + wait;
    let mut lock = lock;
    let lock = loop {
        match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                lock = f;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Err(OpenError::InUse),
            Err((_, e)) => return Err(OpenError::Other(Error::sys("flock", lock_path.display(), e))),
        }
    };
    Ok(Opened {
        dir: dir.to_path_buf(),
        layer: recorded_layer(dir),
        image: recorded_image(dir),
        created,
        _lock: lock,
    })
}

/// The image named container `dir` was made from, as its first step recorded it (None: no
/// step has recorded one).
pub fn recorded_image(dir: &Path) -> Option<PathBuf> {
    read_record(dir, "image").filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// The one line of record `name` in `dir`: a regular file (no link, no FIFO to block on) of
/// at most 4 KiB.
fn read_record(dir: &Path, name: &str) -> Option<String> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dir.join(name))
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(4096).read_to_string(&mut s).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// The file whose lock says that a step's tasks run in the container.
const RUNNING: &str = "running";

/// Held while a step's tasks run in a named container ([`Opened::mark_running`]).
#[derive(Debug)]
pub struct RunningMark {
    _lock: nix::fcntl::Flock<File>,
}

/// Whether the tasks of the step that has named container `dir` still run in it (its
/// [`RunningMark`] is held). As the user; no symlink is followed.
pub fn tasks_running(dir: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(RUNNING))
    else {
        return false;
    };
    matches!(
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// Open (making it, mode 0600) the lock file `path`, never through a symlink; close-on-exec,
/// so a task that slurmstepd forks does not keep it after its exec.
fn open_lock_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("cannot open", path, e))
}

fn cfg_state_dir(cfg: &Config, uid: u32) -> PathBuf {
    Config { runtime_dir: None, ..cfg.clone() }.state_dir_for(uid)
}

/// Write `line` into `dir/name` through a temporary file renamed into place (a reader sees
/// the whole line or nothing), never through a symlink.
fn write_record(dir: &Path, name: &str, line: &Path) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    writeln!(f, "{}", line.display())?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Whether a directory with metadata `m` (from `lstat`) may hold `uid`'s layers: the user's or
/// root's, writable by nobody else, or root's sticky one, where nobody can remove or rename
/// another's entries.
fn safe_base(m: &std::fs::Metadata, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let sticky_root = m.uid() == 0 && m.mode() & 0o1000 != 0;
    m.is_dir() && (m.uid() == uid || m.uid() == 0) && (m.mode() & 0o022 == 0 || sticky_root)
}

/// Check that `base` may hold a user's layer: a directory (no link) of the user's or of
/// root's that nobody else may write, or root's sticky one (`/var/tmp`, `/tmp`) where nobody
/// can remove or rename another's entries. Made (0700) when missing.
fn check_layers_base(base: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(base).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .map_err(|e| Error::io("cannot create the named containers' layer directory", base, e))?;
    }
    let m = std::fs::symlink_metadata(base).map_err(|e| Error::io("cannot stat", base, e))?;
    if !safe_base(&m, uid) {
        return Err(Error::Io {
            what: "unsafe directory for named containers' layers".into(),
            path: base.to_path_buf(),
            source: std::io::Error::other(format!(
                "must be a directory of yours or root's that others cannot write (or root's sticky one); \
                 it is {} of uid {} with mode {:o}",
                if m.is_dir() { "a directory" } else { "not a directory" },
                m.uid(),
                m.mode() & 0o7777
            )),
            hint: "ask the administrator ([named] layers_dir in berth.toml)".into(),
        });
    }
    Ok(())
}

impl Opened {
    /// The container's writable layer: the one it has ([`recorded_layer`]), else a new
    /// directory made now in `base` ([`layers_base`]) as the calling user, mode 0700, with an
    /// unpredictable name (`berth-<uid>-<NAME>-<random>`, made with `mkdir`, which never takes
    /// one that exists, so nobody can have made it first), and recorded in the container's
    /// `layer` file.
    pub fn make_layer(&mut self, base: &Path, uid: u32) -> Result<PathBuf> {
        use std::io::Read;
        if let Some(l) = &self.layer {
            if std::fs::symlink_metadata(l).is_ok() {
                return Ok(l.clone());
            }
            // Removed behind berth's back (a cleaner of /var/tmp, a reinstalled node): what
            // the container's steps wrote is gone; it goes on from its image.
            tracing::warn!(
                "the writable layer {} of named container {} is gone; starting again from its image",
                l.display(),
                self.dir.display()
            );
        }
        check_layers_base(base, uid)?;
        let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut urandom =
            File::open("/dev/urandom").map_err(|e| Error::io("cannot open", Path::new("/dev/urandom"), e))?;
        for _ in 0..16 {
            let mut r = [0u8; 8];
            urandom.read_exact(&mut r).map_err(|e| Error::io("cannot read", Path::new("/dev/urandom"), e))?;
            let layer = base.join(format!("berth-{uid}-{name}-{:016x}", u64::from_ne_bytes(r)));
            match std::fs::DirBuilder::new().mode(0o700).create(&layer) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("cannot create the writable layer", &layer, e)),
            }
            if let Err(e) = write_record(&self.dir, LAYER, &layer) {
                let _ = std::fs::remove_dir(&layer);
                return Err(Error::io("cannot record the writable layer of", &self.dir, e));
            }
            self.layer = Some(layer.clone());
            return Ok(layer);
        }
        Err(Error::request(
            format!("writable layer in {}", base.display()),
            "no unused name was found",
            "remove old berth-* directories there",
        ))
    }

    /// Record the image the container was made from, once its first step is running (a
    /// temporary file renamed into place: a reader sees the whole line or nothing).
    pub fn record_image(&mut self, image: &Path) -> Result<()> {
        write_record(&self.dir, "image", image)
            .map_err(|e| Error::io("cannot record the image of", &self.dir, e))?;
        self.image = Some(image.to_path_buf());
        Ok(())
    }

    /// Mark the container as one whose step's tasks run in it, for as long as the returned
    /// lock lives (a step that asks for it meanwhile joins it, see [`tasks_running`]). As the
    /// user. The step drops it when its tasks have ended: from then on the container is
    /// stopping, and a step that asks for it waits for `lock` instead of joining a container
    /// about to go.
    pub fn mark_running(&self) -> Result<RunningMark> {
        let path = self.dir.join(RUNNING);
        let file = open_lock_file(&path)?;
        // Blocking: a step probing it (`tasks_running`) holds it shared only for a moment.
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::sys("flock", path.display(), e))?;
        Ok(RunningMark { _lock: lock })
    }

    /// Remove the container again (a first step that failed leaves nothing). As the user.
    pub fn discard(self) {
        let dir = self.dir.clone();
        drop(self);
        let _ = remove(&dir);
        // The job's directory too, when this was its only container.
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Remove named container `dir`: its writable layer (wherever its `layer` file says), then
/// the directory itself. As the calling user.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    if let Some(layer) = recorded_layer(dir).filter(|l| l != dir) {
        remove_tree(&layer)?;
    }
    remove_tree(dir)
}

/// The named containers' directories of `uid` on this node, by job and name.
fn containers(cfg: &Config, uid: u32) -> Vec<(String, String, PathBuf)> {
    let dirs = |p: &Path| -> Vec<(String, PathBuf)> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
            .collect();
        v.sort();
        v
    };
    let mut out = vec![];
    for (job, jdir) in dirs(&root(cfg, uid)) {
        for (name, cdir) in dirs(&jdir) {
            out.push((job.clone(), name, cdir));
        }
    }
    out
}

/// Bytes (allocated blocks) under `path`, not following links, walked without recursion (a
/// deep tree cannot exhaust the stack of the process that measures it).
fn tree_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        total = total.saturating_add(m.blocks().saturating_mul(512));
        if m.is_dir() {
            todo.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        }
    }
    total
}

/// Bytes all writable layers of `uid`'s named containers on this node take, measured as the
/// calling user.
pub fn usage(cfg: &Config, uid: u32) -> u64 {
    containers(cfg, uid)
        .iter()
        .filter_map(|(_, _, d)| recorded_layer(d))
        .fold(0u64, |a, l| a.saturating_add(tree_bytes(&l)))
}

/// Refuse a step a named container when `uid`'s layers on this node already take more than
/// the site's `[named] per_user_limit_mib`.
pub fn check_limit(cfg: &Config, uid: u32) -> Result<()> {
    let limit = cfg.named.per_user_limit_mib;
    if limit == 0 {
        return Ok(());
    }
    let used = usage(cfg, uid);
    if used <= limit.saturating_mul(1 << 20) {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    Err(Error::request(
        "--container-name",
        format!(
            "your named containers on this node take {:.1} GiB, more than the site allows ({:.1} GiB, \
             [named] per_user_limit_mib = {limit} in berth.toml)",
            gib(used),
            gib(limit.saturating_mul(1 << 20))
        ),
        "remove those you no longer need (`berth list`, `berth rm NAME`); a job's own go at its end",
    ))
}

/// Remove `path` and everything under it, as the calling user: directories the user made
/// unreadable inside the container (or overlayfs' own `work/work`, mode 0) are opened up
/// first. Symbolic links are removed, never followed.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    for entry in std::fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    std::fs::remove_dir(path)
}

/// One named container on this node, for `berth list` (its JSON too).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// The job it belongs to (`global` for the global scope).
    pub job: String,
    /// The image it was made from.
    pub image: PathBuf,
    /// Seconds since its first step made it.
    pub age_s: u64,
}

/// The named containers of `uid` on this node, by job and name.
pub fn list(cfg: &Config, uid: u32) -> Vec<Listed> {
    let mut out = vec![];
    for (job, name, cdir) in containers(cfg, uid) {
        let Ok(meta) = std::fs::symlink_metadata(cdir.join("image")) else { continue };
        let image = recorded_image(&cdir).unwrap_or_default();
        let age_s = meta.modified().ok().and_then(|m| m.elapsed().ok()).map_or(0, |d| d.as_secs());
        // (Whether a step has it now is not probed: taking its lock, even shared and
        // briefly, could refuse a step that starts at that moment.)
        out.push(Listed { job, name, image, age_s });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: &Path) -> Config {
        Config { state_dir: t.join("st").display().to_string(), ..Config::default() }
    }

    #[test]
    fn a_step_makes_locks_and_records_the_container_and_a_later_one_finds_it() {
        let t = tempfile::tempdir().unwrap();
        let (cfg, uid) = (cfg(t.path()), nix::unistd::getuid().as_raw());
        let d = dir(&cfg, uid, Scope::Job, 7, "n1");
        assert_eq!(d, t.path().join("st/named/7/n1"));
        assert_eq!(dir(&cfg, uid, Scope::Global, 7, "n1"), t.path().join("st/named/global/n1"));
        let mut first = open(&cfg, uid, &d, std::time::Duration::ZERO).unwrap();
        assert!(first.created && first.image.is_none());
        // A second step while the first has it: refused, nothing changed.
        assert!(matches!(open(&cfg, uid, &d, std::time::Duration::ZERO), Err(OpenError::InUse)));
        first.record_image(Path::new("/i/a.sqsh")).unwrap();
        assert_eq!(
            list(&cfg, uid),
            vec![Listed { job: "7".into(), name: "n1".into(), image: "/i/a.sqsh".into(), age_s: 0 }]
        );
        // Its tasks run while the mark is held; a probe does not keep it.
        assert!(!tasks_running(&d));
        let mark = first.mark_running().unwrap();
        assert!(tasks_running(&d) && tasks_running(&d));
        drop(mark);
        assert!(!tasks_running(&d));
        drop(first);
        let again = open(&cfg, uid, &d, std::time::Duration::ZERO).unwrap();
        assert!(!again.created);
        assert_eq!(again.image.as_deref(), Some(Path::new("/i/a.sqsh")));
    }

    #[test]
    fn the_writable_layer_is_made_outside_the_state_directory_and_kept_for_later_steps() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let (cfg, uid) = (cfg(t.path()), nix::unistd::getuid().as_raw());
        let scratch = t.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let d = dir(&cfg, uid, Scope::Job, 9, "n");
        let mut first = open(&cfg, uid, &d, std::time::Duration::ZERO).unwrap();
        assert_eq!(first.layer, None);
        let layer = first.make_layer(&scratch, uid).unwrap();
        assert_eq!(layer.parent(), Some(scratch.as_path()));
        assert!(layer.file_name().unwrap().to_str().unwrap().starts_with(&format!("berth-{uid}-n-")));
        assert!(!layer.starts_with(t.path().join("st")), "not in the state directory");
        assert_eq!(std::fs::metadata(&layer).unwrap().mode() & 0o7777, 0o700);
        std::fs::create_dir_all(layer.join("upper")).unwrap();
        std::fs::write(layer.join("upper/f"), vec![1u8; 1 << 20]).unwrap();
        drop(first);
        // The next step gets the same layer, whatever base it is offered.
        let mut again = open(&cfg, uid, &d, std::time::Duration::ZERO).unwrap();
        assert_eq!(again.layer.as_deref(), Some(layer.as_path()));
        assert_eq!(again.make_layer(Path::new("/elsewhere"), uid).unwrap(), layer);
        // A layer removed behind berth's back is made again, empty, where layers go now.
        std::fs::rename(&layer, t.path().join("moved")).unwrap();
        let fresh = again.make_layer(&scratch, uid).unwrap();
        assert!(fresh != layer && fresh.starts_with(&scratch) && fresh.is_dir());
        assert_eq!(recorded_layer(&d).as_deref(), Some(fresh.as_path()));
        std::fs::remove_dir(&fresh).unwrap();
        std::fs::rename(t.path().join("moved"), &layer).unwrap();
        std::fs::write(d.join(LAYER), format!("{}\n", layer.display())).unwrap();
        again.layer = recorded_layer(&d);
        assert!(usage(&cfg, uid) >= 1 << 20);
        // Over the site's limit: the next step is refused, with the numbers.
        let small = Config {
            named: crate::config::NamedConfig { per_user_limit_mib: 1, ..cfg.named.clone() },
            ..cfg.clone()
        };
        let e = check_limit(&small, uid).unwrap_err().to_string();
        assert!(
            e.contains("your named containers on this node take") && e.contains("per_user_limit_mib = 1"),
            "{e}"
        );
        assert!(check_limit(&cfg, uid).is_ok());
        let none = Config {
            named: crate::config::NamedConfig { per_user_limit_mib: 0, ..cfg.named.clone() },
            ..cfg.clone()
        };
        assert!(check_limit(&none, uid).is_ok());
        // Removing the container removes its layer too.
        again.discard();
        assert!(!layer.exists() && !d.exists());
    }

    #[test]
    fn layers_go_to_the_jobs_scratch_or_var_tmp_never_to_run() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let scratch = t.path().join("job7");
        std::fs::create_dir(&scratch).unwrap();
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (cfg, uid) = (Config::default(), nix::unistd::getuid().as_raw());
        let base = |scope, t: Option<&str>| layers_base(&cfg, uid, scope, t.map(Path::new));
        let job7 = scratch.to_str().unwrap();
        assert_eq!(base(Scope::Job, Some(job7)), scratch);
        assert_eq!(base(Scope::Job, None), PathBuf::from("/var/tmp"));
        // Not one others may write (nor one missing): /var/tmp.
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(base(Scope::Job, Some(job7)), PathBuf::from("/var/tmp"));
        assert_eq!(base(Scope::Job, Some("/nonexistent/tmp")), PathBuf::from("/var/tmp"));
        assert_eq!(base(Scope::Job, Some("/run/user/1001")), PathBuf::from("/var/tmp"));
        assert_eq!(base(Scope::Job, Some("/dev/shm")), PathBuf::from("/var/tmp"));
        assert_eq!(base(Scope::Job, Some("relative")), PathBuf::from("/var/tmp"));
        // A global container outlives a per-job TMPDIR.
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(base(Scope::Global, Some(job7)), PathBuf::from("/var/tmp"));
        let site = Config {
            named: crate::config::NamedConfig {
                layers_dir: "/scratch/layers/{uid}".into(),
                ..Default::default()
            },
            ..Config::default()
        };
        assert_eq!(layers_base(&site, 1001, Scope::Global, None), PathBuf::from("/scratch/layers/1001"));
    }

    #[test]
    fn a_layer_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (cfg, uid) = (cfg(t.path()), nix::unistd::getuid().as_raw());
        let open_dir = t.path().join("open");
        std::fs::create_dir(&open_dir).unwrap();
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let d = dir(&cfg, uid, Scope::Job, 10, "n");
        let mut o = open(&cfg, uid, &d, std::time::Duration::ZERO).unwrap();
        let e = o.make_layer(&open_dir, uid).unwrap_err().to_string();
        assert!(e.contains("unsafe directory for named containers' layers"), "{e}");
        assert_eq!(std::fs::read_dir(&open_dir).unwrap().count(), 0, "nothing made there");
        // A missing one is made, private.
        let made = t.path().join("new/layers");
        let layer = o.make_layer(&made, uid).unwrap();
        assert!(layer.starts_with(&made));
        o.discard();
    }

    #[test]
    fn a_container_made_before_layers_moved_keeps_its_layer() {
        let t = tempfile::tempdir().unwrap();
        let (cfg, uid) = (cfg(t.path()), nix::unistd::getuid().as_raw());
        let d = dir(&cfg, uid, Scope::Global, 0, "old");
        crate::container::ensure_state_dir(&t.path().join("st"), uid).unwrap();
        std::fs::create_dir_all(d.join("upper")).unwrap();
        std::fs::create_dir_all(d.join("work")).unwrap();
        let mut o = open(&cfg, uid, &d, std::time::Duration::ZERO).unwrap();
        assert_eq!(o.make_layer(&t.path().join("x"), uid).unwrap(), d);
        assert!(!t.path().join("x").exists());
    }

    #[test]
    fn a_failed_first_step_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (cfg, uid) = (cfg(t.path()), nix::unistd::getuid().as_raw());
        let d = dir(&cfg, uid, Scope::Job, 8, "n");
        let o = open(&cfg, uid, &d, std::time::Duration::ZERO).unwrap();
        std::fs::create_dir_all(d.join("work/work")).unwrap();
        o.discard();
        assert!(!job_dir(&cfg, uid, 8).exists());
        assert!(list(&cfg, uid).is_empty());
    }

    #[test]
    fn remove_tree_opens_up_locked_directories_and_never_follows_links() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        std::fs::set_permissions(tree.join("a"), std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
    }
}
