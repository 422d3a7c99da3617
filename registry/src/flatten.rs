//! Layers to one tree, without unpacking: pass 1 reads every layer's headers in order and keeps
//! the final tree (OCI whiteouts, opaque directories, replacements, hardlinks) in memory; pass 2
//! writes one tar stream (directories, then file contents read again from the layers, then
//! links, devices and berth's metadata) that `mksquashfs -tar` turns into the image. Owners,
//! modes (setuid included) and xattrs come from the layers' headers, so no root is needed.
//! Entries that would land outside the root (`..`, or below a symlink) are refused.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::error::{Error, Result};
use crate::image::{Layer, Store};

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
}

/// Open a layer's tar stream (gzip, zstd or plain, recognised by content).
fn open_layer<'a>(store: &Store, layer: &Layer, what: &str) -> Result<tar::Archive<Box<dyn Read + 'a>>> {
    let raw = store.open(&layer.key)?;
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
    Ok(tar::Archive::new(r))
}

fn layer_what(layer: &Layer, i: usize) -> String {
    format!("layer {} ({})", i + 1, layer.digest.as_deref().unwrap_or(&layer.key))
}

/// Split a tar path into clean components; `..` is refused.
fn components(raw: &[u8], what: &str) -> Result<Vec<String>> {
    let s = String::from_utf8_lossy(raw);
    let mut v = vec![];
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::new(
                    what,
                    format!("entry {s:?} would write outside the image root"),
                    "the image is malformed or hostile; nothing was written",
                ))
            }
            c => v.push(c.to_string()),
        }
    }
    Ok(v)
}

fn refuse(what: &str, path: &str, why: &str) -> Error {
    Error::new(
        what,
        format!("entry {path:?} {why}"),
        "the image is malformed or hostile; nothing was written",
    )
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

    /// Check (and make) the parents of `comps`: a symlink among them is refused.
    fn parents(&mut self, comps: &[String], layer: u32, what: &str) -> Result<()> {
        let mut p = String::new();
        for c in comps {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(c);
            match self.nodes.get(&p).map(|n| &n.kind) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink(_)) => {
                    return Err(refuse(what, &p, "is a symlink that a later entry writes through"))
                }
                _ => {
                    // Implicit directory (a layer without the directory's own entry), or a
                    // lower file replaced by a directory.
                    self.remove_subtree(&p, None, true);
                    let meta = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: vec![] };
                    self.nodes.insert(p.clone(), Node { layer, kind: Kind::Dir, meta });
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, layer: u32, idx: u32, entry: &mut tar::Entry<'_, impl Read>, what: &str) -> Result<()> {
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
        self.parents(parent, layer, what)?;
        let ppath = parent.join("/");
        let join = |n: &str| if ppath.is_empty() { n.to_string() } else { format!("{ppath}/{n}") };
        if name == ".wh..wh..opq" {
            if ppath.is_empty() {
                self.nodes.retain(|_, n| n.layer >= layer);
            } else {
                self.remove_subtree(&ppath, Some(layer), false);
            }
            return Ok(());
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            self.remove_subtree(&join(target), Some(layer), true);
            return Ok(());
        }
        let path = join(name);
        let mut meta = meta_of(&h, xattrs);
        let kind = match et {
            EntryType::Directory => {
                if let Some(n) = self.nodes.get_mut(&path).filter(|n| matches!(n.kind, Kind::Dir)) {
                    n.meta = meta;
                    n.layer = layer;
                    return Ok(());
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
                            &format!("is a hardlink to {target:?}, which is not a file in the image"),
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
        for (j, e) in ar.entries().map_err(|e| Error::new(&what, e.to_string(), ""))?.enumerate() {
            let mut e =
                e.map_err(|e| Error::new(&what, format!("corrupt tar: {e}"), "the layer is damaged"))?;
            tree.add(i as u32, j as u32, &mut e, &what)?;
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

/// Pass 2: write the tree as one tar stream to `w`.
pub fn write_tar<W: Write>(
    store: &Store,
    layers: &[Layer],
    tree: &Tree,
    w: W,
    mut progress: impl FnMut(),
) -> Result<W> {
    let io = |e: std::io::Error| Error::new("writing the image", e.to_string(), "");
    // Content sources: the winning path of each regular file, and hardlinks whose file was
    // replaced later (they get the content themselves, further links point at them).
    let mut primary: HashMap<Key, String> = HashMap::new();
    for (p, n) in &tree.nodes {
        if let Kind::File(k, _) = n.kind {
            primary.insert(k, p.clone());
        }
    }
    let mut materialize: HashMap<Key, (String, Meta)> = HashMap::new();
    for (p, n) in &tree.nodes {
        if let Kind::Hardlink(k) = n.kind {
            if let std::collections::hash_map::Entry::Vacant(v) = primary.entry(k) {
                v.insert(p.clone());
                materialize.insert(k, (p.clone(), n.meta.clone()));
            }
        }
    }
    let mut out = Out { w };
    for (p, n) in &tree.nodes {
        if let Kind::Dir = n.kind {
            out.entry(p, &n.meta, EntryType::Directory, None, 0, &mut std::io::empty()).map_err(io)?;
        }
    }
    let by_key: HashMap<Key, (&String, &Node)> = tree
        .nodes
        .iter()
        .filter_map(|(p, n)| if let Kind::File(k, _) = n.kind { Some((k, (p, n))) } else { None })
        .collect();
    for (i, layer) in layers.iter().enumerate() {
        let what = layer_what(layer, i);
        let li = i as u32;
        let wanted = by_key.keys().chain(materialize.keys()).any(|k| k.0 == li);
        if wanted {
            let mut ar = open_layer(store, layer, &what)?;
            for (j, e) in ar.entries().map_err(|e| Error::new(&what, e.to_string(), ""))?.enumerate() {
                let mut e = e.map_err(|e| Error::new(&what, format!("corrupt tar: {e}"), ""))?;
                let k = (li, j as u32);
                if let Some((p, n)) = by_key.get(&k) {
                    let size = e.size();
                    out.entry(p, &n.meta, EntryType::Regular, None, size, &mut e).map_err(io)?;
                } else if let Some((p, meta)) = materialize.get(&k) {
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
                let target = &primary[k];
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
