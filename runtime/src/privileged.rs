//! The privileged mount mode's root work, all of it in this module: check the image against
//! the site's limits, mount it read-only with the kernel's own driver (squashfs, or ext3 for
//! Singularity 2.x images) through a loop device in a private mount namespace, then become the
//! user for good. Everything after that (binds, working directory, the container itself) is
//! done as the user in a user namespace, exactly as in the unprivileged mode, so the kernel
//! checks the user's own permissions for every path the user names.
//!
//! Only root can run it (a scheduler's root context: slurmstepd, pbs_mom); berth is never
//! setuid. Kernel filesystem drivers do not defend against hostile images, hence the limits:
//! the image must sit under one of `[privileged] allowed_dirs`, belong to one of
//! `allowed_owners`, and be writable by nobody else.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::config::PrivilegedConfig;
use crate::error::{Error, Result};
use crate::image::{FsType, Image, RootFs};

/// Where the image is mounted, in the private mount namespace this process enters.
pub(crate) const MOUNT_DIR: &str = "/run/berth-privileged";

/// The user a root holder becomes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Target {
    /// The account `uid`, with its primary and supplementary groups from the host's databases.
    pub(crate) fn lookup(uid: u32) -> Result<Target> {
        let user =
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().ok_or_else(|| {
                Error::request(
                    format!("--user {uid}"),
                    "is not a user of this host",
                    "give the job owner's uid",
                )
            })?;
        let name = std::ffi::CString::new(user.name.clone()).unwrap_or_default();
        let groups = nix::unistd::getgrouplist(&name, user.gid)
            .map_err(|e| Error::sys("getgrouplist", &user.name, e))?;
        Ok(Target { uid, gid: user.gid.as_raw(), groups: groups.iter().map(|g| g.as_raw()).collect() })
    }
}

/// Open `image` as `target` and check the opened file against the site's limits; the file
/// returned is the one to mount, with its path as the kernel names it.
///
/// The open happens in a child that has become the user for good (groups, gid, uid), so a
/// file the user may not read (root's 0600 image, an image behind a 0700 directory, reached
/// by a symlink of the user's or not) is never opened, let alone mounted. The child passes
/// the descriptor back over a socket pair (`SCM_RIGHTS`); root then judges that descriptor
/// (`fstat`: a regular file of an allowed owner nobody else may write; where it is, from
/// `/proc/self/fd`: under an allowed directory) and mounts it. The name `/proc/self/fd`
/// gives is only a name in whichever mount namespace the user reached the file through, so
/// root also opens that name itself, from the allowed directory down without following any
/// link, and requires the very same file on the very same mount.
///
/// Must be called single-threaded (it forks).
pub(crate) fn open_allowed(cfg: &PrivilegedConfig, image: &Path, target: &Target) -> Result<(File, PathBuf)> {
    let refuse = |why: String| {
        Error::request(
            format!("image {}", image.display()),
            why,
            "privileged mounting is limited to images the site vetted ([privileged] in berth.toml); ask your administrator to place it there",
        )
    };
    let file = open_as(target, image)?;
    let meta = file.metadata().map_err(|e| Error::image_io(image, "cannot stat the image", e))?;
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    // Where the opened file is (the kernel's name for it, no path walked again). That name is
    // relative to the root of the mount namespace the file was reached in, which the user
    // chooses (`/proc/PID/root/...` of a process in her own namespace, where she may have
    // bound anything over a vetted name): it only says which allowed directory to look in.
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let canonical = std::fs::read_link(&fd_path).map_err(|e| Error::io("cannot read", &fd_path, e))?;
    let allowed = cfg.allowed_dirs.iter().find_map(|d| {
        let (dir, name) = open_dir(d)?;
        let rest = canonical.strip_prefix(&name).ok()?.to_path_buf();
        Some((dir, rest))
    });
    let Some((dir, rest)) = allowed else {
        let dirs: Vec<String> = cfg.allowed_dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(refuse(format!(
            "is not under an allowed directory ({})",
            if dirs.is_empty() { "none configured".into() } else { dirs.join(", ") }
        )));
    };
    // The file must be the one root itself reaches at that name, through this namespace's
    // mounts, from the allowed directory down, following no link: same device, inode and mount.
    let same = open_beneath(&dir, &rest).is_ok_and(|here| same_file_and_mount(&file, &here));
    if !same {
        return Err(refuse(format!(
            "is not the file {} of this node (it was reached through another mount namespace, \
             such as a /proc/PID/root path, or the name changed meanwhile)",
            canonical.display()
        )));
    }
    let owner =
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid())).ok().flatten().map(|u| u.name);
    if !owner.as_ref().is_some_and(|o| cfg.allowed_owners.iter().any(|a| a == o)) {
        return Err(refuse(format!(
            "belongs to {}, not to an allowed owner ({})",
            owner.unwrap_or_else(|| meta.uid().to_string()),
            cfg.allowed_owners.join(", ")
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!("is writable by group or others (mode {:o})", meta.mode() & 0o7777)));
    }
    Ok((file, canonical))
}

