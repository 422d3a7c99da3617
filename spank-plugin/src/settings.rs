//! Pure data: site defaults from plugstack.conf, the user's options, the image path, the
//! holder's command line. No Slurm and no system calls here, so it is all unit-tested.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_runtime::inject::MpiMode;
use berth_runtime::request::{parse_env_assignment, Action, BindSpec, Request};

/// `--container-mpi`, with the values and spelling of `berth exec --mpi`.
pub fn parse_mpi(s: &str) -> Result<MpiMode, String> {
    match s {
        "hybrid" => Ok(MpiMode::Hybrid),
        "host" => Ok(MpiMode::Host),
        "none" => Ok(MpiMode::None),
        _ => Err(format!("--container-mpi={s}: not an MPI model (use hybrid, host or none)")),
    }
}

/// Where the batch script runs when the job asked for a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// On the host (default): every `srun` inside the script starts its step in the image.
    Host,
    /// Inside the image, like the steps.
    Image,
}

impl BatchMode {
    pub fn parse(s: &str) -> Result<BatchMode, String> {
        match s {
            "host" => Ok(BatchMode::Host),
            "image" => Ok(BatchMode::Image),
            _ => Err(format!("{s:?} is not a batch mode (use host or image)")),
        }
    }
}

/// Site settings: the arguments after the plugin path in plugstack.conf.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// The berth binary (`berth=PATH`).
    pub berth: PathBuf,
    /// berth's configuration file (`config=PATH`), passed as `BERTH_CONFIG`.
    pub config: Option<PathBuf>,
    /// Site default for the batch script (`batch=host|image`).
    pub batch: BatchMode,
    /// How long the holder may take to get ready (`timeout=SECONDS`).
    pub timeout: Duration,
    /// Slurm's OCI configuration (`oci_conf=PATH`; default: `oci.conf` beside slurm.conf).
    /// berth's own (packaging/slurm/oci.conf) makes berth the runtime of `--container` on
    /// Slurm 23.02 and later; any other means Slurm's OCI support with another runtime owns
    /// `--container` there, and berth refuses to run.
    pub oci_conf: Option<PathBuf>,
    /// The static program oci.conf's RunTimeRun starts each task with
    /// (`oci_run=PATH`, default [`OCI_RUN`]).
    pub oci_run: PathBuf,
    /// Extra binds for every container (`bind=SRC[:DST[:ro]]`, repeatable or comma-separated),
    /// e.g. the node's TmpFS when it is not under /tmp.
    pub binds: Vec<String>,
    /// Which steps share a `--container-name` (`container_scope=job|global`, pyxis' argument):
    /// the job's (default; removed at the end of the job) or all of the user's jobs on the node.
    pub scope: Scope,
}

pub use berth_runtime::named::Scope;

impl Default for Site {
    fn default() -> Self {
        Site {
            berth: PathBuf::from("/usr/bin/berth"),
            config: None,
            batch: BatchMode::Host,
            timeout: Duration::from_secs(60),
            oci_conf: None,
            oci_run: PathBuf::from(OCI_RUN),
            binds: vec![],
            scope: Scope::Job,
        }
    }
}

impl Site {
    pub fn parse(args: &[String]) -> Result<Site, String> {
        let mut site = Site::default();
        for arg in args {
            let (k, v) = arg
                .split_once('=')
                .ok_or_else(|| format!("plugstack.conf argument {arg:?}: expected KEY=VALUE"))?;
            let bad = |why: String| format!("plugstack.conf argument {arg:?}: {why}");
            match k {
                "berth" => site.berth = abs(v).map_err(bad)?,
                "config" => site.config = Some(abs(v).map_err(bad)?),
                "batch" => site.batch = BatchMode::parse(v).map_err(bad)?,
                "timeout" => {
                    let s: u64 = v.parse().map_err(|_| bad("expected a number of seconds".into()))?;
                    site.timeout = Duration::from_secs(s.max(1));
                }
                "oci_conf" => site.oci_conf = Some(abs(v).map_err(bad)?),
                "oci_run" => site.oci_run = abs(v).map_err(bad)?,
                "bind" => {
                    for b in v.split(',').filter(|b| !b.is_empty()) {
                        berth_runtime::request::BindSpec::parse(b).map_err(bad)?;
                        site.binds.push(b.to_string());
                    }
                }
                "container_scope" => {
                    site.scope = match v {
                        "job" => Scope::Job,
                        "global" => Scope::Global,
                        _ => return Err(bad("expected job or global".into())),
                    }
                }
                _ => {
                    return Err(bad(
                        "unknown key (known: berth, config, batch, timeout, oci_conf, oci_run, bind, container_scope)"
                            .into(),
                    ))
                }
            }
        }
        Ok(site)
    }

    /// This node's oci.conf and whose it is.
    pub fn oci(&self, slurm_conf: Option<&str>) -> (PathBuf, OciConf) {
        let path = self.oci_conf_path(slurm_conf);
        let judged = OciConf::judge(std::fs::read_to_string(&path).ok().as_deref());
        (path, judged)
    }

    /// The oci.conf that turns on Slurm's OCI support for `--container` here.
    pub fn oci_conf_path(&self, slurm_conf: Option<&str>) -> PathBuf {
        if let Some(p) = &self.oci_conf {
            return p.clone();
        }
        let conf = Path::new(slurm_conf.unwrap_or("/etc/slurm/slurm.conf"));
        conf.parent().unwrap_or(Path::new("/etc/slurm")).join("oci.conf")
    }
}

/// Where the berth-slurm package installs the task runner of berth's oci.conf.
pub const OCI_RUN: &str = "/usr/libexec/berth/berth-oci-run";

/// The variable oci.conf's RunTimeRun runs (berth's oci.conf: `exec $BERTH_OCI_RUN %e %@`):
/// the task runner, as `/proc/self/fd/N` of a descriptor the plugin opened on the host.
pub const OCI_RUN_VAR: &str = "BERTH_OCI_RUN";
/// The number of that descriptor, which the runner closes.
pub const OCI_FD_VAR: &str = "BERTH_OCI_FD";

