//! Bootstrap agents: each fills an empty directory with the image's starting root filesystem.
//!
//! | agent          | source                                                              |
//! |----------------|---------------------------------------------------------------------|
//! | debootstrap    | a Debian suite from a mirror, cached as a tarball per (suite, mirror, includes, arch) |
//! | localimage     | a berth/SIF/SquashFS image (unsquashfs at the root fs offset) or a directory |
//! | docker-archive | a `docker save` tarball: manifest.json, layers applied in order      |
//! | oci-archive    | an OCI image layout (tar or directory): index.json -> manifest -> layers |
//! | docker         | a registry image, fetched and merged by `berth pull`'s code (berth-registry) |
//! | scratch        | nothing                                                             |
//!
//! Layers honour whiteouts: `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` empties
//! its directory of lower-layer content, before the layer's own files are extracted.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::def::{Bootstrap, Definition};
use crate::fsutil::{resolve_in_root, write_in_root};
use crate::runner::{self, run_checked, Log};
use berth_runtime::error::{Error, Result};
use berth_runtime::image::{self, FsType, RootFs};

/// Where cached debootstrap bases live unless the caller chooses another place.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/berth/bootstrap";

/// What a bootstrap needs besides the definition.
pub struct Context<'a> {
    /// Empty directory to fill.
    pub rootfs: &'a Path,
    /// Private scratch space (archives are unpacked here), removed with the build.
    pub scratch: &'a Path,
    pub log: &'a Log,
    /// Cache for debootstrap bases; `None` disables caching.
    pub cache_dir: Option<&'a Path>,
    /// Time limit for one debootstrap run.
    pub debootstrap_timeout: Duration,
    /// Plain HTTP to the registry of `Bootstrap: docker` (`--nohttps`).
    pub nohttps: bool,
}

/// Fill `ctx.rootfs` according to the definition's `Bootstrap:` header.
pub fn bootstrap(def: &Definition, ctx: &Context) -> Result<()> {
    match &def.bootstrap {
        Bootstrap::Scratch => Ok(()),
        Bootstrap::Debootstrap { suite, mirror, include } => debootstrap(suite, mirror, include, ctx),
        Bootstrap::LocalImage { from } => local_image(&resolve_source(from, def)?, ctx),
        Bootstrap::DockerArchive { from } => docker_archive(&resolve_source(from, def)?, ctx),
        Bootstrap::OciArchive { from } => oci_archive(&resolve_source(from, def)?, ctx),
        Bootstrap::Docker { from } => docker(from, ctx),
    }
}

/// A host path from the definition: absolute, or relative to the current directory (as
/// Apptainer does), falling back to the definition file's directory so recipes kept next to
/// their inputs build from anywhere.
pub fn resolve_source(path: &str, def: &Definition) -> Result<PathBuf> {
    let p = Path::new(path);
    if p.is_absolute() {
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        return Err(missing_source(path, def, &[p.to_path_buf()]));
    }
    let cwd = std::env::current_dir().unwrap_or_default().join(p);
    let beside_def = def.path.parent().unwrap_or(Path::new(".")).join(p);
    for candidate in [&cwd, &beside_def] {
        if candidate.exists() {
            return Ok(candidate.clone());
        }
    }
    Err(missing_source(path, def, &[cwd, beside_def]))
}

fn missing_source(path: &str, def: &Definition, tried: &[PathBuf]) -> Error {
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Error::build(
        format!("{}: source {path}", def.path.display()),
        format!("does not exist (looked at {})", tried.join(" and ")),
        "relative paths are taken from the current directory, then from the definition file's directory",
    )
}

// ---------------------------------------------------------------------------------------------
// debootstrap

/// Stable 64-bit FNV-1a, for cache keys that must not change between berth versions (std's
/// hasher is randomly seeded per process).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The cache file for one debootstrap base.
pub fn cache_file(cache_dir: &Path, suite: &str, mirror: &str, include: &[String]) -> PathBuf {
    let mut sorted: Vec<&str> = include.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let key = format!("{suite}\n{mirror}\n{}\n{}", sorted.join(","), std::env::consts::ARCH);
    let safe_suite: String = suite.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    cache_dir.join(format!(
        "debootstrap-{safe_suite}-{}-{:016x}.tar",
        std::env::consts::ARCH,
        fnv1a(key.as_bytes())
    ))
}

