//! `berth`: run single-file container images as the user.
//!
//! Thin frontend: turns the command line into a runtime `Request`, plans, and applies.
//! Every failure prints one `berth: ...` message and exits 255; the contained program's exit
//! status and signals pass through unchanged.

mod apptainer;
mod cmd_build;
mod cmd_list;
mod cmd_pull;
mod generate;
mod images;
mod inspect;
mod pbs_check;
mod slurm_check;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use berth_runtime::config::Config;
use berth_runtime::error::{Error, EXIT_BERTH_ERROR};
use berth_runtime::holder::{self, Spec};
use berth_runtime::inject::{self, MpiMode};
use berth_runtime::plan::{self, HostFacts};
use berth_runtime::request::{parse_env_assignment, Action, BindSpec, Request};
use berth_runtime::session;
use clap::{Args, Parser, Subcommand};

fn parse_mpi(s: &str) -> Result<MpiMode, String> {
    match s {
        "hybrid" => Ok(MpiMode::Hybrid),
        "host" => Ok(MpiMode::Host),
        "none" => Ok(MpiMode::None),
        _ => Err(format!("{s:?}: use hybrid, host or none")),
    }
}

/// `berth --version`: the release and the commit it was built from (`unknown` outside git).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BERTH_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "berth",
    version = VERSION,
    about = "Run single-file container images (SquashFS, SIF, Singularity) as yourself",
    after_long_help = "Environment: BERTH_CONFIG (the site configuration; default /etc/berth/berth.toml), \
BERTH_BIND, APPTAINER_BIND, SINGULARITY_BIND (bind lists, read before --bind), \
BERTH_ENV_NAME=VALUE, APPTAINERENV_NAME, SINGULARITYENV_NAME (NAME=VALUE inside), BERTH_LOG (log filter).

See also: berth.toml(5), spank_berth(8), berth-pbs(8)."
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
    /// List your held containers on this node (name, pid, age, members, image)
    List(cmd_list::ListArgs),
    /// Stop a held container
    Stop {
        /// The holder's name
        name: String,
    },
    /// Remove named containers kept on this node across jobs (--container-name with the
    /// site's container_scope=global)
    Rm {
        /// The containers' names (as `berth list` shows them, job `global`)
        #[arg(required = true)]
        names: Vec<String>,
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
    /// Write man pages or shell completions generated from this command line (packaging)
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate berth.toml (BERTH_CONFIG overrides the path) and the node's prerequisites
    Check {
        /// Also what a TORQUE/OpenPBS execution host needs for berth-pbs: the mom config's
        /// $job_starter, the prologue/epilogue files (PBS_HOME from the environment,
        /// /etc/pbs.conf, or /var/spool/torque)
        #[arg(long)]
        pbs: bool,
    },
    /// Print the effective configuration as TOML
    Show,
}

#[derive(Args, Clone, Default, Debug)]
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
    /// Bind SRC as your home directory, at DST (default SRC), and set HOME to it
    #[arg(long, value_name = "SRC[:DST]")]
    home: Option<String>,
    /// Bind neither $HOME, /tmp nor the current directory; a throwaway writable layer gives
    /// an empty writable /tmp (Apptainer's --contain)
    #[arg(short = 'c', long)]
    contain: bool,
    /// --contain and --cleanenv (processes and IPC stay the host's, as MPI needs)
    #[arg(short = 'C', long)]
    containall: bool,
    /// Set the variables of FILE inside: NAME=VALUE lines, `export` and quotes allowed,
    /// `#` comments; --env wins over it
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Accepted for Apptainer habits: berth always runs in a user namespace
    #[arg(short = 'u', long, hide = true)]
    userns: bool,
    #[command(flatten)]
    unsupported: apptainer::Unsupported,
    /// A throwaway writable layer over the image
    #[arg(long, conflicts_with = "overlay")]
    writable_tmpfs: bool,
    /// A writable layer over the image kept in DIR (a directory of yours on a local
    /// filesystem; DIR/upper and DIR/work are made on first use)
    #[arg(short = 'o', long, value_name = "DIR")]
    overlay: Option<PathBuf>,
    /// MPI model: hybrid (image MPI + host fabric libraries), host (host MPI replaces the
    /// image's, ABI checked), none (default: the site's, usually hybrid)
    #[arg(long, value_name = "MODEL", value_parser = parse_mpi)]
    mpi: Option<MpiMode>,
    /// Bind the host's NVIDIA driver stack and the job's GPUs
    #[arg(long)]
    nv: bool,
    /// Bind the host's AMD GPUs (/dev/kfd, the job's /dev/dri nodes) and ROCm libraries
    #[arg(long)]
    rocm: bool,
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

