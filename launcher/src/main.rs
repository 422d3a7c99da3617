//! `berth`: run single-file container images as the user.
//!
//! Thin frontend: turns the command line into a runtime `Request`, plans, and applies.
//! Every failure prints one `berth: ...` message and exits 255; the contained program's exit
//! status and signals pass through unchanged.

mod cmd_build;
mod cmd_pull;
mod inspect;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use berth_runtime::config::Config;
use berth_runtime::container;
use berth_runtime::error::{Error, EXIT_BERTH_ERROR};
use berth_runtime::inject::{self, MpiMode};
use berth_runtime::plan::{self, HostFacts};
use berth_runtime::request::{parse_env_assignment, Action, BindSpec, Request};
use berth_runtime::sys::process;
use clap::{Args, Parser, Subcommand};

fn parse_mpi(s: &str) -> Result<MpiMode, String> {
    match s {
        "hybrid" => Ok(MpiMode::Hybrid),
        "host" => Ok(MpiMode::Host),
        "none" => Ok(MpiMode::None),
        _ => Err(format!("{s:?}: use hybrid, host or none")),
    }
}

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Run single-file container images (SquashFS, SIF, Singularity) as yourself"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command inside an image: berth exec IMAGE COMMAND [ARGS...]
    Exec(ExecArgs),
    /// Run the image's runscript: berth run IMAGE [ARGS...]
    Run(RunArgs),
    /// Start an interactive shell inside an image
    Shell(ShellArgs),
    /// Show what an image holds (format, partitions, labels, runscript, environment, help)
    Inspect(inspect::InspectArgs),
    /// Set a container up once and keep it for others to join (one per node per job step)
    Holder(HolderArgs),
    /// Stop a held container
    Stop {
        /// The holder's name
        name: String,
    },
    /// Build an image from a definition file (root): berth build OUT DEF
    Build(cmd_build::BuildArgs),
    /// Convert a registry image to a SquashFS file, as yourself: berth pull REF [OUT]
    Pull(cmd_pull::PullArgs),
    /// Convert an OCI/Docker archive or OCI layout: berth import SOURCE [OUT]
    Import(cmd_pull::ImportArgs),
    /// The blob cache of berth pull/import
    Cache {
        #[command(subcommand)]
        what: cmd_pull::CacheCmd,
    },
    /// Check the site configuration and this node's prerequisites
    Config {
        #[command(subcommand)]
        what: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate berth.toml (BERTH_CONFIG overrides the path) and the node's prerequisites
    Check,
    /// Print the effective configuration as TOML
    Show,
}

#[derive(Args, Clone, Default)]
struct ContainerOpts {
    /// Bind SRC[:DST[:ro|rw]] (repeatable, comma lists; also BERTH_BIND)
    #[arg(short = 'B', long = "bind", value_name = "SPEC")]
    bind: Vec<String>,
    /// Set NAME=VALUE inside (repeatable; also BERTH_ENV_NAME=VALUE)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Do not pass the host environment (scheduler and MPI variables are kept)
    #[arg(short = 'e', long)]
    cleanenv: bool,
    /// Working directory inside (default: the current directory, else $HOME, else /)
    #[arg(long, visible_alias = "pwd", value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Do not bind your home directory
    #[arg(long)]
    no_home: bool,
    /// A throwaway writable layer over the image
    #[arg(long)]
    writable_tmpfs: bool,
    /// MPI model: hybrid (image MPI + host fabric libraries), host (host MPI replaces the
    /// image's, ABI checked), none (default: the site's, usually hybrid)
    #[arg(long, value_name = "MODEL", value_parser = parse_mpi)]
    mpi: Option<MpiMode>,
    /// Bind the host's NVIDIA driver stack and the job's GPUs
    #[arg(long)]
    nv: bool,
    /// Print the plan (every mount, file and env rule) instead of running
    #[arg(long)]
    dry_run: bool,
    /// A container of this run's own: not shared with the other MPI ranks on this node, nor
    /// kept warm for (or joined from) an identical run a moment before
    #[arg(long)]
    no_share: bool,
    /// With --dry-run: print the plan as JSON
    #[arg(long, requires = "dry_run")]
    json: bool,
}

#[derive(Args)]
struct ExecArgs {
    #[command(flatten)]
    opts: ContainerOpts,
    /// Join the held container NAME instead of starting one (then no IMAGE is given)
    #[arg(long, value_name = "NAME")]
    join: Option<String>,
    /// IMAGE then COMMAND [ARGS...] (COMMAND [ARGS...] alone with --join)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "IMAGE COMMAND"
    )]
    args: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    opts: ContainerOpts,
    image: PathBuf,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct ShellArgs {
    #[command(flatten)]
    opts: ContainerOpts,
    image: PathBuf,
}

