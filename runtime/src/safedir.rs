//! Directories only their owner can change: a user's state directory and image caches, which
//! may live where others can write (`/tmp`, a site's shared 1777 cache). What was found is
//! judged by its own metadata (`lstat`, or `fstat` of a descriptor opened without following a
//! link), and a refusal names who is in the way.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};

use crate::error::{Error, Result};

/// Who `uid` is, for messages: `mallory (uid 1003)`, or `uid 1003` without a name.
pub fn owner_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| format!("{} (uid {uid})", u.name))
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Whether `gid` is `uid`'s private group (the user-private-group scheme of Red Hat and
/// others, where the default umask is 002 and the user's files are group-writable): the
/// user's primary group, named as the user, listing no other member.
fn private_group(gid: u32, uid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else { return false };
    if user.gid.as_raw() != gid {
        return false;
    }
    let Ok(Some(group)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) else { return false };
    group.name == user.name && group.mem.iter().all(|m| *m == user.name)
}

/// Whether someone besides `uid` may write to what has `mode` and group `gid`: others, or a
/// group that is not `uid`'s private group.
fn others_may_write(mode: u32, gid: u32, uid: u32) -> bool {
    mode & 0o002 != 0 || (mode & 0o020 != 0 && !private_group(gid, uid))
}

/// What was found where a private directory should be.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its mode (permission bits and type).
    pub mode: u32,
    /// Whether it is a directory (a symlink is not).
    pub is_dir: bool,
}

impl From<&std::fs::Metadata> for Found {
    fn from(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Found { uid: m.uid(), gid: m.gid(), mode: m.mode(), is_dir: m.is_dir() }
    }
}

impl From<&FileStat> for Found {
    fn from(st: &FileStat) -> Self {
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        Found { uid: st.st_uid, gid: st.st_gid, mode: st.st_mode, is_dir: kind == SFlag::S_IFDIR }
    }
}

/// How a private directory is judged, and what its refusal says.
pub struct Rule<'a> {
    /// What the directory is, leading the message (`unsafe state directory`).
    pub what: &'a str,
    /// Mode bits the owner alone may have: 0o077 (private), or 0o022 (only the owner writes;
    /// group write is allowed when the group is the owner's private group).
    pub deny: u32,
    /// The hint when another user owns it, given that owner (`mallory (uid 1003)`).
    pub foreign_hint: &'a dyn Fn(&str) -> String,
}

impl Rule<'_> {
    fn need(&self) -> &'static str {
        if self.deny & 0o077 == 0o077 {
            "must be a directory of yours with mode 0700"
        } else {
            "must be a directory of yours that only you can write to"
        }
    }

    fn chmod(&self) -> &'static str {
        if self.deny & 0o077 == 0o077 {
            "chmod 700"
        } else {
            "chmod go-w"
        }
    }

    /// Refuse `found` at `dir` unless it is a directory owned by `uid` with none of the
    /// `deny` bits.
    pub fn check(&self, dir: &Path, found: Found, uid: u32) -> Result<()> {
        let mode_ok = if self.deny == 0o022 {
            !others_may_write(found.mode, found.gid, uid)
        } else {
            found.mode & self.deny == 0
        };
        if found.is_dir && found.uid == uid && mode_ok {
            return Ok(());
        }
        let owner = owner_name(found.uid);
        let kind = if found.is_dir { "a directory" } else { "not a directory" };
        let hint = if found.uid != uid {
            (self.foreign_hint)(&owner)
        } else {
            format!("remove it, or `{} {}`", self.chmod(), dir.display())
        };
        Err(Error::Io {
            what: self.what.into(),
            path: dir.to_path_buf(),
            source: std::io::Error::other(format!(
                "{}; it is {kind} owned by {owner} with mode {:o}",
                self.need(),
                found.mode & 0o7777
            )),
            hint,
        })
    }
}

const DIR_FLAGS: OFlag =
    OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// The directory `name` in `at` (`None`: `name` is absolute), opened without following a link.
fn open_in(at: Option<&OwnedFd>, name: &OsStr) -> std::io::Result<OwnedFd> {
    let fd = openat(at.map(|f| f.as_raw_fd()), name, DIR_FLAGS, Mode::empty())?;
    // SAFETY: openat just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The components of the absolute `path` below `/`; `None` when it is relative or has `..`.
fn components(path: &Path) -> Option<Vec<&OsStr>> {
    if !path.is_absolute() {
        return None;
    }
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Some(n)),
            Component::RootDir | Component::CurDir => None,
            _ => Some(None),
        })
        .collect()
}

