//! Read-only file mappings: parsing a host library's ELF headers touches a few pages, where
//! reading it whole would copy megabytes on every container start.

use std::fs::File;
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::path::Path;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A private, read-only mapping of a whole file.
pub(crate) struct Mapped {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapped {
    /// Map `path`. Only for files nobody truncates under us (the host's installed libraries:
    /// package upgrades replace them by rename, which leaves this mapping intact); image files
    /// are read with `read`, whose errors are reported instead of raising SIGBUS.
    pub(crate) fn open(path: &Path) -> std::io::Result<Mapped> {
        let file = File::open(path)?;
        let len = file.metadata()?.len() as usize;
        let Some(nz) = NonZeroUsize::new(len) else {
            return Ok(Mapped { ptr: NonNull::dangling(), len: 0 });
        };
        // SAFETY: a new private read-only mapping of a file we opened; no other code holds a
        // reference into it, and it is unmapped exactly once in Drop.
        let ptr = unsafe { mmap(None, nz, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE, file.as_fd(), 0) }
            .map_err(std::io::Error::from)?;
        Ok(Mapped { ptr, len })
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is the start of a live read-only mapping of `len` bytes that lives as
        // long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping the mapping created in `open`, once; no borrow of it outlives
            // `self` (Deref ties slices to `&self`).
            let _ = unsafe { munmap(self.ptr, self.len) };
        }
    }
}
