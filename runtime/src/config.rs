//! Site configuration: `/etc/berth/berth.toml` (`BERTH_CONFIG` overrides).
//!
//! Every key has a default, so no file is needed. Unknown keys are rejected (a typo in a
//! security setting must not be silently ignored) and errors name `file:line`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The site configuration file read when `BERTH_CONFIG` is not set.
pub const DEFAULT_PATH: &str = "/etc/berth/berth.toml";

/// How the image filesystem is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MountMode {
    /// User namespace + squashfuse_ll (default; works as any user).
    #[default]
    Unprivileged,
    /// Kernel squashfs on a loop device, only from a root context (slurmstepd, pbs_mom) and
    /// only for images the `[privileged]` limits allow.
    Privileged,
}

/// How `--overlay DIR` is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OverlayMount {
    /// The kernel's overlayfs in the user namespace (Linux 5.11 and later), else
    /// fuse-overlayfs when the kernel refuses.
    #[default]
    Auto,
    /// The kernel's overlayfs only.
    Kernel,
    /// fuse-overlayfs only.
    Fuse,
}

/// The site configuration (`berth.toml`); every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Per-user state (holders, staging mount point). `{uid}` is replaced by the user's uid.
    /// Empty (the default): chosen per user by `default_state_dir`, in places no other
    /// user can occupy first.
    pub state_dir: String,
    /// The FUSE SquashFS server program (`squashfuse_ll`): run when `squashfuse_library` is
    /// empty or cannot be loaded.
    pub squashfuse: String,
    /// squashfuse's low-level library, loaded in a forked berth process that serves the image
    /// instead of an exec'd `squashfuse` (one exec and its libraries less per cold start).
    /// Empty: always run the program.
    pub squashfuse_library: String,
    /// Default mount mode; `privileged` is honoured only in a root context.
    pub mount_mode: MountMode,
    /// How `--overlay DIR` is mounted.
    pub overlay_mount: OverlayMount,
    /// The FUSE overlay server for kernels without unprivileged overlayfs.
    pub fuse_overlayfs: String,
    /// Seconds a container set up by `berth exec`/`run` stays mounted after its last process
    /// ends, so that the next identical run (same image, options, directory) joins it instead
    /// of mounting and decompressing again. 0 turns this off.
    pub keep_warm_seconds: u64,
    /// `[binds]`: what every container gets from the host.
    pub binds: BindsConfig,
    /// `[env]`: which host variables pass into containers.
    pub env: EnvConfig,
    /// `[privileged]`: which images the kernel driver may mount.
    pub privileged: PrivilegedConfig,
    /// Host MPI / fabric / NVIDIA injection.
    pub inject: crate::inject::InjectConfig,
    /// The caller's `XDG_RUNTIME_DIR`, read once when the configuration is loaded (never by
    /// the planner), for the default state directory.
    #[serde(skip)]
    pub runtime_dir: Option<PathBuf>,
    /// Registry images: where they are converted, which registries speak plain HTTP.
    pub registry: RegistryConfig,
    /// `[named]`: where named containers (`--container-name`) keep their writable layers.
    pub named: NamedConfig,
}

/// `[named]` of the site configuration: the writable layers of named containers
/// (`--container-name`), which outlive their steps, and with `container_scope=global` their
/// job. Never in the state directory: on compute nodes that is `/run/berth/<uid>`, memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamedConfig {
    /// The directory each layer is made in (`{uid}` is replaced by the user's uid). Empty: the
    /// job's `TMPDIR` (its node-local scratch) for containers of one job, when that is an
    /// absolute path outside `/run` and `/dev/shm` and a directory of the user's or root's
    /// nobody else may write (or root's sticky one) on a local filesystem; else, and for
    /// `container_scope=global` (which outlives a per-job `TMPDIR`), `/var/tmp`.
    pub layers_dir: String,
    /// MiB that all of one user's named-container layers on a node may take (allocated
    /// blocks), checked each time a step opens a named container; 0: no limit.
    pub per_user_limit_mib: u64,
}

impl Default for NamedConfig {
    fn default() -> Self {
        NamedConfig { layers_dir: String::new(), per_user_limit_mib: 10240 }
    }
}

