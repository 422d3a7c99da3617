//! Paths inside a root tree (an image, a build's rootfs, a fake host tree), resolved as the
//! kernel would after `chroot(root)`: an absolute symlink in an image
//! (`/etc/localtime -> /usr/share/zoneinfo/UTC`) lands in the image, never on the host, and
//! `..` stops at the root.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// What to do with a path component that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Keep going: the result is where a new file or mount point would go.
    Allow,
    /// Fail with `NotFound` (e.g. a dangling library symlink).
    Fail,
}

/// Resolve every symlink in `path` inside `root`; returns the logical path (starting at `/`).
/// More than 40 links is an error, like the kernel's ELOOP.
pub fn resolve(root: &Path, path: &Path, missing: Missing) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        match std::fs::symlink_metadata(rooted(root, &candidate)) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links in {}",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(rooted(root, &candidate))?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                push_components(&mut pending, &target);
            }
            Ok(_) => resolved = candidate,
            Err(e) if missing == Missing::Fail => return Err(e),
            Err(_) => resolved = candidate,
        }
    }
    Ok(resolved)
}

/// `logical` (a path inside the tree) as a path of this process: `root` joined with it.
pub fn rooted(root: &Path, logical: &Path) -> PathBuf {
    let rel: PathBuf = logical.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    root.join(rel)
}

/// Push the components of `path` so that popping yields them in order.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/share/zoneinfo")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        symlink("/usr/share/zoneinfo/UTC", r.join("etc/localtime")).unwrap();
        symlink("../../../../../etc", r.join("usr/share/escape")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        let res = |p: &str, m| resolve(r, Path::new(p), m);
        assert_eq!(res("/etc/localtime", Missing::Allow).unwrap(), PathBuf::from("/usr/share/zoneinfo/UTC"));
        assert_eq!(res("/usr/share/escape/passwd", Missing::Allow).unwrap(), PathBuf::from("/etc/passwd"));
        assert_eq!(res("/new/dir", Missing::Allow).unwrap(), PathBuf::from("/new/dir"));
        assert_eq!(res("/new/dir", Missing::Fail).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(res("/loop/x", Missing::Allow).is_err());
        assert_eq!(rooted(r, Path::new("/etc/passwd")), r.join("etc/passwd"));
    }
}
