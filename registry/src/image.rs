//! Manifests, indexes and configs (the few fields berth needs), platform choice, and the
//! local sources: OCI layout directories, OCI archives and `docker save` archives.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::valid_digest;

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in OCI's names.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            "x86" => "386",
            "arm" => "arm",
            a => a,
        };
        Platform { architecture: arch.into(), os: "linux".into(), variant: None }
    }

    /// `OS/ARCH[/VARIANT]`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => Err(Error::new(
                format!("--platform {s:?}"),
                "expected OS/ARCH[/VARIANT]",
                "e.g. linux/amd64 or linux/arm64",
            )),
        }
    }

    fn matches(&self, p: &Platform) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && (self.variant.is_none() || p.variant == self.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    pub fn is_index(&self, content_type: &str) -> bool {
        !self.manifests.is_empty()
            || self.media_type.contains("index")
            || self.media_type.contains("manifest.list")
            || content_type.contains("index")
            || content_type.contains("manifest.list")
    }
}

pub fn parse_manifest(body: &[u8], what: &str) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(body)
        .map_err(|e| Error::new(what, format!("not an OCI/Docker manifest: {e}"), ""))?;
    if m.media_type.contains("manifest.v1") && m.config.is_none() {
        return Err(Error::new(
            what,
            "Docker schema 1 manifests are not supported",
            "push the image again with a current tool",
        ));
    }
    for d in m.layers.iter().chain(&m.config).chain(&m.manifests) {
        if !valid_digest(&d.digest) {
            return Err(Error::new(
                what,
                format!("unsupported or malformed digest {:?}", d.digest),
                "berth verifies sha256 digests",
            ));
        }
    }
    Ok(m)
}

/// Choose the index entry for `platform`.
pub fn choose<'a>(index: &'a Manifest, platform: &Platform, what: &str) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> =
        index.manifests.iter().filter(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p))).collect();
    // Prefer an exact variant match, else the first (the index's own order of preference).
    candidates
        .iter()
        .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_ref()) == platform.variant.as_ref())
        .or(candidates.first())
        .copied()
        .ok_or_else(|| {
            let have: Vec<String> =
                index.manifests.iter().filter_map(|d| d.platform.as_ref().map(|p| p.to_string())).collect();
            Error::new(
                what,
                format!("no image for {platform} (the index has: {})", have.join(", ")),
                "choose one with --platform OS/ARCH",
            )
        })
}

/// What a converted image is made of: its config and its layers, in order.
pub struct Resolved {
    pub config: serde_json::Value,
    pub layers: Vec<Layer>,
    /// The manifest's digest when known (registries, OCI layouts).
    pub digest: Option<String>,
}

pub struct Layer {
    /// Where to read it: a blob digest, or a member of an archive.
    pub key: String,
    /// Checked while reading when known.
    pub digest: Option<String>,
    pub media_type: String,
    pub size: u64,
}

/// Readable blobs of a local source.
pub enum Store {
    /// A directory with `blobs/sha256/...` (an OCI layout or the cache).
    Dir(PathBuf),
    /// A tar archive, opened once (every member is read from this descriptor, so the archive
    /// cannot be swapped between reads): member name -> (offset, size).
    Tar(PathBuf, std::sync::Arc<File>, HashMap<String, (u64, u64)>),
}

/// `size` bytes of a file from `off`, read by position (readers of one file share nothing).
struct Slice {
    file: std::sync::Arc<File>,
    off: u64,
    left: u64,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.off)?;
        self.off += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

fn norm_member(name: &str) -> String {
    name.trim_start_matches("./").trim_start_matches('/').to_string()
}

impl Store {
    pub fn open_tar(path: &Path) -> Result<Self> {
        let what = format!("archive {}", path.display());
        let f = std::sync::Arc::new(File::open(path).map_err(|e| Error::io(&what, e))?);
        // Members are found by reading the archive as a stream (never by unpacking it), with
        // its extension headers bounded as in a layer.
        let mut ar = tar::Archive::new(crate::flatten::HeaderGuard::new(Slice {
            file: f.clone(),
            off: 0,
            left: u64::MAX,
        }));
        let mut index = HashMap::new();
        let mut links = vec![];
        for e in ar.entries().map_err(|e| Error::new(&what, e.to_string(), "is it a tar file?"))? {
            let e = e.map_err(|e| crate::flatten::archive_error(&what, e))?;
            let name = norm_member(&String::from_utf8_lossy(&e.path_bytes()));
            if e.header().entry_type().is_file() {
                index.insert(name, (e.raw_file_position(), e.size()));
            } else if e.header().entry_type().is_symlink() {
                // skopeo's docker-archive links `ID/layer.tar` to the layer stored once.
                if let Some(t) = e.link_name_bytes() {
                    let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                    let target = dir.join(String::from_utf8_lossy(&t).as_ref());
                    links.push((name, target));
                }
            }
        }
        for (name, target) in links {
            let mut parts: Vec<String> = vec![];
            for c in target.components() {
                match c {
                    std::path::Component::ParentDir => {
                        parts.pop();
                    }
                    std::path::Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
                    _ => {}
                }
            }
            if let Some(&v) = index.get(&parts.join("/")) {
                index.insert(name, v);
            }
        }
        Ok(Store::Tar(path.to_path_buf(), f, index))
    }

