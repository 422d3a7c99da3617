//! SIF (Singularity Image Format, Apptainer/Singularity 3+), version 01: the reader.
//!
//! Layout (design.md §3, and sylabs/sif): a 128-byte global header, a table of fixed 585-byte
//! descriptors at the offset the header gives, then data objects. All integers little-endian.
//! The root filesystem is the one partition descriptor whose partition type is "primary system".

use serde::Serialize;

use super::ext3;
use super::reader::{bytes_at, c_string, le_i32, le_i64, le_u32, ImageFile, HINT_COPY_AGAIN};
use super::squashfs::{self, Place};
use super::{FsType, Partition, RootFs};
use crate::error::{Error, Result};

pub(crate) const MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
pub(crate) const MAGIC_AT: usize = 32;
pub(crate) const VERSION: &[u8; 3] = b"01\0";
pub(crate) const HEADER_LEN: usize = 128;
pub(crate) const LAUNCH_LEN: usize = 32;
pub(crate) const DESCRIPTOR_LEN: usize = 585;
/// Group ids and group links carry this bit; the group number is the rest.
pub(crate) const GROUP_MASK: u32 = 0xf000_0000;
/// Objects larger than this are listed but not copied into `Image::embedded_objects`.
pub(crate) const MAX_EMBEDDED_OBJECT: u64 = 1 << 20;
/// A sanity cap on the descriptor count, so a corrupt header cannot make berth read and
/// allocate a huge table (sylabs writes 48 by default; 4096 is 2.4 MB).
const MAX_DESCRIPTORS: i64 = 4096;

// Global header field offsets.
const VERSION_AT: usize = 42;
const ARCH_AT: usize = 45;
const UUID_AT: usize = 48;
const CREATED_AT: usize = 64;
const MODIFIED_AT: usize = 72;
const DESCRIPTORS_TOTAL_AT: usize = 88;
const DESCRIPTORS_OFFSET_AT: usize = 96;
const DESCRIPTORS_SIZE_AT: usize = 104;

// Descriptor field offsets.
const D_TYPE: usize = 0;
const D_USED: usize = 4;
const D_ID: usize = 5;
const D_GROUP: usize = 9;
const D_LINK: usize = 13;
const D_OFFSET: usize = 17;
const D_SIZE: usize = 25;
const D_NAME: usize = 73;
const D_NAME_LEN: usize = 128;
const D_EXTRA: usize = 201;
// Partition descriptors' extra: fs type i32, partition type i32, arch [u8; 3] (+1 padding).
const P_FS_TYPE: usize = D_EXTRA;
const P_PART_TYPE: usize = D_EXTRA + 4;
const P_ARCH: usize = D_EXTRA + 8;

pub(crate) const TYPE_DEFFILE: i32 = 0x4001;
pub(crate) const TYPE_ENV_VARS: i32 = 0x4002;
pub(crate) const TYPE_LABELS: i32 = 0x4003;
pub(crate) const TYPE_PARTITION: i32 = 0x4004;
pub(crate) const TYPE_SIGNATURE: i32 = 0x4005;
pub(crate) const TYPE_GENERIC_JSON: i32 = 0x4006;
pub(crate) const TYPE_GENERIC: i32 = 0x4007;
pub(crate) const TYPE_CRYPTO_MESSAGE: i32 = 0x4008;
pub(crate) const TYPE_SBOM: i32 = 0x4009;

pub(crate) const FS_SQUASHFS: i32 = 1;
pub(crate) const FS_EXT3: i32 = 2;
pub(crate) const FS_IMMUTABLE_OBJECT: i32 = 3;
pub(crate) const FS_RAW: i32 = 4;
pub(crate) const FS_ENCRYPTED_SQUASHFS: i32 = 5;

pub(crate) const PART_SYSTEM: i32 = 1;
pub(crate) const PART_PRIMARY_SYSTEM: i32 = 2;
pub(crate) const PART_DATA: i32 = 3;
pub(crate) const PART_OVERLAY: i32 = 4;

