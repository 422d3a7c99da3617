//! File helpers for writing into a root filesystem under construction without ever leaving it,
//! and for removing a work directory without ever crossing into a mount.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_runtime::error::{Error, Result};

/// Resolve `inner` (a path as seen inside the container) to a host path under `root`, following
/// symlinks the way the kernel would after `chroot(root)`. An absolute symlink in the image
/// (`/usr/bin/mpicc -> /etc/alternatives/mpicc`) must land in the image's /etc, never the host's:
/// plain `cp` into `root/usr/bin/mpicc` would follow it to the host.
///
/// Missing components are fine (the result is where a new file would go).
pub fn resolve_in_root(root: &Path, inner: &Path) -> Result<PathBuf> {
    use berth_runtime::rootpath::{resolve, rooted, Missing};
    let logical = resolve(root, inner, Missing::Allow)
        .map_err(|e| Error::build("resolve path in image", format!("{}: {e}", inner.display()), ""))?;
    Ok(rooted(root, &logical))
}

/// Write `contents` to `inner` inside `root`, creating parent directories, replacing whatever
/// was there (a symlink is replaced, not followed).
pub fn write_in_root(root: &Path, inner: &str, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let inner = Path::new(inner);
    let parent = resolve_in_root(root, inner.parent().unwrap_or(Path::new("/")))?;
    fs::create_dir_all(&parent).map_err(|e| Error::io("create directory", &parent, e))?;
    let name = inner
        .file_name()
        .ok_or_else(|| Error::build("write file", format!("{} has no file name", inner.display()), ""))?;
    let path = parent.join(name);
    if let Ok(meta) = fs::symlink_metadata(&path) {
        if !meta.is_dir() {
            fs::remove_file(&path).map_err(|e| Error::io("replace", &path, e))?;
        }
    }
    fs::write(&path, contents).map_err(|e| Error::io("write", &path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io("chmod", &path, e))?;
    Ok(())
}

/// Mount points at or under `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn unescape_mountinfo(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remove a work directory: first detach any mount left under it (there should be none: the
/// %post mounts live in a private namespace that dies with it), then delete the tree without
/// ever descending into another filesystem, so a leftover bind of /dev or /sys can never make
/// the cleanup delete host files.
pub fn remove_work_dir(dir: &Path) -> io::Result<()> {
    for m in mounts_under(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_tree_one_fs(dir, meta.dev())
}

fn remove_tree_one_fs(path: &Path, dev: u64) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if meta.dev() != dev {
        return Err(io::Error::other(format!(
            "{} is on another filesystem (a mount left behind?); not removing it",
            path.display()
        )));
    }
    // Directories made read-only by an image (chmod 0555) must be made writable to empty them.
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o200 == 0 {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(meta.permissions().mode() | 0o700));
    }
    let mut first_error = None;
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if let Err(e) = remove_tree_one_fs(&entry.path(), dev) {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    fs::remove_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("/etc/alternatives/mpicc", root.join("usr/bin/mpicc")).unwrap();
        symlink("../../..", root.join("usr/bin/up")).unwrap();
        symlink("/", root.join("escape")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/usr/bin/mpicc")).unwrap(),
            root.join("etc/alternatives/mpicc")
        );
        assert_eq!(resolve_in_root(root, Path::new("/usr/bin/up/../../etc")).unwrap(), root.join("etc"));
        assert_eq!(resolve_in_root(root, Path::new("/escape/etc/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(root, Path::new("../../new/file")).unwrap(), root.join("new/file"));
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, Path::new("/loop/x")).is_err());
    }

    #[test]
    fn write_in_root_replaces_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink(outside.path(), root.join("etc/resolv.conf")).unwrap();
        write_in_root(root, "/etc/resolv.conf", b"nameserver 1.1.1.1\n", 0o644).unwrap();
        assert_eq!(fs::read(outside.path()).unwrap(), b"");
        assert_eq!(fs::read(root.join("etc/resolv.conf")).unwrap(), b"nameserver 1.1.1.1\n");
        write_in_root(root, "/.singularity.d/env/90-environment.sh", b"x", 0o755).unwrap();
        assert!(root.join(".singularity.d/env/90-environment.sh").is_file());
    }

    #[test]
    fn remove_work_dir_removes_read_only_trees() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        fs::create_dir_all(work.join("a/b")).unwrap();
        fs::write(work.join("a/b/f"), b"x").unwrap();
        fs::set_permissions(work.join("a"), fs::Permissions::from_mode(0o555)).unwrap();
        remove_work_dir(&work).unwrap();
        assert!(!work.exists());
        remove_work_dir(&work).unwrap();
    }

    #[test]
    fn mountinfo_unescaping() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
