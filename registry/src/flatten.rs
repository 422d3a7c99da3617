//! Layers to one tree, without unpacking: pass 1 reads every layer's headers in order and keeps
//! the final tree (OCI whiteouts, opaque directories, replacements, hardlinks) in memory; pass 2
//! writes one tar stream (directories, then file contents read again from the layers, then
//! links, devices and berth's metadata) that `mksquashfs -tar` turns into the image, or, for
//! `berth build` as root, creates the tree in a directory itself ([`write_dir`]). Owners,
//! modes (setuid included) and xattrs come from the layers' headers, so no root is needed.
//! Entries that would land outside the root (`..`, or below a symlink) are refused.
//!
//! Layers are untrusted input, so reading them is bounded: tar extension headers (GNU long
//! names and links, pax records) are checked against [`MAX_LONG_NAME`] and [`MAX_PAX`] before
//! the tar reader buffers them, and each entry's path against [`MAX_PATH`], [`MAX_NAME`] and
//! [`MAX_DEPTH`]; the tree holds at most [`MAX_NODES`] paths and [`MAX_TREE_BYTES`] of names,
//! link targets and xattrs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::error::{Error, Result};
use crate::image::{Layer, Store};

/// The longest path an entry may have, in bytes (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// The longest name of one path component, in bytes (Linux's NAME_MAX).
pub const MAX_NAME: usize = 255;
/// The most components one path may have.
pub const MAX_DEPTH: usize = 1024;
/// The most paths the merged tree may hold.
pub const MAX_NODES: usize = 2_000_000;
/// The most bytes of paths, link targets and extended attributes the merged tree may hold.
pub const MAX_TREE_BYTES: u64 = 256 << 20;
/// The largest GNU long-name or long-link record (`L`, `K`) a layer may carry.
pub const MAX_LONG_NAME: u64 = 64 << 10;
/// The largest pax extended header (`x`, `g`) a layer may carry.
pub const MAX_PAX: u64 = 1 << 20;

const HINT_HOSTILE: &str = "the image is malformed or hostile; nothing was written";

/// (layer, entry index): where a regular file's content lives.
type Key = (u32, u32);

#[derive(Debug, Clone)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Key, u64),
    /// A hardlink to the regular file whose content is at `Key`.
    Hardlink(Key),
    Symlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// Content berth adds (metadata files).
    Data(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub layer: u32,
    pub kind: Kind,
    pub meta: Meta,
}

#[derive(Default)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
    pub root: Option<Meta>,
    /// Names, link targets and xattrs read so far, against [`MAX_TREE_BYTES`].
    bytes: u64,
}

/// Open a layer's tar stream (gzip, zstd or plain, recognised by content).
fn open_layer<'a>(
    store: &Store,
    layer: &Layer,
    what: &str,
) -> Result<tar::Archive<HeaderGuard<Box<dyn Read + 'a>>>> {
    let r = decompressed(store.open(&layer.key)?, what)?;
    Ok(tar::Archive::new(HeaderGuard::new(r)))
}

/// A stream decompressed by its content: gzip, zstd, or plain.
pub fn decompressed<'a>(raw: Box<dyn Read + Send + 'a>, what: &str) -> Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 << 10, raw);
    let head = br.fill_buf().map_err(|e| Error::io(what.to_string(), e))?;
    let r: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        // Concatenated frames are read through, as with gzip members.
        let d = zstd::stream::read::Decoder::with_buffer(br)
            .map_err(|e| Error::new(what, format!("zstd: {e}"), "the layer is damaged"))?;
        Box::new(d)
    } else {
        Box::new(br)
    };
    Ok(r)
}
/// A tar stream checked as it is read: each header's type and size are looked at before the
/// tar reader sees them, so that an extension header over its limit (the reader buffers the
/// whole body of a GNU long name or a pax header in memory) is an error instead of gigabytes
/// of memory. It follows the archive's layout as the `tar` crate does (pax `size` overrides,
/// GNU sparse extension blocks) and passes every byte on unchanged; after the end-of-archive
/// block, or a header the reader refuses itself (bad checksum or size), it only passes bytes on.
pub struct HeaderGuard<R> {
    inner: R,
    /// Bytes passed on so far.
    pos: u64,
    /// Where the next header block starts.
    next: u64,
    block: [u8; 512],
    /// GNU sparse extension blocks come next, then this much data.
    sparse: Option<u64>,
    /// A pax body being collected, and where it ends.
    pax: Option<(Vec<u8>, u64)>,
    /// A pax `size` for the next entry.
    pax_size: Option<u64>,
    done: bool,
    failed: Option<String>,
}

/// The error a [`HeaderGuard`] reports (recognised so that it reaches the user as is).
#[derive(Debug)]
struct OverLimit(String);

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverLimit {}

impl<R: Read> HeaderGuard<R> {
    pub fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            pos: 0,
            next: 0,
            block: [0; 512],
            sparse: None,
            pax: None,
            pax_size: None,
            done: false,
            failed: None,
        }
    }

    fn over(&mut self, msg: String) -> std::io::Error {
        self.failed = Some(msg.clone());
        std::io::Error::new(std::io::ErrorKind::InvalidData, OverLimit(msg))
    }

    fn inspect(&mut self, data: &[u8]) -> std::io::Result<()> {
        let start = self.pos;
        let end = start + data.len() as u64;
        let mut at = start;
        while at < end && !self.done {
            if let Some((body, body_end)) = &mut self.pax {
                let take = (*body_end).min(end) - at;
                let from = (at - start) as usize;
                body.extend_from_slice(&data[from..from + take as usize]);
                at += take;
                if at == *body_end {
                    self.pax_size = self.pax.take().and_then(|(b, _)| pax_size(&b));
                }
                continue;
            }
            if at < self.next {
                at = self.next.min(end);
                continue;
            }
            let off = (at - self.next) as usize;
            let take = (512 - off).min((end - at) as usize);
            let from = (at - start) as usize;
            self.block[off..off + take].copy_from_slice(&data[from..from + take]);
            at += take as u64;
            if off + take == 512 {
                self.header()?;
            }
        }
        Ok(())
    }

    /// Skip `size` bytes of data (rounded up to whole blocks) after the block just read.
    fn skip(&mut self, size: u64) {
        match size.checked_add(511).and_then(|s| self.next.checked_add(s & !511)) {
            Some(n) => self.next = n,
            // The tar reader refuses the size itself.
            None => self.done = true,
        }
    }

    fn header(&mut self) -> std::io::Result<()> {
        let blk = self.block;
        self.next += 512;
        if let Some(size) = self.sparse {
            // A GNU sparse extension block: its byte 504 says whether another one follows.
            if blk[504] != 1 {
                self.sparse = None;
                self.skip(size);
            }
            return Ok(());
        }
        if blk.iter().all(|b| *b == 0) {
            // The end of the archive, where the tar reader stops.
            self.done = true;
            return Ok(());
        }
        let mut h = Header::new_old();
        h.as_mut_bytes().copy_from_slice(&blk);
        let sum = blk[..148].iter().chain(&blk[156..]).map(|b| u32::from(*b)).sum::<u32>() + 8 * 32;
        let size = match (h.cksum(), h.entry_size()) {
            (Ok(c), Ok(size)) if c == sum => size,
            _ => {
                self.done = true;
                return Ok(());
            }
        };
        let t = h.entry_type();
        let recognised = h.as_gnu().is_some() || h.as_ustar().is_some();
        let long = t.is_gnu_longname() || t.is_gnu_longlink();
        let pax = t.is_pax_local_extensions() || t.is_pax_global_extensions();
        if long || pax {
            let (limit, kind) = if long {
                (MAX_LONG_NAME, if t.is_gnu_longname() { "GNU long-name" } else { "GNU long-link" })
            } else {
                (MAX_PAX, "pax")
            };
            if size > limit {
                return Err(self.over(format!(
                    "a {kind} header of {size} bytes is over berth's limit of {limit} bytes"
                )));
            }
            if recognised && t.is_pax_local_extensions() {
                // Its `size` record applies to the next entry, as the tar reader applies it.
                self.pax = Some((Vec::with_capacity(size as usize), self.next + size));
                if size == 0 {
                    self.pax = None;
                    self.pax_size = None;
                }
            } else if !(recognised && long) {
                // The tar reader returns this one as an entry: a pending pax header is spent.
                self.pax_size = None;
            }
            self.skip(size);
            return Ok(());
        }
        let size = self.pax_size.take().unwrap_or(size);
        if t.is_gnu_sparse() && h.as_gnu().is_some_and(|g| g.is_extended()) {
            self.sparse = Some(size);
            return Ok(());
        }
        self.skip(size);
        Ok(())
    }
}

