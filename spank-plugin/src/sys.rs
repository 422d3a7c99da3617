//! Every `unsafe` of the plugin lives here: the bindgen'd SPANK API, Slurm's logging, signals
//! and reaping (starting the holder, credentials and fds included, is `berth_runtime::holder`'s).
//!
//! The rest of the crate sees safe wrappers that take and return Rust strings.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};

mod bindings {
    #![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code)]
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/spank_bindings.rs"));
}

/// The Slurm version the bindings were generated from (`0x160508` for 22.05.8).
pub const SLURM_VERSION_NUMBER: u32 = bindings::SLURM_VERSION_NUMBER;

const ESPANK_SUCCESS: u32 = 0;

/// Where a callback runs (see design.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// srun on the submit host (or on the batch node, for srun inside a script).
    Local,
    /// slurmstepd and the task processes it forks.
    Remote,
    /// sbatch / salloc.
    Allocator,
    Slurmd,
    JobScript,
    Unknown,
}

pub fn context() -> Context {
    // SAFETY: spank_context() takes no arguments and only reads a global set by Slurm before
    // any plugin callback runs.
    let c = unsafe { bindings::spank_context() };
    match c {
        bindings::spank_context_S_CTX_LOCAL => Context::Local,
        bindings::spank_context_S_CTX_REMOTE => Context::Remote,
        bindings::spank_context_S_CTX_ALLOCATOR => Context::Allocator,
        bindings::spank_context_S_CTX_SLURMD => Context::Slurmd,
        bindings::spank_context_S_CTX_JOB_SCRIPT => Context::JobScript,
        _ => Context::Unknown,
    }
}

fn strerror(rc: bindings::spank_err_t) -> String {
    // SAFETY: spank_strerror returns a pointer to a static string (or NULL) for any value.
    let p = unsafe { bindings::spank_strerror(rc) };
    if p.is_null() {
        return format!("spank error {rc}");
    }
    // SAFETY: p is a non-NULL, NUL-terminated static string owned by Slurm.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "?")).expect("NULs replaced")
}

// ------------------------------------------------------------------------------------ logging

#[derive(Debug, Clone, Copy)]
pub enum Level {
    Error,
    Info,
    Verbose,
    Debug,
}

/// Log through Slurm: srun/sbatch print info and error on the user's terminal; in slurmstepd it
/// goes to the slurmd log with the `[job.step]` prefix. Never stdout. Only
/// `logging::emit` calls it (it escapes what users wrote).
pub(crate) fn log(level: Level, msg: &str) {
    let msg = cstring(msg);
    let fmt = c"%s";
    // SAFETY: the format is a literal "%s" and the single vararg is a valid NUL-terminated
    // C string that lives until the call returns. The functions are provided by the Slurm
    // process (srun, sbatch, slurmstepd) that loaded this plugin.
    unsafe {
        match level {
            Level::Error => bindings::slurm_error(fmt.as_ptr(), msg.as_ptr()),
            Level::Info => bindings::slurm_info(fmt.as_ptr(), msg.as_ptr()),
            Level::Verbose => bindings::slurm_verbose(fmt.as_ptr(), msg.as_ptr()),
            Level::Debug => bindings::slurm_debug(fmt.as_ptr(), msg.as_ptr()),
        }
    }
}

// --------------------------------------------------------------------------------- the handle

/// The `spank_t` handle a callback received. Only valid during that callback.
pub struct Spank(bindings::spank_t);

impl Spank {
    /// # Safety
    /// `sp` must be the handle Slurm passed to the running callback.
    unsafe fn from_raw(sp: *mut std::ffi::c_void) -> Spank {
        Spank(sp as bindings::spank_t)
    }

