//! `spank_berth.so`: Slurm's `--container=IMG` (and pyxis' `--container-*` options) run every
//! task of a step inside a berth image, one container per node per step.
//!
//! Flow of one `srun -N2 --container=img.sqsh prog` (callbacks in the order Slurm calls them):
//! - srun, `slurm_spank_init` (local): register options; take the inherited image out of
//!   `SLURM_CONTAINER` so a nested `srun --container=other` gets its own value.
//! - srun, `slurm_spank_init_post_opt`: choose the image (`--container`, `--container-image`,
//!   or inherited), resolve it against the submit dir, put it in `BERTH_CONTAINER_IMAGE`.
//! - slurmstepd on each node, `slurm_spank_user_init`: start `berth holder` as the user; wait
//!   until it is ready. A failure is recorded, not returned (that would drain the node). With
//!   `--container-name=NAME` while another step runs in `NAME` there: no holder; the tasks
//!   join that step's.
//! - each task, `slurm_spank_task_init`: join the holder's namespaces, set the image's
//!   environment and working directory; or print the recorded failure and fail the task.
//! - slurmstepd, `slurm_spank_task_exit`: with `--container-save`, after the last task on the
//!   step's first node, save the container there.
//! - slurmstepd, `slurm_spank_exit`: end the tasks of other steps that joined the holder's
//!   container, then stop the holder (a step that joined another's stops nothing).
//! - at the end of the job, `slurm_spank_job_epilog` on each node: remove the job's named
//!   containers (`--container-name`), as the user.
//!
//! The callbacks below are one line each; [`plugin`] holds the logic, [`sys`] all `unsafe`.

use std::os::raw::{c_char, c_int, c_uint};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub mod holder;
mod logging;
pub mod plugin;
pub mod settings;
mod sys;

// The four symbols Slurm's plugin loader looks for (what SPANK_PLUGIN(berth, 1) defines in C).
// plugin_version pins the plugin to the Slurm release it was built against.
#[no_mangle]
pub static plugin_name: [u8; 6] = *b"berth\0";
#[no_mangle]
pub static plugin_type: [u8; 6] = *b"spank\0";
#[no_mangle]
pub static plugin_version: c_uint = sys::SLURM_VERSION_NUMBER;
#[no_mangle]
pub static spank_plugin_version: c_uint = 1;

/// `spank_t` as the callbacks receive it (opaque; [`sys::Spank`] gives it its type back).
type Handle = *mut std::ffi::c_void;

/// Run a callback body; panics never cross into Slurm.
///
/// An error (or panic) becomes -1, except in slurmstepd before the tasks run: a failing
/// `init`, `init_post_opt`, `user_init` or option callback there drains the node in a batch
/// job, so the error is kept and reported by `task_init`, which fails only the step.
pub(crate) fn guard(what: &str, f: impl FnOnce() -> Result<(), String>) -> c_int {
    let msg = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return 0,
        Ok(Err(msg)) => msg,
        Err(_) => format!("internal error (panic) in {what}; please report it"),
    };
    let before_tasks =
        !matches!(what, "slurm_spank_task_init" | "slurm_spank_task_exit" | "slurm_spank_exit");
    if before_tasks && plugin::defer_in_slurmstepd(&msg) {
        return 0;
    }
    if !msg.is_empty() {
        plugin::log_error(&msg);
    }
    -1
}

macro_rules! callback {
    ($sym:ident => $body:path) => {
        /// # Safety
        /// Called by Slurm only, with the handle and plugstack.conf arguments of this callback.
        #[no_mangle]
        pub unsafe extern "C" fn $sym(sp: Handle, ac: c_int, av: *mut *mut c_char) -> c_int {
            sys::dispatch(stringify!($sym), sp, ac, av, $body)
        }
    };
}

callback!(slurm_spank_init => plugin::init);
callback!(slurm_spank_init_post_opt => plugin::init_post_opt);
callback!(slurm_spank_user_init => plugin::user_init);
callback!(slurm_spank_task_init => plugin::task_init);
callback!(slurm_spank_task_exit => plugin::task_exit);
callback!(slurm_spank_exit => plugin::exit);
callback!(slurm_spank_job_epilog => plugin::job_epilog);
