//! Writing SIF (version 01) files: a SquashFS root as the primary system partition plus small
//! metadata objects, laid out the way sylabs/sif's `CreateContainer` does, so that apptainer,
//! singularity and berth all read it.
//!
//! Layout: header (128 bytes) | zeros up to 4096 | 48 descriptors of 585 bytes | data objects.
//! The partition is aligned to 4096 bytes (so it can be loop-mounted at its offset); other
//! objects follow it unaligned.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::reader::ImageFile;
use super::sif::{self, DESCRIPTOR_LEN, GROUP_MASK, HEADER_LEN, LAUNCH_LEN};
use super::squashfs::{self, Place};
use super::SINGULARITY_LAUNCH_LINE;
use crate::error::{Error, Result};

/// Where the descriptor table starts, as sylabs/sif writes it.
const DESCRIPTORS_OFFSET: u64 = 4096;
/// Descriptor slots written, as sylabs/sif's default; free slots let tools add signatures later.
const DEFAULT_CAPACITY: usize = 48;
const PARTITION_ALIGNMENT: u64 = 4096;
/// Every object goes into group 1, like `apptainer build` does.
const GROUP_ID: u32 = GROUP_MASK | 1;

/// What kind of metadata object to store beside the root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SifObjectKind {
    /// The definition file the image was built from.
    Deffile,
    /// Labels, as a JSON object.
    Labels,
    /// Environment variables script.
    EnvVars,
    /// Generic JSON metadata.
    GenericJson,
    /// Any other bytes.
    Generic,
}

impl SifObjectKind {
    fn data_type(self) -> i32 {
        match self {
            SifObjectKind::Deffile => sif::TYPE_DEFFILE,
            SifObjectKind::Labels => sif::TYPE_LABELS,
            SifObjectKind::EnvVars => sif::TYPE_ENV_VARS,
            SifObjectKind::GenericJson => sif::TYPE_GENERIC_JSON,
            SifObjectKind::Generic => sif::TYPE_GENERIC,
        }
    }
}

/// A metadata object for [`write_sif`].
#[derive(Debug, Clone)]
pub struct SifObject {
    /// What the object is.
    pub kind: SifObjectKind,
    /// Descriptor name (at most 127 bytes), e.g. a file name; may be empty.
    pub name: String,
    /// Its content.
    pub data: Vec<u8>,
}

/// One descriptor to write, before encoding.
struct Entry {
    data_type: i32,
    offset: u64,
    size: u64,
    size_with_padding: u64,
    name: String,
    /// `(fs type, partition type, arch code)` for partitions.
    partition: Option<(i32, i32, [u8; 3])>,
}

/// Writes a SIF at `out` whose primary system partition is the SquashFS `root_squashfs`, with
/// `objects` beside it. `launch_line` (default `#!/usr/bin/env run-singularity\n`) is what runs
/// when the image is executed; it must fit in 31 bytes so the 32-byte field stays NUL-terminated.
///
/// The file appears atomically: it is written to a temporary file in the same directory, then
/// renamed over `out`.
pub fn write_sif(
    out: &Path,
    root_squashfs: &Path,
    objects: &[SifObject],
    launch_line: Option<&str>,
) -> Result<()> {
    // Checked before anything is created: bad input leaves no file behind.
    let (launch, root_len) = check_inputs(root_squashfs, objects, launch_line)?;
    let mut tmp = TempFile::create_beside(out)?;
    let root_name = root_squashfs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    write_contents(&mut tmp.file, &launch, root_squashfs, root_len, &root_name, objects)
        .map_err(|e| write_error("cannot write the image", &tmp.path, e))?;
    tmp.commit(out)
}

/// [`write_sif`] into `file`, a new file the caller created and will move into place itself
/// (`berth pull --format sif`, whose temporary files follow its own interruption rules);
/// the partition is named `root_name`.
pub fn write_sif_into(
    file: &mut File,
    path: &Path,
    root_squashfs: &Path,
    root_name: &str,
    objects: &[SifObject],
    launch_line: Option<&str>,
) -> Result<()> {
    let (launch, root_len) = check_inputs(root_squashfs, objects, launch_line)?;
    write_contents(file, &launch, root_squashfs, root_len, root_name, objects)
        .map_err(|e| write_error("cannot write the image", path, e))
}

