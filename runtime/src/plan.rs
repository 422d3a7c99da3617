//! Planning: a [`Request`] plus host facts become a [`Plan`], plain data listing every mount,
//! generated file, environment rule and check, in the order `apply` performs them.
//!
//! Planning has no side effects: it only reads the facts it is given, so every rule here is
//! unit-tested without root, and `berth exec --dry-run` prints exactly what would happen.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::image::{FsType, Image, RootFs};
use crate::inject::InjectPlan;
use crate::request::{Action, BindSpec, Request};

/// The user the container runs as (always the invoking user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// The user id, inside as outside.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// The login name.
    pub name: String,
    /// The home directory.
    pub home: PathBuf,
    /// The login shell.
    pub shell: PathBuf,
}

/// Facts about the host that planning depends on, gathered by [`HostFacts::probe`] (or made up
/// by tests).
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Who runs the container.
    pub user: UserInfo,
    /// The name of the user's primary group (the `/etc/group` entry inside); the user's name
    /// when the group database has none.
    pub group: String,
    /// The current directory, when it can be read.
    pub cwd: Option<PathBuf>,
    /// The host environment, in order.
    pub env: Vec<(String, String)>,
    /// Which host paths exist, and whether they are directories (asked by the planner).
    pub(crate) path_kind: fn(&Path) -> Option<PathKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PathKind {
    Dir,
    File,
}

pub(crate) fn host_path_kind(p: &Path) -> Option<PathKind> {
    std::fs::metadata(p).ok().map(|m| if m.is_dir() { PathKind::Dir } else { PathKind::File })
}

impl HostFacts {
    /// Read the facts from this host for the calling user.
    pub fn probe() -> Result<HostFacts> {
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        let (pw, group) = user_and_group(uid.as_raw(), gid.as_raw());
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let home_env = env.iter().find(|(k, _)| k == "HOME").map(|(_, v)| PathBuf::from(v));
        let user = UserInfo {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            name: pw.as_ref().map(|p| p.name.clone()).unwrap_or_else(|| uid.to_string()),
            home: home_env.or_else(|| pw.as_ref().map(|p| p.home.clone())).unwrap_or_else(|| "/".into()),
            shell: pw.as_ref().map(|p| p.shell.clone()).unwrap_or_else(|| "/bin/sh".into()),
        };
        let group = group.unwrap_or_else(|| user.name.clone());
        Ok(HostFacts { user, group, cwd: std::env::current_dir().ok(), env, path_kind: host_path_kind })
    }
}

/// A passwd entry, as far as berth uses it.
struct Passwd {
    name: String,
    home: PathBuf,
    shell: PathBuf,
}

/// The passwd entry of `uid` and the name of group `gid`. A statically linked build (berth-pbs
/// as packaged) must not use the name service switch: glibc would load the modules
/// `/etc/nsswitch.conf` names (`systemd`, `sss`, `ldap`) into the static program, which dies of
/// SIGSEGV for every user and group `/etc/passwd` and `/etc/group` do not list. It reads those
/// files, then asks `getent`, a dynamically linked program, with a clean environment.
fn user_and_group(uid: u32, gid: u32) -> (Option<Passwd>, Option<String>) {
    if !cfg!(target_feature = "crt-static") {
        let pw = nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|p| Passwd {
            name: p.name,
            home: p.dir,
            shell: p.shell,
        });
        return (pw, nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name));
    }
    // The fields of the first entry whose third field (uid, gid) is `id`.
    let entry = |file: &str, db: &str, id: u32| -> Option<Vec<String>> {
        let pick = |text: &str| {
            text.lines()
                .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
                .find(|f| f.len() >= 4 && f[2] == id.to_string())
        };
        if let Some(f) = std::fs::read_to_string(file).ok().as_deref().and_then(pick) {
            return Some(f);
        }
        let getent = ["/usr/bin/getent", "/bin/getent"].into_iter().find(|p| Path::new(p).is_file())?;
        let out = std::process::Command::new(getent)
            .args([db, &id.to_string()])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| pick(&String::from_utf8_lossy(&out.stdout))).flatten()
    };
    let pw = entry("/etc/passwd", "passwd", uid).filter(|f| f.len() >= 7).map(|f| Passwd {
        name: f[0].clone(),
        home: PathBuf::from(&f[5]),
        shell: PathBuf::from(&f[6]),
    });
    (pw, entry("/etc/group", "group", gid).map(|f| f[0].clone()))
}