    /// A variable of the job's environment (remote context only).
    pub fn getenv(&self, name: &str) -> Option<String> {
        let name = cstring(name);
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: self.0 is the live handle; name is NUL-terminated; buf is writable for
            // buf.len() bytes and Slurm writes at most len bytes including the NUL.
            let rc = unsafe {
                bindings::spank_getenv(
                    self.0,
                    name.as_ptr(),
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len() as c_int,
                )
            };
            match rc {
                ESPANK_SUCCESS => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
                }
                bindings::slurm_err_t_ESPANK_NOSPACE if buf.len() < (1 << 24) => buf.resize(buf.len() * 4, 0),
                _ => return None,
            }
        }
    }

    /// Set a variable in the job's environment (remote context; in task_init it is the
    /// environment the task is exec'd with).
    pub fn setenv(&self, name: &str, value: &str) -> Result<(), String> {
        let (n, v) = (cstring(name), cstring(value));
        // SAFETY: live handle, NUL-terminated strings that outlive the call (Slurm copies them).
        let rc = unsafe { bindings::spank_setenv(self.0, n.as_ptr(), v.as_ptr(), 1) };
        if rc == ESPANK_SUCCESS {
            Ok(())
        } else {
            Err(format!("spank_setenv({name}): {}", strerror(rc)))
        }
    }

    pub fn unsetenv(&self, name: &str) {
        let n = cstring(name);
        // SAFETY: live handle, NUL-terminated name. The result (var absent) needs no check.
        unsafe { bindings::spank_unsetenv(self.0, n.as_ptr()) };
    }

    fn item_u32(&self, item: bindings::spank_item) -> Option<u32> {
        let mut v: u32 = 0;
        // SAFETY: for S_JOB_UID/S_JOB_GID (uid_t*/gid_t*, both u32 on Linux) and
        // S_JOB_ID/S_JOB_STEPID (uint32_t*) Slurm reads exactly one pointer vararg and
        // writes a u32 through it.
        let rc = unsafe { bindings::spank_get_item(self.0, item, &mut v as *mut u32) };
        (rc == ESPANK_SUCCESS).then_some(v)
    }

    pub fn job_uid(&self) -> Option<u32> {
        self.item_u32(bindings::spank_item_S_JOB_UID)
    }
    pub fn job_gid(&self) -> Option<u32> {
        self.item_u32(bindings::spank_item_S_JOB_GID)
    }
    pub fn job_id(&self) -> Option<u32> {
        self.item_u32(bindings::spank_item_S_JOB_ID)
    }
    pub fn step_id(&self) -> Option<u32> {
        self.item_u32(bindings::spank_item_S_JOB_STEPID)
    }
    /// This node's index in the step (0 on the step's first node).
    pub fn node_id(&self) -> Option<u32> {
        self.item_u32(bindings::spank_item_S_JOB_NODEID)
    }
    /// How many of the step's tasks run on this node.
    pub fn local_task_count(&self) -> Option<u32> {
        self.item_u32(bindings::spank_item_S_JOB_LOCAL_TASK_COUNT)
    }

    /// The task's argv array (S_JOB_ARGV: owned by Slurm, alive until the task's exec), once
    /// it is known to have a non-NULL argv[0].
    fn argv(&self) -> Result<*mut *mut c_char, String> {
        let mut argv: *mut *mut c_char = std::ptr::null_mut();
        let mut argc: c_int = 0;
        // SAFETY: S_JOB_ARGV takes (int *, char ***); Slurm stores the count and a pointer to
        // its own argv array.
        let rc = unsafe {
            bindings::spank_get_item(
                self.0,
                bindings::spank_item_S_JOB_ARGV,
                &mut argc as *mut c_int,
                &mut argv as *mut *mut *mut c_char,
            )
        };
        if rc != ESPANK_SUCCESS || argv.is_null() || argc <= 0 {
            return Err(format!("spank_get_item(S_JOB_ARGV): {}", strerror(rc)));
        }
        // SAFETY: argc > 0, so argv[0] is a valid slot of Slurm's array.
        if unsafe { *argv }.is_null() {
            return Err("the task has no program".into());
        }
        Ok(argv)
    }

    /// argv[0] of `argv` (see [`Spank::argv`]), copied out.
    fn argv0(argv: *mut *mut c_char) -> String {
        // SAFETY: `argv` comes from `Spank::argv`: argv[0] is a non-NULL, NUL-terminated string
        // owned by Slurm, copied out at once.
        unsafe { CStr::from_ptr(*argv) }.to_string_lossy().into_owned()
    }

    /// The step's program as the user typed it (`srun ... PROG args`): argv[0] of S_JOB_ARGV.
    pub fn job_argv0(&self) -> Option<String> {
        self.argv().ok().map(Self::argv0)
    }

    /// Make the task exec `path` in place of its program: argv[0] of S_JOB_ARGV (the task's own
    /// argv, which slurmstepd execs after task_init) is replaced; the array keeps its length.
    /// Returns the program it replaced.
    pub fn replace_argv0(&self, path: &str) -> Result<String, String> {
        let argv = self.argv()?;
        let old = Self::argv0(argv);
        // Leaked on purpose: execve reads the string after this callback has returned, and the
        // task process ends in that exec (Slurm's own string stays where it was, unfreed, for
        // the same reason).
        let new = cstring(path).into_raw();
        // SAFETY: argv[0] is a valid, writable slot of the task's argv (see `argv`); the new
        // pointer stays valid for the rest of the process.
        unsafe { *argv = new };
        Ok(old)
    }

    /// The job's supplementary groups.
    pub fn supplementary_gids(&self) -> Vec<u32> {
        let mut ptr: *mut libc::gid_t = std::ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: S_JOB_SUPPLEMENTARY_GIDS takes (gid_t **, int *); Slurm stores a pointer to
        // its own array (which stays owned by Slurm) and its length.
        let rc = unsafe {
            bindings::spank_get_item(
                self.0,
                bindings::spank_item_S_JOB_SUPPLEMENTARY_GIDS,
                &mut ptr as *mut *mut libc::gid_t,
                &mut n as *mut c_int,
            )
        };
        if rc != ESPANK_SUCCESS || ptr.is_null() || n <= 0 {
            return vec![];
        }
        // SAFETY: Slurm reported `n` valid gids at `ptr`; we copy them out at once.
        unsafe { std::slice::from_raw_parts(ptr, n as usize) }.to_vec()
    }

    /// Register a command-line option (must be called from slurm_spank_init). The option
    /// table entry is leaked on purpose: Slurm keeps the pointer for the life of the process.
    pub fn register_option(
        &self,
        name: &str,
        arginfo: Option<&str>,
        usage: &str,
        val: i32,
    ) -> Result<(), String> {
        let leak = |s: &str| cstring(s).into_raw();
        let opt = Box::leak(Box::new(bindings::spank_option {
            name: leak(name),
            arginfo: arginfo.map(leak).unwrap_or(std::ptr::null_mut()),
            usage: leak(usage),
            has_arg: arginfo.is_some() as c_int,
            val,
            cb: Some(option_cb),
        }));
        // SAFETY: live handle; `opt` and its strings are leaked, so valid for the process's life.
        let rc = unsafe { bindings::spank_option_register(self.0, opt) };
        if rc == ESPANK_SUCCESS {
            Ok(())
        } else {
            Err(format!("cannot register --{name}: {}", strerror(rc)))
        }
    }
}