/// The `size` record of a pax body, read as the tar reader reads it.
fn pax_size(body: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(body) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(msg) = &self.failed {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, OverLimit(msg.clone())));
        }
        let n = self.inner.read(buf)?;
        if !self.done {
            self.inspect(&buf[..n])?;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A tar reader's error as berth reports it: a limit by its own words, anything else as damage.
fn tar_error(what: &str, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|r| r.is::<OverLimit>()) {
        return Error::new(what, e.to_string(), HINT_HOSTILE);
    }
    Error::new(what, format!("corrupt tar: {e}"), "the layer is damaged")
}

/// An error reading an archive's own tar stream (`docker save` and OCI archives).
pub(crate) fn archive_error(what: &str, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|r| r.is::<OverLimit>()) {
        return Error::new(what, e.to_string(), HINT_HOSTILE);
    }
    Error::new(what, e.to_string(), "is it a complete tar file?")
}

/// A path for a message: long ones shortened.
fn shown(p: &str) -> String {
    if p.len() <= 120 {
        return format!("{p:?}");
    }
    let mut cut = 100;
    while !p.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}... ({} bytes)", &p[..cut], p.len())
}

fn layer_what(layer: &Layer, i: usize) -> String {
    format!("layer {} ({})", i + 1, layer.digest.as_deref().unwrap_or(&layer.key))
}

/// Split a tar path into clean components; `..` and paths over the limits are refused.
fn components(raw: &[u8], what: &str) -> Result<Vec<String>> {
    let s = String::from_utf8_lossy(raw);
    if raw.len() > MAX_PATH {
        return Err(refuse(what, &s, &format!("has a path longer than berth's limit of {MAX_PATH} bytes")));
    }
    let mut v = vec![];
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(refuse(what, &s, "would write outside the image root")),
            c if c.len() > MAX_NAME => {
                return Err(refuse(
                    what,
                    &s,
                    &format!("has a name longer than berth's limit of {MAX_NAME} bytes"),
                ))
            }
            c => v.push(c.to_string()),
        }
    }
    if v.len() > MAX_DEPTH {
        return Err(refuse(what, &s, &format!("is deeper than berth's limit of {MAX_DEPTH} directories")));
    }
    Ok(v)
}

fn refuse(what: &str, path: &str, why: &str) -> Error {
    Error::new(what, format!("entry {} {why}", shown(path)), HINT_HOSTILE)
}

fn meta_of(h: &Header, xattrs: Vec<(String, Vec<u8>)>) -> Meta {
    Meta {
        mode: h.mode().unwrap_or(0o644) & 0o7777,
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: h.mtime().unwrap_or(0),
        xattrs,
    }
}

/// What one layer has already whited out (a repeated marker would rescan the same subtree).
#[derive(Default)]
struct Seen {
    opaque: HashSet<String>,
    whiteouts: HashSet<String>,
}