/// Images named by registry reference (`docker://...`, pyxis' `REG#IMG`), converted once per
/// digest by the front ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Where converted images are kept, one subdirectory per user (`<cache_dir>/<uid>/`): on
    /// a filesystem every node shares, a job step converts once and its other nodes wait for
    /// that file. Root's, mode 1777: a `<uid>` directory or file there that another user made
    /// or can write is refused. Unset: each user's own cache (`$BERTH_CACHE_DIR/images`, else
    /// `~/.cache/berth/images`).
    pub cache_dir: Option<PathBuf>,
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    pub insecure_hosts: Vec<String>,
    /// Token services (`https://host[:port]`, `http://host[:port]`; a bare host means https)
    /// that may receive a user's registry credentials although they are not the registry's own
    /// address. Without an entry, credentials go only to a token service at the registry's
    /// scheme, host and port (and Docker Hub's and GitLab.com's own): a realm on another host,
    /// or plain HTTP for an HTTPS registry, is refused.
    pub credential_realms: Vec<String>,
}

/// `[binds]` of the site configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BindsConfig {
    /// Bind `$HOME` (unless `--no-home`).
    pub home: bool,
    /// Bind the current directory.
    pub cwd: bool,
    /// Bind the host's `/tmp`.
    pub tmp: bool,
    /// Host files bound over the image's, if they exist on the host.
    pub host_files: Vec<String>,
    /// Site binds, same syntax as `--bind` (`src[:dst[:ro]]`). Destinations may be missing
    /// from the image (e.g. `/scratch`).
    pub site: Vec<String>,
}

/// `[env]` of the site configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// Host variables never passed into the container even without `--cleanenv`.
    pub block: Vec<String>,
    /// Host variables passed even with `--cleanenv` (besides the scheduler's own).
    pub keep: Vec<String>,
}

/// `[privileged]` of the site configuration: the limits on kernel mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivilegedConfig {
    /// Directories under which images may be mounted with the kernel driver.
    pub allowed_dirs: Vec<PathBuf>,
    /// Owners (user names) whose images may be mounted with the kernel driver.
    pub allowed_owners: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: String::new(),
            squashfuse: "squashfuse_ll".into(),
            squashfuse_library: "libsquashfuse_ll.so.0".into(),
            mount_mode: MountMode::Unprivileged,
            overlay_mount: OverlayMount::Auto,
            fuse_overlayfs: "fuse-overlayfs".into(),
            keep_warm_seconds: 10,
            binds: BindsConfig::default(),
            env: EnvConfig::default(),
            privileged: PrivilegedConfig::default(),
            inject: crate::inject::InjectConfig::default(),
            runtime_dir: None,
            registry: RegistryConfig::default(),
            named: NamedConfig::default(),
        }
    }
}

impl Default for BindsConfig {
    fn default() -> Self {
        BindsConfig {
            home: true,
            cwd: true,
            tmp: true,
            host_files: vec!["/etc/hosts".into(), "/etc/resolv.conf".into(), "/etc/localtime".into()],
            site: vec![],
        }
    }
}

impl Default for PrivilegedConfig {
    fn default() -> Self {
        PrivilegedConfig { allowed_dirs: vec![], allowed_owners: vec!["root".into()] }
    }
}

/// Whether squashfuse's `library` loads with every symbol berth's in-process server uses,
/// tried in a forked child (this process never maps it): None if so, else why not.
pub fn squashfuse_library_problem(library: &str) -> Option<String> {
    crate::sys::squashfuse_lib::check(library)
}

impl Config {
    /// Load the configuration: `BERTH_CONFIG` if set, else the default path if it exists,
    /// else built-in defaults.
    pub fn load() -> Result<(Config, Option<PathBuf>)> {
        let (mut cfg, path) = if let Some(p) = std::env::var_os("BERTH_CONFIG") {
            let p = PathBuf::from(p);
            (Self::load_file(&p)?, Some(p))
        } else if Path::new(DEFAULT_PATH).exists() {
            (Self::load_file(Path::new(DEFAULT_PATH))?, Some(PathBuf::from(DEFAULT_PATH)))
        } else {
            (Config::default(), None)
        };
        cfg.runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        Ok((cfg, path))
    }

