//! What each SPANK callback does, in plain Rust. See the crate docs for the order.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::holder::{self, Running};
use crate::settings::{self, BatchMode, OciConf, Opt, Site, UserOpts, BATCH_STEP, EXTERN_STEP};
use crate::sys::{self, Context, Level, Spank};
use berth_runtime::holder::{Creds, Exec};

/// Where the client keeps the chosen image for the step; it travels to slurmstepd in the job
/// environment and down to nested sruns.
pub const IMAGE_VAR: &str = "BERTH_CONTAINER_IMAGE";
/// Where srun/sbatch was started: the step's working directory (Slurm gives SPANK no item for
/// it), which the holder binds into the container like `berth exec` binds its current directory.
pub const CLIENT_CWD_VAR: &str = "BERTH_CLIENT_CWD";
/// Slurm's own variable for `--container` (its OCI bundle option).
pub const SLURM_CONTAINER: &str = "SLURM_CONTAINER";

/// Per-process state: srun/sbatch, or one slurmstepd (whose task children inherit a copy).
#[derive(Default)]
struct State {
    site: Site,
    opts: UserOpts,
    /// Client: the image the enclosing job passed down (taken out of the env in init).
    inherited: Option<String>,
    /// slurmstepd: this step's image, when the step runs in a container.
    image: Option<PathBuf>,
    /// slurmstepd: the running holder.
    holder: Option<Running>,
    /// slurmstepd: a failure for the user, reported by every task of the step.
    failure: Option<String>,
    /// slurmstepd: the step's named container (`--container-name`), locked until the end of
    /// the step.
    named: Option<berth_runtime::named::Opened>,
    /// slurmstepd: the running holder of another step whose named container this step's
    /// tasks join (`--container-name` while that step runs). Never stopped by this step.
    joined: Option<Running>,
    /// slurmstepd: held while this step's tasks run in its named container: until then a
    /// step that asks for the name joins it, afterwards it waits for the container to stop.
    running_mark: Option<berth_runtime::named::RunningMark>,
    /// slurmstepd: how many of this node's tasks have ended (`--container-save` waits for all).
    tasks_ended: u32,
    /// slurmstepd: Slurm runs this step's tasks through berth's oci.conf (the step has
    /// Slurm's `--container`, and the node has berth's oci.conf).
    oci_tasks: bool,
    /// slurmstepd, with `oci_tasks`: the step's OCI spool directory (oci.conf's
    /// MountSpoolDir), bound into the container: the tasks' environment files and PMIx's.
    oci_step_dir: Option<PathBuf>,
}

fn state() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn log_error(msg: &str) {
    crate::logging::emit(Level::Error, &format!("berth: {msg}"));
}
fn log_info(msg: &str) {
    crate::logging::emit(Level::Info, &format!("berth: {msg}"));
}
fn log_verbose(msg: &str) {
    crate::logging::emit(Level::Verbose, &format!("berth: {msg}"));
}

/// In slurmstepd: log `msg` and keep it for `task_init` to report (true). Elsewhere: false.
pub(crate) fn defer_in_slurmstepd(msg: &str) -> bool {
    if sys::context() != Context::Remote {
        return false;
    }
    log_error(msg);
    state().failure.get_or_insert_with(|| msg.to_string());
    true
}

fn client(ctx: Context) -> bool {
    matches!(ctx, Context::Local | Context::Allocator)
}

/// `slurm_spank_init`: site settings, options, and (client) the inherited image.
pub fn init(sp: &Spank, args: &[String]) -> Result<(), String> {
    let ctx = sys::context();
    if !client(ctx) && ctx != Context::Remote {
        return Ok(());
    }
    crate::logging::init();
    let mut st = state();
    match Site::parse(args) {
        Ok(site) => st.site = site,
        // A broken plugstack.conf fails srun/sbatch at once; in slurmstepd it must not drain
        // the node, so it fails only the steps that ask for a container.
        Err(e) if client(ctx) => return Err(e),
        Err(e) => {
            log_error(&e);
            st.failure = Some(format!("the site's berth configuration is broken: {e}"));
        }
    }
    for (opt, name, arg, usage) in Opt::ALL {
        if let Err(e) = sp.register_option(name, arg, usage, opt as i32) {
            log_error(&e);
        }
    }
    if client(ctx) {
        // Save and unset, so that this command's own --container can set SLURM_CONTAINER again
        // (Slurm sets it only when unset) and we can tell the two apart in init_post_opt.
        let inherited = std::env::var(IMAGE_VAR).ok().or_else(|| std::env::var(SLURM_CONTAINER).ok());
        st.inherited = inherited.filter(|s| !s.is_empty());
        std::env::remove_var(SLURM_CONTAINER);
    }
    Ok(())
}

