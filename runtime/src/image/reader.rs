//! Positioned reads of image headers.
//!
//! Images are often many gigabytes and sit on parallel filesystems, so berth reads only the
//! few header bytes it needs, at known offsets (`pread`), and never the whole file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What to tell a user whose image file ends too early.
pub(crate) const HINT_COPY_AGAIN: &str =
    "the copy is incomplete or damaged; copy the image again (compare its size with the original)";

/// An opened image file and its size, fixed when it was opened.
pub(crate) struct ImageFile {
    file: File,
    path: PathBuf,
    size: u64,
}

/// What [`open_image_path`] found at a path.
pub(crate) enum Opened {
    File(ImageFile),
    Directory,
}

/// Opens what the user named, without blocking and without a check-then-open race: one
/// `open(O_RDONLY|O_NONBLOCK)` (symlinks the user made are followed, it is their path), then
/// `fstat` of that descriptor decides. A FIFO opens at once under O_NONBLOCK and is refused by
/// its type; a file swapped in after a separate `stat` cannot be what is read.
pub(crate) fn open_image_path(path: &Path) -> Result<Opened> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::image_io(path, "cannot open the image", e))?;
    let meta = file.metadata().map_err(|e| Error::image_io(path, "cannot read the image's size", e))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Ok(Opened::Directory);
    }
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a named pipe (FIFO)"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(Error::image(
            path,
            format!("{kind}, not an image file or a directory"),
            "give the path of an image file (.sif, .sqsh, .img) or of a sandbox directory",
        ));
    }
    Ok(Opened::File(ImageFile { file, path: path.to_path_buf(), size: meta.len() }))
}

impl ImageFile {
    /// Opens a regular file as an image (a FIFO or a device is refused without blocking).
    pub(crate) fn open(path: &Path) -> Result<Self> {
        match open_image_path(path)? {
            Opened::File(f) => Ok(f),
            Opened::Directory => Err(Error::image(
                path,
                "a directory, not an image file",
                "give the path of an image file (.sif, .sqsh, .img)",
            )),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes left in the file from `offset` (0 when `offset` is past the end).
    pub(crate) fn available_from(&self, offset: u64) -> u64 {
        self.size.saturating_sub(offset)
    }

    /// Reads up to `len` bytes at `offset`; fewer only when the file ends first.
    pub(crate) fn read_up_to(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let len = len.min(usize::try_from(self.available_from(offset)).unwrap_or(usize::MAX));
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let n = self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
                .map_err(|e| Error::image_io(&self.path, "cannot read the image", e))?;
            if n == 0 {
                // The file shrank under us; what we have is all there is.
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(buf)
    }

    /// Reads exactly `len` bytes at `offset`, or says which part (`what`) the file cuts short.
    pub(crate) fn read_exact(&self, offset: u64, len: usize, what: &str) -> Result<Vec<u8>> {
        let buf = self.read_up_to(offset, len)?;
        if buf.len() < len {
            return Err(Error::image(
                &self.path,
                format!(
                    "truncated: {what} needs bytes {offset}..{} but the file holds only {} bytes",
                    offset.saturating_add(len as u64),
                    self.size
                ),
                HINT_COPY_AGAIN,
            ));
        }
        Ok(buf)
    }
}

// Little-endian field readers for header buffers. The buffers come from `read_exact` with a
// fixed length, so the fields are always present; a missing field still reads as 0 rather than
// panicking, and the checks that follow reject the header.

pub(crate) fn le_u16(buf: &[u8], at: usize) -> u16 {
    field::<2>(buf, at).map(u16::from_le_bytes).unwrap_or(0)
}

pub(crate) fn le_u32(buf: &[u8], at: usize) -> u32 {
    field::<4>(buf, at).map(u32::from_le_bytes).unwrap_or(0)
}

pub(crate) fn le_i32(buf: &[u8], at: usize) -> i32 {
    field::<4>(buf, at).map(i32::from_le_bytes).unwrap_or(0)
}

pub(crate) fn le_u64(buf: &[u8], at: usize) -> u64 {
    field::<8>(buf, at).map(u64::from_le_bytes).unwrap_or(0)
}

pub(crate) fn le_i64(buf: &[u8], at: usize) -> i64 {
    field::<8>(buf, at).map(i64::from_le_bytes).unwrap_or(0)
}

/// `N` bytes at `at`, if the buffer has them.
pub(crate) fn field<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// A byte slice at `at`, empty if the buffer is shorter.
pub(crate) fn bytes_at(buf: &[u8], at: usize, len: usize) -> &[u8] {
    at.checked_add(len).and_then(|end| buf.get(at..end)).unwrap_or(&[])
}

/// A NUL-padded string field as text (lossy: names are for display).
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Up to 8 bytes in hex, to show users what was found instead of a magic number.
pub(crate) fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}
