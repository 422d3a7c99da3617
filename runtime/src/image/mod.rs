//! Image formats, recognised by content (never by extension).
//!
//! `open()` reads only headers: it finds where the root filesystem lives inside the file
//! (SquashFS at 0, SquashFS/ext3 after a Singularity 2.x launch line, the primary system
//! partition of a SIF) and checks it is whole, so the mount step can mount it in place.
//!
//! OWNER NOTE: this module is a stub; the full implementation (SIF parsing, truncation checks,
//! SIF writer) lands from the image work.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

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
    Squashfs,
    Ext3,
}

/// Where the container's root filesystem is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RootFs {
    /// A filesystem image at `offset` inside the image file, `size` bytes long.
    Embedded { fs: FsType, offset: u64, size: u64 },
    /// A directory tree used as it is.
    Directory { path: PathBuf },
}

/// One partition or data object of a SIF file, for `berth inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    pub id: u32,
    pub group: u32,
    /// Human name of the descriptor type ("partition", "deffile", "labels", "signature", ...).
    pub kind: String,
    pub name: String,
    pub offset: u64,
    pub size: u64,
    /// For partitions: "squashfs", "ext3", "encrypted-squashfs", "raw"...
    pub fs: Option<String>,
    /// For partitions: "primary-system", "system", "data", "overlay".
    pub role: Option<String>,
}

/// A recognised image: where its root filesystem lives and what else it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub path: PathBuf,
    pub format: Format,
    pub root: RootFs,
    /// Total size of the file in bytes (0 for directories).
    pub file_size: u64,
    /// SIF descriptors (empty for other formats).
    pub partitions: Vec<Partition>,
    /// Small data objects stored beside the root fs (SIF deffile, labels JSON), by kind.
    pub embedded_objects: Vec<(String, Vec<u8>)>,
}

/// Recognise `path` by its content and locate its root filesystem.
pub fn open(path: &Path) -> Result<Image> {
    let meta = std::fs::metadata(path).map_err(|e| Error::image_io(path, "cannot open the image", e))?;
    if meta.is_dir() {
        return Ok(Image {
            path: path.to_path_buf(),
            format: Format::Directory,
            root: RootFs::Directory { path: path.to_path_buf() },
            file_size: 0,
            partitions: vec![],
            embedded_objects: vec![],
        });
    }
    let data = std::fs::read(path).map_err(|e| Error::image_io(path, "cannot read the image", e))?;
    if data.len() >= 4 && &data[0..4] == b"hsqs" {
        return Ok(Image {
            path: path.to_path_buf(),
            format: Format::Squashfs,
            root: RootFs::Embedded { fs: FsType::Squashfs, offset: 0, size: meta.len() },
            file_size: meta.len(),
            partitions: vec![],
            embedded_objects: vec![],
        });
    }
    Err(Error::BadImage { path: path.to_path_buf(), reason: "not a recognised image format".into(), hint: String::new() })
}
