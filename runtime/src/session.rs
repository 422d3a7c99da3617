//! The runtime's entry point for front ends. The launcher, the Slurm plugin and berth-pbs
//! each turn what they were asked into a [`Request`] (or a holder [`Spec`]) and call here;
//! everything from opening the image to `execve` happens below this module:
//!
//! - [`prepare`]: open the image, probe the host, discover what to inject, make the plan;
//! - [`Prepared::run`]: run the request's action in a container of its own;
//! - [`run`]: the same for a standalone `berth exec/run`, sharing the container with the other
//!   MPI ranks of this node or with the previous identical run where that is allowed;
//! - [`run_in_image`]: run one command in an image (a builder's `%test`);
//! - [`prepare_holder`] and [`hold`]: set a container up for a job step and keep it;
//! - [`join`] / [`join_or_create`] and [`Joined::exec`]: enter a held container and start a
//!   program in it.
#![warn(missing_docs)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::config::{Config, MountMode};
use crate::container;
use crate::error::{Error, Result};
use crate::holder::{self, Lifetime, Spec};
use crate::image::{self, Image, RootFs};
use crate::inject;
use crate::plan::{self, HostFacts, Plan};
use crate::request::{Action, BindSpec, Request};
use crate::sys::process;

pub use crate::container::Joined;
pub use crate::sys::process::{exit_like, Ended};

/// A request made ready to run: its image opened, the host's facts read, the host's
/// libraries and devices to inject found, and the plan made.
pub struct Prepared {
    /// What was asked.
    pub request: Request,
    /// The opened image (for a holder root mounted, the directory it is mounted at).
    pub image: Image,
    /// The host's facts the plan was made from.
    pub host: HostFacts,
    /// Every mount, file and environment rule, in order (`--dry-run` prints it).
    pub plan: Plan,
}

/// Prepare `req` (see [`Prepared`]).
pub fn prepare(cfg: &Config, req: Request) -> Result<Prepared> {
    let img = image::open(&req.image)?;
    prepare_opened(cfg, req, img)
}

/// Prepare `req` for an image the caller opened (and checked) itself.
pub fn prepare_opened(cfg: &Config, mut req: Request, img: Image) -> Result<Prepared> {
    let host = HostFacts::probe()?;
    if let Some(dir) = &req.overlay {
        req.overlay = Some(crate::overlay::check_dir(dir, host.user.uid)?);
    }
    let injected = inject::discover_for_request(cfg, &req)?;
    let plan = plan::plan(&req, &img, cfg, &host, injected.as_ref())?;
    Ok(Prepared { request: req, image: img, host, plan })
}

impl Prepared {
    /// Run the request's action in a new container of its own; how the program ended.
    pub fn run(&self) -> Result<Ended> {
        container::run(&self.plan)
    }
}

/// Run `argv` in `image` in a container of its own, with `binds` besides the defaults, and
/// return how it ended: what an image builder's `%test` section needs, without the CLI.
pub fn run_in_image(cfg: &Config, image: &Path, argv: Vec<String>, binds: Vec<BindSpec>) -> Result<Ended> {
    let mut req = Request::new(image.to_path_buf(), Action::Exec(argv));
    req.binds = binds;
    prepare(cfg, req)?.run()
}

/// Prepare a holder's container. With `spec.user` (started by root) this does the root part
/// first, before anything the user controls is used: with mount_mode = "privileged" the
/// (vetted) image is mounted with the kernel driver in a private mount namespace, then the
/// process becomes the user for good; the container then binds root's read-only, nosuid,
/// nodev mount of the image.
pub fn prepare_holder(cfg: &Config, spec: &Spec) -> Result<Prepared> {
    let Some(uid) = spec.user else { return prepare(cfg, spec.request.clone()) };
    use crate::privileged;
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::request(
            "berth holder --user",
            "is for a root context (the scheduler's)",
            "run `berth holder` without --user as yourself",
        ));
    }
    let target = privileged::Target::lookup(uid)?;
    let mounted = if cfg.mount_mode == MountMode::Privileged {
        let (file, canonical) = privileged::open_allowed(&cfg.privileged, &spec.request.image, &target)?;
        // The headers are read from the file the user opened (its /proc/self/fd link reaches
        // that same open file, not a path), and the image keeps the name the kernel gives it.
        let mut img = image::open(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))?;
        img.path = canonical;
        let at = privileged::mount_image(&img, &file)?;
        Some((img, at))
    } else {
        None
    };
    privileged::become_user(&target)?;
    match mounted {
        Some((mut img, at)) => {
            img.root = RootFs::Directory { path: at };
            prepare_opened(cfg, spec.request.clone(), img)
        }
        None => prepare(cfg, spec.request.clone()),
    }
}

