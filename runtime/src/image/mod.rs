//! Image formats, recognised by content (never by extension).
//!
//! `open()` reads only headers: it finds where the root filesystem lives inside the file
//! (SquashFS at 0, SquashFS/ext3 after a Singularity 2.x launch line, the primary system
//! partition of a SIF) and checks it is whole, so the mount step can mount it in place.
//!
//! Submodules: `reader` (positioned header reads), `squashfs` and `ext3` (superblocks), `sif`
//! (the SIF reader) and `sif_writer` (`write_sif`).

mod ext3;
mod reader;
pub(crate) mod sif;
mod sif_writer;
pub(crate) mod squashfs;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use reader::{hex_prefix, ImageFile, HINT_COPY_AGAIN};

pub(crate) use ext3::Ext3Info;
pub(crate) use sif::SifInfo;
pub use sif_writer::{write_sif, write_sif_into, SifObject, SifObjectKind};
pub(crate) use squashfs::Superblock as SquashfsInfo;

/// The first line of Singularity 2.x images (and the default SIF launch line): 31 bytes.
pub(crate) const SINGULARITY_LAUNCH_LINE: &[u8] = b"#!/usr/bin/env run-singularity\n";
/// How many header bytes `open()` reads to recognise a file (enough for ext at 0 and tar).
const SNIFF_LEN: usize = 2048;

/// How the image file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A plain SquashFS file (berth's native format).
    Squashfs,
    /// Apptainer/Singularity 3+ SIF container.
    Sif,
    /// Singularity 2.4+ `.simg`: launch line then SquashFS.
    Singularity2Squashfs,
    /// Singularity 2.x `.img`: launch line then ext3.
    Singularity2Ext3,
    /// A directory ("sandbox").
    Directory,
}

/// Filesystem type of a root filesystem stored inside a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsType {
    /// SquashFS.
    Squashfs,
    /// ext3 (Singularity 2.x images).
    Ext3,
}

/// Where the container's root filesystem is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RootFs {
    /// A filesystem image at `offset` inside the image file, `size` bytes long.
    Embedded {
        /// Its filesystem type.
        fs: FsType,
        /// Where it starts in the file, in bytes.
        offset: u64,
        /// Its length in bytes.
        size: u64,
    },
    /// A directory tree used as it is.
    Directory {
        /// The directory.
        path: PathBuf,
    },
}

/// One partition or data object of a SIF file, for `berth inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// The descriptor's object id.
    pub id: u32,
    /// Group number (the on-disk group id without its 0xf0000000 marker); 0 = no group.
    pub group: u32,
    /// Raw link: 0 = none, an object id, or (with the 0xf0000000 bit) a group, e.g. what a
    /// signature signs.
    pub link: u32,
    /// Human name of the descriptor type ("partition", "deffile", "labels", "signature", ...).
    pub kind: String,
    /// The descriptor's name (a file name, or empty).
    pub name: String,
    /// Where its data starts in the file, in bytes.
    pub offset: u64,
    /// Its data's length in bytes.
    pub size: u64,
    /// For partitions: "squashfs", "ext3", "encrypted-squashfs", "raw"...
    pub fs: Option<String>,
    /// For partitions: "primary-system", "system", "data", "overlay".
    pub role: Option<String>,
    /// For partitions: the architecture it was built for, Go-style ("amd64").
    pub arch: Option<String>,
}

/// A recognised image: where its root filesystem lives and what else it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    /// The image file (or directory) as opened.
    pub path: PathBuf,
    /// How the file is laid out.
    pub format: Format,
    /// Where the root filesystem lives.
    pub root: RootFs,
    /// Total size of the file in bytes (0 for directories).
    pub file_size: u64,
    /// SIF descriptors (empty for other formats).
    pub partitions: Vec<Partition>,
    /// Small data objects stored beside the root fs (SIF deffile, labels JSON), by kind.
    /// Serialized as `{kind, size, text}` (text lossy UTF-8), not as arrays of numbers that
    /// would make `inspect --json` print a dozen bytes per byte.
    #[serde(serialize_with = "objects_as_text")]
    pub embedded_objects: Vec<(String, Vec<u8>)>,
    /// The root SquashFS's superblock (compression, inode count...), when the root is SquashFS.
    pub(crate) squashfs: Option<SquashfsInfo>,
    /// The root ext3's superblock details, when the root is ext3.
    pub(crate) ext3: Option<Ext3Info>,
    /// SIF global header details (SIF only).
    pub(crate) sif: Option<SifInfo>,
}

