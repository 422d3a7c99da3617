//! Finding host libraries by SONAME the way the host's loader would, and their `DT_NEEDED`
//! closure, inside a root prefix ("/" in production, a fake tree in tests).
//!
//! Paths come in two flavours here: *logical* paths are absolute paths as seen on the system
//! being described (what ld.so.cache and symlinks say, e.g. `/usr/lib/x86_64-linux-gnu/libz.so.1`)
//! and *rooted* paths are where that file is for this process (`root` joined with the logical
//! path). Symlinks are followed with absolute targets taken relative to the root, so a fake
//! tree or a mounted image can never lead us to the real host's files.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use super::elf::{read_elf, ElfFacts};
use super::ldcache::{Arch, LdCache};
use crate::error::{Error, Result};

/// SONAMEs of glibc itself. The image brings its own (they must match its loader), so they
/// are never injected and stop the closure walk.
pub(crate) const GLIBC_CORE: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libmvec.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libresolv.so.2",
    "libutil.so.1",
    "libanl.so.1",
    "libnsl.so.1",
    "libBrokenLocale.so.1",
    "libthread_db.so.1",
    "libc_malloc_debug.so.0",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
    "ld-linux.so.2",
];

pub(crate) fn is_glibc_core(soname: &str) -> bool {
    GLIBC_CORE.contains(&soname)
}

pub(crate) use crate::rootpath::rooted;

/// Resolve every symlink in logical `path` inside `root`; returns the logical path of the
/// final object. A dangling link gives `NotFound`, a loop an error.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    crate::rootpath::resolve(root, path, crate::rootpath::Missing::Fail)
}

/// A host library found by SONAME.
#[derive(Debug, Clone)]
pub(crate) struct FoundLib {
    /// The SONAME asked for (and the name it gets in the container).
    pub soname: String,
    /// Logical path the cache or directory gave (often a symlink), for messages.
    pub listed: PathBuf,
    /// Logical path of the real file after following symlinks.
    pub real: PathBuf,
    /// `root` + `real`: what to bind.
    pub rooted: PathBuf,
    pub facts: ElfFacts,
}

/// Looks libraries up in a root the way its loader would: site directories first, then its
/// ld.so.cache, then the standard directories.
pub(crate) struct LibResolver {
    pub root: PathBuf,
    pub arch: Arch,
    pub cache: Option<LdCache>,
    /// Logical directories searched before the cache.
    pub extra_dirs: Vec<PathBuf>,
    /// Map library files rather than read them (the host's own, not an image's).
    pub map_files: bool,
}

impl LibResolver {
    /// A resolver for `root`, reading `root/etc/ld.so.cache` if there is one. A missing cache is
    /// not an error (minimal images have none); an unreadable or corrupt one is.
    pub(crate) fn new(root: &Path, arch: Arch, extra_dirs: Vec<PathBuf>) -> Result<LibResolver> {
        // An image's /etc/ld.so.cache may be a symlink; follow it inside the root.
        let cache = match resolve_in_root(root, Path::new("/etc/ld.so.cache")) {
            Ok(logical) if rooted(root, &logical).is_file() => Some(LdCache::load(&rooted(root, &logical))?),
            _ => None,
        };
        Ok(LibResolver { root: root.to_path_buf(), arch, cache, extra_dirs, map_files: false })
    }