/// Who runs `--container` tasks on a node, from its oci.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciConf {
    /// No oci.conf: slurmstepd runs the task's program itself (and, since Slurm 23.02, its
    /// PMIx plugin has no directory for a `--container` step: see the plugin's README).
    Absent,
    /// berth's oci.conf: slurmstepd runs each task through RunTimeRun, which execs berth's
    /// runner with the task's environment file. Holds MountSpoolDir, the pattern of the
    /// step's directory (where the tasks' environment files and PMIx's files are), which the
    /// container must have at the same path.
    Berth(String),
    /// Another OCI runtime (runc, crun, ...) owns `--container` on this node.
    Other,
}

impl OciConf {
    /// Judge oci.conf's text (Slurm's parser takes keys in any case, `Key=Value` or
    /// `Key="Value"`, `#` comments): berth's is the one whose RunTimeRun runs
    /// `$BERTH_OCI_RUN` and that needs no OCI bundle (IgnoreFileConfigJson, since an image
    /// file is no bundle) and writes the environment file (CreateEnvFile).
    pub fn judge(text: Option<&str>) -> OciConf {
        let Some(text) = text else { return OciConf::Absent };
        let (mut run, mut step_dir, mut task_dir) = (None, None, None);
        let (mut no_bundle, mut env_file) = (false, false);
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((k, v)) = line.split_once('=') else { continue };
            let v = v.trim().trim_matches('"');
            let yes = |v: &str| ["true", "yes", "y", "1", "null"].contains(&v.to_ascii_lowercase().as_str());
            match k.trim().to_ascii_lowercase().as_str() {
                "runtimerun" => run = Some(v.to_string()),
                "mountspooldir" => step_dir = Some(v.trim_end_matches('/').to_string()),
                "containerpath" => task_dir = Some(v.to_string()),
                "ignorefileconfigjson" => no_bundle = yes(v),
                "createenvfile" => env_file = yes(v),
                _ => {}
            }
        }
        // The step's directory is bound into the container, so it must be one berth can
        // name (an absolute pattern of the ids it knows) holding the tasks' directories.
        let within = |dir: &str, task: &str| {
            dir.starts_with('/')
                && task.starts_with(&format!("{dir}/"))
                && expand_step_dir(dir, 0, "", 0, 0).is_some()
        };
        match (run, step_dir, task_dir) {
            (Some(r), Some(dir), Some(task))
                if no_bundle && env_file && r.contains(OCI_RUN_VAR) && within(&dir, &task) =>
            {
                OciConf::Berth(dir)
            }
            _ => OciConf::Other,
        }
    }
}

/// oci.conf's MountSpoolDir for one step: `%U` (uid), `%u` (user name), `%j`, `%s` and `%%`,
/// the replacements slurmstepd makes there. None for a pattern with others (`%m`, `%n`...),
/// which berth cannot know in the plugin.
pub fn expand_step_dir(pattern: &str, uid: u32, user: &str, job: u32, step: u32) -> Option<PathBuf> {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'U' => out.push_str(&uid.to_string()),
            'u' => out.push_str(user),
            'j' => out.push_str(&job.to_string()),
            's' => out.push_str(&step.to_string()),
            '%' => out.push('%'),
            _ => return None,
        }
    }
    Some(PathBuf::from(out))
}

fn abs(v: &str) -> Result<PathBuf, String> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err("must be an absolute path".into())
    }
}

/// The options berth registers (pyxis' names, so pyxis job scripts keep working). The value
/// is the `val` Slurm hands back to the option callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Opt {
    Image = 1,
    Mounts,
    Workdir,
    Env,
    MountHome,
    NoMountHome,
    Writable,
    Readonly,
    Batch,
    Name,
    Save,
    RemapRoot,
    NoRemapRoot,
    Entrypoint,
    NoEntrypoint,
    EntrypointLog,
    Mpi,
    Nv,
    Rocm,
}

impl Opt {
    /// name, argument (None for flags), usage.
    pub const ALL: [(Opt, &'static str, Option<&'static str>, &'static str); 19] = [
        (Opt::Image, "container-image", Some("IMAGE"), "[berth] image file to run the step in (same as --container)"),
        (Opt::Mounts, "container-mounts", Some("SRC[:DST[:ro|rw]][,...]"), "[berth] bind mount host paths into the container"),
        (Opt::Workdir, "container-workdir", Some("DIR"), "[berth] working directory inside the container"),
        (Opt::Env, "container-env", Some("NAME[=VALUE][,...]"), "[berth] keep the host's NAME (or set NAME=VALUE; a value with a comma: export it and give its NAME) over the image's environment"),
        (Opt::MountHome, "container-mount-home", None, "[berth] bind the user's home directory (default)"),
        (Opt::NoMountHome, "no-container-mount-home", None, "[berth] do not bind the user's home directory"),
        (Opt::Writable, "container-writable", None, "[berth] writable container (changes go to a tmpfs, lost at the end)"),
        (Opt::Readonly, "container-readonly", None, "[berth] read-only container (default)"),
        (Opt::Batch, "container-batch", Some("host|image"), "[berth] where the batch script runs: host (srun steps in the image) or image"),
        (Opt::Name, "container-name", Some("NAME[:auto|create|exec|no_exec]"), "[berth] a container kept for the job's later steps on each node under NAME, its changes included; later steps with this name run in it, joining it while a step runs in it (--container-image then optional; :exec only joins, :no_exec never does)"),
        (Opt::Save, "container-save", Some("PATH"), "[berth] at the end of the step, save the container (the image with the step's changes) as the SquashFS file PATH, from the step's first node"),
        (Opt::RemapRoot, "container-remap-root", None, "[berth] appear as root (uid 0) inside, still yourself outside; grants no privilege"),
        (Opt::NoRemapRoot, "no-container-remap-root", None, "[berth] keep your own uid inside the container (default)"),
        (Opt::Entrypoint, "container-entrypoint", None, "[berth] run the command through the image's runscript (its entrypoint): /.singularity.d/runscript COMMAND ARGS"),
        (Opt::NoEntrypoint, "no-container-entrypoint", None, "[berth] run the command directly, not through the image's runscript (default)"),
        (Opt::EntrypointLog, "container-entrypoint-log", None, "[berth] show the entrypoint's output (no effect: the runscript's output is always the task's)"),
        (Opt::Mpi, "container-mpi", Some("hybrid|host|none"), "[berth] MPI model: the image's MPI over the host fabric (hybrid), the host's MPI (host), or nothing injected (none)"),
        (Opt::Nv, "container-nv", None, "[berth] the host's NVIDIA driver and the step's GPUs (automatic when the step has GPUs)"),
        (Opt::Rocm, "container-rocm", None, "[berth] the host's AMD GPU devices and ROCm libraries, the step's GPUs only (automatic when the step has GPUs on an AMD node)"),
    ];

    pub fn from_val(val: i32) -> Option<Opt> {
        Opt::ALL.iter().map(|o| o.0).find(|o| *o as i32 == val)
    }
}

/// The user's options for this job/step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserOpts {
    pub image: Option<String>,
    pub mounts: Vec<String>,
    pub workdir: Option<String>,
    /// `NAME` (keep the host value) or `NAME=VALUE`.
    pub env: Vec<String>,
    pub mount_home: Option<bool>,
    pub writable: Option<bool>,
    pub batch: Option<BatchMode>,
    /// `--container-name=NAME[:FLAGS]`: the name and its flag (`auto` when none was given).
    pub name: Option<(String, String)>,
    pub save: Option<String>,
    pub remap_root: Option<bool>,
    pub entrypoint: Option<bool>,
    pub entrypoint_log: bool,
    pub mpi: Option<MpiMode>,
    pub nv: bool,
    pub rocm: bool,
}

