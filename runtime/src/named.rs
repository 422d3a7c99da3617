//! Named containers (pyxis' `--container-name`): a container kept for the later steps of a job
//! on each node. Nothing is unpacked: a named container is the image it was made from plus a
//! kept writable layer (the `--overlay` layout, `upper/` and `work/`), in the user's state
//! directory:
//!
//! ```text
//! <state_dir>/named/<jobid>/<NAME>/{upper,work}   the writable layer
//!                                  image           the image it was made from (one line)
//!                                  lock            flock'ed by the step that has it mounted
//!                                  running         flock'ed while that step's tasks run
//! ```
//!
//! (`named/global/<NAME>` with the site's `container_scope=global`.) Every step mounts the same
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

/// A named container opened by one step: its directory, made if it was missing, and locked
/// for as long as this value lives (two steps never mount one upper layer at the same time).
#[derive(Debug)]
pub struct Opened {
    /// The container's directory: the `--overlay` directory of the step.
    pub dir: PathBuf,
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
    Ok(Opened { dir: dir.to_path_buf(), image: recorded_image(dir), created, _lock: lock })
}

/// The image named container `dir` was made from, as its first step recorded it (None: no
/// step has recorded one).
pub fn recorded_image(dir: &Path) -> Option<PathBuf> {
    std::fs::read_to_string(dir.join("image"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
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

impl Opened {
    /// Record the image the container was made from, once its first step is running (a
    /// temporary file renamed into place: a reader sees the whole line or nothing).
    pub fn record_image(&mut self, image: &Path) -> Result<()> {
        let tmp = self.dir.join(".image.tmp");
        let fin = self.dir.join("image");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            writeln!(f, "{}", image.display())?;
            std::fs::rename(&tmp, &fin)
        };
        write().map_err(|e| Error::io("cannot record the image of", &self.dir, e))?;
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
        let _ = remove_tree(&dir);
        // The job's directory too, when this was its only container.
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
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
    for (job, jdir) in dirs(&root(cfg, uid)) {
        for (name, cdir) in dirs(&jdir) {
            let Ok(meta) = std::fs::symlink_metadata(cdir.join("image")) else { continue };
            let image = recorded_image(&cdir).unwrap_or_default();
            let age_s = meta.modified().ok().and_then(|m| m.elapsed().ok()).map_or(0, |d| d.as_secs());
            // (Whether a step has it now is not probed: taking its lock, even shared and
            // briefly, could refuse a step that starts at that moment.)
            out.push(Listed { job: job.clone(), name, image, age_s });
        }
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