    /// Candidate logical paths for `soname`, in search order: the needing library's own
    /// RUNPATH, the site's directories, the cache, the standard directories.
    fn candidates(&self, soname: &str, first: &[PathBuf]) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = first.iter().chain(&self.extra_dirs).map(|d| d.join(soname)).collect();
        if let Some(p) = self.cache.as_ref().and_then(|c| c.lookup(soname, self.arch)) {
            out.push(p.to_path_buf());
        }
        out.extend(self.arch.default_lib_dirs().into_iter().map(|d| d.join(soname)));
        out
    }

    /// Find `soname`. `Ok(None)`: not on this system. Errors: a broken symlink or an unreadable
    /// file where the library should be (the message names both ends of the link).
    pub(crate) fn find(&self, soname: &str) -> Result<Option<FoundLib>> {
        self.find_from(soname, &[])
    }

    /// Like [`find`](Self::find), searching the logical directories `first` before anything else.
    pub(crate) fn find_from(&self, soname: &str, first: &[PathBuf]) -> Result<Option<FoundLib>> {
        for listed in self.candidates(soname, first) {
            if let Some(found) = self.try_path(soname, &listed)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Look at one logical path: `Ok(None)` if nothing is there or it is for another
    /// architecture (the loader skips those too).
    pub(crate) fn try_path(&self, soname: &str, listed: &Path) -> Result<Option<FoundLib>> {
        let at = rooted(&self.root, listed);
        let Ok(meta) = std::fs::symlink_metadata(&at) else { return Ok(None) };
        let real = match resolve_in_root(&self.root, listed) {
            Ok(r) => r,
            Err(e) => {
                let target = std::fs::read_link(&at).map(|t| t.display().to_string()).unwrap_or_default();
                let what = if meta.file_type().is_symlink() {
                    format!("host library {soname}: {} -> {target} is a broken symlink", listed.display())
                } else {
                    format!("host library {soname}: {}", listed.display())
                };
                return Err(Error::inject(
                    what,
                    e.to_string(),
                    "the host installation is damaged: reinstall the package that owns it, or run ldconfig",
                ));
            }
        };
        let rooted_real = rooted(&self.root, &real);
        if !rooted_real.is_file() {
            return Ok(None);
        }
        let facts = read_elf(&rooted_real, self.map_files)?;
        if facts.machine != self.arch.elf_machine() || !facts.is_64 {
            return Ok(None);
        }
        Ok(Some(FoundLib {
            soname: soname.to_string(),
            listed: listed.to_path_buf(),
            real,
            rooted: rooted_real,
            facts,
        }))
    }

    /// The `DT_NEEDED` closure of `roots` (not including them), without the glibc core and
    /// without anything in `skip`. Needed libraries the host does not have are reported in the
    /// returned notes: the image may still provide them.
    pub(crate) fn closure(
        &self,
        roots: &[FoundLib],
        skip: &BTreeSet<String>,
    ) -> Result<(Vec<FoundLib>, Vec<String>)> {
        let mut seen: BTreeSet<String> = skip.clone();
        seen.extend(roots.iter().map(|r| r.soname.clone()));
        seen.extend(roots.iter().filter_map(|r| r.facts.soname.clone()));
        // (needing library, its RUNPATH directories, needed SONAME)
        let mut queue: VecDeque<(String, Vec<PathBuf>, String)> = VecDeque::new();
        for r in roots {
            let dirs = search_dirs(r);
            queue.extend(r.facts.needed.iter().map(|n| (r.soname.clone(), dirs.clone(), n.clone())));
        }
        let mut found = Vec::new();
        let mut notes = Vec::new();
        while let Some((parent, dirs, name)) = queue.pop_front() {
            if is_glibc_core(&name) || !seen.insert(name.clone()) {
                continue;
            }
            match self.find_from(&name, &dirs)? {
                Some(lib) => {
                    let dirs = search_dirs(&lib);
                    queue.extend(lib.facts.needed.iter().map(|n| (name.clone(), dirs.clone(), n.clone())));
                    found.push(lib);
                }
                None => notes.push(format!(
                    "host {parent} needs {name}, which the host does not have; the image must provide it"
                )),
            }
        }
        Ok((found, notes))
    }
}

/// A library's RUNPATH/RPATH as logical directories, `$ORIGIN` being its own directory.
fn search_dirs(lib: &FoundLib) -> Vec<PathBuf> {
    let origin = lib.real.parent().unwrap_or(Path::new("/")).to_string_lossy().to_string();
    lib.facts
        .search_paths
        .iter()
        .map(|p| PathBuf::from(p.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin)))
        .filter(|p| p.is_absolute())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn inject_resolve_in_root_keeps_absolute_links_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/libx.so.1.2"), b"x").unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/usr/lib/libx.so.1.2", root.join("usr/lib/libx.so.1")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/lib/libx.so.1")).unwrap(),
            PathBuf::from("/usr/lib/libx.so.1.2")
        );
        symlink("../../../../../etc/passwd", root.join("usr/lib/escape")).unwrap();
        // `..` at the root stays at the root, so this is <root>/etc/passwd, which does not exist.
        assert_eq!(
            resolve_in_root(root, Path::new("/usr/lib/escape")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, Path::new("/loop")).is_err());
    }

    #[test]
    fn inject_closure_of_libz_excludes_glibc() {
        let Some(arch) = Arch::native() else { return };
        let r = LibResolver::new(Path::new("/"), arch, vec![]).unwrap();
        let Some(z) = r.find("libz.so.1").unwrap() else { return };
        let (deps, _) = r.closure(&[z], &BTreeSet::new()).unwrap();
        assert!(deps.iter().all(|d| !is_glibc_core(&d.soname)), "{deps:?}");
    }
}