impl UserOpts {
    /// Apply one option. Idempotent (Slurm calls remote option callbacks twice); a later value
    /// replaces an earlier one (sbatch's value comes first through the environment, then the
    /// srun command line's).
    pub fn set(&mut self, opt: Opt, arg: Option<&str>) -> Result<(), String> {
        let arg_or = |name: &str| arg.ok_or_else(|| format!("--{name} needs a value"));
        match opt {
            Opt::Image => {
                let v = arg_or("container-image")?;
                if v.is_empty() {
                    return Err("--container-image: empty image path".into());
                }
                self.image = Some(v.to_string());
            }
            Opt::Mounts => {
                let v = arg_or("container-mounts")?;
                let mounts = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(pyxis_mount)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--container-mounts={v}: {e}"))?;
                berth_runtime::request::BindSpec::parse_list(&mounts.join(","))
                    .map_err(|e| format!("--container-mounts={v}: {e}"))?;
                self.mounts = mounts;
            }
            Opt::Workdir => {
                let v = arg_or("container-workdir")?;
                berth_runtime::request::check_container_path(Path::new(v))
                    .map_err(|e| format!("--container-workdir={v}: {e}"))?;
                self.workdir = Some(v.to_string());
            }
            Opt::Env => {
                let v = arg_or("container-env")?;
                let mut out = vec![];
                for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let name = item.split_once('=').map_or(item, |(k, _)| k);
                    if !berth_runtime::request::valid_env_name(name) {
                        return Err(format!("--container-env={v}: {name:?} is not a variable name"));
                    }
                    out.push(item.to_string());
                }
                self.env = out;
            }
            Opt::MountHome => self.mount_home = Some(true),
            Opt::NoMountHome => self.mount_home = Some(false),
            Opt::Writable => self.writable = Some(true),
            Opt::Readonly => self.writable = Some(false),
            Opt::Batch => {
                self.batch = Some(
                    BatchMode::parse(arg_or("container-batch")?)
                        .map_err(|e| format!("--container-batch: {e}"))?,
                )
            }
            Opt::Name => {
                let v = arg_or("container-name")?;
                let (name, flag) = v.split_once(':').unwrap_or((v, ""));
                if !berth_runtime::holder::valid_name(name) {
                    return Err(format!(
                        "--container-name={v}: the name may hold only letters, digits and . _ - + @ \
                         (not starting with '.')"
                    ));
                }
                let flag = if flag.is_empty() { "auto" } else { flag };
                if !matches!(flag, "auto" | "create" | "exec" | "no_exec") {
                    return Err(format!(
                        "--container-name={v}: {flag:?} is not a flag (use auto, create, exec or no_exec)"
                    ));
                }
                self.name = Some((name.to_string(), flag.to_string()));
            }
            Opt::Save => {
                let v = arg_or("container-save")?;
                if v.is_empty() || v.ends_with('/') {
                    return Err(format!("--container-save={v}: expected a file path, not a directory"));
                }
                self.save = Some(v.to_string());
            }
            Opt::RemapRoot => self.remap_root = Some(true),
            Opt::NoRemapRoot => self.remap_root = Some(false),
            Opt::Entrypoint => self.entrypoint = Some(true),
            Opt::NoEntrypoint => self.entrypoint = Some(false),
            Opt::EntrypointLog => self.entrypoint_log = true,
            Opt::Mpi => self.mpi = Some(parse_mpi(arg_or("container-mpi")?)?),
            Opt::Nv => self.nv = true,
            Opt::Rocm => self.rocm = true,
        }
        Ok(())
    }

    /// Why these options cannot be honoured, for options berth registers with pyxis' meaning
    /// but cannot give that meaning yet: refusing is better than running the step in a
    /// container other than the one the script asked for.
    pub fn unsupported(&self) -> Option<String> {
        if let (Some((name, _)), Some(false)) = (&self.name, self.writable) {
            return Some(format!(
                "--container-name={name} with --container-readonly: a named container keeps its changes \
                 for the job's later steps, so it is writable; drop one of the two"
            ));
        }
        None
    }

    /// Names from `--container-env NAME` whose host value wins over the image's.
    pub fn kept_env_names(&self) -> Vec<&str> {
        self.env.iter().filter(|e| !e.contains('=')).map(String::as_str).collect()
    }
}

