//! Reader (and, for tests and fake host trees, writer) of glibc's `/etc/ld.so.cache`.
//!
//! Layout (glibc `sysdeps/generic/dl-cache.h`, `ldconfig.h`), little-endian on the machines we
//! care about:
//! - optional old format: `"ld.so-1.7.0"` (11 bytes, padded to 12), `u32 nlibs`, then `nlibs`
//!   entries of `(i32 flags, u32 key, u32 value)`; glibc stopped writing it in 2.32 but older
//!   images and hosts still carry it in front of the new one;
//! - new format, 8-byte aligned after the old one: `"glibc-ld.so.cache1.1"` (20 bytes),
//!   `u32 nlibs`, `u32 len_strings`, `u8 flags`, 3 pad, `u32 extension_offset`, `3 x u32` unused
//!   (48 bytes), then `nlibs` entries of `(i32 flags, u32 key, u32 value, u32 osversion,
//!   u64 hwcap)` (24 bytes). Strings of the new format are offsets from the start of the new
//!   header; those of the old format are offsets from the end of the old entry array.
//!
//! `flags` says which ABI a library is for: the low byte is the type (3 = ELF libc6), the high
//! byte the architecture (`FLAG_X8664_LIB64` 0x0300, `FLAG_AARCH64_LIB64` 0x0a00), so an x86-64
//! library has 0x0303 and an aarch64 one 0x0a03, while plain 0x0003 is e.g. i386 in `/lib32`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const NEW_HEADER_LEN: usize = 48;
const NEW_ENTRY_LEN: usize = 24;
const OLD_ENTRY_LEN: usize = 12;

pub(crate) const FLAG_ELF_LIBC6: i32 = 0x0003;
pub(crate) const FLAG_X8664_LIB64: i32 = 0x0300;
pub(crate) const FLAG_AARCH64_LIB64: i32 = 0x0a00;

/// Entries whose hwcap has this bit set live in a `glibc-hwcaps/<name>/` subdirectory and are
/// chosen by the loader only on CPUs that qualify; we prefer the baseline entry.
const HWCAP_EXTENSION_BIT: u64 = 1 << 62;

/// The CPU architectures berth injects for. Other architectures are refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture berth itself was built for (the host's, in practice).
    pub(crate) fn native() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The `flags` value ldconfig writes for a library of this architecture.
    pub(crate) fn cache_flags(self) -> i32 {
        match self {
            Arch::X86_64 => FLAG_X8664_LIB64 | FLAG_ELF_LIBC6,
            Arch::Aarch64 => FLAG_AARCH64_LIB64 | FLAG_ELF_LIBC6,
        }
    }

    /// ELF `e_machine` of this architecture.
    pub(crate) fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => goblin::elf::header::EM_X86_64,
            Arch::Aarch64 => goblin::elf::header::EM_AARCH64,
        }
    }

    /// The Debian/Ubuntu multiarch triplet, used for the standard library directories.
    pub(crate) fn triplet(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }

    /// Standard library directories, in the order a glibc system searches them when the cache
    /// does not know a name (multiarch first, then the RPM-style lib64, then plain lib).
    pub(crate) fn default_lib_dirs(self) -> Vec<PathBuf> {
        let t = self.triplet();
        vec![
            PathBuf::from(format!("/lib/{t}")),
            PathBuf::from(format!("/usr/lib/{t}")),
            PathBuf::from("/lib64"),
            PathBuf::from("/usr/lib64"),
            PathBuf::from("/lib"),
            PathBuf::from("/usr/lib"),
        ]
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86-64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// One line of `ldconfig -p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheEntry {
    pub flags: i32,
    /// The SONAME (or, for development symlinks, the file name such as `libz.so`).
    pub name: String,
    /// The path as written by ldconfig: absolute on the system the cache describes.
    pub path: PathBuf,
    pub hwcap: u64,
}