/// Name of a descriptor type, as `Partition::kind` and `embedded_objects` use it.
pub(crate) fn kind_name(data_type: i32) -> String {
    match data_type {
        TYPE_DEFFILE => "deffile".into(),
        TYPE_ENV_VARS => "env-vars".into(),
        TYPE_LABELS => "labels".into(),
        TYPE_PARTITION => "partition".into(),
        TYPE_SIGNATURE => "signature".into(),
        TYPE_GENERIC_JSON => "generic-json".into(),
        TYPE_GENERIC => "generic".into(),
        TYPE_CRYPTO_MESSAGE => "crypto-message".into(),
        TYPE_SBOM => "sbom".into(),
        0x400a => "oci-root-index".into(),
        0x400b => "oci-blob".into(),
        other => format!("unknown-{other:#x}"),
    }
}

pub(crate) fn fs_name(fs_type: i32) -> String {
    match fs_type {
        FS_SQUASHFS => "squashfs".into(),
        FS_EXT3 => "ext3".into(),
        FS_IMMUTABLE_OBJECT => "immutable-object".into(),
        FS_RAW => "raw".into(),
        FS_ENCRYPTED_SQUASHFS => "encrypted-squashfs".into(),
        other => format!("unknown-{other}"),
    }
}

pub(crate) fn role_name(part_type: i32) -> String {
    match part_type {
        PART_SYSTEM => "system".into(),
        PART_PRIMARY_SYSTEM => "primary-system".into(),
        PART_DATA => "data".into(),
        PART_OVERLAY => "overlay".into(),
        other => format!("unknown-{other}"),
    }
}

/// SIF architecture codes (two ASCII digits + NUL), as sylabs/sif defines them, with Go's names.
const ARCHES: &[(&[u8; 3], &str)] = &[
    (b"00\0", "unknown"),
    (b"01\0", "386"),
    (b"02\0", "amd64"),
    (b"03\0", "arm"),
    (b"04\0", "arm64"),
    (b"05\0", "ppc64"),
    (b"06\0", "ppc64le"),
    (b"07\0", "mips"),
    (b"08\0", "mipsle"),
    (b"09\0", "mips64"),
    (b"10\0", "mips64le"),
    (b"11\0", "s390x"),
    (b"12\0", "riscv64"),
];

/// Go-style name of a SIF arch code ("02\0" → "amd64").
pub(crate) fn arch_name(code: &[u8]) -> String {
    ARCHES
        .iter()
        .find(|(c, _)| c.as_slice() == code)
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| format!("unknown ({:?})", c_string(code)))
}

/// SIF arch code for a Rust `std::env::consts::ARCH` value.
pub(crate) fn arch_code_for(rust_arch: &str) -> &'static [u8; 3] {
    let go_name = match rust_arch {
        "x86" => "386",
        "x86_64" => "amd64",
        "arm" => "arm",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "mips" if cfg!(target_endian = "little") => "mipsle",
        "mips" => "mips",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "mips64" => "mips64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        _ => "unknown",
    };
    ARCHES.iter().find(|(_, n)| *n == go_name).map(|(c, _)| *c).unwrap_or(b"00\0")
}

/// The global header fields `berth inspect` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SifInfo {
    pub launch_line: String,
    /// Architecture of the primary partition, Go-style ("amd64").
    pub arch: String,
    pub uuid: String,
    /// Seconds since the epoch.
    pub created: i64,
    pub modified: i64,
    pub descriptors_total: i64,
}

/// One used descriptor, decoded.
#[derive(Debug, Clone)]
struct Descriptor {
    data_type: i32,
    id: u32,
    group: u32,
    link: u32,
    /// Only meaningful once `check_in_file` has passed (offset and size then fit the file).
    offset: u64,
    size: u64,
    /// Whether the on-disk offset or size was negative (corrupt; i64 on disk).
    negative: bool,
    name: String,
    fs_type: i32,
    part_type: i32,
    arch: [u8; 3],
}

impl Descriptor {
    fn is_partition(&self) -> bool {
        self.data_type == TYPE_PARTITION
    }

    fn describe(&self) -> String {
        if self.is_partition() {
            format!("partition {} ({}, {})", self.id, fs_name(self.fs_type), role_name(self.part_type))
        } else {
            format!("data object {} ({})", self.id, kind_name(self.data_type))
        }
    }