/// How the image's root filesystem gets mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "via")]
pub(crate) enum ImageMount {
    /// FUSE: berth mounts `/dev/fuse` itself, then squashfuse serves it from `offset`: the
    /// `library` (libsquashfuse_ll) in a forked berth process, else the `program`.
    Squashfuse { program: String, library: String, image: PathBuf, offset: u64 },
    /// A directory image, bound read-only.
    Directory { path: PathBuf },
}

/// The user's directory as the kept writable layer (`--overlay DIR`) and how to mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptLayer {
    /// The user's directory (`DIR/upper`, `DIR/work` inside it).
    pub dir: PathBuf,
    /// The kernel's overlayfs or fuse-overlayfs (`overlay_mount` in berth.toml).
    pub via: crate::config::OverlayMount,
    /// The fuse-overlayfs program, for `via` auto and fuse.
    pub fuse_program: String,
}

/// One mount-namespace operation, in order. Container paths are relative to the new root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub(crate) enum Step {
    /// Private tmpfs holding the image mount, the overlay's upper layer and generated files;
    /// unbindable so recursive binds of its parent (e.g. `/tmp`) never copy it.
    Staging {
        at: PathBuf,
    },
    Image {
        mount: ImageMount,
        at: PathBuf,
    },
    /// Overlay over the read-only image so mount points can be created for destinations the
    /// image lacks (e.g. `/scratch`, `$HOME`); also the `--writable-tmpfs` layer. With
    /// `persistent` (`--overlay DIR`), the tmpfs layer holding the mount points becomes a
    /// lower layer and `DIR/upper` the writable one, so only the user's changes are kept.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        at: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        persistent: Option<KeptLayer>,
    },
    /// A minimal `/dev`: tmpfs plus the host's standard nodes.
    Dev {
        nodes: Vec<PathBuf>,
        dirs: Vec<PathBuf>,
    },
    Bind {
        src: PathBuf,
        dst: PathBuf,
        kind: PathKind,
        readonly: bool,
        why: String,
    },
    /// Host libraries, devices and files (fabric, MPI, NVIDIA), checked against the image
    /// (glibc, MPI ABI, CUDA driver) once it is mounted, then bound.
    Inject {
        plan: Box<InjectPlan>,
    },
    /// A file generated from the image's own copy plus berth's entries (`(key, line)`: the
    /// user's, and users the lent client tools look up), each replacing the image's line of
    /// the same key: one generated file and one bind per file.
    UserDb {
        dst: PathBuf,
        entries: Vec<(String, String)>,
    },
    /// A file of berth's own (the entrypoint launcher, [`crate::entrypoint`]): written on the
    /// layers' tmpfs, bound read-only at `dst`.
    OwnFile {
        dst: PathBuf,
        data: String,
        mode: u32,
    },
    /// Make the root read-only (unless `--writable-tmpfs`).
    ReadonlyRoot,
    PivotRoot,
}

/// The environment rules; resolved at apply time, when the image's own env files are readable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct EnvPlan {
    /// Host variables passed in (already filtered).
    pub host: Vec<(String, String)>,
    /// Set after the image's environment (user `--env`, `BERTH_ENV_*`, and berth's own).
    pub overrides: Vec<(String, String)>,
    /// Directories put first in `LD_LIBRARY_PATH` (host injection).
    pub ld_library_path_prepend: Vec<PathBuf>,
    /// Directories added at the end of `PATH` (injected host programs such as nvidia-smi).
    #[serde(default)]
    pub path_append: Vec<PathBuf>,
}

/// Every mount, file and environment rule of one container, in order: what `plan` makes from
/// a request and the host's facts, and what `--dry-run` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub(crate) image: Image,
    pub(crate) user: UserInfo,
    pub(crate) state_dir: PathBuf,
    pub(crate) steps: Vec<Step>,
    pub(crate) env: EnvPlan,
    /// Working directories to try, first that exists inside wins; the first is required when
    /// the user asked for it explicitly.
    pub workdir: Vec<PathBuf>,
    pub(crate) workdir_required: bool,
    pub(crate) action: Action,
    pub(crate) writable: bool,
    /// The user appears as uid/gid 0 inside (mapped to themselves outside).
    pub remap_root: bool,
}

impl Plan {
    /// The directory of the kept writable layer (`--overlay DIR`), if the container has one.
    pub(crate) fn kept_layer(&self) -> Option<&Path> {
        self.steps.iter().find_map(|s| match s {
            Step::Overlay { persistent: Some(k), .. } => Some(k.dir.as_path()),
            _ => None,
        })
    }
}