/// The allowed directory `dir` opened by root (`O_PATH`; the site's own path, links in it
/// followed), with the kernel's name for it; None if it cannot be opened.
fn open_dir(dir: &Path) -> Option<(OwnedFd, PathBuf)> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .ok()?;
    let name = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
    Some((f.into(), name))
}

/// Open `rest` (a relative path of plain names) below `dir`, as `O_PATH`, in this process's
/// mount namespace, following no symbolic or magic link and never leaving `dir`:
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, or on kernels
/// before 5.6 (no openat2: RHEL 8's 4.18) the same walk one `O_NOFOLLOW` name at a time.
fn open_beneath(dir: &OwnedFd, rest: &Path) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    if rest.as_os_str().is_empty() || rest.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
    }
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    match nix::fcntl::openat2(dir.as_raw_fd(), rest, how) {
        // SAFETY: the kernel just returned this new descriptor, which nothing else owns.
        Ok(fd) => Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
        Err(nix::errno::Errno::ENOSYS) => walk_nofollow(dir, rest),
        Err(e) => Err(e.into()),
    }
}

/// [`open_beneath`] without openat2: each name opened `O_PATH | O_NOFOLLOW` relative to the
/// previous one (a link opens as the link itself, and the next name below it fails).
fn walk_nofollow(dir: &OwnedFd, rest: &Path) -> std::io::Result<OwnedFd> {
    let mut at = dir.try_clone()?;
    for c in rest.components() {
        let next = nix::fcntl::openat(
            Some(at.as_raw_fd()),
            c.as_os_str(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: openat just returned this new descriptor, which nothing else owns.
        at = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(next) };
        if nix::sys::stat::fstat(at.as_raw_fd()).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK) {
            return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
        }
    }
    Ok(at)
}

/// Whether descriptors `a` and `b` are one file (device, inode) reached through one mount
/// (`mnt_id` of `/proc/self/fdinfo`: a bind mount, or the copy of a mount in another mount
/// namespace, has its own).
fn same_file_and_mount(a: &impl AsRawFd, b: &impl AsRawFd) -> bool {
    let id = |fd: i32| {
        let st = nix::sys::stat::fstat(fd).ok()?;
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        let mnt: u64 = info.lines().find_map(|l| l.strip_prefix("mnt_id:"))?.trim().parse().ok()?;
        Some((st.st_dev, st.st_ino, mnt))
    };
    matches!((id(a.as_raw_fd()), id(b.as_raw_fd())), (Some(x), Some(y)) if x == y)
}

/// Open `path` read-only, non-blocking (a FIFO cannot hang root) in a forked child that is
/// `target` for good, and receive the descriptor from it.
fn open_as(target: &Target, path: &Path) -> Result<File> {
    use nix::sys::socket::{
        recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
        SockType,
    };
    use std::io::{IoSlice, IoSliceMut};
    let (parent, child) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Error::sys("socketpair", "image", e))?;
    // SAFETY: the caller is single-threaded (documented), so the child may allocate and run
    // ordinary code; it leaves with _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork", "image", e))? {
        nix::unistd::ForkResult::Child => {
            drop(parent);
            // The status: 0 with the descriptor, -1 if the child could not become the user,
            // else the errno of the open.
            let (status, fd) = match become_user(target) {
                Err(_) => (-1, None),
                Ok(()) => match std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(path)
                {
                    Ok(f) => (0, Some(f)),
                    Err(e) => (e.raw_os_error().unwrap_or(libc::EIO), None),
                },
            };
            let bytes = status.to_ne_bytes();
            let iov = [IoSlice::new(&bytes)];
            let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
            let cmsg: Vec<ControlMessage> =
                if fds.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(&fds)] };
            let code =
                i32::from(sendmsg::<()>(child.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).is_err());
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child: pid } => {
            drop(child);
            let mut bytes = [0u8; 4];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let received = {
                let mut iov = [IoSliceMut::new(&mut bytes)];
                recvmsg::<()>(parent.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).map(
                    |msg| {
                        let fd = msg.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
                            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                            _ => None,
                        });
                        (msg.bytes, fd)
                    },
                )
            };
            let _ = nix::sys::wait::waitpid(pid, None);
            let (n, fd) = received.map_err(|e| Error::sys("recvmsg", "image", e))?;
            // SAFETY: the kernel just installed this descriptor in our table for us (SCM_RIGHTS).
            let file = fd.map(|fd| unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            let status = if n == 4 { i32::from_ne_bytes(bytes) } else { libc::EIO };
            match (status, file) {
                (0, Some(f)) => {
                    // Back to blocking reads for the loop device and the header reader.
                    let _ = nix::fcntl::fcntl(
                        f.as_raw_fd(),
                        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
                    );
                    Ok(f)
                }
                (-1, _) => Err(Error::request(
                    format!("image {}", path.display()),
                    format!("cannot be opened as uid {}: could not become that user", target.uid),
                    "privileged mounting is for jobs of ordinary users",
                )),
                (e, _) => {
                    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(target.uid))
                        .ok()
                        .flatten()
                        .map(|u| u.name)
                        .unwrap_or_else(|| target.uid.to_string());
                    Err(Error::request(
                        format!("image {}", path.display()),
                        format!(
                            "cannot be opened by the job's user {user}: {}",
                            std::io::Error::from_raw_os_error(if e == 0 { libc::EIO } else { e })
                        ),
                        "an image is mounted only when its user may read it; ask the image's owner to make it readable to you",
                    ))
                }
            }
        }
    }
}