/// The directory at the absolute `path` (no `..`), every directory from `/` opened from the
/// previous one with `O_DIRECTORY|O_NOFOLLOW`: a symlink anywhere on the way makes it fail
/// (ELOOP or ENOTDIR) instead of leading elsewhere. `each` sees every directory opened, `/`
/// first, with its path so far, and may refuse it.
pub fn open_dir_nofollow(
    path: &Path,
    mut each: impl FnMut(&Path, &OwnedFd) -> std::io::Result<()>,
) -> std::io::Result<OwnedFd> {
    let parts = components(path).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut at = PathBuf::from("/");
    let mut dir = open_in(None, OsStr::new("/"))?;
    each(&at, &dir)?;
    for p in parts {
        dir = open_in(Some(&dir), p)?;
        at.push(p);
        each(&at, &dir)?;
    }
    Ok(dir)
}

/// A directory vetted by [`ensure_private_dir`], held open.
#[derive(Debug)]
pub struct PrivateDir {
    /// Its path, with no symlink in it (the one that was vetted).
    pub path: PathBuf,
    /// The directory itself.
    pub fd: OwnedFd,
}

/// Whether a directory on the way to a private one can be changed by nobody but root and
/// `uid`: owned by one of them, and writable by others only with the sticky bit (which keeps
/// them from renaming or removing entries they do not own).
fn check_ancestor(at: &Path, dir: &OwnedFd, uid: u32) -> std::io::Result<()> {
    let st = fstat(dir.as_raw_fd())?;
    let f = Found::from(&st);
    let open = others_may_write(f.mode, f.gid, f.uid) && f.mode & libc::S_ISVTX == 0;
    if (f.uid == 0 || f.uid == uid) && !open {
        return Ok(());
    }
    let why = if open { "writable by others without the sticky bit" } else { "owned by another user" };
    Err(std::io::Error::other(format!(
        "{} is {why} ({}, mode {:o}): whoever can change it can replace what is in it",
        at.display(),
        owner_name(f.uid),
        f.mode & 0o7777
    )))
}

/// Make (mode 0700) or open the directory `name` in `base`, and vet it as [`Rule::check`]
/// says: nothing that another user made or can change is used. `base` is resolved once (a
/// site's or user's own links are theirs to make), then every directory from `/` is opened
/// without following a link and must be root's or `uid`'s and not open to others (the sticky
/// bit excepted); `name` itself is never followed if it is a link.
pub fn ensure_private_dir(base: &Path, name: &OsStr, uid: u32, rule: &Rule) -> Result<PrivateDir> {
    let real = std::fs::canonicalize(base).map_err(|e| Error::io("cannot open", base, e))?;
    let path = real.join(name);
    let mut parts = Path::new(name).components();
    if !matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) {
        return Err(Error::io("cannot open", &path, std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let parent = open_dir_nofollow(&real, |at, fd| check_ancestor(at, fd, uid)).map_err(|e| Error::Io {
        what: rule.what.into(),
        path: path.clone(),
        source: e,
        hint: "every directory above it must be root's or yours, and not writable by others \
                   unless sticky (a shared directory is mode 1777 and root's)"
            .into(),
    })?;
    match mkdirat(Some(parent.as_raw_fd()), name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(Error::io("cannot create", &path, e.into())),
    }
    let dir = match open_in(Some(&parent), name) {
        Ok(d) => d,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            let st = fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| Error::io("cannot stat", &path, e.into()))?;
            rule.check(&path, Found::from(&st), uid)?;
            return Err(Error::io("cannot open", &path, e));
        }
        Err(e) => return Err(Error::io("cannot open", &path, e)),
    };
    let st = fstat(dir.as_raw_fd()).map_err(|e| Error::io("cannot stat", &path, e.into()))?;
    rule.check(&path, Found::from(&st), uid)?;
    Ok(PrivateDir { path, fd: dir })
}

/// What [`file_in`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// Nothing of that name.
    Missing,
    /// A regular file of the directory's owner that nobody else can write.
    Own(PathBuf),
}

