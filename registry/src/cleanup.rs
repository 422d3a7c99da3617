//! Nothing partial is left behind, even on Ctrl-C: every temporary file (and empty work
//! directory) berth writes is registered here, and a SIGINT/SIGTERM/SIGHUP handler removes them
//! before exiting.
//! Ordinary failures are handled by the owners' `Drop`.

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
