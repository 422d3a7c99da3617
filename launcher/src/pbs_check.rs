//! `berth config check --pbs`: what a TORQUE or OpenPBS execution host needs for berth-pbs
//! (packaging/torque/README.md, packaging/openpbs/README.md), each item with its fix.
//!
//! Where things are, as pbs_mom finds them: OpenPBS reads `/etc/pbs.conf` (or the file
//! `PBS_CONF_FILE` names) for `PBS_HOME`; TORQUE has no such file and uses the `PBS_HOME` it
//! was built with, `/var/spool/torque` by default. `PBS_HOME` in the environment wins for both.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the packaging installs berth-pbs (the OpenPBS hooks run it from there).
pub const DOCUMENTED_STARTER: &str = "/usr/libexec/berth/berth-pbs";

/// One line of the report.
pub enum Item {
    Ok(String),
    /// What is wrong, and its fix.
    Problem(String, String),
    /// Nothing wrong, or something that cannot be checked from this host.
    Note(String),
}

fn ok(what: String) -> Item {
    Item::Ok(what)
}

fn problem(what: String, fix: impl Into<String>) -> Item {
    Item::Problem(what, fix.into())
}

fn note(what: String) -> Item {
    Item::Note(what)
}

/// `NAME=value` lines of a pbs.conf.
fn conf_value(text: &str, name: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// The value of `$name` in a mom config (`$name value`; the last one counts, as pbs_mom reads
/// the file top to bottom).
fn mom_setting(config: &str, name: &str) -> Option<String> {
    config
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.splitn(2, char::is_whitespace);
            (w.next()? == name).then(|| w.next().unwrap_or("").trim().to_string())
        })
        .next()
}

/// pbs_mom's reading of a boolean setting: true, yes, on, 1 (any case) are true.
fn truthy(v: &str) -> bool {
    let v = v.to_ascii_lowercase();
    ["t", "y", "on", "1"].iter().any(|p| v.starts_with(p))
}

/// The berth-pbs binary at `path`: present, a regular file root owns, runnable by everyone,
/// writable by root only, and neither setuid nor setgid (it needs no privilege; as root it
/// refuses to run a job).
fn check_binary(path: &Path, what: &str) -> Item {
    let fix = format!("install -o root -g root -m 0755 berth-pbs {}", path.display());
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return problem(format!("{what} {}: {e}", path.display()), fix),
    };
    let mode = m.permissions().mode();
    let mut wrong = vec![];
    if !m.file_type().is_file() {
        wrong.push("not a regular file".to_string());
    }
    if m.uid() != 0 {
        wrong.push(format!("owned by uid {}, not root", m.uid()));
    }
    if mode & 0o6000 != 0 {
        wrong.push("setuid/setgid (it must not be: it needs no privilege)".into());
    }
    if mode & 0o022 != 0 {
        wrong.push("writable by group or others".into());
    }
    if mode & 0o001 == 0 {
        wrong.push("not executable by users".into());
    }
    if wrong.is_empty() {
        ok(format!("{what} {} (mode {:04o}, root's, not setuid)", path.display(), mode & 0o7777))
    } else {
        problem(format!("{what} {}: {}", path.display(), wrong.join(", ")), fix)
    }
}

/// A prologue/epilogue file: pbs_mom runs only a regular root-owned file readable and
/// executable by root and not writable by group or others (README: mode 0500, 0700 works);
/// it must be berth-pbs (a copy: same bytes as the starter) or a script that runs it.
fn check_hook(path: &Path, starter: Option<&[u8]>) -> Item {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let fix = format!(
        "install -o root -g root -m 0500 /usr/libexec/berth/berth-pbs {} (packaging/torque/install.sh), \
         or add `/usr/libexec/berth/berth-pbs {} \"$@\"` to the site's own",
        path.display(),
        name
    );
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return problem(format!("{}: {e}", path.display()), fix),
    };
    let mode = m.permissions().mode() & 0o7777;
    let mut wrong = vec![];
    if !m.file_type().is_file() {
        wrong.push("not a regular file (pbs_mom refuses links)".to_string());
    }
    if m.uid() != 0 {
        wrong.push(format!("owned by uid {}, not root", m.uid()));
    }
    if mode != 0o500 && mode != 0o700 {
        wrong.push(format!("mode {mode:04o}, not 0500 or 0700"));
    }
    let mut unread = "";
    if wrong.is_empty() {
        match std::fs::read(path) {
            Ok(body) => {
                let is_copy = starter.is_some_and(|s| s == body);
                let calls = body.windows(b"berth-pbs".len()).any(|w| w == b"berth-pbs");
                if !is_copy && !calls {
                    wrong.push("neither a copy of berth-pbs nor a script that runs it".into());
                }
            }
            Err(_) => unread = "; not readable here: run the check as root to see that it runs berth-pbs",
        }
    }
    if wrong.is_empty() {
        ok(format!("{} (root's, mode {mode:04o}{unread})", path.display()))
    } else {
        problem(format!("{}: {}", path.display(), wrong.join(", ")), fix)
    }
}

/// The job user the privilege-drop check becomes (any ordinary user does: the drop fails, or
/// not, for every user alike).
const DROP_CHECK_USER: &str = "nobody";