/// What [`write_sif`] and [`write_sif_into`] check before writing anything: the launch field,
/// the descriptors' contents and the root partition's length.
fn check_inputs(
    root_squashfs: &Path,
    objects: &[SifObject],
    launch_line: Option<&str>,
) -> Result<([u8; LAUNCH_LEN], u64)> {
    let launch = launch_field(launch_line)?;
    check_objects(objects)?;
    Ok((launch, checked_squashfs_len(root_squashfs)?))
}

/// The 32-byte launch field: the line, NUL-padded.
fn launch_field(launch_line: Option<&str>) -> Result<[u8; LAUNCH_LEN]> {
    let line = launch_line.map(str::as_bytes).unwrap_or(SINGULARITY_LAUNCH_LINE);
    if line.len() >= LAUNCH_LEN || line.contains(&0) {
        return Err(Error::request(
            "SIF launch line",
            format!(
                "{:?} is {} bytes or contains NUL; it must be at most {} bytes",
                String::from_utf8_lossy(line),
                line.len(),
                LAUNCH_LEN - 1
            ),
            "use a shorter interpreter line, e.g. `#!/usr/bin/env berth run\\n`",
        ));
    }
    let mut field = [0u8; LAUNCH_LEN];
    field[..line.len()].copy_from_slice(line);
    Ok(field)
}

fn check_objects(objects: &[SifObject]) -> Result<()> {
    if objects.len() + 1 > DEFAULT_CAPACITY {
        return Err(Error::request(
            "SIF objects",
            format!("{} objects do not fit in {DEFAULT_CAPACITY} descriptors", objects.len()),
            "",
        ));
    }
    match objects.iter().find(|o| o.name.len() >= 128) {
        Some(o) => Err(Error::request(
            "SIF object name",
            format!("{:?} is longer than 127 bytes", o.name),
            "use a shorter name",
        )),
        None => Ok(()),
    }
}

/// Length of the SquashFS file to store, after checking it is a whole SquashFS.
fn checked_squashfs_len(path: &Path) -> Result<u64> {
    let file = ImageFile::open(path)?;
    let place = Place {
        offset: 0,
        available: file.size(),
        holder: "the file",
        truncated_hint: "make the SquashFS again with mksquashfs",
    };
    squashfs::read_superblock(&file, &place)?;
    // The whole file, not just bytes_used: mksquashfs pads to 4 KiB and sylabs stores it all.
    Ok(file.size())
}

fn write_contents(
    out: &mut File,
    launch: &[u8; LAUNCH_LEN],
    root: &Path,
    root_len: u64,
    root_name: &str,
    objects: &[SifObject],
) -> io::Result<()> {
    let data_start = DESCRIPTORS_OFFSET + (DEFAULT_CAPACITY * DESCRIPTOR_LEN) as u64;
    let mut entries = Vec::with_capacity(objects.len() + 1);

    let partition_offset = align_up(data_start, PARTITION_ALIGNMENT);
    out.seek(SeekFrom::Start(partition_offset))?;
    let copied = io::copy(&mut File::open(root)?.take(root_len), out)?;
    if copied != root_len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the SquashFS file shrank while being copied",
        ));
    }
    let arch = *sif::arch_code_for(std::env::consts::ARCH);
    entries.push(Entry {
        data_type: sif::TYPE_PARTITION,
        offset: partition_offset,
        size: root_len,
        size_with_padding: partition_offset - data_start + root_len,
        name: root_name.to_string(),
        partition: Some((sif::FS_SQUASHFS, sif::PART_PRIMARY_SYSTEM, arch)),
    });

    let mut end = partition_offset + root_len;
    for object in objects {
        out.write_all(&object.data)?;
        let size = object.data.len() as u64;
        entries.push(Entry {
            data_type: object.kind.data_type(),
            offset: end,
            size,
            size_with_padding: size,
            name: object.name.clone(),
            partition: None,
        });
        end += size;
    }

    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    out.seek(SeekFrom::Start(DESCRIPTORS_OFFSET))?;
    out.write_all(&descriptor_table(&entries, now))?;
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&header(launch, &arch, &random_uuid(), now, entries.len(), data_start, end - data_start))?;
    out.sync_all()
}