    /// [`Config::load`] for a scheduler's job: the state directory must be the same for
    /// every part of the job (root side, holder, tasks, epilogue), whose environments differ,
    /// so the job's `XDG_RUNTIME_DIR` plays no part.
    pub fn load_for_job() -> Result<(Config, Option<PathBuf>)> {
        Self::load().map(|(mut c, p)| {
            c.runtime_dir = None;
            (c, p)
        })
    }

    /// Load the configuration file at `path` (which must exist).
    pub fn load_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            line: 0,
            msg: format!("cannot read: {e}"),
            hint: "BERTH_CONFIG names the file; unset it to use the defaults".into(),
        })?;
        Self::parse(&text, path)
    }

    /// Parse `text` (from `path`, for messages) and validate it.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            Error::Config {
                path: path.to_path_buf(),
                line,
                msg: e.message().trim().to_string(),
                hint: "see packaging/berth.toml for every key and its default".into(),
            }
        })?;
        cfg.validate(text, path)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<()> {
        let err = |key: &str, msg: String| Error::Config {
            path: path.to_path_buf(),
            line: text.lines().position(|l| l.trim_start().starts_with(key)).map(|i| i + 1).unwrap_or(0),
            msg,
            hint: String::new(),
        };
        if !self.state_dir.is_empty() && !self.state_dir.starts_with('/') {
            return Err(err(
                "state_dir",
                format!("state_dir must be an absolute path, not {:?}", self.state_dir),
            ));
        }
        if self.mount_mode == MountMode::Privileged && self.privileged.allowed_dirs.is_empty() {
            // Kernel drivers trust the image: the site must say which images it vetted.
            return Err(Error::Config {
                path: path.to_path_buf(),
                line: text.lines().position(|l| l.trim_start().starts_with("mount_mode")).map(|i| i + 1).unwrap_or(0),
                msg: "mount_mode = \"privileged\" needs [privileged] allowed_dirs (the directories of vetted images)".into(),
                hint: "add allowed_dirs = [\"/apps/images\"] under [privileged], or use mount_mode = \"unprivileged\"".into(),
            });
        }
        if !self.named.layers_dir.is_empty() && !self.named.layers_dir.starts_with('/') {
            return Err(err("layers_dir", "[named] layers_dir must be an absolute path".into()));
        }
        if self.registry.cache_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(err("cache_dir", "[registry] cache_dir must be an absolute path".into()));
        }
        for r in &self.registry.credential_realms {
            let rest = r.strip_prefix("https://").or_else(|| r.strip_prefix("http://")).unwrap_or(r);
            if rest.is_empty() || rest.contains("://") || rest.contains(char::is_whitespace) {
                return Err(err(
                    "credential_realms",
                    format!("[registry] credential_realms: {r:?} is not https://HOST[:PORT] or http://HOST[:PORT]"),
                ));
            }
        }
        if let Err((key, msg)) = self.inject.validate() {
            return Err(err(key, format!("[inject] {msg}")));
        }
        for spec in &self.binds.site {
            crate::request::BindSpec::parse(spec)
                .map_err(|e| err("site", format!("site bind {spec:?}: {e}")))?;
        }
        Ok(())
    }

    /// The state directory for `uid`: the site's `state_dir`, else [`default_state_dir`]
    /// (with this configuration's `XDG_RUNTIME_DIR`, which is the caller's).
    pub(crate) fn state_dir_for(&self, uid: u32) -> PathBuf {
        if self.state_dir.is_empty() {
            default_state_dir(uid, self.runtime_dir.as_deref())
        } else {
            PathBuf::from(self.state_dir.replace("{uid}", &uid.to_string()))
        }
    }
}

/// The root-owned directory under which the root side of a scheduler (the SPANK plugin in
/// slurmstepd, the PBS prologue) creates each job user's state directory.
pub(crate) const USER_STATE_ROOT: &str = "/run/berth";