impl Tree {
    fn remove_subtree(&mut self, path: &str, below_layer: Option<u32>, with_self: bool) {
        let prefix = format!("{path}/");
        let doomed: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, n)| below_layer.is_none_or(|l| n.layer < l))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
        if with_self && self.nodes.get(path).is_some_and(|n| below_layer.is_none_or(|l| n.layer < l)) {
            self.nodes.remove(path);
        }
    }

    /// Account for `bytes` more of names, link targets or xattrs held while merging.
    fn spend(&mut self, bytes: usize, what: &str) -> Result<()> {
        self.bytes += bytes as u64;
        if self.bytes > MAX_TREE_BYTES || self.nodes.len() >= MAX_NODES {
            return Err(Error::new(
                what,
                format!(
                    "the image holds more than berth's limit of {MAX_NODES} paths or {} MiB of names, link targets and extended attributes",
                    MAX_TREE_BYTES >> 20
                ),
                HINT_HOSTILE,
            ));
        }
        Ok(())
    }

    fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || matches!(self.nodes.get(path).map(|n| &n.kind), Some(Kind::Dir))
    }

    /// Make the directory `parent` ("a/b/c") and its missing ancestors; a symlink among them is
    /// refused. Every node's ancestors are directories in the tree, so the search stops at the
    /// deepest one present: the usual entry, whose parent exists, costs one lookup.
    fn parents(&mut self, parent: &str, layer: u32, what: &str) -> Result<()> {
        let mut end = parent.len();
        let from = loop {
            if end == 0 {
                break 0;
            }
            let p = &parent[..end];
            match self.nodes.get(p).map(|n| &n.kind) {
                Some(Kind::Dir) => break end,
                Some(Kind::Symlink(_)) => {
                    return Err(refuse(what, p, "is a symlink that a later entry writes through"))
                }
                // A lower file replaced by a directory (a file has nothing below it).
                Some(_) => {
                    let p = p.to_string();
                    self.nodes.remove(&p);
                    break p.rfind('/').unwrap_or(0);
                }
                None => end = p.rfind('/').unwrap_or(0),
            }
        };
        // Implicit directories (a layer without the directory's own entry), made top down.
        let mut at = from;
        while at < parent.len() {
            let start = if at == 0 { 0 } else { at + 1 };
            at = parent[start..].find('/').map_or(parent.len(), |i| start + i);
            let p = parent[..at].to_string();
            self.spend(p.len(), what)?;
            let meta = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: vec![] };
            self.nodes.insert(p, Node { layer, kind: Kind::Dir, meta });
        }
        Ok(())
    }

    fn add(
        &mut self,
        layer: u32,
        idx: u32,
        entry: &mut tar::Entry<'_, impl Read>,
        what: &str,
        seen: &mut Seen,
    ) -> Result<()> {
        let comps = components(&entry.path_bytes(), what)?;
        let h = entry.header().clone();
        let et = h.entry_type();
        let mut xattrs = vec![];
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for e in exts.flatten() {
                if let Ok(k) = e.key() {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_string(), e.value_bytes().to_vec()));
                    }
                }
            }
        }
        let Some((name, parent)) = comps.split_last() else {
            if et.is_dir() {
                self.root = Some(meta_of(&h, xattrs));
            }
            return Ok(());
        };
        let ppath = parent.join("/");
        let join = |n: &str| if ppath.is_empty() { n.to_string() } else { format!("{ppath}/{n}") };
        // Whiteouts first: they hide what lower layers have below their directory, and make
        // nothing. Under a parent that is not a directory (missing, or a file that replaced
        // one) there is nothing to hide.
        if name == ".wh..wh..opq" {
            if self.is_dir(&ppath) && !seen.opaque.contains(&ppath) {
                self.spend(ppath.len(), what)?;
                if ppath.is_empty() {
                    self.nodes.retain(|_, n| n.layer >= layer);
                } else {
                    self.remove_subtree(&ppath, Some(layer), false);
                }
                seen.opaque.insert(ppath);
            }
            return Ok(());
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            let path = join(target);
            if self.is_dir(&ppath) && !seen.whiteouts.contains(&path) {
                self.spend(path.len(), what)?;
                self.remove_subtree(&path, Some(layer), true);
                seen.whiteouts.insert(path);
            }
            return Ok(());
        }
        self.parents(&ppath, layer, what)?;
        let path = join(name);
        let xattr_bytes: usize = xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut meta = meta_of(&h, xattrs);
        let kind = match et {
            EntryType::Directory => {
                if let Some(n) = self.nodes.get_mut(&path).filter(|n| matches!(n.kind, Kind::Dir)) {
                    n.meta = meta;
                    n.layer = layer;
                    return self.spend(xattr_bytes, what);
                }
                Kind::Dir
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                Kind::File((layer, idx), entry.size())
            }
            EntryType::Symlink => {
                let t = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if t.len() > MAX_PATH {
                    return Err(refuse(
                        what,
                        &path,
                        &format!("is a symlink longer than berth's limit of {MAX_PATH} bytes"),
                    ));
                }
                Kind::Symlink(t)
            }
            EntryType::Link => {
                let raw = entry.link_name_bytes().map(|b| b.to_vec()).unwrap_or_default();
                let target = components(&raw, what)?.join("/");
                match self.nodes.get(&target).map(|n| &n.kind) {
                    Some(Kind::File(k, _)) | Some(Kind::Hardlink(k)) => Kind::Hardlink(*k),
                    // A hardlink to a symlink, device or fifo: the same kind of entry again.
                    Some(k @ (Kind::Symlink(_) | Kind::Char(..) | Kind::Block(..) | Kind::Fifo)) => {
                        meta = self.nodes[&target].meta.clone();
                        k.clone()
                    }
                    _ => {
                        return Err(refuse(
                            what,
                            &path,
                            &format!("is a hardlink to {}, which is not a file in the image", shown(&target)),
                        ))
                    }
                }
            }
            EntryType::Char => Kind::Char(
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            ),
            EntryType::Block => Kind::Block(
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            ),
            EntryType::Fifo => Kind::Fifo,
            // pax/GNU headers are consumed by the tar reader; anything else is skipped.
            _ => return Ok(()),
        };
        let link_bytes = if let Kind::Symlink(t) = &kind { t.len() } else { 0 };
        self.spend(path.len() + link_bytes + xattr_bytes, what)?;
        self.remove_subtree(&path, None, true);
        self.nodes.insert(path, Node { layer, kind, meta });
        Ok(())
    }
}

/// Pass 1: the final tree of `layers`, each layer's digest checked when one is given.
pub fn merge(store: &Store, layers: &[Layer], mut progress: impl FnMut()) -> Result<Tree> {
    let mut tree = Tree::default();
    for (i, layer) in layers.iter().enumerate() {
        let what = layer_what(layer, i);
        let mut ar = open_layer(store, layer, &what)?;
        let mut seen = Seen::default();
        for (j, e) in ar.entries().map_err(|e| tar_error(&what, e))?.enumerate() {
            let mut e = e.map_err(|e| tar_error(&what, e))?;
            tree.add(i as u32, j as u32, &mut e, &what, &mut seen)?;
        }
        let mut inner = ar.into_inner();
        std::io::copy(&mut inner, &mut std::io::sink())
            .map_err(|e| Error::new(&what, format!("corrupt layer: {e}"), ""))?;
        if let Some(want) = &layer.digest {
            // Blobs from the cache were checked on the way in (their `digest` is None here);
            // local layouts and archives are checked now, before anything is written.
            drop(inner);
            let got = blob_digest(store, &layer.key)?;
            if &got != want {
                return Err(Error::new(
                    &what,
                    format!("digest mismatch: expected {want}, found {got}"),
                    "the image is corrupt",
                ));
            }
        }
        progress();
    }
    Ok(tree)
}

fn blob_digest(store: &Store, key: &str) -> Result<String> {
    let mut r = store.open(key)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::io(format!("blob {key}"), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", crate::cache::hex(&h.finalize())))
}

/// A tar writer with pax records for what ustar cannot hold (long names, big ids, xattrs).
struct Out<W: Write> {
    w: W,
}

impl<W: Write> Out<W> {
    fn entry(
        &mut self,
        path: &str,
        meta: &Meta,
        et: EntryType,
        link: Option<&str>,
        size: u64,
        data: &mut dyn Read,
    ) -> std::io::Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = vec![];
        let mut h = Header::new_ustar();
        h.set_entry_type(et);
        let p = if et == EntryType::Directory { format!("{path}/") } else { path.to_string() };
        if p.len() > 100 {
            pax.push(("path".into(), p.as_bytes().to_vec()));
        }
        let name = &p.as_bytes()[..p.len().min(100)];
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            if l.len() > 100 {
                pax.push(("linkpath".into(), l.as_bytes().to_vec()));
            }
            let lb = &l.as_bytes()[..l.len().min(100)];
            h.as_old_mut().linkname[..lb.len()].copy_from_slice(lb);
        }
        h.set_mode(meta.mode);
        for (key, v, set) in [("uid", meta.uid, 0), ("gid", meta.gid, 1)] {
            let v = if v > 0o7777777 {
                pax.push((key.into(), v.to_string().into_bytes()));
                0
            } else {
                v
            };
            if set == 0 {
                h.set_uid(v);
            } else {
                h.set_gid(v);
            }
        }
        h.set_mtime(meta.mtime.min(0o77777777777));
        if size >= 0o77777777777 {
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        h.set_size(size.min(0o77777777777));
        for (k, v) in &meta.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            let mut body = vec![];
            for (k, v) in &pax {
                // Each record is "LEN KEY=VALUE\n" where LEN counts the whole record.
                let rest = k.len() + v.len() + 3;
                let mut len = rest + rest.to_string().len();
                if len.to_string().len() != rest.to_string().len() {
                    len += 1;
                }
                body.extend_from_slice(format!("{len} {k}=").as_bytes());
                body.extend_from_slice(v);
                body.push(b'\n');
            }
            let mut ph = Header::new_ustar();
            ph.set_entry_type(EntryType::XHeader);
            ph.set_path("pax").ok();
            ph.set_size(body.len() as u64);
            ph.set_mode(0o644);
            ph.set_cksum();
            self.w.write_all(ph.as_bytes())?;
            self.w.write_all(&body)?;
            self.pad(body.len() as u64)?;
        }
        h.set_cksum();
        self.w.write_all(h.as_bytes())?;
        let n = std::io::copy(&mut data.take(size), &mut self.w)?;
        if n != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{path}: content ends early"),
            ));
        }
        self.pad(size)
    }

    fn pad(&mut self, size: u64) -> std::io::Result<()> {
        let rem = (512 - size % 512) % 512;
        self.w.write_all(&vec![0u8; rem as usize])
    }
}