/// A parsed ld.so.cache, entries in file order (ldconfig sorts them the way the loader prefers).
#[derive(Debug, Clone, Default)]
pub struct LdCache {
    pub(crate) entries: Vec<CacheEntry>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// Largest ld.so.cache read. Real ones are well under 1 MiB even with thousands of libraries;
/// an image's cache is the image author's, so its size must not decide berth's memory.
pub(crate) const MAX_CACHE_FILE: u64 = 8 << 20;
/// Most entries taken from a cache (a distribution's has a few thousand).
pub(crate) const MAX_CACHE_ENTRIES: usize = 1 << 16;
/// Longest name or path in an entry (PATH_MAX): the terminating NUL is looked for this far only,
/// so that entries pointing into one huge unterminated string cost nothing quadratic.
const MAX_CACHE_STRING: usize = 4096;
/// Most bytes of names and paths kept from one cache (entries may share strings on disk).
const MAX_CACHE_STRINGS_TOTAL: usize = 8 << 20;

fn c_string_at(b: &[u8], off: usize) -> Option<String> {
    let rest = b.get(off..)?;
    let window = &rest[..rest.len().min(MAX_CACHE_STRING)];
    let end = window.iter().position(|&c| c == 0)?;
    String::from_utf8(window[..end].to_vec()).ok()
}

impl LdCache {
    /// Parse the bytes of an ld.so.cache. The error says what is wrong, for a message that
    /// the caller prefixes with the file name.
    pub fn parse(bytes: &[u8]) -> Result<LdCache, String> {
        let truncated = || "truncated file".to_string();
        let mut new_start = None;
        let mut old = None;
        if bytes.starts_with(NEW_MAGIC) {
            new_start = Some(0);
        } else if bytes.starts_with(OLD_MAGIC) {
            let nlibs = u32_at(bytes, 12).ok_or_else(truncated)? as usize;
            let entries_end =
                nlibs.checked_mul(OLD_ENTRY_LEN).and_then(|n| n.checked_add(16)).ok_or_else(truncated)?;
            // The new format follows, aligned to 8 bytes, if this cache has one.
            let aligned = (entries_end + 7) & !7;
            if bytes.get(aligned..).is_some_and(|r| r.starts_with(NEW_MAGIC)) {
                new_start = Some(aligned);
            } else {
                old = Some((nlibs, entries_end));
            }
        } else {
            return Err("not an ld.so.cache (unknown magic)".into());
        }

        let mut entries = Vec::new();
        let too_many = |n: usize| format!("{n} entries (more than {MAX_CACHE_ENTRIES}): not a real cache");
        let mut kept = 0usize;
        let mut keep = |e: CacheEntry, entries: &mut Vec<CacheEntry>| {
            kept += e.name.len() + e.path.as_os_str().len();
            if kept > MAX_CACHE_STRINGS_TOTAL {
                return Err(format!("names and paths of more than {MAX_CACHE_STRINGS_TOTAL} bytes"));
            }
            entries.push(e);
            Ok(())
        };
        if let Some(base) = new_start {
            let b = &bytes[base..];
            let nlibs = u32_at(b, 20).ok_or_else(truncated)? as usize;
            if nlibs > MAX_CACHE_ENTRIES {
                return Err(too_many(nlibs));
            }
            for i in 0..nlibs {
                let off = NEW_HEADER_LEN + i * NEW_ENTRY_LEN;
                let flags = u32_at(b, off).ok_or_else(truncated)? as i32;
                let key = u32_at(b, off + 4).ok_or_else(truncated)? as usize;
                let value = u32_at(b, off + 8).ok_or_else(truncated)? as usize;
                let hwcap = u64_at(b, off + 16).ok_or_else(truncated)?;
                let name = c_string_at(b, key).ok_or_else(|| format!("entry {i}: bad name offset {key}"))?;
                let path =
                    c_string_at(b, value).ok_or_else(|| format!("entry {i}: bad path offset {value}"))?;
                keep(CacheEntry { flags, name, path: PathBuf::from(path), hwcap }, &mut entries)?;
            }
        } else if let Some((nlibs, strings)) = old {
            if nlibs > MAX_CACHE_ENTRIES {
                return Err(too_many(nlibs));
            }
            for i in 0..nlibs {
                let off = 16 + i * OLD_ENTRY_LEN;
                let flags = u32_at(bytes, off).ok_or_else(truncated)? as i32;
                let key = u32_at(bytes, off + 4).ok_or_else(truncated)? as usize;
                let value = u32_at(bytes, off + 8).ok_or_else(truncated)? as usize;
                let name =
                    c_string_at(bytes, strings + key).ok_or_else(|| format!("entry {i}: bad name offset"))?;
                let path = c_string_at(bytes, strings + value)
                    .ok_or_else(|| format!("entry {i}: bad path offset"))?;
                keep(CacheEntry { flags, name, path: PathBuf::from(path), hwcap: 0 }, &mut entries)?;
            }
        }
        Ok(LdCache { entries })
    }