// <linux/loop.h>
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A read-only loop device over `size` bytes at `offset` of `file`, cleared by the kernel
/// once its last user (the mount) goes: nothing to detach, even if the holder is killed.
fn attach_loop(file: &File, offset: u64, size: u64) -> Result<(OwnedFd, PathBuf)> {
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| Error::io("cannot open", Path::new("/dev/loop-control"), e))?;
    for _ in 0..20 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(Error::sys("LOOP_CTL_GET_FREE", "/dev/loop-control", nix::errno::Errno::last()));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let lo = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&dev)
            .map_err(|e| Error::io("cannot open", &dev, e))?;
        let mut cfg = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: offset,
                // Whole sectors: the kernel rounds the device down, and squashfs refuses a
                // device shorter than its bytes_used (mksquashfs pads files to 4 KiB).
                lo_sizelimit: size.div_ceil(4096) * 4096,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `cfg` is a properly laid out `struct loop_config` that outlives the call;
        // the kernel only reads it.
        let rc = unsafe { libc::ioctl(lo.as_raw_fd(), LOOP_CONFIGURE, &mut cfg as *mut LoopConfig) };
        if rc == 0 {
            return Ok((lo.into(), dev));
        }
        match nix::errno::Errno::last() {
            // Another process took that free device first: ask for the next one.
            nix::errno::Errno::EBUSY => continue,
            e => return Err(Error::sys("LOOP_CONFIGURE", dev.display(), e)),
        }
    }
    Err(Error::request(
        "loop devices",
        "none stayed free long enough to be configured",
        "check `losetup -a` on this node",
    ))
}

/// Enter a private mount namespace and mount `image` (opened by [`open_allowed`]: `file`) read-only,
/// nosuid, nodev at [`MOUNT_DIR`]`/image`. Returns that directory. The mount lives as long as
/// a process of this namespace or of a namespace copied from it (the container) does.
pub(crate) fn mount_image(image: &Image, file: &File) -> Result<PathBuf> {
    let (fs, offset, size) = match &image.root {
        RootFs::Embedded { fs, offset, size } => (*fs, *offset, *size),
        RootFs::Directory { .. } => {
            return Err(Error::request("privileged mounting", "is for image files, not directories", ""))
        }
    };
    let (fstype, data) = match fs {
        FsType::Squashfs => ("squashfs", None),
        // The kernel's ext4 driver reads ext3; `noload` skips journal replay, which would write.
        FsType::Ext3 => ("ext4", Some("noload")),
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| Error::sys("unshare", "mount namespace", e))?;
    // Nothing of ours may propagate back to the host's mount table.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| Error::sys("mount --make-rslave", "/", e))?;
    let dir = Path::new(MOUNT_DIR);
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| Error::sys("mount tmpfs", dir.display(), e))?;
    let at = dir.join("image");
    std::fs::create_dir(&at).map_err(|e| Error::io("cannot create", &at, e))?;
    let (lo, dev) = attach_loop(file, offset, size)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some(&dev), &at, Some(fstype), flags, data).map_err(|e| {
        Error::image(
            &image.path,
            format!("the kernel's {fstype} driver refused it ({e})"),
            "the image may be damaged; check it with `berth inspect`",
        )
    })?;
    drop(lo);
    Ok(at)
}

