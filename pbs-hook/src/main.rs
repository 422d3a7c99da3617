//! `berth-pbs`: berth for TORQUE and OpenPBS.
//!
//! TORQUE has no loadable plugin API for job launch, so this is an executable pbs_mom starts:
//!
//! - as `$job_starter` (default mode), as the job's user (never root: `user.rs`):
//!   `berth-pbs /bin/bash -bash` with the job script's line on stdin (the batch or interactive
//!   shell, `jobfile.rs`), or `berth-pbs TASK ARGV...` with stdin `/dev/null` (every task
//!   spawned through TM: pbsdsh, orted). With `CONTAINER` in the job's environment both run in
//!   one container per node per job (see `berth_runtime::holder`); without it the command is
//!   executed unchanged.
//! - as `prologue`/`epilogue` (and `.parallel`), by name (symlinks in `mom_priv`) or as
//!   `berth-pbs prologue ARGS...`: check the node before the job runs (`prologue.rs`); stop
//!   the job's containers after it.
//! - as an rsh agent for MPI launchers without TM support: `berth-pbs rsh HOST CMD...` runs
//!   `ssh HOST ... berth-pbs task CMD...`, so remote daemons enter the image too.
//!
//! Exit status: the job's own; 255 with one `berth: ...` message (in the job's error file)
//! for a failure the user can fix (image, options) or berth's own. The prologue exits 0, or
//! 2 (requeue) for a node fault (see `prologue.rs`); the epilogue 0, or 1 when the job's
//! container could not be stopped (the reason on stderr and in syslog).

mod jobfile;
mod options;
mod prologue;
mod user;

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_runtime::config::Config;
use berth_runtime::error::{Error, EXIT_BERTH_ERROR};
use berth_runtime::holder::{self, Lifetime};
use berth_runtime::image::{self, FsType, Image, RootFs};
use berth_runtime::plan::HostFacts;
use berth_runtime::request::{Action, BindSpec, Request};
use berth_runtime::scheduler::{self, pbs_holder_name as holder_name, shell_quote as sh_quote};
use berth_runtime::session;

