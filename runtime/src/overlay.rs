//! `--overlay DIR`: a host directory of the user's as the writable layer over the image, kept
//! after the run. The layout is Apptainer's (`DIR/upper` holds the changes, `DIR/work` is
//! overlayfs' scratch directory), both created on first use.
//!
//! The kernel's overlayfs is mounted inside the user namespace (Linux 5.11 and later allow it
//! there) with `userxattr`, so the upper layer's filesystem must keep `user.*` extended
//! attributes and be local: network and FUSE filesystems are refused before anything is
//! created, with the reason.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Filesystems that hold an unprivileged overlay's upper layer: local, with `user.*` xattrs
/// and `d_type` (tmpfs has user xattrs since Linux 6.6).
const SUPPORTED: &[(i64, &str)] = &[
    (0xEF53, "ext4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0xF2F5_2010, "f2fs"),
    (0x2FC1_2FC1, "zfs"),
    (0xCA45_1A4E, "bcachefs"),
];

/// Names for the filesystems users meet most where an overlay cannot live, for the message.
const KNOWN_UNSUPPORTED: &[(i64, &str)] = &[
    (0x6969, "NFS"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS (Spectrum Scale)"),
    (0x1983_0326, "BeeGFS"),
    (0x794C_7630, "overlayfs"),
    (0x6573_5546, "FUSE"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x7375_7245, "Coda"),
    (0x0000_517B, "SMB"),
    (0x7371_7368, "squashfs"),
    (0x0027_E0EB, "cgroup"),
    (0x00C3_6400, "CephFS"),
];

fn fs_name(kind: i64) -> String {
    KNOWN_UNSUPPORTED
        .iter()
        .chain(SUPPORTED)
        .find(|(k, _)| *k == kind)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("type {kind:#x}"))
}

/// The writable layer's directories inside `dir`.
pub fn upper(dir: &Path) -> PathBuf {
    dir.join("upper")
}

/// overlayfs' work directory inside `dir` (same filesystem as the upper layer).
pub fn work(dir: &Path) -> PathBuf {
    dir.join("work")
}

/// Whether `dir` is on a filesystem that can hold an unprivileged overlay's writable layer.
pub(crate) fn can_hold_layers(dir: &Path) -> bool {
    let Ok(fs) = nix::sys::statfs::statfs(dir) else { return false };
    // `__fsword_t`: i64 here, 32 bits on other architectures.
    #[allow(clippy::unnecessary_cast)]
    let kind = fs.filesystem_type().0 as i64;
    SUPPORTED.iter().any(|(k, _)| *k == kind)
}

fn bad(dir: &Path, reason: impl Into<String>, hint: &str) -> Error {
    Error::request(format!("--overlay {}", dir.display()), reason, hint)
}

/// Check `dir` for use as `uid`'s overlay and return its absolute, symlink-free path. Reads
/// only: a refused directory is left exactly as it was.
pub fn check_dir(dir: &Path, uid: u32) -> Result<PathBuf> {
    let s = dir.to_string_lossy();
    let image_like =
        [".img", ".sif", ".sqsh", ".squashfs", ".ext3", ":ro", ":rw"].iter().any(|x| s.ends_with(x));
    if image_like || dir.is_file() {
        return Err(bad(
            dir,
            "image-file overlays (Apptainer's FILE[:ro|rw]) are not supported",
            "give a directory of yours (mkdir ~/overlay; berth exec --overlay ~/overlay IMAGE ...), or \
             --writable-tmpfs for a throwaway layer",
        ));
    }
    let canonical = std::fs::canonicalize(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            bad(dir, "the directory does not exist", &format!("create it first: mkdir -p {}", dir.display()))
        }
        _ => bad(dir, format!("cannot be reached: {e}"), ""),
    })?;
    // overlayfs separates its layers with ':' and its options with ','.
    if canonical.to_string_lossy().contains([':', ',', '\\']) {
        return Err(bad(
            dir,
            format!("{} contains ':', ',' or '\\', which overlay options cannot carry", canonical.display()),
            "use a directory whose path has none of them",
        ));
    }
    let meta = std::fs::metadata(&canonical).map_err(|e| bad(dir, format!("cannot be read: {e}"), ""))?;
    if !meta.is_dir() {
        return Err(bad(dir, "is not a directory", "give a directory of yours"));
    }
    if meta.uid() != uid {
        return Err(bad(
            dir,
            format!("belongs to uid {}, not to you (uid {uid})", meta.uid()),
            "use a directory you own, e.g. mkdir ~/overlay",
        ));
    }
    let fs = nix::sys::statfs::statfs(&canonical).map_err(|e| bad(dir, format!("statfs failed: {e}"), ""))?;
    let kind = fs.filesystem_type().0 as i64;
    if !SUPPORTED.iter().any(|(k, _)| *k == kind) {
        return Err(bad(
            dir,
            format!(
                "is on {}, which cannot hold an unprivileged overlay's writable layer (it needs a local \
                 filesystem with user extended attributes)",
                fs_name(kind)
            ),
            &format!(
                "use a directory on a local disk (ext4, xfs, btrfs, tmpfs), e.g. under $TMPDIR or a node-local \
                 scratch; supported: {}",
                SUPPORTED.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    for sub in [upper(&canonical), work(&canonical)] {
        match std::fs::symlink_metadata(&sub) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bad(dir, format!("{} cannot be read: {e}", sub.display()), "")),
            Ok(m) if !m.is_dir() => return Err(bad(
                dir,
                format!("{} exists and is not a directory", sub.display()),
                "an overlay directory holds only upper/ and work/ (as Apptainer's); use an empty directory",
            )),
            Ok(m) if m.uid() != uid => {
                return Err(bad(
                    dir,
                    format!("{} belongs to uid {}, not to you", sub.display(), m.uid()),
                    "use an overlay directory made by your own runs",
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_refused_with_the_fix_and_not_created() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ovl");
        let e = check_dir(&d, nix::unistd::getuid().as_raw()).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("mkdir -p"), "{e}");
        assert!(!d.exists());
    }

    #[test]
    fn owner_kind_and_layout_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(check_dir(t.path(), me).unwrap(), std::fs::canonicalize(t.path()).unwrap());
        let e = check_dir(t.path(), me + 1).unwrap_err().to_string();
        assert!(e.contains("not to you"), "{e}");
        std::fs::write(t.path().join("f"), "").unwrap();
        assert!(check_dir(&t.path().join("f"), me).unwrap_err().to_string().contains("image-file overlays"));
        assert!(check_dir(&t.path().join("o.img"), me).unwrap_err().to_string().contains("image-file"));
        std::fs::create_dir(t.path().join("a,b")).unwrap();
        assert!(check_dir(&t.path().join("a,b"), me).unwrap_err().to_string().contains("overlay options"));
        std::fs::write(t.path().join("upper"), "").unwrap();
        let e = check_dir(t.path(), me).unwrap_err().to_string();
        assert!(e.contains("upper exists and is not a directory"), "{e}");
    }

    #[test]
    fn unsupported_filesystems_are_named() {
        // /proc is never a place for an overlay: refused by name of type, not by a kernel error.
        let e = check_dir(Path::new("/proc"), 0).unwrap_err().to_string();
        assert!(e.contains("cannot hold an unprivileged overlay") && e.contains("ext4"), "{e}");
        assert_eq!(fs_name(0x6969), "NFS");
    }
}