    /// Read and parse `path`.
    pub fn load(path: &Path) -> crate::Result<LdCache> {
        use std::io::Read;
        let io_err = |e| crate::Error::io("cannot read the library cache", path, e);
        let file = std::fs::File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        let mut bytes = Vec::new();
        // Read one byte past the cap, so that a file growing after the fstat is caught too.
        file.take(MAX_CACHE_FILE + 1).read_to_end(&mut bytes).map_err(io_err)?;
        if size > MAX_CACHE_FILE || bytes.len() as u64 > MAX_CACHE_FILE {
            return Err(crate::Error::inject(
                format!("library cache {}", path.display()),
                format!(
                    "{} bytes, more than the {MAX_CACHE_FILE} an ld.so.cache can sensibly hold",
                    size.max(bytes.len() as u64)
                ),
                "run ldconfig to rebuild it",
            ));
        }
        LdCache::parse(&bytes).map_err(|why| {
            crate::Error::inject(
                format!("library cache {}", path.display()),
                why,
                "run ldconfig to rebuild it",
            )
        })
    }

    /// The path of `soname` for `arch`, as the loader would pick it: the first baseline entry,
    /// else the first `glibc-hwcaps` one.
    pub(crate) fn lookup(&self, soname: &str, arch: Arch) -> Option<&Path> {
        let matching = || self.entries.iter().filter(|e| e.name == soname && e.flags == arch.cache_flags());
        matching()
            .find(|e| e.hwcap & HWCAP_EXTENSION_BIT == 0)
            .or_else(|| matching().next())
            .map(|e| e.path.as_path())
    }

    /// All entries for `arch` whose name starts with `prefix` (e.g. every `libcuda.so*`).
    pub(crate) fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
        arch: Arch,
    ) -> impl Iterator<Item = &'a CacheEntry> + 'a {
        self.entries.iter().filter(move |e| e.flags == arch.cache_flags() && e.name.starts_with(prefix))
    }
}

