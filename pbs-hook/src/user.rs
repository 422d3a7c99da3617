//! Becoming the job's user. The one place where berth-pbs gives up root: pbs_mom runs it as
//! root for `$job_starter_run_privileged true` and for the prologue/epilogue.

use std::ffi::CString;

use nix::unistd::{Gid, Uid, User};

/// The job user's name, from the environment pbs_mom gives the job (`USER`, `LOGNAME`, then
/// the submitter's `PBS_O_LOGNAME`).
pub fn job_user_name() -> Option<String> {
    ["USER", "LOGNAME", "PBS_O_LOGNAME"].iter().filter_map(|k| std::env::var(k).ok()).find(|v| !v.is_empty())
}

/// Drop from root to `name` for good: supplementary groups from the group database, then gid,
/// then uid; verified afterwards (no way back to root). Refuses root itself: a container job
/// never runs as root.
pub fn drop_to(name: &str) -> Result<User, String> {
    let pw = User::from_name(name).map_err(|e| format!("cannot look up user {name:?}: {e}"))?.ok_or_else(
        || format!("user {name:?} (the job's owner) is not in the passwd database of this node"),
    )?;
    if pw.uid.is_root() {
        return Err(format!("refusing to run a container job as root (job user {name:?})"));
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

/// If started as root (run-privileged starter), become the job user; otherwise nothing.
pub fn drop_if_root() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let name = job_user_name().ok_or_else(|| {
        "started as root ($job_starter_run_privileged) but USER, LOGNAME and PBS_O_LOGNAME are all unset: cannot tell the job's user".to_string()
    })?;
    let pw = drop_to(&name)?;
    // pbs_mom set HOME for the job already; keep USER/LOGNAME consistent with who we are now.
    if std::env::var_os("HOME").is_none() {
        std::env::set_var("HOME", &pw.dir);
    }
    Ok(())
}
