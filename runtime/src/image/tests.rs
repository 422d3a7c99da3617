//! Tests of `open()` and `write_sif()` on real and damaged images. No root needed; tests that
//! need mksquashfs or the shared SIF fixtures say so on stderr and skip when those are missing.

use super::*;
use std::path::PathBuf;
use std::process::Command;

use super::squashfs::tests::make_squashfs;

fn fixtures_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sif");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: SIF fixtures not found at {}", dir.display());
        None
    }
}

/// A sylabs test file from the repository's copy (tests/fixtures/sif).
fn fixture(name: &str) -> Option<Vec<u8>> {
    Some(std::fs::read(fixtures_dir()?.join(name)).expect("fixture readable"))
}

/// Writes `bytes` to a file in `dir` and opens it.
fn open_bytes(dir: &Path, bytes: &[u8]) -> Result<Image> {
    let p = dir.join("image");
    std::fs::write(&p, bytes).unwrap();
    open(&p)
}

fn error_of(r: Result<Image>) -> String {
    match r {
        Ok(image) => panic!("expected an error, got {image:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_error(r: Result<Image>, expected: &[&str]) {
    let msg = error_of(r);
    for part in expected {
        assert!(msg.contains(part), "{part:?} not in error:\n{msg}");
    }
    // Every error says what to do.
    assert!(msg.contains("hint:"), "no hint in error:\n{msg}");
}

fn put_i32(bytes: &mut [u8], at: usize, v: i32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_i64(bytes: &mut [u8], at: usize, v: i64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offset of descriptor slot `slot` in sylabs' fixtures (table at 4096).
fn descriptor(slot: usize) -> usize {
    4096 + slot * sif::DESCRIPTOR_LEN
}

// ---- plain files, directories, junk ----

#[test]
fn directory_is_a_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let image = open(dir.path()).unwrap();
    assert_eq!(image.format, Format::Directory);
    assert_eq!(image.root, RootFs::Directory { path: dir.path().to_path_buf() });
}

#[test]
fn missing_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    assert_error(open(&dir.path().join("nope.sif")), &["cannot open the image", "check the path"]);
}

#[test]
fn empty_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_error(open_bytes(dir.path(), b""), &["empty (0 bytes)", "copy or build the image again"]);
}

#[test]
fn random_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert_error(open_bytes(dir.path(), &junk), &["not a recognised image format", "mksquashfs"]);
}

#[test]
fn known_non_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    assert_error(open_bytes(dir.path(), &[0x1f, 0x8b, 8, 0, 0, 0]), &["gzip"]);
    assert_error(open_bytes(dir.path(), b"\x7fELF\x02\x01\x01"), &["executable program"]);
    assert_error(open_bytes(dir.path(), b"#!/bin/sh\necho hi\n"), &["a script"]);
    let bare_ext = ext3::tests::fake_ext3(b"", 8, 8192);
    assert_error(open_bytes(dir.path(), &bare_ext), &["bare ext2/3/4", "mksquashfs"]);
}

#[test]
fn fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    if nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).is_err() {
        eprintln!("skipping: cannot make a FIFO here");
        return;
    }
    assert_error(open(&fifo), &["named pipe (FIFO)", "not an image file"]);
}

/// A file swapped for a FIFO by rename between berth's checks must never make `open` wait for
/// a writer: every open ends, with the image or with an error.
#[test]
fn swapping_an_image_for_a_fifo_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (path, fifo, regular) = (dir.path().join("img"), dir.path().join("f"), dir.path().join("r"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (path, fifo, regular, stop) = (path.clone(), fifo.clone(), regular.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU);
                let _ = std::fs::rename(&fifo, &path);
                let _ = std::fs::write(&regular, b"not an image");
                let _ = std::fs::rename(&regular, &path);
            }
        })
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let opener = std::thread::spawn(move || {
        for _ in 0..2000 {
            let _ = open(&path);
        }
        let _ = tx.send(());
    });
    let finished = rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(finished, "open() blocked on a FIFO swapped in for the image");
    opener.join().unwrap();
}

// ---- SquashFS and Singularity 2 ----

#[test]
fn squashfs_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sqsh) = make_squashfs(dir.path()) else { return };
    let image = open(&sqsh).unwrap();
    assert_eq!(image.format, Format::Squashfs);
    let sb = image.squashfs.clone().expect("superblock");
    assert_eq!(image.root, RootFs::Embedded { fs: FsType::Squashfs, offset: 0, size: sb.bytes_used });
    assert_eq!(sb.compression, "gzip");
    assert!(image.partitions.is_empty());
}