#[derive(Args)]
struct HolderArgs {
    #[command(flatten)]
    opts: ContainerOpts,
    /// Name joiners use (letters, digits, . _ - + @)
    #[arg(long)]
    name: String,
    /// Write "ready" to this descriptor once joiners may come (default: stdout)
    #[arg(long, value_name = "FD")]
    ready_fd: Option<i32>,
    /// Started by root (a scheduler's root context): the user the container is for. berth
    /// mounts the image with the kernel driver when mount_mode = "privileged" allows it, then
    /// becomes that user for good before anything else
    #[arg(long, value_name = "UID")]
    user: Option<u32>,
    /// The program the first tasks will run: read into the page cache while they start, so
    /// the ranks of a node do not each page it out of the compressed image
    #[arg(long, value_name = "PROGRAM")]
    warm: Option<String>,
    image: PathBuf,
}

fn main() {
    // Rust starts with SIGPIPE ignored. Restore the default: berth's own output to a closed
    // pipe (`berth inspect IMG | head`) ends it quietly like any Unix tool, and the contained
    // program inherits the disposition every program expects (`berth exec IMG yes | head`).
    // SAFETY: setting a signal's disposition to the default before any thread or handler exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // `run-singularity IMAGE ARGS` is the interpreter named by Singularity/SIF launch lines:
    // installed as a link to berth, it makes `./app.sif args` work.
    let mut argv: Vec<String> = std::env::args().collect();
    if argv.first().and_then(|a| a.rsplit('/').next()) == Some("run-singularity") {
        argv.insert(1, "run".into());
    }
    let cli = Cli::parse_from(argv);
    // Parsing filter directives costs about a millisecond of start-up: only when asked for.
    let log = tracing_subscriber::fmt().with_writer(std::io::stderr).without_time();
    match tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG") {
        Ok(filter) if std::env::var_os("BERTH_LOG").is_some() => log.with_env_filter(filter).init(),
        _ => log.with_max_level(tracing::Level::WARN).init(),
    }
    let code = match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code)
}

fn dispatch(cmd: Cmd) -> Result<i32, Error> {
    if let Cmd::Build(args) = cmd {
        // The build prints its own messages (and a log tail); it needs no site config.
        return Ok(cmd_build::run(args).unwrap_or_else(|e| {
            eprintln!("berth: {e:#}");
            EXIT_BERTH_ERROR
        }));
    }
    // Registry conversion needs no site config either.
    match cmd {
        Cmd::Pull(a) => return Ok(cmd_pull::pull(a)),
        Cmd::Import(a) => return Ok(cmd_pull::import(a)),
        Cmd::Cache { what } => return Ok(cmd_pull::cache(what)),
        _ => {}
    }
    let (cfg, cfg_path) = Config::load()?;
    match cmd {
        Cmd::Exec(a) => {
            if let Some(name) = a.join {
                return exec_joined(&cfg, &name, a.args);
            }
            let mut args = a.args.into_iter();
            let image = PathBuf::from(args.next().unwrap_or_default());
            let argv: Vec<String> = args.collect();
            if argv.is_empty() {
                return Err(Error::request(
                    "berth exec",
                    "no command given",
                    "usage: berth exec IMAGE COMMAND [ARGS...]",
                ));
            }
            start(&cfg, &a.opts, image, Action::Exec(argv))
        }
        Cmd::Run(a) => start(&cfg, &a.opts, a.image, Action::Run(a.args)),
        Cmd::Shell(a) => start(&cfg, &a.opts, a.image, Action::Shell),
        Cmd::Inspect(a) if a.host => {
            let req = make_request(
                &ContainerOpts { mpi: a.mpi, nv: a.nv, ..Default::default() },
                PathBuf::new(),
                Action::Shell,
            )?;
            inspect::host(inject::discover_for_request(&cfg, &req)?, a.json)
        }
        Cmd::Inspect(a) => inspect::run(&cfg, a),
        Cmd::Holder(a) => {
            let premounted = match a.user {
                Some(uid) => root_holder_setup(&cfg, uid, &a.image)?,
                None => None,
            };
            let (req, plan) = make_plan_premounted(&cfg, &a.opts, a.image, Action::Shell, premounted)?;
            if a.opts.dry_run {
                return print_plan(&plan, a.opts.json);
            }
            let ready = match a.ready_fd {
                // SAFETY: the caller handed us this descriptor number for our exclusive use.
                Some(fd) => Some(unsafe { OwnedFd::from_raw_fd(fd) }),
                None => std::io::Write::flush(&mut std::io::stdout()).ok().and_then(|_| {
                    nix::unistd::dup(1).ok().map(|fd| {
                        // SAFETY: `dup` just returned this descriptor; we own it.
                        unsafe { OwnedFd::from_raw_fd(fd) }
                    })
                }),
            };
            container::hold(
                &plan,
                req.cleanenv,
                &a.name,
                ready,
                container::Lifetime::UntilStopped,
                a.warm.as_deref(),
            )
        }
        Cmd::Stop { name } => {
            container::stop(&cfg, nix::unistd::getuid().as_raw(), &name, std::time::Duration::from_secs(5))?;
            Ok(0)
        }
        Cmd::Config { what: ConfigCmd::Check } => config_check(&cfg, cfg_path),
        Cmd::Build(_) | Cmd::Pull(_) | Cmd::Import(_) | Cmd::Cache { .. } => {
            Err(Error::request("berth", "internal error: dispatched twice", ""))
        }
        Cmd::Config { what: ConfigCmd::Show } => {
            print!("{}", toml::to_string_pretty(&cfg).unwrap_or_default());
            Ok(0)
        }
    }
}

