//! Nothing partial is left behind, even on Ctrl-C: every temporary file (and empty work
//! directory) berth writes is registered here, and a SIGINT/SIGTERM/SIGHUP handler removes them
//! before exiting.
//! Ordinary failures are handled by the owners' `Drop`. What a run killed outright (SIGKILL)
//! leaves is removed by the next run for the same output ([`sweep`]): partial files are locked
//! while being written, so an unlocked one has no writer.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Once;

const SLOTS: usize = 64;
static PATHS: [AtomicPtr<libc::c_char>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
static INSTALL: Once = Once::new();

extern "C" fn on_signal(sig: libc::c_int) {
    for slot in &PATHS {
        let p = slot.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: `p` is a leaked, NUL-terminated CString that is never freed; unlink(2) and
            // rmdir(2) are async-signal-safe (an empty work directory is removed too).
            unsafe {
                if libc::unlink(p) != 0 {
                    libc::rmdir(p);
                }
            };
        }
    }
    // SAFETY: _exit(2) is async-signal-safe; the status follows the shell convention.
    unsafe { libc::_exit(128 + sig) };
}

fn install() {
    INSTALL.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only calls async-signal-safe functions (unlink, _exit) on
            // memory that stays valid for the life of the process.
            unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
        }
    });
}

/// A registration: while it lives, a signal removes `path`.
pub struct Registered(usize);

impl Drop for Registered {
    fn drop(&mut self) {
        // The CString is leaked on purpose: a handler running right now may still read it.
        PATHS[self.0].store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// Remove `path` if the process is interrupted before the returned guard is dropped.
pub fn register(path: &Path) -> Option<Registered> {
    install();
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let p = c.into_raw();
    for (i, slot) in PATHS.iter().enumerate() {
        if slot.compare_exchange(std::ptr::null_mut(), p, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return Some(Registered(i));
        }
    }
    None
}

/// A directory `path` (created empty), removed when dropped or by a signal.
pub struct DirGuard {
    path: std::path::PathBuf,
    _reg: Option<Registered>,
}

impl DirGuard {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        std::fs::create_dir(path)?;
        Ok(DirGuard { path: path.to_path_buf(), _reg: register(path) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The directory and file name of an output path.
pub fn dir_and_name(out: &Path) -> (std::path::PathBuf, String) {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    (dir, name)
}

/// How the temporary files for the output NAME start.
pub fn partial_prefix(name: &str) -> String {
    format!(".{name}.partial-")
}

/// The empty work directory that belongs to a partial file.
pub fn dir_of_partial(partial: &Path) -> std::path::PathBuf {
    let mut s = partial.as_os_str().to_owned();
    s.push(".root");
    s.into()
}

/// Remove what runs killed outright (SIGKILL, a crash, a lost node) left for the output NAME in
/// `dir`: partial files no process holds locked, and the work directories of partial files that
/// are gone. Files being written are locked by their writers and stay.
pub fn sweep(dir: &Path, name: &str) {
    sweep_prefix(dir, &partial_prefix(name));
}

/// Mark `f`, the partial file just created at `path`, as being written until it is closed.
/// False when a sweep removed it before the lock was taken (the caller makes another).
pub fn hold(f: &std::fs::File, path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    loop {
        // SAFETY: flock on a descriptor the caller owns; the lock ends when it is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // No flock here (some network filesystems): nothing to sweep with, nothing to fear.
            return true;
        }
    }
    // A sweep that got the lock first unlinked the name: this descriptor is an orphan.
    match (f.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// [`sweep`] for files whose names start with `prefix`.
pub fn sweep_prefix(dir: &Path, prefix: &str) {
    use std::os::fd::AsRawFd;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut dirs = vec![];
    for e in entries.flatten() {
        let fname = e.file_name();
        let Some(n) = fname.to_str().filter(|n| n.starts_with(prefix)) else { continue };
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() && n.ends_with(".root") {
            dirs.push(path);
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let Ok(f) = std::fs::File::open(&path) else { continue };
        // SAFETY: flock on a descriptor this function owns; closing it releases the lock.
        let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if free {
            let _ = std::fs::remove_file(&path);
        }
    }
    for d in dirs {
        let owner = d.to_string_lossy().strip_suffix(".root").map(std::path::PathBuf::from);
        if owner.is_some_and(|o| !o.exists()) {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_what_no_writer_holds() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let live = d.join(".out.sqsh.partial-live");
        let f = std::fs::File::create(&live).unwrap();
        assert!(hold(&f, &live));
        std::fs::create_dir(dir_of_partial(&live)).unwrap();
        let dead = d.join(".out.sqsh.partial-dead");
        std::fs::write(&dead, b"x").unwrap();
        std::fs::create_dir(dir_of_partial(&dead)).unwrap();
        let other = d.join(".other.sqsh.partial-x");
        std::fs::write(&other, b"x").unwrap();
        sweep(d, "out.sqsh");
        let mut left: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [".other.sqsh.partial-x", ".out.sqsh.partial-live", ".out.sqsh.partial-live.root"]);
        // A name a sweep took away before the writer locked it is noticed.
        let g = std::fs::File::create(d.join(".out.sqsh.partial-racy")).unwrap();
        std::fs::remove_file(d.join(".out.sqsh.partial-racy")).unwrap();
        assert!(!hold(&g, &d.join(".out.sqsh.partial-racy")));
        drop(f);
        sweep(d, "out.sqsh");
        assert!(!live.exists() && !dir_of_partial(&live).exists());
    }
}
