//! What berth needs to know about a shared library: its SONAME, what it needs (`DT_NEEDED`),
//! which glibc symbol versions it requires (`.gnu.version_r`) and, for an image's libc.so.6,
//! which it defines (`.gnu.version_d`).

use std::cmp::Ordering;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// A `GLIBC_x.y[.z]` symbol version, compared numerically (2.4 < 2.17 < 2.34).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GlibcVersion(pub Vec<u32>);

impl GlibcVersion {
    /// Parse `GLIBC_2.34` (or `2.34`); `GLIBC_PRIVATE` and other names give `None`.
    pub fn parse(name: &str) -> Option<GlibcVersion> {
        let v = name.strip_prefix("GLIBC_").unwrap_or(name);
        let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(GlibcVersion)
    }
}

impl Ord for GlibcVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        // Missing components count as 0, so 2.3 == 2.3.0.
        let n = self.0.len().max(other.0.len());
        (0..n)
            .map(|i| self.0.get(i).unwrap_or(&0).cmp(other.0.get(i).unwrap_or(&0)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for GlibcVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// The facts of one ELF shared object.
#[derive(Debug, Clone, Default)]
pub struct ElfFacts {
    pub machine: u16,
    pub is_64: bool,
    pub soname: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// The highest `GLIBC_x.y` this object needs from any glibc library.
    pub glibc_needed: Option<GlibcVersion>,
    /// The highest `GLIBC_x.y` this object defines (only libc.so.6 and friends define them).
    pub glibc_defined: Option<GlibcVersion>,
    /// `DT_RUNPATH` then `DT_RPATH` directories, as written (may contain `$ORIGIN`). Vendor
    /// stacks under /opt (HPC-X, Cray, Intel MPI) find their own libraries this way.
    pub search_paths: Vec<String>,
    /// Has a `PT_INTERP` or a dynamic section: a dynamically linked object.
    pub is_dynamic: bool,
}

/// Read the ELF facts of `path` (the real file; callers resolve symlinks first). `map`: map
/// the file instead of reading it (host files only, see [`crate::sys::mapped::Mapped`]).
pub fn read_elf(path: &Path, map: bool) -> Result<ElfFacts> {
    let facts = if map {
        let m =
            crate::sys::mapped::Mapped::open(path).map_err(|e| Error::io("cannot read library", path, e))?;
        parse_elf(&m)
    } else {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read library", path, e))?;
        parse_elf(&bytes)
    };
    facts.map_err(|why| {
        Error::inject(
            format!("library {}", path.display()),
            format!("not a usable ELF shared object: {why}"),
            "the file may be truncated or for another system; check the host installation",
        )
    })
}

/// Parse ELF facts from bytes. Errors are strings for the caller to wrap with a path.
pub fn parse_elf(bytes: &[u8]) -> std::result::Result<ElfFacts, String> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| e.to_string())?;
    let mut facts = ElfFacts {
        machine: elf.header.e_machine,
        is_64: elf.is_64,
        soname: elf.soname.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        is_dynamic: elf.dynamic.is_some() || elf.interpreter.is_some(),
        search_paths: elf
            .runpaths
            .iter()
            .chain(elf.rpaths.iter())
            .flat_map(|p| p.split(':'))
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        ..Default::default()
    };
    if let Some(verneed) = &elf.verneed {
        for need in verneed.iter() {
            for aux in need.iter() {
                let Some(name) = elf.dynstrtab.get_at(aux.vna_name) else { continue };
                if let Some(v) = GlibcVersion::parse(name).filter(|_| name.starts_with("GLIBC_")) {
                    raise(&mut facts.glibc_needed, v);
                }
            }
        }
    }
    if let Some(verdef) = &elf.verdef {
        for def in verdef.iter() {
            for aux in def.iter() {
                let Some(name) = elf.dynstrtab.get_at(aux.vda_name) else { continue };
                if let Some(v) = GlibcVersion::parse(name).filter(|_| name.starts_with("GLIBC_")) {
                    raise(&mut facts.glibc_defined, v);
                }
            }
        }
    }
    Ok(facts)
}

/// Keep the highest version seen.
fn raise(slot: &mut Option<GlibcVersion>, v: GlibcVersion) {
    *slot = Some(match slot.take() {
        Some(cur) if cur >= v => cur,
        _ => v,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_elf_glibc_versions_compare_numerically() {
        let v = |s| GlibcVersion::parse(s).unwrap();
        assert!(v("GLIBC_2.34") > v("GLIBC_2.4"));
        assert!(v("GLIBC_2.2.5") < v("GLIBC_2.3"));
        assert_eq!(v("2.3").cmp(&v("2.3.0")), Ordering::Equal);
        assert_eq!(GlibcVersion::parse("GLIBC_PRIVATE"), None);
        assert_eq!(v("GLIBC_2.34").to_string(), "2.34");
    }

    #[test]
    fn inject_elf_reads_host_libc_and_a_library_needing_it() {
        let Some(arch) = super::super::ldcache::Arch::native() else { return };
        let dirs = arch.default_lib_dirs();
        let Some(libc) = dirs.iter().map(|d| d.join("libc.so.6")).find(|p| p.exists()) else { return };
        let libc = std::fs::canonicalize(libc).unwrap();
        let facts = read_elf(&libc, true).unwrap();
        assert_eq!(facts.soname.as_deref(), Some("libc.so.6"));
        assert_eq!(facts.machine, arch.elf_machine());
        let defined = facts.glibc_defined.expect("libc defines GLIBC_ versions");
        assert!(defined >= GlibcVersion(vec![2, 17]), "{defined}");
        let Some(libz) = dirs.iter().map(|d| d.join("libz.so.1")).find(|p| p.exists()) else { return };
        let z = read_elf(&std::fs::canonicalize(libz).unwrap(), false).unwrap();
        assert!(z.needed.iter().any(|n| n == "libc.so.6"), "{:?}", z.needed);
        assert!(z.glibc_needed.unwrap() <= defined);
    }

    #[test]
    fn inject_elf_garbage_is_an_error() {
        assert!(parse_elf(b"\x7fELF garbage").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libnot.so.1");
        std::fs::write(&p, b"not elf at all").unwrap();
        let msg = read_elf(&p, false).unwrap_err().to_string();
        assert!(msg.contains("libnot.so.1") && msg.contains("ELF"), "{msg}");
    }
}