    /// Open a blob by digest (`sha256:...`) or member name.
    pub fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let rel = if valid_digest(key) { format!("blobs/sha256/{}", &key[7..]) } else { norm_member(key) };
        match self {
            Store::Dir(d) => {
                use std::os::unix::fs::OpenOptionsExt;
                let p = d.join(&rel);
                // A blob that is a symlink is refused: what is read is the layout's own file
                // (root reads layouts for `berth build`), and it stays the file whose digest
                // was checked.
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&p)
                    .map_err(|e| Error::io(format!("blob {}", p.display()), e))?;
                Ok(Box::new(f))
            }
            Store::Tar(path, file, index) => {
                let &(off, size) = index.get(&rel).ok_or_else(|| {
                    Error::new(
                        format!("archive {}", path.display()),
                        format!("{rel} is missing"),
                        "the archive is incomplete",
                    )
                })?;
                Ok(Box::new(Slice { file: file.clone(), off, left: size }))
            }
        }
    }

    /// Whether the source has the member `name` (archives) or file `name` (directories).
    pub fn has(&self, name: &str) -> bool {
        match self {
            Store::Dir(d) => d.join(norm_member(name)).is_file(),
            Store::Tar(_, _, index) => index.contains_key(&norm_member(name)),
        }
    }

    pub fn read_small(&self, key: &str, what: &str) -> Result<Vec<u8>> {
        let mut v = vec![];
        self.open(key)?.take(8 << 20).read_to_end(&mut v).map_err(|e| Error::io(what.to_string(), e))?;
        if valid_digest(key) {
            use sha2::Digest;
            let got = format!("sha256:{}", crate::cache::hex(&sha2::Sha256::digest(&v)));
            if got != key {
                return Err(Error::new(
                    what,
                    format!("digest mismatch: expected {key}, found {got}"),
                    "the image is corrupt",
                ));
            }
        }
        Ok(v)
    }
}

fn layers_of(m: &Manifest) -> Vec<Layer> {
    m.layers
        .iter()
        .map(|d| Layer {
            key: d.digest.clone(),
            digest: Some(d.digest.clone()),
            media_type: d.media_type.clone(),
            size: d.size,
        })
        .collect()
}

/// Resolve an OCI layout (directory or archive) to one image.
pub fn resolve_oci(store: &Store, tag: Option<&str>, platform: &Platform, what: &str) -> Result<Resolved> {
    let index = parse_manifest(&store.read_small("index.json", what)?, what)?;
    let pick = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get("org.opencontainers.image.ref.name").map(String::as_str) == Some(t))
            .ok_or_else(|| Error::new(what, format!("no image tagged {t:?} in index.json"), ""))?,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => choose(&index, platform, what)?,
    };
    let mut desc = pick.clone();
    // Nested indexes (an image index inside index.json) resolve to the platform too.
    for _ in 0..4 {
        let body = store.read_small(&desc.digest, what)?;
        let m = parse_manifest(&body, what)?;
        if m.is_index(&desc.media_type) {
            desc = choose(&m, platform, what)?.clone();
            continue;
        }
        let cfg = m.config.as_ref().ok_or_else(|| Error::new(what, "the manifest has no config", ""))?;
        let config = serde_json::from_slice(&store.read_small(&cfg.digest, what)?)
            .map_err(|e| Error::new(what, format!("image config: {e}"), ""))?;
        return Ok(Resolved { config, layers: layers_of(&m), digest: Some(desc.digest.clone()) });
    }
    Err(Error::new(what, "indexes nested too deeply", ""))
}

/// Resolve a `docker save` archive (the first image in manifest.json).
pub fn resolve_docker_archive(store: &Store, what: &str) -> Result<Resolved> {
    let m: serde_json::Value =
        serde_json::from_slice(&store.read_small("manifest.json", what)?).map_err(|e| {
            Error::new(what, format!("manifest.json: {e}"), "make one with `docker save IMAGE -o FILE.tar`")
        })?;
    let first = &m[0];
    let cfg = first["Config"].as_str().ok_or_else(|| Error::new(what, "manifest.json lists no image", ""))?;
    let config = serde_json::from_slice(&store.read_small(cfg, what)?)
        .map_err(|e| Error::new(what, format!("image config: {e}"), ""))?;
    let layers = first["Layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .map(|l| {
            // Newer docker writes `blobs/sha256/HEX`: then the name is the digest, checked too.
            let digest =
                l.strip_prefix("blobs/sha256/").map(|h| format!("sha256:{h}")).filter(|d| valid_digest(d));
            Layer { key: l.to_string(), digest, media_type: String::new(), size: 0 }
        })
        .collect();
    Ok(Resolved { config, layers, digest: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(os: &str, arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: String::new(),
            digest: format!("sha256:{}", format!("{n:x}").repeat(64)),
            size: 1,
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
            annotations: HashMap::new(),
        }
    }

    #[test]
    fn platform_choice() {
        let idx = Manifest {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            config: None,
            layers: vec![],
            manifests: vec![
                desc("linux", "arm", Some("v6"), 1),
                desc("linux", "arm", Some("v7"), 2),
                desc("linux", "amd64", None, 3),
            ],
        };
        let p = Platform::parse("linux/amd64").unwrap();
        assert_eq!(choose(&idx, &p, "x").unwrap().digest, idx.manifests[2].digest);
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(choose(&idx, &p, "x").unwrap().digest, idx.manifests[1].digest);
        let e = choose(&idx, &Platform::parse("linux/s390x").unwrap(), "x").unwrap_err();
        assert!(e.to_string().contains("linux/amd64"), "{e}");
        assert!(Platform::parse("amd64").is_err());
    }
}