fn make_request(opts: &ContainerOpts, image: PathBuf, action: Action) -> Result<Request, Error> {
    let mut req = Request::new(image, action);
    if let Ok(list) = std::env::var("BERTH_BIND") {
        req.binds.extend(BindSpec::parse_list(&list)?);
    }
    for b in &opts.bind {
        req.binds.extend(BindSpec::parse_list(b)?);
    }
    for e in &opts.env {
        req.env.push(parse_env_assignment(e)?);
    }
    req.cleanenv = opts.cleanenv;
    req.workdir = opts.workdir.clone();
    req.mount_home = !opts.no_home;
    req.writable_tmpfs = opts.writable_tmpfs;
    req.mpi = opts.mpi;
    req.nvidia = opts.nv;
    Ok(req)
}

fn make_plan(
    cfg: &Config,
    opts: &ContainerOpts,
    image: PathBuf,
    action: Action,
) -> Result<(Request, plan::Plan), Error> {
    make_plan_premounted(cfg, opts, image, action, None)
}

/// The root part of `berth holder --user UID`, before anything the user controls is used: with
/// mount_mode = "privileged", mount the (vetted) image with the kernel driver in a private
/// mount namespace; then become the user for good. Returns the image and where it is mounted.
fn root_holder_setup(
    cfg: &Config,
    uid: u32,
    image: &std::path::Path,
) -> Result<Option<(berth_runtime::image::Image, PathBuf)>, Error> {
    use berth_runtime::privileged;
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::request(
            "berth holder --user",
            "is for a root context (the scheduler's)",
            "run `berth holder` without --user as yourself",
        ));
    }
    let target = privileged::Target::lookup(uid)?;
    let mounted = if cfg.mount_mode == berth_runtime::config::MountMode::Privileged {
        let (file, canonical) = privileged::open_allowed(&cfg.privileged, image)?;
        let img = berth_runtime::image::open(&canonical)?;
        let at = privileged::mount_image(&img, &file)?;
        Some((img, at))
    } else {
        None
    };
    privileged::become_user(&target)?;
    Ok(mounted)
}

/// The plan, for an image that root may already have mounted at a directory (privileged mode).
fn make_plan_premounted(
    cfg: &Config,
    opts: &ContainerOpts,
    image: PathBuf,
    action: Action,
    premounted: Option<(berth_runtime::image::Image, PathBuf)>,
) -> Result<(Request, plan::Plan), Error> {
    let req = make_request(opts, image, action)?;
    let img = match premounted {
        // The user's container binds root's read-only, nosuid, nodev mount of the image.
        Some((mut img, at)) => {
            img.root = berth_runtime::image::RootFs::Directory { path: at };
            img
        }
        None => berth_runtime::image::open(&req.image)?,
    };
    let host = HostFacts::probe()?;
    let injected = inject::discover_for_request(cfg, &req)?;
    let plan = plan::plan(&req, &img, cfg, &host, injected.as_ref())?;
    Ok((req, plan))
}

fn print_plan(plan: &plan::Plan, json: bool) -> Result<i32, Error> {
    if json {
        println!("{}", serde_json::to_string_pretty(plan).unwrap_or_default());
    } else {
        print!("{plan}");
    }
    Ok(0)
}