/// Default PATH inside when the image defines none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host variables never passed in: they describe the host's own software layout or session
/// and would break programs inside the image.
const HOST_ENV_BLOCKED: &[&str] = &[
    "PATH",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "LD_AUDIT",
    "PYTHONPATH",
    "PYTHONHOME",
    "PS1",
    "PROMPT_COMMAND",
    "BASH_ENV",
    "ENV",
    "MANPATH",
    "INFOPATH",
    "PKG_CONFIG_PATH",
    "CPATH",
    "LIBRARY_PATH",
];

/// Host variables kept with `--cleanenv` besides the scheduler's and MPI's
/// ([`crate::scheduler::passes_cleanenv`]): the terminal and the locale.
const CLEANENV_KEEP: &[&str] = &["TERM", "LANG", "LC_ALL", "TZ", "DISPLAY", "XAUTHORITY"];

/// Host files for a minimal `/dev`.
const DEV_NODES: &[&str] =
    &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"];
/// Host directories recursively bound into the minimal `/dev` (pseudo-terminals, POSIX shared
/// memory, message queues, huge pages).
const DEV_DIRS: &[&str] = &["/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/hugepages"];

/// Host directories never bound as "the current directory": binding them would hide the
/// image's own system files.
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/var",
    "/opt",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/run",
    "/srv",
    "/root",
    "/.berth",
    "/.singularity.d",
];

fn is_system_path(p: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|s| {
        let s = Path::new(s);
        p == s
            || (s != Path::new("/")
                && p.starts_with(s)
                && !p.starts_with("/var/tmp")
                && !p.starts_with("/run/user"))
    })
}

/// The first steps of every plan: the staging tmpfs under `staging`, and the image mounted
/// read-only at `staging/image`.
fn image_steps(image: &Image, cfg: &Config, host: &HostFacts, staging: &Path) -> Result<Vec<Step>> {
    let image_mount = match &image.root {
        RootFs::Directory { path } => ImageMount::Directory { path: path.clone() },
        RootFs::Embedded { fs: FsType::Squashfs, offset, .. } => ImageMount::Squashfuse {
            program: cfg.squashfuse.clone(),
            library: cfg.squashfuse_library.clone(),
            image: absolute(&image.path, host),
            offset: *offset,
        },
        RootFs::Embedded { fs: FsType::Ext3, .. } => {
            return Err(Error::image(
                &image.path,
                "holds an ext3 root filesystem (Singularity 2.x image), which only the privileged mount mode can mount",
                "convert it once to SquashFS (e.g. `apptainer build new.sif old.img`), or ask your site to enable privileged mounting",
            ))
        }
    };
    Ok(vec![
        Step::Staging { at: staging.to_path_buf() },
        Step::Image { mount: image_mount, at: staging.join("image") },
    ])
}

/// A plan that only mounts `image` (see [`image_steps`]) and runs nothing: for reading its
/// metadata without setting a container up. The image is at [`image_at`].
pub(crate) fn mount_only(image: &Image, cfg: &Config, host: &HostFacts) -> Result<Plan> {
    let state_dir = cfg.state_dir_for(host.user.uid);
    let steps = image_steps(image, cfg, host, &state_dir.join("mnt"))?;
    Ok(Plan {
        image: image.clone(),
        user: host.user.clone(),
        state_dir,
        steps,
        env: EnvPlan::default(),
        workdir: vec![],
        workdir_required: false,
        action: Action::Shell,
        writable: false,
        remap_root: false,
    })
}

/// Where a plan mounts its image.
pub(crate) fn image_at(plan: &Plan) -> Option<&Path> {
    plan.steps.iter().find_map(|s| match s {
        Step::Image { at, .. } => Some(at.as_path()),
        _ => None,
    })
}

