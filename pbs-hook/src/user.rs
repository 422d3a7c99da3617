//! Who berth-pbs runs as.
//!
//! As `$job_starter` it must be the job's user, started so by pbs_mom. TORQUE's
//! `$job_starter_run_privileged true` instead starts it as root with the job's environment,
//! which the job controls entirely (`qsub -v`, `pbsdsh -e`): `USER`/`LOGNAME` would name the
//! user to become, and `LD_PRELOAD` would run the job's code as root in a dynamically linked
//! starter before `main`. Nothing in the environment can be trusted there, so berth-pbs
//! does not support that setting and refuses to run at all. The prologue and epilogue are
//! the only root paths: pbs_mom runs them with its own environment and the job owner in argv.

use std::ffi::CString;

use nix::unistd::{Gid, Uid, User};

/// The administrator's message when the starter runs as root.
pub const RUN_PRIVILEGED: &str = "berth-pbs runs as root as the job starter: `$job_starter_run_privileged true` is set in this node's mom_priv/config, and berth-pbs does not support it (as root it would act on the job's environment, which the job's user controls). Ask the administrator to remove that line and restart pbs_mom; no job was run";

/// Refuse to act as a job starter as root (see the module comment).
pub fn refuse_root() -> Result<(), String> {
    if nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root() {
        return Err(RUN_PRIVILEGED.into());
    }
    Ok(())
}

/// Drop from root to `name` for good: supplementary groups from the group database, then gid,
/// then uid; verified afterwards (no way back to root). Refuses root itself. `name` comes
/// from pbs_mom's argv of the prologue/epilogue, never from the environment.
pub fn drop_to(name: &str) -> Result<User, String> {
    let pw = User::from_name(name).map_err(|e| format!("cannot look up user {name:?}: {e}"))?.ok_or_else(
        || format!("user {name:?} (the job's owner) is not in the passwd database of this node"),
    )?;
    if pw.uid.is_root() {
        return Err(format!("refusing to act for a job of root (job user {name:?})"));
    }
    let cname = CString::new(name).map_err(|_| format!("bad user name {name:?}"))?;
    nix::unistd::initgroups(&cname, pw.gid).map_err(|e| format!("initgroups({name}): {e}"))?;
    nix::unistd::setgid(pw.gid).map_err(|e| format!("setgid({}): {e}", pw.gid))?;
    nix::unistd::setuid(pw.uid).map_err(|e| format!("setuid({}): {e}", pw.uid))?;
    let ok = nix::unistd::getuid() == pw.uid
        && nix::unistd::geteuid() == pw.uid
        && nix::unistd::getgid() == pw.gid
        && nix::unistd::getegid() == pw.gid
        && nix::unistd::setuid(Uid::from_raw(0)).is_err()
        && nix::unistd::setgid(Gid::from_raw(0)).is_err();
    if !ok {
        return Err(format!("could not drop privileges to {name} (uid {}, gid {})", pw.uid, pw.gid));
    }
    // setuid() from root made us non-dumpable, so /proc/self belongs to root and the user
    // namespace set-up (writing /proc/self/setgroups, uid_map) would fail. Nothing privileged
    // is left in this process (no descriptor was opened as root), so it may be the user's.
    nix::sys::prctl::set_dumpable(true).map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    Ok(pw)
}