/// Option callback (all contexts). Slurm calls remote callbacks twice: setting is idempotent.
pub fn on_option(val: i32, arg: Option<&str>, _remote: bool) -> Result<(), String> {
    // In slurmstepd an error here (already validated by srun/sbatch) fails the step, not the
    // node: see `guard`.
    let opt = Opt::from_val(val).ok_or_else(|| format!("unknown option value {val}"))?;
    state().opts.set(opt, arg)
}

/// `slurm_spank_init_post_opt`: client: choose the image; slurmstepd: decide whether this step
/// runs in a container.
pub fn init_post_opt(sp: &Spank, _args: &[String]) -> Result<(), String> {
    match sys::context() {
        Context::Local | Context::Allocator => choose_client_image(),
        Context::Remote => choose_step_image(sp),
        _ => Ok(()),
    }
}

fn choose_client_image() -> Result<(), String> {
    let st = state();
    // Refused here, before the job or step exists: srun/sbatch/salloc fail with the reason.
    if let Some(why) = st.opts.unsupported() {
        return Err(why);
    }
    let cli = std::env::var(SLURM_CONTAINER).ok();
    if sys::context() == Context::Local && cli.as_deref().is_some_and(|c| !c.is_empty()) {
        let (oci_path, oci) = st.site.oci(std::env::var("SLURM_CONF").ok().as_deref());
        if let Some(why) = settings::srun_container_refusal(sys::SLURM_VERSION_NUMBER, &oci, &oci_path) {
            return Err(why);
        }
    }
    let Some(image) =
        settings::choose_image(cli.as_deref(), st.opts.image.as_deref(), st.inherited.as_deref())?
    else {
        return Ok(());
    };
    let cwd = std::env::current_dir().ok();
    let image = settings::resolve_image(&image, cwd.as_deref());
    log_verbose(&format!("image {}", image.display()));
    std::env::set_var(IMAGE_VAR, &image);
    if let Some(dir) = &cwd {
        std::env::set_var(CLIENT_CWD_VAR, dir);
    }
    Ok(())
}

fn choose_step_image(sp: &Spank) -> Result<(), String> {
    let mut st = state();
    let slurm_container = sp.getenv(SLURM_CONTAINER).filter(|s| !s.is_empty());
    let (oci_path, oci) = st.site.oci(std::env::var("SLURM_CONF").ok().as_deref());
    // Slurm runs the tasks of a step with its --container through oci.conf: berth's runs
    // them through its runner, in the container or (a batch script on the host) not.
    st.oci_tasks = matches!(oci, OciConf::Berth(_)) && slurm_container.is_some();
    if let (true, OciConf::Berth(pattern)) = (st.oci_tasks, &oci) {
        match oci_step_dir(sp, pattern) {
            Ok(dir) => st.oci_step_dir = Some(dir),
            Err(e) => {
                st.failure.get_or_insert(e);
            }
        }
    }
    let chosen =
        sp.getenv(IMAGE_VAR).filter(|s| !s.is_empty()).or_else(|| st.opts.image.clone()).or(slurm_container);
    // Tasks (and sruns inside the job) see the resolved BERTH_CONTAINER_IMAGE, never Slurm's raw value.
    sp.unsetenv(SLURM_CONTAINER);
    let step = sp.step_id().unwrap_or(0);
    let batch_mode = st.opts.batch.unwrap_or(st.site.batch);
    let image = match chosen {
        Some(image) => {
            let submit_dir = sp.getenv("SLURM_SUBMIT_DIR").map(PathBuf::from);
            let image = settings::resolve_image(&image, submit_dir.as_deref());
            let _ = sp.setenv(IMAGE_VAR, &image.display().to_string());
            image
        }
        None if st.opts.name.is_none() => return Ok(()),
        // A step with --container-name and no image runs in the named container, whose image
        // user_init reads as the user (root never reads the user's state directory).
        None => PathBuf::new(),
    };
    if step == EXTERN_STEP || (step == BATCH_STEP && batch_mode == BatchMode::Host) {
        return Ok(());
    }
    if let Some(why) = st.opts.unsupported() {
        st.failure.get_or_insert(why);
    }
    if oci == OciConf::Other {
        st.failure.get_or_insert(format!(
            "this node is set up for Slurm's own OCI containers with another runtime ({} is not \
             berth's), which owns --container; berth does not run here (image {}); ask the administrator",
            oci_path.display(),
            image.display()
        ));
    }
    st.image = Some(image);
    // slurmstepd is still root here (user_init runs with the user's euid): make the user's
    // state directory that no other user can occupy first. Failing that, berth falls back to
    // /tmp/berth-<uid>, so this only logs.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && site_config(&st).is_ok_and(|c| c.state_dir.is_empty()) {
        if let (Some(uid), Some(gid)) = (sp.job_uid(), sp.job_gid()) {
            if let Err(e) = berth_runtime::config::create_user_state_dir(uid, gid) {
                log_error(&e.to_string());
            }
        }
    }
    Ok(())
}

