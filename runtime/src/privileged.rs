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
pub const MOUNT_DIR: &str = "/run/berth";

/// The user a root holder becomes.
#[derive(Debug, Clone)]
pub struct Target {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Target {
    /// The account `uid`, with its primary and supplementary groups from the host's databases.
    pub fn lookup(uid: u32) -> Result<Target> {
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

/// Check `image` against the site's limits and open it. The checks are made on the opened
/// file, so the file checked is the file mounted.
pub fn open_allowed(cfg: &PrivilegedConfig, image: &Path) -> Result<(File, PathBuf)> {
    let refuse = |why: String| {
        Error::request(
            format!("image {}", image.display()),
            why,
            "privileged mounting is limited to images the site vetted ([privileged] in berth.toml); ask your administrator to place it there",
        )
    };
    let canonical =
        std::fs::canonicalize(image).map_err(|e| Error::image_io(image, "cannot open the image", e))?;
    let inside =
        cfg.allowed_dirs.iter().any(|d| std::fs::canonicalize(d).is_ok_and(|d| canonical.starts_with(d)));
    if !inside {
        let dirs: Vec<String> = cfg.allowed_dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(refuse(format!(
            "is not under an allowed directory ({})",
            if dirs.is_empty() { "none configured".into() } else { dirs.join(", ") }
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&canonical)
        .map_err(|e| Error::image_io(image, "cannot open the image", e))?;
    let meta = file.metadata().map_err(|e| Error::image_io(image, "cannot stat the image", e))?;
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
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

/// Enter a private mount namespace and mount `image` (opened by [`open_allowed`]) read-only,
/// nosuid, nodev at [`MOUNT_DIR`]`/image`. Returns that directory. The mount lives as long as
/// a process of this namespace or of a namespace copied from it (the container) does.
pub fn mount_image(image: &Image, file: &File) -> Result<PathBuf> {
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
pub fn become_user(target: &Target) -> Result<()> {
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

    fn cfg(dir: &Path) -> PrivilegedConfig {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
        PrivilegedConfig { allowed_dirs: vec![dir.to_path_buf()], allowed_owners: vec![me] }
    }

    #[test]
    fn images_outside_the_allowed_directories_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("a.img");
        std::fs::write(&f, b"x").unwrap();
        let other = tempfile::tempdir().unwrap();
        let e = open_allowed(&cfg(other.path()), &f).unwrap_err().to_string();
        assert!(e.contains("not under an allowed directory"), "{e}");
        // A symlink into an allowed directory is judged by where it leads.
        let link = other.path().join("link.img");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let (_, canonical) = open_allowed(&cfg(t.path()), &link).unwrap();
        assert_eq!(canonical, std::fs::canonicalize(&f).unwrap());
        let e = open_allowed(&cfg(other.path()), &link).unwrap_err().to_string();
        assert!(e.contains("not under an allowed directory"), "{e}");
    }

    #[test]
    fn writable_or_foreign_images_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("a.img");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let c = cfg(t.path());
        let e = open_allowed(&c, &f).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(open_allowed(&c, &f).is_ok());
        let c = PrivilegedConfig { allowed_owners: vec!["nobody-here".into()], ..c };
        let e = open_allowed(&c, &f).unwrap_err().to_string();
        assert!(e.contains("not to an allowed owner"), "{e}");
    }
}