/// Where pass 2 finds each regular file's content.
struct Plan<'t> {
    /// The path that gets the content of each key; hardlinks to the key point at it.
    primary: HashMap<Key, &'t str>,
    /// The entries of the layers to write as files: the winning path of each regular file, and
    /// hardlinks whose file was replaced later (they get the content themselves, further links
    /// point at them).
    content: HashMap<Key, (&'t str, &'t Meta)>,
    /// Layers holding any of that content.
    layers: HashSet<u32>,
}

fn plan(tree: &Tree) -> Plan<'_> {
    let mut primary: HashMap<Key, &str> = HashMap::new();
    let mut content = HashMap::new();
    for (p, n) in &tree.nodes {
        if let Kind::File(k, _) = n.kind {
            primary.insert(k, p);
            content.insert(k, (p.as_str(), &n.meta));
        }
    }
    for (p, n) in &tree.nodes {
        if let Kind::Hardlink(k) = n.kind {
            if let std::collections::hash_map::Entry::Vacant(v) = primary.entry(k) {
                v.insert(p);
                content.insert(k, (p.as_str(), &n.meta));
            }
        }
    }
    let layers = content.keys().map(|k| k.0).collect();
    Plan { primary, content, layers }
}

/// Pass 2: write the tree as one tar stream to `w`.
pub fn write_tar<W: Write>(
    store: &Store,
    layers: &[Layer],
    tree: &Tree,
    w: W,
    mut progress: impl FnMut(),
) -> Result<W> {
    let io = |e: std::io::Error| Error::new("writing the image", e.to_string(), "");
    let plan = plan(tree);
    let mut out = Out { w };
    for (p, n) in &tree.nodes {
        if let Kind::Dir = n.kind {
            out.entry(p, &n.meta, EntryType::Directory, None, 0, &mut std::io::empty()).map_err(io)?;
        }
    }
    for (i, layer) in layers.iter().enumerate() {
        let what = layer_what(layer, i);
        let li = i as u32;
        if plan.layers.contains(&li) {
            let mut ar = open_layer(store, layer, &what)?;
            for (j, e) in ar.entries().map_err(|e| tar_error(&what, e))?.enumerate() {
                let mut e = e.map_err(|e| tar_error(&what, e))?;
                if let Some((p, meta)) = plan.content.get(&(li, j as u32)) {
                    let size = e.size();
                    out.entry(p, meta, EntryType::Regular, None, size, &mut e).map_err(io)?;
                }
            }
        }
        progress();
    }
    for (p, n) in &tree.nodes {
        let none = &mut std::io::empty();
        match &n.kind {
            Kind::Dir | Kind::File(..) => {}
            Kind::Hardlink(k) => {
                let target = plan.primary[k];
                if target != p {
                    out.entry(p, &n.meta, EntryType::Link, Some(target), 0, none).map_err(io)?;
                }
            }
            Kind::Symlink(t) => out.entry(p, &n.meta, EntryType::Symlink, Some(t), 0, none).map_err(io)?,
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                let et = if matches!(n.kind, Kind::Char(..)) { EntryType::Char } else { EntryType::Block };
                out.entry_dev(p, &n.meta, et, *ma, *mi).map_err(io)?;
            }
            Kind::Fifo => out.entry(p, &n.meta, EntryType::Fifo, None, 0, none).map_err(io)?,
            Kind::Data(d) => {
                out.entry(p, &n.meta, EntryType::Regular, None, d.len() as u64, &mut &d[..]).map_err(io)?
            }
        }
    }
    out.w.write_all(&[0u8; 1024]).map_err(io)?;
    Ok(out.w)
}

/// Pass 2 into a directory, for `berth build` (root): the tree created below `dir` (which
/// should be empty) with the layers' owners, modes, xattrs and times. No archive tool runs.
/// Every parent is opened one component at a time from a descriptor of `dir` with
/// `O_NOFOLLOW | O_DIRECTORY`, and every name is created exclusively (`O_EXCL`, `mkdirat`,
/// `symlinkat`, `linkat`, `mknodat`): nothing is written through a symlink or over what is
/// already there, whatever the layers hold.
pub fn write_dir(
    store: &Store,
    layers: &[Layer],
    tree: &Tree,
    dir: &std::path::Path,
    mut progress: impl FnMut(),
) -> Result<()> {
    let what = format!("unpacking into {}", dir.display());
    let fail = |p: &str, e: std::io::Error| {
        let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            || e.kind() == std::io::ErrorKind::StorageFull;
        let hint = if full { "free some space, or build elsewhere (BERTH_TMPDIR)" } else { "" };
        Error::new(&what, format!("{}: {e}", shown(p)), hint)
    };
    let mut w = DirWriter::open(dir).map_err(|e| fail("", e))?;
    let plan = plan(tree);
    for (p, n) in &tree.nodes {
        if let Kind::Dir = n.kind {
            w.mkdir(p, &n.meta).map_err(|e| fail(p, e))?;
        }
    }
    for (i, layer) in layers.iter().enumerate() {
        let lwhat = layer_what(layer, i);
        let li = i as u32;
        if plan.layers.contains(&li) {
            let mut ar = open_layer(store, layer, &lwhat)?;
            for (j, e) in ar.entries().map_err(|e| tar_error(&lwhat, e))?.enumerate() {
                let mut e = e.map_err(|e| tar_error(&lwhat, e))?;
                if let Some((p, meta)) = plan.content.get(&(li, j as u32)) {
                    let size = e.size();
                    w.file(p, meta, size, &mut e).map_err(|e| fail(p, e))?;
                }
            }
        }
        progress();
    }
    for (p, n) in &tree.nodes {
        let r = match &n.kind {
            Kind::Dir | Kind::File(..) => Ok(()),
            Kind::Hardlink(k) => {
                let target = plan.primary[k];
                if target != p {
                    w.hardlink(target, p)
                } else {
                    Ok(())
                }
            }
            Kind::Symlink(t) => w.symlink(p, t, &n.meta),
            Kind::Char(ma, mi) => w.node(p, &n.meta, libc::S_IFCHR, libc::makedev(*ma, *mi)),
            Kind::Block(ma, mi) => w.node(p, &n.meta, libc::S_IFBLK, libc::makedev(*ma, *mi)),
            Kind::Fifo => w.node(p, &n.meta, libc::S_IFIFO, 0),
            Kind::Data(d) => w.file(p, &n.meta, d.len() as u64, &mut &d[..]),
        };
        r.map_err(|e| fail(p, e))?;
    }
    // Directory modes and times last: every entry made inside changed them.
    for (p, n) in &tree.nodes {
        if let Kind::Dir = n.kind {
            w.finish_dir(Some(p), &n.meta).map_err(|e| fail(p, e))?;
        }
    }
    if let Some(root) = &tree.root {
        w.finish_dir(None, root).map_err(|e| fail("/", e))?;
    }
    Ok(())
}

