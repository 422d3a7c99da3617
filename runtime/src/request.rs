//! What the user (or a scheduler frontend) asked for, before any host facts are looked at.
#![warn(missing_docs)]

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One bind: host `src` appears at `dst` in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindSpec {
    /// The host path.
    pub src: PathBuf,
    /// Where it appears in the container (absolute, no `..`).
    pub dst: PathBuf,
    /// Bound read-only.
    pub readonly: bool,
}

impl BindSpec {
    /// Parse `src[:dst[:ro|rw]]`, the syntax of `--bind`, `BERTH_BIND` and site binds.
    pub fn parse(spec: &str) -> std::result::Result<BindSpec, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, opts) = match parts.as_slice() {
            [s] => (*s, *s, None),
            [s, d] if matches!(*d, "ro" | "rw") => (*s, *s, Some(*d)),
            [s, d] => (*s, *d, None),
            [s, d, o] => (*s, *d, Some(*o)),
            _ => return Err("too many ':' (use src[:dst[:ro|rw]])".into()),
        };
        if src.is_empty() {
            return Err("empty source path".into());
        }
        let readonly = match opts {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(o) => return Err(format!("unknown option {o:?} (use ro or rw)")),
        };
        let dst = if dst.is_empty() { src } else { dst };
        check_container_path(Path::new(dst))?;
        Ok(BindSpec { src: PathBuf::from(src), dst: PathBuf::from(dst), readonly })
    }

    /// Parse a comma-separated list (`-B a,b:c`, `BERTH_BIND`, pyxis `--container-mounts`).
    pub fn parse_list(list: &str) -> Result<Vec<BindSpec>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                BindSpec::parse(s).map_err(|reason| {
                    Error::request(
                        format!("bind {s:?}"),
                        reason,
                        "the form is SRC[:DST[:ro|rw]] with absolute DST",
                    )
                })
            })
            .collect()
    }
}

/// A path inside the container must be absolute and must not climb with `..`.
pub fn check_container_path(p: &Path) -> std::result::Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("destination {} must be an absolute path", p.display()));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("destination {} must not contain '..'", p.display()));
    }
    Ok(())
}

/// What to run once inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "args")]
pub enum Action {
    /// `berth exec IMG CMD ARGS...`
    Exec(Vec<String>),
    /// `berth run IMG ARGS...`: the image's runscript with ARGS.
    Run(Vec<String>),
    /// `berth shell IMG`: an interactive shell.
    Shell,
}

/// A container request from any frontend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The image file or directory.
    pub image: PathBuf,
    /// What runs once inside.
    pub action: Action,
    /// User binds, in order (after the default and site binds).
    pub binds: Vec<BindSpec>,
    /// `--env K=V`, `BERTH_ENV_K=V`, in order; later wins.
    pub env: Vec<(String, String)>,
    /// Start from an empty host environment.
    pub cleanenv: bool,
    /// Working directory inside; default: the current directory, else `$HOME`, else `/`.
    pub workdir: Option<PathBuf>,
    /// Bind `$HOME` (site default unless `--no-home`).
    pub mount_home: bool,
    /// A throwaway writable layer over the image.
    pub writable_tmpfs: bool,
    /// `--overlay DIR`: the user's host directory as the writable layer over the image, kept
    /// after the run (`DIR/upper`, `DIR/work`); excludes `writable_tmpfs`.
    #[serde(default)]
    pub overlay: Option<PathBuf>,
    /// `--mpi=hybrid|host|none`; None: the site default.
    pub mpi: Option<crate::inject::MpiMode>,
    /// `--nv`: the host's NVIDIA driver stack and the job's GPUs.
    pub nvidia: bool,
    /// `--rocm`: the host's AMD GPU devices and ROCm libraries, the job's GPUs only.
    #[serde(default)]
    pub rocm: bool,
    /// Appear as uid/gid 0 inside (pyxis' `--container-remap-root`): the user namespace maps
    /// 0 to the user's own ids, so no privilege is gained outside.
    #[serde(default)]
    pub remap_root: bool,
}

impl Request {
    /// A request with the defaults: no binds of the user's, the host environment, `$HOME`
    /// bound, read-only image, the site's MPI model, no GPUs.
    pub fn new(image: PathBuf, action: Action) -> Self {
        Request {
            image,
            action,
            binds: vec![],
            env: vec![],
            cleanenv: false,
            workdir: None,
            mount_home: true,
            writable_tmpfs: false,
            overlay: None,
            mpi: None,
            nvidia: false,
            rocm: false,
            remap_root: false,
        }
    }
}

/// Parse `K=V` for `--env`.
pub fn parse_env_assignment(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if valid_env_name(k) => Ok((k.to_string(), v.to_string())),
        _ => Err(Error::request(
            format!("--env {s:?}"),
            "expected NAME=VALUE with NAME made of letters, digits and '_'",
            "",
        )),
    }
}

/// Whether `k` can name an environment variable (letters, digits, `_`, not starting with a digit).
pub fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_forms() {
        let b = BindSpec::parse("/data").unwrap();
        assert_eq!(
            (b.src.as_path(), b.dst.as_path(), b.readonly),
            (Path::new("/data"), Path::new("/data"), false)
        );
        let b = BindSpec::parse("/data:/in:ro").unwrap();
        assert_eq!((b.dst.as_path(), b.readonly), (Path::new("/in"), true));
        let b = BindSpec::parse("/data:ro").unwrap();
        assert_eq!((b.dst.as_path(), b.readonly), (Path::new("/data"), true));
        let b = BindSpec::parse("rel:/x").unwrap();
        assert_eq!(b.src, PathBuf::from("rel"));
    }

    #[test]
    fn bad_binds() {
        assert!(BindSpec::parse("/a:rel").unwrap_err().contains("absolute"));
        assert!(BindSpec::parse("/a:/x/../etc").unwrap_err().contains(".."));
        assert!(BindSpec::parse("/a:/b:rx").unwrap_err().contains("rx"));
        assert!(BindSpec::parse("/a:/b:ro:x").is_err());
        assert!(BindSpec::parse(":/b").is_err());
    }

    #[test]
    fn bind_list() {
        let l = BindSpec::parse_list("/a, /b:/c:ro,").unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[1].readonly);
        let e = BindSpec::parse_list("/a,/b:c").unwrap_err().to_string();
        assert!(e.contains("\"/b:c\""), "{e}");
    }

    #[test]
    fn env_assignment() {
        assert_eq!(parse_env_assignment("A_1=x=y").unwrap(), ("A_1".into(), "x=y".into()));
        assert!(parse_env_assignment("1A=x").is_err());
        assert!(parse_env_assignment("NOVALUE").is_err());
    }
}