/// The epilogue's privilege drop from root to a job's user, tried once with the installed
/// berth-pbs (`berth-pbs drop-check USER`). A berth-pbs that drops through the name service
/// switch dies there when built static, and every job's container then outlives its job.
fn check_drop(starter: &Path) -> Item {
    use std::os::unix::process::ExitStatusExt;
    if !nix::unistd::geteuid().is_root() {
        return note(format!(
            "run the check as root to try the epilogue's drop to a job's user (`{} drop-check {DROP_CHECK_USER}`)",
            starter.display()
        ));
    }
    let what = format!(
        "the epilogue's drop from root to {DROP_CHECK_USER} (`{} drop-check {DROP_CHECK_USER}`)",
        starter.display()
    );
    let fix = "install the berth-pbs of this berth release on the node (packaging/torque/install.sh):                without a working drop the epilogue stops no container";
    let out = match std::process::Command::new(starter)
        .args(["drop-check", DROP_CHECK_USER])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => return problem(format!("{what}: cannot run it: {e}"), fix),
    };
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().replace('\n', "; ");
    if out.status.success() {
        return ok(format!("{what}: {}", said(&out.stdout)));
    }
    let why = match out.status.signal() {
        Some(sig) => format!(
            "killed by {}",
            nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or(format!("signal {sig}"))
        ),
        None => format!("{}: {}", out.status, said(&out.stderr)),
    };
    problem(format!("{what}: {why}"), fix)
}

/// Everything `--pbs` checks, in order.
pub fn items() -> Vec<Item> {
    let conf_path = std::env::var_os("PBS_CONF_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/pbs.conf"));
    let conf = std::fs::read_to_string(&conf_path).ok();
    let openpbs = conf.as_deref().is_some_and(|c| conf_value(c, "PBS_EXEC").is_some());
    let pbs_home = std::env::var("PBS_HOME")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| conf.as_deref().and_then(|c| conf_value(c, "PBS_HOME")))
        .unwrap_or_else(|| "/var/spool/torque".into());
    let pbs_home = PathBuf::from(pbs_home);
    let mut out = vec![];
    if openpbs {
        out.push(ok(format!(
            "OpenPBS ({} names PBS_EXEC), PBS_HOME {}",
            conf_path.display(),
            pbs_home.display()
        )));
        out.push(check_binary(Path::new(DOCUMENTED_STARTER), "berth-pbs"));
        out.push(check_drop(Path::new(DOCUMENTED_STARTER)));
        out.push(note(
            "the hooks `berth` (execjob_launch) and `berth_end` (execjob_epilogue) live on the server and \
             cannot be checked here: on the server host, `qmgr -c \"list hook berth\"` and \
             `qmgr -c \"list hook berth_end\"` must show enabled = true (packaging/openpbs/README.md)"
                .into(),
        ));
        return out;
    }
    out.push(ok(format!("TORQUE, PBS_HOME {}", pbs_home.display())));
    let config_path = pbs_home.join("mom_priv/config");
    let config = match std::fs::read_to_string(&config_path) {
        Ok(c) => c,
        Err(e) => {
            out.push(problem(
                format!("mom config {}: {e}", config_path.display()),
                "run as root, or set PBS_HOME to this node's TORQUE home (pbs_mom -d DIR)",
            ));
            return out;
        }
    };
    let starter = mom_setting(&config, "$job_starter").filter(|s| !s.is_empty()).map(PathBuf::from);
    match &starter {
        None => out.push(problem(
            format!("{}: no `$job_starter` line", config_path.display()),
            format!("add `$job_starter {DOCUMENTED_STARTER}` and restart pbs_mom"),
        )),
        Some(s) if s.file_name().is_some_and(|n| n == "berth-pbs") => {
            out.push(ok(format!("{}: $job_starter {}", config_path.display(), s.display())));
            out.push(check_binary(s, "berth-pbs"));
            out.push(check_drop(s));
            if s != Path::new(DOCUMENTED_STARTER) {
                out.push(note(format!(
                    "$job_starter is not the documented {DOCUMENTED_STARTER}: fine if every node has it there"
                )));
            }
        }
        Some(s) => out.push(problem(
            format!("{}: $job_starter is {}, not berth-pbs", config_path.display(), s.display()),
            format!("set `$job_starter {DOCUMENTED_STARTER}` and restart pbs_mom"),
        )),
    }
    match mom_setting(&config, "$job_starter_run_privileged") {
        Some(v) if truthy(&v) => out.push(problem(
            format!("{}: $job_starter_run_privileged {v}", config_path.display()),
            "remove the line and restart pbs_mom: a privileged starter gets the job's environment as \
             root, and berth-pbs refuses to run jobs that way",
        )),
        _ => out.push(ok("$job_starter_run_privileged is not set".into())),
    }
    // Read once for the four hooks (a static binary of a few megabytes).
    let starter_bytes = starter.as_deref().filter(|s| s.is_file()).and_then(|s| std::fs::read(s).ok());
    for hook in ["prologue", "epilogue", "prologue.parallel", "epilogue.parallel"] {
        out.push(check_hook(&pbs_home.join("mom_priv").join(hook), starter_bytes.as_deref()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mom_config_lines() {
        let c = "# $job_starter /old\n$pbsserver s\n$job_starter   /usr/libexec/berth/berth-pbs\n\
                 $job_starter_run_privileged false\n";
        assert_eq!(mom_setting(c, "$job_starter").as_deref(), Some("/usr/libexec/berth/berth-pbs"));
        assert_eq!(mom_setting(c, "$job_starter_run_privileged").as_deref(), Some("false"));
        assert_eq!(mom_setting(c, "$exec_with_exec"), None);
        assert!(truthy("True") && truthy("1") && truthy("yes") && !truthy("false") && !truthy("0"));
        assert_eq!(
            conf_value("PBS_EXEC=/opt/pbs\nPBS_HOME=/var/spool/pbs\n", "PBS_HOME").as_deref(),
            Some("/var/spool/pbs")
        );
    }
}
