//! SquashFS 4.0 superblock: recognise it at any offset and check the filesystem is whole.
//!
//! The superblock is 96 little-endian bytes at the start of the filesystem. berth never mounts a
//! SquashFS whose `bytes_used` runs past the end of what holds it: the kernel and squashfuse would
//! otherwise fail later, on some file, with an I/O error nobody can connect to a bad copy.

use serde::Serialize;

use super::reader::{hex_prefix, le_u16, le_u32, le_u64, ImageFile};
use crate::error::{Error, Result};

pub(crate) const MAGIC: &[u8; 4] = b"hsqs";
/// Size of the on-disk superblock.
pub(crate) const SUPERBLOCK_LEN: usize = 96;

// Field offsets inside the superblock.
const INODE_COUNT: usize = 4;
const MODIFICATION_TIME: usize = 8;
const BLOCK_SIZE: usize = 12;
const FRAGMENT_COUNT: usize = 16;
const COMPRESSION_ID: usize = 20;
const BLOCK_LOG: usize = 22;
const FLAGS: usize = 24;
const ID_COUNT: usize = 26;
const VERSION_MAJOR: usize = 28;
const VERSION_MINOR: usize = 30;
const BYTES_USED: usize = 40;
const ID_TABLE_START: usize = 48;
const INODE_TABLE_START: usize = 64;
const DIRECTORY_TABLE_START: usize = 72;

/// What `berth inspect` shows about a SquashFS, read from its superblock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Superblock {
    pub inode_count: u32,
    /// Seconds since the epoch when the filesystem was made.
    pub modification_time: u32,
    pub block_size: u32,
    pub fragment_count: u32,
    pub compression_id: u16,
    /// "gzip", "lzma", "lzo", "xz", "lz4" or "zstd".
    pub compression: &'static str,
    pub flags: u16,
    pub id_count: u16,
    /// Length of the filesystem in bytes (what a mount needs; files are often padded beyond it).
    pub bytes_used: u64,
}

/// Name of a SquashFS compression id, as mksquashfs spells it.
pub(crate) fn compression_name(id: u16) -> Option<&'static str> {
    Some(match id {
        1 => "gzip",
        2 => "lzma",
        3 => "lzo",
        4 => "xz",
        5 => "lz4",
        6 => "zstd",
        _ => return None,
    })
}

/// Reads and checks the SquashFS superblock at `offset` in the file at `path` (for `berth build`
/// and `inspect`; `open()` does this for the root filesystem of every image).
pub(crate) fn superblock_at(path: &std::path::Path, offset: u64) -> Result<Superblock> {
    let file = ImageFile::open(path)?;
    let place = Place {
        offset,
        available: file.available_from(offset),
        holder: "the file",
        truncated_hint: super::reader::HINT_COPY_AGAIN,
    };
    read_superblock(&file, &place)
}

/// Where a SquashFS is expected, for error messages: `holder` names what contains it ("the
/// file", "SIF partition 2") and `available` is how many bytes it holds from `offset` on.
pub(crate) struct Place<'a> {
    pub offset: u64,
    pub available: u64,
    pub holder: &'a str,
    /// What to do when the holder is shorter than the filesystem.
    pub truncated_hint: &'a str,
}