/// The file `name` in the vetted directory `dir`, judged by `lstat` (a link is not followed,
/// a FIFO is not opened): a file is trusted only when it is a regular file owned by `uid`
/// that nobody else can write (group write only for `uid`'s private group); anything else there is refused with a message naming its
/// owner, `what` leading it.
pub fn file_in(dir: &PrivateDir, name: &OsStr, uid: u32, what: &str) -> Result<Entry> {
    let path = dir.path.join(name);
    let st = match fstatat(Some(dir.fd.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => return Ok(Entry::Missing),
        Err(e) => return Err(Error::io("cannot stat", &path, e.into())),
    };
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind == SFlag::S_IFREG && st.st_uid == uid && !others_may_write(st.st_mode, st.st_gid, uid) {
        return Ok(Entry::Own(path));
    }
    let kind = if kind == SFlag::S_IFREG { "a file" } else { "not a regular file" };
    Err(Error::Io {
        what: what.into(),
        path: path.clone(),
        source: std::io::Error::other(format!(
            "it is {kind} owned by {} with mode {:o}; only a file of yours that only you can write is used",
            owner_name(st.st_uid),
            st.st_mode & 0o7777
        )),
        hint: format!("remove it (rm {}) and try again", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rule() -> Rule<'static> {
        Rule { what: "unsafe test cache", deny: 0o022, foreign_hint: &|o| format!("ask {o}") }
    }

    #[test]
    fn made_private_and_reused() {
        let t = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let d = ensure_private_dir(t.path(), OsStr::new("c"), uid, &rule()).unwrap();
        let m = std::fs::symlink_metadata(t.path().join("c")).unwrap();
        assert!(m.is_dir() && m.permissions().mode() & 0o777 == 0o700);
        assert_eq!(d.path, t.path().canonicalize().unwrap().join("c"));
        assert_eq!(file_in(&d, OsStr::new("x"), uid, "entry").unwrap(), Entry::Missing);
        std::fs::write(d.path.join("x"), b"").unwrap();
        std::fs::set_permissions(d.path.join("x"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(file_in(&d, OsStr::new("x"), uid, "entry").unwrap(), Entry::Own(d.path.join("x")));
        std::fs::set_permissions(d.path.join("x"), std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = file_in(&d, OsStr::new("x"), uid, "entry").unwrap_err().to_string();
        assert!(e.contains("mode 666") && e.contains("rm "), "{e}");
        // The same directory again; with mode 0755 it is still only ours to write.
        std::fs::set_permissions(&d.path, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(t.path(), OsStr::new("c"), uid, &rule()).unwrap();
    }

    /// Under umask 002 with user private groups, a user's directories and files are
    /// group-writable by a group only they are in: still theirs alone. Any other group is not.
    #[test]
    fn a_private_group_may_write() {
        let t = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let me = nix::unistd::User::from_uid(uid.into()).unwrap().unwrap();
        let own = nix::unistd::Group::from_gid(me.gid).unwrap().unwrap();
        let private = own.name == me.name && own.mem.iter().all(|m| *m == me.name);
        let d = t.path().join("c");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o770)).unwrap();
        std::fs::write(d.join("x"), b"").unwrap();
        std::fs::set_permissions(d.join("x"), std::fs::Permissions::from_mode(0o664)).unwrap();
        let got = ensure_private_dir(t.path(), OsStr::new("c"), uid, &rule());
        assert_eq!(got.is_ok(), private, "{got:?}");
        if let Ok(p) = got {
            assert_eq!(file_in(&p, OsStr::new("x"), uid, "entry").unwrap(), Entry::Own(d.join("x")));
        }
        // A group of others (any group that is not the owner's private one).
        let other = (1..60000)
            .map(nix::unistd::Gid::from_raw)
            .find(|g| nix::unistd::Group::from_gid(*g).ok().flatten().is_some_and(|g| g.name != me.name));
        if let Some(g) = other {
            nix::unistd::chown(&d, None, Some(g)).unwrap();
            let e = ensure_private_dir(t.path(), OsStr::new("c"), uid, &rule()).unwrap_err().to_string();
            assert!(e.contains("chmod go-w"), "{e}");
        }
    }

    #[test]
    fn links_and_open_modes_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("c")).unwrap();
        let e = ensure_private_dir(t.path(), OsStr::new("c"), uid, &rule()).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::create_dir(t.path().join("open")).unwrap();
        std::fs::set_permissions(t.path().join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(t.path(), OsStr::new("open"), uid, &rule()).unwrap_err().to_string();
        assert!(e.contains("chmod go-w"), "{e}");
        // A parent open to all without the sticky bit; with it, fine.
        let p = t.path().join("open");
        let e = ensure_private_dir(&p, OsStr::new("c"), uid, &rule()).unwrap_err().to_string();
        assert!(e.contains("without the sticky bit"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_private_dir(&p, OsStr::new("c"), uid, &rule()).unwrap();
        for bad in ["", "..", "a/b"] {
            assert!(ensure_private_dir(t.path(), OsStr::new(bad), uid, &rule()).is_err(), "{bad:?}");
        }
        let link = t.path().join("l");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        assert!(open_dir_nofollow(&link.join("real"), |_, _| Ok(())).is_err());
        assert!(open_dir_nofollow(Path::new("rel"), |_, _| Ok(())).is_err());
    }
}