/// `slurm_spank_user_init` (slurmstepd, once per step and node): start the holder.
/// Never returns an error for a user mistake: that would drain the node. The failure is
/// kept and reported by every task in `task_init`.
pub fn user_init(sp: &Spank, _args: &[String]) -> Result<(), String> {
    if sys::context() != Context::Remote {
        return Ok(());
    }
    let mut st = state();
    let Some(asked) = st.image.clone() else { return Ok(()) };
    if st.failure.is_some() {
        return Ok(());
    }
    let image = match open_named(sp, &mut st, &asked) {
        Ok(Named::Own(image)) => image,
        Ok(Named::Join(h)) => {
            log_info(&format!(
                "--container-name: joining the running container of holder {} (pid {})",
                h.name, h.pid
            ));
            st.joined = Some(h);
            return Ok(());
        }
        Err(e) => {
            log_info(&format!("named container: {e}"));
            st.failure = Some(e);
            return Ok(());
        }
    };
    let started = start_holder(sp, &st, &image);
    // A named container's first step records its image once the container runs; one that
    // failed leaves nothing behind.
    let started = match (started, st.named.take()) {
        (Ok(h), Some(mut named)) if named.image.is_none() => match named.record_image(&image) {
            Ok(()) => {
                st.named = Some(named);
                Ok(h)
            }
            Err(e) => {
                st.named = Some(named);
                st.holder = Some(h);
                Err(e.to_string())
            }
        },
        (Err(e), Some(named)) if named.created => {
            named.discard();
            Err(e)
        }
        (r, named) => {
            st.named = named;
            r
        }
    };
    match started {
        Ok(h) => {
            if let Some(named) = &st.named {
                match named.mark_running() {
                    Ok(mark) => st.running_mark = Some(mark),
                    // Then no other step joins it: they wait for this one, or fail with the reason.
                    Err(e) => log_error(&format!("named container {}: {e}", named.dir.display())),
                }
            }
            log_info(&format!(
                "container {} ready (holder pid {}, image {})",
                h.name,
                h.pid,
                image.display()
            ));
            st.holder = Some(h);
        }
        Err(e) => {
            log_info(&format!("container for {} failed: {e}", image.display()));
            st.failure = Some(e);
        }
    }
    Ok(())
}

