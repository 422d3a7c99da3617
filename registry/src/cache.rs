//! A content-addressed blob cache: `blobs/sha256/<hex>` under `$BERTH_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/berth`, else `~/.cache/berth`. A blob enters the cache only after its digest
//! was checked (written to a temporary file in the same directory, then renamed), and is
//! checked again before each use, so the cache never hands out a bad blob.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub struct BlobCache {
    pub root: PathBuf,
}

/// A blob on its way into the cache: a temp file and the hash of what was written so far.
pub struct Incoming {
    pub file: tempfile::NamedTempFile,
    pub hasher: Sha256,
    pub written: u64,
    _guard: Option<crate::cleanup::Registered>,
}

impl Incoming {
    pub fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)?;
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Start over (a server that ignored a range request sends the whole blob again).
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.file.as_file().set_len(0)?;
        use std::io::Seek;
        self.file.as_file_mut().seek(std::io::SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, as `sha256:<hex>`.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(&h.finalize())))
}

impl BlobCache {
    pub fn default_root() -> PathBuf {
        if let Some(d) = std::env::var_os("BERTH_CACHE_DIR").filter(|d| !d.is_empty()) {
            return d.into();
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Path::new(&d).join("berth");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        Path::new(&home).join(".cache/berth")
    }

    pub fn new(root: impl Into<PathBuf>) -> Self {
        BlobCache { root: root.into() }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir().join(digest.trim_start_matches("sha256:"))
    }

    /// The cached blob, verified; a blob that fails verification is removed.
    pub fn get(&self, digest: &str) -> Option<PathBuf> {
        let p = self.path(digest);
        if !p.is_file() {
            return None;
        }
        match file_digest(&p) {
            Ok(d) if d == digest => Some(p),
            _ => {
                let _ = std::fs::remove_file(&p);
                None
            }
        }
    }

    pub fn begin(&self) -> Result<Incoming> {
        let dir = self.dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("cache {}", dir.display()), e))?;
        // Downloads killed outright before now left their partial files unlocked.
        crate::cleanup::sweep_prefix(&dir, ".partial-");
        loop {
            let file = tempfile::Builder::new()
                .prefix(".partial-")
                .tempfile_in(&dir)
                .map_err(|e| Error::io(format!("cache {}", dir.display()), e))?;
            let guard = crate::cleanup::register(file.path());
            if crate::cleanup::hold(file.as_file(), file.path()) {
                return Ok(Incoming { file, hasher: Sha256::new(), written: 0, _guard: guard });
            }
        }
    }

    /// Check the digest of what was written and move it into place; a mismatch leaves nothing.
    pub fn commit(&self, inc: Incoming, digest: &str, what: &str) -> Result<PathBuf> {
        let got = format!("sha256:{}", hex(&inc.hasher.clone().finalize()));
        if got != digest {
            return Err(Error::new(
                what,
                format!("digest mismatch: expected {digest}, received {got} ({} bytes)", inc.written),
                "the registry (or something between) served corrupt data; nothing was kept",
            ));
        }
        let dest = self.path(digest);
        let _ = inc.file.as_file().set_permissions(std::fs::Permissions::from_mode(0o600));
        inc.file.persist(&dest).map_err(|e| Error::io(format!("cache {}", dest.display()), e.error))?;
        Ok(dest)
    }

    /// `(digest, size)` of every cached blob.
    pub fn list(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(self.dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name.starts_with('.') {
                    return None;
                }
                Some((format!("sha256:{name}"), e.metadata().ok()?.len()))
            })
            .collect();
        v.sort();
        v
    }

    /// Remove every cached blob (and leftovers of interrupted downloads); returns (files, bytes).
    pub fn clean(&self) -> Result<(usize, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for e in std::fs::read_dir(self.dir()).into_iter().flatten().flatten() {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(e.path())
                .map_err(|err| Error::io(format!("cache {}", e.path().display()), err))?;
            n += 1;
            bytes += len;
        }
        Ok((n, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_in_and_out() {
        let t = tempfile::tempdir().unwrap();
        let c = BlobCache::new(t.path());
        let good = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"; // "hello"
        let mut inc = c.begin().unwrap();
        inc.write(b"hellx").unwrap();
        let e = c.commit(inc, good, "blob").unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(c.list().is_empty(), "a bad blob must not enter the cache");
        assert_eq!(std::fs::read_dir(c.dir()).unwrap().count(), 0, "no partial file left");
        let mut inc = c.begin().unwrap();
        inc.write(b"hello").unwrap();
        let p = c.commit(inc, good, "blob").unwrap();
        assert_eq!(c.get(good), Some(p.clone()));
        assert_eq!(c.list(), vec![(good.to_string(), 5)]);
        // Corrupted on disk: not handed out, and removed.
        std::fs::write(&p, b"HELLO").unwrap();
        assert_eq!(c.get(good), None);
        assert!(!p.exists());
        let mut inc = c.begin().unwrap();
        inc.write(b"hello").unwrap();
        c.commit(inc, good, "blob").unwrap();
        assert_eq!(c.clean().unwrap(), (1, 5));
        assert!(c.list().is_empty());
    }
}