#[derive(Args, Debug)]
struct ExecArgs {
    #[command(flatten)]
    opts: ContainerOpts,
    /// Join the held container NAME instead of starting one (then no IMAGE is given)
    #[arg(long, value_name = "NAME")]
    join: Option<String>,
    /// IMAGE then COMMAND [ARGS...] (COMMAND [ARGS...] alone with --join). Options before
    /// IMAGE are berth's, everything after it belongs to the command
    // One list whose first value must not look like an option (so a mistyped option is an
    // error, not an image name) and after which everything is the program's.
    #[arg(trailing_var_arg = true, required = true, value_names = ["IMAGE", "COMMAND"])]
    args: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    opts: ContainerOpts,
    /// IMAGE then the runscript's ARGS (options after IMAGE belong to the runscript)
    #[arg(trailing_var_arg = true, required = true, value_names = ["IMAGE", "ARGS"])]
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
    #[arg(long, required_unless_present = "spec_stdin")]
    name: Option<String>,
    /// Read the whole holder spec (name, request, user, program to read ahead) as JSON on
    /// stdin instead of from the command line: how the Slurm plugin starts holders
    #[arg(long, hide = true, conflicts_with_all = ["name", "image", "user", "warm"])]
    spec_stdin: bool,
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
    #[arg(required_unless_present = "spec_stdin")]
    image: Option<PathBuf>,
}

/// The command line. `berth exec` is what every MPI rank and every run of a job script
/// starts with, and building clap's whole command (every subcommand, each with its options,
/// four of them with the container options) costs about 0.2 ms of each start: `exec` is
/// parsed with its own subcommand alone. Anything that one does not accept (a mistake,
/// `--help`) is parsed again in full, so messages and help are the full parser's.
fn parse(argv: Vec<String>) -> Cli {
    match parse_exec_alone(&argv) {
        Some(args) => Cli { cmd: Cmd::Exec(args) },
        None => Cli::parse_from(argv),
    }
}