/// One `--container-mounts` entry in berth's `SRC[:DST[:ro|rw]]` form. pyxis joins mount flags
/// with `+` (`/d:/d:ro+rprivate`); besides `ro`/`rw`, the flags that describe what berth does
/// anyway are accepted: binds are recursive (`rbind`) and never propagate back to the host
/// (`rprivate`, `private`, `rslave`, `slave`). Any other flag is refused rather than ignored.
pub fn pyxis_mount(entry: &str) -> Result<String, String> {
    let mut parts = entry.splitn(3, ':');
    let (src, dst, flags) = (parts.next().unwrap_or(""), parts.next(), parts.next());
    let Some(flags) = flags.filter(|f| !f.is_empty()) else { return Ok(entry.to_string()) };
    let mut ro = false;
    for f in flags.split('+') {
        match f {
            "ro" => ro = true,
            "rw" => ro = false,
            "rbind" | "rprivate" | "private" | "rslave" | "slave" => {}
            _ => {
                return Err(format!(
                    "{entry:?}: mount flag {f:?} is not supported (use ro or rw; rbind, rprivate and \
                     rslave are what berth does anyway)"
                ))
            }
        }
    }
    Ok(format!("{src}:{}:{}", dst.unwrap_or(src), if ro { "ro" } else { "rw" }))
}

/// Choose the step's image on the client (srun/sbatch/salloc) after option parsing.
/// `cli_container` is `SLURM_CONTAINER` as Slurm set it from this command's `--container`,
/// `inherited` the value the enclosing job passed down (taken out of the environment in init).
pub fn choose_image(
    cli_container: Option<&str>,
    cli_image: Option<&str>,
    inherited: Option<&str>,
) -> Result<Option<String>, String> {
    let pick = |s: Option<&str>| s.filter(|v| !v.is_empty()).map(String::from);
    match (pick(cli_container), pick(cli_image)) {
        (Some(a), Some(b)) if a != b => {
            Err(format!("--container={a} and --container-image={b} name different images; give one"))
        }
        (Some(a), _) => Ok(Some(a)),
        (None, Some(b)) => Ok(Some(b)),
        (None, None) => Ok(pick(inherited)),
    }
}

/// The first Slurm release whose PMIx plugin puts its server directory in the OCI spool
/// directory of a step with `--container` (SchedMD/slurm 9985efc4a8, "mpi/pmix - use container
/// spooldir", first in 23.02.0rc1). Without an oci.conf that directory is NULL: the step fails
/// before any plugin runs (`Cannot bind() UNIX socket (null)/stepd.slurm.pmix.J.S`).
pub const PMIX_IN_OCI_SPOOL: u32 = 0x17_02_00;

/// srun's `--container=IMG` on this Slurm, with this oci.conf: refused, with what to use
/// instead, where the step would fail in Slurm before berth runs (a release with
/// [`PMIX_IN_OCI_SPOOL`] and no berth oci.conf). sbatch and salloc are not refused: their
/// batch step or allocation has no PMIx server, and their sruns run in the image without it.
pub fn srun_container_refusal(slurm: u32, oci: &OciConf, oci_path: &Path) -> Option<String> {
    if slurm < PMIX_IN_OCI_SPOOL || matches!(oci, OciConf::Berth(_)) {
        return None;
    }
    let node = match oci {
        OciConf::Other => format!("{} is another runtime's", oci_path.display()),
        _ => format!("there is no {}", oci_path.display()),
    };
    Some(format!(
        "srun --container: on Slurm 23.02 and later a step with Slurm's own --container needs berth's \
         oci.conf on the nodes ({node}), else Slurm fails it before berth runs; use --container-image=IMG, \
         which runs the same container, or ask the administrator to install berth's oci.conf \
         (/usr/share/berth-slurm/oci.conf)"
    ))
}

/// What a node has of named container NAME when a step asks for it (pyxis' three cases:
/// `enroot_container_get` gives no container, a container that is not running, or its pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    /// No step made it.
    Missing,
    /// Its files are kept (made from `image`); no step runs in it now.
    Stopped { image: &'a Path },
    /// Step `step` (`JOB.STEP`) runs in it now; it was made from `image`.
    Running { image: &'a Path, step: &'a str },
}

/// How a step with `--container-name` gets its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedPlan {
    /// Its tasks join the running container of the step that has it (no holder of its own).
    Join,
    /// Its own holder mounts the kept files over `image`.
    Reuse(PathBuf),
    /// Its own holder makes the container from `image`.
    Create(PathBuf),
}

/// How a step with `--container-name=NAME:FLAG` gets its container, by pyxis' rules: `auto`
/// (the default) joins the running container, else runs in its kept files, else makes it from
/// the image asked for (`asked`); `create` only makes it; `exec` only joins a running one;
/// `no_exec` never joins, and since a second mount of a writable layer that is mounted is not
/// possible, a running container refuses it with that reason. `scope` says where names are
/// looked up, for the messages. pyxis runs an existing container even when the step names
/// another image; berth refuses that instead of running another image than the one asked for.
pub fn named_plan(
    name: &str,
    flag: &str,
    scope: Scope,
    found: Found,
    asked: Option<&Path>,
) -> Result<NamedPlan, String> {
    let here = match scope {
        Scope::Job => "in this job on this node",
        Scope::Global => "on this node",
    };
    let (existing, running) = match found {
        Found::Missing => (None, None),
        Found::Stopped { image } => (Some(image), None),
        Found::Running { image, step } => (Some(image), Some(step)),
    };
    match (flag, existing, running) {
        ("create", Some(_), step) => {
            return Err(format!(
                "--container-name={name}:create: a container named {name} already exists {here}{}; use \
                 --container-name={name} to run in it, or another name",
                step.map(|s| format!(" (step {s} runs in it)")).unwrap_or_default()
            ))
        }
        ("exec", None, _) => {
            return Err(format!(
                "--container-name={name}:exec: no container named {name} exists {here}; :exec only joins \
                 a container that a running step of the job has"
            ))
        }
        ("exec", Some(_), None) => {
            return Err(format!(
                "--container-name={name}:exec: the container {name} is not running {here}: its files are \
                 kept, but no step runs in it now, and :exec only joins a running container; use \
                 --container-name={name} to run in its files"
            ))
        }
        ("no_exec", Some(_), Some(step)) => {
            return Err(format!(
                "--container-name={name}:no_exec: the container {name} is running {here} (step {step}), \
                 and :no_exec does not join a running container; running it a second time would mount its \
                 writable layer twice, which overlayfs does not allow: wait for step {step} to end, or drop \
                 :no_exec to join the running container"
            ))
        }
        _ => {}
    }
    match (existing, asked) {
        (Some(e), Some(a)) if a != e => Err(format!(
            "--container-name={name}: the container was made from image {} {here}, and this step asks for \
             {}; pyxis would ignore the new image and run in the existing container, berth refuses rather \
             than run an image other than the one asked for: drop --container-image or use another name",
            e.display(),
            a.display()
        )),
        (Some(_), _) if running.is_some() => Ok(NamedPlan::Join),
        (Some(e), _) => Ok(NamedPlan::Reuse(e.to_path_buf())),
        (None, Some(a)) => Ok(NamedPlan::Create(a.to_path_buf())),
        (None, None) => Err(format!(
            "--container-name={name}: no container named {name} exists {here}, and no --container-image \
             (or --container) was given to make it"
        )),
    }
}