#[test]
fn truncated_squashfs_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sqsh) = make_squashfs(dir.path()) else { return };
    let bytes = std::fs::read(&sqsh).unwrap();
    let bytes_used = open(&sqsh).unwrap().squashfs.unwrap().bytes_used as usize;
    let cut = bytes_used - 10;
    assert_error(
        open_bytes(dir.path(), &bytes[..cut]),
        &[&format!("truncated: the SquashFS superblock at offset 0 says {bytes_used} bytes but the file holds only {cut}"), "copy the image again"],
    );
}

#[test]
fn singularity2_squashfs_is_found_after_the_launch_line() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sqsh) = make_squashfs(dir.path()) else { return };
    let mut simg = SINGULARITY_LAUNCH_LINE.to_vec();
    simg.extend_from_slice(&std::fs::read(&sqsh).unwrap());
    let path = dir.path().join("old.simg");
    std::fs::write(&path, &simg).unwrap();
    let image = open(&path).unwrap();
    assert_eq!(image.format, Format::Singularity2Squashfs);
    let RootFs::Embedded { fs, offset, size } = image.root else { panic!("{:?}", image.root) };
    assert_eq!((fs, offset), (FsType::Squashfs, 31));
    assert_eq!(size, image.squashfs.unwrap().bytes_used);
    assert_lists_hello(&path, 31);

    assert_error(open_bytes(dir.path(), &simg[..31 + 500]), &["truncated", "at offset 31"]);
}

#[test]
fn singularity2_ext3_is_found_after_the_launch_line() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext3::tests::fake_ext3(SINGULARITY_LAUNCH_LINE, 16, 16384);
    let image = open_bytes(dir.path(), &img).unwrap();
    assert_eq!(image.format, Format::Singularity2Ext3);
    assert_eq!(image.root, RootFs::Embedded { fs: FsType::Ext3, offset: 31, size: 16384 });

    assert_error(
        open_bytes(dir.path(), &img[..10_000]),
        &["truncated: the ext3 superblock at offset 31 says 16 blocks"],
    );
}

#[test]
fn singularity2_launch_line_without_a_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    assert_error(
        open_bytes(dir.path(), SINGULARITY_LAUNCH_LINE),
        &["truncated: only the Singularity launch line"],
    );
    let mut junk = SINGULARITY_LAUNCH_LINE.to_vec();
    junk.extend_from_slice(&[0xab; 4000]);
    assert_error(open_bytes(dir.path(), &junk), &["neither SquashFS nor ext3"]);
}

