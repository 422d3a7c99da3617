//! Image references: `docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`, Docker Hub short names
//! (`ubuntu:22.04`, `user/app`), and the local sources `oci:DIR[:TAG]`, `oci-archive:FILE`,
//! `docker-archive:FILE`.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Docker Hub's canonical name and the host its API answers on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]` as written (Docker Hub: `docker.io`).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// The host the registry API is reached on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifest endpoint for: the digest when pinned, else the tag.
    pub fn reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// A file name for the converted image: `REPO-LAST_TAG.sqsh`.
    pub fn default_file_name(&self) -> String {
        let base = self.repository.rsplit('/').next().unwrap_or("image");
        let tag = match (&self.tag, &self.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => d.trim_start_matches("sha256:").chars().take(12).collect(),
            (None, None) => "latest".into(),
        };
        format!("{base}_{tag}.sqsh")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Registry(ImageRef),
    /// An OCI image layout directory, with an optional tag (`org.opencontainers.image.ref.name`).
    OciDir(PathBuf, Option<String>),
    OciArchive(PathBuf),
    DockerArchive(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Registry(r) => r.fmt(f),
            Source::OciDir(p, None) => write!(f, "oci:{}", p.display()),
            Source::OciDir(p, Some(t)) => write!(f, "oci:{}:{t}", p.display()),
            Source::OciArchive(p) => write!(f, "oci-archive:{}", p.display()),
            Source::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
        }
    }
}

fn bad(input: &str, reason: &str) -> Error {
    Error::new(
        format!("image reference {input:?}"),
        reason,
        "write docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST], a Docker Hub name (ubuntu:22.04), \
         oci:DIR, oci-archive:FILE or docker-archive:FILE",
    )
}

/// A sha256 digest as the OCI spec writes it.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn valid_repo(r: &str) -> bool {
    !r.is_empty()
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        })
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && t.as_bytes()[0] != b'.'
        && t.as_bytes()[0] != b'-'
}

/// Parse a registry reference (with or without `docker://`).
pub fn parse_image_ref(input: &str) -> Result<ImageRef> {
    let s = input.strip_prefix("docker://").unwrap_or(input);
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            if !valid_digest(d) {
                return Err(bad(input, "the digest must be sha256: followed by 64 lowercase hex digits"));
            }
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // The first component is a registry when it looks like a host: a dot, a port, or localhost.
    let (registry, path) = match rest.split_once('/') {
        Some((first, tail)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_string(), tail.to_string())
        }
        _ => (DOCKER_HUB.to_string(), rest.to_string()),
    };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), Some(t.to_string())),
        _ => (path, None),
    };
    if registry.is_empty() || registry.contains(|c: char| c.is_whitespace() || c == '#' || c == '?') {
        return Err(bad(input, "the registry host is not valid"));
    }
    if let Some(t) = &tag {
        if !valid_tag(t) {
            return Err(bad(input, "a tag is letters, digits, '.', '_' and '-' (at most 128)"));
        }
    }
    let repo = if registry == DOCKER_HUB && !repo.contains('/') { format!("library/{repo}") } else { repo };
    if !valid_repo(&repo) {
        return Err(bad(input, "a repository name is lowercase letters, digits, '.', '_', '-' and '/'"));
    }
    let tag = if tag.is_none() && digest.is_none() { Some("latest".into()) } else { tag };
    Ok(ImageRef { registry, repository: repo, tag, digest })
}

/// Parse any source berth can convert from.
pub fn parse_source(input: &str) -> Result<Source> {
    if let Some(rest) = input.strip_prefix("oci:") {
        // `oci:DIR:TAG`: the tag is after the last ':' when what precedes it is a directory.
        if let Some((dir, tag)) = rest.rsplit_once(':') {
            if !tag.contains('/') && std::path::Path::new(dir).is_dir() {
                return Ok(Source::OciDir(dir.into(), Some(tag.into())));
            }
        }
        if rest.is_empty() {
            return Err(bad(input, "oci: needs a directory"));
        }
        return Ok(Source::OciDir(rest.into(), None));
    }
    if let Some(rest) = input.strip_prefix("oci-archive:") {
        return Ok(Source::OciArchive(rest.into()));
    }
    if let Some(rest) = input.strip_prefix("docker-archive:") {
        return Ok(Source::DockerArchive(rest.into()));
    }
    if input.contains("://") && !input.starts_with("docker://") {
        return Err(bad(input, "only docker:// is a registry transport"));
    }
    parse_image_ref(input).map(Source::Registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ImageRef {
        parse_image_ref(s).unwrap()
    }

    #[test]
    fn docker_hub_short_names() {
        let x = r("ubuntu");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()),
            ("docker.io", "library/ubuntu", Some("latest"))
        );
        assert_eq!(x.api_host(), "registry-1.docker.io");
        let x = r("docker://nvidia/cuda:12.2.0-base");
        assert_eq!((x.repository.as_str(), x.tag.as_deref()), ("nvidia/cuda", Some("12.2.0-base")));
    }

    #[test]
    fn hosts_ports_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let x = r(&format!("docker://127.0.0.1:5000/hpc/app@{d}"));
        assert_eq!(x.registry, "127.0.0.1:5000");
        assert_eq!(x.repository, "hpc/app");
        assert_eq!(x.tag, None);
        assert_eq!(x.reference(), d);
        let x = r("nvcr.io/hpc/gromacs:2023.2");
        assert_eq!((x.registry.as_str(), x.tag.as_deref()), ("nvcr.io", Some("2023.2")));
        let x = r("localhost/app");
        assert_eq!(x.registry, "localhost");
        assert_eq!(x.to_string(), "docker://localhost/app:latest");
        assert_eq!(x.default_file_name(), "app_latest.sqsh");
    }

    #[test]
    fn bad_references() {
        for s in ["docker://Host/UPPER", "ubuntu@sha256:abc", "a/b:bad tag", "docker://h.io/", "http://x/y"] {
            let e = parse_source(s).unwrap_err();
            assert!(e.to_string().contains("image reference"), "{s}: {e}");
        }
    }

    #[test]
    fn local_sources() {
        assert_eq!(parse_source("oci-archive:/tmp/a.tar").unwrap(), Source::OciArchive("/tmp/a.tar".into()));
        assert_eq!(parse_source("docker-archive:x.tar").unwrap(), Source::DockerArchive("x.tar".into()));
        let t = tempfile::tempdir().unwrap();
        let s = format!("oci:{}:v1", t.path().display());
        assert_eq!(parse_source(&s).unwrap(), Source::OciDir(t.path().into(), Some("v1".into())));
    }
}