    fn to_partition(&self) -> Partition {
        let partition = self.is_partition();
        Partition {
            id: self.id,
            group: self.group & !GROUP_MASK,
            link: self.link,
            kind: kind_name(self.data_type),
            name: self.name.clone(),
            offset: self.offset,
            size: self.size,
            fs: partition.then(|| fs_name(self.fs_type)),
            role: partition.then(|| role_name(self.part_type)),
            arch: partition.then(|| arch_name(&self.arch)),
        }
    }
}

/// What `open()` needs from a SIF file.
pub(crate) struct Parsed {
    pub root: RootFs,
    pub squashfs: Option<squashfs::Superblock>,
    pub ext3: Option<ext3::Ext3Info>,
    pub info: SifInfo,
    pub partitions: Vec<Partition>,
    pub embedded_objects: Vec<(String, Vec<u8>)>,
}

/// Parses the SIF in `file`: header, descriptors, the primary system partition and its filesystem.
pub(crate) fn parse(file: &ImageFile) -> Result<Parsed> {
    let header = file.read_exact(0, HEADER_LEN, "the SIF header")?;
    check_header(file, &header)?;
    let descriptors = read_descriptors(file, &header)?;
    for d in &descriptors {
        check_in_file(file, d)?;
    }
    check_no_overlap(file, &descriptors)?;
    let primary = primary_partition(file, &descriptors)?;
    let (root, fs_info) = root_of(file, primary)?;
    let (squashfs, ext3) = match fs_info {
        RootFsInfo::Squashfs(sb) => (Some(sb), None),
        RootFsInfo::Ext3(info) => (None, Some(info)),
    };
    Ok(Parsed {
        root,
        squashfs,
        ext3,
        info: info_of(&header),
        partitions: descriptors.iter().map(Descriptor::to_partition).collect(),
        embedded_objects: embedded_objects(file, &descriptors)?,
    })
}

fn check_header(file: &ImageFile, header: &[u8]) -> Result<()> {
    if bytes_at(header, MAGIC_AT, MAGIC.len()) != MAGIC {
        return Err(Error::image(
            file.path(),
            "not a SIF file: SIF_MAGIC is missing at byte 32",
            "the image is damaged or not a SIF; copy it again",
        ));
    }
    let version = bytes_at(header, VERSION_AT, VERSION.len());
    if version != VERSION {
        return Err(Error::image(
            file.path(),
            format!("unknown SIF version {:?}: berth reads version 01", c_string(version)),
            "convert the image with a matching apptainer (`apptainer build new.sif old.sif`), or update berth",
        ));
    }
    Ok(())
}

fn info_of(header: &[u8]) -> SifInfo {
    let uuid = bytes_at(header, UUID_AT, 16);
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = match (hex.get(0..8), hex.get(8..12), hex.get(12..16), hex.get(16..20), hex.get(20..32)) {
        (Some(a), Some(b), Some(c), Some(d), Some(e)) => format!("{a}-{b}-{c}-{d}-{e}"),
        _ => hex,
    };
    SifInfo {
        launch_line: c_string(bytes_at(header, 0, LAUNCH_LEN)),
        arch: arch_name(bytes_at(header, ARCH_AT, 3)),
        uuid,
        created: le_i64(header, CREATED_AT),
        modified: le_i64(header, MODIFIED_AT),
        descriptors_total: le_i64(header, DESCRIPTORS_TOTAL_AT),
    }
}