/// Hold the container of `prepared` as holder `spec.name` until it is stopped (`berth stop`,
/// the scheduler's end of step); `ready` gets the ready line once joiners may come.
pub fn hold(prepared: &Prepared, spec: &Spec, ready: Option<OwnedFd>) -> Result<i32> {
    holder::hold(
        &prepared.plan,
        prepared.request.cleanenv,
        &spec.name,
        ready,
        Lifetime::UntilStopped,
        spec.warm.as_deref(),
    )
}

/// Join the held container `name` of the calling user in this process (single-threaded).
pub fn join(cfg: &Config, name: &str) -> Result<Joined> {
    container::join_in_process(cfg, nix::unistd::getuid().as_raw(), name)
}

/// Join holder `name` if it runs on this node, else start it (detached, for `lifetime`) from
/// what `make` prepares, then join it. `make` runs only when the holder has to be created,
/// so joiners never read the image; `image` (absolute) must be the one a running holder has.
pub fn join_or_create(
    cfg: &Config,
    name: &str,
    image: &Path,
    make: impl FnOnce() -> Result<Prepared>,
    lifetime: Lifetime,
) -> Result<Joined> {
    let uid = nix::unistd::getuid().as_raw();
    let make = || make().map(|p| (p.request, p.plan));
    holder::join_or_create(cfg, uid, name, image, make, lifetime)
}

impl Joined {
    /// Start `argv` in this joined container: the task's environment (its own host variables
    /// filtered like the holder's, the image's, the holder's overrides) and working directory,
    /// then change to it, harden the process (`no_new_privs`) and exec. Returns only on failure.
    pub fn exec(&self, cfg: &Config, host: &HostFacts, argv: &[String]) -> Error {
        match self.program(cfg, host, argv) {
            Ok(program) => program.exec(),
            Err(e) => e,
        }
    }

    /// `argv` with this container's environment for the task and its working directory.
    fn program(&self, cfg: &Config, host: &HostFacts, argv: &[String]) -> Result<process::Program> {
        let workdir = self.workdir(host.cwd.as_deref())?;
        Ok(process::Program::new(&workdir, argv, self.env(cfg, host).vars()))
    }
}

/// Run `req` standalone (`berth exec/run/shell`) and return how its program ended.
///
/// With `share`, a rank of an MPI launcher joins (or creates) the one container of that
/// launcher's ranks on this node (one user namespace per rank breaks shared-memory transports
/// between them), and other runs use a container kept warm for `keep_warm_seconds` by the
/// previous identical run. A rank's program replaces this process (Ok is never returned then).
pub fn run(cfg: &Config, req: Request, share: bool) -> Result<Ended> {
    if share && !matches!(req.action, Action::Shell) {
        if let Some(launcher) = mpi_launcher() {
            return run_shared_rank(cfg, req, launcher);
        }
    }
    // A throwaway writable layer is this run's alone; a kept one (--overlay) must not stay
    // mounted after the run, where a later run with other options would mount the same
    // DIR a second time; an interactive shell is long anyway.
    if share
        && cfg.keep_warm_seconds > 0
        && !req.writable_tmpfs
        && req.overlay.is_none()
        && !matches!(req.action, Action::Shell)
    {
        return run_warm(cfg, req);
    }
    prepare(cfg, req)?.run()
}

