//! `berth list`: the calling user's held containers on this node (a Slurm step's, a PBS job's,
//! `berth holder`'s, the warm ones `berth exec` keeps) and the named containers their jobs
//! keep between steps (`--container-name`), as a table or JSON.

use std::path::PathBuf;

use berth_runtime::config::Config;
use berth_runtime::error::Error;
use berth_runtime::holder;
use clap::Args;
use serde::Serialize;

#[derive(Args)]
pub struct ListArgs {
    /// Print JSON (`{"holders": [...], "named": [...]}`) instead of a table
    #[arg(long)]
    pub json: bool,
}

/// One running holder, as listed.
#[derive(Debug, Serialize, PartialEq)]
pub struct Listed {
    pub name: String,
    pub image: PathBuf,
    pub pid: i32,
    /// Seconds since the holder started.
    pub age_s: u64,
    /// Processes inside the container besides the holder.
    pub members: usize,
}

pub fn run(cfg: &Config, args: ListArgs) -> Result<i32, Error> {
    let uid = nix::unistd::getuid().as_raw();
    let list = list(cfg, uid);
    let named = berth_runtime::named::list(cfg, uid);
    if args.json {
        let all = serde_json::json!({ "holders": list, "named": named });
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return Ok(0);
    }
    print!("{}", table(&list));
    if !named.is_empty() {
        print!("\n{}", named_table(&named));
    }
    Ok(0)
}

/// `berth rm NAME`: remove the user's named container NAME of the global scope on this node,
/// as the user, unless a step has it now (its lock says so). A step's srun returns a moment
/// before its slurmstepd lets the container go: `berth rm` waits
/// [`RM_WAIT`] for its lock.
pub fn remove_global(cfg: &Config, uid: u32, name: &str, wait: std::time::Duration) -> Result<(), Error> {
    use berth_runtime::named;
    let what = format!("rm {name}");
    if !holder::valid_name(name) {
        return Err(Error::request(
            what,
            "not a container name",
            "names hold only letters, digits and . _ - + @ (see `berth list`)",
        ));
    }
    let dir = named::dir(cfg, uid, named::Scope::Global, 0, name);
    if std::fs::symlink_metadata(&dir).is_err() {
        return Err(Error::request(
            what,
            format!(
                "no named container {name} kept across jobs on this node ({} does not exist)",
                dir.display()
            ),
            "`berth list` shows yours (job `global`); job-scoped ones go at the end of their job",
        ));
    }
    match named::open(cfg, uid, &dir, wait) {
        Err(named::OpenError::InUse) => Err(Error::request(
            what,
            "a job step is running in it on this node",
            "remove it once that step has ended",
        )),
        Err(named::OpenError::Other(e)) => Err(e),
        // Removed while locked: a step starting now waits, then makes a fresh container.
        Ok(opened) => named::remove(&opened.dir).map_err(|e| Error::io("cannot remove", &dir, e)),
    }
}

/// How long `berth rm` waits for a step that is ending to release the container.
pub const RM_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The named containers' table, below the holders'.
pub fn named_table(list: &[berth_runtime::named::Listed]) -> String {
    let w = list.iter().map(|l| l.name.len()).max().unwrap_or(0).max(5);
    let j = list.iter().map(|l| l.job.len()).max().unwrap_or(0).max(3);
    let mut out = format!("{:<w$}  {:<j$}  {:>7}  IMAGE\n", "NAMED", "JOB", "AGE");
    for l in list {
        out += &format!("{:<w$}  {:<j$}  {:>7}  {}\n", l.name, l.job, age(l.age_s), l.image.display());
    }
    out
}

/// The running holders of `uid`, by name. Records of holders that are gone are skipped (and
/// removed by `holder::find`, as they would be by the next joiner).
pub fn list(cfg: &Config, uid: u32) -> Vec<Listed> {
    let record = holder::record_path(cfg, uid, "x");
    let Some(dir) = record.parent() else { return vec![] };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(String::from))
        .filter(|n| holder::valid_name(n))
        .collect();
    names.sort();
    let now = uptime_ticks();
    names
        .into_iter()
        .filter_map(|name| {
            let st = holder::find(cfg, uid, &name).ok()?;
            let age_s = match (now, clock_ticks()) {
                (Some(now), Some(hz)) => now.saturating_sub(st.start_time) / hz,
                _ => 0,
            };
            let members = holder::members(&st).len();
            Some(Listed { name, image: st.image, pid: st.pid, age_s, members })
        })
        .collect()
}

/// The table `berth list` prints; a header only when nothing is held.
pub fn table(list: &[Listed]) -> String {
    let w = list.iter().map(|l| l.name.len()).max().unwrap_or(0).max(4);
    let mut out = format!("{:<w$}  {:>8}  {:>7}  {:>7}  IMAGE\n", "NAME", "PID", "AGE", "MEMBERS");
    for l in list {
        out += &format!(
            "{:<w$}  {:>8}  {:>7}  {:>7}  {}\n",
            l.name,
            l.pid,
            age(l.age_s),
            l.members,
            l.image.display()
        );
    }
    out
}