const USAGE: &str = "usage: berth-pbs COMMAND [ARGS...]        ($job_starter: run COMMAND in $CONTAINER)
       berth-pbs prologue|epilogue[.parallel] JOBID USER GROUP ...   (or installed under those names)
       berth-pbs rsh [SSH-OPTIONS] HOST COMMAND...   (OMPI_MCA_plm_rsh_agent)
       berth-pbs task COMMAND [ARGS...]   (a task on this node, in the job's container)
       berth-pbs drop-check USER   (as root: the epilogue's privilege drop, for `berth config check --pbs`)";

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    // The common case must cost nothing: a job without CONTAINER, run by an unprivileged
    // starter, is executed unchanged before anything else is looked at.
    let named = args.first().map(basename).unwrap_or_default();
    let first = args.get(1).map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
    let hook = match named.as_str() {
        "prologue" | "prologue.parallel" | "epilogue" | "epilogue.parallel" => Some((named.clone(), 1)),
        _ => match first.as_str() {
            "prologue" | "prologue.parallel" | "epilogue" | "epilogue.parallel" => Some((first.clone(), 2)),
            _ => None,
        },
    };
    let container_set = std::env::var_os("CONTAINER").is_some_and(|v| !v.is_empty());
    let own_flag = matches!(first.as_str(), "rsh" | "drop-check" | "-h" | "--help" | "--version");
    if hook.is_none() && !container_set && !own_flag && args.len() >= 2 {
        let rest = if first == "task" { &args[2..] } else { &args[1..] };
        std::process::exit(passthrough(rest));
    }
    let code = std::panic::catch_unwind(|| dispatch(&args, hook, &first)).unwrap_or_else(|_| {
        eprintln!("berth-pbs: internal error (a bug: please report it with the job's output)");
        if named.starts_with("prologue") || first.starts_with("prologue") {
            prologue::NODE_FAULT
        } else {
            EXIT_BERTH_ERROR
        }
    });
    std::process::exit(code)
}

fn basename(a: &OsString) -> String {
    Path::new(a).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn dispatch(args: &[OsString], hook: Option<(String, usize)>, first: &str) -> i32 {
    let strings = || args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<String>>();
    if let Some((which, skip)) = hook {
        let a: Vec<String> = strings().into_iter().skip(skip).collect();
        return if which.starts_with("prologue") { prologue::run(&which, &a) } else { epilogue(&which, &a) };
    }
    match first {
        "" | "-h" | "--help" => {
            println!("{USAGE}");
            if first.is_empty() {
                EXIT_BERTH_ERROR
            } else {
                0
            }
        }
        "--version" => {
            println!("berth-pbs {}", env!("CARGO_PKG_VERSION"));
            0
        }
        "rsh" => rsh(&strings()[2..]),
        "drop-check" => drop_check(strings().get(2)),
        "task" => starter(&args[2..], true),
        _ => starter(&args[1..], false),
    }
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("berth: {msg}");
    EXIT_BERTH_ERROR
}

/// Execute `argv` as is (host PATH), as the job user.
fn passthrough(argv: &[OsString]) -> i32 {
    if let Err(e) = user::refuse_root() {
        return fail(e);
    }
    if argv.is_empty() {
        return fail(format!("no command given\n{USAGE}"));
    }
    let c: Vec<CString> = argv.iter().map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    let e = nix::unistd::execvp(&c[0], &c).unwrap_err();
    eprintln!("berth: cannot run {}: {}", argv[0].to_string_lossy(), e.desc());
    if e == nix::Error::ENOENT {
        127
    } else {
        126
    }
}

// ---------------------------------------------------------------------------------------
// $job_starter

fn stdin_is_pipe() -> bool {
    use nix::sys::stat::SFlag;
    nix::sys::stat::fstat(0)
        .map(|st| {
            let t = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            t == SFlag::S_IFIFO || t == SFlag::S_IFSOCK
        })
        .unwrap_or(false)
}

/// Read one line from fd 0 without buffering beyond it (the rest is the script's stdin).
fn read_stdin_line() -> std::io::Result<String> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: fd 0 is our stdin; ManuallyDrop keeps it open when the File goes away.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    let mut out = vec![];
    let mut b = [0u8; 1];
    loop {
        match f.read(&mut b) {
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => out.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if out.len() > 4096 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// `CONTAINER` made absolute: relative paths are taken from the submit directory.
fn resolve_image(container: &str, workdir: Option<&str>) -> PathBuf {
    berth_runtime::scheduler::resolve_image(container, workdir.map(Path::new))
}

/// A registry image (`CONTAINER=docker://REF`) as a file: converted once per digest into the
/// image cache by the installed `berth` (beside berth-pbs, else on PATH), which prints the
/// file's path; its messages go to the job's error file. berth-pbs does not link the registry
/// client: its TLS library has no business in a program pbs_mom runs as root. Tasks and
/// remote nodes then get the file's path in `CONTAINER` and convert nothing.
fn registry_image(image: PathBuf) -> Result<PathBuf, Error> {
    if !scheduler::is_registry_image(&image) {
        return Ok(image);
    }
    let reference = image.to_string_lossy();
    let berth = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("berth")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("berth"));
    let what = format!("image {reference}");
    let out = std::process::Command::new(&berth)
        .args(["cache", "image", &*reference])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| {
            Error::request(
                &what,
                format!("cannot run {}: {e}", berth.display()),
                "install berth on every node",
            )
        })?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        return Err(Error::request(&what, "could not be converted (the message above says why)", ""));
    }
    Ok(PathBuf::from(path))
}

/// The image file the job's container on this node runs, if it runs.
fn running_image(jobid: &str) -> Option<PathBuf> {
    let (cfg, _) = Config::load_for_job().ok()?;
    let uid = nix::unistd::getuid().as_raw();
    holder::find(&cfg, uid, &holder_name(jobid)).ok().map(|st| st.image)
}

/// Open and check an image as the calling user: recognised, readable, mountable without
/// privileges.
fn check_image(path: &Path) -> Result<Image, Error> {
    let img = image::open(path)?;
    match &img.root {
        RootFs::Directory { .. } => {
            use nix::unistd::AccessFlags;
            nix::unistd::access(path, AccessFlags::R_OK | AccessFlags::X_OK).map_err(|e| {
                Error::image(path, format!("the directory is not readable by you ({})", e.desc()), "ask its owner to make it readable (chmod a+rx), or use another image")
            })?;
        }
        RootFs::Embedded { fs: FsType::Ext3, .. } => {
            return Err(Error::image(
                path,
                "holds an ext3 root filesystem (Singularity 2.x image), which berth-pbs cannot mount without privileges",
                "convert it once to SquashFS (e.g. `apptainer build new.sif old.img`)",
            ))
        }
        _ => {}
    }
    Ok(img)
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// System directories never bound as the job's working directory.
fn bindable_workdir(p: &Path) -> bool {
    p.is_absolute()
        && p != Path::new("/")
        && ![
            "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev", "/boot", "/opt",
            "/var/lib",
        ]
        .iter()
        .any(|s| p.starts_with(s))
        && p.is_dir()
}

/// `NAME=value` of a `KEY=value` lines file (pbs.conf, pbs_environment).
fn file_value(path: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// The configuration file the epilogue reads: pbs_mom runs it with its own environment, which
/// both TORQUE and OpenPBS moms take from `$PBS_HOME/pbs_environment`, so that file's
/// `BERTH_CONFIG`, else the default path (None). `PBS_HOME`: TORQUE sets it for the job;
/// OpenPBS names it in `/etc/pbs.conf` (or the file `PBS_CONF_FILE` names).
fn epilogue_config() -> Option<PathBuf> {
    let home = env("PBS_HOME").map(PathBuf::from).or_else(|| {
        let conf = env("PBS_CONF_FILE").unwrap_or_else(|| "/etc/pbs.conf".into());
        file_value(Path::new(&conf), "PBS_HOME").map(PathBuf::from)
    })?;
    file_value(&home.join("pbs_environment"), "BERTH_CONFIG").map(PathBuf::from)
}

/// A job's own `BERTH_CONFIG` (`qsub -v`) may set what it likes but where the job's container
/// is recorded: the epilogue, which stops the container when the job ends, reads the site's
/// configuration and looks there only, so a job that moved it would leave its container
/// running after the job.
fn check_state_dir_is_the_sites(cfg: &Config, jobid: &str) -> Result<(), String> {
    let Some(mine) = std::env::var_os("BERTH_CONFIG").map(PathBuf::from) else { return Ok(()) };
    let site = epilogue_config();
    if site.as_deref() == Some(mine.as_path()) {
        return Ok(());
    }
    let default = Path::new(berth_runtime::config::DEFAULT_PATH);
    let site_cfg = match site.as_deref().or_else(|| default.exists().then_some(default)) {
        Some(p) => match Config::load_file(p) {
            Ok(c) => c,
            // A broken site file fails the prologue (requeue), not the job.
            Err(_) => return Ok(()),
        },
        None => Config::default(),
    };
    let uid = nix::unistd::getuid().as_raw();
    let name = holder_name(jobid);
    let (ours, theirs) = (holder::record_path(cfg, uid, &name), holder::record_path(&site_cfg, uid, &name));
    if ours == theirs {
        return Ok(());
    }
    let dir = |p: &Path| p.parent().and_then(Path::parent).unwrap_or(p).display().to_string();
    Err(format!(
        "BERTH_CONFIG={} moves the job's container state to {}, but the epilogue that stops the container when the job ends looks in {} ({}): a job may not move berth's state directory; remove `state_dir` from {}, or drop BERTH_CONFIG from the job's variables",
        mine.display(),
        dir(&ours),
        dir(&theirs),
        match &site {
            Some(p) => format!("the site's {}", p.display()),
            None if default.exists() => format!("the site's {}", default.display()),
            None => "berth's default".into(),
        },
        mine.display()
    ))
}

fn starter(argv: &[OsString], forced_task: bool) -> i32 {
    // Never as root: see user.rs (before anything the job controls is read).
    if let Err(e) = user::refuse_root() {
        return fail(e);
    }
    let argv: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    if argv.is_empty() {
        return fail(format!("no command given\n{USAGE}"));
    }
    if !matches!(std::env::var_os("CONTAINER"), Some(v) if !v.is_empty()) {
        return passthrough(&argv.iter().map(OsString::from).collect::<Vec<_>>());
    }
    options::restore_carried();
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let opts = match options::parse(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let Some(jobid) = env("PBS_JOBID") else {
        return fail("CONTAINER is set but PBS_JOBID is not: berth-pbs runs jobs started by pbs_mom (use `berth exec IMAGE CMD` elsewhere)");
    };
    match Config::load_for_job() {
        // Not for `berth-pbs task` (the rsh agent's remote commands): they come from a job
        // whose shell passed the check on the mother superior, with ssh's environment and
        // the mother superior's PBS_HOME.
        Ok((cfg, _)) if !forced_task => {
            if let Err(e) = check_state_dir_is_the_sites(&cfg, &jobid) {
                return fail(e);
            }
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("berth: {e}");
            return e.exit_code();
        }
    }
    let launch = if forced_task {
        jobfile::Launch::Task
    } else {
        let interactive = env("PBS_ENVIRONMENT").as_deref() == Some("PBS_INTERACTIVE");
        jobfile::classify(&argv, interactive, stdin_is_pipe())
    };
    let script = if matches!(launch, jobfile::Launch::Batch { .. }) {
        let line = match read_stdin_line() {
            Ok(l) => l,
            Err(e) => {
                return fail(format!("cannot read the job script's path from the batch shell's stdin: {e}"))
            }
        };
        let parsed = match jobfile::parse_line(&line) {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        if let Err(e) = std::fs::File::open(&parsed.script) {
            return fail(format!("cannot read the job script {}: {e}", parsed.script.display()));
        }
        Some(parsed)
    } else {
        None
    };
    let argv = jobfile::container_argv(&launch, script.as_ref(), &argv);
    let image =
        resolve_image(&std::env::var("CONTAINER").unwrap_or_default(), env("PBS_O_WORKDIR").as_deref());
    // What the user named (a `docker://` reference, not the cache file it became), for notes.
    let named = image.display().to_string();
    // A TM task on a node where the job's container already runs joins it as it is, without
    // asking the registry again: the tag may point elsewhere by now (the task would then be
    // refused for naming another image), and a wide job's tasks would each cost the registry
    // a manifest request.
    let running = (matches!(launch, jobfile::Launch::Task) && scheduler::is_registry_image(&image))
        .then(|| running_image(&jobid))
        .flatten();
    let converted = match running {
        Some(i) => Ok(i),
        None => registry_image(image),
    };
    let image = match converted {
        Ok(i) => i,
        Err(e) => {
            eprintln!("berth: {e}");
            return e.exit_code();
        }
    };
    // Tasks see where the job's image is, and remote nodes (rsh agent) get the same options.
    std::env::set_var("CONTAINER", &image);
    let carried = options::carried_from_env();
    if !carried.is_empty() {
        std::env::set_var(options::CARRIED, serde_json::to_string(&carried).unwrap_or_default());
    }
    if let Some(ssh) = env("BERTH_PBS_SSH") {
        // BERTH_* variables do not pass into the container; the rsh agent script reads this.
        std::env::set_var("PBS_BERTH_SSH", ssh);
    }
    let script = script.map(|s| s.script);
    match run_in_container(&jobid, &image, &named, &opts, script.as_deref(), &launch, argv) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("berth: {e}");
            e.exit_code()
        }
    }
}

enum Never {}

#[allow(clippy::too_many_arguments)]
fn run_in_container(
    jobid: &str,
    image: &Path,
    named: &str,
    opts: &options::Options,
    script: Option<&Path>,
    launch: &jobfile::Launch,
    mut argv: Vec<String>,
) -> Result<Never, Error> {
    let (cfg, _) = Config::load_for_job()?;
    let host = HostFacts::probe()?;
    let name = holder_name(jobid);
    let make = || {
        let img = check_image(image)?;
        let mut req = Request::new(image.to_path_buf(), Action::Shell);
        let bind =
            |src: &Path, ro: bool| BindSpec { src: src.to_path_buf(), dst: src.to_path_buf(), readonly: ro };
        let workdir = env("PBS_O_WORKDIR").map(PathBuf::from).filter(|p| bindable_workdir(p));
        if let Some(w) = &workdir {
            req.binds.push(bind(w, false));
        }
        if let Some(s) = script {
            req.binds.push(bind(s, true));
        }
        // The directories pbs_mom made for the job, as a native job has them: TMPDIR (OpenPBS
        // for every job, /var/tmp/pbs.<jobid>; TORQUE under mom_priv/config's $tmpdir) and
        // OpenPBS' PBS_JOBDIR (the job's staging and execution directory: the home directory,
        // or a sandbox=PRIVATE directory, where the job's shell starts). /tmp itself is bound
        // by the site configuration's binds.
        for var in ["TMPDIR", "PBS_JOBDIR"] {
            let Some(d) = env(var).map(|d| PathBuf::from(d.trim_end_matches('/'))) else { continue };
            if bindable_workdir(&d) && d != Path::new("/tmp") && !req.binds.iter().any(|b| b.dst == d) {
                req.binds.push(bind(&d, false));
            }
        }
        let aux = env("PBS_HOME").map(|h| Path::new(&h).join("aux")).filter(|p| p.is_dir()).or_else(|| {
            env("PBS_NODEFILE")
                .and_then(|f| Path::new(&f).parent().map(Path::to_path_buf))
                .filter(|p| p.is_dir())
        });
        if let Some(a) = aux {
            req.binds.push(bind(&a, true));
        }
        // berth-pbs and its rsh agent script, for MPI launchers inside the image that use
        // ssh (the agent must be runnable there: the script is, with the image's /bin/sh).
        if let Ok(exe) = std::env::current_exe() {
            let agent = exe.with_file_name("berth-pbs-rsh");
            if agent.is_file() {
                req.binds.push(bind(&agent, true));
            }
            req.binds.push(bind(&exe, true));
        }
        req.binds.extend(opts.binds.iter().cloned());
        // Like a native job: the directory pbs_mom started the job in ($HOME, or
        // PBS_O_INITDIR), unless the job asks for another.
        req.workdir = opts.workdir.clone();
        let (nvidia, rocm) = options::gpus_allocated(&cfg, env);
        req.nvidia = opts.nvidia || nvidia;
        req.rocm = opts.rocm || rocm;
        req.mpi = opts.mpi;
        req.cleanenv = opts.cleanenv;
        req.mount_home = !opts.no_home;
        req.writable_tmpfs = opts.writable_tmpfs;
        session::prepare_opened(&cfg, req, img)
    };
    let joined = session::join_or_create(&cfg, &name, image, make, Lifetime::UntilStopped)?;
    jobfile::shell_fallback(launch, &mut argv, named);
    Err(joined.exec(&cfg, &host, &argv))
}

// ---------------------------------------------------------------------------------------
// prologue / epilogue

/// Run `f` in a child that has become `user` (or directly if we are that user already);
/// true when it succeeded. `f` prints its own messages. A child that dies of a signal is an
/// error naming it (it printed nothing).
fn as_user(acct: &user::Account, f: impl FnOnce() -> bool) -> Result<bool, String> {
    let user = &acct.name;
    if nix::unistd::geteuid().as_raw() == acct.uid {
        return Ok(f());
    }
    // SAFETY: berth-pbs is single-threaded; the child only drops privileges, runs `f` and exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            let code = match user::drop_to(acct) {
                Ok(_) => {
                    if f() {
                        0
                    } else {
                        1
                    }
                }
                Err(e) => {
                    eprintln!("berth-pbs: {e}");
                    1
                }
            };
            use std::io::Write;
            let _ = std::io::stdout().flush();
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            use nix::sys::wait::WaitStatus;
            match nix::sys::wait::waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => Ok(code == 0),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    Err(format!("the process that acts as {user} was killed by {sig}"))
                }
                Ok(other) => Err(format!("the process that acts as {user} ended oddly: {other:?}")),
                Err(e) => Err(format!("waitpid: {e}")),
            }
        }
    }
}