/// The default state directory of `uid`, first of:
///
/// 1. `/run/berth/<uid>`, when root made it for the user (a directory owned by the user,
///    mode 0700, in a root-owned `/run/berth` nobody else may write): nobody else can create
///    or replace it;
/// 2. `<runtime_dir>/berth`, when `runtime_dir` (the user's `XDG_RUNTIME_DIR`, made by the
///    login manager) is a directory owned by the user with mode 0700;
/// 3. `/tmp/berth-<uid>`, unless another user has put something there first;
/// 4. then, for the user's own berth, `~/.local/state/berth/<host>` (home from the password
///    database, never from the environment), which only the user can create: berth says so
///    once per run, naming who holds `/tmp/berth-<uid>`. A root process acting for the user
///    never walks the user's home: it gets `/tmp/berth-<uid>`, which `ensure_state_dir`
///    refuses, naming the owner.
///
/// Only `lstat` is used: no symlink is followed, nothing is created.
pub(crate) fn default_state_dir(uid: u32, runtime_dir: Option<&Path>) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let private_dir = |p: &Path, owner: u32, mask: u32| {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == owner && m.mode() & mask == 0)
    };
    let root = Path::new(USER_STATE_ROOT);
    let mine = root.join(uid.to_string());
    if private_dir(root, 0, 0o022) && private_dir(&mine, uid, 0o077) {
        return mine;
    }
    if let Some(rt) = runtime_dir.filter(|d| d.is_absolute() && private_dir(d, uid, 0o077)) {
        return rt.join("berth");
    }
    let tmp = PathBuf::from(format!("/tmp/berth-{uid}"));
    let squatter = std::fs::symlink_metadata(&tmp).ok().map(|m| m.uid()).filter(|&owner| owner != uid);
    if let (Some(owner), Some(home)) = (squatter, home_state_dir(uid)) {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {owner}"), |u| format!("{} (uid {owner})", u.name));
            tracing::warn!(
                "{} belongs to {name}, not to you: using {} instead (ask an administrator to remove {0})",
                tmp.display(),
                home.display()
            );
        }
        return home;
    }
    tmp
}

/// `<home>/.local/state/berth/<host>` of `uid`, only when this process is that user (root
/// acting for a user does not walk the user's home); the host name keeps nodes that share a
/// home apart.
fn home_state_dir(uid: u32) -> Option<PathBuf> {
    // Real and effective: slurmstepd's user_init runs with the user's euid but is root.
    if nix::unistd::geteuid().as_raw() != uid || nix::unistd::getuid().as_raw() != uid {
        return None;
    }
    let home = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten()?.dir;
    let host = nix::unistd::gethostname().ok()?.to_string_lossy().replace('/', "_");
    (home.is_absolute() && !host.is_empty() && host != "." && host != "..")
        .then(|| home.join(".local/state/berth").join(host))
}