/// Build the plan. Pure: reads only `req`, `image`, `cfg`, `host` and what host injection
/// discovery found (`injected`, from [`crate::inject::discover`]).
pub fn plan(
    req: &Request,
    image: &Image,
    cfg: &Config,
    host: &HostFacts,
    injected: Option<&InjectPlan>,
) -> Result<Plan> {
    let state_dir = cfg.state_dir_for(host.user.uid);
    let staging = state_dir.join("mnt");
    let mut steps = image_steps(image, cfg, host, &staging)?;
    if req.overlay.is_some() && req.writable_tmpfs {
        return Err(Error::request(
            "--overlay with --writable-tmpfs",
            "the two writable layers exclude each other: --overlay keeps the changes, --writable-tmpfs throws them away",
            "give one of them",
        ));
    }
    steps.push(Step::Overlay {
        lower: staging.join("image"),
        upper: staging.join("overlay/upper"),
        work: staging.join("overlay/work"),
        at: staging.join("root"),
        persistent: req.overlay.as_ref().map(|d| KeptLayer {
            dir: absolute(d, host),
            via: cfg.overlay_mount,
            fuse_program: cfg.fuse_overlayfs.clone(),
        }),
    });

    // In every container, not only those a step with --container-entrypoint starts: a step
    // may join a container another step started. Before any bind: a bind of a host directory
    // over /.berth then hides it instead of getting its mount point.
    steps.push(Step::OwnFile {
        dst: crate::entrypoint::LAUNCHER.into(),
        data: crate::entrypoint::script(crate::entrypoint::RUNSCRIPT),
        mode: 0o555,
    });

    // Kernel interfaces and a minimal /dev.
    steps.push(bind_host("/proc", "/proc", PathKind::Dir, false, "kernel process interface"));
    steps.push(bind_host("/sys", "/sys", PathKind::Dir, false, "kernel device interface"));
    steps.push(Step::Dev {
        nodes: DEV_NODES.iter().map(PathBuf::from).filter(|p| (host.path_kind)(p).is_some()).collect(),
        dirs: DEV_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|p| (host.path_kind)(p) == Some(PathKind::Dir))
            .collect(),
    });

    // Default binds, as HPC users expect them.
    if cfg.binds.tmp && (host.path_kind)(Path::new("/tmp")) == Some(PathKind::Dir) {
        steps.push(bind_host("/tmp", "/tmp", PathKind::Dir, false, "host /tmp"));
    }
    for f in &cfg.binds.host_files {
        if let Some(kind) = (host.path_kind)(Path::new(f)) {
            steps.push(bind_host(f, f, kind, true, "host file"));
        }
    }
    let home = &host.user.home;
    let home_bound = req.mount_home
        && cfg.binds.home
        && home != Path::new("/")
        && !is_system_path(home)
        && (host.path_kind)(home) == Some(PathKind::Dir);
    if home_bound {
        steps.push(Step::Bind {
            src: home.clone(),
            dst: home.clone(),
            kind: PathKind::Dir,
            readonly: false,
            why: "your home directory".into(),
        });
    }
    let covered = |p: &Path, steps: &[Step]| {
        steps.iter().any(|s| matches!(s, Step::Bind { dst, kind: PathKind::Dir, .. } if p.starts_with(dst)))
    };
    if cfg.binds.cwd {
        if let Some(cwd) = &host.cwd {
            if !is_system_path(cwd) && !covered(cwd, &steps) {
                steps.push(Step::Bind {
                    src: cwd.clone(),
                    dst: cwd.clone(),
                    kind: PathKind::Dir,
                    readonly: false,
                    why: "the current directory".into(),
                });
            }
        }
    }

    // Site binds, then the user's, in order; sources must exist on the host.
    let site: Vec<BindSpec> = cfg.binds.site.iter().filter_map(|s| BindSpec::parse(s).ok()).collect();
    for (b, why) in site.iter().map(|b| (b, "site bind")).chain(req.binds.iter().map(|b| (b, "your bind"))) {
        let src = absolute(&b.src, host);
        let kind = (host.path_kind)(&src).ok_or_else(|| {
            Error::request(
                format!("bind {}:{}", b.src.display(), b.dst.display()),
                format!("the source {} does not exist on this host", src.display()),
                "create it first or fix the path (relative sources are taken from the current directory)",
            )
        })?;
        steps.push(Step::Bind { src, dst: b.dst.clone(), kind, readonly: b.readonly, why: why.into() });
    }

    if let Some(ip) =
        injected.filter(|ip| !ip.items.is_empty() || !ip.mpi_replace.is_empty() || ip.clients.is_some())
    {
        steps.push(Step::Inject { plan: Box::new(ip.clone()) });
    }

    // The user's passwd/group entries, so `id`, `ls -l` and `getpwuid()` work inside, and the
    // users the host's lent client tools look up (see inject::clients).
    let u = &host.user;
    let mut passwd = vec![(
        u.name.clone(),
        format!("{}:x:{}:{}:{}:{}:/bin/sh", u.name, u.uid, u.gid, u.name, u.home.display()),
    )];
    for (key, entry) in injected.iter().flat_map(|ip| ip.clients.iter()).flat_map(|c| &c.user_entries) {
        if *key != u.name {
            passwd.push((key.clone(), entry.clone()));
        }
    }
    steps.push(Step::UserDb { dst: "/etc/passwd".into(), entries: passwd });
    let group_name = &host.group;
    steps.push(Step::UserDb {
        dst: "/etc/group".into(),
        entries: vec![(group_name.clone(), format!("{}:x:{}:", group_name, u.gid))],
    });

    if !req.writable_tmpfs && req.overlay.is_none() {
        steps.push(Step::ReadonlyRoot);
    }
    steps.push(Step::PivotRoot);

    let mut env = plan_env(req, cfg, host);
    if let Some(ip) = injected {
        // Injection's variables (e.g. FI_PROVIDER_PATH) come before the user's own overrides,
        // so a user can still change them.
        let user_overrides = std::mem::take(&mut env.overrides);
        env.overrides.extend(ip.env.iter().cloned());
        env.overrides.extend(user_overrides);
        env.ld_library_path_prepend.extend(ip.lib_dirs.iter().cloned());
        env.path_append.extend(ip.bin_dirs.iter().cloned());
    }
    let (workdir, workdir_required) = match &req.workdir {
        Some(w) => {
            crate::request::check_container_path(w)
                .map_err(|r| Error::request("--workdir", r, "give an absolute path inside the image"))?;
            (vec![w.clone()], true)
        }
        None => {
            let mut v = vec![];
            if let Some(cwd) = &host.cwd {
                v.push(cwd.clone());
            }
            if home_bound {
                v.push(home.clone());
            }
            v.push(PathBuf::from("/"));
            (v, false)
        }
    };

    Ok(Plan {
        image: image.clone(),
        user: host.user.clone(),
        state_dir,
        steps,
        env,
        workdir,
        workdir_required,
        action: req.action.clone(),
        writable: req.writable_tmpfs || req.overlay.is_some(),
        remap_root: req.remap_root,
    })
}