/// `unsquashfs -o OFFSET -l` must see the tree made by `make_squashfs` at that offset: an
/// independent check that the offset we report is where the filesystem really is.
fn assert_lists_hello(path: &Path, offset: u64) {
    let out = Command::new("unsquashfs").args(["-o", &offset.to_string(), "-l"]).arg(path).output();
    match out {
        Ok(o) if o.status.success() => {
            let listing = String::from_utf8_lossy(&o.stdout);
            assert!(listing.contains("bin/hello"), "{listing}");
        }
        Ok(o) => panic!("unsquashfs failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => eprintln!("skipping the unsquashfs check: unsquashfs is not available"),
    }
}

// ---- SIF fixtures (sylabs/sif test images) ----

#[test]
fn sif_one_group() {
    let Some(dir) = fixtures_dir() else { return };
    let image = open(&dir.join("one-group.sif")).unwrap();
    assert_eq!(image.format, Format::Sif);
    // Partition 2 is a real (tiny) SquashFS of 249 bytes in a 4096-byte partition.
    assert_eq!(image.root, RootFs::Embedded { fs: FsType::Squashfs, offset: 36864, size: 249 });
    let sb = image.squashfs.as_ref().unwrap();
    assert_eq!((sb.compression, sb.inode_count, sb.block_size), ("gzip", 2, 131072));
    let summary: Vec<_> = image
        .partitions
        .iter()
        .map(|p| {
            (
                p.id,
                p.group,
                p.kind.as_str(),
                p.fs.as_deref(),
                p.role.as_deref(),
                p.arch.as_deref(),
                p.offset,
                p.size,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, 1, "partition", Some("raw"), Some("system"), Some("386"), 32768, 4),
            (2, 1, "partition", Some("squashfs"), Some("primary-system"), Some("386"), 36864, 4096),
        ]
    );
    let info = image.sif.as_ref().unwrap();
    assert_eq!(info.arch, "386");
    assert_eq!(info.descriptors_total, 48);
    assert!(image.embedded_objects.is_empty());
}

#[test]
fn sif_two_groups() {
    let Some(dir) = fixtures_dir() else { return };
    let image = open(&dir.join("two-groups.sif")).unwrap();
    assert_eq!(image.root, RootFs::Embedded { fs: FsType::Squashfs, offset: 36864, size: 249 });
    assert_eq!(image.partitions.len(), 3);
    let third = &image.partitions[2];
    assert_eq!((third.id, third.group), (3, 2));
    assert_eq!(
        (third.fs.as_deref(), third.role.as_deref(), third.arch.as_deref()),
        (Some("ext3"), Some("system"), Some("amd64"))
    );
    assert_eq!((third.offset, third.size), (40960, 262144));
}

#[test]
fn sif_signed() {
    let Some(dir) = fixtures_dir() else { return };
    let image = open(&dir.join("one-group-signed-pgp.sif")).unwrap();
    assert_eq!(image.root, RootFs::Embedded { fs: FsType::Squashfs, offset: 36864, size: 249 });
    let sig = &image.partitions[2];
    assert_eq!(sig.kind, "signature");
    assert_eq!((sig.group, sig.link), (0, 0xf000_0001), "signs group 1");
    assert_eq!((sig.fs.as_ref(), sig.role.as_ref()), (None, None));
}

#[test]
fn sif_without_primary_partition() {
    let Some(dir) = fixtures_dir() else { return };
    assert_error(
        open(&dir.join("empty.sif")),
        &["no primary system partition (0 data objects)", "rebuild it"],
    );
}

// ---- damaged SIF variants ----

/// one-group.sif after `mutate`, opened from a temp dir.
fn damaged_one_group(mutate: impl FnOnce(&mut Vec<u8>)) -> Option<Result<Image>> {
    let mut bytes = fixture("one-group.sif")?;
    mutate(&mut bytes);
    let dir = tempfile::tempdir().unwrap();
    Some(open_bytes(dir.path(), &bytes))
}

#[test]
fn sif_damaged_magic() {
    let Some(r) = damaged_one_group(|b| b[40] = b'X') else { return };
    assert_error(r, &["SIF file whose header is damaged", "copy the image again"]);
}

#[test]
fn sif_unknown_version() {
    let Some(r) = damaged_one_group(|b| b[42..44].copy_from_slice(b"02")) else { return };
    assert_error(r, &["unknown SIF version \"02\"", "berth reads version 01"]);
}

#[test]
fn sif_descriptor_table_beyond_eof() {
    let Some(r) = damaged_one_group(|b| put_i64(b, 96, 40_000)) else { return };
    assert_error(
        r,
        &["truncated: the SIF descriptor table spans bytes 40000..68080 but the file holds only 40960 bytes"],
    );
}

#[test]
fn sif_absurd_descriptor_header() {
    let Some(r) = damaged_one_group(|b| put_i64(b, 88, -1)) else { return };
    assert_error(r, &["corrupt SIF header: -1 descriptors"]);
    let Some(r) = damaged_one_group(|b| put_i64(b, 104, 585)) else { return };
    assert_error(r, &["corrupt SIF header: descriptor table of 585 bytes cannot hold 48"]);
}

#[test]
fn sif_truncated_partition() {
    let Some(r) = damaged_one_group(|b| b.truncate(36864 + 1000)) else { return };
    assert_error(
        r,
        &["truncated: SIF partition 2 (squashfs, primary-system) spans bytes 36864..40960 but the file holds only 37864 bytes", "copy the image again"],
    );
}

#[test]
fn sif_negative_object_size() {
    let Some(r) = damaged_one_group(|b| put_i64(b, descriptor(0) + 25, -5)) else { return };
    assert_error(r, &["corrupt SIF descriptor: partition 1 (raw, system) has a negative offset or size"]);
    let Some(r) = damaged_one_group(|b| put_i64(b, descriptor(0) + 25, i64::MAX)) else { return };
    assert_error(r, &["SIF partition 1 (raw, system) spans bytes 32768..9223372036854808575 but the file holds only 40960"]);
}

#[test]
fn sif_squashfs_longer_than_its_partition() {
    let Some(r) = damaged_one_group(|b| put_i64(b, descriptor(1) + 25, 200)) else { return };
    assert_error(r, &["truncated: the SquashFS superblock at offset 36864 says 249 bytes but SIF partition 2 holds only 200", "rebuild it"]);
}

#[test]
fn sif_primary_partition_is_not_squashfs() {
    let Some(r) = damaged_one_group(|b| b[36864..36868].copy_from_slice(b"xxxx")) else { return };
    assert_error(r, &["no SquashFS superblock at offset 36864 of SIF partition 2"]);
}

#[test]
fn sif_encrypted_primary_partition() {
    let Some(r) = damaged_one_group(|b| put_i32(b, descriptor(1) + 201, sif::FS_ENCRYPTED_SQUASHFS)) else {
        return;
    };
    assert_error(r, &["encrypted SIF partitions are not supported", "decrypt it with apptainer"]);
}

#[test]
fn sif_raw_primary_partition() {
    let Some(r) = damaged_one_group(|b| put_i32(b, descriptor(1) + 201, sif::FS_RAW)) else { return };
    assert_error(r, &["primary partition 2 holds a raw object"]);
}

#[test]
fn sif_two_primary_partitions() {
    let Some(r) = damaged_one_group(|b| put_i32(b, descriptor(0) + 205, sif::PART_PRIMARY_SYSTEM)) else {
        return;
    };
    assert_error(r, &["2 primary system partitions (ids 1, 2)"]);
}

#[test]
fn sif_system_partitions_but_no_primary() {
    let Some(r) = damaged_one_group(|b| put_i32(b, descriptor(1) + 205, sif::PART_SYSTEM)) else { return };
    assert_error(r, &["no primary system partition (2 data objects)", "apptainer sif setprim", "ids: 1, 2"]);
}

#[test]
fn sif_ext3_primary_partition() {
    // two-groups.sif's partition 3 is a real ext filesystem (64 blocks of 4 KiB). Made primary,
    // it is the root: ext3, which only privileged mode can mount.
    let Some(mut bytes) = fixture("two-groups.sif") else { return };
    put_i32(&mut bytes, descriptor(1) + 205, sif::PART_SYSTEM);
    put_i32(&mut bytes, descriptor(2) + 205, sif::PART_PRIMARY_SYSTEM);
    let dir = tempfile::tempdir().unwrap();
    let image = open_bytes(dir.path(), &bytes).unwrap();
    assert_eq!(image.root, RootFs::Embedded { fs: FsType::Ext3, offset: 40960, size: 262144 });
    assert!(image.squashfs.is_none());
    assert_eq!(image.ext3, Some(Ext3Info { block_size: 4096, blocks_count: 64, size: 262144 }));

    // One block more than the partition holds.
    put_i32(&mut bytes, 40960 + 1024 + 4, 65);
    assert_error(
        open_bytes(dir.path(), &bytes),
        &["truncated: the ext3 superblock at offset 40960 says 65 blocks of 4096 bytes (266240 bytes) but SIF partition 3 holds only 262144"],
    );
    // No superblock at all.
    bytes[40960 + 1080] = 0;
    assert_error(open_bytes(dir.path(), &bytes), &["no ext3 superblock at offset 40960 of SIF partition 3"]);
}

#[test]
fn sif_objects_are_embedded() {
    // Turn one-group's raw partition 1 (4 bytes: fa ce fe ed) into a deffile object.
    let Some(r) = damaged_one_group(|b| put_i32(b, descriptor(0), sif::TYPE_DEFFILE)) else { return };
    let image = r.unwrap();
    assert_eq!(image.object("deffile"), Some(&[0xfa, 0xce, 0xfe, 0xed][..]));
    assert_eq!(image.partitions[0].kind, "deffile");
    assert_eq!(image.partitions[0].fs, None);
}

/// Descriptors over the same bytes are refused (4095 of them over one MiB made every reader copy
/// 4 GB); the JSON of embedded objects is text, not a dozen bytes of numbers per byte.
#[test]
fn sif_overlapping_objects_are_refused() {
    let Some(r) = damaged_one_group(|b| {
        let partition_at = i64::from_le_bytes(b[descriptor(1) + 17..descriptor(1) + 25].try_into().unwrap());
        put_i32(b, descriptor(0), sif::TYPE_DEFFILE);
        put_i64(b, descriptor(0) + 17, partition_at);
    }) else {
        return;
    };
    assert_error(r, &["corrupt SIF", "overlap", "data object 1 (deffile)"]);
    let image = damaged_one_group(|b| put_i32(b, descriptor(0), sif::TYPE_DEFFILE)).unwrap().unwrap();
    let json = serde_json::to_value(&image).unwrap();
    assert_eq!(json["embedded_objects"][0]["kind"], "deffile");
    assert_eq!(json["embedded_objects"][0]["size"], 4);
}

// ---- SIF writer ----

#[test]
fn write_sif_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sqsh) = make_squashfs(dir.path()) else { return };
    let out = dir.path().join("out.sif");
    let deffile = b"Bootstrap: docker\nFrom: debian:12\n".to_vec();
    let labels = br#"{"org.label-schema.name":"test"}"#.to_vec();
    let objects = [
        SifObject { kind: SifObjectKind::Deffile, name: "Singularity".into(), data: deffile.clone() },
        SifObject { kind: SifObjectKind::Labels, name: "labels.json".into(), data: labels.clone() },
    ];
    write_sif(&out, &sqsh, &objects, Some("#!/usr/bin/env berth run\n")).unwrap();

    let image = open(&out).unwrap();
    assert_eq!(image.format, Format::Sif);
    let bytes_used = open(&sqsh).unwrap().squashfs.unwrap().bytes_used;
    assert_eq!(image.root, RootFs::Embedded { fs: FsType::Squashfs, offset: 32768, size: bytes_used });
    assert_eq!(image.object("deffile"), Some(deffile.as_slice()));
    assert_eq!(image.object("labels"), Some(labels.as_slice()));
    let kinds: Vec<_> = image.partitions.iter().map(|p| (p.id, p.kind.as_str(), p.name.as_str())).collect();
    assert_eq!(
        kinds,
        vec![(1, "partition", "root.sqsh"), (2, "deffile", "Singularity"), (3, "labels", "labels.json")]
    );
    let info = image.sif.as_ref().unwrap();
    assert_eq!(info.launch_line, "#!/usr/bin/env berth run\n");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(info.arch, "amd64");
        assert_eq!(image.partitions[0].arch.as_deref(), Some("amd64"));
    }
    assert_eq!(info.uuid.len(), 36);
    assert_eq!(
        image.file_size,
        32768 + std::fs::metadata(&sqsh).unwrap().len() + (deffile.len() + labels.len()) as u64
    );
    assert_lists_hello(&out, 32768);

    // Only the result is left: no temporary file.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().contains(".tmp-")), "{names:?}");
}

