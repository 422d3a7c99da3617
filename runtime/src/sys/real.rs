//! [`MountOps`] with real system calls.

use std::ffi::{CStr, CString};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

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

/// A running FUSE server, a child of this process: exec'd (`squashfuse_ll`, fuse-overlayfs) or
/// forked (the image served through libsquashfuse_ll, see [`super::squashfuse_lib`]).
pub(crate) struct FuseServer {
    pid: i32,
    pub kind: FuseKind,
}

impl FuseServer {
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// How the server ended, if it has (reaping it).
    fn try_wait(&self) -> Option<String> {
        match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(format!("exit status: {code}")),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(format!("signal: {} ({sig})", sig as i32)),
            _ => None,
        }
    }

    /// Stop the server once nothing uses the container any more. The image is read-only and
    /// the mount lives only in our namespace, so there is nothing to flush: SIGKILL ends it
    /// at once. An overlay server is asked to end (SIGTERM) and given a moment to finish what
    /// it writes to the user's directory. Either is reaped, so no process is left.
    pub(crate) fn stop(self) {
        let pid = Pid::from_raw(self.pid);
        if self.kind == FuseKind::Overlay {
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    // Ended, or already reaped by whoever waited for any child.
                    _ => return,
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        // Not if someone else (a wait for any child) reaped it: the pid may be another's now.
        if matches!(waitpid(pid, Some(WaitPidFlag::WNOHANG)), Ok(WaitStatus::StillAlive)) {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
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
    /// `/dev/fd/N`, is appended here) to serve it, or, given `library`, serve the image from a
    /// forked child with `cmd` as that child's fallback. Returns the server's stderr, kept in
    /// an anonymous file for messages, and whether the first access through the mount failed.
    #[allow(clippy::too_many_arguments)]
    fn start_fuse(
        &mut self,
        fstype: &str,
        flags: MsFlags,
        mut cmd: Command,
        library: Option<(&str, &Path, u64)>,
        at: &Path,
        kind: FuseKind,
        install_hint: &str,
    ) -> Result<Option<(std::io::Error, String)>> {
        // Checked first: the child closes the descriptor through which a failed exec would be
        // reported, so a missing server would otherwise only show as a dead mount. Also when
        // the library serves: the program is its fallback, and a site learns of a broken one
        // now rather than on the day the library cannot be loaded.
        let program = cmd.get_program().to_owned();
        if let Err(source) = check_executable_program(Path::new(&program)) {
            return Err(Error::Io {
                what: format!("cannot start {}", program.to_string_lossy()),
                path: at.to_path_buf(),
                source,
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
        cmd.arg(format!("/dev/fd/{fd}"));
        // The fork needs this process single-threaded: the child allocates and loads libraries,
        // which another thread holding the allocator's or the loader's lock at the fork would
        // deadlock. With threads (never the case today), the program is run instead.
        let forked = match library {
            Some((lib, image, offset)) if super::proc::single_threaded() => {
                let server = super::squashfuse_lib::Server::new(lib, image, offset, fd);
                let fallback = exec_argv(&cmd);
                match (server, fallback) {
                    (Some(server), Some(fallback)) => Some(
                        fork_server(&server, &fallback, fd, log.as_ref().map(|f| f.as_raw_fd())).map_err(
                            |e| Error::Io {
                                what: format!("cannot start the server of {}", image.display()),
                                path: at.to_path_buf(),
                                source: e.into(),
                                hint: String::new(),
                            },
                        )?,
                    ),
                    _ => None,
                }
            }
            _ => None,
        };
        let pid = match forked {
            Some(pid) => pid,
            None => {
                let log_for_child = log.as_ref().and_then(|f| f.try_clone().ok());
                cmd.stdin(Stdio::null()).stdout(Stdio::null());
                cmd.stderr(log_for_child.map(Stdio::from).unwrap_or_else(Stdio::inherit));
                // SAFETY: the closure runs in the forked child before exec and only makes
                // async-signal-safe calls (fcntl, close_range, prctl) on descriptors the child
                // owns.
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
                // Reaped through its pid (`FuseServer::stop`), like a forked server; the
                // `Child` holds nothing else (no pipes).
                child.id() as i32
            }
        };
        drop(fuse);
        self.fuse.push(FuseServer { pid, kind });
        // First access waits for the server's INIT; if the server died, the kernel answers
        // ENOTCONN at once, so this never hangs.
        let Err(e) = std::fs::read_dir(at) else { return Ok(None) };
        let status = self.fuse.last().and_then(FuseServer::try_wait);
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

/// A statically linked build (the PBS starter `berth-pbs`): glibc's dlopen there needs the very
/// glibc it was linked with at run time, so such a build always runs the `squashfuse` program.
const STATIC: bool = cfg!(target_feature = "crt-static");

/// `cmd`'s program and arguments for `execvp`, or None if one holds a NUL byte.
fn exec_argv(cmd: &Command) -> Option<Vec<CString>> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| CString::new(a.as_encoded_bytes()).ok())
        .collect()
}

/// Fork the image's server: the child serves the mount on `fd` through the library, or, if
/// that cannot be loaded, execs `fallback` (the `squashfuse` program, with the arguments it
/// would have had). The caller is single-threaded.
fn fork_server(
    server: &super::squashfuse_lib::Server,
    fallback: &[CString],
    fd: i32,
    log: Option<i32>,
) -> nix::Result<i32> {
    let parent = nix::unistd::getpid();
    let mut argv: Vec<*const libc::c_char> = fallback.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: the caller checked this process has one thread, so the child may allocate and
    // load libraries; it never returns into the parent's code and leaves with `_exit` (no
    // destructors, no atexit handlers, no flushing of buffers the parent owns).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
        nix::unistd::ForkResult::Child => {
            // SAFETY: see above; everything below acts on this child's own state.
            unsafe { serve_in_child(server, &argv, parent, fd, log) }
        }
    }
}

/// The forked server's whole life (see [`fork_server`]).
///
/// # Safety
/// Only in a child just forked from a single-threaded process; `argv` is a null-terminated
/// array of NUL-terminated strings.
unsafe fn serve_in_child(
    server: &super::squashfuse_lib::Server,
    argv: &[*const libc::c_char],
    parent: Pid,
    fd: i32,
    log: Option<i32>,
) -> ! {
    // SAFETY: plain system calls on this process's own attributes and descriptors, and the
    // library calls of `serve`, which the caller's single thread makes safe after the fork.
    unsafe {
        // Gone with its launcher, as the exec'd server is (and not left serving if the parent
        // died before this line).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent.as_raw() {
            libc::_exit(1);
        }
        // What exec would give it: no blocked signals, no handler of the parent's.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMIN() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if sig != libc::SIGKILL
                && sig != libc::SIGSTOP
                && libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
            {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // `ps`, `top` and `pgrep squashfuse_ll` name it as they name the exec'd server, and
        // `ps` shows the command line the exec'd server would have.
        libc::prctl(libc::PR_SET_NAME, c"squashfuse_ll".as_ptr());
        let words: Vec<String> = argv
            .iter()
            .take_while(|a| !a.is_null())
            .map(|a| CStr::from_ptr(*a).to_string_lossy().into_owned())
            .collect();
        crate::sys::process::set_cmdline(&words.join(" "));
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
        }
        if let Some(log) = log {
            libc::dup2(log, 2);
        }
        // Only the mount's descriptor and stdio stay: no launcher pipe is held open.
        crate::sys::process::close_fds_except(&[fd]);
        let fallback_note = match server.serve() {
            Ok(code) => libc::_exit(code),
            Err(why) => why,
        };
        // The program serves instead; the note is read only if it fails too.
        let note = format!("berth: {fallback_note}; running {}\n", CStr::from_ptr(argv[0]).to_string_lossy());
        libc::write(2, note.as_ptr().cast(), note.len());
        libc::fcntl(fd, libc::F_SETFD, 0);
        libc::execvp(argv[0], argv.as_ptr());
        let err = format!(
            "berth: cannot start {}: {}\n",
            CStr::from_ptr(argv[0]).to_string_lossy(),
            std::io::Error::last_os_error()
        );
        libc::write(2, err.as_ptr().cast(), err.len());
        libc::_exit(127)
    }
}

/// Whether `program` (a path, or a name looked up in `PATH`) is a file this process may
/// execute: access(2) also refuses a file on a `noexec` filesystem, whose mode bits say yes.
fn check_executable_program(program: &Path) -> std::io::Result<()> {
    let check = |p: &Path| -> std::io::Result<()> {
        let m = std::fs::metadata(p)?;
        if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
            return Err(std::io::ErrorKind::PermissionDenied.into());
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).map_err(std::io::Error::from)
    };
    if program.components().count() > 1 {
        return check(program);
    }
    let mut refused = None;
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        match check(&dir.join(program)) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    Err(refused.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()))
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

    fn start_squashfuse(
        &mut self,
        program: &str,
        library: &str,
        image: &Path,
        offset: u64,
        at: &Path,
    ) -> Result<()> {
        let mut cmd = Command::new(program);
        cmd.arg("-f");
        if offset > 0 {
            cmd.arg("-o").arg(format!("offset={offset}"));
        }
        cmd.arg(image);
        let library = Some(library).filter(|l| !l.is_empty() && !STATIC);
        let failed = self.start_fuse(
            "squashfuse",
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            cmd,
            library.map(|l| (l, image, offset)),
            at,
            FuseKind::Image,
            "install squashfuse (it provides squashfuse_ll) or set `squashfuse` in berth.toml",
        )?;
        let server = library.unwrap_or(program);
        match failed {
            None => Ok(()),
            Some((e, said)) => Err(Error::image(
                image,
                format!("{server} could not serve the image{said} ({e})"),
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
            None,
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