fn bind_host(src: &str, dst: &str, kind: PathKind, readonly: bool, why: &str) -> Step {
    Step::Bind { src: src.into(), dst: dst.into(), kind, readonly, why: why.into() }
}

fn absolute(p: &Path, host: &HostFacts) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        host.cwd.as_deref().unwrap_or(Path::new("/")).join(p)
    }
}

/// Prefixes by which host variables set variables inside (Apptainer's and Singularity's too, so
/// existing job scripts keep working).
pub(crate) const ENV_PREFIXES: &[&str] = &["BERTH_ENV_", "APPTAINERENV_", "SINGULARITYENV_"];

/// The host variables passed in, and those given by prefix (`BERTH_ENV_X=v` sets `X=v`).
/// The user's identity (`USER`, `LOGNAME`, `HOME`) comes first, so the image's environment
/// files can use it.
pub(crate) fn filter_host_env(
    host_env: &[(String, String)],
    cleanenv: bool,
    cfg: &Config,
    user: &UserInfo,
) -> EnvPlan {
    let blocked = |k: &str| HOST_ENV_BLOCKED.contains(&k) || cfg.env.block.iter().any(|b| b == k);
    let kept_clean = |k: &str| {
        CLEANENV_KEEP.contains(&k)
            || crate::scheduler::passes_cleanenv(k)
            || cfg.inject.pass_env_prefixes.iter().any(|p| k.starts_with(p.as_str()))
            || cfg.env.keep.iter().any(|b| b == k)
    };
    let mut env = EnvPlan::default();
    for (k, v) in host_env {
        if let Some(name) = ENV_PREFIXES.iter().find_map(|p| k.strip_prefix(p)) {
            if crate::request::valid_env_name(name) {
                env.overrides.push((name.to_string(), v.clone()));
            }
            continue;
        }
        if k.starts_with("BERTH_")
            || blocked(k)
            || (cleanenv && !kept_clean(k))
            || IDENTITY.contains(&k.as_str())
        {
            continue;
        }
        env.host.push((k.clone(), v.clone()));
    }
    let home = user.home.display().to_string();
    for (k, v) in [("USER", &user.name), ("LOGNAME", &user.name), ("HOME", &home)] {
        env.host.push((k.to_string(), v.clone()));
    }
    env
}

const IDENTITY: &[&str] = &["USER", "LOGNAME", "HOME"];