/// Write a new-format cache holding `entries` (name, path, flags). glibc's loader and
/// `ldconfig -p` read it; tests use it to describe fake host trees without running ldconfig
/// (which needs root for `-r`).
pub fn write_cache(entries: &[(String, PathBuf, i32)]) -> Vec<u8> {
    let strings_start = NEW_HEADER_LEN + entries.len() * NEW_ENTRY_LEN;
    let mut strings: Vec<u8> = Vec::new();
    let mut table: Vec<u8> = Vec::new();
    for (name, path, flags) in entries {
        let key = strings_start + strings.len();
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
        let value = strings_start + strings.len();
        strings.extend_from_slice(path.as_os_str().as_encoded_bytes());
        strings.push(0);
        table.extend_from_slice(&flags.to_le_bytes());
        table.extend_from_slice(&(key as u32).to_le_bytes());
        table.extend_from_slice(&(value as u32).to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes()); // osversion
        table.extend_from_slice(&0u64.to_le_bytes()); // hwcap
    }
    let mut out = Vec::with_capacity(strings_start + strings.len());
    out.extend_from_slice(NEW_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // flags (0: endianness unknown, accepted) + padding
    out.extend_from_slice(&[0u8; 16]); // extension offset + unused
    out.extend_from_slice(&table);
    out.extend_from_slice(&strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries that all point at one long string, or more entries than any real cache has:
    /// an error after bounded work, not gigabytes of copies.
    #[test]
    fn crafted_caches_are_refused_in_bounded_work() {
        let n = 60_000usize;
        let strings = NEW_HEADER_LEN + n * NEW_ENTRY_LEN;
        let mut b = NEW_MAGIC.to_vec();
        b.extend_from_slice(&(n as u32).to_le_bytes());
        b.resize(NEW_HEADER_LEN, 0);
        for _ in 0..n {
            for v in [0x303u32, strings as u32, strings as u32, 0] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&0u64.to_le_bytes());
        }
        b.resize(b.len() + 4095, b'a');
        b.push(0);
        let err = LdCache::parse(&b).unwrap_err();
        assert!(err.contains("more than"), "{err}");
        b[NEW_MAGIC.len()..NEW_MAGIC.len() + 4].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(LdCache::parse(&b).unwrap_err().contains("entries"));
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("ld.so.cache");
        std::fs::File::create(&big).unwrap().set_len(MAX_CACHE_FILE + 1).unwrap();
        assert!(LdCache::load(&big).unwrap_err().to_string().contains("more than"));
    }
    use std::process::Command;

    /// `ldconfig -p` lines: `\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1`.
    fn ldconfig_p() -> Option<Vec<(String, String, String)>> {
        let out = Command::new("ldconfig")
            .arg("-p")
            .output()
            .or_else(|_| Command::new("/sbin/ldconfig").arg("-p").output())
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        Some(
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let (left, path) = l.trim().split_once(" => ")?;
                    let (name, abi) = left.split_once(' ')?;
                    Some((name.to_string(), abi.to_string(), path.to_string()))
                })
                .collect(),
        )
    }

    #[test]
    fn inject_ldcache_real_cache_matches_ldconfig_p() {
        let Some(arch) = Arch::native() else { return };
        let Ok(cache) = LdCache::load(Path::new("/etc/ld.so.cache")) else {
            eprintln!("skipped: no /etc/ld.so.cache");
            return;
        };
        let Some(lines) = ldconfig_p() else {
            eprintln!("skipped: no ldconfig");
            return;
        };
        assert_eq!(cache.entries.len(), lines.len(), "same number of entries as ldconfig -p");
        let abi = match arch {
            Arch::X86_64 => "(libc6,x86-64",
            Arch::Aarch64 => "(libc6,AArch64",
        };
        for soname in ["libc.so.6", "libz.so.1"] {
            let expected = lines
                .iter()
                .find(|(n, a, _)| n == soname && a.starts_with(abi))
                .map(|(_, _, p)| PathBuf::from(p));
            assert_eq!(cache.lookup(soname, arch).map(Path::to_path_buf), expected, "{soname}");
        }
        // Every entry agrees with ldconfig -p on name and path, in order.
        for (e, (n, _, p)) in cache.entries.iter().zip(&lines) {
            assert_eq!((&e.name, e.path.to_str().unwrap()), (n, p.as_str()));
        }
    }

    #[test]
    fn inject_ldcache_writer_round_trips_and_filters_arch() {
        let entries = vec![
            ("libfoo.so.1".to_string(), PathBuf::from("/lib32/libfoo.so.1"), FLAG_ELF_LIBC6),
            ("libfoo.so.1".to_string(), PathBuf::from("/usr/lib64/libfoo.so.1"), Arch::X86_64.cache_flags()),
            (
                "libfoo.so.1".to_string(),
                PathBuf::from("/usr/lib/aarch64-linux-gnu/libfoo.so.1"),
                Arch::Aarch64.cache_flags(),
            ),
        ];
        let cache = LdCache::parse(&write_cache(&entries)).unwrap();
        assert_eq!(cache.lookup("libfoo.so.1", Arch::X86_64), Some(Path::new("/usr/lib64/libfoo.so.1")));
        assert_eq!(
            cache.lookup("libfoo.so.1", Arch::Aarch64),
            Some(Path::new("/usr/lib/aarch64-linux-gnu/libfoo.so.1"))
        );
        assert_eq!(cache.lookup("libbar.so.1", Arch::X86_64), None);
    }

    #[test]
    fn inject_ldcache_writer_output_is_read_by_glibc_ldconfig() {
        let Ok(probe) = Command::new("ldconfig").arg("--version").output() else { return };
        if !probe.status.success() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ld.so.cache");
        let entries = vec![(
            "libfake.so.7".to_string(),
            PathBuf::from("/opt/x/libfake.so.7"),
            Arch::X86_64.cache_flags(),
        )];
        std::fs::write(&path, write_cache(&entries)).unwrap();
        let out = Command::new("ldconfig").arg("-p").arg("-C").arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("1 libs found")
                && text.contains("libfake.so.7 (libc6,x86-64) => /opt/x/libfake.so.7"),
            "{text}"
        );
    }

    #[test]
    fn inject_ldcache_old_format_prefix_is_skipped() {
        // An old-format header with one entry, padded to 8, then a new-format cache.
        let mut bytes = b"ld.so-1.7.0\0".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        while bytes.len() & 7 != 0 {
            bytes.push(0);
        }
        let new = write_cache(&[("libz.so.1".into(), PathBuf::from("/lib/libz.so.1"), 0x303)]);
        bytes.extend_from_slice(&new);
        let cache = LdCache::parse(&bytes).unwrap();
        assert_eq!(cache.lookup("libz.so.1", Arch::X86_64), Some(Path::new("/lib/libz.so.1")));
    }

    #[test]
    fn inject_ldcache_garbage_is_an_error_not_a_panic() {
        assert!(LdCache::parse(b"hello").unwrap_err().contains("magic"));
        let mut cut = write_cache(&[("libz.so.1".into(), PathBuf::from("/lib/libz.so.1"), 0x303)]);
        cut.truncate(60);
        assert!(LdCache::parse(&cut).is_err());
        // A huge count must not make us allocate or loop forever.
        let mut huge = NEW_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.resize(NEW_HEADER_LEN, 0);
        assert!(LdCache::parse(&huge).is_err());
    }
}