/// Reads the descriptor table where the header says it is (older writers used other offsets
/// than today's 4096) and decodes the used descriptors.
fn read_descriptors(file: &ImageFile, header: &[u8]) -> Result<Vec<Descriptor>> {
    let total = le_i64(header, DESCRIPTORS_TOTAL_AT);
    let offset = le_i64(header, DESCRIPTORS_OFFSET_AT);
    let size = le_i64(header, DESCRIPTORS_SIZE_AT);
    let corrupt = |what: String| {
        Error::image(
            file.path(),
            format!("corrupt SIF header: {what}"),
            "the image is damaged; copy it again or rebuild it",
        )
    };
    if !(0..=MAX_DESCRIPTORS).contains(&total) {
        return Err(corrupt(format!("{total} descriptors")));
    }
    let table_len = total as u64 * DESCRIPTOR_LEN as u64;
    if offset < HEADER_LEN as i64 {
        return Err(corrupt(format!("descriptor table at offset {offset}, inside the header")));
    }
    if size < 0 || (size as u64) < table_len {
        return Err(corrupt(format!(
            "descriptor table of {size} bytes cannot hold {total} descriptors of {DESCRIPTOR_LEN}"
        )));
    }
    let offset = offset as u64;
    let end = offset.saturating_add(table_len);
    if end > file.size() {
        return Err(Error::image(
            file.path(),
            format!(
                "truncated: the SIF descriptor table spans bytes {offset}..{end} but the file holds only {} bytes",
                file.size()
            ),
            HINT_COPY_AGAIN,
        ));
    }
    let table = file.read_exact(offset, table_len as usize, "the SIF descriptor table")?;
    Ok(table.chunks_exact(DESCRIPTOR_LEN).filter_map(decode_descriptor).collect())
}

/// Decodes one raw descriptor; None for unused slots.
fn decode_descriptor(raw: &[u8]) -> Option<Descriptor> {
    if raw.get(D_USED).copied().unwrap_or(0) == 0 {
        return None;
    }
    let mut arch = [0u8; 3];
    arch.copy_from_slice(bytes_at(raw, P_ARCH, 3).get(..3)?);
    let (offset, size) = (le_i64(raw, D_OFFSET), le_i64(raw, D_SIZE));
    Some(Descriptor {
        data_type: le_i32(raw, D_TYPE),
        id: le_u32(raw, D_ID),
        group: le_u32(raw, D_GROUP),
        link: le_u32(raw, D_LINK),
        offset: offset.max(0) as u64,
        size: size.max(0) as u64,
        negative: offset < 0 || size < 0,
        name: c_string(bytes_at(raw, D_NAME, D_NAME_LEN)),
        fs_type: le_i32(raw, P_FS_TYPE),
        part_type: le_i32(raw, P_PART_TYPE),
        arch,
    })
}

fn check_in_file(file: &ImageFile, d: &Descriptor) -> Result<()> {
    if d.negative {
        return Err(Error::image(
            file.path(),
            format!("corrupt SIF descriptor: {} has a negative offset or size", d.describe()),
            "the image is damaged; copy it again or rebuild it",
        ));
    }
    // Both are below 2^63 here, so the sum cannot overflow.
    let end = d.offset.saturating_add(d.size);
    if end <= file.size() {
        return Ok(());
    }
    Err(Error::image(
        file.path(),
        format!(
            "truncated: SIF {} spans bytes {}..{end} but the file holds only {} bytes",
            d.describe(),
            d.offset,
            file.size()
        ),
        HINT_COPY_AGAIN,
    ))
}

/// SIF writers place each object in its own byte range. Descriptors that share bytes are a
/// crafted file (4095 descriptors over the same megabyte would otherwise make every reader of
/// the objects copy gigabytes), so they are refused.
fn check_no_overlap(file: &ImageFile, descriptors: &[Descriptor]) -> Result<()> {
    let mut ranges: Vec<&Descriptor> = descriptors.iter().filter(|d| d.size > 0).collect();
    ranges.sort_by_key(|d| (d.offset, d.size));
    for pair in ranges.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.offset + a.size > b.offset {
            return Err(Error::image(
                file.path(),
                format!(
                    "corrupt SIF: {} (bytes {}..{}) and {} (bytes {}..{}) overlap",
                    a.describe(),
                    a.offset,
                    a.offset + a.size,
                    b.describe(),
                    b.offset,
                    b.offset + b.size
                ),
                "the image is damaged or crafted; rebuild it",
            ));
        }
    }
    Ok(())
}

