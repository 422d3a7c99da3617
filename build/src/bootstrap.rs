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
//! The three image agents (docker-archive, oci-archive, docker) share `berth pull`'s merge
//! (berth-registry): layers are read as tar streams, whiteouts (`.wh.NAME`, `.wh..wh..opq`)
//! applied in memory, and the final tree created in the rootfs by
//! `berth_registry::flatten::write_dir`, which never follows a link. Root never unpacks an
//! image archive with tar.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::def::{Bootstrap, Definition};
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

/// A `docker save` tarball or an OCI layout (tar or directory) as the build root: read and
/// merged by `berth import`'s code. The archive is read as a stream (its members by their
/// offsets in it, never through the filesystem, so a member that is a symlink names another
/// member or nothing), the layers are merged in memory with whiteouts and every path check of
/// `berth pull`, and the tree is created below a descriptor of the rootfs without following a
/// link. No tar runs as root on the archive, and no tool's listing is parsed.
fn archive(agent: &str, from: &Path, ctx: &Context) -> Result<()> {
    let read = if from.is_dir() { from.to_path_buf() } else { plain_archive(from, ctx, agent)? };
    let err = |e: berth_registry::Error| {
        // The layer (or the step) that failed, unless the message only names the archive.
        let mut what = format!("{agent} {}", from.display());
        if !e.what.contains(&*read.to_string_lossy()) {
            what = format!("{what}: {}", e.what);
        }
        Error::build(what, e.reason, e.hint)
    };
    let src = match agent {
        "oci-archive" if from.is_dir() => berth_registry::Source::OciDir(read.clone(), None),
        "oci-archive" => berth_registry::Source::OciArchive(read.clone()),
        _ => berth_registry::Source::DockerArchive(read.clone()),
    };
    let opts = berth_registry::Options {
        quiet: !runner::on_terminal(),
        cache: berth_registry::BlobCache::new(ctx.scratch.join("registry")),
        ..berth_registry::Options::default()
    };
    ctx.log.line(&format!("berth: {agent} {}", from.display()));
    let report = berth_registry::extract(&src, ctx.rootfs, &opts).map_err(err)?;
    ctx.log.line(&format!("berth: {} layers applied", report.layers));
    Ok(())
}

/// The archive as a plain tar file: members are read at their offsets, so a compressed archive
/// (gzip, zstd) is first decompressed into the scratch space.
fn plain_archive(from: &Path, ctx: &Context, agent: &str) -> Result<PathBuf> {
    let what = || format!("{agent} {}", from.display());
    let mut f = fs::File::open(from).map_err(|e| Error::io("open", from, e))?;
    let mut magic = [0u8; 6];
    let n = f.read(&mut magic).map_err(|e| Error::io("read", from, e))?;
    let magic = &magic[..n];
    if magic.starts_with(b"BZh") || magic.starts_with(b"\xfd7zXZ\0") {
        return Err(Error::build(
            what(),
            "is compressed with bzip2 or xz",
            "decompress it first (bunzip2, unxz), or compress it with gzip or zstd",
        ));
    }
    if !magic.starts_with(&[0x1f, 0x8b]) && !magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(from.to_path_buf());
    }
    drop(f);
    let f = fs::File::open(from).map_err(|e| Error::io("open", from, e))?;
    let mut r = berth_registry::flatten::decompressed(Box::new(std::io::BufReader::new(f)), &what())
        .map_err(|e| Error::build(what(), e.reason, e.hint))?;
    let plain = ctx.scratch.join(format!("{agent}.tar"));
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&plain)
        .map_err(|e| Error::io("create", &plain, e))?;
    // In steps, checking after each that ordinary users still have space: a small archive may
    // decompress to more than the disk holds, and root would go on into the reserved blocks.
    let step = 8u64 << 20;
    loop {
        let n = std::io::copy(&mut (&mut r).take(step), &mut out).map_err(|e| {
            Error::build(
                what(),
                format!("cannot be decompressed: {e}"),
                "the archive is damaged or incomplete",
            )
        })?;
        berth_registry::flatten::ensure_room(std::os::fd::AsRawFd::as_raw_fd(&out), 1).map_err(|e| {
            Error::build(
                what(),
                format!("decompressing into {}: {e}", plain.display()),
                "free some space, or build elsewhere (BERTH_TMPDIR)",
            )
        })?;
        if n < step {
            break;
        }
    }
    Ok(plain)
}

fn docker_archive(from: &Path, ctx: &Context) -> Result<()> {
    archive("docker-archive", from, ctx)
}

fn oci_archive(from: &Path, ctx: &Context) -> Result<()> {
    archive("oci-archive", from, ctx)
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
