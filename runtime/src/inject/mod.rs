//! Host injection: the host's fabric userspace, MPI and NVIDIA driver stack, discovered from
//! the host (its ld.so.cache and the ELF `DT_NEEDED` closure, never hard-coded paths) and
//! checked against the image before anything is bound (design.md §6).
//!
//! Two steps, both pure planning (no mounts here; the container code applies the plan):
//! 1. [`discover`] looks at the host (under [`HostFacts::root`], "/" in production, a fake
//!    tree in tests) and returns an [`InjectPlan`]: what to bind where, env changes, the
//!    container library directories to prepend to `LD_LIBRARY_PATH`, and the checks the image
//!    must pass.
//! 2. [`finish_for_image`] runs the checks (`check_against_image`) on the mounted image tree (glibc
//!    versions, MPI ABI, CUDA driver), and for `--mpi=host` adds the binds of the host MPI over
//!    the image's library of the same SONAME.
//!
//! Path convention: [`InjectItem::host_path`] is where this process finds the object, i.e.
//! with the host root prefix applied (identical to the host path in production, where the root
//! is "/"); [`InjectItem::container_path`] is the absolute path inside the container.
//! Libraries go into one container directory ([`InjectConfig::container_lib_dir`],
//! `/.berth/host/lib`), named by SONAME, rather than over the image's files. Exceptions, where
//! the consumer has a compiled-in path: libibverbs provider plugins and `/etc/libibverbs.d`
//! appear at the host's own paths, and `--mpi=host` binds over the image's MPI.

mod cache;
mod clients;
pub(crate) mod closure;
pub(crate) mod config;
pub(crate) mod elf;
pub mod ldcache;
pub(crate) mod mpi;
pub(crate) mod nvidia;
pub(crate) mod rocm;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::closure::{rooted, FoundLib, LibResolver};
pub use self::config::{GpuMode, InjectConfig, MpiMode, NvidiaMode, SchedulerClients};
pub(crate) use self::elf::GlibcVersion;
pub(crate) use self::ldcache::Arch;
pub(crate) use self::mpi::MpiInfo;
use crate::error::{Error, Result};

/// Which GPUs the job may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum GpuSelection {
    /// From the scheduler: `SLURM_STEP_GPUS`, `SLURM_JOB_GPUS`, else a numeric
    /// `CUDA_VISIBLE_DEVICES` (AMD: `ROCR_VISIBLE_DEVICES`, `HIP_VISIBLE_DEVICES`), else all.
    #[default]
    FromEnvironment,
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct InjectRequest {
    /// `--mpi=...`; `None`: the site default ([`InjectConfig::mpi`]).
    pub mpi: Option<MpiMode>,
    /// `--nv`.
    pub nvidia: bool,
    /// `--rocm`.
    pub rocm: bool,
    pub(crate) gpus: GpuSelection,
}

/// How strictly device nodes are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum DeviceCheck {
    /// Device nodes must be character devices (with the NVIDIA major where it is fixed).
    #[default]
    CharDevicesOnly,
    /// Regular files stand in for device nodes. Only for tests, whose fake host trees cannot
    /// mknod without root.
    AcceptRegularFiles,
}

/// Where and what the host is.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// "/" normally; a fake host tree in tests.
    pub root: PathBuf,
    pub(crate) arch: Arch,
    pub(crate) device_check: DeviceCheck,
}

impl HostFacts {
    /// The real host. `None` on an architecture berth does not inject for.
    pub fn real() -> Option<HostFacts> {
        Some(HostFacts {
            root: PathBuf::from("/"),
            arch: Arch::native()?,
            device_check: DeviceCheck::CharDevicesOnly,
        })
    }