/// The one option callback Slurm calls for every registered option (`val` tells which).
unsafe extern "C" fn option_cb(val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    let arg = if optarg.is_null() {
        None
    } else {
        // SAFETY: Slurm passes a NUL-terminated argument string (or NULL for flags).
        Some(unsafe { CStr::from_ptr(optarg) }.to_string_lossy().into_owned())
    };
    crate::guard("option", || crate::plugin::on_option(val, arg.as_deref(), remote != 0))
}

/// Run the body of callback `name` with a typed handle and its plugstack.conf arguments, under
/// [`crate::guard`] (no panic crosses into Slurm).
///
/// # Safety
/// `sp`, `ac` and `av` must be exactly what Slurm passed to the running callback.
pub unsafe fn dispatch(
    name: &str,
    sp: *mut std::ffi::c_void,
    ac: c_int,
    av: *mut *mut c_char,
    body: fn(&Spank, &[String]) -> Result<(), String>,
) -> c_int {
    crate::guard(name, || {
        // SAFETY: caller contract: the handle and argv of the running callback.
        let (spank, args) = unsafe { (Spank::from_raw(sp), args(ac, av)) };
        body(&spank, &args)
    })
}

/// The `argv` Slurm passed to a callback (plugstack.conf arguments), as strings.
///
/// # Safety
/// `ac`/`av` must be the values Slurm passed to the running callback.
unsafe fn args(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    if av.is_null() || ac <= 0 {
        return vec![];
    }
    // SAFETY: Slurm passes `ac` valid pointers to NUL-terminated strings (caller contract).
    (0..ac as usize).map(|i| unsafe { CStr::from_ptr(*av.add(i)) }.to_string_lossy().into_owned()).collect()
}

// ---------------------------------------------------------------------------- process helpers

pub fn kill(pid: i32, sig: c_int) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Non-blocking reap of our own child. `Some(status)` once it is gone (or not our child).
pub fn try_reap(pid: i32) -> Option<i32> {
    let mut status: c_int = 0;
    // SAFETY: status is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match rc {
        0 => None,
        r if r == pid => Some(status),
        _ => Some(-1), // ECHILD: reaped elsewhere (slurmstepd) or not ours
    }
}