/// `42s`, `3m07s`, `2h05m`, `3d04h`.
fn age(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn clock_ticks() -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as u64)
}

/// Now, in the clock ticks since boot that `/proc/PID/stat` counts start times in.
fn uptime_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * clock_ticks()? as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `berth rm NAME`: refused while a step holds the container, removed (its whole kept
    /// layer, overlayfs' mode-0 work directory included) once none does; then gone.
    #[test]
    fn rm_removes_a_global_named_container_only_when_no_step_has_it() {
        use berth_runtime::named;
        use std::time::Duration;
        let t = tempfile::tempdir().unwrap();
        let cfg = Config { state_dir: t.path().join("st").display().to_string(), ..Config::default() };
        let uid = nix::unistd::getuid().as_raw();
        let dir = named::dir(&cfg, uid, named::Scope::Global, 0, "g");
        let mut held = named::open(&cfg, uid, &dir, Duration::ZERO).unwrap();
        held.record_image(std::path::Path::new("/i/a.sqsh")).unwrap();
        // The layer lives outside the state directory ([named] layers_dir).
        let layers = t.path().join("layers");
        let layer = held.make_layer(&layers, uid).unwrap();
        std::fs::create_dir_all(layer.join("upper/data")).unwrap();
        std::fs::write(layer.join("upper/data/state"), "x").unwrap();
        std::fs::create_dir_all(layer.join("work/work")).unwrap();
        std::fs::set_permissions(
            layer.join("work/work"),
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .unwrap();

        let e = remove_global(&cfg, uid, "g", Duration::from_millis(100)).unwrap_err().to_string();
        assert!(e.contains("rm g: ") && e.contains("a job step is running in it"), "{e}");
        assert!(layer.join("upper/data/state").exists());
        drop(held);
        remove_global(&cfg, uid, "g", Duration::from_millis(100)).unwrap();
        assert!(!dir.exists());
        assert!(!layer.exists(), "its layer goes with it");
        let e = remove_global(&cfg, uid, "g", Duration::from_millis(100)).unwrap_err().to_string();
        assert!(e.contains("no named container g kept across jobs on this node"), "{e}");
        let e = remove_global(&cfg, uid, "../st", Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("not a container name"), "{e}");
    }

    #[test]
    fn ages_read_like_ps() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(187), "3m07s");
        assert_eq!(age(7500), "2h05m");
        assert_eq!(age(3 * 86400 + 4 * 3600 + 5), "3d04h");
    }

    #[test]
    fn table_columns() {
        assert_eq!(table(&[]), "NAME       PID      AGE  MEMBERS  IMAGE\n");
        let t = table(&[Listed {
            name: "slurm-12.0".into(),
            image: "/i/a.sqsh".into(),
            pid: 4242,
            age_s: 61,
            members: 4,
        }]);
        assert_eq!(t.lines().nth(1), Some("slurm-12.0      4242    1m01s        4  /i/a.sqsh"));
    }

    #[test]
    fn named_table_columns() {
        let t = named_table(&[berth_runtime::named::Listed {
            name: "n1".into(),
            job: "42".into(),
            image: "/i/a.sqsh".into(),
            age_s: 5,
        }]);
        assert_eq!(t, "NAMED  JOB      AGE  IMAGE\nn1     42        5s  /i/a.sqsh\n");
    }

    #[test]
    fn own_holder_is_listed_and_a_stale_record_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config { state_dir: dir.path().join("st").display().to_string(), ..Config::default() };
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(list(&cfg, uid), vec![]);
        let rec = holder::record_path(&cfg, uid, "gone");
        std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
        let stale = serde_json::json!({"name": "gone", "pid": i32::MAX, "start_time": 1, "user_ns": 0,
            "mnt_ns": 0, "image": "/x.sqsh", "env": {"host": [], "overrides": [], "ld_library_path_prepend": []},
            "cleanenv": false, "workdir": [], "workdir_required": false});
        std::fs::write(&rec, stale.to_string()).unwrap();
        // This test process stands in for a live holder (its own pid and start time).
        let me = std::process::id() as i32;
        let live = serde_json::json!({"name": "live", "pid": me, "start_time": holder::start_time("self").unwrap(),
            "user_ns": 0, "mnt_ns": 0, "image": "/i/a.sqsh",
            "env": {"host": [], "overrides": [], "ld_library_path_prepend": []},
            "cleanenv": false, "workdir": [], "workdir_required": false});
        std::fs::write(holder::record_path(&cfg, uid, "live"), live.to_string()).unwrap();
        let l = list(&cfg, uid);
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!((l[0].name.as_str(), l[0].pid, l[0].image.as_path()), ("live", me, "/i/a.sqsh".as_ref()));
        assert!(l[0].age_s < 3600);
        assert!(!rec.exists(), "the stale record is cleaned up");
    }
}