fn debootstrap(suite: &str, mirror: &str, include: &[String], ctx: &Context) -> Result<()> {
    let cached = ctx.cache_dir.map(|d| cache_file(d, suite, mirror, include));
    if let Some(cached) = cached.as_ref().filter(|c| c.is_file()) {
        ctx.log.line(&format!("berth: using cached debootstrap base {}", cached.display()));
        eprintln!("  using cached base {}", cached.display());
        let mut tar = Command::new("tar");
        tar.args(["-xpf"])
            .arg(cached)
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
            .arg(ctx.rootfs);
        return run_checked(&mut tar, "unpack cached base", ctx.log, None, true);
    }

    check_mirror(mirror, suite)?;
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase");
    if !include.is_empty() {
        cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd.arg(suite).arg(ctx.rootfs).arg(mirror);
    // A suite newer than this host's debootstrap (no script of its name) still bootstraps with
    // the generic Debian script, which every release since buster uses.
    let scripts = Path::new("/usr/share/debootstrap/scripts");
    if scripts.is_dir() && !scripts.join(suite).exists() && scripts.join("sid").exists() {
        ctx.log.line(&format!("berth: debootstrap has no script for {suite}; using the sid script"));
        cmd.arg(scripts.join("sid"));
    }
    run_checked(&mut cmd, &format!("debootstrap {suite}"), ctx.log, Some(ctx.debootstrap_timeout), true).map_err(|e| match e {
        Error::Build { what, reason, .. } if reason.starts_with("gave up") => Error::build(
            what,
            reason,
            format!("the mirror {mirror} is too slow or stalled; try again, pick a closer MirrorURL, or raise BERTH_DEBOOTSTRAP_TIMEOUT (seconds)"),
        ),
        other => other,
    })?;
    // debootstrap leaves its package cache; it only makes images bigger.
    let _ = clear_dir(&ctx.rootfs.join("var/cache/apt/archives"), &["lock", "partial"]);

    if let Some(cached) = cached {
        if let Err(e) = store_in_cache(ctx, &cached) {
            // A cache that cannot be written only makes the next build slower.
            ctx.log.line(&format!("berth: warning: could not cache the base in {}: {e}", cached.display()));
            eprintln!("  warning: could not cache the debootstrap base: {e}");
        }
    }
    Ok(())
}

fn store_in_cache(ctx: &Context, cached: &Path) -> Result<()> {
    let dir = cached.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| Error::io("create cache directory", dir, e))?;
    // Temp name + rename: a concurrent or interrupted build never sees half a tarball.
    let partial = dir.join(format!(
        ".{}.partial-{}",
        cached.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut tar = Command::new("tar");
    tar.arg("-cpf")
        .arg(&partial)
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(ctx.rootfs)
        .arg(".");
    let result = run_checked(&mut tar, "cache base", ctx.log, None, false)
        .and_then(|_| fs::rename(&partial, cached).map_err(|e| Error::io("store cached base", cached, e)));
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// Fail fast, with a message, when the mirror cannot be reached or does not serve the suite,
/// instead of letting debootstrap retry for many minutes.
fn check_mirror(mirror: &str, suite: &str) -> Result<()> {
    let what = format!("mirror {mirror}");
    if let Some(path) = mirror.strip_prefix("file://").or_else(|| mirror.strip_prefix("file:")) {
        let release = Path::new(path).join("dists").join(suite).join("Release");
        if !release.is_file() {
            return Err(Error::build(
                what,
                format!("{} does not exist", release.display()),
                "check MirrorURL and OSVersion",
            ));
        }
        return Ok(());
    }
    let (https, rest) = match (mirror.strip_prefix("http://"), mirror.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(Error::build(what, "not an http://, https:// or file: URL", "fix MirrorURL")),
    };
    let (hostport, path) =
        rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, String::new()));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse::<u16>().unwrap_or(80)),
        _ => (hostport.to_string(), if https { 443 } else { 80 }),
    };
    let timeout = Duration::from_secs(15);
    let unreachable = |reason: String| {
        Error::build(
            format!("mirror {mirror}"),
            reason,
            "check the network and MirrorURL (a proxy may be needed: set http_proxy); nothing was built",
        )
    };
    // Name resolution has no timeout of its own: do it on a thread and stop waiting after `timeout`.
    let (tx, rx) = std::sync::mpsc::channel();
    let target = format!("{host}:{port}");
    std::thread::spawn(move || {
        let _ = tx.send(target.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
    });
    let addrs = match rx.recv_timeout(timeout) {
        Ok(Ok(a)) if !a.is_empty() => a,
        Ok(Ok(_)) => return Err(unreachable(format!("{host} has no address"))),
        Ok(Err(e)) => return Err(unreachable(format!("cannot resolve {host}: {e}"))),
        Err(_) => return Err(unreachable(format!("resolving {host} took more than {}s", timeout.as_secs()))),
    };
    let mut stream = None;
    let mut last_error = String::new();
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
        }
    }
    let Some(mut stream) = stream else {
        return Err(unreachable(last_error));
    };
    if https {
        // No TLS client here: a TCP connection is as far as the quick check goes.
        return Ok(());
    }
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!(
        "HEAD {path}/dists/{suite}/Release HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| unreachable(format!("sending a request failed: {e}")))?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .map_err(|e| unreachable(format!("no answer within {}s: {e}", timeout.as_secs())))?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    match status {
        "404" => Err(Error::build(
            format!("mirror {mirror}"),
            format!("does not serve the suite {suite:?} (dists/{suite}/Release: 404)"),
            "check OSVersion: a Debian suite such as bookworm, trixie, or stable",
        )),
        "" => Err(unreachable("sent no HTTP answer".into())),
        // Anything else means a web server answered; debootstrap reports finer problems itself.
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// docker

/// A registry image as the build root: located, fetched (digests checked) and merged exactly as
/// `berth pull` does, then unpacked with the image's owners. Its config's Env, WorkingDir,
/// Entrypoint/Cmd and labels land in `/.singularity.d`, where the definition's own sections
/// override them later. Blobs are cached under the bootstrap cache, else in the scratch space.
fn docker(from: &str, ctx: &Context) -> Result<()> {
    let err =
        |e: berth_registry::Error| Error::build(format!("Bootstrap: docker: {}", e.what), e.reason, e.hint);
    let r = berth_registry::reference::parse_image_ref(from).map_err(err)?;
    let cache_root = match ctx.cache_dir {
        Some(d) => d.join("registry"),
        None => ctx.scratch.join("registry"),
    };
    let opts = berth_registry::Options {
        insecure: ctx.nohttps,
        quiet: !runner::on_terminal(),
        cache: berth_registry::BlobCache::new(cache_root),
        ..berth_registry::Options::default()
    };
    let src = berth_registry::Source::Registry(r);
    ctx.log.line(&format!("berth: pulling {src}"));
    let report = berth_registry::extract(&src, ctx.rootfs, &opts).map_err(err)?;
    let digest = report.digest.unwrap_or_default();
    ctx.log.line(&format!("berth: {src} is {digest}, {} layers", report.layers));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// localimage

fn local_image(from: &Path, ctx: &Context) -> Result<()> {
    let img = image::open(from)?;
    match img.root {
        RootFs::Directory { path } => {
            let mut cp = Command::new("cp");
            cp.arg("-a").arg(format!("{}/.", path.display())).arg(ctx.rootfs);
            run_checked(&mut cp, "copy base directory", ctx.log, None, true)
        }
        RootFs::Embedded { fs: FsType::Squashfs, offset, .. } => {
            let mut unsq = Command::new("unsquashfs");
            unsq.args(["-f", "-n", "-d"]).arg(ctx.rootfs);
            if offset > 0 {
                unsq.arg("-offset").arg(offset.to_string());
            }
            unsq.arg(from);
            run_checked(&mut unsq, "unpack base image", ctx.log, None, true)
        }
        RootFs::Embedded { fs: FsType::Ext3, .. } => Err(Error::build(
            format!("localimage {}", from.display()),
            "ext3-based Singularity 2.x images cannot be used as a base",
            "convert it first (e.g. `apptainer build new.sif old.img`), or use a sandbox directory",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// docker-archive and oci-archive

/// Unpack an archive (tar, possibly compressed; GNU tar detects the compression) into scratch.
fn unpack_archive(archive: &Path, ctx: &Context, name: &str) -> Result<PathBuf> {
    let dir = ctx.scratch.join(name);
    fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(archive).arg("--no-same-owner").arg("-C").arg(&dir);
    run_checked(&mut tar, &format!("unpack {}", archive.display()), ctx.log, None, true)?;
    Ok(dir)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::build(format!("read {}", path.display()), format!("invalid JSON: {e}"), ""))
}

/// A path from an archive's JSON, kept inside the archive directory.
fn archive_member(dir: &Path, member: &str, archive: &Path) -> Result<PathBuf> {
    let rel = Path::new(member);
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(Error::build(
            format!("archive {}", archive.display()),
            format!("refers to {member:?}, outside the archive"),
            "the archive is corrupt or hostile",
        ));
    }
    let path = dir.join(rel);
    if !path.is_file() {
        return Err(Error::build(
            format!("archive {}", archive.display()),
            format!("{member} is missing"),
            "the archive is incomplete",
        ));
    }
    Ok(path)
}

fn docker_archive(from: &Path, ctx: &Context) -> Result<()> {
    let dir = unpack_archive(from, ctx, "docker-archive")?;
    let manifest = dir.join("manifest.json");
    if !manifest.is_file() {
        return Err(Error::build(
            format!("docker-archive {}", from.display()),
            "has no manifest.json: not a `docker save` tarball",
            "make one with `docker save IMAGE -o FILE.tar` (or use oci-archive for an OCI layout)",
        ));
    }
    let manifest = read_json(&manifest)?;
    let entry = manifest.as_array().and_then(|a| a.first()).ok_or_else(|| {
        Error::build(format!("docker-archive {}", from.display()), "manifest.json lists no image", "")
    })?;
    let layers: Vec<String> = entry["Layers"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l.as_str().map(String::from)).collect())
        .unwrap_or_default();
    for (i, layer) in layers.iter().enumerate() {
        let path = archive_member(&dir, layer, from)?;
        apply_layer(&path, ctx, i + 1, layers.len())?;
    }
    if let Some(config) = entry["Config"].as_str() {
        let config = read_json(&archive_member(&dir, config, from)?)?;
        write_container_config(&config["config"], ctx.rootfs)?;
    }
    Ok(())
}

fn oci_blob(dir: &Path, digest: &str, archive: &Path) -> Result<PathBuf> {
    let (alg, hex) = digest.split_once(':').ok_or_else(|| {
        Error::build(format!("oci-archive {}", archive.display()), format!("bad digest {digest:?}"), "")
    })?;
    archive_member(dir, &format!("blobs/{alg}/{hex}"), archive)
}

fn oci_archive(from: &Path, ctx: &Context) -> Result<()> {
    let dir = if from.is_dir() { from.to_path_buf() } else { unpack_archive(from, ctx, "oci-archive")? };
    let index_path = dir.join("index.json");
    if !index_path.is_file() {
        return Err(Error::build(
            format!("oci-archive {}", from.display()),
            "has no index.json: not an OCI image layout",
            "make one with `skopeo copy docker://IMAGE oci-archive:FILE.tar` or `podman save --format oci-archive`",
        ));
    }
    let mut node = read_json(&index_path)?;
    // Follow image indexes down to one image manifest, preferring this machine's platform.
    let mut depth = 0;
    while let Some(manifests) = node["manifests"].as_array() {
        depth += 1;
        if depth > 4 || manifests.is_empty() {
            return Err(Error::build(
                format!("oci-archive {}", from.display()),
                "index.json lists no usable manifest",
                "",
            ));
        }
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let chosen = manifests
            .iter()
            .find(|m| m["platform"]["architecture"].as_str() == Some(arch))
            .unwrap_or(&manifests[0]);
        let digest = chosen["digest"].as_str().unwrap_or_default();
        node = read_json(&oci_blob(&dir, digest, from)?)?;
    }
    let layers = node["layers"].as_array().cloned().unwrap_or_default();
    for (i, layer) in layers.iter().enumerate() {
        let digest = layer["digest"].as_str().unwrap_or_default();
        apply_layer(&oci_blob(&dir, digest, from)?, ctx, i + 1, layers.len())?;
    }
    if let Some(digest) = node["config"]["digest"].as_str() {
        let config = read_json(&oci_blob(&dir, digest, from)?)?;
        write_container_config(&config["config"], ctx.rootfs)?;
    }
    Ok(())
}

/// Apply one layer tarball on top of the root filesystem.
fn apply_layer(layer: &Path, ctx: &Context, number: usize, total: usize) -> Result<()> {
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(layer)
        .output()
        .map_err(|e| Error::build("list layer", format!("cannot run tar: {e}"), "install tar"))?;
    if !listing.status.success() {
        return Err(Error::build(
            format!("layer {}", layer.display()),
            format!("cannot be read: {}", String::from_utf8_lossy(&listing.stderr).trim()),
            "the archive is corrupt, or compressed with a tool that is not installed (zstd?)",
        ));
    }
    let listing = String::from_utf8_lossy(&listing.stdout);
    check_layer_paths(ctx.rootfs, listing.lines(), number)?;
    for entry in listing.lines() {
        apply_whiteout(ctx.rootfs, entry, ctx.log)?;
    }
    let mut tar = Command::new("tar");
    tar.arg("-xpf")
        .arg(layer)
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "--exclude=.wh.*", "-C"])
        .arg(ctx.rootfs);
    run_checked(&mut tar, &format!("layer {number}/{total}"), ctx.log, None, true)
}

/// Refuse a layer that would write through a symlink leading out of the image. tar runs on the
/// host and follows a lower layer's `etc -> /etc` link like any other path, so a hostile image
/// could otherwise write host files during the build. (Within one tar archive, GNU tar already
/// defers such links; across layers it cannot know.)
pub fn check_layer_paths<'a>(
    rootfs: &Path,
    entries: impl Iterator<Item = &'a str>,
    layer_number: usize,
) -> Result<()> {
    let root = rootfs.canonicalize().map_err(|e| Error::io("resolve", rootfs, e))?;
    let mut checked = std::collections::HashSet::new();
    for entry in entries {
        let rel = Path::new(entry.trim_start_matches("./").trim_start_matches('/'));
        let mut prefix = PathBuf::new();
        let components: Vec<_> = rel.components().collect();
        // Every parent of the entry, not the entry itself (tar replaces a link at the entry).
        for component in components.iter().take(components.len().saturating_sub(1)) {
            prefix.push(component);
            if !checked.insert(prefix.clone()) {
                continue;
            }
            let host = root.join(&prefix);
            let Ok(meta) = fs::symlink_metadata(&host) else { break };
            if !meta.file_type().is_symlink() {
                continue;
            }
            let escapes = match host.canonicalize() {
                Ok(target) => !target.starts_with(&root),
                // Dangling: tar would create the missing directories wherever the link points.
                Err(_) => fs::read_link(&host)
                    .map(|t| t.is_absolute() || t.components().any(|c| matches!(c, Component::ParentDir)))
                    .unwrap_or(true),
            };
            if escapes {
                return Err(Error::build(
                    format!("layer {layer_number}"),
                    format!(
                        "writes {entry} through the symlink /{} that leads outside the image",
                        prefix.display()
                    ),
                    "the image is malformed or hostile; nothing outside the build directory was written",
                ));
            }
        }
    }
    Ok(())
}

