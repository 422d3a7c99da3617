//! Builders for OCI image layouts with hand-made layers (whiteouts, hardlinks, owners, hostile
//! entries), used by this crate's tests and by the registry integration tests.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

pub enum Ent<'a> {
    Dir(&'a str, u32, u64, u64),
    /// path, contents, mode, uid, gid
    File(&'a str, &'a [u8], u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A raw name written as is (for hostile `../` entries).
    RawFile(&'a str, &'a [u8]),
}

/// A zstd-compressed layer tarball (two frames, as a streaming compressor may write).
pub fn layer_zstd(entries: &[Ent]) -> Vec<u8> {
    let raw = layer(entries, false);
    let (a, b) = raw.split_at(raw.len() / 2);
    let mut out = zstd::stream::encode_all(a, 3).unwrap();
    out.extend(zstd::stream::encode_all(b, 3).unwrap());
    out
}

fn uncompressed(l: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    if l.starts_with(&[0x1f, 0x8b]) {
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(l), &mut v).unwrap();
    } else if l.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        v = zstd::stream::decode_all(l).unwrap();
    } else {
        v = l.to_vec();
    }
    v
}

/// A layer tarball (gzip-compressed when `gzip`).
pub fn layer(entries: &[Ent], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(vec![]);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        match e {
            Ent::Dir(p, mode, uid, gid) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Ent::File(p, data, mode, uid, gid) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Ent::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            Ent::Hardlink(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            Ent::RawFile(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let name = p.as_bytes();
                h.as_old_mut().name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    let raw = b.into_inner().unwrap();
    if !gzip {
        return raw;
    }
    let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

fn put(dir: &Path, data: &[u8]) -> (String, u64) {
    let hex = crate::cache::hex(&Sha256::digest(data));
    let p = dir.join("blobs/sha256").join(&hex);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    (format!("sha256:{hex}"), data.len() as u64)
}

/// Write one image (config + layers) into the layout at `dir`; returns its manifest descriptor.
pub fn image(dir: &Path, config: &serde_json::Value, layers: &[Vec<u8>], arch: &str) -> serde_json::Value {
    let mut config = config.clone();
    config["architecture"] = arch.into();
    config["os"] = "linux".into();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", crate::cache::hex(&Sha256::digest(uncompressed(l)))))
        .collect();
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
    let (cd, cs) = put(dir, &serde_json::to_vec(&config).unwrap());
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let (d, s) = put(dir, l);
            let mt = if l.starts_with(&[0x1f, 0x8b]) {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else if l.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            serde_json::json!({"mediaType": mt, "digest": d, "size": s})
        })
        .collect();
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layer_descs,
    });
    let (md, ms) = put(dir, &serde_json::to_vec(&m).unwrap());
    serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "platform": {"architecture": arch, "os": "linux"}})
}

/// Finish the layout: index.json listing `manifests` (several = a multi-arch index), tagged `tag`.
pub fn finish(dir: &Path, manifests: Vec<serde_json::Value>, tag: &str) {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let top = if manifests.len() == 1 {
        let mut m = manifests[0].clone();
        m["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        m
    } else {
        let idx = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        let (d, s) = put(dir, &serde_json::to_vec(&idx).unwrap());
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s,
            "annotations": {"org.opencontainers.image.ref.name": tag}})
    };
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// One raw tar header block of entry type `kind` (for hand-made extension headers).
pub fn raw_header(kind: u8, name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// Pad `v` with zeros to a whole number of 512-byte tar blocks.
pub fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(512) * 512, 0);
}

/// A pax header (`x`) block and its body with `records`, padded to whole blocks.
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = vec![];
    for (k, v) in records {
        // The record's length counts its own digits.
        let rest = k.len() + v.len() + 3;
        let mut len = rest + rest.to_string().len();
        if len.to_string().len() != rest.to_string().len() {
            len += 1;
        }
        body.extend_from_slice(format!("{len} {k}=").as_bytes());
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    let mut out = raw_header(b'x', "pax", body.len() as u64);
    out.extend_from_slice(&body);
    pad(&mut out);
    out
}
