//! Which MPI a `libmpi` is, and whether the host's may stand in for the image's.
//!
//! Two ABI families matter:
//! - the MPICH ABI (`libmpi.so.12`, also `libmpich.so.12`: MPICH >= 3.1, Intel MPI >= 5,
//!   MVAPICH2, Cray MPICH). Compatible when the libtool major is equal and the host's libtool
//!   minor is at least the image's (`libmpi.so.12.1.x` may be replaced by `12.2.y`, not the
//!   reverse): newer libraries add symbols, they do not remove them.
//! - Open MPI (`libmpi.so.40` for 3.0 to 5.0): the SONAME did not change across those series,
//!   but Open MPI only promises compatibility within a major series (an application built
//!   with 4.0 runs on 4.1, not on 3.1 or 5.0), so the release version decides.
//!
//! The release version is read from strings in the library (`"Open MPI v4.1.4"`,
//! `"MPICH Version:\t4.0.2"`, the bare version next to them) and, for Open MPI, from the libtool
//! file version, which maps one to one onto the series (40.0 = 3.0, 40.10 = 3.1, 40.20 = 4.0,
//! 40.30 = 4.1, 40.40 = 5.0).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MpiFamily {
    /// MPICH ABI (`libmpi.so.12`): MPICH, Intel MPI, MVAPICH, Cray MPICH.
    MpichAbi,
    OpenMpi,
}

/// What we know about one MPI library file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MpiInfo {
    pub soname: String,
    pub family: MpiFamily,
    /// "MPICH", "Intel MPI", "MVAPICH2", "Cray MPICH", "Open MPI".
    pub vendor: String,
    /// Release version, when found (`[4, 1, 4]`).
    pub version: Option<Vec<u32>>,
    /// Libtool version from the real file name (`libmpich.so.12.2.2` gives `[12, 2, 2]`).
    pub libtool: Option<Vec<u32>>,
}

impl MpiInfo {
    /// "Open MPI 4.1.4 (libmpi.so.40.30.4)" style description for messages.
    pub(crate) fn describe(&self) -> String {
        let mut s = self.vendor.clone();
        if let Some(v) = &self.version {
            s.push(' ');
            s.push_str(&dotted(v));
        }
        if let Some(l) = &self.libtool {
            let stem = self.soname.split(".so").next().unwrap_or(&self.soname);
            s.push_str(&format!(" ({stem}.so.{})", dotted(l)));
        }
        s
    }
}