#[test]
fn write_sif_header_matches_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sqsh) = make_squashfs(dir.path()) else { return };
    let out = dir.path().join("plain.sif");
    write_sif(&out, &sqsh, &[], None).unwrap();
    let b = std::fs::read(&out).unwrap();
    let mut launch = SINGULARITY_LAUNCH_LINE.to_vec();
    launch.push(0);
    assert_eq!(&b[..32], launch.as_slice());
    assert_eq!(&b[32..42], b"SIF_MAGIC\0");
    assert_eq!(&b[42..45], b"01\0");
    assert_eq!(&b[45..48], sif::arch_code_for(std::env::consts::ARCH));
    let le = |at: usize| i64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    assert_eq!((le(80), le(88), le(96), le(104), le(112)), (47, 48, 4096, 48 * 585, 4096 + 48 * 585));
    assert_eq!(le(120), b.len() as i64 - (4096 + 48 * 585));
    let d = 4096;
    assert_eq!(i32::from_le_bytes(b[d..d + 4].try_into().unwrap()), 0x4004);
    assert_eq!(b[d + 4], 1);
    assert_eq!(u32::from_le_bytes(b[d + 9..d + 13].try_into().unwrap()), 0xf000_0001);
    assert_eq!(le(d + 17), 32768);
    assert_eq!(le(d + 33), 32768 - (4096 + 48 * 585) + le(d + 25));
    assert_eq!(i32::from_le_bytes(b[d + 201..d + 205].try_into().unwrap()), 1);
    assert_eq!(i32::from_le_bytes(b[d + 205..d + 209].try_into().unwrap()), 2);
    assert_eq!(b[d + 585 + 4], 0, "second slot unused");
}

#[test]
fn write_sif_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let not_sqsh = dir.path().join("junk");
    std::fs::write(&not_sqsh, vec![7u8; 5000]).unwrap();
    let out = dir.path().join("out.sif");
    let msg = write_sif(&out, &not_sqsh, &[], None).unwrap_err().to_string();
    assert!(msg.contains("no SquashFS superblock"), "{msg}");
    assert!(!out.exists());

    let Some(sqsh) = make_squashfs(dir.path()) else { return };
    let long = "#!/usr/bin/env a-very-long-launcher-name run\n";
    let msg = write_sif(&out, &sqsh, &[], Some(long)).unwrap_err().to_string();
    assert!(msg.contains("at most 31 bytes"), "{msg}");
    assert!(!out.exists());
}

#[test]
fn write_sif_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sqsh) = make_squashfs(dir.path()) else { return };
    let out = dir.path().join("out.sif");
    std::fs::write(&out, b"old contents").unwrap();
    write_sif(&out, &sqsh, &[], None).unwrap();
    assert_eq!(open(&out).unwrap().format, Format::Sif);
}