fn objects_as_text<S: serde::Serializer>(
    objects: &[(String, Vec<u8>)],
    ser: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    #[derive(Serialize)]
    struct Object<'a> {
        kind: &'a str,
        size: usize,
        text: std::borrow::Cow<'a, str>,
    }
    let mut seq = ser.serialize_seq(Some(objects.len()))?;
    for (kind, bytes) in objects {
        seq.serialize_element(&Object { kind, size: bytes.len(), text: String::from_utf8_lossy(bytes) })?;
    }
    seq.end()
}

impl Image {
    fn new(path: &Path, format: Format, root: RootFs, file_size: u64) -> Self {
        Image {
            path: path.to_path_buf(),
            format,
            root,
            file_size,
            partitions: vec![],
            embedded_objects: vec![],
            squashfs: None,
            ext3: None,
            sif: None,
        }
    }

    /// The embedded object of `kind` ("deffile", "labels", ...), if the image has one.
    pub fn object(&self, kind: &str) -> Option<&[u8]> {
        self.embedded_objects.iter().find(|(k, _)| k == kind).map(|(_, bytes)| bytes.as_slice())
    }
}

/// Recognise `path` by its content and locate its root filesystem.
///
/// Reads only headers. Checks that the root filesystem lies whole inside the file, so that a
/// truncated copy fails here, with a message, rather than at some later read inside the mount.
pub fn open(path: &Path) -> Result<Image> {
    let file = match reader::open_image_path(path)? {
        reader::Opened::Directory => {
            return Ok(Image::new(path, Format::Directory, RootFs::Directory { path: path.to_path_buf() }, 0))
        }
        reader::Opened::File(file) => file,
    };
    if file.size() == 0 {
        return Err(Error::image(
            path,
            "the file is empty (0 bytes)",
            "the copy or the build that made it failed; copy or build the image again",
        ));
    }
    let head = file.read_up_to(0, SNIFF_LEN)?;
    if head.starts_with(squashfs::MAGIC) {
        open_squashfs(&file, Format::Squashfs, 0)
    } else if reader::bytes_at(&head, sif::MAGIC_AT, sif::MAGIC.len()) == sif::MAGIC {
        // Checked before the Singularity 2 launch line: SIF files usually start with it too.
        open_sif(&file)
    } else if head.starts_with(SINGULARITY_LAUNCH_LINE) {
        open_singularity2(&file, &head)
    } else {
        Err(unrecognised(&file, &head))
    }
}

/// A SquashFS at `offset` (0 for plain files, 31 after a Singularity 2 launch line).
fn open_squashfs(file: &ImageFile, format: Format, offset: u64) -> Result<Image> {
    let place = squashfs::Place {
        offset,
        available: file.available_from(offset),
        holder: "the file",
        truncated_hint: HINT_COPY_AGAIN,
    };
    let sb = squashfs::read_superblock(file, &place)?;
    let root = RootFs::Embedded { fs: FsType::Squashfs, offset, size: sb.bytes_used };
    let mut image = Image::new(file.path(), format, root, file.size());
    image.squashfs = Some(sb);
    Ok(image)
}

fn open_sif(file: &ImageFile) -> Result<Image> {
    let parsed = sif::parse(file)?;
    let mut image = Image::new(file.path(), Format::Sif, parsed.root, file.size());
    image.partitions = parsed.partitions;
    image.embedded_objects = parsed.embedded_objects;
    image.squashfs = parsed.squashfs;
    image.ext3 = parsed.ext3;
    image.sif = Some(parsed.info);
    Ok(image)
}