/// Reads and checks the superblock at `place`.
pub(crate) fn read_superblock(file: &ImageFile, place: &Place) -> Result<Superblock> {
    let path = file.path();
    if place.available < SUPERBLOCK_LEN as u64 {
        return Err(Error::image(
            path,
            format!(
                "truncated: {} holds {} bytes from offset {}, too few for a SquashFS superblock ({SUPERBLOCK_LEN} bytes)",
                place.holder, place.available, place.offset
            ),
            place.truncated_hint,
        ));
    }
    let sb = file.read_exact(place.offset, SUPERBLOCK_LEN, "the SquashFS superblock")?;
    check_magic(file, place, &sb)?;
    check_version(file, place, &sb)?;
    let block_size = checked_block_size(file, place, &sb)?;
    let compression_id = le_u16(&sb, COMPRESSION_ID);
    let compression = compression_name(compression_id)
        .ok_or_else(|| corrupt(file, place, format!("unknown compression id {compression_id}")))?;
    let bytes_used = checked_bytes_used(file, place, &sb)?;
    Ok(Superblock {
        inode_count: le_u32(&sb, INODE_COUNT),
        modification_time: le_u32(&sb, MODIFICATION_TIME),
        block_size,
        fragment_count: le_u32(&sb, FRAGMENT_COUNT),
        compression_id,
        compression,
        flags: le_u16(&sb, FLAGS),
        id_count: le_u16(&sb, ID_COUNT),
        bytes_used,
    })
}

fn check_magic(file: &ImageFile, place: &Place, sb: &[u8]) -> Result<()> {
    match sb.get(..4) {
        Some(m) if m == MAGIC => Ok(()),
        // Big-endian SquashFS (made by squashfs-tools < 4 on some hosts): Linux cannot mount it.
        Some(b"sqsh") => Err(Error::image(
            file.path(),
            format!("the SquashFS at offset {} is big-endian (SquashFS 3 or older)", place.offset),
            "rebuild the image with mksquashfs from squashfs-tools 4.x",
        )),
        _ => Err(Error::image(
            file.path(),
            format!(
                "no SquashFS superblock at offset {} of {} (found bytes {})",
                place.offset,
                place.holder,
                hex_prefix(sb)
            ),
            "the image is damaged or not what it claims to be; copy it again or rebuild it",
        )),
    }
}

fn check_version(file: &ImageFile, place: &Place, sb: &[u8]) -> Result<()> {
    let (major, minor) = (le_u16(sb, VERSION_MAJOR), le_u16(sb, VERSION_MINOR));
    if (major, minor) == (4, 0) {
        return Ok(());
    }
    Err(Error::image(
        file.path(),
        format!(
            "the SquashFS at offset {} has version {major}.{minor}; only 4.0 can be mounted",
            place.offset
        ),
        "rebuild the image with mksquashfs from squashfs-tools 4.x",
    ))
}

/// Block size must be a power of two from 4 KiB to 1 MiB and agree with its log2 field;
/// anything else means the bytes are not a real superblock.
fn checked_block_size(file: &ImageFile, place: &Place, sb: &[u8]) -> Result<u32> {
    let block_size = le_u32(sb, BLOCK_SIZE);
    let block_log = le_u16(sb, BLOCK_LOG);
    let sane = block_size.is_power_of_two()
        && (4096..=1 << 20).contains(&block_size)
        && u32::from(block_log) == block_size.trailing_zeros();
    if sane {
        Ok(block_size)
    } else {
        Err(corrupt(file, place, format!("block size {block_size} (log2 field {block_log}) is impossible")))
    }
}

fn checked_bytes_used(file: &ImageFile, place: &Place, sb: &[u8]) -> Result<u64> {
    let bytes_used = le_u64(sb, BYTES_USED);
    if bytes_used < SUPERBLOCK_LEN as u64 {
        return Err(corrupt(file, place, format!("bytes_used is {bytes_used}, smaller than the superblock")));
    }
    if bytes_used > place.available {
        return Err(Error::image(
            file.path(),
            format!(
                "truncated: the SquashFS superblock at offset {} says {bytes_used} bytes but {} holds only {} from there",
                place.offset, place.holder, place.available
            ),
            place.truncated_hint,
        ));
    }
    // The metadata tables all live inside the filesystem; a start beyond its end is corruption.
    for (name, at) in [
        ("inode table", INODE_TABLE_START),
        ("directory table", DIRECTORY_TABLE_START),
        ("id table", ID_TABLE_START),
    ] {
        let start = le_u64(sb, at);
        if start >= bytes_used {
            return Err(corrupt(
                file,
                place,
                format!("the {name} starts at {start}, beyond the filesystem's {bytes_used} bytes"),
            ));
        }
    }
    Ok(bytes_used)
}