/// As root (the scheduler's root side): make `/run/berth/<uid>`, the user's own state
/// directory that no other user can occupy first, owned by `uid:gid`, mode 0700, in a
/// root-owned 0755 `/run/berth`. Nothing in either path is followed if it is a symlink, and
/// nothing anyone else made is accepted.
pub fn create_user_state_dir(uid: u32, gid: u32) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let root = Path::new(USER_STATE_ROOT);
    let check = |p: &Path, owner: u32, mode: u32| -> Result<()> {
        let m = std::fs::symlink_metadata(p).map_err(|e| Error::io("cannot stat", p, e))?;
        if !m.is_dir() || m.uid() != owner || m.mode() & 0o7777 != mode {
            return Err(Error::Io {
                what: "unexpected state directory".into(),
                path: p.to_path_buf(),
                source: std::io::Error::other(format!(
                    "must be a directory of uid {owner} with mode {mode:o} (it is {} of uid {} with mode {:o})",
                    if m.is_dir() { "a directory" } else { "not a directory" },
                    m.uid(),
                    m.mode() & 0o7777
                )),
                hint: format!("only root creates entries in {USER_STATE_ROOT}; remove it and try again"),
            });
        }
        Ok(())
    };
    match std::fs::DirBuilder::new().mode(0o755).create(root) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(Error::io("cannot create", root, e))
        }
        _ => {}
    }
    check(root, 0, 0o755)?;
    let dir = root.join(uid.to_string());
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {
            // Made by us just now, in a directory only root writes: safe to give away.
            nix::unistd::chown(
                &dir,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| Error::sys("chown", dir.display(), e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("cannot create", &dir, e)),
    }
    check(&dir, uid, 0o700)?;
    Ok(dir)
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_mounting_needs_vetted_directories() {
        let e = Config::parse("state_dir = \"/tmp/b\"\nmount_mode = \"privileged\"\n", Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.toml:2") && e.contains("allowed_dirs"), "{e}");
        let ok = Config::parse(
            "mount_mode = \"privileged\"\n[privileged]\nallowed_dirs = [\"/apps/images\"]\n",
            Path::new("b.toml"),
        )
        .unwrap();
        assert_eq!(ok.mount_mode, MountMode::Privileged);
    }

    #[test]
    fn registry_table() {
        let c = Config::parse(
            "[registry]\ncache_dir = \"/shared/img\"\ninsecure_hosts = [\"r:5000\"]\n",
            Path::new("b"),
        )
        .unwrap();
        assert_eq!(c.registry.cache_dir, Some(PathBuf::from("/shared/img")));
        assert_eq!(c.registry.insecure_hosts, ["r:5000"]);
        let e = Config::parse("[registry]\ncache_dir = \"img\"\n", Path::new("b")).unwrap_err().to_string();
        assert!(e.contains("b:2") && e.contains("absolute"), "{e}");
        let c = Config::parse("[registry]\ncredential_realms = [\"https://auth.r.io\"]\n", Path::new("b"))
            .unwrap();
        assert_eq!(c.registry.credential_realms, ["https://auth.r.io"]);
        let e = Config::parse("[registry]\ncredential_realms = [\"file:///x\"]\n", Path::new("b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("b:2") && e.contains("credential_realms"), "{e}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("", Path::new("x.toml")).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        let text = "state_dir = \"/run/berth\"\n\n[binds]\nhome = true\nscratch = [\"/scratch\"]\n";
        let e = Config::parse(text, Path::new("/etc/berth/berth.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("config /etc/berth/berth.toml:5:"), "{msg}");
        assert!(msg.contains("scratch"), "{msg}");
    }

    #[test]
    fn bad_site_bind_is_rejected() {
        let text = "[binds]\nsite = [\"/scratch:relative\"]\n";
        let msg = Config::parse(text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(msg.contains("c.toml:2"), "{msg}");
        assert!(msg.contains("absolute"), "{msg}");
    }

    #[test]
    fn shipped_example_is_exactly_the_defaults() {
        let text = include_str!("../../packaging/berth.toml");
        assert_eq!(Config::parse(text, Path::new("packaging/berth.toml")).unwrap(), Config::default());
    }

    #[test]
    fn state_dir_substitutes_uid() {
        let site = Config { state_dir: "/scratch/berth-{uid}".into(), ..Config::default() };
        assert_eq!(site.state_dir_for(1001), PathBuf::from("/scratch/berth-1001"));
    }

    #[test]
    fn default_state_dir_prefers_a_private_runtime_dir() {
        use std::os::unix::fs::PermissionsExt;
        // A uid no test user has: /run/berth/<uid> cannot exist.
        let uid = nix::unistd::getuid().as_raw();
        let t = tempfile::tempdir().unwrap();
        let rt = t.path().join("rt");
        std::fs::create_dir(&rt).unwrap();
        std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o700)).unwrap();
        let tmp = PathBuf::from(format!("/tmp/berth-{uid}"));
        if !Path::new(USER_STATE_ROOT).join(uid.to_string()).exists() {
            assert_eq!(default_state_dir(uid, Some(&rt)), rt.join("berth"));
            assert_eq!(default_state_dir(uid, None), tmp);
            // Someone else's runtime directory, or one others may enter, is not used.
            assert_eq!(
                default_state_dir(uid + 1, Some(&rt)),
                PathBuf::from(format!("/tmp/berth-{}", uid + 1))
            );
            std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(default_state_dir(uid, Some(&rt)), tmp);
            assert_eq!(default_state_dir(uid, Some(Path::new("relative"))), tmp);
        }
    }
}
