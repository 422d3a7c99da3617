//! The only place with system calls for container entry. `apply` talks to the `MountOps`
//! trait, so mount sequences are unit-tested with a recorder and run for real with
//! `real::RealSys`. Every `unsafe` block here carries a `// SAFETY:` comment.
#![warn(missing_docs)]

pub(crate) mod mapped;
pub(crate) mod proc;
pub(crate) mod process;
pub(crate) mod real;
pub(crate) mod squashfuse_lib;

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::Result;

/// Mount attributes that berth sets (never clears) on a mount and, optionally, its submounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Attrs {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

impl Attrs {
    pub(crate) const SAFE: Attrs = Attrs { readonly: false, nosuid: true, nodev: true, noexec: false };
    pub(crate) const SAFE_RO: Attrs = Attrs { readonly: true, nosuid: true, nodev: true, noexec: false };
    pub(crate) const RO: Attrs = Attrs { readonly: true, nosuid: false, nodev: false, noexec: false };
}

/// What container set-up needs from the kernel.
pub(crate) trait MountOps {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    /// Add attributes without dropping flags the kernel has locked (e.g. on mounts inherited
    /// from the host into a user namespace).
    fn set_attrs(&mut self, target: &Path, recursive: bool, attrs: Attrs) -> Result<()>;
    fn mkdir_all(&mut self, path: &Path) -> Result<()>;
    /// Create an empty file as a mount point if nothing is there.
    fn ensure_file(&mut self, path: &Path) -> Result<()>;
    fn write_file(&mut self, path: &Path, data: &[u8]) -> Result<()>;
    fn read_file(&mut self, path: &Path) -> Option<String>;
    /// Permission bits of an existing directory, or None when nothing (or not a directory) is
    /// there.
    fn dir_mode(&mut self, path: &Path) -> Option<u32>;
    /// Whether anything (even a dangling symlink) exists at `path`.
    fn exists(&mut self, path: &Path) -> bool;
    fn chmod(&mut self, path: &Path, mode: u32) -> Result<()>;
    fn symlink(&mut self, target: &Path, link: &Path) -> Result<()>;
    /// Resolve `path` inside `root` as if `root` were `/` (symlinks in the image cannot point
    /// a mount outside the new root).
    fn resolve_in_root(&mut self, root: &Path, path: &Path) -> Result<PathBuf>;
    /// Mount `/dev/fuse` on `at` and start the SquashFS server on it: `library` in a forked
    /// child, else (empty, or not loadable) the `program`.
    fn start_squashfuse(
        &mut self,
        program: &str,
        library: &str,
        image: &Path,
        offset: u64,
        at: &Path,
    ) -> Result<()>;
    /// Mount `/dev/fuse` on `at` and start fuse-overlayfs on it with overlayfs' `options`.
    fn start_fuse_overlay(&mut self, program: &str, options: &str, at: &Path) -> Result<()>;
    fn pivot_root(&mut self, new_root: &Path) -> Result<()>;
}

/// Records operations instead of performing them (the tests of mount sequences).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub ops: Vec<String>,
    /// Files `read_file` returns; paths created so far count as existing too.
    pub files: Vec<(PathBuf, String)>,
}

#[cfg(test)]
impl MountOps for Recorder {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        self.ops.push(format!(
            "mount {} {} {} {:?} {}",
            src.map(|p| p.display().to_string()).unwrap_or("-".into()),
            target.display(),
            fstype.unwrap_or("-"),
            flags,
            data.unwrap_or("-")
        ));
        Ok(())
    }
    fn set_attrs(&mut self, target: &Path, recursive: bool, a: Attrs) -> Result<()> {
        self.ops.push(format!("attrs {} rec={} {:?}", target.display(), recursive, a));
        Ok(())
    }
    fn mkdir_all(&mut self, path: &Path) -> Result<()> {
        self.ops.push(format!("mkdir {}", path.display()));
        self.files.push((path.to_path_buf(), String::new()));
        Ok(())
    }
    fn ensure_file(&mut self, path: &Path) -> Result<()> {
        self.ops.push(format!("touch {}", path.display()));
        self.files.push((path.to_path_buf(), String::new()));
        Ok(())
    }
    fn write_file(&mut self, path: &Path, data: &[u8]) -> Result<()> {
        self.ops.push(format!("write {} {:?}", path.display(), String::from_utf8_lossy(data)));
        Ok(())
    }
    fn read_file(&mut self, path: &Path) -> Option<String> {
        self.files.iter().find(|(p, _)| p == path).map(|(_, s)| s.clone())
    }
    fn dir_mode(&mut self, _path: &Path) -> Option<u32> {
        None
    }
    fn exists(&mut self, path: &Path) -> bool {
        self.files.iter().any(|(p, _)| p == path)
    }
    fn chmod(&mut self, path: &Path, mode: u32) -> Result<()> {
        self.ops.push(format!("chmod {} {mode:o}", path.display()));
        Ok(())
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> Result<()> {
        self.ops.push(format!("symlink {} -> {}", link.display(), target.display()));
        Ok(())
    }
    fn resolve_in_root(&mut self, root: &Path, path: &Path) -> Result<PathBuf> {
        Ok(root.join(path.strip_prefix("/").unwrap_or(path)))
    }
    fn start_squashfuse(
        &mut self,
        program: &str,
        library: &str,
        image: &Path,
        offset: u64,
        at: &Path,
    ) -> Result<()> {
        self.ops.push(format!(
            "squashfuse {program} library={library} {} offset={offset} on {}",
            image.display(),
            at.display()
        ));
        Ok(())
    }
    fn start_fuse_overlay(&mut self, program: &str, options: &str, at: &Path) -> Result<()> {
        self.ops.push(format!("fuse-overlay {program} {options} on {}", at.display()));
        Ok(())
    }
    fn pivot_root(&mut self, new_root: &Path) -> Result<()> {
        self.ops.push(format!("pivot_root {}", new_root.display()));
        Ok(())
    }
}