/// Become `target` for good: groups, then gid, then uid (all three ids of each), checked.
/// The one place where a root berth drops its privileges.
pub(crate) fn become_user(target: &Target) -> Result<()> {
    let groups: Vec<nix::unistd::Gid> =
        target.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    let gid = nix::unistd::Gid::from_raw(target.gid);
    let uid = nix::unistd::Uid::from_raw(target.uid);
    nix::unistd::setgroups(&groups).map_err(|e| Error::sys("setgroups", target.uid, e))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| Error::sys("setresgid", target.gid, e))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| Error::sys("setresuid", target.uid, e))?;
    let ids = nix::unistd::getresuid().map_err(|e| Error::sys("getresuid", "", e))?;
    if [ids.real, ids.effective, ids.saved] != [uid; 3]
        || nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok()
    {
        return Err(Error::request(
            "dropping privileges",
            format!("did not leave this process as uid {}", target.uid),
            "",
        ));
    }
    // A dumpable process, as the user's own programs are: the user can join its namespaces.
    let _ = nix::sys::prctl::set_dumpable(true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The user the image is opened as (the tests run as root, who cannot "become" root).
    fn me() -> Target {
        Target { uid: 65534, gid: 65534, groups: vec![] }
    }

    fn tempdir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        t
    }

    fn cfg(dir: &Path) -> PrivilegedConfig {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
        PrivilegedConfig { allowed_dirs: vec![dir.to_path_buf()], allowed_owners: vec![me] }
    }

    #[test]
    fn images_outside_the_allowed_directories_are_refused() {
        // The image is opened as another user, which needs root.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let t = tempdir();
        let f = t.path().join("a.img");
        std::fs::write(&f, b"x").unwrap();
        let other = tempdir();
        let e = open_allowed(&cfg(other.path()), &f, &me()).unwrap_err().to_string();
        assert!(e.contains("not under an allowed directory"), "{e}");
        // A symlink into an allowed directory is judged by where it leads.
        let link = other.path().join("link.img");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let (_, canonical) = open_allowed(&cfg(t.path()), &link, &me()).unwrap();
        assert_eq!(canonical, std::fs::canonicalize(&f).unwrap());
        let e = open_allowed(&cfg(other.path()), &link, &me()).unwrap_err().to_string();
        assert!(e.contains("not under an allowed directory"), "{e}");
    }

    #[test]
    fn writable_or_foreign_images_are_refused() {
        // The image is opened as another user, which needs root.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let t = tempdir();
        let f = t.path().join("a.img");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let c = cfg(t.path());
        let e = open_allowed(&c, &f, &me()).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(open_allowed(&c, &f, &me()).is_ok());
        let c = PrivilegedConfig { allowed_owners: vec!["nobody-here".into()], ..c };
        let e = open_allowed(&c, &f, &me()).unwrap_err().to_string();
        assert!(e.contains("not to an allowed owner"), "{e}");
    }

    #[test]
    fn the_vetted_name_is_opened_beneath_the_allowed_directory_following_no_link() {
        let t = tempdir();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::fs::write(t.path().join("sub/a.img"), b"x").unwrap();
        std::os::unix::fs::symlink("sub/a.img", t.path().join("link.img")).unwrap();
        std::os::unix::fs::symlink("sub", t.path().join("dirlink")).unwrap();
        let (dir, _) = open_dir(t.path()).unwrap();
        let real = File::open(t.path().join("sub/a.img")).unwrap();
        for open in [open_beneath, walk_nofollow] {
            let here = open(&dir, Path::new("sub/a.img")).unwrap();
            assert!(same_file_and_mount(&real, &here));
            assert!(open(&dir, Path::new("link.img")).map_or(true, |f| !same_file_and_mount(&real, &f)));
            assert!(open(&dir, Path::new("dirlink/a.img")).is_err());
        }
        assert!(open_beneath(&dir, Path::new("../a.img")).is_err());
        assert!(open_beneath(&dir, Path::new("")).is_err());
        let other = File::open(t.path().join("sub")).unwrap();
        assert!(!same_file_and_mount(&real, &other));
    }

    #[test]
    fn images_the_user_cannot_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let nobody = Target { uid: 65534, gid: 65534, groups: vec![] };
        let t = tempdir();
        let f = t.path().join("secret.img");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = open_allowed(&cfg(t.path()), &f, &nobody).unwrap_err().to_string();
        assert!(e.contains("cannot be opened by the job's user") && e.contains("Permission denied"), "{e}");
        // Readable by all, behind a directory only its owner may enter, reached by a link.
        let closed = t.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        let g = closed.join("app.img");
        std::fs::write(&g, b"x").unwrap();
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = t.path().join("link.img");
        std::os::unix::fs::symlink(&g, &link).unwrap();
        let e = open_allowed(&cfg(t.path()), &link, &nobody).unwrap_err().to_string();
        assert!(e.contains("cannot be opened by the job's user"), "{e}");
        // What the user can read is opened, and named where it really is.
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (_, at) = open_allowed(&cfg(t.path()), &link, &nobody).unwrap();
        assert_eq!(at, std::fs::canonicalize(&g).unwrap());
    }
}