    /// A host tree under `root`, of this machine's architecture.
    pub fn at(root: impl Into<PathBuf>) -> HostFacts {
        HostFacts {
            root: root.into(),
            arch: Arch::native().unwrap_or(Arch::X86_64),
            device_check: DeviceCheck::CharDevicesOnly,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ItemKind {
    File,
    Dir,
    Device,
    Socket,
}

/// One thing to bind from the host into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectItem {
    /// Where this process finds it: the host path with [`HostFacts::root`] applied.
    pub host_path: PathBuf,
    /// Absolute path inside the container.
    pub container_path: PathBuf,
    pub(crate) kind: ItemKind,
    pub(crate) readonly: bool,
    /// Why it is there, for `--dry-run` and messages ("libibverbs provider plugins").
    pub why: String,
}

/// A check the image must pass before the plan is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "check")]
pub(crate) enum Check {
    /// An injected host library needs this glibc from the image.
    /// `needs: None`: a dynamic library without glibc version needs (still needs a glibc).
    Glibc { library: String, needs: Option<GlibcVersion> },
    /// `--mpi=host`: the host MPI replaces the image's library of this SONAME.
    MpiAbi { host: MpiInfo, host_path: PathBuf },
    /// `--nv`: the image's CUDA must be supported by this driver.
    CudaDriver { driver: String },
}

/// A host MPI library that replaces the image's library of the same SONAME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpiReplacement {
    /// The library's SONAME, which the image's library of that name has too.
    pub soname: String,
    /// Where this process finds the host's file (root prefix applied).
    pub host_path: PathBuf,
}

/// What to inject from the host into one container: what `discover` found for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectPlan {
    pub(crate) arch: Arch,
    /// The MPI mode it was discovered for.
    pub mpi: MpiMode,
    /// Whether the NVIDIA stack was asked for (`--nv`).
    pub nvidia: bool,
    /// AMD GPUs (ROCm) injected.
    #[serde(default)]
    pub rocm: bool,
    /// Everything to bind, in order.
    pub items: Vec<InjectItem>,
    /// Variables to set inside (after the user's environment is built).
    pub env: Vec<(String, String)>,
    /// Host variables with these prefixes pass into the container even with `--cleanenv`.
    pub pass_env_prefixes: Vec<String>,
    /// Container directories to prepend to `LD_LIBRARY_PATH`.
    pub lib_dirs: Vec<PathBuf>,
    /// Container directories to append to `PATH` (injected programs such as nvidia-smi).
    pub bin_dirs: Vec<PathBuf>,
    pub(crate) checks: Vec<Check>,
    /// `--mpi=host`: host MPI libraries to bind over the image's of the same SONAME
    /// ([`finish_for_image`] turns them into items once the image is known).
    pub mpi_replace: Vec<MpiReplacement>,
    /// What was skipped or adjusted, for `--dry-run` and `-v`.
    pub notes: Vec<String>,
    /// The libraries are a default, not something the user asked for: on an image without
    /// glibc they are dropped with a note instead of refusing to start.
    pub libs_optional: bool,
    /// The batch system's client tools the site lends (`inject.scheduler_clients`,
    /// `host_programs`, `host_paths`): their items and checks, added by [`finish_for_image`]
    /// only if the image can run them. Their directories are already in `lib_dirs`/`bin_dirs`.
    #[serde(default)]
    pub clients: Option<Box<InjectPlan>>,
    /// `/etc/passwd` entries (name, line) the lent tools look up: Slurm's commands refuse to
    /// run when the `SlurmUser` of `slurm.conf` is not a known user.
    #[serde(default)]
    pub user_entries: Vec<(String, String)>,
}

impl InjectPlan {
    fn empty(arch: Arch, mpi: MpiMode) -> InjectPlan {
        InjectPlan {
            arch,
            mpi,
            nvidia: false,
            rocm: false,
            items: vec![],
            env: vec![],
            pass_env_prefixes: vec![],
            lib_dirs: vec![],
            bin_dirs: vec![],
            checks: vec![],
            mpi_replace: vec![],
            notes: vec![],
            libs_optional: true,
            clients: None,
            user_entries: vec![],
        }
    }