/// Creates a tree below one directory descriptor, never following a link.
struct DirWriter {
    root: std::os::fd::OwnedFd,
    /// The directory used last (entries come in path order, so mostly the same one).
    cached: Option<(String, std::os::fd::OwnedFd)>,
}

fn cstr(s: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(s)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// (parent, name) of a tree path.
fn split(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

/// An id as chown takes it (an id that does not fit, or -1 which means "unchanged", is nobody).
fn id(v: u64) -> u32 {
    u32::try_from(v).ok().filter(|v| *v != u32::MAX).unwrap_or(65534)
}

fn times(meta: &Meta) -> [libc::timespec; 2] {
    let t = libc::timespec { tv_sec: meta.mtime.min(i64::MAX as u64) as libc::time_t, tv_nsec: 0 };
    [t, t]
}

/// Open the directory `name` below `dir`, refusing a symlink.
fn open_dir_at(dir: std::os::fd::RawFd, name: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = cstr(name)?;
    // SAFETY: openat with a descriptor this process holds and a NUL-terminated name; the
    // result is checked before it is owned.
    let fd = unsafe {
        libc::openat(dir, c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Fail unless the filesystem of `fd` has `size` bytes free for ordinary users. Root (`berth
/// build`) could otherwise fill the blocks a filesystem keeps for root with a layer that is a
/// few KB compressed: what it may write is what a user could.
pub fn ensure_room(fd: std::os::fd::RawFd, size: u64) -> std::io::Result<()> {
    // SAFETY: an all-zero statvfs is a valid value for fstatvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs on a descriptor this process holds, filling `st`.
    check(unsafe { libc::fstatvfs(fd, &mut st) })?;
    if st.f_blocks == 0 {
        // A filesystem that does not count its space (some FUSE ones): nothing to go by.
        return Ok(());
    }
    // The fields are u32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    if size > free {
        let mib = |b: u64| b as f64 / 1048576.0;
        let msg = if size <= 1 {
            "no space is left for ordinary users on this filesystem".to_string()
        } else {
            format!("{:.1} MiB do not fit in the {:.1} MiB left for ordinary users", mib(size), mib(free))
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("{msg} (berth does not use the blocks reserved for root)"),
        ));
    }
    Ok(())
}

/// Set the xattrs of an open file or directory.
fn set_xattrs(fd: std::os::fd::RawFd, meta: &Meta) -> std::io::Result<()> {
    for (k, v) in &meta.xattrs {
        let k = cstr(k)?;
        // SAFETY: fsetxattr on a descriptor this process holds, with a NUL-terminated name and
        // a buffer of the given length.
        check(unsafe { libc::fsetxattr(fd, k.as_ptr(), v.as_ptr().cast(), v.len(), 0) })?;
    }
    Ok(())
}

impl DirWriter {
    fn open(dir: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)?;
        Ok(DirWriter { root: f.into(), cached: None })
    }

    /// The descriptor of the directory `path` ("" is the root), opened one component at a time.
    fn dir(&mut self, path: &str) -> std::io::Result<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        if path.is_empty() {
            return Ok(self.root.as_raw_fd());
        }
        if let Some((p, fd)) = &self.cached {
            if p == path {
                return Ok(fd.as_raw_fd());
            }
        }
        // From the last directory when `path` is below it, else from the root.
        let (mut fd, rest) = match self.cached.take() {
            Some((p, fd))
                if path.len() > p.len() && path.starts_with(&p) && path.as_bytes()[p.len()] == b'/' =>
            {
                (Some(fd), &path[p.len() + 1..])
            }
            _ => (None, path),
        };
        for c in rest.split('/') {
            let base = fd.as_ref().map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
            fd = Some(open_dir_at(base, c)?);
        }
        let fd = fd.expect("a path has a component");
        let raw = fd.as_raw_fd();
        self.cached = Some((path.to_string(), fd));
        Ok(raw)
    }

    fn mkdir(&mut self, p: &str, meta: &Meta) -> std::io::Result<()> {
        let (parent, name) = split(p);
        let dir = self.dir(parent)?;
        let c = cstr(name)?;
        // SAFETY: mkdirat/fchownat with a held descriptor and a NUL-terminated name; the new
        // directory's owner is set without following a link.
        unsafe {
            check(libc::mkdirat(dir, c.as_ptr(), 0o700))?;
            check(libc::fchownat(dir, c.as_ptr(), id(meta.uid), id(meta.gid), libc::AT_SYMLINK_NOFOLLOW))
        }
    }

    fn file(&mut self, p: &str, meta: &Meta, size: u64, data: &mut dyn Read) -> std::io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let (parent, name) = split(p);
        let dir = self.dir(parent)?;
        ensure_room(dir, size)?;
        let c = cstr(name)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat with a held descriptor and a NUL-terminated name; checked below.
        let fd = unsafe { libc::openat(dir, c.as_ptr(), flags, 0o600 as libc::c_uint) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let n = std::io::copy(&mut data.take(size), &mut f)?;
        if n != size {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the content ends early"));
        }
        let fd = f.as_raw_fd();
        // SAFETY: fchown/fchmod/futimens on the file just made. The owner first: chown clears
        // setuid bits and file capabilities, which the mode and the xattrs then set.
        unsafe {
            check(libc::fchown(fd, id(meta.uid), id(meta.gid)))?;
            check(libc::fchmod(fd, meta.mode & 0o7777))?;
        }
        set_xattrs(fd, meta)?;
        let t = times(meta);
        // SAFETY: as above; `t` holds two timespecs.
        check(unsafe { libc::futimens(fd, t.as_ptr()) })
    }

    fn hardlink(&mut self, target: &str, p: &str) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (tparent, tname) = split(target);
        let tdir = match tparent {
            "" => None,
            tp => {
                let mut fd: Option<std::os::fd::OwnedFd> = None;
                for c in tp.split('/') {
                    let base = fd.as_ref().map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
                    fd = Some(open_dir_at(base, c)?);
                }
                fd
            }
        };
        let tdir_raw = tdir.as_ref().map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
        let (parent, name) = split(p);
        let dir = self.dir(parent)?;
        let (tc, c) = (cstr(tname)?, cstr(name)?);
        // SAFETY: linkat with held descriptors and NUL-terminated names; flags 0 never follows
        // a link at the target.
        check(unsafe { libc::linkat(tdir_raw, tc.as_ptr(), dir, c.as_ptr(), 0) })
    }

    fn symlink(&mut self, p: &str, target: &str, meta: &Meta) -> std::io::Result<()> {
        let (parent, name) = split(p);
        let dir = self.dir(parent)?;
        let (c, t) = (cstr(name)?, cstr(target)?);
        let ts = times(meta);
        // SAFETY: *at calls with a held descriptor and NUL-terminated strings; owner and times
        // are set on the link itself (AT_SYMLINK_NOFOLLOW).
        unsafe {
            check(libc::symlinkat(t.as_ptr(), dir, c.as_ptr()))?;
            check(libc::fchownat(dir, c.as_ptr(), id(meta.uid), id(meta.gid), libc::AT_SYMLINK_NOFOLLOW))?;
            check(libc::utimensat(dir, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW))
        }
    }

    fn node(&mut self, p: &str, meta: &Meta, kind: libc::mode_t, dev: libc::dev_t) -> std::io::Result<()> {
        let (parent, name) = split(p);
        let dir = self.dir(parent)?;
        let c = cstr(name)?;
        let ts = times(meta);
        // SAFETY: *at calls with a held descriptor and a NUL-terminated name. The node was just
        // made by this process in a directory only it writes, so fchmodat (which has no
        // no-follow mode for this) meets that node.
        unsafe {
            check(libc::mknodat(dir, c.as_ptr(), kind | 0o600, dev))?;
            check(libc::fchownat(dir, c.as_ptr(), id(meta.uid), id(meta.gid), libc::AT_SYMLINK_NOFOLLOW))?;
            check(libc::fchmodat(dir, c.as_ptr(), meta.mode & 0o7777, 0))?;
            check(libc::utimensat(dir, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW))
        }
    }

    /// A directory's mode, xattrs and times (`None`: the root, whose owner is set too).
    fn finish_dir(&mut self, p: Option<&str>, meta: &Meta) -> std::io::Result<()> {
        let fd = self.dir(p.unwrap_or(""))?;
        let t = times(meta);
        // SAFETY: fchown/fchmod/futimens on a held directory descriptor; `t` holds two timespecs.
        unsafe {
            if p.is_none() {
                check(libc::fchown(fd, id(meta.uid), id(meta.gid)))?;
            }
            check(libc::fchmod(fd, meta.mode & 0o7777))?;
        }
        set_xattrs(fd, meta)?;
        // SAFETY: as above.
        check(unsafe { libc::futimens(fd, t.as_ptr()) })
    }
}

