//! The prologue: node checks only.
//!
//! pbs_mom runs it as root, with its own environment (`$PBS_HOME/pbs_environment`) and the
//! job owner in argv; it does not see the job's `qsub -v` variables. It no longer reads them
//! (through `qstat` or otherwise): a user's mistake (a bad image, bad `BERTH_*` options) is
//! reported by the starter into the job's error file with a failed exit status, because
//! TORQUE returns no output files at all for a job whose prologue failed
//! (`send_back_std_and_staged_files` skips exit statuses -1..-3). The prologue fails a job
//! only for what is wrong with the node, and then asks for a requeue, so the job can run on
//! a healthy node:
//!
//! - 0: run the job (always, for every job whose node is fine: native jobs see nothing);
//! - 2: the node's berth site configuration is broken (TORQUE: `JOB_EXEC_RETRY`, the job
//!   goes back to the queue; the message is in syslog, daemon.err, and on stderr).

use berth_runtime::config::Config;

/// Exit status asking pbs_mom to requeue the job (any status above 1; `handle_prologs` in
/// TORQUE's `start_exec.c`).
pub const NODE_FAULT: i32 = 2;

pub fn run(which: &str, args: &[String]) -> i32 {
    let Some(jobid) = args.first() else {
        eprintln!("berth-pbs {which}: expected arguments JOBID USER GROUP ... (as pbs_mom passes them)");
        return NODE_FAULT;
    };
    match Config::load_for_job() {
        Ok((cfg, _)) => {
            // Root, with the job owner from pbs_mom's argv: the user's state directory that
            // no other user can occupy first. Without it berth falls back to /tmp/berth-<uid>,
            // so a failure is only logged.
            if cfg.state_dir.is_empty() && which.starts_with("prologue") {
                if let Some(Ok(acct)) = args.get(1).map(|u| crate::user::lookup(u)) {
                    if acct.uid != 0 {
                        if let Err(e) = berth_runtime::config::create_user_state_dir(acct.uid, acct.gid) {
                            eprintln!("berth-pbs {which}: job {jobid}: {e}");
                        }
                    }
                }
            }
            0
        }
        Err(e) => {
            // The stderr of a requeued job's prologue goes to its spool files, which TORQUE
            // throws away, and pbs_mom logs only the exit status at its default log level:
            // syslog is where the administrator finds the reason.
            let msg = format!(
                "berth-pbs {which}: job {jobid}: requeued: this node's berth configuration is broken ({e}); fix it (`berth config check`) or take the node offline (`pbsnodes -o`)"
            );
            eprintln!("{msg}");
            crate::syslog(&msg);
            NODE_FAULT
        }
    }
}

/// Epilogue shortcut: true when `user` has nothing of holder `name` on this node (no record,
/// lock or temporary record), so a job that never used berth here costs no fork and no
/// privilege drop. Only existence is looked at (no symlink followed, nothing opened or
/// trusted); when in doubt (a broken configuration) the full epilogue runs.
pub fn nothing_to_stop(user: &crate::user::Account, name: &str) -> bool {
    let Ok((cfg, _)) = Config::load_for_job() else { return false };
    berth_runtime::holder::nothing_left(&cfg, user.uid, name)
}