fn align_up(offset: u64, alignment: u64) -> u64 {
    offset.div_ceil(alignment) * alignment
}

fn header(
    launch: &[u8; LAUNCH_LEN],
    arch: &[u8; 3],
    uuid: &[u8; 16],
    now: i64,
    used: usize,
    data_offset: u64,
    data_size: u64,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..LAUNCH_LEN].copy_from_slice(launch);
    h[32..42].copy_from_slice(sif::MAGIC);
    h[42..45].copy_from_slice(sif::VERSION);
    h[45..48].copy_from_slice(arch);
    h[48..64].copy_from_slice(uuid);
    let capacity = DEFAULT_CAPACITY as i64;
    let fields: [i64; 8] = [
        now,
        now,
        capacity - used as i64,
        capacity,
        DESCRIPTORS_OFFSET as i64,
        capacity * DESCRIPTOR_LEN as i64,
        data_offset as i64,
        data_size as i64,
    ];
    for (i, value) in fields.iter().enumerate() {
        let at = 64 + i * 8;
        h[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    h
}

fn descriptor_table(entries: &[Entry], now: i64) -> Vec<u8> {
    let mut table = vec![0u8; DEFAULT_CAPACITY * DESCRIPTOR_LEN];
    for (slot, (entry, raw)) in entries.iter().zip(table.chunks_exact_mut(DESCRIPTOR_LEN)).enumerate() {
        encode_descriptor(raw, entry, slot as u32 + 1, now);
    }
    table
}

/// Fills one 585-byte descriptor (offsets as in design.md §3).
fn encode_descriptor(raw: &mut [u8], e: &Entry, id: u32, now: i64) {
    let mut put = |at: usize, bytes: &[u8]| raw[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &e.data_type.to_le_bytes());
    put(4, &[1]);
    put(5, &id.to_le_bytes());
    put(9, &GROUP_ID.to_le_bytes());
    put(13, &0u32.to_le_bytes());
    put(17, &(e.offset as i64).to_le_bytes());
    put(25, &(e.size as i64).to_le_bytes());
    put(33, &(e.size_with_padding as i64).to_le_bytes());
    put(41, &now.to_le_bytes());
    put(49, &now.to_le_bytes());
    // uid/gid at 57/65 are deprecated and stay 0, as sylabs writes them.
    put(73, e.name.as_bytes());
    if let Some((fs, part, arch)) = e.partition {
        put(201, &fs.to_le_bytes());
        put(205, &part.to_le_bytes());
        put(209, &arch);
    }
}

/// A random (version 4) UUID, so every image has a distinct identity.
fn random_uuid() -> [u8; 16] {
    let mut id = [0u8; 16];
    if File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut id)).is_err() {
        // No /dev/urandom (odd chroot): time and pid still make collisions unlikely.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        id[..16].copy_from_slice(&(nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes());
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn write_error(what: &str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        what: what.into(),
        path: path.to_path_buf(),
        source,
        hint: "check that the destination directory is writable by you and has room for the image".into(),
    }
}

/// A file written beside its destination and renamed over it on success; removed otherwise.
struct TempFile {
    /// Emptied once renamed, so `drop` leaves the result alone.
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn create_beside(out: &Path) -> Result<Self> {
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name =
            out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        // pid + a counter: unique even when threads of one process write images side by side.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}.tmp-{}-{unique}", std::process::id()));
        // 0755 (less the umask): SIF files are meant to be executed (`./image.sif`), and sylabs/sif
        // creates them so.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&path)
            .map_err(|e| write_error("cannot create the image", &path, e))?;
        Ok(TempFile { path, file })
    }

    fn commit(mut self, out: &Path) -> Result<()> {
        std::fs::rename(&self.path, out)
            .map_err(|e| write_error("cannot move the image into place at", out, e))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