/// What a step that joins a running named container asked for that only the step which set
/// that container up decides (its binds, its user mapping, its MPI and GPU injection): the
/// options given, for the message that they are ignored (pyxis ignores `--container-mounts`
/// when it attaches to a running container).
pub fn ignored_when_joining(opts: &UserOpts) -> Vec<&'static str> {
    let mut v = vec![];
    if !opts.mounts.is_empty() {
        v.push("--container-mounts");
    }
    match opts.mount_home {
        Some(true) => v.push("--container-mount-home"),
        Some(false) => v.push("--no-container-mount-home"),
        None => {}
    }
    match opts.remap_root {
        Some(true) => v.push("--container-remap-root"),
        Some(false) => v.push("--no-container-remap-root"),
        None => {}
    }
    if opts.mpi.is_some() {
        v.push("--container-mpi");
    }
    if opts.nv {
        v.push("--container-nv");
    }
    if opts.rocm {
        v.push("--container-rocm");
    }
    v
}

pub use berth_runtime::scheduler::{
    resolve_image, slurm_holder_name as holder_name, SLURM_BATCH_STEP as BATCH_STEP,
    SLURM_EXTERN_STEP as EXTERN_STEP,
};

/// The request a step's holder sets its container up from: `binds` in order (Slurm's own
/// directories, the site's, the user's), then the user's options.
pub fn holder_request(image: &Path, binds: &[String], opts: &UserOpts) -> Result<Request, String> {
    let mut req = Request::new(image.to_path_buf(), Action::Shell);
    for b in binds {
        req.binds.push(BindSpec::parse(b).map_err(|e| format!("bind {b}: {e}"))?);
    }
    // `--container-env NAME` (no value) keeps the task's own value: nothing for the holder.
    for e in opts.env.iter().filter(|e| e.contains('=')) {
        req.env.push(parse_env_assignment(e).map_err(|e| e.to_string())?);
    }
    req.workdir = opts.workdir.as_ref().map(PathBuf::from);
    req.writable_tmpfs = opts.writable.unwrap_or(false);
    req.mount_home = opts.mount_home.unwrap_or(true);
    req.remap_root = opts.remap_root.unwrap_or(false);
    req.mpi = opts.mpi;
    // Without --container-nv, berth's own rule still applies: GPUs when the step has some.
    req.nvidia = opts.nv;
    req.rocm = opts.rocm;
    Ok(req)
}

/// Variables the image's environment must never replace in a task: the scheduler's and the
/// process managers' wiring ([`berth_runtime::scheduler::LAUNCH_PREFIXES`]), the user's
/// identity and temporary directory as Slurm set them, and the step's image.
pub fn task_owns(name: &str) -> bool {
    berth_runtime::scheduler::is_launch_var(name)
        || matches!(name, "BERTH_CONTAINER_IMAGE" | "HOME" | "USER" | "LOGNAME" | "TMPDIR")
}