/// If `entry` (a path in a layer) is a whiteout, delete what it hides from the lower layers.
pub fn apply_whiteout(rootfs: &Path, entry: &str, log: &Log) -> Result<()> {
    let entry = entry.trim_start_matches("./").trim_start_matches('/');
    let path = Path::new(entry);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let Some(hidden) = name.strip_prefix(".wh.") else {
        return Ok(());
    };
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        log.line(&format!("berth: ignoring whiteout outside the image: {entry}"));
        return Ok(());
    }
    let parent =
        resolve_in_root(rootfs, Path::new("/").join(path.parent().unwrap_or(Path::new(""))).as_path())?;
    if hidden == ".wh..opq" {
        // Opaque directory: nothing from lower layers shows through.
        let _ = clear_dir(&parent, &[]);
    } else {
        let target = parent.join(hidden);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {
                let _ = crate::fsutil::remove_work_dir(&target);
            }
            Ok(_) => {
                let _ = fs::remove_file(&target);
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// Remove everything in `dir` except the names in `keep`.
fn clear_dir(dir: &Path, keep: &[&str]) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            crate::fsutil::remove_work_dir(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Turn a Docker/OCI image config (Env, Entrypoint, Cmd, WorkingDir) into Apptainer's files,
/// as `apptainer build x.sif docker-archive:...` does: the environment in
/// `/.singularity.d/env/10-docker2singularity.sh`, and a runscript running Entrypoint + Cmd.
fn write_container_config(config: &Value, rootfs: &Path) -> Result<()> {
    let mut env = String::from("#!/bin/sh\n");
    for kv in config["Env"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
        if let Some((k, v)) = kv.split_once('=') {
            if berth_runtime::request::valid_env_name(k) {
                env.push_str(&format!("export {k}={}\n", shell_quote(v)));
            }
        }
    }
    write_in_root(rootfs, "/.singularity.d/env/10-docker2singularity.sh", env.as_bytes(), 0o755)?;

    let words = |key: &str| -> Vec<String> {
        config[key].as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(shell_quote).collect()
    };
    let (entrypoint, cmd) = (words("Entrypoint"), words("Cmd"));
    let mut runscript = String::from("#!/bin/sh\n");
    if let Some(dir) = config["WorkingDir"].as_str().filter(|d| !d.is_empty()) {
        runscript.push_str(&format!("cd {} || exit 1\n", shell_quote(dir)));
    }
    // Docker semantics: arguments replace Cmd, and are appended to Entrypoint.
    let cmd_words = cmd.join(" ");
    let line = match (entrypoint.is_empty(), cmd.is_empty()) {
        (true, true) => "exec /bin/sh \"$@\"".to_string(),
        (true, false) => format!("if [ $# -gt 0 ]; then exec \"$@\"; fi\nexec {cmd_words}"),
        (false, _) => format!(
            "if [ $# -gt 0 ]; then exec {} \"$@\"; fi\nexec {} {cmd_words}",
            entrypoint.join(" "),
            entrypoint.join(" ")
        ),
    };
    runscript.push_str(&line);
    runscript.push('\n');
    write_in_root(rootfs, "/.singularity.d/runscript", runscript.as_bytes(), 0o755)?;
    let labels: BTreeMap<String, String> = config["Labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default();
    if !labels.is_empty() {
        let json = serde_json::to_vec_pretty(&labels).unwrap_or_default();
        write_in_root(rootfs, "/.singularity.d/labels.json", &json, 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_ignores_include_order_and_duplicates() {
        let dir = Path::new("/c");
        let a = cache_file(dir, "bookworm", "http://m/debian", &["b".into(), "a".into()]);
        let b = cache_file(dir, "bookworm", "http://m/debian", &["a".into(), "b".into(), "a".into()]);
        let c = cache_file(dir, "bookworm", "http://other/debian", &["a".into(), "b".into()]);
        let d = cache_file(dir, "trixie", "http://m/debian", &["a".into(), "b".into()]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(a.to_string_lossy().starts_with("/c/debootstrap-bookworm-"));
    }

    #[test]
    fn whiteouts_remove_lower_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let log = Log::create(&root.join("log"), false).unwrap();
        let rootfs = root.join("rootfs");
        fs::create_dir_all(rootfs.join("etc/opaque/sub")).unwrap();
        fs::write(rootfs.join("etc/gone"), b"x").unwrap();
        fs::write(rootfs.join("etc/kept"), b"x").unwrap();
        fs::write(rootfs.join("etc/opaque/a"), b"x").unwrap();
        apply_whiteout(&rootfs, "./etc/.wh.gone", &log).unwrap();
        apply_whiteout(&rootfs, "etc/opaque/.wh..wh..opq", &log).unwrap();
        apply_whiteout(&rootfs, "etc/kept", &log).unwrap();
        apply_whiteout(&rootfs, "../.wh.log", &log).unwrap();
        assert!(!rootfs.join("etc/gone").exists());
        assert!(rootfs.join("etc/kept").exists());
        assert!(rootfs.join("etc/opaque").is_dir());
        assert_eq!(fs::read_dir(rootfs.join("etc/opaque")).unwrap().count(), 0);
        assert!(root.join("log").exists(), "a whiteout can never reach outside the rootfs");
    }

    #[test]
    fn layers_cannot_write_through_links_out_of_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
        std::os::unix::fs::symlink("/etc", rootfs.join("hostetc")).unwrap();
        std::os::unix::fs::symlink("../../outside", rootfs.join("up")).unwrap();
        std::os::unix::fs::symlink("/nonexistent-berth-dir", rootfs.join("dangling")).unwrap();
        let ok = ["./lib/libc.so.6", "usr/lib/x", "hostetc", "newdir/file"];
        check_layer_paths(&rootfs, ok.iter().copied(), 1).unwrap();
        for bad in ["hostetc/passwd", "./up/file", "dangling/x/y"] {
            let err = check_layer_paths(&rootfs, [bad].into_iter(), 2).unwrap_err().to_string();
            assert!(err.contains("leads outside the image") && err.contains("layer 2"), "{bad}: {err}");
        }
    }

    #[test]
    fn unreachable_mirror_fails_fast_with_a_message() {
        // Port 9 on loopback: nothing listens, so the connection is refused at once.
        let started = std::time::Instant::now();
        let err = check_mirror("http://127.0.0.1:9/debian", "bookworm").unwrap_err().to_string();
        assert!(err.contains("mirror http://127.0.0.1:9/debian"), "{err}");
        assert!(err.contains("cannot connect"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
        let err = check_mirror("file:///nonexistent/debian", "bookworm").unwrap_err().to_string();
        assert!(err.contains("dists/bookworm/Release"), "{err}");
    }
}