/// Singularity 2.x: the launch line, then SquashFS (`.simg`, 2.4+) or ext3 (`.img`).
fn open_singularity2(file: &ImageFile, head: &[u8]) -> Result<Image> {
    let offset = SINGULARITY_LAUNCH_LINE.len() as u64;
    if reader::bytes_at(head, SINGULARITY_LAUNCH_LINE.len(), 4) == squashfs::MAGIC {
        return open_squashfs(file, Format::Singularity2Squashfs, offset);
    }
    if ext3::has_magic(file, offset)? {
        let info = ext3::read_superblock(file, offset, file.available_from(offset), "the file")?;
        let root = RootFs::Embedded { fs: FsType::Ext3, offset, size: info.size };
        let mut image = Image::new(file.path(), Format::Singularity2Ext3, root, file.size());
        image.ext3 = Some(info);
        return Ok(image);
    }
    if file.size() <= offset + 4 {
        return Err(Error::image(
            file.path(),
            format!(
                "truncated: only the Singularity launch line is there ({} bytes), no filesystem follows it",
                file.size()
            ),
            HINT_COPY_AGAIN,
        ));
    }
    Err(Error::image(
        file.path(),
        format!(
            "starts with the Singularity launch line but neither SquashFS nor ext3 follows it (found bytes {})",
            hex_prefix(reader::bytes_at(head, SINGULARITY_LAUNCH_LINE.len(), 8))
        ),
        "the image is damaged or from an unsupported Singularity version; rebuild it with `apptainer build new.sif OLD`",
    ))
}

/// An error that says what the file looks like, when we can tell, and what to do.
fn unrecognised(file: &ImageFile, head: &[u8]) -> Error {
    let (looks_like, hint) = guess_kind(head);
    let reason = match looks_like {
        Some(kind) => format!("not a container image: it looks like {kind}"),
        None => format!("not a recognised image format (first bytes: {})", hex_prefix(head)),
    };
    Error::image(file.path(), reason, hint)
}

const HINT_FORMATS: &str =
    "berth runs SquashFS files, SIF (.sif), Singularity 2 images and sandbox directories; \
     make one with `berth build` or `mksquashfs ROOTDIR IMAGE.sqsh`";

fn guess_kind(head: &[u8]) -> (Option<&'static str>, &'static str) {
    let ext_at_0 = reader::le_u16(head, ext3::SUPERBLOCK_OFFSET as usize + ext3::MAGIC_AT) == ext3::MAGIC;
    let guess = if head.starts_with(b"sqsh") {
        "a big-endian SquashFS (squashfs-tools 3 or older)"
    } else if head.starts_with(&[0x1f, 0x8b]) {
        "gzip-compressed data (a .tar.gz export?)"
    } else if head.starts_with(b"\xfd7zXZ") {
        "xz-compressed data"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd-compressed data"
    } else if reader::bytes_at(head, 257, 5) == b"ustar" {
        "a tar archive (a `docker save` or OCI export?)"
    } else if head.starts_with(b"\x7fELF") {
        "an executable program"
    } else if head.starts_with(b"QFI\xfb") {
        "a QEMU qcow disk image"
    } else if ext_at_0 {
        return (
            Some("a bare ext2/3/4 filesystem, without a Singularity launch line"),
            "convert it: mount it (or use fuse2fs) and run `mksquashfs MOUNTPOINT IMAGE.sqsh`",
        );
    } else if reader::bytes_at(head, sif::MAGIC_AT, 4) == b"SIF_" {
        return (
            Some("a SIF file whose header is damaged (SIF_MAGIC is garbled at byte 32)"),
            HINT_COPY_AGAIN,
        );
    } else if head.starts_with(b"#!") {
        "a script"
    } else {
        return (None, HINT_FORMATS);
    };
    (Some(guess), HINT_FORMATS)
}

#[cfg(test)]
mod tests;