/// The one partition marked "primary system", with a message that names the fix otherwise.
fn primary_partition<'a>(file: &ImageFile, descriptors: &'a [Descriptor]) -> Result<&'a Descriptor> {
    let primaries: Vec<&Descriptor> =
        descriptors.iter().filter(|d| d.is_partition() && d.part_type == PART_PRIMARY_SYSTEM).collect();
    match primaries.as_slice() {
        [one] => Ok(one),
        [] => {
            let systems: Vec<String> = descriptors
                .iter()
                .filter(|d| d.is_partition() && d.part_type == PART_SYSTEM)
                .map(|d| d.id.to_string())
                .collect();
            let hint = if systems.is_empty() {
                "this SIF holds no root filesystem; rebuild it (`berth build` or `apptainer build`)"
                    .to_string()
            } else {
                format!(
                    "mark one system partition as primary (`apptainer sif setprim IMAGE ID`, ids: {})",
                    systems.join(", ")
                )
            };
            Err(Error::image(
                file.path(),
                format!("the SIF has no primary system partition ({} data objects)", descriptors.len()),
                hint,
            ))
        }
        many => Err(Error::image(
            file.path(),
            format!(
                "the SIF has {} primary system partitions (ids {}); a valid SIF has exactly one",
                many.len(),
                many.iter().map(|d| d.id.to_string()).collect::<Vec<_>>().join(", ")
            ),
            "the image is damaged or was edited by hand; rebuild it",
        )),
    }
}

/// What the primary partition's superblock says.
enum RootFsInfo {
    Squashfs(squashfs::Superblock),
    Ext3(ext3::Ext3Info),
}

/// Locates and checks the filesystem inside the primary partition.
fn root_of(file: &ImageFile, primary: &Descriptor) -> Result<(RootFs, RootFsInfo)> {
    let holder = format!("SIF partition {}", primary.id);
    match primary.fs_type {
        FS_SQUASHFS => {
            let place = Place {
                offset: primary.offset,
                available: primary.size,
                holder: &holder,
                truncated_hint:
                    "the SIF partition is shorter than the filesystem in it: the image is damaged; rebuild it",
            };
            let sb = squashfs::read_superblock(file, &place)?;
            let root = RootFs::Embedded { fs: FsType::Squashfs, offset: primary.offset, size: sb.bytes_used };
            Ok((root, RootFsInfo::Squashfs(sb)))
        }
        FS_EXT3 => {
            let info = ext3::read_superblock(file, primary.offset, primary.size, &holder)?;
            let root = RootFs::Embedded { fs: FsType::Ext3, offset: primary.offset, size: info.size };
            Ok((root, RootFsInfo::Ext3(info)))
        }
        FS_ENCRYPTED_SQUASHFS => Err(Error::image(
            file.path(),
            "encrypted SIF partitions are not supported",
            "decrypt it with apptainer: with the key, build an unencrypted copy \
             (e.g. `apptainer build --pem-path KEY --sandbox DIR IMAGE`) and use that",
        )),
        other => Err(Error::image(
            file.path(),
            format!(
                "the SIF's primary partition {} holds a {} object, not a filesystem",
                primary.id,
                fs_name(other)
            ),
            "rebuild the image with a SquashFS root filesystem (`berth build` or `apptainer build`)",
        )),
    }
}

/// Copies the small metadata objects (definition file, labels, environment, JSON) for inspect
/// and for the runscript/env logic: the first of each kind only (what [`super::Image::object`]
/// returns), so at most four objects of [`MAX_EMBEDDED_OBJECT`] bytes whatever the file holds.
fn embedded_objects(file: &ImageFile, descriptors: &[Descriptor]) -> Result<Vec<(String, Vec<u8>)>> {
    let wanted = [TYPE_DEFFILE, TYPE_LABELS, TYPE_ENV_VARS, TYPE_GENERIC_JSON];
    let mut objects = Vec::new();
    let mut taken: Vec<i32> = Vec::new();
    for d in descriptors.iter().filter(|d| wanted.contains(&d.data_type)) {
        if taken.contains(&d.data_type) {
            tracing::debug!("skipping SIF {}: only the first of its kind is used", d.describe());
            continue;
        }
        taken.push(d.data_type);
        if d.size > MAX_EMBEDDED_OBJECT {
            tracing::debug!("skipping SIF {} of {} bytes: too large to embed", d.describe(), d.size);
            continue;
        }
        let bytes = file.read_exact(d.offset, d.size as usize, &format!("SIF {}", d.describe()))?;
        objects.push((kind_name(d.data_type), bytes));
    }
    Ok(objects)
}
