//! What berth needs to know about a shared library: its SONAME, what it needs (`DT_NEEDED`),
//! which glibc symbol versions it requires (`.gnu.version_r`) and, for an image's libc.so.6,
//! which it defines (`.gnu.version_d`).

use std::cmp::Ordering;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A `GLIBC_x.y[.z]` symbol version, compared numerically (2.4 < 2.17 < 2.34).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GlibcVersion(pub Vec<u32>);

impl GlibcVersion {
    /// Parse `GLIBC_2.34` (or `2.34`); `GLIBC_PRIVATE` and other names give `None`.
    pub(crate) fn parse(name: &str) -> Option<GlibcVersion> {
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
pub(crate) struct ElfFacts {
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
///
/// Only the ELF header, the program headers, the dynamic section and the strings and version
/// entries it points to are read (a few kilobytes, as the dynamic loader does), never the whole
/// file: a library in an image is the image author's, and a sparse multi-gigabyte `libc.so.6`
/// must cost no more than a real one.
pub(crate) fn read_elf(path: &Path, map: bool) -> Result<ElfFacts> {
    let facts = if map {
        let m =
            crate::sys::mapped::Mapped::open(path).map_err(|e| Error::io("cannot read library", path, e))?;
        parse_elf(&m)
    } else {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: a FIFO where a library should be must not stop berth (callers check for
        // a regular file first, but the tree may change in between).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::io("cannot read library", path, e))?;
        let meta = file.metadata().map_err(|e| Error::io("cannot read library", path, e))?;
        if !meta.is_file() {
            Err("not a regular file".to_string())
        } else {
            parse_elf_from(&FileSource { file: &file, len: meta.len() })
        }
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
pub(crate) fn parse_elf(bytes: &[u8]) -> std::result::Result<ElfFacts, String> {
    parse_elf_from(&bytes)
}

/// Where ELF bytes come from: a buffer, or a file read at offsets.
trait Source {
    fn len(&self) -> u64;
    /// Up to `buf.len()` bytes at `offset`; fewer only at the end of the data.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<usize, String>;
}

impl Source for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<usize, String> {
        let Ok(start) = usize::try_from(offset) else { return Ok(0) };
        let rest = self.get(start..).unwrap_or(&[]);
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

struct FileSource<'a> {
    file: &'a std::fs::File,
    len: u64,
}

impl Source for FileSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<usize, String> {
        use std::os::unix::fs::FileExt;
        let mut filled = 0;
        while filled < buf.len() {
            match self.file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read error at byte {offset}: {e}")),
            }
        }
        Ok(filled)
    }
}

/// Largest dynamic section read (real ones hold a few dozen 16-byte entries).
const MAX_DYNAMIC: u64 = 1 << 20;
/// Longest string taken from the dynamic string table.
const MAX_STRING: usize = 4096;
/// Most version entries and auxiliary entries walked in all, so a cyclic or huge version
/// chain ends.
const MAX_VERSION_STEPS: usize = 1 << 14;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const DT_VERDEF: u64 = 0x6fff_fffc;
const DT_VERDEFNUM: u64 = 0x6fff_fffd;
const DT_VERNEED: u64 = 0x6fff_fffe;
const DT_VERNEEDNUM: u64 = 0x6fff_ffff;

/// Decoding state: class, byte order and the loaded segments (to turn addresses into offsets).
struct Elf<'s, S: Source + ?Sized> {
    src: &'s S,
    is_64: bool,
    big_endian: bool,
    /// (vaddr, file offset, file size) of each PT_LOAD.
    loads: Vec<(u64, u64, u64)>,
}

impl<S: Source + ?Sized> Elf<'_, S> {
    fn read(&self, offset: u64, len: usize, what: &str) -> std::result::Result<Vec<u8>, String> {
        // Checked before allocating: the length comes from the file.
        let fits = offset.checked_add(len as u64).is_some_and(|end| end <= self.src.len());
        let mut buf = if fits { vec![0u8; len] } else { vec![] };
        let n = if fits { self.src.read_at(offset, &mut buf)? } else { 0 };
        if n < len {
            return Err(format!(
                "truncated: {what} needs bytes {offset}..{} but the file has {}",
                offset.saturating_add(len as u64),
                self.src.len()
            ));
        }
        Ok(buf)
    }

    fn uint(&self, b: &[u8], at: usize, width: usize) -> u64 {
        let Some(bytes) = at.checked_add(width).and_then(|end| b.get(at..end)) else { return 0 };
        let mut v = 0u64;
        for i in 0..width {
            let byte = if self.big_endian { bytes[i] } else { bytes[width - 1 - i] };
            v = (v << 8) | u64::from(byte);
        }
        v
    }

    fn u16(&self, b: &[u8], at: usize) -> u64 {
        self.uint(b, at, 2)
    }
    fn u32(&self, b: &[u8], at: usize) -> u64 {
        self.uint(b, at, 4)
    }
    /// An address-sized field (`Elf64_Addr`/`Elf32_Addr`, offsets, sizes, `d_val`).
    fn word(&self, b: &[u8], at: usize) -> u64 {
        self.uint(b, at, if self.is_64 { 8 } else { 4 })
    }

    /// The file offset of virtual address `addr`, through the PT_LOAD segments.
    fn offset_of(&self, addr: u64) -> Option<u64> {
        self.loads.iter().find_map(|&(vaddr, offset, filesz)| {
            let rel = addr.checked_sub(vaddr)?;
            (rel < filesz).then(|| offset.checked_add(rel)).flatten()
        })
    }

    /// The NUL-terminated string at `index` of the string table at file offset `table`.
    fn string(&self, table: u64, size: u64, index: u64) -> Option<String> {
        if index >= size {
            return None;
        }
        let want = (size - index).min(MAX_STRING as u64) as usize;
        let mut buf = vec![0u8; want];
        let n = self.src.read_at(table.checked_add(index)?, &mut buf).ok()?;
        let end = buf[..n].iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
}

fn parse_elf_from<S: Source + ?Sized>(src: &S) -> std::result::Result<ElfFacts, String> {
    let mut ident = [0u8; 16];
    if src.read_at(0, &mut ident)? < 16 || &ident[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    let is_64 = match ident[4] {
        1 => false,
        2 => true,
        c => return Err(format!("unknown ELF class {c}")),
    };
    let big_endian = match ident[5] {
        1 => false,
        2 => true,
        d => return Err(format!("unknown ELF byte order {d}")),
    };
    let mut elf = Elf { src, is_64, big_endian, loads: vec![] };
    let header = elf.read(0, if is_64 { 64 } else { 52 }, "the ELF header")?;
    let machine = elf.u16(&header, 18) as u16;
    let (phoff, phentsize, phnum) = if is_64 {
        (elf.word(&header, 32), elf.u16(&header, 54), elf.u16(&header, 56))
    } else {
        (elf.word(&header, 28), elf.u16(&header, 42), elf.u16(&header, 44))
    };
    let min_phent = if is_64 { 56 } else { 32 };
    let mut facts = ElfFacts { machine, is_64, ..Default::default() };
    if phnum == 0 {
        return Ok(facts);
    }
    // Real entries are exactly 56 or 32 bytes; a few times that is tolerated, no more, so the
    // table read stays small.
    if phentsize < min_phent || phentsize > 4 * min_phent {
        return Err(format!("program header entries of {phentsize} bytes"));
    }
    // At most 65535 entries of a few dozen bytes: bounded by the field widths.
    let table = elf.read(phoff, (phentsize * phnum) as usize, "the program headers")?;
    let mut dynamic = None;
    for ph in table.chunks_exact(phentsize as usize) {
        let p_type = elf.u32(ph, 0) as u32;
        let (offset, vaddr, filesz) = if is_64 {
            (elf.word(ph, 8), elf.word(ph, 16), elf.word(ph, 32))
        } else {
            (elf.word(ph, 4), elf.word(ph, 8), elf.word(ph, 16))
        };
        match p_type {
            PT_LOAD => elf.loads.push((vaddr, offset, filesz)),
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            PT_INTERP => facts.is_dynamic = true,
            _ => {}
        }
    }
    let Some((dyn_offset, dyn_size)) = dynamic else { return Ok(facts) };
    facts.is_dynamic = true;
    let entry = if is_64 { 16 } else { 8 };
    let dyn_size = dyn_size.min(MAX_DYNAMIC).min(src.len().saturating_sub(dyn_offset));
    let raw = elf.read(dyn_offset, dyn_size as usize, "the dynamic section")?;
    let mut tags: Vec<(u64, u64)> = vec![];
    for d in raw.chunks_exact(entry) {
        let (tag, val) = (elf.word(d, 0), elf.word(d, entry / 2));
        if tag == DT_NULL {
            break;
        }
        tags.push((tag, val));
    }
    let first = |t: u64| tags.iter().find(|(tag, _)| *tag == t).map(|&(_, v)| v);
    let Some(strtab) = first(DT_STRTAB).and_then(|a| elf.offset_of(a)) else {
        return if tags.iter().any(|(t, _)| matches!(*t, DT_NEEDED | DT_SONAME)) {
            Err("the dynamic section has names but no string table".into())
        } else {
            Ok(facts)
        };
    };
    let strsz = first(DT_STRSZ).unwrap_or(0).min(src.len().saturating_sub(strtab));
    let string = |i: u64| elf.string(strtab, strsz, i);
    let mut runpaths = vec![];
    let mut rpaths = vec![];
    for &(tag, val) in &tags {
        match tag {
            DT_NEEDED => facts.needed.extend(string(val)),
            DT_SONAME if facts.soname.is_none() => facts.soname = string(val),
            DT_RUNPATH => runpaths.extend(string(val)),
            DT_RPATH => rpaths.extend(string(val)),
            _ => {}
        }
    }
    facts.search_paths = runpaths
        .iter()
        .chain(rpaths.iter())
        .flat_map(|p| p.split(':'))
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut steps = 0usize;
    let glibc_name = |name: Option<String>, slot: &mut Option<GlibcVersion>| {
        if let Some(name) = name.filter(|n| n.starts_with("GLIBC_")) {
            if let Some(v) = GlibcVersion::parse(&name) {
                raise(slot, v);
            }
        }
    };
    if let (Some(mut at), Some(count)) =
        (first(DT_VERNEED).and_then(|a| elf.offset_of(a)), first(DT_VERNEEDNUM))
    {
        // Elf_Verneed: version u16, cnt u16, file u32, aux u32, next u32 (16 bytes, both classes);
        // Elf_Vernaux: hash u32, flags u16, other u16, name u32, next u32.
        for _ in 0..count {
            steps += 1;
            let Ok(need) = elf.read(at, 16, "a version need") else { break };
            let (cnt, aux, next) = (elf.u16(&need, 2), elf.u32(&need, 8), elf.u32(&need, 12));
            let mut aux_at = at.saturating_add(aux);
            for _ in 0..cnt {
                steps += 1;
                if steps > MAX_VERSION_STEPS {
                    return Err("endless version need entries".into());
                }
                let Ok(a) = elf.read(aux_at, 16, "a version need entry") else { break };
                glibc_name(string(elf.u32(&a, 8)), &mut facts.glibc_needed);
                match elf.u32(&a, 12) {
                    0 => break,
                    n => aux_at = aux_at.saturating_add(n),
                }
            }
            if next == 0 || steps > MAX_VERSION_STEPS {
                break;
            }
            at = at.saturating_add(next);
        }
    }
    if let (Some(mut at), Some(count)) =
        (first(DT_VERDEF).and_then(|a| elf.offset_of(a)), first(DT_VERDEFNUM))
    {
        // Elf_Verdef: version u16, flags u16, ndx u16, cnt u16, hash u32, aux u32, next u32 (20);
        // Elf_Verdaux: name u32, next u32.
        for _ in 0..count {
            steps += 1;
            let Ok(def) = elf.read(at, 20, "a version definition") else { break };
            let (cnt, aux, next) = (elf.u16(&def, 6), elf.u32(&def, 12), elf.u32(&def, 16));
            let mut aux_at = at.saturating_add(aux);
            for _ in 0..cnt {
                steps += 1;
                if steps > MAX_VERSION_STEPS {
                    return Err("endless version definition entries".into());
                }
                let Ok(a) = elf.read(aux_at, 8, "a version definition entry") else { break };
                glibc_name(string(elf.u32(&a, 0)), &mut facts.glibc_defined);
                match elf.u32(&a, 4) {
                    0 => break,
                    n => aux_at = aux_at.saturating_add(n),
                }
            }
            if next == 0 || steps > MAX_VERSION_STEPS {
                break;
            }
            at = at.saturating_add(next);
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

    /// The header-only reader agrees with goblin's whole-file parse on every library of this
    /// host.
    #[test]
    fn inject_elf_agrees_with_goblin_on_host_libraries() {
        let mut compared = 0;
        for dir in ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"] {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for e in entries.flatten().take(400) {
                let p = e.path();
                let small = p.metadata().map(|m| m.is_file() && m.len() < 4 << 20).unwrap_or(false);
                if !p.file_name().unwrap().to_string_lossy().contains(".so") || !small {
                    continue;
                }
                let bytes = std::fs::read(&p).unwrap();
                let Ok(g) = goblin::elf::Elf::parse(&bytes) else { continue };
                let mine = read_elf(&p, false).unwrap();
                assert_eq!(mine.soname.as_deref(), g.soname, "{}", p.display());
                assert_eq!(mine.needed, g.libraries, "{}", p.display());
                assert_eq!(mine.machine, g.header.e_machine);
                let mut want_def = None;
                for def in g.verdef.iter().flat_map(|v| v.iter()) {
                    for aux in def.iter() {
                        let name = g.dynstrtab.get_at(aux.vda_name).unwrap_or("");
                        if let Some(v) = GlibcVersion::parse(name).filter(|_| name.starts_with("GLIBC_")) {
                            raise(&mut want_def, v);
                        }
                    }
                }
                let mut want_need = None;
                for need in g.verneed.iter().flat_map(|v| v.iter()) {
                    for aux in need.iter() {
                        let name = g.dynstrtab.get_at(aux.vna_name).unwrap_or("");
                        if let Some(v) = GlibcVersion::parse(name).filter(|_| name.starts_with("GLIBC_")) {
                            raise(&mut want_need, v);
                        }
                    }
                }
                assert_eq!(mine.glibc_defined, want_def, "{}", p.display());
                assert_eq!(mine.glibc_needed, want_need, "{}", p.display());
                compared += 1;
            }
        }
        assert!(compared > 0 || !Path::new("/usr/lib/x86_64-linux-gnu").exists());
    }

    /// A sparse file of gigabytes whose headers are a real library's costs a few reads.
    #[test]
    fn inject_elf_huge_sparse_library_is_read_by_its_headers() {
        let Some(arch) = super::super::ldcache::Arch::native() else { return };
        let Some(libc) = arch.default_lib_dirs().iter().map(|d| d.join("libc.so.6")).find(|p| p.exists())
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("libc.so.6");
        std::fs::copy(std::fs::canonicalize(libc).unwrap(), &big).unwrap();
        std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(3 << 30).unwrap();
        let before = peak_rss_kib();
        let facts = read_elf(&big, false).unwrap();
        assert!(facts.glibc_defined.is_some());
        let grew = peak_rss_kib() - before;
        assert!(grew < 32 << 10, "peak RSS grew by {grew} KiB");
    }

    fn peak_rss_kib() -> i64 {
        // SAFETY: getrusage fills the zeroed struct we pass; no other pointer is involved.
        unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut ru);
            ru.ru_maxrss
        }
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