impl<W: Write> Out<W> {
    fn entry_dev(
        &mut self,
        path: &str,
        meta: &Meta,
        et: EntryType,
        major: u32,
        minor: u32,
    ) -> std::io::Result<()> {
        // Devices are rare (and inert under nodev): short names only, written directly.
        let mut h = Header::new_ustar();
        h.set_entry_type(et);
        h.set_path(path)?;
        h.set_mode(meta.mode);
        h.set_uid(meta.uid.min(0o7777777));
        h.set_gid(meta.gid.min(0o7777777));
        h.set_mtime(meta.mtime.min(0o77777777777));
        h.set_size(0);
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        h.set_cksum();
        self.w.write_all(h.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testimg::{layer, pad, pax, raw_header as header, Ent};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    /// A `docker save` archive holding `layers`, written to `dir/image.tar`.
    fn docker_archive(dir: &Path, layers: &[Vec<u8>]) -> PathBuf {
        let mut b = tar::Builder::new(vec![]);
        let mut add = |name: &str, data: &[u8]| {
            let mut h = Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(EntryType::Regular);
            b.append_data(&mut h, name, data).unwrap();
        };
        let names: Vec<String> = (0..layers.len()).map(|i| format!("l{i}/layer.tar")).collect();
        for (n, l) in names.iter().zip(layers) {
            add(n, l);
        }
        add("config.json", br#"{"config":{}}"#);
        let manifest = serde_json::json!([{"Config": "config.json", "Layers": names}]);
        add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        let p = dir.join("image.tar");
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        p
    }

    fn merge_archive(p: &Path) -> Result<Tree> {
        let store = Store::open_tar(p)?;
        let r = crate::image::resolve_docker_archive(&store, "test")?;
        merge(&store, &r.layers, || {})
    }

    fn merge_err(layers: &[Vec<u8>]) -> String {
        let t = tempfile::tempdir().unwrap();
        match merge_archive(&docker_archive(t.path(), layers)) {
            Ok(_) => panic!("merged"),
            Err(e) => e.to_string(),
        }
    }

    fn gzip(raw: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        gz.write_all(raw).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn extension_headers_over_their_limits_fail_at_once() {
        // A 3 GiB GNU long name, long link or pax header. The tar reader would read each whole
        // into memory (gzip makes that a small file); here only its header and 1 MiB follow, so
        // nothing but the header's size can give the error.
        for (kind, name) in [(b'L', "GNU long-name"), (b'K', "GNU long-link"), (b'x', "pax"), (b'g', "pax")] {
            let mut raw = header(kind, "././@LongLink", 3 << 30);
            raw.resize(raw.len() + (1 << 20), b'a');
            let started = Instant::now();
            let e = merge_err(&[gzip(&raw)]);
            assert!(e.contains(&format!("a {name} header of 3221225472 bytes is over berth's limit")), "{e}");
            assert!(e.contains("malformed or hostile"), "{e}");
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        // The guard follows a pax `size` that overrides the header's: the bomb after such an
        // entry is still seen.
        let mut raw = pax(&[("size", b"1000")]);
        raw.extend(header(b'0', "f", 0));
        raw.resize(raw.len() + 1024, b'z');
        raw.extend(header(b'L', "././@LongLink", 3 << 30));
        raw.resize(raw.len() + 4096, b'a');
        let e = merge_err(&[raw]);
        assert!(e.contains("GNU long-name header of 3221225472 bytes"), "{e}");
        // Under the limits, long names and pax records are read as before.
        let long = format!("d/{}", "n".repeat(200));
        let t = tempfile::tempdir().unwrap();
        let l = layer(&[Ent::File(&long, b"x", 0o644, 0, 0)], true);
        let mut raw = pax(&[("path", b"p/x"), ("SCHILY.xattr.user.k", b"v")]);
        raw.extend(header(b'0', "ignored", 1));
        raw.extend(b"y");
        pad(&mut raw);
        let tree = merge_archive(&docker_archive(t.path(), &[l, raw])).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(tree.nodes[&long].kind, Kind::File(_, 1)));
        assert_eq!(tree.nodes["p/x"].meta.xattrs, vec![("user.k".to_string(), b"v".to_vec())]);
    }

    #[test]
    fn paths_over_the_limits_are_refused_quickly() {
        // A 100 KB path (in a pax record, which is under its own limit), a 256-byte name and
        // 1025 directories.
        let deep = "a/".repeat(50_000);
        let started = Instant::now();
        let mut raw = pax(&[("path", deep.as_bytes())]);
        raw.extend(header(b'0', "x", 0));
        let e = merge_err(&[gzip(&raw)]);
        assert!(e.contains("has a path longer than berth's limit of 4096 bytes"), "{e}");
        assert!(e.contains("(100000 bytes)") && e.len() < 400, "shown shortened: {e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let name = format!("d/{}", "n".repeat(256));
        let e = merge_err(&[layer(&[Ent::File(&name, b"x", 0o644, 0, 0)], false)]);
        assert!(e.contains("has a name longer than berth's limit of 255 bytes"), "{e}");
        let e = merge_err(&[layer(&[Ent::File(&"d/".repeat(1025), b"x", 0o644, 0, 0)], false)]);
        assert!(e.contains("deeper than berth's limit of 1024 directories"), "{e}");
        // 1024 directories and a 255-byte name are fine.
        let ok = format!("{}{}", "d/".repeat(1023), "n".repeat(255));
        let t = tempfile::tempdir().unwrap();
        let l = layer(&[Ent::File(&ok, b"x", 0o644, 0, 0)], false);
        let tree = merge_archive(&docker_archive(t.path(), &[l])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tree.nodes.len(), 1024);
    }

    #[test]
    fn whiteouts_make_no_directories() {
        // What `umoci repack` writes when a directory became a file: `d` (file), then
        // `d/.wh.inner`. The file stays a file with its content; a whiteout under a missing
        // directory makes nothing.
        let t = tempfile::tempdir().unwrap();
        let l1 = layer(&[Ent::Dir("d", 0o755, 0, 0), Ent::File("d/inner", b"old", 0o644, 0, 0)], false);
        let l2 = layer(
            &[
                Ent::File("d", b"now a file", 0o640, 0, 0),
                Ent::File("d/.wh.inner", b"", 0o644, 0, 0),
                Ent::File("q/r/.wh.x", b"", 0o644, 0, 0),
                Ent::File("s/.wh..wh..opq", b"", 0o644, 0, 0),
            ],
            false,
        );
        let tree = merge_archive(&docker_archive(t.path(), &[l1, l2])).unwrap_or_else(|e| panic!("{e}"));
        let paths: Vec<&str> = tree.nodes.keys().map(String::as_str).collect();
        assert_eq!(paths, ["d"], "{paths:?}");
        assert!(matches!(tree.nodes["d"].kind, Kind::File(_, 10)));
        assert_eq!(tree.nodes["d"].meta.mode, 0o640);
    }

    /// The merged tree of `layers` as `berth pull` writes it: "path type content-or-target".
    fn final_tree(layers: &[Vec<u8>]) -> Vec<String> {
        let t = tempfile::tempdir().unwrap();
        let p = docker_archive(t.path(), layers);
        let store = Store::open_tar(&p).unwrap();
        let r = crate::image::resolve_docker_archive(&store, "test").unwrap();
        let tree = merge(&store, &r.layers, || {}).unwrap_or_else(|e| panic!("{e}"));
        let bytes = write_tar(&store, &r.layers, &tree, vec![], || {}).unwrap();
        let mut out = vec![];
        for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let path = String::from_utf8_lossy(&e.path_bytes()).trim_end_matches('/').to_string();
            let what = match e.header().entry_type() {
                EntryType::Directory => "dir".to_string(),
                EntryType::Symlink => format!("-> {}", e.link_name().unwrap().unwrap().display()),
                EntryType::Link => format!("link {}", e.link_name().unwrap().unwrap().display()),
                _ => {
                    let mut s = String::new();
                    e.read_to_string(&mut s).unwrap();
                    format!("file {s}")
                }
            };
            out.push(format!("{path} {what}"));
        }
        out.sort();
        out
    }

    /// The OCI image-spec's layer rules, case by case: whiteouts hide only what lower layers
    /// have (and only below a directory), opaque markers hide a directory's lower content but
    /// not the layer's own, entries replace what is at their path whatever its type, a
    /// directory entry over a directory keeps its content, hardlinks keep their content.
    type Case = (&'static str, Vec<Vec<Ent<'static>>>, &'static [&'static str]);

    /// Layer stacks for the OCI image-spec's rules, with the tree each must give.
    fn rule_cases() -> Vec<Case> {
        use Ent::*;
        vec![
            (
                "whiteout a file",
                vec![vec![File("a", b"1", 0o644, 0, 0)], vec![File(".wh.a", b"", 0o644, 0, 0)]],
                &[],
            ),
            (
                "whiteout a directory and its content",
                vec![
                    vec![Dir("d", 0o755, 0, 0), File("d/x", b"1", 0o644, 0, 0)],
                    vec![File(".wh.d", b"", 0o644, 0, 0)],
                ],
                &[],
            ),
            (
                "a whiteout leaves its own layer's entry",
                vec![
                    vec![File("a", b"1", 0o644, 0, 0)],
                    vec![File("a", b"2", 0o644, 0, 0), File(".wh.a", b"", 0o644, 0, 0)],
                ],
                &["a file 2"],
            ),
            (
                "opaque: lower content hidden, the layer's own kept",
                vec![
                    vec![Dir("d", 0o755, 0, 0), File("d/old", b"1", 0o644, 0, 0)],
                    vec![
                        Dir("d", 0o700, 0, 0),
                        File("d/new", b"2", 0o644, 0, 0),
                        File("d/.wh..wh..opq", b"", 0o644, 0, 0),
                    ],
                ],
                &["d dir", "d/new file 2"],
            ),
            (
                "a file replaces a directory",
                vec![
                    vec![Dir("d", 0o755, 0, 0), File("d/x", b"1", 0o644, 0, 0)],
                    vec![File("d", b"f", 0o644, 0, 0)],
                ],
                &["d file f"],
            ),
            (
                "a directory replaces a file",
                vec![
                    vec![File("d", b"f", 0o644, 0, 0)],
                    vec![Dir("d", 0o755, 0, 0), File("d/x", b"1", 0o644, 0, 0)],
                ],
                &["d dir", "d/x file 1"],
            ),
            (
                "a directory replaces a file (implicit)",
                vec![vec![File("d", b"f", 0o644, 0, 0)], vec![File("d/x", b"1", 0o644, 0, 0)]],
                &["d dir", "d/x file 1"],
            ),
            (
                "a symlink replaces a directory",
                vec![
                    vec![Dir("d", 0o755, 0, 0), File("d/x", b"1", 0o644, 0, 0)],
                    vec![Symlink("d", "elsewhere")],
                ],
                &["d -> elsewhere"],
            ),
            (
                "a directory entry over a directory keeps its content",
                vec![
                    vec![Dir("d", 0o755, 0, 0), File("d/x", b"1", 0o644, 0, 0)],
                    vec![Dir("d", 0o700, 0, 0)],
                ],
                &["d dir", "d/x file 1"],
            ),
            (
                "a hardlink keeps the content its file had",
                vec![
                    vec![File("a", b"old", 0o644, 0, 0), Hardlink("b", "a"), Hardlink("c", "a")],
                    vec![File("a", b"new", 0o644, 0, 0)],
                ],
                &["a file new", "b file old", "c link b"],
            ),
            (
                "whiteouts under a file or a missing directory change nothing",
                vec![
                    vec![File("f", b"1", 0o644, 0, 0)],
                    vec![File("f/.wh.x", b"", 0o644, 0, 0), File("m/n/.wh.x", b"", 0o644, 0, 0)],
                ],
                &["f file 1"],
            ),
            (
                "a directory that became a file, as umoci writes it",
                vec![
                    vec![Dir("d", 0o755, 0, 0), File("d/inner", b"1", 0o644, 0, 0)],
                    vec![File("d", b"f", 0o644, 0, 0), File("d/.wh.inner", b"", 0o644, 0, 0)],
                ],
                &["d file f"],
            ),
            (
                "owners, modes, setuid, hardlinks to a symlink",
                vec![
                    vec![Dir("srv", 0o750, 1234, 4321), File("srv/data", b"svc", 0o640, 1234, 4321)],
                    vec![
                        File("bin/su", b"su", 0o4755, 0, 0),
                        Symlink("lib", "usr/lib"),
                        Hardlink("lib64", "lib"),
                    ],
                ],
                &[
                    "bin dir",
                    "bin/su file su",
                    "lib -> usr/lib",
                    "lib64 -> usr/lib",
                    "srv dir",
                    "srv/data file svc",
                ],
            ),
        ]
    }

    /// The OCI image-spec's layer rules, case by case: whiteouts hide only what lower layers
    /// have (and only below a directory), opaque markers hide a directory's lower content but
    /// not the layer's own, entries replace what is at their path whatever its type, a
    /// directory entry over a directory keeps its content, hardlinks keep their content.
    #[test]
    fn layer_rules_of_the_oci_image_spec() {
        for (name, layers, want) in rule_cases() {
            let layers: Vec<Vec<u8>> = layers.iter().map(|l| layer(l, false)).collect();
            assert_eq!(final_tree(&layers), want.to_vec(), "{name}");
        }
    }

    /// Every file below `root`: path, type, mode, owner, content or link target, and the link
    /// count of regular files.
    fn walk(root: &Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = vec![];
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let (kind, body) = if m.file_type().is_symlink() {
                    ("l", std::fs::read_link(&p).unwrap().display().to_string())
                } else if m.is_dir() {
                    todo.push(p.clone());
                    ("d", String::new())
                } else {
                    ("f", String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned())
                };
                // Regular files only: berth makes a hardlink to a symlink a second symlink
                // with the same target (umoci links the symlink itself).
                let nlink = if m.is_file() { m.nlink() } else { 0 };
                let mode = if kind == "l" { 0 } else { m.mode() & 0o7777 };
                out.push(format!("{rel} {kind} {mode:o} {}:{} {body:?} {nlink}", m.uid(), m.gid()));
            }
        }
        out.sort();
        out
    }

    /// The same layouts unpacked by `umoci unpack` (as root) and created by [`write_dir`] give
    /// the same tree: type, mode, owner, content, link target and link count.
    #[test]
    fn write_dir_agrees_with_umoci_unpack() {
        let have_umoci =
            std::process::Command::new("umoci").arg("--version").output().is_ok_and(|o| o.status.success());
        if !nix::unistd::geteuid().is_root() || !have_umoci {
            eprintln!("SKIP: needs root and umoci");
            return;
        }
        // umoci refuses a layer whose entry's missing parent is a lower file.
        for (name, layers, _) in rule_cases().into_iter().filter(|c| !c.0.ends_with("(implicit)")) {
            let t = tempfile::tempdir().unwrap();
            let layout = t.path().join("layout");
            let layers: Vec<Vec<u8>> = layers.iter().map(|l| layer(l, true)).collect();
            let m = crate::testimg::image(&layout, &serde_json::json!({"config": {}}), &layers, "amd64");
            crate::testimg::finish(&layout, vec![m], "v1");
            let bundle = t.path().join("bundle");
            let o = std::process::Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:v1", layout.display()))
                .arg(&bundle)
                .output()
                .unwrap();
            assert!(o.status.success(), "{name}: umoci: {}", String::from_utf8_lossy(&o.stderr));
            let store = Store::Dir(layout.clone());
            let r = crate::image::resolve_oci(&store, Some("v1"), &crate::Platform::host(), "test").unwrap();
            let tree = merge(&store, &r.layers, || {}).unwrap_or_else(|e| panic!("{name}: {e}"));
            let ours = t.path().join("ours");
            std::fs::create_dir(&ours).unwrap();
            write_dir(&store, &r.layers, &tree, &ours, || {}).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(walk(&ours), walk(&bundle.join("rootfs")), "{name}");
        }
    }

    #[test]
    fn a_link_chain_across_layers_is_refused() {
        // Layer 1 `y -> /target`, layer 2 `x -> y`, layer 3 `x/file`: `x` is a symlink.
        let l1 = layer(&[Ent::Symlink("y", "/target")], false);
        let l2 = layer(&[Ent::Symlink("x", "y")], false);
        let l3 = layer(&[Ent::File("x/file", b"owned", 0o644, 0, 0)], false);
        let e = merge_err(&[l1, l2, l3]);
        assert!(e.contains("\"x\" is a symlink that a later entry writes through"), "{e}");
    }

    #[test]
    fn write_dir_creates_the_tree_and_never_follows_a_link() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: write_dir sets owners, which needs root");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let l1 = layer(
            &[
                Ent::Dir("srv", 0o750, 1234, 4321),
                Ent::File("srv/data", b"svc", 0o640, 1234, 4321),
                Ent::File("bin/su", b"su", 0o4755, 0, 0),
                Ent::Symlink("etc", "/etc"),
                Ent::File("gone", b"x", 0o644, 0, 0),
                Ent::File("big", b"orig", 0o644, 0, 0),
                Ent::Hardlink("biglink", "big"),
            ],
            true,
        );
        let l2 = layer(
            &[
                Ent::File(".wh.gone", b"", 0o644, 0, 0),
                Ent::File("big", b"new", 0o644, 0, 0),
                Ent::Hardlink("srv/data2", "srv/data"),
                Ent::File("odd\nname\\x", b"odd", 0o644, 0, 0),
            ],
            false,
        );
        let archive = docker_archive(t.path(), &[l1, l2]);
        let store = Store::open_tar(&archive).unwrap();
        let r = crate::image::resolve_docker_archive(&store, "test").unwrap();
        let tree = merge(&store, &r.layers, || {}).unwrap_or_else(|e| panic!("{e}"));
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        write_dir(&store, &r.layers, &tree, &root, || {}).unwrap_or_else(|e| panic!("{e}"));
        let m = std::fs::metadata(root.join("srv/data")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 4321, 0o640));
        assert_eq!(std::fs::metadata(root.join("srv")).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(std::fs::metadata(root.join("bin/su")).unwrap().mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(std::fs::metadata(root.join("srv/data2")).unwrap().ino(), m.ino(), "a hardlink");
        assert_eq!(std::fs::read_link(root.join("etc")).unwrap(), Path::new("/etc"));
        assert!(!root.join("gone").exists());
        assert_eq!(std::fs::read(root.join("big")).unwrap(), b"new");
        assert_eq!(std::fs::read(root.join("biglink")).unwrap(), b"orig");
        assert_eq!(std::fs::read(root.join("odd\nname\\x")).unwrap(), b"odd");
        // A second write meets what is there and stops: nothing is written through `etc`.
        let again = write_dir(&store, &r.layers, &tree, &root, || {});
        assert!(again.is_err());
        // A tree with a path below a symlink (as no merge makes it) fails at that path.
        let mut bad = Tree::default();
        let meta = Meta { mode: 0o644, uid: 0, gid: 0, mtime: 0, xattrs: vec![] };
        bad.nodes
            .insert("etc".into(), Node { layer: 0, kind: Kind::Symlink("/etc".into()), meta: meta.clone() });
        bad.nodes.insert("etc/berth-test".into(), Node { layer: 0, kind: Kind::Data(b"x".to_vec()), meta });
        let root2 = t.path().join("root2");
        std::fs::create_dir(&root2).unwrap();
        let e = write_dir(&store, &r.layers, &bad, &root2, || {}).unwrap_err().to_string();
        assert!(e.contains("etc/berth-test"), "{e}");
        assert!(!Path::new("/etc/berth-test").exists());
    }
}
