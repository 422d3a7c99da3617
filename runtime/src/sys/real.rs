//! [`MountOps`] with real system calls.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::statvfs::{statvfs, FsFlags};

use super::{Attrs, MountOps};
use crate::error::{Error, Result};

/// Real system calls, plus the FUSE servers it started (owned: stopped when dropped).
pub(crate) struct RealSys {
    uid: u32,
    gid: u32,
    /// In start order: the image's server, then fuse-overlayfs over it if one was started.
    pub fuse: Vec<FuseServer>,
}

/// What a FUSE server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FuseKind {
    /// The read-only image (`squashfuse_ll`).
    Image,
    /// The writable layer of `--overlay DIR` (`fuse-overlayfs`).
    Overlay,
}

/// A running FUSE server. Dropping it stops the server; the mount goes with the namespace.
pub(crate) struct FuseServer {
    pub child: Child,
    pub kind: FuseKind,
}

impl FuseServer {
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stop the server once nothing uses the container any more. The image is read-only and
    /// the mount lives only in our namespace, so there is nothing to flush: SIGKILL ends it
    /// at once. An overlay server is asked to end (SIGTERM) and given a moment to finish what
    /// it writes to the user's directory. Either is reaped, so no process is left.
    pub(crate) fn stop(mut self) {
        if self.kind == FuseKind::Overlay {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), Signal::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stop `servers` in the reverse of their start order (the overlay before the image under it).
pub(crate) fn stop_all(servers: Vec<FuseServer>) {
    for f in servers.into_iter().rev() {
        f.stop();
    }
}

impl RealSys {
    pub(crate) fn new(uid: u32, gid: u32) -> Self {
        RealSys { uid, gid, fuse: vec![] }
    }

    /// Mount `/dev/fuse` on `at` as `fstype` and start `cmd` (its last argument the mount,
    /// `/dev/fd/N`, is appended here) to serve it. Returns the server's stderr, kept in an
    /// anonymous file for messages, and whether the first access through the mount failed.
    fn start_fuse(
        &mut self,
        fstype: &str,
        flags: MsFlags,
        mut cmd: Command,
        at: &Path,
        kind: FuseKind,
        install_hint: &str,
    ) -> Result<Option<(std::io::Error, String)>> {
        // Checked first: the child closes the descriptor through which a failed exec would be
        // reported, so a missing server would otherwise only show as a dead mount.
        let program = cmd.get_program().to_owned();
        if !is_executable_program(Path::new(&program)) {
            return Err(Error::Io {
                what: format!("cannot start {}", program.to_string_lossy()),
                path: at.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
                hint: install_hint.into(),
            });
        }
        // berth mounts /dev/fuse itself and hands the open descriptor to the server as
        // `/dev/fd/N` (libfuse >= 3.3): the mount exists with our flags before the server runs,
        // so there is no wait-for-mount polling and no fusermount helper.
        let fuse: OwnedFd = nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .map(|fd| {
                // SAFETY: `open` just returned this descriptor and nothing else owns it.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
            })
            .map_err(|e| Error::Sys {
                op: "open".into(),
                target: "/dev/fuse".into(),
                source: e,
                hint: "FUSE must be usable by users (ask your administrator: modprobe fuse; chmod 0666 /dev/fuse)".into(),
            })?;
        let fd = fuse.as_raw_fd();
        let opts =
            format!("fd={fd},rootmode=40000,user_id={},group_id={},default_permissions", self.uid, self.gid);
        self.mount(Some(Path::new(fstype)), at, Some(&format!("fuse.{fstype}")), flags, Some(&opts))?;
        // The server's own complaints ("Something went wrong...") go to an anonymous file and
        // into our message, so the user sees one clear error.
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(at.parent().unwrap_or(Path::new("/tmp")))
            .ok();
        let log_for_child = log.as_ref().and_then(|f| f.try_clone().ok());
        cmd.arg(format!("/dev/fd/{fd}")).stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(log_for_child.map(Stdio::from).unwrap_or_else(Stdio::inherit));
        // SAFETY: the closure runs in the forked child before exec and only makes async-signal-
        // safe calls (fcntl, close_range, prctl) on descriptors the child owns.
        unsafe {
            cmd.pre_exec(move || {
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
                crate::sys::process::cloexec_fds_except(&[fd]);
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                Ok(())
            });
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().map_err(|e| Error::Io {
            what: format!("cannot start {program}"),
            path: at.to_path_buf(),
            source: e,
            hint: install_hint.into(),
        })?;
        drop(fuse);
        self.fuse.push(FuseServer { child, kind });
        // First access waits for the server's INIT; if the server died, the kernel answers
        // ENOTCONN at once, so this never hangs.
        let Err(e) = std::fs::read_dir(at) else { return Ok(None) };
        let status = self.fuse.last_mut().and_then(|f| f.child.try_wait().ok().flatten());
        let said = log
            .map(|mut f| {
                use std::io::{Read, Seek};
                let mut s = String::new();
                let _ = f.rewind().and_then(|_| f.take(4096).read_to_string(&mut s));
                s.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .filter(|s| !s.is_empty())
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        Ok(Some((e, format!("{said}{}", status.map(|s| format!(" ({s})")).unwrap_or_default()))))
    }
}

/// Whether `program` (a path, or a name looked up in `PATH`) is an executable file.
fn is_executable_program(program: &Path) -> bool {
    let executable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.components().count() > 1 {
        return executable(program);
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| executable(&d.join(program))))
}

impl Drop for RealSys {
    fn drop(&mut self) {
        stop_all(std::mem::take(&mut self.fuse));
    }
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::io(what, p, e)
}

/// mount_setattr(2): sets attributes on a whole subtree in one call, leaving locked flags
/// alone. Returns ENOSYS on kernels before 5.12.
fn mount_setattr(target: &Path, recursive: bool, a: Attrs) -> nix::Result<()> {
    let mut set = 0;
    if a.readonly {
        set |= libc::MOUNT_ATTR_RDONLY;
    }
    if a.nosuid {
        set |= libc::MOUNT_ATTR_NOSUID;
    }
    if a.nodev {
        set |= libc::MOUNT_ATTR_NODEV;
    }
    if a.noexec {
        set |= libc::MOUNT_ATTR_NOEXEC;
    }
    let attr = libc::mount_attr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| nix::Error::EINVAL)?;
    let flags = if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path and `attr` a properly laid out mount_attr
    // that outlives the call; the kernel reads exactly `size_of::<libc::mount_attr>()` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    }
}

/// Fallback for old kernels: remount the top mount only, re-stating the flags it already has
/// (a user namespace may not clear locked flags, so they must be repeated).
fn remount_keep_flags(target: &Path, a: Attrs) -> nix::Result<()> {
    let st = statvfs(target)?;
    let have = st.flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    for (f, m) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(f) {
            flags |= m;
        }
    }
    if a.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    if a.nosuid {
        flags |= MsFlags::MS_NOSUID;
    }
    if a.nodev {
        flags |= MsFlags::MS_NODEV;
    }
    if a.noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}

impl MountOps for RealSys {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        mount(src, target, fstype, flags, data).map_err(|e| {
            Error::sys(
                format!(
                    "mount {}",
                    src.map(|s| s.display().to_string()).unwrap_or_else(|| format!("{flags:?}"))
                ),
                target.display(),
                e,
            )
        })
    }

    fn set_attrs(&mut self, target: &Path, recursive: bool, a: Attrs) -> Result<()> {
        match mount_setattr(target, recursive, a) {
            Ok(()) => Ok(()),
            Err(nix::Error::ENOSYS) => remount_keep_flags(target, a),
            Err(e) => Err(e),
        }
        .map_err(|e| Error::sys("set mount attributes on", target.display(), e))
    }

    fn mkdir_all(&mut self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path).map_err(|e| io_err("cannot create directory", path, e))
    }