/// The step's OCI spool directory under berth's oci.conf, whose base (the part of
/// MountSpoolDir before its first replacement, `/run/berth-oci`) must be root's and writable by
/// nobody else: slurmstepd makes the directories below it for the step's user, and keeps any
/// that exist, so a base a user could write would let that user make another's first.
fn oci_step_dir(sp: &Spank, pattern: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let (job, step, uid) = (
        sp.job_id().ok_or("no job id")?,
        sp.step_id().ok_or("no step id")?,
        sp.job_uid().ok_or("no job uid")?,
    );
    let user = sp.getenv("SLURM_JOB_USER").or_else(|| sp.getenv("USER")).unwrap_or_default();
    let dir = settings::expand_step_dir(pattern, uid, &user, job, step)
        .ok_or_else(|| format!("oci.conf: MountSpoolDir={pattern}: a replacement berth cannot make"))?;
    let base: PathBuf = Path::new(pattern)
        .components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains('%'))
        .collect();
    let unsafe_base = |why: String| {
        format!(
            "the node's OCI spool base {} {why}; ask the administrator (berth-slurm's tmpfiles.d makes it \
             root's, mode 0755)",
            base.display()
        )
    };
    let meta =
        std::fs::symlink_metadata(&base).map_err(|e| unsafe_base(format!("cannot be checked: {e}")))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(unsafe_base(format!(
            "is not a directory of root's that only root may write (owner uid {}, mode {:o})",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(dir)
}

/// How a step gets its container.
enum Named {
    /// Its own holder runs `image` (with `--container-name`: the named container is opened
    /// and locked in `State::named`).
    Own(PathBuf),
    /// Its tasks join another step's running holder (`--container-name` of a running container).
    Join(Running),
}

/// With `--container-name`: find the named container (as the user: slurmstepd's euid here)
/// and decide by pyxis' rules (`settings::named_plan`): join the holder of the step that runs
/// it, or open and lock it for this step's own holder and return the image that holder runs.
/// Without: the image asked for (`asked`; empty when the step named none).
fn open_named(sp: &Spank, st: &mut State, asked: &Path) -> Result<Named, String> {
    use berth_runtime::named::{self, OpenError};
    use settings::{Found, NamedPlan};
    let Some((name, flag)) = st.opts.name.clone() else { return Ok(Named::Own(asked.to_path_buf())) };
    let (job, uid) = (sp.job_id().ok_or("no job id")?, sp.job_uid().ok_or("no job uid")?);
    let cfg = site_config(st)?;
    let scope = st.site.scope;
    let dir = named::dir(&cfg, uid, scope, job, &name);
    let asked = (!asked.as_os_str().is_empty()).then_some(asked);
    let plan = |found| settings::named_plan(&name, &flag, scope, found, asked);
    // A missing container is made only when the flags allow it: looked up before anything is
    // created.
    if !dir.exists() {
        plan(Found::Missing)?;
    }
    // The step that has the container locks it from before its holder starts until after the
    // holder is gone: while it is locked and no holder has it mounted, that step is starting
    // or stopping, which takes at most the time a holder may take to get ready.
    let deadline = std::time::Instant::now() + st.site.timeout;
    loop {
        match named::open(&cfg, uid, &dir, std::time::Duration::ZERO) {
            Ok(opened) => {
                let found = match &opened.image {
                    Some(image) => Found::Stopped { image },
                    None => Found::Missing,
                };
                match plan(found) {
                    Ok(NamedPlan::Reuse(image) | NamedPlan::Create(image)) => {
                        // Its writable layer where the site keeps layers (the job's node-local
                        // scratch by default, never /run), within the user's share of it.
                        let mut opened = opened;
                        let tmpdir = sp.getenv("TMPDIR").map(PathBuf::from);
                        let base = named::layers_base(&cfg, uid, scope, tmpdir.as_deref());
                        let layer = named::check_limit(&cfg, uid)
                            .and_then(|()| opened.make_layer(&base, uid).map(drop));
                        if let Err(e) = layer {
                            if opened.created {
                                opened.discard();
                            }
                            return Err(format!("--container-name={name}: {e}"));
                        }
                        st.named = Some(opened);
                        return Ok(Named::Own(image));
                    }
                    Ok(NamedPlan::Join) => return Err("internal error: joining a stopped container".into()),
                    Err(e) => {
                        if opened.created {
                            opened.discard();
                        }
                        return Err(e);
                    }
                }
            }
            Err(OpenError::InUse) => {
                // Joined only while the tasks of the step that has it run: once they ended,
                // that step is stopping the container.
                // Its holder is the one whose overlay is the container's writable layer
                // (recorded by the step that made it, wherever the site keeps layers).
                let holding = || {
                    let layer = named::recorded_layer(&dir)?;
                    named::tasks_running(&dir).then(|| berth_runtime::holder::find_holding(&cfg, uid, &layer))
                };
                if let Some(h) = holding().flatten() {
                    // The container's image as its first step recorded it (that step may
                    // not have recorded it yet: then as its holder runs it).
                    let recorded = named::recorded_image(&dir).unwrap_or_else(|| h.image.clone());
                    let step = h.name.strip_prefix("slurm-").unwrap_or(&h.name).to_string();
                    return match plan(Found::Running { image: &recorded, step: &step })? {
                        NamedPlan::Join => Ok(Named::Join(Running {
                            pid: h.pid,
                            start_time: Some(h.start_time),
                            name: h.name,
                            uid,
                            mnt_ns: Some(h.mnt_ns),
                        })),
                        _ => Err("internal error: a running container not joined".into()),
                    };
                }
                if std::time::Instant::now() >= deadline {
                    return Err(format!(
                        "--container-name={name}: the container is in use by another step on this node \
                         that has been starting or stopping for {}s; try again, or use another name",
                        st.site.timeout.as_secs()
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(OpenError::Other(e)) => return Err(e.to_string()),
        }
    }
}

fn start_holder(sp: &Spank, st: &State, image: &Path) -> Result<Running, String> {
    // Opened here as the user (slurmstepd's euid is the user in user_init), non-blocking, for
    // a clear message early. Only a message: the holder opens the image itself (as the user,
    // also in the privileged mode) and checks what it opened. A registry reference is no file
    // yet: the holder converts it.
    let opened = (!berth_runtime::scheduler::is_registry_image(image)).then(|| {
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(image)
    });
    if let Some(Err(e)) = opened {
        return Err(format!("image {}: {e}", image.display()));
    }
    let (job, step) = (sp.job_id().ok_or("no job id")?, sp.step_id().ok_or("no step id")?);
    let uid = sp.job_uid().ok_or("no job uid")?;
    let gid = sp.job_gid().ok_or("no job gid")?;

    // Slurm's own per-step directories the tasks need inside: the PMIx server's, and the job's tmp.
    let mut binds = Vec::new();
    // (The node's TmpFS, where PMIx puts the job's spmix_appdir, is usually /tmp, which berth
    // binds by default; sites with another TmpFS add it with bind= in plugstack.conf.)
    // With berth's oci.conf (Slurm 23.02+), the step's OCI spool directory holds PMIx's
    // directory and the environment file slurmstepd writes for each task from inside the
    // container: bound whole, read-write, at the same path.
    if let Some(d) = &st.oci_step_dir {
        binds.push(d.display().to_string());
    }
    if let Some(d) =
        pmix_server_dir(job, step).filter(|d| st.oci_step_dir.as_ref().is_none_or(|o| !d.starts_with(o)))
    {
        binds.push(d.display().to_string());
    }
    // The job's TMPDIR when it is not /tmp (a per-job tmp from a site prolog, for example).
    // Bound as the user inside the user namespace, so the kernel checks the user's access.
    if let Some(t) = sp.getenv("TMPDIR").filter(|t| t.starts_with('/') && t.trim_end_matches('/') != "/tmp") {
        if Path::new(&t).is_dir() && !t.contains([':', ',']) {
            binds.push(t.trim_end_matches('/').to_string());
        }
    }
    binds.extend(st.site.binds.iter().cloned());
    binds.extend(st.opts.mounts.iter().cloned());

    let mut request = settings::holder_request(image, &binds, &st.opts)?;
    // A named container's writable layer is its kept upper directory.
    if let Some(named) = &st.named {
        request.writable_tmpfs = false;
        request.overlay = Some(named.layer.clone().unwrap_or_else(|| named.dir.clone()));
    }
    let spec = berth_runtime::holder::Spec {
        name: settings::holder_name(job, step),
        request,
        // Not for the batch step: its "program" is the script, which is read once anyway.
        warm: (step != BATCH_STEP).then(|| sp.job_argv0()).flatten().filter(|p| !p.is_empty()),
        // Set by holder::spawn when the holder starts as root.
        user: None,
    };
    // The step's GPUs too: berth binds the NVIDIA stack when the step has GPUs (and only those);
    // and where the job's Slurm configuration is, for the Slurm clients a site may lend
    // (inject.scheduler_clients; the holder reads it as the user).
    let env = [
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "TMPDIR",
        "SLURM_JOB_ID",
        "SLURM_STEP_ID",
        "SLURM_STEP_GPUS",
        "SLURM_JOB_GPUS",
        "CUDA_VISIBLE_DEVICES",
        "SLURM_CONF",
    ]
    .iter()
    .filter_map(|k| sp.getenv(k).map(|v| (k.to_string(), v)))
    .collect();
    // The step's directory, checked as the user (our euid here); else the submit directory.
    let workdir = [sp.getenv(CLIENT_CWD_VAR), sp.getenv("SLURM_SUBMIT_DIR")]
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .find(|d| d.is_absolute() && std::fs::read_dir(d).is_ok());
    holder::start(
        &spec,
        Exec {
            workdir: workdir.as_deref(),
            berth: &st.site.berth,
            config: st.site.config.as_deref(),
            creds: Creds { uid, gid, groups: sp.supplementary_gids() },
            env,
            // A registry image is converted first, by one node while the others wait for it:
            // minutes for a large one, beyond the time a container takes to set up.
            timeout: if berth_runtime::scheduler::is_registry_image(&spec.request.image) {
                st.site.timeout + std::time::Duration::from_secs(30 * 60)
            } else {
                st.site.timeout
            },
            // The kernel mount needs root: the holder starts as root and becomes the user
            // itself once the image is mounted (berth's privileged module).
            as_root: site_config(st)?.mount_mode == berth_runtime::config::MountMode::Privileged,
        },
    )
}

/// `slurm_spank_task_init` (each task, as the user, just before exec): enter the container,
/// or report why the step cannot run.
pub fn task_init(sp: &Spank, _args: &[String]) -> Result<(), String> {
    if sys::context() != Context::Remote {
        return Ok(());
    }
    let st = state();
    if st.oci_tasks {
        // Opened on the host, before the task enters the container, where the runner is not.
        if let Err(e) = hand_oci_runner(&st.site.oci_run) {
            eprintln!("berth: error: {e}");
            return Err(String::new());
        }
    }
    if st.image.is_none() {
        return Ok(());
    }
    let result = match (&st.failure, &st.holder, &st.joined) {
        (Some(f), ..) => Err(f.clone()),
        (None, Some(h), _) => enter(sp, &st, h),
        (None, None, Some(h)) => join_running(sp, &st, h),
        (None, None, None) => Err("internal error: no container for this step".into()),
    };
    if let Err(e) = &result {
        // The task's stderr is the user's terminal (srun) or the job's error file (sbatch).
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        eprintln!("berth: error: {e} (on {})", host.trim());
        return Err(String::new()); // already reported; Slurm adds its own "task_init() failed"
    }
    result
}

/// Slurm 23.02 and later with berth's oci.conf: after this task_init, slurmstepd does not exec
/// the task's program but runs oci.conf's RunTimeRun (`exec $BERTH_OCI_RUN %e %@`) with
/// `/bin/sh -c` in its own environment, the task's being in the environment file `%e`. The
/// runner that execs the program with that file is a static program on the host: it is
/// opened here, before the task enters the container, and handed to RunTimeRun as
/// `/proc/self/fd/N`, which resolves in any mount namespace; the runner closes the descriptor.
/// The variables are set in this process's own environment, the one RunTimeRun's shell gets.
fn hand_oci_runner(runner: &Path) -> Result<(), String> {
    use std::os::fd::IntoRawFd;
    let file = std::fs::File::open(runner).map_err(|e| {
        format!(
            "Slurm runs --container tasks through berth's oci.conf here, but its task runner {}: {e}; \
             ask the administrator (berth-slurm package, plugstack.conf oci_run=)",
            runner.display()
        )
    })?;
    let fd = file.into_raw_fd();
    // The runner must survive RunTimeRun's exec of /bin/sh and its exec of the runner.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
        .map_err(|e| format!("task runner {}: {e}", runner.display()))?;
    std::env::set_var(settings::OCI_RUN_VAR, format!("/proc/self/fd/{fd}"));
    std::env::set_var(settings::OCI_FD_VAR, fd.to_string());
    Ok(())
}

/// `slurm_spank_task_exit` (slurmstepd, root, as each task ends, before srun hears of it):
/// with `--container-save`, once the last task on the step's first node has ended, save the
/// container there. srun returns only afterwards, so the file is in place when it does.
pub fn task_exit(sp: &Spank, _args: &[String]) -> Result<(), String> {
    if sys::context() != Context::Remote {
        return Ok(());
    }
    let mut st = state();
    // The container this step runs in: its own, or the one it joined.
    let Some(h) = st.holder.as_ref().or(st.joined.as_ref()).cloned() else { return Ok(()) };
    st.tasks_ended += 1;
    if Some(st.tasks_ended) != sp.local_task_count() {
        return Ok(());
    }
    // This node's tasks have ended: the container is stopping, no step joins it any more.
    st.running_mark = None;
    let Some(save) = st.opts.save.clone() else { return Ok(()) };
    if sp.node_id() != Some(0) {
        return Ok(());
    }
    let submit_dir = sp.getenv("SLURM_SUBMIT_DIR").map(PathBuf::from);
    let dest = settings::resolve_image(&save, submit_dir.as_deref());
    let saved = match (sp.job_uid(), sp.job_gid()) {
        (Some(uid), Some(gid)) => holder::save_root(&h, uid, gid, sp.supplementary_gids(), &dest),
        _ => Err("no job uid".into()),
    };
    match saved {
        Ok(()) => log_info(&format!("container {} saved to {}", h.name, dest.display())),
        // The tasks have ended: Slurm's log (and srun, at its verbosity) has the reason.
        Err(e) => log_error(&format!("--container-save={}: {e}", dest.display())),
    }
    Ok(())
}

/// The site's berth.toml (plugstack.conf's config=, else berth's default).
fn site_config(st: &State) -> Result<berth_runtime::config::Config, String> {
    match &st.site.config {
        Some(p) => berth_runtime::config::Config::load_file(p),
        None => berth_runtime::config::Config::load_for_job().map(|(c, _)| c),
    }
    .map_err(|e| e.to_string())
}

fn enter(sp: &Spank, st: &State, h: &Running) -> Result<(), String> {
    let cfg = site_config(st)?;
    let cwd = std::env::current_dir().ok();
    // The task is the user for good here: the holder's records are its own.
    let joined = berth_runtime::session::join(&cfg, &h.name).map_err(|e| e.to_string())?;
    let user = task_user(sp, h)?;

    let keep = st.opts.kept_env_names();
    for (k, v) in joined.container_env(&cfg, &user).vars() {
        if settings::task_owns(k) || keep.contains(&k.as_str()) {
            continue;
        }
        sp.setenv(k, v)?;
    }
    for kv in st.opts.env.iter().filter_map(|e| e.split_once('=')) {
        sp.setenv(kv.0, kv.1)?;
    }
    // Working directory: --container-workdir (the holder's, required), else where the task
    // was, else $HOME, else /.
    let dir = joined.workdir(cwd.as_deref()).map_err(|e| e.to_string())?;
    std::env::set_current_dir(&dir).map_err(|e| format!("chdir {}: {e}", dir.display()))?;
    let _ = sp.setenv("PWD", &std::env::current_dir().unwrap_or(dir).display().to_string());
    if st.opts.entrypoint == Some(true) {
        through_runscript(sp)?;
    }
    Ok(())
}

/// A task of a step that joins another step's running named container: enter it like the
/// step's own (`enter`), then check that the holder found in `user_init` still runs: a holder
/// that ended meanwhile (its step ended) leaves a namespace whose image is no longer served,
/// and the task must not run there. The options only the container's own step decides are
/// named once per node as ignored; `--container-workdir` applies per task.
fn join_running(sp: &Spank, st: &State, h: &Running) -> Result<(), String> {
    let name = st.opts.name.as_ref().map_or("", |n| n.0.as_str());
    let ignored = settings::ignored_when_joining(&st.opts);
    if !ignored.is_empty() && sp.getenv("SLURM_LOCALID").is_none_or(|id| id == "0") {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        eprintln!(
            "berth: --container-name={name}: joined the running container of {} (on {}); ignoring {}: \
             the step that runs a container set it up, and a running container keeps its mounts",
            owner_step(h),
            host.trim(),
            ignored.join(", ")
        );
    }
    let entered = enter(sp, st, h);
    if berth_runtime::holder::start_time(h.pid) != h.start_time {
        return Err(format!(
            "--container-name={name}: {}, which ran the container, ended while this step joined it",
            owner_step(h)
        ));
    }
    entered?;
    if let Some(dir) = &st.opts.workdir {
        std::env::set_current_dir(dir).map_err(|e| format!("--container-workdir={dir}: {e}"))?;
        let _ = sp.setenv("PWD", dir);
    }
    Ok(())
}

/// "step JOB.STEP" of a Slurm holder's name, for messages.
fn owner_step(h: &Running) -> String {
    match h.name.strip_prefix("slurm-") {
        Some(step) => format!("step {step}"),
        None => format!("holder {}", h.name),
    }
}

/// `--container-entrypoint`: the task runs the image's runscript (berth's entrypoint, like
/// `berth run`) with its command as the arguments. Slurm's argv cannot grow, so argv[0]
/// becomes the container's entrypoint launcher (a read-only file every berth container has)
/// and the program travels in a variable the launcher removes again; the task's root is
/// already the container's, where both are looked for.
fn through_runscript(sp: &Spank) -> Result<(), String> {
    use berth_runtime::entrypoint::{LAUNCHER, PROGRAM_VAR, RUNSCRIPT};
    if !Path::new(RUNSCRIPT).is_file() {
        return Err(format!(
            "--container-entrypoint: the image has no runscript ({RUNSCRIPT}) to run the command with; \
             drop --container-entrypoint to run the command directly"
        ));
    }
    if !Path::new(LAUNCHER).is_file() {
        // A container set up by an older berth still running on this node, or a bind over
        // /.berth that hides it.
        return Err(format!(
            "--container-entrypoint: this container has no {LAUNCHER} (set up by an older berth, or a \
             bind covers /.berth); start it anew without such a bind, or drop --container-entrypoint"
        ));
    }
    let program = sp.job_argv0().ok_or("--container-entrypoint: the task has no program")?;
    sp.setenv(PROGRAM_VAR, &program).map_err(|e| format!("--container-entrypoint: {e}"))?;
    sp.replace_argv0(LAUNCHER).map_err(|e| format!("--container-entrypoint: {e}"))?;
    Ok(())
}

/// Who the task runs as, from what Slurm already put in its environment: looking the user up
/// again (NSS) from inside the container cost each task milliseconds. Falls back to NSS.
fn task_user(sp: &Spank, h: &Running) -> Result<berth_runtime::plan::UserInfo, String> {
    match (sp.getenv("USER").filter(|u| !u.is_empty()), sp.getenv("HOME").filter(|d| d.starts_with('/'))) {
        (Some(name), Some(home)) => Ok(berth_runtime::plan::UserInfo {
            uid: h.uid,
            gid: sp.job_gid().ok_or("no job gid")?,
            name,
            home: home.into(),
            shell: "/bin/sh".into(),
        }),
        _ => berth_runtime::plan::HostFacts::probe().map(|f| f.user).map_err(|e| e.to_string()),
    }
}

/// `slurm_spank_exit` (slurmstepd, root, after the tasks): end what other steps left in the
/// container (tasks that joined it), stop the holder, release the named container.
pub fn exit(sp: &Spank, _args: &[String]) -> Result<(), String> {
    if sys::context() != Context::Remote {
        return Ok(());
    }
    let mut st = state();
    // A joined container is another step's: that step stops it.
    st.joined = None;
    if let Some(h) = st.holder.take() {
        // Tasks of other steps that joined this step's named container go with it: they would
        // run on in a container whose image is no longer served, and keep its writable layer
        // mounted after the next step may mount it. Ended before the holder (so they never see
        // the container break) and once more after it (one that was joining at that moment).
        let mnt = h.mnt_ns.or_else(|| {
            (h.start_time.is_some() && berth_runtime::holder::start_time(h.pid) == h.start_time)
                .then(|| berth_runtime::holder::namespace_inode(h.pid, "mnt"))
                .flatten()
        });
        let end_members = || {
            mnt.map_or(0, |m| berth_runtime::holder::kill_members(h.pid, m, h.uid, Duration::from_secs(5)))
        };
        // They learn why on their own stderr (their srun's), in order with their output.
        let inside = mnt.map(|m| berth_runtime::holder::members_in(h.pid, m)).unwrap_or_default();
        if let (false, Some(gid), Some((name, _))) = (inside.is_empty(), sp.job_gid(), &st.opts.name) {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            holder::tell(
                &inside,
                h.uid,
                gid,
                &format!(
                    "berth: --container-name={name}: {}, which runs this container, ended on {}; the \
                     container ends with the step that runs it, and so do the processes of other steps \
                     still in it",
                    owner_step(&h),
                    host.trim()
                ),
            );
        }
        let ended = end_members();
        let cfg = st
            .site
            .config
            .as_deref()
            .map(berth_runtime::config::Config::load_file)
            .unwrap_or_else(|| berth_runtime::config::Config::load_for_job().map(|(c, _)| c))
            .ok();
        let state_file = cfg.map(|c| holder::state_file(&c, h.uid, &h.name));
        holder::stop(&h, state_file.as_deref(), std::time::Duration::from_secs(10));
        let ended = ended + end_members();
        if ended > 0 {
            log_info(&format!("container {}: ended {ended} processes of steps that had joined it", h.name));
        }
        log_verbose(&format!("container {} stopped", h.name));
    }
    // The holder (and with it the overlay on the named container's upper layer) is gone:
    // the next step may mount it.
    st.running_mark = None;
    st.named = None;
    Ok(())
}

/// `slurm_spank_job_epilog` (slurmd's job epilog, root, on every node of the job): remove
/// the job's named containers. The directory is the user's, so the removal runs as the user
/// (a child with the user's uid and gid, no supplementary groups): root never walks a tree
/// the user controls. Never fails the epilog (that would drain the node): errors are logged.
pub fn job_epilog(sp: &Spank, args: &[String]) -> Result<(), String> {
    if sys::context() != Context::JobScript {
        return Ok(());
    }
    let (Some(job), Some(uid)) = (sp.job_id(), sp.job_uid()) else { return Ok(()) };
    if uid == 0 {
        return Ok(());
    }
    let site = Site::parse(args).unwrap_or_default();
    let cfg = match &site.config {
        Some(p) => berth_runtime::config::Config::load_file(p),
        None => berth_runtime::config::Config::load_for_job().map(|(c, _)| c),
    };
    let Ok(cfg) = cfg else { return Ok(()) };
    let dir = berth_runtime::named::job_dir(&cfg, uid, job);
    // lstat only: nothing of the user's is followed here.
    if std::fs::symlink_metadata(&dir).is_err() {
        return Ok(());
    }
    let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or(65534, |u| u.gid.as_raw());
    if let Err(e) = holder::remove_as_user(uid, gid, &dir) {
        log_error(&format!("job {job}: cannot remove its named containers in {}: {e}", dir.display()));
    }
    Ok(())
}

/// The PMIx server's directory of this step (`<SlurmdSpoolDir>/pmix.JOB.STEP`): the tasks' PMIx
/// clients need it inside the container. The tasks' env gets it only later (task_init), but
/// Slurm's pmix plugin has already put it in slurmstepd's own environment; failing that, find
/// it where slurmstepd's PMIx server has it mapped or open. None under --mpi=none/pmi2.
fn pmix_server_dir(job: u32, step: u32) -> Option<PathBuf> {
    let from = |p: &str| settings::pmix_dir_in(p, job, step);
    if let Some(d) = std::env::var("PMIX_SERVER_TMPDIR").ok().as_deref().and_then(from) {
        return Some(d);
    }
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        if let Some(d) = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find_map(from) {
            return Some(d);
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .find_map(|l| from(&l.to_string_lossy()))
}
