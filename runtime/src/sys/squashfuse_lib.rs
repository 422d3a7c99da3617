//! The image's FUSE server run in a forked berth process instead of an exec'd `squashfuse_ll`:
//! exec'ing it costs the kernel's exec plus the loading of its seven libraries, about 1.2 ms
//! of every cold start, while a fork of the (single-threaded) launcher is a fraction of that.
//!
//! `libsquashfuse_ll` (and through it `libfuse3`) is loaded with `dlopen` in the forked child
//! only: neither berth, nor a process joining a container, nor the Slurm plugin ever maps them,
//! and a node without the library still runs the `squashfuse` program as before.
//!
//! The few items used are declared here by hand, following `<fuse3/fuse_lowlevel.h>` and
//! `<fuse3/fuse_opt.h>` of libfuse 3 (3.14) and `<squashfuse/ll.h>` of squashfuse 0.1.10x, so
//! the build needs no -dev package. The libfuse functions are looked up at their `FUSE_3.0`
//! symbol version, the ABI these declarations describe.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// `struct fuse_args` of `<fuse3/fuse_opt.h>`.
#[repr(C)]
struct FuseArgs {
    argc: c_int,
    argv: *mut *mut c_char,
    allocated: c_int,
}

/// `struct fuse_lowlevel_ops` of `<fuse3/fuse_lowlevel.h>`, in its order, up to `create`, the
/// last one squashfuse implements; its size is passed along, and libfuse treats the members
/// after it as unset. Every member is a function pointer (a symbol's address, or null).
#[repr(C)]
#[derive(Default)]
struct LowlevelOps {
    init: Sym,
    destroy: Sym,
    lookup: Sym,
    forget: Sym,
    getattr: Sym,
    setattr: Sym,
    readlink: Sym,
    mknod: Sym,
    mkdir: Sym,
    unlink: Sym,
    rmdir: Sym,
    symlink: Sym,
    rename: Sym,
    link: Sym,
    open: Sym,
    read: Sym,
    write: Sym,
    flush: Sym,
    release: Sym,
    fsync: Sym,
    opendir: Sym,
    readdir: Sym,
    releasedir: Sym,
    fsyncdir: Sym,
    statfs: Sym,
    setxattr: Sym,
    getxattr: Sym,
    listxattr: Sym,
    removexattr: Sym,
    access: Sym,
    create: Sym,
}

/// A symbol's address (a C function pointer has the size and representation of a pointer).
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Sym(*mut c_void);

impl Default for Sym {
    fn default() -> Self {
        Sym(std::ptr::null_mut())
    }
}

/// `sqfs_ll *sqfs_ll_open(const char *path, size_t offset)` of `<squashfuse/ll.h>`.
type SqfsLlOpen = unsafe extern "C" fn(*const c_char, usize) -> *mut c_void;
/// `struct fuse_session *fuse_session_new(struct fuse_args *, const struct fuse_lowlevel_ops *,
/// size_t op_size, void *userdata)`.
type SessionNew = unsafe extern "C" fn(*mut FuseArgs, *const LowlevelOps, usize, *mut c_void) -> *mut c_void;
/// `int fuse_session_mount(struct fuse_session *, const char *mountpoint)`.
type SessionMount = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
/// `int fuse_session_loop(struct fuse_session *)`.
type SessionLoop = unsafe extern "C" fn(*mut c_void) -> c_int;

/// Everything the child needs, made before the fork.
pub(crate) struct Server {
    library: CString,
    image: CString,
    offset: usize,
    /// `/dev/fd/N`: libfuse (3.3 and later) takes the descriptor of the mount berth made.
    mountpoint: CString,
    /// libfuse's `argv[0]`: it parses its arguments and wants exactly a program name.
    argv0: CString,
}

impl Server {
    pub(crate) fn new(library: &str, image: &std::path::Path, offset: u64, fuse_fd: i32) -> Option<Server> {
        Some(Server {
            library: CString::new(library).ok()?,
            image: CString::new(image.as_os_str().as_encoded_bytes()).ok()?,
            offset: usize::try_from(offset).ok()?,
            mountpoint: CString::new(format!("/dev/fd/{fuse_fd}")).ok()?,
            argv0: CString::new("squashfuse_ll").ok()?,
        })
    }