fn plan_env(req: &Request, cfg: &Config, host: &HostFacts) -> EnvPlan {
    let mut env = filter_host_env(&host.env, req.cleanenv, cfg, &host.user);
    let prefixed = std::mem::take(&mut env.overrides);
    env.overrides.push(("BERTH_CONTAINER".into(), req.image.display().to_string()));
    env.overrides.extend(prefixed);
    env.overrides.extend(req.env.iter().cloned());
    env
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image   {} ({:?})", self.image.path.display(), self.image.format)?;
        writeln!(
            f,
            "user    {} (uid {}, gid {}), {}",
            self.user.name,
            self.user.uid,
            self.user.gid,
            if self.remap_root { "appears as uid 0, gid 0 inside" } else { "mapped to itself" }
        )?;
        writeln!(f, "state   {}", self.state_dir.display())?;
        writeln!(f, "steps:")?;
        for (i, s) in self.steps.iter().enumerate() {
            write!(f, "  {:2}. ", i + 1)?;
            match s {
                Step::Staging { at } => {
                    writeln!(f, "tmpfs {} (private, unbindable, nosuid,nodev)", at.display())?
                }
                Step::Image { mount: ImageMount::Squashfuse { program, library, image, offset }, at } => {
                    writeln!(
                        f,
                        "mount {} at offset {} on {} with {} (ro,nosuid,nodev)",
                        image.display(),
                        offset,
                        at.display(),
                        if library.is_empty() {
                            program.clone()
                        } else {
                            format!("{library} in a forked berth (else {program})")
                        }
                    )?
                }
                Step::Image { mount: ImageMount::Directory { path }, at } => writeln!(
                    f,
                    "bind directory image {} on {} (ro,nosuid,nodev)",
                    path.display(),
                    at.display()
                )?,
                Step::Overlay { at, persistent: None, .. } => {
                    writeln!(f, "overlay (tmpfs upper) on {} as the new root", at.display())?
                }
                Step::Overlay { at, persistent: Some(k), .. } => writeln!(
                    f,
                    "overlay (kept upper {}, work {}; {}) on {} as the new root",
                    crate::overlay::upper(&k.dir).display(),
                    crate::overlay::work(&k.dir).display(),
                    match k.via {
                        crate::config::OverlayMount::Auto => "kernel overlayfs, else fuse-overlayfs",
                        crate::config::OverlayMount::Kernel => "kernel overlayfs",
                        crate::config::OverlayMount::Fuse => "fuse-overlayfs",
                    },
                    at.display()
                )?,
                Step::Dev { nodes, dirs } => writeln!(
                    f,
                    "minimal /dev: {} nodes, {} dirs ({})",
                    nodes.len(),
                    dirs.len(),
                    nodes.iter().chain(dirs).map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
                )?,
                Step::Bind { src, dst, readonly, why, .. } => writeln!(
                    f,
                    "bind {} -> {} ({}nosuid,nodev) [{}]",
                    src.display(),
                    dst.display(),
                    if *readonly { "ro," } else { "" },
                    why
                )?,
                Step::Inject { plan } => {
                    writeln!(
                        f,
                        "host injection (mpi: {:?}, nvidia: {}, rocm: {}), after checking the image:",
                        plan.mpi, plan.nvidia, plan.rocm
                    )?;
                    for (i, lent) in plan.binds() {
                        writeln!(
                            f,
                            "        bind {} -> {} [{}{}]",
                            i.host_path.display(),
                            i.container_path.display(),
                            i.why,
                            if lent { "; if the image can run them" } else { "" }
                        )?;
                    }
                    for r in &plan.mpi_replace {
                        writeln!(
                            f,
                            "        host MPI {} over the image's {}",
                            r.host_path.display(),
                            r.soname
                        )?;
                    }
                    for n in &plan.notes {
                        writeln!(f, "        note: {n}")?;
                    }
                }
                Step::UserDb { dst, entries } => {
                    let lines: Vec<&str> = entries.iter().map(|(_, line)| line.as_str()).collect();
                    writeln!(f, "{}: image's entries + {:?}", dst.display(), lines)?
                }
                Step::OwnFile { dst, .. } => writeln!(f, "{}: berth's, read-only", dst.display())?,
                Step::ReadonlyRoot => writeln!(f, "make the root read-only")?,
                Step::PivotRoot => writeln!(f, "pivot_root into the new root, detach the host's")?,
            }
        }
        writeln!(
            f,
            "env: {} host variables passed; then the image's environment; then:",
            self.env.host.len()
        )?;
        for (k, v) in &self.env.overrides {
            writeln!(f, "  {k}={v}")?;
        }
        for d in &self.env.ld_library_path_prepend {
            writeln!(f, "  LD_LIBRARY_PATH first: {}", d.display())?;
        }
        for d in &self.env.path_append {
            writeln!(f, "  PATH last: {}", d.display())?;
        }
        writeln!(
            f,
            "workdir: {}{}",
            self.workdir.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", else "),
            if self.workdir_required { " (required)" } else { "" }
        )?;
        match &self.action {
            Action::Exec(argv) => writeln!(f, "exec: {argv:?}"),
            Action::Run(args) => writeln!(f, "run: the image's runscript with {args:?}"),
            Action::Shell => writeln!(f, "shell: an interactive shell"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::Format;

    pub(crate) fn fake_kind(p: &Path) -> Option<PathKind> {
        let s = p.to_str().unwrap();
        if s.ends_with(".txt")
            || s.starts_with("/etc/")
            || s.starts_with("/dev/") && !s.ends_with("pts") && !s.ends_with("shm")
        {
            return Some(PathKind::File);
        }
        if s.contains("missing") || s == "/dev/mqueue" || s == "/dev/hugepages" {
            return None;
        }
        Some(PathKind::Dir)
    }

    pub(crate) fn facts() -> HostFacts {
        HostFacts {
            user: UserInfo {
                uid: 1001,
                gid: 1001,
                name: "alice".into(),
                home: "/home/alice".into(),
                shell: "/bin/bash".into(),
            },
            group: "physics".into(),
            cwd: Some("/scratch/alice/run1".into()),
            env: vec![
                ("PATH".into(), "/host/bin".into()),
                ("TERM".into(), "xterm".into()),
                ("SLURM_JOB_ID".into(), "7".into()),
                ("MYVAR".into(), "1".into()),
                ("BERTH_ENV_FOO".into(), "bar".into()),
                ("LD_LIBRARY_PATH".into(), "/host/lib".into()),
            ],
            path_kind: fake_kind,
        }
    }

    pub(crate) fn sqfs_image() -> Image {
        Image {
            path: "/images/app.sif".into(),
            format: Format::Sif,
            root: RootFs::Embedded { fs: FsType::Squashfs, offset: 4096, size: 1 << 20 },
            file_size: 2 << 20,
            partitions: vec![],
            embedded_objects: vec![],
            squashfs: None,
            ext3: None,
            sif: None,
        }
    }

    fn binds(p: &Plan) -> Vec<(String, String)> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind { src, dst, .. } => Some((src.display().to_string(), dst.display().to_string())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn default_plan_order_and_binds() {
        let req = Request::new("app.sif".into(), Action::Exec(vec!["true".into()]));
        let p = plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        assert!(matches!(p.steps[0], Step::Staging { .. }));
        match &p.steps[1] {
            Step::Image { mount: ImageMount::Squashfuse { offset, image, .. }, .. } => {
                assert_eq!(*offset, 4096);
                assert_eq!(image, Path::new("/images/app.sif"));
            }
            s => panic!("unexpected {s:?}"),
        }
        assert!(matches!(p.steps[2], Step::Overlay { .. }));
        let b = binds(&p);
        let dsts: Vec<&str> = b.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(
            dsts,
            [
                "/proc",
                "/sys",
                "/tmp",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/etc/localtime",
                "/home/alice",
                "/scratch/alice/run1"
            ]
        );
        assert!(matches!(p.steps[p.steps.len() - 2], Step::ReadonlyRoot));
        assert!(matches!(p.steps.last(), Some(Step::PivotRoot)));
        assert_eq!(p.workdir, vec![PathBuf::from("/scratch/alice/run1"), "/home/alice".into(), "/".into()]);
        assert!(!p.workdir_required);
    }

    #[test]
    fn user_entries_come_from_the_host_facts_only() {
        let req = Request::new("app.sif".into(), Action::Shell);
        let p = plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        let entries: Vec<(String, Vec<String>)> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::UserDb { dst, entries } => Some((
                    dst.display().to_string(),
                    entries.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("/etc/passwd".into(), vec!["alice:x:1001:1001:alice:/home/alice:/bin/sh".into()]),
                ("/etc/group".into(), vec!["physics:x:1001:".into()])
            ]
        );
    }

    #[test]
    fn cwd_under_home_or_system_dir_is_not_bound_again() {
        let req = Request::new("app.sif".into(), Action::Shell);
        let mut f = facts();
        f.cwd = Some("/home/alice/proj".into());
        let p = plan(&req, &sqfs_image(), &Config::default(), &f, None).unwrap();
        assert_eq!(binds(&p).iter().filter(|(s, _)| s.starts_with("/home")).count(), 1);
        f.cwd = Some("/usr/share".into());
        let p = plan(&req, &sqfs_image(), &Config::default(), &f, None).unwrap();
        assert!(!binds(&p).iter().any(|(s, _)| s == "/usr/share"));
    }

    #[test]
    fn user_and_site_binds_follow_defaults_and_need_sources() {
        let mut cfg = Config::default();
        cfg.binds.site = vec!["/lustre:/scratch".into()];
        let mut req = Request::new("app.sif".into(), Action::Shell);
        req.binds = BindSpec::parse_list("/data:/in:ro,rel.txt:/etc/app.conf").unwrap();
        let p = plan(&req, &sqfs_image(), &cfg, &facts(), None).unwrap();
        let b = binds(&p);
        let n = b.len();
        assert_eq!(b[n - 3], ("/lustre".into(), "/scratch".into()));
        assert_eq!(b[n - 2], ("/data".into(), "/in".into()));
        assert_eq!(b[n - 1], ("/scratch/alice/run1/rel.txt".into(), "/etc/app.conf".into()));

        req.binds = BindSpec::parse_list("/missing/dir:/x").unwrap();
        let e = plan(&req, &sqfs_image(), &cfg, &facts(), None).unwrap_err().to_string();
        assert!(e.contains("/missing/dir does not exist"), "{e}");
    }

    #[test]
    fn no_home_and_writable() {
        let mut req = Request::new("app.sif".into(), Action::Shell);
        req.mount_home = false;
        req.writable_tmpfs = true;
        let mut f = facts();
        f.cwd = None;
        let p = plan(&req, &sqfs_image(), &Config::default(), &f, None).unwrap();
        assert!(!binds(&p).iter().any(|(s, _)| s == "/home/alice"));
        assert!(!p.steps.iter().any(|s| matches!(s, Step::ReadonlyRoot)));
        assert_eq!(p.workdir, vec![PathBuf::from("/")]);
    }

    #[test]
    fn overlay_dir_is_the_kept_writable_layer_and_excludes_writable_tmpfs() {
        let mut req = Request::new("app.sif".into(), Action::Shell);
        req.overlay = Some("ovl".into());
        let p = plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        match &p.steps[2] {
            Step::Overlay { persistent, .. } => assert_eq!(
                persistent.as_ref().map(|k| k.dir.as_path()),
                Some(Path::new("/scratch/alice/run1/ovl"))
            ),
            s => panic!("unexpected {s:?}"),
        }
        assert!(p.writable && !p.steps.iter().any(|s| matches!(s, Step::ReadonlyRoot)));
        assert!(p.to_string().contains("kept upper /scratch/alice/run1/ovl/upper"), "{p}");
        req.writable_tmpfs = true;
        let e = plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap_err().to_string();
        assert!(e.contains("--overlay with --writable-tmpfs"), "{e}");
    }

    #[test]
    fn remap_root_is_carried_and_shown() {
        let mut req = Request::new("app.sif".into(), Action::Shell);
        let p = plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        assert!(!p.remap_root && p.to_string().contains("mapped to itself"));
        req.remap_root = true;
        let p = plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        assert!(p.remap_root);
        assert!(p.to_string().contains("(uid 1001, gid 1001), appears as uid 0, gid 0 inside"), "{p}");
    }

    #[test]
    fn env_rules() {
        let mut req = Request::new("app.sif".into(), Action::Shell);
        req.env = vec![("FOO".into(), "cli".into())];
        let p = plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        let host: Vec<&str> = p.env.host.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(host, ["TERM", "SLURM_JOB_ID", "MYVAR", "USER", "LOGNAME", "HOME"]);
        let ov = &p.env.overrides;
        let foo: Vec<&str> = ov.iter().filter(|(k, _)| k == "FOO").map(|(_, v)| v.as_str()).collect();
        assert_eq!(foo, ["bar", "cli"], "BERTH_ENV_FOO then --env, later wins");

        req.cleanenv = true;
        let p = plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        let host: Vec<&str> = p.env.host.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(host, ["TERM", "SLURM_JOB_ID", "USER", "LOGNAME", "HOME"]);
    }

    #[test]
    fn explicit_workdir_is_required_and_absolute() {
        let mut req = Request::new("app.sif".into(), Action::Shell);
        req.workdir = Some("/work".into());
        let p = plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        assert_eq!((p.workdir.clone(), p.workdir_required), (vec![PathBuf::from("/work")], true));
        req.workdir = Some("work".into());
        assert!(plan(&req, &sqfs_image(), &Config::default(), &facts(), None).is_err());
    }

    #[test]
    fn ext3_refused_unprivileged() {
        let mut img = sqfs_image();
        img.root = RootFs::Embedded { fs: FsType::Ext3, offset: 31, size: 100 };
        let req = Request::new("old.img".into(), Action::Shell);
        let e = plan(&req, &img, &Config::default(), &facts(), None).unwrap_err().to_string();
        assert!(e.contains("ext3") && e.contains("privileged"), "{e}");
    }
}