fn start(cfg: &Config, opts: &ContainerOpts, image: PathBuf, action: Action) -> Result<i32, Error> {
    if !opts.dry_run && !opts.no_share && !matches!(action, Action::Shell) {
        if let Some(launcher) = mpi_launcher() {
            return start_shared_rank(cfg, opts, image, action, launcher);
        }
    }
    // A throwaway writable layer is this run's alone; an interactive shell is long anyway.
    let warm = !opts.dry_run
        && cfg.keep_warm_seconds > 0
        && !opts.no_share
        && !opts.writable_tmpfs
        && !matches!(action, Action::Shell);
    if warm {
        return start_warm(cfg, opts, image, action);
    }
    let (_, plan) = make_plan(cfg, opts, image, action)?;
    if opts.dry_run {
        return print_plan(&plan, opts.json);
    }
    let ended = container::run(&plan)?;
    process::exit_like(ended)
}

/// Run in a container kept warm: the previous identical run's if it is still mounted (same
/// image file, options, directory, site configuration and host libraries), else a new one
/// that stays `keep_warm_seconds` after its last process ends. The result is the same as a
/// fresh container's: the program runs as our child, its leftovers are killed when it ends.
fn start_warm(cfg: &Config, opts: &ContainerOpts, image: PathBuf, action: Action) -> Result<i32, Error> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let req = make_request(opts, image, action.clone())?;
    let img = berth_runtime::image::open(&req.image)?;
    let host = HostFacts::probe()?;
    let image = img.path.clone();
    let stat = |p: &std::path::Path| {
        std::fs::metadata(p).map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec())).ok()
    };
    let identity = stat(&image)
        .ok_or_else(|| Error::image_io(&image, "cannot open the image", std::io::Error::last_os_error()))?;
    // The key: the plan before host library discovery (the costly part, done only when the
    // container is created) minus what each run brings itself (its host variables, its
    // command), and everything discovery reads: the site configuration, the host's library
    // cache, the GPU variables.
    let mut key = plan::plan(&req, &img, cfg, &host, None)?;
    key.env.host.clear();
    key.action = Action::Shell;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&key).unwrap_or_default().hash(&mut h);
    toml::to_string(cfg).unwrap_or_default().hash(&mut h);
    stat(&cfg.inject.host_root.join("etc/ld.so.cache")).hash(&mut h);
    for var in ["SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY"] {
        std::env::var_os(var).hash(&mut h);
    }
    // What the plan before discovery does not show: the injection asked for, --cleanenv.
    format!("{:?} {:?}", req.mpi, req.nvidia).hash(&mut h);
    (req.cleanenv, identity, env!("CARGO_PKG_VERSION")).hash(&mut h);
    let name = format!("warm-{:016x}", h.finish());
    let keep = std::time::Duration::from_secs(cfg.keep_warm_seconds);
    let make_plan = || {
        let injected = inject::discover_for_request(cfg, &req)?;
        Ok((plan::plan(&req, &img, cfg, &host, injected.as_ref())?, req.cleanenv))
    };
    let shared = berth_runtime::shared::join_or_create(
        cfg,
        host.user.uid,
        &name,
        &image,
        make_plan,
        container::Lifetime::UntilIdle(keep),
    )?;
    let argv = argv_in_joined(action)?;
    let env = shared.joined.env(cfg, &host);
    let workdir = shared.joined.workdir(host.cwd.as_deref())?;
    let ended = process::fork_and_wait(
        || {
            let e = match nix::unistd::chdir(&workdir) {
                Err(e) => Error::sys("chdir", workdir.display(), e),
                Ok(()) => match process::harden_before_exec() {
                    Err(e) => e,
                    Ok(()) => process::exec(&argv, env.vars()),
                },
            };
            eprintln!("berth: {e}");
            e.exit_code()
        },
        |_, _| {},
    )?;
    process::exit_like(ended)
}

/// The command an action runs in a container this process joined (cwd `/` of it).
fn argv_in_joined(action: Action) -> Result<Vec<String>, Error> {
    Ok(match action {
        Action::Exec(argv) => argv,
        Action::Run(args) if std::path::Path::new("/.singularity.d/runscript").exists() => {
            let mut v = vec!["/bin/sh".to_string(), "/.singularity.d/runscript".to_string()];
            v.extend(args);
            v
        }
        Action::Run(_) => {
            return Err(Error::request(
                "berth run",
                "the image has no runscript",
                "use `berth exec IMAGE COMMAND`",
            ))
        }
        Action::Shell => vec!["/bin/sh".into()],
    })
}