    fn ensure_file(&mut self, path: &Path) -> Result<()> {
        if path.symlink_metadata().is_ok() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.mkdir_all(parent)?;
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(|e| io_err("cannot create mount point", path, e))
    }

    fn write_file(&mut self, path: &Path, data: &[u8]) -> Result<()> {
        std::fs::write(path, data).map_err(|e| io_err("cannot write", path, e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| io_err("cannot chmod", path, e))
    }

    fn read_file(&mut self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn dir_mode(&mut self, path: &Path) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().filter(|m| m.is_dir()).map(|m| m.mode() & 0o7777)
    }

    fn exists(&mut self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    fn chmod(&mut self, path: &Path, mode: u32) -> Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_err("cannot chmod", path, e))
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(io_err("cannot create symlink", link, e))
            }
            _ => Ok(()),
        }
    }

    fn resolve_in_root(&mut self, root: &Path, path: &Path) -> Result<PathBuf> {
        resolve_in_root(root, path)
    }

    fn start_squashfuse(&mut self, program: &str, image: &Path, offset: u64, at: &Path) -> Result<()> {
        let mut cmd = Command::new(program);
        cmd.arg("-f");
        if offset > 0 {
            cmd.arg("-o").arg(format!("offset={offset}"));
        }
        cmd.arg(image);
        let failed = self.start_fuse(
            "squashfuse",
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            cmd,
            at,
            FuseKind::Image,
            "install squashfuse (it provides squashfuse_ll) or set `squashfuse` in berth.toml",
        )?;
        match failed {
            None => Ok(()),
            Some((e, said)) => Err(Error::image(
                image,
                format!("{program} could not serve the image{said} ({e})"),
                "the image may be corrupt or truncated; check it with `berth inspect` or copy it again",
            )),
        }
    }

    fn start_fuse_overlay(&mut self, program: &str, options: &str, at: &Path) -> Result<()> {
        // Without POSIX ACL support: the image's server has none, and fuse-overlayfs would
        // otherwise pass its "not supported" on to every lookup (exec fails with EOPNOTSUPP).
        let mut cmd = Command::new(program);
        cmd.arg("-f").arg("-o").arg(format!("{options},noacl"));
        // In a mount namespace of its own: pivot_root moves the root of every process of the
        // container's namespace onto the new root, which is this server's own mount, and its
        // path lookups (it reopens files through /proc/self/fd) would then wait on itself.
        // SAFETY: runs in the forked child before exec; unshare is a plain system call.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let failed = self.start_fuse(
            "fuse-overlayfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            cmd,
            at,
            FuseKind::Overlay,
            "install fuse-overlayfs (unprivileged overlays on kernels before Linux 5.11) or set \
             `fuse_overlayfs` in berth.toml",
        )?;
        match failed {
            None => Ok(()),
            Some((e, said)) => Err(Error::request(
                "--overlay",
                format!("{program} could not serve the overlay{said} ({e})"),
                "check that DIR is a directory of yours on a local filesystem",
            )),
        }
    }

    fn pivot_root(&mut self, new_root: &Path) -> Result<()> {
        // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only
        // the container's tree, with no directory needed for the old root.
        let fail = |op: &str, e| Error::sys(op, new_root.display(), e);
        nix::unistd::chdir(new_root).map_err(|e| fail("chdir", e))?;
        nix::unistd::pivot_root(".", ".").map_err(|e| fail("pivot_root", e))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach the old root from", e))?;
        nix::unistd::chdir("/").map_err(|e| fail("chdir", e))
    }
}

/// Resolve `path` under `root`, following symlinks as if `root` were `/`, so a link in the image
/// (say `/etc/localtime -> /usr/share/zoneinfo/UTC`) resolves inside the image, never on the host.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    use crate::rootpath::{resolve, rooted, Missing};
    let logical = resolve(root, path, Missing::Allow)
        .map_err(|e| Error::request(format!("path {} in the image", path.display()), e.to_string(), ""))?;
    Ok(rooted(root, &logical))
}