/// `berth exec ...` parsed by the `exec` subcommand alone; None for anything else, and for
/// what it does not accept.
fn parse_exec_alone(argv: &[String]) -> Option<ExecArgs> {
    use clap::FromArgMatches;
    if argv.get(1).map(String::as_str) != Some("exec") {
        return None;
    }
    let exec = <ExecArgs as Args>::augment_args(clap::Command::new("exec"));
    exec.try_get_matches_from(&argv[1..]).ok().and_then(|m| ExecArgs::from_arg_matches(&m).ok())
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
    let cli = parse(argv);
    if let Some(opts) = cli.cmd.container_opts() {
        opts.unsupported.refuse::<Cli>();
    }
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

impl Cmd {
    fn container_opts(&self) -> Option<&ContainerOpts> {
        match self {
            Cmd::Exec(a) => Some(&a.opts),
            Cmd::Run(a) => Some(&a.opts),
            Cmd::Shell(a) => Some(&a.opts),
            Cmd::Holder(a) => Some(&a.opts),
            _ => None,
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<i32, Error> {
    if let Cmd::Generate(args) = cmd {
        return generate::run::<Cli>(args);
    }
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
        Cmd::Cache { what } if !matches!(what, cmd_pull::CacheCmd::Image { .. }) => {
            return Ok(cmd_pull::cache(what))
        }
        _ => {}
    }
    let (mut cfg, cfg_path) = Config::load()?;
    if let Some(opts) = cmd.container_opts() {
        if opts.contain || opts.containall {
            // Apptainer's --contain shares no host directories but the system's own.
            cfg.binds.home = false;
            cfg.binds.tmp = false;
            cfg.binds.cwd = false;
        }
    }
    let cfg = cfg;
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
            start(&cfg, &a.opts, images::local_file(&cfg, image)?, Action::Exec(argv))
        }
        Cmd::Run(a) => {
            let mut args = a.args.into_iter();
            let image = PathBuf::from(args.next().unwrap_or_default());
            start(&cfg, &a.opts, images::local_file(&cfg, image)?, Action::Run(args.collect()))
        }
        Cmd::Shell(a) => start(&cfg, &a.opts, images::local_file(&cfg, a.image)?, Action::Shell),
        Cmd::Inspect(a) if a.host => {
            let req = make_request(
                &ContainerOpts { mpi: a.mpi, nv: a.nv, ..Default::default() },
                PathBuf::new(),
                Action::Shell,
            )?;
            let plan = inject::discover_for_request(&cfg, &req)?;
            // With an image: what its own MPI stack will cost on this host (read from the
            // image, mounted as the user, the way `berth inspect IMAGE` reads its metadata).
            let warnings = match (a.image, &plan) {
                (Some(image), Some(p)) => {
                    let img = berth_runtime::image::open(&images::local_file(&cfg, image)?)?;
                    let (p, host_root) = (p.clone(), cfg.inject.host_root.clone());
                    berth_runtime::container::read_from_image(&img, &cfg, move |root| {
                        inject::image_stack_warnings(root, &host_root, &p)
                    })?
                }
                _ => Vec::new(),
            };
            inspect::host(plan, &warnings, a.json)
        }
        Cmd::Inspect(mut a) => {
            a.image = a.image.map(|i| images::local_file(&cfg, i)).transpose()?;
            inspect::run(&cfg, a)
        }
        Cmd::Holder(a) => {
            let spec = if a.spec_stdin {
                holder::decode_spec(std::io::stdin().lock())?
            } else {
                Spec {
                    name: a.name.unwrap_or_default(),
                    request: make_request(&a.opts, a.image.unwrap_or_default(), Action::Shell)?,
                    warm: a.warm,
                    user: a.user,
                }
            };
            let mut spec = spec;
            if images::is_registry(&spec.request.image) {
                if spec.user.is_some() && nix::unistd::getuid().is_root() {
                    // Converting as root would write the user's download with root's rights.
                    return Err(Error::request(
                        format!("image {}", spec.request.image.display()),
                        "registry images are converted as the user, and this holder was started as root \
                         (mount_mode = \"privileged\")",
                        "convert it first with berth pull into a directory [privileged] allowed_dirs names",
                    ));
                }
                spec.request.image = images::local_file(&cfg, std::mem::take(&mut spec.request.image))?;
            }
            let prepared = session::prepare_holder(&cfg, &spec)?;
            if a.opts.dry_run {
                return print_plan(&prepared.plan, a.opts.json);
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
            session::hold(&prepared, &spec, ready)
        }
        Cmd::List(a) => cmd_list::run(&cfg, a),
        Cmd::Stop { name } => {
            holder::stop(&cfg, nix::unistd::getuid().as_raw(), &name, std::time::Duration::from_secs(5))?;
            Ok(0)
        }
        Cmd::Rm { names } => {
            let uid = nix::unistd::getuid().as_raw();
            for name in &names {
                cmd_list::remove_global(&cfg, uid, name, cmd_list::RM_WAIT)?;
            }
            Ok(0)
        }
        Cmd::Cache { what: cmd_pull::CacheCmd::Image { reference } } => {
            let r = reference.strip_prefix(images::PREFIX).unwrap_or(&reference);
            println!(
                "{}",
                images::local_file(&cfg, PathBuf::from(format!("{}{r}", images::PREFIX)))?.display()
            );
            Ok(0)
        }
        Cmd::Config { what: ConfigCmd::Check { pbs } } => config_check(&cfg, cfg_path, pbs),
        Cmd::Build(_) | Cmd::Generate(_) | Cmd::Pull(_) | Cmd::Import(_) | Cmd::Cache { .. } => {
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
    for var in apptainer::BIND_VARS {
        if let Ok(list) = std::env::var(var) {
            req.binds.extend(BindSpec::parse_list(&list)?);
        }
    }
    for b in &opts.bind {
        req.binds.extend(BindSpec::parse_list(b)?);
    }
    if let Some(file) = &opts.env_file {
        req.env.extend(apptainer::read_env_file(file)?);
    }
    for e in &opts.env {
        req.env.push(parse_env_assignment(e)?);
    }
    req.cleanenv = opts.cleanenv || opts.containall;
    req.workdir = opts.workdir.clone();
    req.mount_home = !opts.no_home && !opts.contain && !opts.containall;
    // Contained runs get an empty writable /tmp (the image's, under a throwaway layer)
    // rather than a read-only one; with --overlay that layer is the kept one.
    req.writable_tmpfs = opts.writable_tmpfs || (opts.overlay.is_none() && (opts.contain || opts.containall));
    req.overlay = opts.overlay.clone();
    if let Some(spec) = &opts.home {
        let (bind, home) = apptainer::home_bind(spec)?;
        req.mount_home = false;
        req.binds.push(bind);
        // Before the user's own --env, which may still set HOME.
        req.env.insert(0, ("HOME".into(), home));
    }
    req.mpi = opts.mpi;
    req.nvidia = opts.nv;
    req.rocm = opts.rocm;
    Ok(req)
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
    let req = make_request(opts, image, action)?;
    if opts.dry_run {
        return print_plan(&session::prepare(cfg, req)?.plan, opts.json);
    }
    session::exit_like(session::run(cfg, req, !opts.no_share)?)
}

fn exec_joined(cfg: &Config, name: &str, argv: Vec<String>) -> Result<i32, Error> {
    if argv.is_empty() {
        return Err(Error::request(
            "berth exec --join",
            "no command given",
            "usage: berth exec --join NAME COMMAND [ARGS...]",
        ));
    }
    // Read before joining: inside, the current directory is the container's root.
    let host = HostFacts::probe()?;
    Err(session::join(cfg, name)?.exec(cfg, &host, &argv))
}

fn config_check(cfg: &Config, path: Option<PathBuf>, pbs: bool) -> Result<i32, Error> {
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
    // Ubuntu 23.10+: user namespaces only for programs an AppArmor profile allows them.
    let apparmor = std::fs::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    if let Some(restricted) = apparmor.ok().map(|v| v.trim() == "1") {
        let loaded = std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
            .is_ok_and(|p| p.lines().any(|l| l.starts_with("berth ")));
        check(
            !restricted || loaded,
            format!(
                "AppArmor and user namespaces (kernel.apparmor_restrict_unprivileged_userns = {}{})",
                u8::from(restricted),
                if restricted { if loaded { "; berth's profile loaded" } else { "; berth's profile not loaded" } } else { "" }
            ),
            "apparmor_parser -r /etc/apparmor.d/berth (the berth package installs it; packaging/apparmor/berth)",
        );
    }
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
    // Not a failure: the program serves the image then, one exec slower per cold start.
    if !cfg.squashfuse_library.is_empty() {
        match berth_runtime::config::squashfuse_library_problem(&cfg.squashfuse_library) {
            None => check(
                true,
                format!(
                    "squashfuse library {:?} loads (images served by a forked berth)",
                    cfg.squashfuse_library
                ),
                "",
            ),
            Some(p) => println!(
                "note squashfuse library {:?} cannot be loaded ({p}): images are served by {:?}, \
                 slower to start; apt-get install libsquashfuse0, or set `squashfuse_library = \"\"`",
                cfg.squashfuse_library, cfg.squashfuse
            ),
        }
    }
    if pbs {
        for item in pbs_check::items() {
            match item {
                pbs_check::Item::Ok(what) => check(true, what, ""),
                pbs_check::Item::Problem(what, fix) => check(false, what, &fix),
                pbs_check::Item::Note(what) => println!("note {what}"),
            }
        }
    } else if let Some(so) = slurm_check::configured_plugin() {
        match (slurm_check::plugin_release(&so), slurm_check::running_release()) {
            (Err(e), _) => check(false, format!("Slurm plugin: {e}"), "reinstall berth-slurm"),
            (Ok(built), running) => {
                let built = slurm_check::release_string(built);
                let what = format!("{} built for Slurm {built}", so.display());
                match running {
                    Some(r) => check(
                        r == built,
                        format!("{what}, installed Slurm {r}"),
                        "Slurm loads a plugin only on the release it was built for: rebuild                          berth-slurm against this Slurm (bash packaging/build.sh) and reinstall it",
                    ),
                    None => println!("ok   {what} (no slurmd or srun here to compare with)"),
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        std::iter::once("berth").chain(s.iter().copied()).map(String::from).collect()
    }

    /// What `exec` alone makes of a command line is what the whole command line parser makes.
    #[test]
    fn exec_parsed_alone_is_exec_parsed_in_full() {
        for line in [
            &["exec", "app.sif", "true"][..],
            &[
                "exec",
                "-B",
                "/a:/b:ro,/c",
                "--env",
                "X=1",
                "-e",
                "--workdir",
                "/w",
                "app.sif",
                "prog",
                "-x",
                "--y",
            ],
            &["exec", "--no-share", "--mpi", "host", "--nv", "--rocm", "-o", "/ovl", "img", "a", "--", "b"],
            &["exec", "--join", "slurm-1.0", "prog", "--help"],
            &["exec", "--dry-run", "--json", "-c", "--home", "/h:/home/u", "img", "sh", "-c", "echo $X"],
            &["exec", "--writable-tmpfs", "-C", "--env-file", "f", "--pwd", "/p", "img", "prog"],
            // Refused Apptainer options are parsed, then refused with the full command's error.
            &["exec", "-w", "--scratch", "/s", "img", "prog"],
        ] {
            let full = match Cli::try_parse_from(argv(line)).unwrap().cmd {
                Cmd::Exec(a) => format!("{a:?}"),
                _ => panic!("not exec: {line:?}"),
            };
            let alone = parse_exec_alone(&argv(line)).map(|a| format!("{a:?}"));
            assert_eq!(alone.as_deref(), Some(full.as_str()), "{line:?}");
        }
    }

    /// Mistakes, help and other subcommands go to the full parser (its messages and help).
    #[test]
    fn exec_alone_leaves_errors_and_help_to_the_full_parser() {
        for line in [
            &["exec"][..],
            &["exec", "--bogus", "img", "true"],
            &["exec", "--help"],
            &["exec", "-h"],
            &["exec", "--version"],
            &["exec", "--json", "img", "true"],
            &["exec", "--mpi", "nonsense", "img", "true"],
            &["exec", "--writable-tmpfs", "--overlay", "/o", "img", "true"],
            &["run", "img"],
            &["--version"],
        ] {
            assert!(parse_exec_alone(&argv(line)).is_none(), "{line:?}");
        }
    }
}