    /// Names of the injected host libraries (for messages).
    pub(crate) fn library_names(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter_map(|c| match c {
                Check::Glibc { library, .. } => Some(library.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every bind of the plan, each with whether it is one of the lent client tools (bound only
    /// into images that can run them, see [`InjectPlan::clients`]).
    pub fn binds(&self) -> impl Iterator<Item = (&InjectItem, bool)> {
        self.items
            .iter()
            .map(|i| (i, false))
            .chain(self.clients.iter().flat_map(|c| &c.items).map(|i| (i, true)))
    }

    fn has_libraries(&self) -> bool {
        self.checks.iter().any(|c| matches!(c, Check::Glibc { .. } | Check::MpiAbi { .. }))
    }
}

/// Libraries to bind into the container library directory, deduplicated by SONAME.
struct LibSet {
    libs: Vec<(FoundLib, String)>,
    names: BTreeSet<String>,
}

impl LibSet {
    fn add(&mut self, lib: FoundLib, why: impl Into<String>) {
        if self.names.insert(lib.soname.clone()) {
            self.libs.push((lib, why.into()));
        }
    }
}

/// What this node would inject for a container request, reading the caller's environment
/// (the job's, under a scheduler). None on an architecture berth does not inject for.
pub fn discover_for_request(
    cfg: &crate::config::Config,
    req: &crate::request::Request,
) -> Result<Option<InjectPlan>> {
    let Some(mut host) = HostFacts::real() else { return Ok(None) };
    host.root = cfg.inject.host_root.clone();
    let ireq =
        InjectRequest { mpi: req.mpi, nvidia: req.nvidia, rocm: req.rocm, gpus: GpuSelection::default() };
    let env = |k: &str| std::env::var(k).ok();
    // Kept per user and node (see `cache`), in the state directory only once it is known
    // to be ours and private.
    let uid = nix::unistd::getuid().as_raw();
    let state_dir = cfg.state_dir_for(uid);
    let slot = crate::container::ensure_state_dir(&state_dir, uid)
        .ok()
        .map(|()| cache::slot(&state_dir, &cfg.inject, &host.root, &ireq, &env));
    if let Some(plan) = slot.as_ref().and_then(cache::load) {
        return Ok(Some(plan));
    }
    let plan = discover(&cfg.inject, &host, &ireq, &env)?;
    if let Some(slot) = &slot {
        cache::store(slot, &cfg.inject, &host.root, &plan);
    }
    Ok(Some(plan))
}

/// Whether the GPUs of the node under `root` are AMD's: it has the AMD compute interface
/// (`/dev/kfd`) and no NVIDIA driver. GPUs a scheduler allocates there get ROCm, not NVIDIA's
/// stack.
pub fn amd_gpus_only(root: &Path) -> bool {
    nvidia::driver_version(root).is_none() && root.join("dev/kfd").exists()
}

/// Plan the injection for `req` on `host`, as configured by `cfg`. `env` reads the caller's
/// environment (the job's, under a scheduler).
pub fn discover(
    cfg: &InjectConfig,
    host: &HostFacts,
    req: &InjectRequest,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<InjectPlan> {
    let mode = req.mpi.unwrap_or(cfg.mpi);
    if req.mpi.is_none() && !cfg.mpi_allowed.contains(&mode) {
        return Err(Error::inject(
            "berth.toml [inject]",
            format!("the default MPI model mpi = \"{mode}\" is not in inject.mpi_allowed"),
            "fix the site configuration (berth config check)",
        ));
    }
    if !cfg.mpi_allowed.contains(&mode) {
        let allowed: Vec<String> = cfg.mpi_allowed.iter().map(|m| m.to_string()).collect();
        return Err(Error::inject(
            format!("--mpi={mode}"),
            format!("this site allows only {} (inject.mpi_allowed in berth.toml)", allowed.join(", ")),
            format!("use --mpi={}", cfg.mpi),
        ));
    }
    // GPUs from the scheduler mean the node's own kind: AMD's where the node has the AMD
    // compute interface and no NVIDIA driver, NVIDIA's otherwise.
    let step_gpus = env("SLURM_STEP_GPUS").is_some_and(|v| !v.trim().is_empty());
    let amd_only = amd_gpus_only(&host.root);
    let nvidia = match cfg.nvidia {
        NvidiaMode::Never if req.nvidia => {
            return Err(Error::inject(
                "--nv",
                "GPU support is turned off on this site (inject.nvidia = \"never\" in berth.toml)",
                "drop --nv",
            ));
        }
        NvidiaMode::Never => false,
        NvidiaMode::Always => true,
        NvidiaMode::Auto => req.nvidia || (step_gpus && !amd_only),
    };
    let rocm = match cfg.rocm {
        GpuMode::Never if req.rocm => {
            return Err(Error::inject(
                "--rocm",
                "AMD GPU support is turned off on this site (inject.rocm = \"never\" in berth.toml)",
                "drop --rocm",
            ));
        }
        GpuMode::Never => false,
        GpuMode::Always => true,
        GpuMode::Auto => req.rocm || (step_gpus && amd_only),
    };

    let mut plan = InjectPlan::empty(host.arch, mode);
    plan.nvidia = nvidia;
    plan.rocm = rocm;
    plan.libs_optional = req.mpi.is_none() && !nvidia && !rocm;
    if mode == MpiMode::None && !nvidia && !rocm && cfg.extra_libs.is_empty() && !clients::wanted(cfg) {
        return Ok(plan);
    }
    plan.pass_env_prefixes = cfg.pass_env_prefixes.clone();

    let mut lib_dirs = cfg.extra_lib_dirs.clone();
    if rocm {
        // ROCm's libraries need each other; its prefix is often not in the cache.
        lib_dirs.extend(cfg.rocm_lib_dirs.iter().cloned());
    }
    let mut resolver = LibResolver::new(&host.root, host.arch, lib_dirs)?;
    resolver.map_files = true;
    if resolver.cache.is_none() {
        plan.notes.push(format!(
            "{} has no etc/ld.so.cache; searched the standard directories only",
            host.root.display()
        ));
    }
    let lib_dir = &cfg.container_lib_dir;
    let mut set = LibSet { libs: vec![], names: BTreeSet::new() };
    // Plugins loaded with dlopen: their dependencies belong in the closure, but they are bound
    // as part of their directory.
    let mut plugins: Vec<FoundLib> = vec![];

    if mode != MpiMode::None {
        fabric(cfg, host, &resolver, &mut plan, &mut set, &mut plugins)?;
    }
    if mode == MpiMode::Host {
        host_mpi(cfg, &resolver, &mut plan, &mut set)?;
    }
    for name in &cfg.extra_libs {
        let found = if name.starts_with('/') {
            let soname =
                Path::new(name).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
            resolver.try_path(&soname, Path::new(name))?
        } else {
            resolver.find(name)?
        };
        let lib = found.ok_or_else(|| {
            Error::inject(
                format!("host library {name}"),
                "not found on this host (listed in inject.extra_libs in berth.toml)",
                "install it, add its directory to inject.extra_lib_dirs, or remove it from inject.extra_libs",
            )
        })?;
        set.add(lib, "site library (inject.extra_libs)");
    }
    if nvidia {
        let part = nvidia::discover(
            &host.root,
            &resolver,
            &cfg.nvidia_capabilities,
            &req.gpus,
            host.device_check,
            &cfg.container_bin_dir,
            env,
        )?;
        plan.items.extend(part.items);
        plan.env.extend(part.env);
        plan.notes.extend(part.notes);
        for (lib, why) in part.libs {
            set.add(lib, why);
        }
        if let Some(driver) = part.driver_version {
            plan.checks.push(Check::CudaDriver { driver });
        }
        if plan.items.iter().any(|i| i.container_path.starts_with(&cfg.container_bin_dir)) {
            plan.bin_dirs.push(cfg.container_bin_dir.clone());
        }
    }

    if rocm {
        let opts = rocm::Options {
            gpus: &req.gpus,
            device_check: host.device_check,
            bin_dir: &cfg.container_bin_dir,
            lib_dirs: &cfg.rocm_lib_dirs,
            host_libs: cfg.rocm_host_libs,
        };
        let part = rocm::discover(&host.root, &resolver, &opts, env)?;
        plan.items.extend(part.items);
        plan.env.extend(part.env);
        plan.notes.extend(part.notes);
        for (lib, why) in part.libs {
            set.add(lib, why);
        }
        if !plan.bin_dirs.contains(&cfg.container_bin_dir)
            && plan.items.iter().any(|i| i.container_path.starts_with(&cfg.container_bin_dir))
        {
            plan.bin_dirs.push(cfg.container_bin_dir.clone());
        }
    }

    // Everything those libraries and plugins need, except glibc, which the image brings.
    let mut roots: Vec<FoundLib> = set.libs.iter().map(|(l, _)| l.clone()).collect();
    roots.extend(plugins.iter().cloned());
    let (deps, notes) = resolver.closure(&roots, &set.names)?;
    plan.notes.extend(notes);
    for dep in deps {
        let why = format!("needed by injected host libraries ({})", dep.soname);
        set.add(dep, why);
    }
    for (lib, why) in &set.libs {
        push_glibc_check(&mut plan, lib);
        plan.items.push(InjectItem {
            host_path: lib.rooted.clone(),
            container_path: lib_dir.join(&lib.soname),
            kind: ItemKind::File,
            readonly: true,
            why: why.clone(),
        });
    }
    // Plugins last, so that messages name the libraries people know first.
    for plugin in &plugins {
        push_glibc_check(&mut plan, plugin);
    }
    if !set.libs.is_empty() || plan.items.iter().any(|i| i.container_path.starts_with(lib_dir)) {
        plan.lib_dirs.push(lib_dir.clone());
    }
    if clients::wanted(cfg) {
        let mut part = clients::discover(cfg, &resolver, &set.names, env)?;
        plan.notes.append(&mut part.notes);
        for dir in part.lib_dirs.iter().chain(&part.bin_dirs) {
            let list = if part.lib_dirs.contains(dir) { &mut plan.lib_dirs } else { &mut plan.bin_dirs };
            if !list.contains(dir) {
                list.push(dir.clone());
            }
        }
        plan.clients = Some(Box::new(part));
    }
    Ok(plan)
}

fn push_glibc_check(plan: &mut InjectPlan, lib: &FoundLib) {
    plan.checks.push(Check::Glibc { library: lib.soname.clone(), needs: lib.facts.glibc_needed.clone() });
}

/// Plugin `.so` files in a host directory (following symlinks; broken ones are noted, not
/// fatal: one stale provider must not stop every job on the node).
fn plugins_in(resolver: &LibResolver, logical_dir: &Path, plan: &mut InjectPlan) -> Vec<FoundLib> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(rooted(&resolver.root, logical_dir)) else { return out };
    let mut names: Vec<String> =
        rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.contains(".so")).collect();
    names.sort();
    for name in names {
        match resolver.try_path(&name, &logical_dir.join(&name)) {
            Ok(Some(lib)) => out.push(lib),
            Ok(None) => {}
            Err(e) => plan.notes.push(format!("skipped plugin: {e}")),
        }
    }
    out
}

/// The hybrid model's fabric userspace (also used with the host's MPI).
fn fabric(
    cfg: &InjectConfig,
    host: &HostFacts,
    resolver: &LibResolver,
    plan: &mut InjectPlan,
    set: &mut LibSet,
    plugins: &mut Vec<FoundLib>,
) -> Result<()> {
    let lib_dir = &cfg.container_lib_dir;
    for name in &cfg.fabric_libs {
        let Some(lib) = resolver.find(name)? else {
            if cfg.fabric_required {
                return Err(Error::inject(
                    format!("host library {name}"),
                    "not found on this host (listed in inject.fabric_libs, and inject.fabric_required = true)",
                    "install it, add its directory to inject.extra_lib_dirs, or remove it from inject.fabric_libs",
                ));
            }
            plan.notes.push(format!("{name} (inject.fabric_libs) is not on this host; not injected"));
            continue;
        };
        let real_dir = lib.real.parent().unwrap_or(Path::new("/")).to_path_buf();
        if name.starts_with("libibverbs.so") {
            // libibverbs loads providers from its compiled-in directory (VERBS_PROVIDER_DIR,
            // `<libdir>/libibverbs`) as configured by /etc/libibverbs.d: both must appear at
            // the host's paths, whatever the image has there.
            let providers = real_dir.join("libibverbs");
            if rooted(&host.root, &providers).is_dir() {
                plugins.extend(plugins_in(resolver, &providers, plan));
                plan.items.push(InjectItem {
                    host_path: rooted(&host.root, &providers),
                    container_path: providers.clone(),
                    kind: ItemKind::Dir,
                    readonly: true,
                    why: "libibverbs provider plugins (mlx5, efa, ...)".into(),
                });
            } else {
                plan.notes.push(format!("{} has no provider directory {}", name, providers.display()));
            }
            let conf = Path::new("/etc/libibverbs.d");
            if rooted(&host.root, conf).is_dir() {
                plan.items.push(InjectItem {
                    host_path: rooted(&host.root, conf),
                    container_path: conf.to_path_buf(),
                    kind: ItemKind::Dir,
                    readonly: true,
                    why: "libibverbs provider configuration".into(),
                });
            }
            let ib = Path::new("/dev/infiniband");
            if rooted(&host.root, ib).is_dir() {
                plan.items.push(InjectItem {
                    host_path: rooted(&host.root, ib),
                    container_path: ib.to_path_buf(),
                    kind: ItemKind::Dir,
                    readonly: false,
                    why: "InfiniBand devices (uverbs, rdma_cm)".into(),
                });
            } else {
                plan.notes.push("no /dev/infiniband on this host: verbs will find no device".into());
            }
        }
        // libfabric and UCX find their plugins next to themselves (UCX relative to libucs via
        // dladdr; libfabric through FI_PROVIDER_PATH, which we set).
        for (lib_prefix, sub, env_var) in
            [("libfabric.so", "libfabric", Some("FI_PROVIDER_PATH")), ("libucs.so", "ucx", None)]
        {
            if !name.starts_with(lib_prefix) {
                continue;
            }
            let dir = real_dir.join(sub);
            if rooted(&host.root, &dir).is_dir() {
                plugins.extend(plugins_in(resolver, &dir, plan));
                let inside = lib_dir.join(sub);
                plan.items.push(InjectItem {
                    host_path: rooted(&host.root, &dir),
                    container_path: inside.clone(),
                    kind: ItemKind::Dir,
                    readonly: true,
                    why: format!("{sub} provider plugins"),
                });
                if let Some(var) = env_var {
                    plan.env.push((var.to_string(), inside.to_string_lossy().to_string()));
                }
            }
        }
        set.add(lib, format!("host fabric library ({name})"));
    }
    Ok(())
}

/// `--mpi=host`: the host's MPI libraries, to be bound over the image's.
fn host_mpi(
    cfg: &InjectConfig,
    resolver: &LibResolver,
    plan: &mut InjectPlan,
    set: &mut LibSet,
) -> Result<()> {
    let mut primary_found = false;
    for name in &cfg.mpi_libs {
        let Some(lib) = resolver.find(name)? else { continue };
        if is_primary_mpi(name) {
            let info = mpi::identify(name, &lib.rooted)?;
            plan.checks.push(Check::MpiAbi { host: info.clone(), host_path: lib.rooted.clone() });
            plan.notes.push(format!("host MPI: {} at {}", info.describe(), lib.listed.display()));
            primary_found = true;
            if info.family == mpi::MpiFamily::OpenMpi {
                // Open MPI dlopens its components from a compiled-in directory.
                let comp = lib.real.parent().unwrap_or(Path::new("/")).join("openmpi");
                if rooted(&resolver.root, &comp).is_dir() {
                    plan.items.push(InjectItem {
                        host_path: rooted(&resolver.root, &comp),
                        container_path: comp,
                        kind: ItemKind::Dir,
                        readonly: true,
                        why: "Open MPI components".into(),
                    });
                }
            }
        }
        plan.mpi_replace.push(MpiReplacement { soname: name.clone(), host_path: lib.rooted.clone() });
        set.add(lib, format!("host MPI library ({name})"));
    }
    if !primary_found {
        return Err(Error::inject(
            "--mpi=host",
            format!(
                "no host MPI library found (looked for {} from inject.mpi_libs)",
                cfg.mpi_libs.join(", ")
            ),
            "add the host MPI's directory to inject.extra_lib_dirs, or use --mpi=hybrid",
        ));
    }
    Ok(())
}

/// The libraries whose ABI decides (the bindings follow them).
fn is_primary_mpi(soname: &str) -> bool {
    soname.starts_with("libmpi.so.") || soname.starts_with("libmpich.so.")
}

/// Facts of a mounted image tree that the checks need.
#[derive(Debug, Clone)]
pub(crate) struct ImageFacts {
    /// The glibc the image provides (highest `GLIBC_x.y` its libc.so.6 defines); `None`: no
    /// glibc (static or musl image).
    pub glibc: Option<GlibcVersion>,
}

/// Read what the checks need from the image tree at `image_root` (symlinks, absolute ones
/// included, are followed inside the image).
pub(crate) fn image_facts(image_root: &Path, arch: Arch) -> Result<ImageFacts> {
    let r = LibResolver::new(image_root, arch, vec![])?;
    match r.find("libc.so.6")? {
        Some(libc) => Ok(ImageFacts { glibc: libc.facts.glibc_defined.clone() }),
        None => Ok(ImageFacts { glibc: None }),
    }
}

/// Why the image cannot load the injected libraries, if it cannot: no glibc at all, or an
/// older glibc than they need. Both sides are named.
fn library_problem(plan: &InjectPlan, image: &ImageFacts) -> Option<String> {
    if !plan.has_libraries() {
        return None;
    }
    let Some(image_glibc) = &image.glibc else {
        let mut libs = plan.library_names();
        let more = if libs.len() > 4 { ", ..." } else { "" };
        libs.truncate(4);
        return Some(format!(
            "the image has no glibc (no libc.so.6 in its ld.so.cache or standard directories), so it cannot load the host's dynamic libraries ({}{more})",
            libs.join(", ")
        ));
    };
    let mut too_new: Vec<(String, GlibcVersion)> = plan
        .checks
        .iter()
        .filter_map(|c| match c {
            Check::Glibc { library, needs: Some(needs) } if needs > image_glibc => {
                Some((library.clone(), needs.clone()))
            }
            _ => None,
        })
        .collect();
    too_new.sort_by(|a, b| b.1.cmp(&a.1));
    let (lib, needs) = too_new.first()?;
    let others: Vec<&str> = too_new.iter().skip(1).map(|(l, _)| l.as_str()).collect();
    let also = if others.is_empty() { String::new() } else { format!(" (also: {})", others.join(", ")) };
    Some(format!("host {lib} needs GLIBC_{needs}, image has {image_glibc}{also}"))
}

const LIBRARY_HINT: &str = "use an image built on a newer distribution (with glibc), point inject.extra_lib_dirs at host libraries built for an older glibc, or run with --mpi=none and without --nv";

/// Check `plan` against the image mounted at `image_root`: glibc versions, the MPI ABI for
/// `--mpi=host` and the driver for the image's CUDA. Every refusal names both sides.
///
/// Library problems are refused only when the user asked for the injection (`--mpi=...`,
/// `--nv`); for the site default they are not errors: [`finish_for_image`] drops the
/// libraries with a note, so that `berth shell old.img` still works.
#[cfg(test)]
pub(crate) fn check_against_image(plan: &InjectPlan, image_root: &Path) -> Result<()> {
    check_with_facts(plan, image_root, &image_facts(image_root, plan.arch)?)
}

/// [`check_against_image`] with the image's facts already read: on a FUSE-mounted image each
/// lookup is a round trip to its server, so they are read once per container.
fn check_with_facts(plan: &InjectPlan, image_root: &Path, image: &ImageFacts) -> Result<()> {
    if let Some(why) = library_problem(plan, image) {
        if !plan.libs_optional {
            return Err(Error::inject("host library injection", why, LIBRARY_HINT));
        }
        return Ok(());
    }
    for check in &plan.checks {
        match check {
            Check::MpiAbi { host, .. } => {
                let image_libs = LibResolver::new(image_root, plan.arch, vec![])?;
                let Some(image_lib) = image_libs.find(&host.soname)? else {
                    continue; // whether the image has any MPI to replace is settled in finish_for_image
                };
                let image_info = mpi::identify(&host.soname, &image_lib.rooted)?;
                mpi::check_abi(host, &image_info).map_err(|why| {
                    Error::inject(
                        "--mpi=host",
                        why,
                        "use --mpi=hybrid (the image's own MPI over the host's fabric)",
                    )
                })?;
            }
            Check::CudaDriver { driver } => {
                if let Some(cuda) = nvidia::image_cuda_version(image_root) {
                    nvidia::check_driver_for_cuda(driver, &cuda).map_err(|why| {
                        Error::inject(
                            "--nv",
                            why,
                            "ask for nodes with a newer driver, use an image with an older CUDA, or ship NVIDIA's cuda-compat libraries in the image",
                        )
                    })?;
                }
            }
            Check::Glibc { .. } => {}
        }
    }
    Ok(())
}

/// Check `plan` against the image at `image_root` and complete it for that image: for
/// `--mpi=host`, bind each host MPI library over the image's file of the same SONAME; when the
/// image cannot load host libraries and nobody asked for them, drop them with a note.
pub fn finish_for_image(mut plan: InjectPlan, image_root: &Path) -> Result<InjectPlan> {
    let clients = plan.clients.take();
    // Only injected libraries need the image's glibc (see `library_problem`).
    let image = if plan.has_libraries() || clients.as_ref().is_some_and(|c| c.has_libraries()) {
        image_facts(image_root, plan.arch)?
    } else {
        ImageFacts { glibc: None }
    };
    let mut plan = finish_main(plan, image_root, &image)?;
    if let Some(part) = clients {
        // Lent, not asked for: an image that cannot run them goes without (module `clients`).
        match library_problem(&part, &image) {
            Some(why) => plan.notes.push(format!("host client tools not lent: {why}")),
            None => {
                plan.items.extend(part.items);
                plan.checks.extend(part.checks);
            }
        }
    }
    Ok(plan)
}

/// [`finish_for_image`] for everything but the client tools.
fn finish_main(mut plan: InjectPlan, image_root: &Path, image: &ImageFacts) -> Result<InjectPlan> {
    check_with_facts(&plan, image_root, image)?;
    if let Some(why) = library_problem(&plan, image) {
        // Only reached for the site default (check_against_image refused the rest).
        drop_libraries(&mut plan);
        plan.notes.push(format!("host libraries not injected: {why}"));
        return Ok(plan);
    }
    if plan.mpi == MpiMode::Host {
        let image_libs = LibResolver::new(image_root, plan.arch, vec![])?;
        let mut replaced = vec![];
        for rep in plan.mpi_replace.clone() {
            let Some(image_lib) = image_libs.find(&rep.soname)? else { continue };
            // Bind over the real file the image's SONAME leads to (a bind cannot target the
            // symlink itself), so programs with an RPATH into the image's MPI get the host's too.
            plan.items.push(InjectItem {
                host_path: rep.host_path.clone(),
                container_path: image_lib.real.clone(),
                kind: ItemKind::File,
                readonly: true,
                why: format!("host MPI replaces the image's {} (--mpi=host)", rep.soname),
            });
            replaced.push(rep.soname);
        }
        if !replaced.iter().any(|s| is_primary_mpi(s)) {
            let host: Vec<String> = plan
                .checks
                .iter()
                .filter_map(|c| match c {
                    Check::MpiAbi { host, .. } => Some(host.describe()),
                    _ => None,
                })
                .collect();
            return Err(Error::inject(
                "--mpi=host",
                format!("the image has no MPI library to replace (host has {})", host.join(", ")),
                "use --mpi=hybrid, or an image built against an MPI with the host's ABI",
            ));
        }
        plan.notes.push(format!("replaced in the image: {}", replaced.join(", ")));
    }
    Ok(plan)
}

/// Warnings about an image's own MPI stack on this host, for `berth inspect --host IMAGE`:
/// things that work but cost the user time, with what to set instead.
///
/// An Open MPI image whose PMIx client (`libpmix.so.2`) is of an older release than the
/// host's: under `srun --mpi=pmix` (Slurm's PMIx server is the host's library), every rank
/// on another node than rank 0 waits about 2 s in `MPI_Init`. Measured with a Debian 11
/// image (Open MPI 4.1.0, PMIx 4.0.0, libpmix.so.2.3.0) on Debian 12's Slurm 22.05 (PMIx
/// 4.2.2, libpmix.so.2.6.2): the ranks ask the server for rank 0's PML choice
/// (`pml.base.2.0`) and the server answers the old client only when a 2 s timer expires. Open
/// MPI publishes and checks that choice only when more than one PML could be selected, so
/// naming one with `OMPI_MCA_pml` removes the wait.
/// `plan` is this host's injection plan (its architecture is the one looked for).
pub fn image_stack_warnings(image_root: &Path, host_root: &Path, plan: &InjectPlan) -> Result<Vec<String>> {
    stack_warnings(image_root, host_root, plan.arch)
}

pub(crate) fn stack_warnings(image_root: &Path, host_root: &Path, arch: Arch) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let image = LibResolver::new(image_root, arch, vec![])?;
    let Some(mpi) = image.find("libmpi.so.40")? else {
        return Ok(out);
    };
    let Some(image_pmix) = image.find("libpmix.so.2")? else {
        return Ok(out);
    };
    let Some(host_pmix) = LibResolver::new(host_root, arch, vec![])?.find("libpmix.so.2")? else {
        return Ok(out);
    };
    let file_name =
        |l: &FoundLib| l.real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (image_name, host_name) = (file_name(&image_pmix), file_name(&host_pmix));
    // The libtool version orders PMIx releases (2.3.x is 4.0, 2.6.x is 4.2); within one
    // release series the revision is only a bug-fix count.
    let series = |name: &str| mpi::libtool_version(name).map(|v| v.into_iter().take(2).collect::<Vec<_>>());
    let (Some(image_series), Some(host_series)) = (series(&image_name), series(&host_name)) else {
        return Ok(out);
    };
    if image_series < host_series {
        let ompi = mpi::identify("libmpi.so.40", &mpi.rooted)
            .map(|i| i.describe())
            .unwrap_or_else(|_| "Open MPI".into());
        out.push(format!(
            "the image's {ompi} uses an older PMIx client ({image_name}) than this host's PMIx \
             ({host_name}): under srun --mpi=pmix each rank on another node than rank 0 waits \
             about 2 s in MPI_Init for the PMIx server to answer a request for rank 0's PML; \
             name the one PML to use and the request is not made: export OMPI_MCA_pml=ob1 (TCP \
             and shared memory) or OMPI_MCA_pml=ucx (InfiniBand, RoCE) before srun, or \
             --container-env=OMPI_MCA_pml=ob1"
        ));
    }
    Ok(out)
}

/// Remove every library-related item, keeping devices, sockets and GPU state.
fn drop_libraries(plan: &mut InjectPlan) {
    plan.items.retain(|i| {
        matches!(i.kind, ItemKind::Device | ItemKind::Socket) || i.container_path.starts_with("/dev")
    });
    plan.checks.retain(|c| !matches!(c, Check::Glibc { .. } | Check::MpiAbi { .. }));
    plan.mpi_replace.clear();
    plan.lib_dirs.clear();
    plan.bin_dirs.clear();
    plan.env.retain(|(k, _)| k != "FI_PROVIDER_PATH");
}

#[cfg(test)]
mod tests;