/// The step's PMIx server directory (`.../pmix.JOB.STEP`) if the absolute path `p` is in it.
pub fn pmix_dir_in(p: &str, job: u32, step: u32) -> Option<PathBuf> {
    let needle = format!("/pmix.{job}.{step}");
    let end = p.find(&needle)? + needle.len();
    (p.starts_with('/') && (p.len() == end || p[end..].starts_with('/'))).then(|| PathBuf::from(&p[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn site_defaults_and_args() {
        assert_eq!(Site::parse(&[]).unwrap(), Site::default());
        let site = Site::parse(&s(&[
            "berth=/opt/berth/bin/berth",
            "batch=image",
            "timeout=5",
            "bind=/scratch,/local:/l:ro",
        ]))
        .unwrap();
        assert_eq!(site.berth, PathBuf::from("/opt/berth/bin/berth"));
        assert_eq!(site.batch, BatchMode::Image);
        assert_eq!(site.timeout, Duration::from_secs(5));
        assert_eq!(site.binds, s(&["/scratch", "/local:/l:ro"]));
    }

    #[test]
    fn site_errors_name_the_argument() {
        let e = Site::parse(&s(&["berth=berth"])).unwrap_err();
        assert!(e.contains("\"berth=berth\"") && e.contains("absolute"), "{e}");
        let e = Site::parse(&s(&["colour=blue"])).unwrap_err();
        assert!(e.contains("unknown key"), "{e}");
        assert!(Site::parse(&s(&["batch=sometimes"])).is_err());
        assert!(Site::parse(&s(&["noequals"])).is_err());
    }

    #[test]
    fn oci_conf_beside_slurm_conf() {
        let site = Site::default();
        assert_eq!(site.oci_conf_path(Some("/tmp/x/etc/slurm.conf")), PathBuf::from("/tmp/x/etc/oci.conf"));
        assert_eq!(site.oci_conf_path(None), PathBuf::from("/etc/slurm/oci.conf"));
        assert_eq!(site.oci_run, PathBuf::from(OCI_RUN));
        let site = Site::parse(&s(&["oci_run=/opt/berth/oci-run"])).unwrap();
        assert_eq!(site.oci_run, PathBuf::from("/opt/berth/oci-run"));
        assert!(Site::parse(&s(&["oci_run=oci-run"])).is_err());
    }

    /// srun --container is refused before the step exists where Slurm would fail it: on 23.02
    /// and later without berth's oci.conf, never on 22.05.
    #[test]
    fn srun_container_is_refused_where_slurm_would_fail_it() {
        let p = Path::new("/etc/slurm/oci.conf");
        assert_eq!(srun_container_refusal(0x16_05_08, &OciConf::Absent, p), None);
        assert_eq!(srun_container_refusal(0x18_0b_05, &OciConf::Berth("/o".into()), p), None);
        let absent = srun_container_refusal(0x18_0b_05, &OciConf::Absent, p).unwrap();
        assert!(
            absent.contains("--container-image=IMG") && absent.contains("there is no /etc/slurm/oci.conf"),
            "{absent}"
        );
        let other = srun_container_refusal(0x17_02_00, &OciConf::Other, p).unwrap();
        assert!(other.contains("/etc/slurm/oci.conf is another runtime's"), "{other}");
    }

    /// The oci.conf berth packages is berth's; one for runc, one that would make slurmstepd
    /// look for a bundle's config.json in the image file, or one without the NUL-separated
    /// environment file the runner reads, is not.
    #[test]
    fn only_berths_oci_conf_makes_berth_the_runtime() {
        let packaged = include_str!("../../packaging/slurm/oci.conf");
        assert_eq!(OciConf::judge(Some(packaged)), OciConf::Berth("/run/berth-oci/%U/%j.%s".into()));
        assert_eq!(OciConf::judge(None), OciConf::Absent);
        // %m (slurmd's spool directory) is no id the plugin knows: not berth's.
        let spool = packaged
            .replace("ContainerPath=/run/berth-oci/%U", "ContainerPath=%m")
            .replace("MountSpoolDir=/run/berth-oci/%U", "MountSpoolDir=%m");
        assert_eq!(OciConf::judge(Some(&spool)), OciConf::Other);
        // Task directories outside the step's.
        let apart = packaged.replace("ContainerPath=/run/berth-oci/%U/%j.%s/", "ContainerPath=/var/tmp/%U/");
        assert_eq!(OciConf::judge(Some(&apart)), OciConf::Other);
        assert_eq!(
            expand_step_dir("/run/berth-oci/%U/%j.%s", 2001, "ann", 12, 0),
            Some(PathBuf::from("/run/berth-oci/2001/12.0"))
        );
        assert_eq!(expand_step_dir("/x/%u/100%%/%j", 1, "ann", 7, 3), Some(PathBuf::from("/x/ann/100%/7")));
        assert_eq!(expand_step_dir("/x/%n", 1, "ann", 7, 3), None);
        let lower =
            "ignorefileconfigjson=YES\ncreateenvfile=null\nruntimerun=\"exec $BERTH_OCI_RUN %e %@\"\n\
                     containerpath=/o/%j.%s/%t\nmountspooldir=/o/%j.%s/\n";
        assert_eq!(OciConf::judge(Some(lower)), OciConf::Berth("/o/%j.%s".into()));
        let runc = "RunTimeQuery=\"runc state %n.%u.%j.%s.%t\"\nRunTimeKill=\"runc kill\"\n\
                    RunTimeDelete=\"runc delete\"\nRunTimeRun=\"runc run %n.%u.%j.%s.%t -b %b\"\n";
        assert_eq!(OciConf::judge(Some(runc)), OciConf::Other);
        assert_eq!(OciConf::judge(Some(&packaged.replace("IgnoreFileConfigJson=true", ""))), OciConf::Other);
        assert_eq!(
            OciConf::judge(Some(&packaged.replace("CreateEnvFile=null", "CreateEnvFile=newline"))),
            OciConf::Other
        );
        let commented = packaged.replace("RunTimeRun=", "# RunTimeRun=");
        assert_eq!(OciConf::judge(Some(&commented)), OciConf::Other);
    }

    #[test]
    fn options_validate_and_replace() {
        let mut o = UserOpts::default();
        o.set(Opt::Mounts, Some("/a:/b:ro,/c")).unwrap();
        assert_eq!(o.mounts, s(&["/a:/b:ro", "/c"]));
        o.set(Opt::Mounts, Some("/d")).unwrap();
        assert_eq!(o.mounts, s(&["/d"]));
        assert!(o.set(Opt::Mounts, Some("/a:relative")).unwrap_err().contains("--container-mounts"));
        assert!(o.set(Opt::Workdir, Some("rel")).is_err());
        o.set(Opt::Env, Some("OMP_NUM_THREADS,FOO=bar")).unwrap();
        assert_eq!(o.kept_env_names(), vec!["OMP_NUM_THREADS"]);
        assert!(o.set(Opt::Env, Some("1BAD")).is_err());
        o.set(Opt::NoMountHome, None).unwrap();
        assert_eq!(o.mount_home, Some(false));
        o.set(Opt::Batch, Some("image")).unwrap();
        assert_eq!(o.batch, Some(BatchMode::Image));
        assert_eq!(Opt::from_val(Opt::Batch as i32), Some(Opt::Batch));
        assert_eq!(Opt::from_val(0), None);
    }

    #[test]
    fn pyxis_mount_flags() {
        assert_eq!(pyxis_mount("/a").unwrap(), "/a");
        assert_eq!(pyxis_mount("/a:/b").unwrap(), "/a:/b");
        assert_eq!(pyxis_mount("/a:/b:ro+rprivate").unwrap(), "/a:/b:ro");
        assert_eq!(pyxis_mount("/a:/b:rbind+rw").unwrap(), "/a:/b:rw");
        assert!(pyxis_mount("/a:/b:ro+noexec").unwrap_err().contains("\"noexec\" is not supported"));
        let mut o = UserOpts::default();
        o.set(Opt::Mounts, Some("/x:/y:ro+rslave,/z")).unwrap();
        assert_eq!(o.mounts, s(&["/x:/y:ro", "/z"]));
        assert!(o.set(Opt::Mounts, Some("/x:/y:rshared")).is_err());
    }

    #[test]
    fn pyxis_options_parse_like_pyxis() {
        let mut o = UserOpts::default();
        assert_eq!(o.unsupported(), None);
        o.set(Opt::RemapRoot, None).unwrap();
        o.set(Opt::NoEntrypoint, None).unwrap();
        o.set(Opt::EntrypointLog, None).unwrap();
        assert_eq!(o.unsupported(), None, "options berth honours are not refused");
        let req = holder_request(Path::new("/i"), &[], &o).unwrap();
        assert!(req.remap_root);
        o.set(Opt::NoRemapRoot, None).unwrap();
        assert!(!holder_request(Path::new("/i"), &[], &o).unwrap().remap_root);

        o.set(Opt::Mpi, Some("host")).unwrap();
        o.set(Opt::Nv, None).unwrap();
        let req = holder_request(Path::new("/i"), &[], &o).unwrap();
        assert_eq!((req.mpi, req.nvidia, req.rocm), (Some(MpiMode::Host), true, false));
        o.set(Opt::Rocm, None).unwrap();
        assert!(holder_request(Path::new("/i"), &[], &o).unwrap().rocm);
        let e = o.set(Opt::Mpi, Some("openmpi")).unwrap_err();
        assert!(e.contains("--container-mpi=openmpi") && e.contains("hybrid, host or none"), "{e}");
        let plain = holder_request(Path::new("/i"), &[], &UserOpts::default()).unwrap();
        assert_eq!((plain.mpi, plain.nvidia, plain.rocm, plain.remap_root), (None, false, false, false));

        o.set(Opt::Name, Some("train")).unwrap();
        assert_eq!(o.name, Some(("train".into(), "auto".into())));
        o.set(Opt::Name, Some("train:no_exec")).unwrap();
        assert_eq!(o.name, Some(("train".into(), "no_exec".into())));
        assert!(o.set(Opt::Name, Some("train:later")).unwrap_err().contains("auto, create, exec or no_exec"));
        assert!(o.set(Opt::Name, Some("../x")).is_err());
        assert!(o.set(Opt::Name, Some(":create")).is_err());
        assert_eq!(o.unsupported(), None, "named containers are supported");
        o.set(Opt::Readonly, None).unwrap();
        assert!(o.unsupported().unwrap().contains("with --container-readonly"));

        let mut o = UserOpts::default();
        assert!(o.set(Opt::Save, Some("/out/")).unwrap_err().contains("not a directory"));
        o.set(Opt::Save, Some("/out/c.sqsh")).unwrap();
        assert_eq!(o.unsupported(), None);

        let mut o = UserOpts::default();
        o.set(Opt::Entrypoint, None).unwrap();
        assert_eq!((o.unsupported(), o.entrypoint), (None, Some(true)));
        o.set(Opt::NoEntrypoint, None).unwrap();
        assert_eq!(o.entrypoint, Some(false));

        // Every option has its own value and name, and all are registered.
        let mut names: Vec<_> = Opt::ALL.iter().map(|o| o.1).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Opt::ALL.len());
        for (opt, ..) in Opt::ALL {
            assert_eq!(Opt::from_val(opt as i32), Some(opt));
        }
    }

    #[test]
    fn named_containers_follow_pyxis_flags() {
        use NamedPlan::*;
        let (a, b) = (Path::new("/i/a.sqsh"), Path::new("/i/b.sqsh"));
        let job = Scope::Job;
        let stopped = Found::Stopped { image: a };
        let running = Found::Running { image: a, step: "7.0" };
        let plan = |flag, found, asked| named_plan("n", flag, job, found, asked);
        // auto: join the running container, else run in its files, else make it.
        assert_eq!(plan("auto", running, None).unwrap(), Join);
        assert_eq!(plan("auto", running, Some(a)).unwrap(), Join);
        assert_eq!(plan("auto", stopped, None).unwrap(), Reuse(a.into()));
        assert_eq!(plan("auto", stopped, Some(a)).unwrap(), Reuse(a.into()));
        assert_eq!(plan("auto", Found::Missing, Some(a)).unwrap(), Create(a.into()));
        // exec: only join.
        assert_eq!(plan("exec", running, None).unwrap(), Join);
        assert_eq!(plan("exec", running, Some(a)).unwrap(), Join);
        let e = plan("exec", stopped, None).unwrap_err();
        assert!(
            e.contains(":exec: the container n is not running in this job on this node: its files"),
            "{e}"
        );
        let e = plan("exec", Found::Missing, Some(a)).unwrap_err();
        assert!(e.contains(":exec: no container named n exists in this job on this node"), "{e}");
        // no_exec: never joins; the files, or a new container.
        assert_eq!(plan("no_exec", stopped, None).unwrap(), Reuse(a.into()));
        assert_eq!(plan("no_exec", Found::Missing, Some(a)).unwrap(), Create(a.into()));
        let e = plan("no_exec", running, Some(a)).unwrap_err();
        assert!(
            e.contains("is running in this job on this node (step 7.0)")
                && e.contains("mount its writable layer twice")
                && e.contains("drop :no_exec to join"),
            "{e}"
        );
        // create: only a new one.
        assert_eq!(plan("create", Found::Missing, Some(a)).unwrap(), Create(a.into()));
        assert!(plan("create", stopped, Some(a))
            .unwrap_err()
            .contains("already exists in this job on this node;"));
        assert!(plan("create", running, None)
            .unwrap_err()
            .contains("already exists in this job on this node (step 7.0 runs in it)"));
        // Another image than the container's, running or not: refused with both named.
        for flag in ["auto", "exec", "no_exec"] {
            let found = if flag == "no_exec" { stopped } else { running };
            let e = plan(flag, found, Some(b)).unwrap_err();
            assert!(
                e.contains("made from image /i/a.sqsh") && e.contains("asks for /i/b.sqsh"),
                "{flag}: {e}"
            );
        }
        for flag in ["auto", "no_exec"] {
            let e = plan(flag, Found::Missing, None).unwrap_err();
            assert!(
                e.contains("no container named n exists in this job") && e.contains("--container-image"),
                "{e}"
            );
        }
        let e = named_plan("n", "auto", Scope::Global, Found::Missing, None).unwrap_err();
        assert!(e.contains("exists on this node,"), "{e}");
    }

    #[test]
    fn a_joining_step_names_the_options_it_cannot_change() {
        let mut o = UserOpts::default();
        o.set(Opt::Env, Some("A=b")).unwrap();
        o.set(Opt::Workdir, Some("/w")).unwrap();
        o.set(Opt::Writable, None).unwrap();
        assert!(ignored_when_joining(&o).is_empty(), "per-task options and the writable default apply");
        o.set(Opt::Mounts, Some("/a:/b")).unwrap();
        o.set(Opt::NoMountHome, None).unwrap();
        o.set(Opt::RemapRoot, None).unwrap();
        o.set(Opt::Mpi, Some("none")).unwrap();
        o.set(Opt::Nv, None).unwrap();
        assert_eq!(
            ignored_when_joining(&o),
            [
                "--container-mounts",
                "--no-container-mount-home",
                "--container-remap-root",
                "--container-mpi",
                "--container-nv"
            ]
        );
    }

    #[test]
    fn container_scope_argument() {
        assert_eq!(Site::parse(&[]).unwrap().scope, Scope::Job);
        assert_eq!(Site::parse(&s(&["container_scope=global"])).unwrap().scope, Scope::Global);
        assert!(Site::parse(&s(&["container_scope=node"])).unwrap_err().contains("job or global"));
    }

    #[test]
    fn image_choice() {
        assert_eq!(choose_image(None, None, None).unwrap(), None);
        assert_eq!(choose_image(None, None, Some("outer.sqsh")).unwrap().as_deref(), Some("outer.sqsh"));
        assert_eq!(
            choose_image(Some("new.sqsh"), None, Some("outer.sqsh")).unwrap().as_deref(),
            Some("new.sqsh")
        );
        assert_eq!(choose_image(None, Some("b.sqsh"), Some("outer")).unwrap().as_deref(), Some("b.sqsh"));
        assert_eq!(choose_image(Some("a"), Some("a"), None).unwrap().as_deref(), Some("a"));
        assert!(choose_image(Some("a"), Some("b"), None).is_err());
        assert_eq!(resolve_image("x.sqsh", Some(Path::new("/home/u"))), PathBuf::from("/home/u/x.sqsh"));
        assert_eq!(resolve_image("/abs.sqsh", Some(Path::new("/home/u"))), PathBuf::from("/abs.sqsh"));
    }

    #[test]
    fn holder_request_carries_the_step_and_the_user_options() {
        assert_eq!(holder_name(12, 0), "slurm-12.0");
        assert_eq!(holder_name(12, BATCH_STEP), "slurm-12.batch");
        let mut o = UserOpts::default();
        o.set(Opt::Env, Some("KEEP,A=b")).unwrap();
        o.set(Opt::Workdir, Some("/work")).unwrap();
        o.set(Opt::Writable, None).unwrap();
        o.set(Opt::NoMountHome, None).unwrap();
        let req = holder_request(Path::new("/i.sqsh"), &s(&["/var/spool/slurmd/pmix.1.0", "/l:/x:ro"]), &o)
            .unwrap();
        assert_eq!(req.image, PathBuf::from("/i.sqsh"));
        let binds: Vec<_> = req.binds.iter().map(|b| (b.src.clone(), b.dst.clone(), b.readonly)).collect();
        assert_eq!(
            binds,
            [
                ("/var/spool/slurmd/pmix.1.0".into(), "/var/spool/slurmd/pmix.1.0".into(), false),
                ("/l".into(), "/x".into(), true)
            ]
        );
        assert_eq!(req.env, [("A".to_string(), "b".to_string())]);
        assert_eq!(req.workdir, Some(PathBuf::from("/work")));
        assert!(req.writable_tmpfs && !req.mount_home && !req.cleanenv);
        assert!(holder_request(Path::new("/i"), &s(&["/a:rel"]), &UserOpts::default()).is_err());
        let plain = holder_request(Path::new("/i"), &[], &UserOpts::default()).unwrap();
        assert!(plain.mount_home && !plain.writable_tmpfs && plain.workdir.is_none());
    }

    #[test]
    fn pmix_dir() {
        let d = Some(PathBuf::from("/var/spool/slurmd/pmix.7.0"));
        assert_eq!(pmix_dir_in("/var/spool/slurmd/pmix.7.0/", 7, 0), d);
        assert_eq!(
            pmix_dir_in("/var/spool/slurmd/pmix.7.0/pmix_dstor_ds21_1/initial-pmix_shared-segment-0", 7, 0),
            d
        );
        assert_eq!(pmix_dir_in("/var/spool/slurmd/pmix.7.0", 7, 0), d);
        assert_eq!(pmix_dir_in("/var/spool/slurmd/pmix.7.01/x", 7, 0), None);
        assert_eq!(pmix_dir_in("/var/spool/slurmd/pmix.17.0/x", 7, 0), None);
        assert_eq!(pmix_dir_in("socket:[1234]", 7, 0), None);
    }

    #[test]
    fn scheduler_vars_are_kept() {
        assert!(task_owns("SLURM_PROCID"));
        assert!(task_owns("PMIX_RANK"));
        assert!(task_owns("SPANK_X") && task_owns("HOME") && task_owns("BERTH_CONTAINER_IMAGE"));
        assert!(!task_owns("PATH"));
        assert!(!task_owns("LD_LIBRARY_PATH"));
        assert!(!task_owns("FI_PROVIDER_PATH"), "injection sets it");
    }
}