/// A message for the administrator: syslog (daemon.err), where pbs_mom's own messages go,
/// whatever the mom's log level; pbs_mom keeps a hook's stderr only in the job's files.
fn syslog(msg: &str) {
    let Ok(c) = CString::new(msg.replace('\0', " ")) else { return };
    // SAFETY: the identity is a static C string; the message is passed through "%s".
    unsafe {
        libc::openlog(c"berth-pbs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
        libc::syslog(libc::LOG_ERR, c"%s".as_ptr(), c.as_ptr());
        libc::closelog();
    }
}

/// Epilogue: stop the job's container on this node (as the job user: the state files are
/// theirs to write, so a root epilogue must not trust them) and remove what is left.
/// 0 when nothing of the job is left; 1, with the reason on stderr (the job's error file
/// under TORQUE) and in syslog, when its container could not be stopped.
fn epilogue(which: &str, args: &[String]) -> i32 {
    let (Some(jobid), Some(user)) = (args.first(), args.get(1)) else {
        eprintln!("berth-pbs {which}: expected arguments JOBID USER GROUP ... (as pbs_mom passes them)");
        return 0;
    };
    let name = holder_name(jobid);
    let loud = |why: String| {
        let msg = format!(
            "berth-pbs {which}: job {jobid}: the job's container on this node was not stopped ({why}); stop it as root with `berth-pbs epilogue {jobid} {user}`"
        );
        eprintln!("{msg}");
        syslog(&msg);
        1
    };
    let acct = match user::lookup(user) {
        Ok(a) => a,
        Err(e) => return loud(e),
    };
    if prologue::nothing_to_stop(&acct, &name) {
        return 0;
    }
    let r = as_user(&acct, || {
        let cfg = match Config::load_for_job() {
            Ok((c, _)) => c,
            Err(e) => {
                eprintln!("berth-pbs {which}: job {jobid}: {e}");
                return false;
            }
        };
        let uid = nix::unistd::getuid().as_raw();
        let mut left = vec![];
        if let Ok(st) = holder::find(&cfg, uid, &name) {
            if let Err(e) = holder::stop(&cfg, uid, &name, std::time::Duration::from_secs(5)) {
                eprintln!("berth-pbs {which}: job {jobid}: {e}");
            }
            // Whatever still lives in the container's mount namespace (the FUSE server of a
            // holder that had to be killed) goes too.
            for _ in 0..50 {
                left = holder::members(&st);
                if left.is_empty() {
                    break;
                }
                for pid in &left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        holder::remove_leftovers(&cfg, uid, &name);
        if !left.is_empty() {
            eprintln!("berth-pbs {which}: job {jobid}: processes {left:?} of the container survive SIGKILL");
        }
        left.is_empty() && holder::nothing_left(&cfg, uid, &name)
    });
    match r {
        Ok(true) => 0,
        Ok(false) => loud("the message above says why".into()),
        Err(e) => loud(e),
    }
}

/// `berth-pbs drop-check USER`, run by `berth config check --pbs` as root: the epilogue's
/// privilege drop once, printing who the process became.
fn drop_check(user: Option<&String>) -> i32 {
    let Some(user) = user else { return fail("usage: berth-pbs drop-check USER (as root)") };
    if !nix::unistd::geteuid().is_root() {
        return fail("drop-check tries the epilogue's drop from root to a job's user: run it as root");
    }
    let acct = match user::lookup(user) {
        Ok(a) => a,
        Err(e) => return fail(format!("drop-check {user}: {e}")),
    };
    let r = as_user(&acct, || {
        let groups: Vec<String> =
            nix::unistd::getgroups().map(|g| g.iter().map(|g| g.to_string()).collect()).unwrap_or_default();
        println!("uid={} gid={} groups={}", nix::unistd::getuid(), nix::unistd::getgid(), groups.join(","));
        true
    });
    match r {
        Ok(true) => 0,
        Ok(false) => EXIT_BERTH_ERROR,
        Err(e) => fail(format!("drop-check {user}: {e}")),
    }
}

// ---------------------------------------------------------------------------------------
// rsh agent

/// The ssh command line for `rsh ARGS`: ssh options and host, then a remote command that
/// enters the job's container on that node (when CONTAINER is set).
pub fn rsh_command(
    args: &[String],
    ssh: &str,
    exe: &str,
    env: &[(String, String)],
) -> Result<Vec<String>, String> {
    let mut cmd: Vec<String> = ssh.split_whitespace().map(str::to_string).collect();
    if cmd.is_empty() {
        cmd.push("ssh".into());
    }
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        cmd.push(args[i].clone());
        if matches!(args[i].as_str(), "-l" | "-p" | "-o" | "-i" | "-F" | "-J" | "-b" | "-c" | "-m" | "-E")
            && i + 1 < args.len()
        {
            cmd.push(args[i + 1].clone());
            i += 1;
        }
        i += 1;
    }
    let Some(host) = args.get(i) else { return Err("rsh: no host given".into()) };
    let remote = &args[i + 1..];
    if remote.is_empty() {
        return Err("rsh: no command given (interactive logins are not run in the image)".into());
    }
    cmd.push(host.clone());
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    if get("CONTAINER").is_none() {
        cmd.extend(remote.iter().cloned());
        return Ok(cmd);
    }
    // The launcher hands a shell snippet (ssh joins the words and the remote shell parses
    // them): keep that meaning by running it with the image's /bin/sh.
    let mut line = String::from("env");
    for k in [
        "CONTAINER",
        "PBS_JOBID",
        "PBS_O_WORKDIR",
        "PBS_HOME",
        "PBS_NODEFILE",
        "PBS_O_LOGNAME",
        options::CARRIED,
        "PBS_BERTH_SSH",
    ] {
        if let Some(v) = get(k) {
            line.push(' ');
            line.push_str(&sh_quote(&format!("{k}={v}")));
        }
    }
    line.push_str(&format!(" {} task /bin/sh -c {}", sh_quote(exe), sh_quote(&remote.join(" "))));
    cmd.push(line);
    Ok(cmd)
}

fn rsh(args: &[String]) -> i32 {
    // Inside the container BERTH_* variables are not passed; the job's options travel in
    // PBS_BERTH_OPTIONS (BERTH_PBS_SSH among them).
    options::restore_carried();
    // On the host side the options are plain BERTH_* variables: carry them the same way.
    let carried = options::carried_from_env();
    if std::env::var_os(options::CARRIED).is_none() && !carried.is_empty() {
        std::env::set_var(options::CARRIED, serde_json::to_string(&carried).unwrap_or_default());
    }
    let ssh = env("BERTH_PBS_SSH").or_else(|| env("PBS_BERTH_SSH")).unwrap_or_else(|| "ssh".into());
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "berth-pbs".into());
    let env: Vec<(String, String)> = std::env::vars().collect();
    match rsh_command(args, &ssh, &exe, &env) {
        Ok(cmd) => passthrough(&cmd.iter().map(OsString::from).collect::<Vec<_>>()),
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names() {
        assert_eq!(holder_name("12.server.example"), "pbs-12.server.example");
        assert_eq!(holder_name("12[3].srv"), "pbs-12_3_.srv");
        assert!(holder::valid_name(&holder_name("a/b c;d")));
    }

    #[test]
    fn rsh_wraps_the_remote_command() {
        let env = vec![
            ("CONTAINER".to_string(), "/img/o mpi.sqsh".to_string()),
            ("PBS_JOBID".to_string(), "7.srv".to_string()),
        ];
        let args: Vec<String> = ["-x", "node2", "PATH=/a:$PATH", ";", "orted", "-mca", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cmd = rsh_command(&args, "ssh -q", "/usr/libexec/berth/berth-pbs", &env).unwrap();
        assert_eq!(&cmd[..4], ["ssh", "-q", "-x", "node2"]);
        assert_eq!(
            cmd[4],
            "env 'CONTAINER=/img/o mpi.sqsh' PBS_JOBID=7.srv /usr/libexec/berth/berth-pbs task /bin/sh -c 'PATH=/a:$PATH ; orted -mca x'"
        );
        let plain = rsh_command(&args, "ssh", "/x", &[]).unwrap();
        assert_eq!(plain, ["ssh", "-x", "node2", "PATH=/a:$PATH", ";", "orted", "-mca", "x"]);
        assert!(rsh_command(&["node2".into()], "ssh", "/x", &env).is_err());
        assert!(rsh_command(&[], "ssh", "/x", &env).is_err());
    }

    #[test]
    fn relative_images_are_taken_from_the_submit_directory() {
        assert_eq!(resolve_image("a.sif", Some("/home/u/run")), PathBuf::from("/home/u/run/a.sif"));
        assert_eq!(resolve_image("/x/a.sif", Some("/home/u/run")), PathBuf::from("/x/a.sif"));
    }
}