/// The process that started this MPI rank (mpirun or orted, hydra's proxy, slurmstepd), if
/// this is one. Ranks it starts on this node share one container: one user namespace per rank
/// would break shared-memory transports between them (CMA, UCX; apptainer#769).
fn mpi_launcher() -> Option<i32> {
    // Open MPI's orted (OMPI_COMM_WORLD_RANK), PMIx launchers (PMIX_RANK), MPICH's hydra
    // (PMI_RANK). Sharing matters beyond speed: UCX's shared memory opens /proc/PID/fd of the
    // peer rank, which fails between two separate user namespaces.
    const RANK_VARS: &[&str] = &["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];
    RANK_VARS.iter().any(|v| std::env::var_os(v).is_some()).then(|| nix::unistd::getppid().as_raw())
}

/// Join (or create, for the first rank) the container shared by the ranks of `launcher` that
/// asked for the same image and options; it ends with the launcher.
fn start_shared_rank(
    cfg: &Config,
    opts: &ContainerOpts,
    image: PathBuf,
    action: Action,
    launcher: i32,
) -> Result<i32, Error> {
    use std::hash::{Hash, Hasher};
    let abs_image =
        std::fs::canonicalize(&image).map_err(|e| Error::image_io(&image, "cannot open the image", e))?;
    let started = std::fs::read_to_string(format!("/proc/{launcher}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(19).map(str::to_string)))
        .unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &abs_image,
        &opts.bind,
        &opts.env,
        opts.cleanenv,
        &opts.workdir,
        opts.no_home,
        opts.writable_tmpfs,
        opts.nv,
    )
        .hash(&mut h);
    format!("{:?}", opts.mpi).hash(&mut h);
    let name = format!("mpi-{launcher}-{started}-{:016x}", h.finish());
    let host = HostFacts::probe()?;
    let make_plan =
        || make_plan(cfg, opts, abs_image.clone(), action.clone()).map(|(req, plan)| (plan, req.cleanenv));
    let shared = berth_runtime::shared::join_or_create(
        cfg,
        host.user.uid,
        &name,
        &abs_image,
        make_plan,
        container::Lifetime::WhileRunning(launcher),
    )?;
    let argv = argv_in_joined(action)?;
    exec_in_joined(cfg, &host, &shared.joined, &argv)
}

fn exec_joined(cfg: &Config, name: &str, argv: Vec<String>) -> Result<i32, Error> {
    if argv.is_empty() {
        return Err(Error::request(
            "berth exec --join",
            "no command given",
            "usage: berth exec --join NAME COMMAND [ARGS...]",
        ));
    }
    let host = HostFacts::probe()?;
    let joined = container::join_in_process(cfg, host.user.uid, name)?;
    exec_in_joined(cfg, &host, &joined, &argv)
}

/// In a joined container: the task's environment and working directory, then exec.
fn exec_in_joined(
    cfg: &Config,
    host: &HostFacts,
    joined: &container::Joined,
    argv: &[String],
) -> Result<i32, Error> {
    let env = joined.env(cfg, host);
    let workdir = joined.workdir(host.cwd.as_deref())?;
    nix::unistd::chdir(&workdir).map_err(|e| Error::sys("chdir", workdir.display(), e))?;
    process::harden_before_exec()?;
    Err(process::exec(argv, env.vars()))
}

fn config_check(cfg: &Config, path: Option<PathBuf>) -> Result<i32, Error> {
    match &path {
        Some(p) => println!("config: {} is valid", p.display()),
        None => {
            println!("config: no file ({} absent); built-in defaults", berth_runtime::config::DEFAULT_PATH)
        }
    }
    let mut problems = 0;
    let mut check = |ok: bool, what: String, fix: &str| {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            println!("     fix: {fix}");
            problems += 1;
        }
    };
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    check(
        userns > 0,
        format!("user namespaces (user.max_user_namespaces = {userns})"),
        "sysctl -w user.max_user_namespaces=15000",
    );
    let fuse = std::fs::metadata("/dev/fuse")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o666 == 0o666);
    check(
        matches!(fuse, Ok(true)),
        "/dev/fuse usable by users (mode 0666)".into(),
        "modprobe fuse; chmod 0666 /dev/fuse",
    );
    let sq = which(&cfg.squashfuse);
    check(
        sq.is_some(),
        format!(
            "FUSE SquashFS server {:?} found{}",
            cfg.squashfuse,
            sq.map(|p| format!(" at {}", p.display())).unwrap_or_default()
        ),
        "apt-get install squashfuse (or set `squashfuse` in berth.toml)",
    );
    if problems > 0 {
        return Err(Error::request(
            "config check",
            format!("{problems} problem(s) found"),
            "see the FAIL lines above",
        ));
    }
    Ok(0)
}

fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        return Some(PathBuf::from(prog)).filter(|p| p.exists());
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(prog)).find(|p| p.is_file()))
        .unwrap_or(None)
}