fn corrupt(file: &ImageFile, place: &Place, what: String) -> Error {
    Error::image(
        file.path(),
        format!("corrupt SquashFS superblock at offset {}: {what}", place.offset),
        "the image is damaged; copy it again, or rebuild it with mksquashfs",
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Builds a small SquashFS with mksquashfs in `dir`, or None when mksquashfs is missing.
    pub(crate) fn make_squashfs(dir: &Path) -> Option<PathBuf> {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("bin")).ok()?;
        std::fs::write(tree.join("bin/hello"), b"#!/bin/sh\necho hello\n").ok()?;
        // Incompressible bytes, so the filesystem is large enough to cut in interesting places.
        let noise: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        std::fs::write(tree.join("README"), noise).ok()?;
        let out = dir.join("root.sqsh");
        let status = Command::new("mksquashfs")
            .arg(&tree)
            .arg(&out)
            .args(["-noappend", "-quiet", "-no-progress"])
            .status();
        match status {
            Ok(s) if s.success() => Some(out),
            _ => {
                eprintln!("skipping: mksquashfs is not available");
                None
            }
        }
    }

    fn place_in(file: &ImageFile) -> Place<'static> {
        Place { offset: 0, available: file.size(), holder: "the file", truncated_hint: "copy again" }
    }

    fn err_text(r: Result<Superblock>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn compression_names() {
        assert_eq!(compression_name(1), Some("gzip"));
        assert_eq!(compression_name(4), Some("xz"));
        assert_eq!(compression_name(6), Some("zstd"));
        assert_eq!(compression_name(0), None);
        assert_eq!(compression_name(7), None);
    }

    #[test]
    fn reads_a_real_superblock() {
        let dir = tempfile::tempdir().unwrap();
        let Some(sqsh) = make_squashfs(dir.path()) else { return };
        let file = ImageFile::open(&sqsh).unwrap();
        let sb = read_superblock(&file, &place_in(&file)).unwrap();
        assert!(sb.inode_count >= 4, "{sb:?}");
        assert!(sb.bytes_used <= file.size());
        assert_eq!(sb.block_size, 131072);
        assert_eq!(sb.compression, "gzip");
        assert_eq!(superblock_at(&sqsh, 0).unwrap(), sb);
        let msg = superblock_at(&sqsh, 1).unwrap_err().to_string();
        assert!(msg.contains("no SquashFS superblock at offset 1"), "{msg}");
    }

    #[test]
    fn rejects_damaged_superblocks() {
        let dir = tempfile::tempdir().unwrap();
        let Some(sqsh) = make_squashfs(dir.path()) else { return };
        let good = std::fs::read(&sqsh).unwrap();
        let check = |mutate: &dyn Fn(&mut Vec<u8>), expected: &str| {
            let mut bytes = good.clone();
            mutate(&mut bytes);
            let p = dir.path().join("bad.sqsh");
            std::fs::write(&p, &bytes).unwrap();
            let file = ImageFile::open(&p).unwrap();
            let msg = err_text(read_superblock(&file, &place_in(&file)));
            assert!(msg.contains(expected), "{expected:?} not in {msg:?}");
        };
        check(&|b| b[28] = 3, "version 3.0");
        check(&|b| b[12..16].copy_from_slice(&1000u32.to_le_bytes()), "block size 1000");
        check(&|b| b[20] = 9, "unknown compression id 9");
        check(&|b| b[..4].copy_from_slice(b"sqsh"), "big-endian");
        check(&|b| b[..4].copy_from_slice(b"abcd"), "no SquashFS superblock");
        let bytes_used = le_u64(&good, BYTES_USED) as usize;
        check(&|b| b.truncate(bytes_used - 1), "truncated: the SquashFS superblock at offset 0 says");
        check(&|b| b.truncate(50), "too few for a SquashFS superblock");
    }
}