    /// In the forked child: load the library and serve the mount until it goes away. Returns
    /// the exit code for the child once serving ended, or, when the library or one of its
    /// symbols cannot be loaded, the loader's message (the caller then runs the program).
    ///
    /// # Safety
    /// Only in a child forked from a single-threaded process (the loader and the library
    /// allocate), which ends with `_exit` afterwards.
    pub(crate) unsafe fn serve(&self) -> Result<c_int, String> {
        let loaded = self.load()?;
        // SAFETY: the pointers are the library's own functions, resolved above with the
        // prototypes of the headers named at the top; every string is NUL-terminated and
        // outlives the calls; `ops` and `args` are laid out as libfuse 3 expects and live until
        // `_exit`, as does the `sqfs_ll` that becomes the session's user data.
        unsafe {
            let ll = (loaded.open)(self.image.as_ptr(), self.offset);
            if ll.is_null() {
                // squashfuse said why on stderr ("Something went wrong trying to read ...").
                return Ok(1);
            }
            let mut argv = [self.argv0.as_ptr() as *mut c_char, std::ptr::null_mut()];
            let mut args = FuseArgs { argc: 1, argv: argv.as_mut_ptr(), allocated: 0 };
            let se = (loaded.new)(&mut args, &loaded.ops, std::mem::size_of::<LowlevelOps>(), ll);
            if se.is_null() || (loaded.mount)(se, self.mountpoint.as_ptr()) != 0 {
                return Ok(1);
            }
            // One thread, as Charliecloud's ch-run serves its images: the berth process never
            // starts threads before this fork, and a storm of readers measured no faster with
            // squashfuse_ll's thread pool on the nodes tried.
            Ok(if (loaded.run)(se) == 0 { 0 } else { 1 })
        }
    }

    fn load(&self) -> Result<Loaded, String> {
        // SAFETY: dlopen/dlsym/dlvsym/dlerror take NUL-terminated strings and return either a
        // valid handle/address or null; the handle is never closed (the process ends with the
        // server). RTLD_NOW: every symbol the library needs is bound now, so a broken
        // installation fails here, where the program can still take over.
        unsafe {
            let handle = libc::dlopen(self.library.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if handle.is_null() {
                return Err(dlerror());
            }
            let sym = |name: &CStr| -> Result<Sym, String> {
                let p = libc::dlsym(handle, name.as_ptr());
                if p.is_null() {
                    Err(dlerror())
                } else {
                    Ok(Sym(p))
                }
            };
            let fuse = |name: &CStr| -> Result<Sym, String> {
                let p = libc::dlvsym(handle, name.as_ptr(), c"FUSE_3.0".as_ptr());
                if p.is_null() {
                    Err(dlerror())
                } else {
                    Ok(Sym(p))
                }
            };
            // The same operations squashfuse_ll's own main installs.
            let ops = LowlevelOps {
                lookup: sym(c"sqfs_ll_op_lookup")?,
                forget: sym(c"sqfs_ll_op_forget")?,
                getattr: sym(c"sqfs_ll_op_getattr")?,
                readlink: sym(c"sqfs_ll_op_readlink")?,
                open: sym(c"sqfs_ll_op_open")?,
                read: sym(c"sqfs_ll_op_read")?,
                release: sym(c"sqfs_ll_op_release")?,
                opendir: sym(c"sqfs_ll_op_opendir")?,
                readdir: sym(c"sqfs_ll_op_readdir")?,
                releasedir: sym(c"sqfs_ll_op_releasedir")?,
                statfs: sym(c"stfs_ll_op_statfs")?,
                getxattr: sym(c"sqfs_ll_op_getxattr")?,
                listxattr: sym(c"sqfs_ll_op_listxattr")?,
                create: sym(c"sqfs_ll_op_create")?,
                ..LowlevelOps::default()
            };
            // SAFETY (transmutes): each address is the named C function, whose prototype in the
            // headers is the one its type alias spells.
            Ok(Loaded {
                open: std::mem::transmute::<*mut c_void, SqfsLlOpen>(sym(c"sqfs_ll_open")?.0),
                new: std::mem::transmute::<*mut c_void, SessionNew>(fuse(c"fuse_session_new")?.0),
                mount: std::mem::transmute::<*mut c_void, SessionMount>(fuse(c"fuse_session_mount")?.0),
                run: std::mem::transmute::<*mut c_void, SessionLoop>(fuse(c"fuse_session_loop")?.0),
                ops,
            })
        }
    }
}

struct Loaded {
    open: SqfsLlOpen,
    new: SessionNew,
    mount: SessionMount,
    run: SessionLoop,
    ops: LowlevelOps,
}

/// The dynamic loader's last message.
fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call,
    // copied at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dynamic loader error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// Whether `library` loads and has every symbol the server uses, tried in a forked child so
/// that this process never maps it: None if so, else the loader's message.
pub(crate) fn check(library: &str) -> Option<String> {
    let server = match Server::new(library, std::path::Path::new("/"), 0, 0) {
        Some(s) => s,
        None => return Some(format!("{library:?} is not a library name")),
    };
    if !super::proc::single_threaded() {
        return Some("cannot be tried from a multithreaded process".into());
    }
    let Ok((read, write)) = nix::unistd::pipe() else { return Some("no pipe".into()) };
    // SAFETY: this process has a single thread (checked above), so the child may allocate and
    // load libraries; it leaves with `_exit`.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Some(format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(read);
            let said = server.load().err().unwrap_or_default();
            let _ = nix::unistd::write(&write, said.as_bytes());
            // SAFETY: leaving the forked child without the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(write);
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(read), &mut said);
            let _ = nix::sys::wait::waitpid(child, None);
            Some(said).filter(|s| !s.is_empty())
        }
    }
}
