//! ext2/3/4 superblock: recognise it at an offset and check the filesystem fits.
//!
//! Singularity 2.x `.img` files and old SIF overlays hold ext3. berth only locates and checks it;
//! mounting ext3 needs the kernel driver (privileged mode) or fuse2fs.

use serde::Serialize;

use super::reader::{le_u16, le_u32, ImageFile};
use crate::error::{Error, Result};

/// The superblock starts 1024 bytes into the filesystem.
pub(crate) const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_LEN: usize = 1024;
/// `s_magic`, relative to the superblock (so 1080 from the filesystem's start).
pub(crate) const MAGIC_AT: usize = 56;
pub(crate) const MAGIC: u16 = 0xEF53;

const BLOCKS_COUNT_LO: usize = 4;
const LOG_BLOCK_SIZE: usize = 24;
const FEATURE_INCOMPAT: usize = 0x60;
const BLOCKS_COUNT_HI: usize = 0x150;
const INCOMPAT_64BIT: u32 = 0x80;

/// What berth learns from an ext superblock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Ext3Info {
    pub block_size: u64,
    pub blocks_count: u64,
    /// blocks_count × block_size: the filesystem's length in bytes.
    pub size: u64,
}

/// Whether the bytes at `offset` look like an ext filesystem (magic only).
pub(crate) fn has_magic(file: &ImageFile, offset: u64) -> Result<bool> {
    let at = offset.saturating_add(SUPERBLOCK_OFFSET).saturating_add(MAGIC_AT as u64);
    let magic = file.read_up_to(at, 2)?;
    Ok(magic.len() == 2 && le_u16(&magic, 0) == MAGIC)
}

/// Reads the superblock of the ext filesystem at `offset` and checks that the whole filesystem
/// lies within the `available` bytes that follow; `holder` names what contains it.
pub(crate) fn read_superblock(
    file: &ImageFile,
    offset: u64,
    available: u64,
    holder: &str,
) -> Result<Ext3Info> {
    let path = file.path();
    if available < SUPERBLOCK_OFFSET + SUPERBLOCK_LEN as u64 {
        return Err(Error::image(
            path,
            format!("truncated: {holder} holds {available} bytes from offset {offset}, too few for an ext3 filesystem"),
            super::reader::HINT_COPY_AGAIN,
        ));
    }
    let sb = file.read_exact(offset + SUPERBLOCK_OFFSET, SUPERBLOCK_LEN, "the ext3 superblock")?;
    if le_u16(&sb, MAGIC_AT) != MAGIC {
        return Err(Error::image(
            path,
            format!("no ext3 superblock at offset {offset} of {holder} (magic 0xEF53 missing)"),
            "the image is damaged or not what it claims to be; copy it again or rebuild it",
        ));
    }
    let log_block_size = le_u32(&sb, LOG_BLOCK_SIZE);
    // ext block sizes run from 1 KiB (log 0) to 64 KiB (log 6).
    if log_block_size > 6 {
        return Err(Error::image(
            path,
            format!("corrupt ext3 superblock at offset {offset}: block size 1024 << {log_block_size} is impossible"),
            "the image is damaged; copy it again",
        ));
    }
    let block_size = 1024u64 << log_block_size;
    let mut blocks_count = u64::from(le_u32(&sb, BLOCKS_COUNT_LO));
    if le_u32(&sb, FEATURE_INCOMPAT) & INCOMPAT_64BIT != 0 {
        blocks_count |= u64::from(le_u32(&sb, BLOCKS_COUNT_HI)) << 32;
    }
    let size = blocks_count.saturating_mul(block_size);
    if size > available {
        return Err(Error::image(
            path,
            format!(
                "truncated: the ext3 superblock at offset {offset} says {blocks_count} blocks of {block_size} bytes \
                 ({size} bytes) but {holder} holds only {available} from there"
            ),
            super::reader::HINT_COPY_AGAIN,
        ));
    }
    Ok(Ext3Info { block_size, blocks_count, size })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ext superblock: `blocks` blocks of 1 KiB, padded to `file_len` bytes, placed
    /// after `prefix`. Enough for detection and size checks (not mountable).
    pub(crate) fn fake_ext3(prefix: &[u8], blocks: u32, file_len: usize) -> Vec<u8> {
        let mut fs = vec![0u8; file_len.max(2048)];
        let sb = SUPERBLOCK_OFFSET as usize;
        fs[sb + BLOCKS_COUNT_LO..sb + BLOCKS_COUNT_LO + 4].copy_from_slice(&blocks.to_le_bytes());
        fs[sb + MAGIC_AT..sb + MAGIC_AT + 2].copy_from_slice(&MAGIC.to_le_bytes());
        let mut out = prefix.to_vec();
        out.extend_from_slice(&fs);
        out
    }

    #[test]
    fn checks_size_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fs.ext3");
        std::fs::write(&p, fake_ext3(b"", 8, 8192)).unwrap();
        let file = ImageFile::open(&p).unwrap();
        assert!(has_magic(&file, 0).unwrap());
        let info = read_superblock(&file, 0, file.size(), "the file").unwrap();
        assert_eq!(info, Ext3Info { block_size: 1024, blocks_count: 8, size: 8192 });

        std::fs::write(&p, fake_ext3(b"", 100, 8192)).unwrap();
        let file = ImageFile::open(&p).unwrap();
        let msg = read_superblock(&file, 0, file.size(), "the file").unwrap_err().to_string();
        assert!(msg.contains("says 100 blocks of 1024 bytes"), "{msg}");
    }
}
