//! Site configuration: `/etc/berth/berth.toml` (`BERTH_CONFIG` overrides).
//!
//! Every key has a default, so no file is needed. Unknown keys are rejected (a typo in a
//! security setting must not be silently ignored) and errors name `file:line`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Per-user state (holders, staging mount point). `{uid}` is replaced by the user's uid.
    pub state_dir: String,
    /// The FUSE SquashFS server (multithreaded `squashfuse_ll`).
    pub squashfuse: String,
    /// Default mount mode; `privileged` is honoured only in a root context.
    pub mount_mode: MountMode,
    /// Seconds a container set up by `berth exec`/`run` stays mounted after its last process
    /// ends, so that the next identical run (same image, options, directory) joins it instead
    /// of mounting and decompressing again. 0 turns this off.
    pub keep_warm_seconds: u64,
    pub binds: BindsConfig,
    pub env: EnvConfig,
    pub privileged: PrivilegedConfig,
    /// Host MPI / fabric / NVIDIA injection.
    pub inject: crate::inject::InjectConfig,
    pub registry: RegistryConfig,
}

/// Images named by registry reference (`docker://...`, pyxis' `REG#IMG`), converted once per
/// digest by the front ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Where converted images are kept, one subdirectory per user (`<cache_dir>/<uid>/`): on
    /// a filesystem every node shares, a job step converts once and its other nodes wait for
    /// that file. Unset: each user's own cache (`$BERTH_CACHE_DIR/images`, else
    /// `~/.cache/berth/images`).
    pub cache_dir: Option<PathBuf>,
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    pub insecure_hosts: Vec<String>,
}

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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// Host variables never passed into the container even without `--cleanenv`.
    pub block: Vec<String>,
    /// Host variables passed even with `--cleanenv` (besides the scheduler's own).
    pub keep: Vec<String>,
}

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
            state_dir: "/tmp/berth-{uid}".into(),
            squashfuse: "squashfuse_ll".into(),
            mount_mode: MountMode::Unprivileged,
            keep_warm_seconds: 10,
            binds: BindsConfig::default(),
            env: EnvConfig::default(),
            privileged: PrivilegedConfig::default(),
            inject: crate::inject::InjectConfig::default(),
            registry: RegistryConfig::default(),
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

impl Config {
    /// Load the configuration: `BERTH_CONFIG` if set, else the default path if it exists,
    /// else built-in defaults.
    pub fn load() -> Result<(Config, Option<PathBuf>)> {
        if let Some(p) = std::env::var_os("BERTH_CONFIG") {
            let p = PathBuf::from(p);
            return Ok((Self::load_file(&p)?, Some(p)));
        }
        let p = Path::new(DEFAULT_PATH);
        if p.exists() {
            return Ok((Self::load_file(p)?, Some(p.to_path_buf())));
        }
        Ok((Config::default(), None))
    }

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
        if !self.state_dir.starts_with('/') {
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
        if self.registry.cache_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(err("cache_dir", "[registry] cache_dir must be an absolute path".into()));
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

    /// The state directory for `uid`.
    pub fn state_dir_for(&self, uid: u32) -> PathBuf {
        PathBuf::from(self.state_dir.replace("{uid}", &uid.to_string()))
    }
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
        assert_eq!(Config::default().state_dir_for(1001), PathBuf::from("/tmp/berth-1001"));
    }
}