/// Run in a container kept warm: the previous identical run's if it is still mounted (same
/// image file, options, directory, site configuration and host libraries), else a new one
/// that stays `keep_warm_seconds` after its last process ends. The result is the same as a
/// fresh container's: the program runs as our child, its leftovers are killed when it ends.
fn run_warm(cfg: &Config, req: Request) -> Result<Ended> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let img = image::open(&req.image)?;
    let host = HostFacts::probe()?;
    let image = img.path.clone();
    let stat =
        |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec())).ok();
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
    for var in [
        "SLURM_STEP_GPUS",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_MPS_PIPE_DIRECTORY",
        "ROCR_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
    ] {
        std::env::var_os(var).hash(&mut h);
    }
    // What the plan before discovery does not show: the injection asked for, --cleanenv.
    format!("{:?} {:?} {:?}", req.mpi, req.nvidia, req.rocm).hash(&mut h);
    (req.cleanenv, identity, env!("CARGO_PKG_VERSION")).hash(&mut h);
    // One warm container per PID namespace: a holder is checked through its pid, which means
    // something only in its own namespace (a job with a PID namespace of its own gets its own).
    crate::sys::proc::ns_inode("self", "pid").hash(&mut h);
    let name = format!("warm-{:016x}", h.finish());
    let keep = std::time::Duration::from_secs(cfg.keep_warm_seconds);
    let action = req.action.clone();
    let make = || {
        let injected = inject::discover_for_request(cfg, &req)?;
        let plan = plan::plan(&req, &img, cfg, &host, injected.as_ref())?;
        Ok(Prepared { plan, request: req.clone(), image: img.clone(), host: host.clone() })
    };
    let joined = join_or_create(cfg, &name, &image, make, Lifetime::UntilIdle(keep))?;
    let argv = argv_in_joined(action)?;
    let program = match joined.program(cfg, &host, &argv) {
        Ok(program) => program,
        Err(e) => {
            eprintln!("berth: {e}");
            return Ok(Ended::Exited(e.exit_code()));
        }
    };
    process::spawn_and_wait(&program, &[], |_, _| {})
}

/// The process that started this MPI rank (mpirun or orted, hydra's proxy, slurmstepd), if
/// this is one. Ranks it starts on this node share one container.
fn mpi_launcher() -> Option<i32> {
    // Open MPI's orted (OMPI_COMM_WORLD_RANK), PMIx launchers (PMIX_RANK), MPICH's hydra
    // (PMI_RANK). Sharing matters beyond speed: UCX's shared memory opens /proc/PID/fd of the
    // peer rank, which fails between two separate user namespaces.
    const RANK_VARS: &[&str] = &["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];
    RANK_VARS.iter().any(|v| std::env::var_os(v).is_some()).then(|| nix::unistd::getppid().as_raw())
}

/// Join (or create, for the first rank) the container shared by the ranks of `launcher` that
/// asked for the same image and options; it ends with the launcher. Execs the rank's program.
fn run_shared_rank(cfg: &Config, mut req: Request, launcher: i32) -> Result<Ended> {
    use std::hash::{Hash, Hasher};
    req.image = std::fs::canonicalize(&req.image)
        .map_err(|e| Error::image_io(&req.image, "cannot open the image", e))?;
    let started = crate::sys::proc::start_time(launcher).map(|t| t.to_string()).unwrap_or_default();
    let action = std::mem::replace(&mut req.action, Action::Shell);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&req).unwrap_or_default().hash(&mut h);
    let name = format!("mpi-{launcher}-{started}-{:016x}", h.finish());
    let image = req.image.clone();
    let mut planned = req.clone();
    planned.action = action.clone();
    // Read before joining: inside, the current directory is the container's root.
    let host = HostFacts::probe()?;
    let make = || prepare(cfg, planned);
    let joined = join_or_create(cfg, &name, &image, make, Lifetime::WhileRunning(launcher))?;
    let argv = argv_in_joined(action)?;
    Err(joined.exec(cfg, &host, &argv))
}

/// The command an action runs in a container this process joined (cwd `/` of it).
fn argv_in_joined(action: Action) -> Result<Vec<String>> {
    let runscript = Path::new(crate::entrypoint::RUNSCRIPT);
    Ok(match action {
        Action::Exec(argv) => argv,
        Action::Run(args) if runscript.exists() => {
            let mut v = vec!["/bin/sh".to_string(), runscript.display().to_string()];
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
