//! Who berth-pbs runs as.
//!
//! As `$job_starter` it must be the job's user, started so by pbs_mom. TORQUE's
//! `$job_starter_run_privileged true` instead starts it as root with the job's environment,
//! which the job controls entirely (`qsub -v`, `pbsdsh -e`): `USER`/`LOGNAME` would name the
//! user to become, and `LD_PRELOAD` would run the job's code as root in a dynamically linked
//! starter before `main`. Nothing in the environment can be trusted there, so berth-pbs
//! does not support that setting and refuses to run at all. The prologue and epilogue are
//! the only root paths: pbs_mom runs them with its own environment and the job owner in argv.

use std::process::{Command, Stdio};

use nix::unistd::{Gid, Uid};

/// The administrator's message when the starter runs as root.
pub const RUN_PRIVILEGED: &str = "berth-pbs runs as root as the job starter: `$job_starter_run_privileged true` is set in this node's mom_priv/config, and berth-pbs does not support it (as root it would act on the job's environment, which the job's user controls). Ask the administrator to remove that line and restart pbs_mom; no job was run";

/// Refuse to act as a job starter as root (see the module comment).
pub fn refuse_root() -> Result<(), String> {
    if nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root() {
        return Err(RUN_PRIVILEGED.into());
    }
    Ok(())
}

/// A job owner, as the prologue and epilogue need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary group first.
    pub groups: Vec<u32>,
}

/// Where `getent` lives on glibc systems (Debian, RHEL).
const GETENT: [&str; 2] = ["/usr/bin/getent", "/bin/getent"];

/// Look up the job owner `name` (from pbs_mom's argv) without the name service switch in
/// this process: berth-pbs is built static, and a static glibc program that calls
/// `getpwnam`/`initgroups` loads the NSS modules `/etc/nsswitch.conf` names (`systemd`,
/// `sss`, `ldap`) into itself and dies of SIGSEGV (issue 23: every container outlived its
/// job). `/etc/passwd` and `/etc/group` are read directly; a user they do not know (a
/// directory service's) is asked of `getent`, a dynamically linked program that loads those
/// modules safely, with a clean environment.
pub fn lookup(name: &str) -> Result<Account, String> {
    if name.is_empty() || name.starts_with('-') || name.contains([':', '\n', '\0', ',']) {
        return Err(format!("bad user name {name:?}"));
    }
    let from_files = std::fs::read_to_string("/etc/passwd").ok().and_then(|t| passwd_entry(&t, name));
    let (uid, gid, mut groups) = match from_files {
        Some((uid, gid)) => {
            let groups =
                std::fs::read_to_string("/etc/group").map(|t| member_of(&t, name)).unwrap_or_default();
            (uid, gid, groups)
        }
        None => {
            let line = getent(&["passwd", name])?.ok_or_else(|| {
                format!("user {name:?} (the job's owner) is not in /etc/passwd, and `getent passwd {name}` does not know it on this node")
            })?;
            let (uid, gid) = passwd_entry(&line, name).ok_or_else(|| {
                format!("`getent passwd {name}` printed an entry berth-pbs cannot read: {line:?}")
            })?;
            let groups = getent(&["initgroups", name])?
                .map(|l| l.split_whitespace().skip(1).filter_map(|g| g.parse().ok()).collect())
                .unwrap_or_default();
            (uid, gid, groups)
        }
    };
    groups.retain(|g| *g != gid);
    groups.insert(0, gid);
    groups.dedup();
    Ok(Account { name: name.to_string(), uid, gid, groups })
}

/// `(uid, gid)` of `name` in passwd-format `text`.
fn passwd_entry(text: &str, name: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
    })
}

/// The groups of group-format `text` that list `name` as a member.
fn member_of(text: &str, name: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m.trim() == name)).then(|| f[2].parse().ok()).flatten()
        })
        .collect()
}

/// `getent ARGS`' first line; None when it knows no such entry (exit status 2).
fn getent(args: &[&str]) -> Result<Option<String>, String> {
    let Some(bin) = GETENT.iter().find(|p| std::path::Path::new(p).is_file()) else {
        return Err(format!(
            "no getent ({}) on this node to look up users outside /etc/passwd",
            GETENT.join(" or ")
        ));
    };
    let (db, key) = (args[0], args[1]);
    let out = Command::new(bin)
        .arg(db)
        .arg("--")
        .arg(key)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {bin}: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_string)),
        Some(2) => Ok(None),
        _ => Err(format!("`{bin} {db} {key}` failed ({})", out.status)),
    }
}

/// Drop from root to `acct` for good: the supplementary groups [`lookup`] found, then gid,
/// then uid; verified afterwards (no way back to root). Refuses root itself. The name comes
/// from pbs_mom's argv of the prologue/epilogue, never from the environment.
pub fn drop_to(acct: &Account) -> Result<(), String> {
    let name = &acct.name;
    if acct.uid == 0 {
        return Err(format!("refusing to act for a job of root (job user {name:?})"));
    }
    let (uid, gid) = (Uid::from_raw(acct.uid), Gid::from_raw(acct.gid));
    let groups: Vec<Gid> = acct.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups({:?}): {e}", acct.groups))?;
    nix::unistd::setgid(gid).map_err(|e| format!("setgid({gid}): {e}"))?;
    nix::unistd::setuid(uid).map_err(|e| format!("setuid({uid}): {e}"))?;
    let ok = nix::unistd::getuid() == uid
        && nix::unistd::geteuid() == uid
        && nix::unistd::getgid() == gid
        && nix::unistd::getegid() == gid
        && nix::unistd::setuid(Uid::from_raw(0)).is_err()
        && nix::unistd::setgid(Gid::from_raw(0)).is_err();
    if !ok {
        return Err(format!("could not drop privileges to {name} (uid {uid}, gid {gid})"));
    }
    // setuid() from root made us non-dumpable, so /proc/self belongs to root and the user
    // namespace set-up (writing /proc/self/setgroups, uid_map) would fail. Nothing privileged
    // is left in this process (no descriptor was opened as root), so it may be the user's.
    nix::sys::prctl::set_dumpable(true).map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_as_nss_files_would() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n+@netgroup\nalice:x:1001:1001::/home/alice:/bin/sh\nal:x:1002:1002::/h:/bin/sh\n";
        assert_eq!(passwd_entry(passwd, "alice"), Some((1001, 1001)));
        assert_eq!(passwd_entry(passwd, "al"), Some((1002, 1002)));
        assert_eq!(passwd_entry(passwd, "ali"), None);
        let group = "root:x:0:\nusers:x:100:bob, alice\nalices:x:1001:\nvideo:x:44:alicex\nsudo:x:27:alice\n";
        assert_eq!(member_of(group, "alice"), vec![100, 27]);
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid, root.groups[0]), (0, 0, 0));
        assert!(lookup("no-such-user-berth-test").unwrap_err().contains("not in /etc/passwd"));
        assert!(lookup("-s").unwrap_err().contains("bad user name"));
        assert!(lookup("a:b").is_err());
    }
}