fn dotted(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

/// Parse "4.1.4" / "4.0" / "2021.6.0" at the start of `s`.
fn leading_version(s: &str) -> Option<Vec<u32>> {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let parts: Vec<u32> =
        s[..end].split('.').filter(|p| !p.is_empty()).map_while(|p| p.parse().ok()).collect();
    (parts.len() >= 2).then_some(parts)
}

/// Position of `needle` in `hay` at or after `from` (first-byte scan: much faster than
/// comparing every window, which matters for multi-megabyte libraries in debug builds).
fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        i += hay[i..].iter().position(|&b| b == first)?;
        if hay[i..].starts_with(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The first version number (`4.1.4`) right after an occurrence of `needle`.
fn find_after(hay: &[u8], needle: &[u8]) -> Option<Vec<u32>> {
    let mut from = 0;
    while let Some(pos) = find_from(hay, needle, from) {
        let at = pos + needle.len();
        let tail = &hay[at..hay.len().min(at + 32)];
        if let Some(v) = leading_version(&String::from_utf8_lossy(tail)) {
            return Some(v);
        }
        from = at;
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find_from(hay, needle, 0).is_some()
}

/// The libtool version from a real file name: `libmpi.so.40.30.4` -> `[40, 30, 4]`.
pub(crate) fn libtool_version(file_name: &str) -> Option<Vec<u32>> {
    let (_, v) = file_name.split_once(".so.")?;
    let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| p.len() >= 2)
}

/// Largest MPI library read whole to find its version strings (the biggest real ones, Intel
/// MPI's and Cray's, are well under 100 MB); an image's file of any size must not decide
/// berth's memory.
const MAX_MPI_LIBRARY: u64 = 192 << 20;

/// Identify the MPI library at `real_path` (the file, symlinks followed) known by `soname`.
pub(crate) fn identify(soname: &str, real_path: &Path) -> Result<MpiInfo> {
    use std::io::Read;
    let io_err = |e| Error::io("cannot read MPI library", real_path, e);
    let file = std::fs::File::open(real_path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size > MAX_MPI_LIBRARY {
        return Err(Error::inject(
            format!("MPI library {}", real_path.display()),
            format!("{size} bytes, more than the {MAX_MPI_LIBRARY} berth reads to identify an MPI"),
            "use --mpi=hybrid, or an image whose MPI library is a real one",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_MPI_LIBRARY).read_to_end(&mut bytes).map_err(io_err)?;
    let file_name = real_path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    identify_bytes(soname, &file_name, &bytes).ok_or_else(|| {
        Error::inject(
            format!("MPI library {}", real_path.display()),
            format!("cannot tell which MPI {soname} is (neither MPICH ABI nor Open MPI markers found)"),
            "list only MPI libraries in inject.mpi_libs, or use --mpi=hybrid",
        )
    })
}

/// The read-only data of an ELF file, where version strings live: scanning only these keeps
/// a 40 MB libmpich (mostly code) cheap. Anything that is not ELF is scanned whole.
fn string_data(bytes: &[u8]) -> Vec<&[u8]> {
    let Ok(elf) = goblin::elf::Elf::parse(bytes) else { return vec![bytes] };
    let parts: Vec<&[u8]> = elf
        .section_headers
        .iter()
        .filter(|sh| matches!(elf.shdr_strtab.get_at(sh.sh_name), Some(".rodata" | ".data" | ".data.rel.ro")))
        .filter(|sh| sh.sh_type != goblin::elf::section_header::SHT_NOBITS)
        .filter_map(|sh| {
            let start = usize::try_from(sh.sh_offset).ok()?;
            let end = start.checked_add(usize::try_from(sh.sh_size).ok()?)?;
            bytes.get(start..end)
        })
        .collect();
    if parts.is_empty() {
        vec![bytes]
    } else {
        parts
    }
}

/// Identify from the library's bytes and its real file name.
pub(crate) fn identify_bytes(soname: &str, file_name: &str, whole: &[u8]) -> Option<MpiInfo> {
    let data = string_data(whole);
    let contains = |needle: &[u8]| data.iter().any(|d| contains(d, needle));
    let find_after = |needle: &[u8]| data.iter().find_map(|d| find_after(d, needle));
    identify_with(soname, file_name, &contains, &find_after)
}

fn identify_with(
    soname: &str,
    file_name: &str,
    contains: &dyn Fn(&[u8]) -> bool,
    find_after: &dyn Fn(&[u8]) -> Option<Vec<u32>>,
) -> Option<MpiInfo> {
    let libtool = libtool_version(file_name);
    let open_mpi = contains(b"Open MPI v") || contains(b"OPAL_") || soname.starts_with("libmpi.so.40");
    if open_mpi && soname.starts_with("libmpi") && !soname.ends_with(".so.12") {
        // "Open MPI v4.1.4" if the literal is there, else the series from the libtool version.
        let version = find_after(b"Open MPI v").or_else(|| {
            let lt = libtool.as_ref()?;
            let series = match (lt.first()?, lt.get(1)?) {
                (40, 0) => vec![3, 0],
                (40, 10) => vec![3, 1],
                (40, 20) => vec![4, 0],
                (40, 30) => vec![4, 1],
                (40, 40) => vec![5, 0],
                _ => return None,
            };
            Some(series)
        });
        return Some(MpiInfo {
            soname: soname.into(),
            family: MpiFamily::OpenMpi,
            vendor: "Open MPI".into(),
            version,
            libtool,
        });
    }
    if soname.ends_with(".so.12") {
        let (vendor, version) = if contains(b"Intel(R) MPI Library") {
            ("Intel MPI", find_after(b"Intel(R) MPI Library "))
        } else if contains(b"MVAPICH2 Version") {
            ("MVAPICH2", find_after(b"MVAPICH2 Version:\t"))
        } else if contains(b"CRAY MPICH") || contains(b"Cray MPICH") {
            ("Cray MPICH", find_after(b"MPICH Version:\t").or_else(|| find_after(b"MPICH Version: ")))
        } else {
            ("MPICH", find_after(b"MPICH Version:\t").or_else(|| find_after(b"/mpich-")))
        };
        return Some(MpiInfo {
            soname: soname.into(),
            family: MpiFamily::MpichAbi,
            vendor: vendor.into(),
            version,
            libtool,
        });
    }
    None
}

/// May `host` replace `image`? `Err` is the reason, naming both sides.
pub(crate) fn check_abi(host: &MpiInfo, image: &MpiInfo) -> std::result::Result<(), String> {
    let both = || format!("host {} is {}, image has {}", host.soname, host.describe(), image.describe());
    if host.family != image.family {
        return Err(format!("{}: different MPI ABIs", both()));
    }
    match host.family {
        MpiFamily::MpichAbi => {
            let (Some(h), Some(i)) = (&host.libtool, &image.libtool) else {
                return Err(format!(
                    "{}: cannot read the libtool version of both (expected file names like libmpi.so.12.1.8)",
                    both()
                ));
            };
            if h[0] != i[0] {
                return Err(format!("{}: ABI major {} vs {}", both(), h[0], i[0]));
            }
            if h[1] < i[1] {
                return Err(format!(
                    "{}: the host's ABI minor {} is older than the image's {}",
                    both(),
                    h[1],
                    i[1]
                ));
            }
            Ok(())
        }
        MpiFamily::OpenMpi => {
            let (Some(h), Some(i)) = (&host.version, &image.version) else {
                return Err(format!("{}: cannot read both Open MPI versions", both()));
            };
            if h[0] != i[0] {
                return Err(format!(
                    "{}: Open MPI is only compatible within a major series ({}.x vs {}.x)",
                    both(),
                    h[0],
                    i[0]
                ));
            }
            if h.get(1) < i.get(1) {
                return Err(format!("{}: the host's Open MPI is older than the image's", both()));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mpich(lt: &str, v: &str) -> MpiInfo {
        identify_bytes(
            "libmpi.so.12",
            &format!("libmpi.so.{lt}"),
            format!("MPICH Version:\t{v}\0").as_bytes(),
        )
        .unwrap()
    }

    fn ompi(lt: &str, v: &str) -> MpiInfo {
        identify_bytes("libmpi.so.40", &format!("libmpi.so.{lt}"), format!("Open MPI v{v}\0").as_bytes())
            .unwrap()
    }

    #[test]
    fn inject_mpi_mpich_abi_rules() {
        let host_40 = mpich("12.2.2", "4.0.2");
        let image_33 = mpich("12.1.8", "3.3.2");
        assert_eq!(host_40.version, Some(vec![4, 0, 2]));
        assert!(check_abi(&host_40, &image_33).is_ok(), "newer host minor may replace");
        let e = check_abi(&image_33, &host_40).unwrap_err();
        assert!(e.contains("MPICH 3.3.2") && e.contains("MPICH 4.0.2") && e.contains("older"), "{e}");
        let other_major = mpich("13.0.0", "5.0.0");
        assert!(check_abi(&other_major, &image_33).unwrap_err().contains("major"));
    }

    #[test]
    fn inject_mpi_open_mpi_rules() {
        let host_41 = ompi("40.30.4", "4.1.4");
        assert!(check_abi(&host_41, &ompi("40.20.0", "4.0.7")).is_ok());
        let e = check_abi(&host_41, &ompi("40.10.6", "3.1.6")).unwrap_err();
        assert!(e.contains("Open MPI 4.1.4") && e.contains("Open MPI 3.1.6") && e.contains("major"), "{e}");
        // Without the literal, the libtool version gives the series.
        let bare = identify_bytes("libmpi.so.40", "libmpi.so.40.10.4", b"OPAL_foo").unwrap();
        assert_eq!(bare.version, Some(vec![3, 1]));
        assert!(check_abi(&host_41, &bare).is_err());
    }

    #[test]
    fn inject_mpi_families_do_not_mix() {
        let e = check_abi(&ompi("40.30.4", "4.1.4"), &mpich("12.2.2", "4.0.2")).unwrap_err();
        assert!(e.contains("different MPI ABIs") && e.contains("Open MPI") && e.contains("MPICH"), "{e}");
    }

    #[test]
    fn inject_mpi_reads_real_debian_libraries() {
        let dir = Path::new("/usr/lib/x86_64-linux-gnu");
        let ompi_path = dir.join("libmpi.so.40");
        if let Ok(real) = std::fs::canonicalize(&ompi_path) {
            let info = identify("libmpi.so.40", &real).unwrap();
            assert_eq!(info.family, MpiFamily::OpenMpi);
            assert_eq!(info.version.as_ref().map(|v| v[..2].to_vec()), Some(vec![4, 1]), "{info:?}");
        } else {
            eprintln!("skipped Open MPI: libopenmpi3 not installed");
        }
        if let Ok(real) = std::fs::canonicalize(dir.join("libmpich.so.12")) {
            let info = identify("libmpich.so.12", &real).unwrap();
            assert_eq!(info.family, MpiFamily::MpichAbi);
            assert_eq!(info.libtool.as_ref().map(|v| v[0]), Some(12), "{info:?}");
            assert_eq!(info.version.as_ref().map(|v| v[0]), Some(4), "{info:?}");
        } else {
            eprintln!("skipped MPICH: libmpich12 not installed");
        }
    }
}
