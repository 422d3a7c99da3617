//! berth-registry: container images from OCI registries (`docker://`), OCI layouts and archives
//! (`oci:`, `oci-archive:`, `docker-archive:`), converted as an ordinary user into one SquashFS
//! file with owners, modes and metadata kept.
//!
//! Flow: resolve the reference to one manifest (index -> platform), fetch its config and layers
//! into the verified blob cache, merge the layers' headers into the final tree, stream that
//! tree as one tar into `mksquashfs -tar` writing a temporary file next to the output, then
//! rename it into place. Front ends call [`pull`] for a named output or [`ensure_converted`]
//! for a shared per-digest cache where one process converts and the others wait.

pub mod auth;
pub mod cache;
mod cleanup;
pub mod client;
pub mod error;
pub mod flatten;
pub mod image;
pub mod meta;
pub mod progress;
pub mod reference;
#[doc(hidden)]
pub mod testimg;

use std::io::{BufWriter, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use cache::BlobCache;
pub use error::{Error, Result};
pub use image::Platform;
pub use reference::{parse_source, Source};

use image::{Resolved, Store};
use progress::Progress;

pub struct Options {
    pub platform: Platform,
    /// Plain HTTP to the registry.
    pub insecure: bool,
    /// No progress display even on a terminal.
    pub quiet: bool,
    pub cache: BlobCache,
    /// Credentials to use instead of looking them up (a front end that has its own).
    pub credentials: Option<auth::Credentials>,
    /// Base delay between retries.
    pub backoff: std::time::Duration,
    /// What [`pull`] writes.
    pub format: Format,
    /// Token services besides the registry's own address that may receive the credentials
    /// (`[registry] credential_realms`).
    pub credential_realms: Vec<String>,
}

/// The file [`pull`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// A SquashFS file (berth's native image).
    #[default]
    Squashfs,
    /// A SIF file: the SquashFS as its primary system partition, the labels and a definition
    /// naming the source as data objects, Apptainer's launch line.
    Sif,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            platform: Platform::host(),
            insecure: false,
            quiet: false,
            cache: BlobCache::new(BlobCache::default_root()),
            credentials: None,
            backoff: std::time::Duration::from_millis(500),
            format: Format::Squashfs,
            credential_realms: vec![],
        }
    }
}

#[derive(Debug)]
pub struct Report {
    pub out: PathBuf,
    /// The manifest's digest, when the source has one.
    pub digest: Option<String>,
    pub layers: usize,
}

/// A source resolved to one manifest, before its layers are fetched.
enum Located {
    Registry { client: Box<client::Client>, manifest: image::Manifest, digest: String },
    Local { store: Store, resolved: Resolved },
}

impl Located {
    fn digest(&self) -> Option<&str> {
        match self {
            Located::Registry { digest, .. } => Some(digest),
            Located::Local { resolved, .. } => resolved.digest.as_deref(),
        }
    }
}

fn locate(src: &Source, opts: &Options) -> Result<Located> {
    let what = src.to_string();
    match src {
        Source::Registry(r) => {
            let mut client = Box::new(client::Client::new(r, opts.insecure)?);
            client.backoff = opts.backoff;
            if opts.credentials.is_some() {
                client.set_credentials(opts.credentials.clone());
            }
            client.set_credential_realms(&opts.credential_realms);
            let (body, ct, mut digest) = client.manifest(r.reference())?;
            let mut m = image::parse_manifest(&body, &what)?;
            if m.is_index(&ct) {
                let d = image::choose(&m, &opts.platform, &what)?.digest.clone();
                let (body, _, d2) = client.manifest(&d)?;
                m = image::parse_manifest(&body, &what)?;
                if m.is_index("") {
                    return Err(Error::new(&what, "an index inside an index is not supported", ""));
                }
                digest = d2;
            }
            Ok(Located::Registry { client, manifest: m, digest })
        }
        Source::OciDir(dir, tag) => {
            if !dir.join("index.json").is_file() {
                return Err(Error::new(
                    &what,
                    "not an OCI image layout (no index.json)",
                    "make one with skopeo copy ... oci:DIR",
                ));
            }
            let store = Store::Dir(dir.clone());
            let resolved = image::resolve_oci(&store, tag.as_deref(), &opts.platform, &what)?;
            Ok(Located::Local { store, resolved })
        }
        Source::OciArchive(p) => {
            let store = Store::open_tar(p)?;
            if !store.has("index.json") {
                return Err(Error::new(
                    &what,
                    "not an OCI image layout (no index.json)",
                    "make one with `skopeo copy docker://IMAGE oci-archive:FILE.tar` or `podman save --format oci-archive`",
                ));
            }
            let resolved = image::resolve_oci(&store, None, &opts.platform, &what)?;
            Ok(Located::Local { store, resolved })
        }
        Source::DockerArchive(p) => {
            let store = Store::open_tar(p)?;
            if !store.has("manifest.json") {
                return Err(Error::new(
                    &what,
                    "has no manifest.json: not a `docker save` tarball",
                    "make one with `docker save IMAGE -o FILE.tar` (or use oci-archive for an OCI layout)",
                ));
            }
            let resolved = image::resolve_docker_archive(&store, &what)?;
            Ok(Located::Local { store, resolved })
        }
    }
}

/// Fetch what a located source needs into the cache.
fn fetch(loc: Located, opts: &Options, progress: &mut Progress) -> Result<(Store, Resolved)> {
    match loc {
        Located::Local { store, resolved } => Ok((store, resolved)),
        Located::Registry { mut client, manifest, digest } => {
            let what = "image config";
            let cfg =
                manifest.config.as_ref().ok_or_else(|| Error::new(what, "the manifest has no config", ""))?;
            let total = manifest.layers.iter().map(|l| l.size).sum::<u64>() + cfg.size;
            progress.phase("downloading", manifest.layers.len(), total);
            // Real configs are a few KiB; the manifest's size bounds the download, and this
            // bounds what is read into memory, as for manifests.
            if cfg.size > client::MAX_DOC {
                return Err(Error::new(
                    what,
                    format!(
                        "the manifest lists a config of {} bytes, more than the {} bytes berth reads",
                        cfg.size,
                        client::MAX_DOC
                    ),
                    "the registry serves a broken or hostile image",
                ));
            }
            let cfg_path = client.blob(&opts.cache, &cfg.digest, Some(cfg.size), progress)?;
            let mut bytes = vec![];
            std::fs::File::open(&cfg_path)
                .and_then(|f| f.take(client::MAX_DOC).read_to_end(&mut bytes))
                .map_err(|e| Error::io(what, e))?;
            let config: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|_| Error::new(what, "the image config is not JSON", ""))?;
            let mut layers = vec![];
            for l in &manifest.layers {
                client.blob(&opts.cache, &l.digest, Some(l.size), progress)?;
                progress.layer_done();
                // Checked on the way into the cache: no second check while merging.
                layers.push(image::Layer {
                    key: l.digest.clone(),
                    digest: None,
                    media_type: l.media_type.clone(),
                    size: l.size,
                });
            }
            Ok((Store::Dir(opts.cache.root.clone()), Resolved { config, layers, digest: Some(digest) }))
        }
    }
}

fn io_what(out: &Path) -> String {
    format!("output {}", out.display())
}

/// `mksquashfs SOURCE DEST` (options must follow the two paths).
fn mksquashfs(source: &Path, dest: &Path) -> Command {
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(source).arg(dest).args(["-quiet", "-no-progress"]).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; mksquashfs must not outlive berth.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// SIGPIPE ignored while it lives: a write into the pipe of a child that has exited fails
/// with EPIPE instead of ending berth (whose `main` restores the default disposition).
struct IgnoreSigpipe(libc::sighandler_t);

impl IgnoreSigpipe {
    fn new() -> Self {
        // SAFETY: signal(2) only swaps SIGPIPE's disposition; the old one is put back on drop.
        IgnoreSigpipe(unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) })
    }
}

impl Drop for IgnoreSigpipe {
    fn drop(&mut self) {
        if self.0 != libc::SIG_ERR {
            // SAFETY: as in `new`: the disposition found there is restored.
            unsafe { libc::signal(libc::SIGPIPE, self.0) };
        }
    }
}

/// Collect a child's stderr on a thread (so a chatty child never blocks on a full pipe).
fn stderr_of(child: &mut std::process::Child) -> std::thread::JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    })
}

fn check(status: std::process::ExitStatus, errs: std::thread::JoinHandle<String>) -> Result<()> {
    let msg = errs.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let last = msg.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    let hint = if msg.contains("No space") { "free some space, or write elsewhere" } else { "" };
    Err(Error::new("mksquashfs", format!("failed ({status}): {last}"), hint))
}

/// A new temporary file next to `out` (`.NAME.partial-XXXXXX`), removed by a signal while the
/// guard lives and locked while it is open, so that a later run can tell a file whose writer was
/// killed outright (SIGKILL, a crash) from one being written, and remove it.
fn partial_file(out: &Path) -> Result<(tempfile::NamedTempFile, Option<cleanup::Registered>)> {
    let (dir, name) = cleanup::dir_and_name(out);
    cleanup::sweep(&dir, &name);
    loop {
        let tmp = tempfile::Builder::new()
            .prefix(&cleanup::partial_prefix(&name))
            .tempfile_in(&dir)
            .map_err(|e| Error::io(io_what(out), e))?;
        let guard = cleanup::register(tmp.path());
        if cleanup::hold(tmp.as_file(), tmp.path()) {
            return Ok((tmp, guard));
        }
    }
}

/// The file mode a new file gets from this process's umask.
fn new_file_mode(mode: u32) -> u32 {
    // SAFETY: umask(2) only swaps the process mask; it is put back at once.
    let mask = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    };
    mode & !(mask as u32)
}

/// The SIF data objects beside the root filesystem: a definition naming the source (as
/// Apptainer writes for `pull docker://...`) and the labels.
fn sif_objects(resolved: &Resolved, source: &str) -> Vec<berth_runtime::image::SifObject> {
    use berth_runtime::image::{SifObject, SifObjectKind};
    let (agent, from) = match source.split_once(':') {
        Some((scheme, rest)) => (scheme, rest.trim_start_matches("//")),
        None => ("docker", source),
    };
    vec![
        SifObject {
            kind: SifObjectKind::Deffile,
            name: String::new(),
            data: format!("bootstrap: {agent}\nfrom: {from}\n").into_bytes(),
        },
        SifObject {
            kind: SifObjectKind::Labels,
            name: String::new(),
            data: meta::labels_json(&resolved.config, source, resolved.digest.as_deref()),
        },
    ]
}

/// Merge the layers and write the image file to `out`, atomically. `cache_entry`: a file of
/// the image cache, which nobody but its owner may write whatever the umask (it is trusted
/// only so, see [`ensure_converted`]).
fn convert(
    store: &Store,
    resolved: &Resolved,
    source: &str,
    out: &Path,
    format: Format,
    cache_entry: bool,
    progress: &mut Progress,
) -> Result<()> {
    let n = resolved.layers.len();
    let total = resolved.layers.iter().map(|l| l.size).sum();
    progress.phase("reading layers", n, total);
    let mut tree = flatten::merge(store, &resolved.layers, || progress.layer_done())?;
    meta::add_to(&mut tree, &resolved.config, source, resolved.digest.as_deref());

    let (tmp, _guard) = partial_file(out)?;
    let root =
        tree.root.clone().unwrap_or(flatten::Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: vec![] });
    let mut cmd = mksquashfs(Path::new("-"), tmp.path());
    cmd.args(["-tar", "-noappend"]).stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        Error::new(
            "mksquashfs",
            e.to_string(),
            "install squashfs-tools 4.5 or later (apt-get install squashfs-tools)",
        )
    })?;
    let stdin = child.stdin.take().expect("piped stdin");
    let errs = stderr_of(&mut child);
    // A mksquashfs that dies mid-stream (a full disk, killed) is reported with its own words
    // below, and the partial file removed, instead of berth dying of SIGPIPE.
    let sigpipe = IgnoreSigpipe::new();
    progress.phase("writing squashfs", n, total);
    let written =
        flatten::write_tar(store, &resolved.layers, &tree, BufWriter::with_capacity(1 << 20, stdin), || {
            progress.layer_done()
        })
        .and_then(|w| {
            w.into_inner().map(drop).map_err(|e| Error::new("mksquashfs", e.error().to_string(), ""))
        });
    let status = child.wait().map_err(|e| Error::new("mksquashfs", e.to_string(), ""))?;
    drop(sigpipe);
    progress.finish();
    check(status, errs)?;
    written?;
    // `mksquashfs -tar` (4.5) gives the root directory the caller's owner and mode 0777, and
    // ignores -root-*; appending an empty directory with -root-* sets them as the image says.
    // Named after the partial file, so a later run removes it with that file if this one is
    // killed outright.
    let empty = cleanup::DirGuard::create(&cleanup::dir_of_partial(tmp.path()))
        .map_err(|e| Error::io(io_what(out), e))?;
    let mut cmd = mksquashfs(empty.path(), tmp.path());
    cmd.arg("-no-recovery")
        .args(["-root-mode", &format!("{:o}", root.mode & 0o7777)])
        .args(["-root-uid", &root.uid.to_string(), "-root-gid", &root.gid.to_string()])
        .stdin(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| Error::new("mksquashfs", e.to_string(), ""))?;
    let errs = stderr_of(&mut child);
    let status = child.wait().map_err(|e| Error::new("mksquashfs", e.to_string(), ""))?;
    check(status, errs)?;
    drop(empty);
    let (fin, _guard_fin, mode) = match format {
        Format::Squashfs => (tmp, None, 0o644),
        Format::Sif => {
            let (mut sif, guard) = partial_file(out)?;
            let path = sif.path().to_path_buf();
            berth_runtime::image::write_sif_into(
                sif.as_file_mut(),
                &path,
                tmp.path(),
                "rootfs.squashfs",
                &sif_objects(resolved, source),
                None,
            )
            .map_err(|e| Error::new(io_what(out), e.to_string(), ""))?;
            drop(tmp);
            // SIF files are executable (`./app.sif args` runs the runscript).
            (sif, guard, 0o755)
        }
    };
    let mode = new_file_mode(mode) & if cache_entry { !0o022 } else { !0 };
    std::fs::set_permissions(fin.path(), std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(io_what(out), e))?;
    fin.as_file().sync_all().map_err(|e| Error::io(io_what(out), e))?;
    fin.persist(out).map_err(|e| Error::io(io_what(out), e.error))?;
    Ok(())
}

/// Convert `src` into the SquashFS file `out` (replaced atomically; nothing partial on failure).
pub fn pull(src: &Source, out: &Path, opts: &Options) -> Result<Report> {
    let mut progress = Progress::new(opts.quiet);
    let loc = locate(src, opts)?;
    let (store, resolved) = fetch(loc, opts, &mut progress)?;
    convert(&store, &resolved, &src.to_string(), out, opts.format, false, &mut progress)?;
    Ok(Report { out: out.to_path_buf(), digest: resolved.digest.clone(), layers: resolved.layers.len() })
}

/// Merge `src` into the directory `dir` (for `berth build`, which runs as root): the same tree
/// and metadata as [`pull`] writes into SquashFS, created by [`flatten::write_dir`] with owners,
/// modes and xattrs as in the image. No archive tool runs as root: the layers are read as
/// streams and every path is created below a descriptor of `dir` without following a link.
/// `dir` should be empty.
pub fn extract(src: &Source, dir: &Path, opts: &Options) -> Result<Report> {
    let mut progress = Progress::new(opts.quiet);
    let loc = locate(src, opts)?;
    let (store, resolved) = fetch(loc, opts, &mut progress)?;
    let n = resolved.layers.len();
    let total = resolved.layers.iter().map(|l| l.size).sum();
    progress.phase("reading layers", n, total);
    let mut tree = flatten::merge(&store, &resolved.layers, || progress.layer_done())?;
    meta::add_to(&mut tree, &resolved.config, &src.to_string(), resolved.digest.as_deref());
    progress.phase("unpacking", n, total);
    let written = flatten::write_dir(&store, &resolved.layers, &tree, dir, || progress.layer_done());
    progress.finish();
    written?;
    Ok(Report { out: dir.to_path_buf(), digest: resolved.digest.clone(), layers: n })
}

/// How many conversions [`ensure_converted`] ran in this process (the others found the file).
pub static CONVERSIONS: AtomicUsize = AtomicUsize::new(0);

/// An exclusive flock on `path` (created if missing), released when dropped.
struct Lock {
    _file: std::fs::File,
}

impl Lock {
    fn take(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .or_else(|_| std::fs::File::open(path))
            .map_err(|e| Error::io(format!("lock {}", path.display()), e))?;
        loop {
            // SAFETY: flock on a descriptor this function owns; it is released when `f` closes.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(Lock { _file: f });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(format!("lock {}", path.display()), e));
            }
        }
    }
}

/// The refusal of a cache directory or entry, as the registry's errors read.
fn vetting_error(e: berth_runtime::Error) -> Error {
    match e {
        berth_runtime::Error::Io { what, path, source, hint } => {
            Error::new(format!("{what} {}", path.display()), source.to_string(), hint)
        }
        e => Error::new("image cache", e.to_string(), ""),
    }
}

/// `cache_dir` made (mode 0700) or opened, and vetted: a directory of `uid`'s that nobody else
/// can write, reached through directories nobody else can change (see
/// [`berth_runtime::safedir::ensure_private_dir`]). In a shared site cache (1777) another user
/// could otherwise make it first and put an image of their choosing at a digest's name.
fn image_cache_dir(cache_dir: &Path, uid: u32) -> Result<berth_runtime::safedir::PrivateDir> {
    use berth_runtime::safedir;
    use std::os::unix::fs::DirBuilderExt;
    let what = || format!("image cache {}", cache_dir.display());
    let (Some(base), Some(name)) = (cache_dir.parent(), cache_dir.file_name()) else {
        return Err(Error::new(what(), "not a directory berth can make", ""));
    };
    // Private from the start (under umask 002 it would be group-writable, and refused).
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(base).map_err(|e| Error::io(what(), e))?;
    let foreign = |owner: &str| {
        format!(
            "another user, {owner}, made it first, and berth uses no image someone else could have \
             put there; ask them or an administrator to remove it. Meanwhile `berth pull REF FILE` \
             and run that file"
        )
    };
    let rule = safedir::Rule { what: "unsafe image cache", deny: 0o022, foreign_hint: &foreign };
    safedir::ensure_private_dir(base, name, uid, &rule).map_err(vetting_error)
}

/// The converted file of manifest digest `hex` in the vetted `dir`, if there is one: trusted
/// only as a regular file of `uid`'s that nobody else can write, never by its name alone.
fn cached(dir: &berth_runtime::safedir::PrivateDir, hex: &str, uid: u32) -> Result<Option<PathBuf>> {
    use berth_runtime::safedir::{file_in, Entry};
    let name = format!("{hex}.sqsh");
    match file_in(dir, name.as_ref(), uid, "image cache entry").map_err(vetting_error)? {
        Entry::Own(p) => Ok(Some(p)),
        Entry::Missing => Ok(None),
    }
}

/// The converted image for `src` in `cache_dir` (`<manifest digest>.sqsh`), converting it first
/// if no one has. Concurrent callers (threads, processes, nodes sharing the directory over a
/// filesystem with working flock) serialize on a lock file per digest: one converts, the others
/// wait and then use its file. A digest-pinned reference whose file exists needs no network.
/// `cache_dir` must be the caller's own (see [`image_cache_dir`]) and a file found there is used
/// only if the caller owns it and nobody else can write it: anything else is refused with a
/// message naming its owner.
pub fn ensure_converted(src: &str, cache_dir: &Path, opts: &Options) -> Result<PathBuf> {
    let source = parse_source(src)?;
    let uid = nix::unistd::geteuid().as_raw();
    let dir = image_cache_dir(cache_dir, uid)?;
    if let Source::Registry(r) = &source {
        if let Some(d) = &r.digest {
            if let Some(p) = cached(&dir, d.trim_start_matches("sha256:"), uid)? {
                return Ok(p);
            }
        }
    }
    let loc = locate(&source, opts)?;
    let digest = loc.digest().map(|d| d.trim_start_matches("sha256:").to_string()).ok_or_else(|| {
        Error::new(
            src,
            "this source has no digest to cache it under",
            "use berth pull/import with an output file",
        )
    })?;
    if let Some(p) = cached(&dir, &digest, uid)? {
        return Ok(p);
    }
    let _lock = Lock::take(&dir.path.join(format!("{digest}.lock")))?;
    if let Some(p) = cached(&dir, &digest, uid)? {
        return Ok(p);
    }
    let out = dir.path.join(format!("{digest}.sqsh"));
    CONVERSIONS.fetch_add(1, Ordering::SeqCst);
    let mut progress = Progress::new(opts.quiet);
    let (store, resolved) = fetch(loc, opts, &mut progress)?;
    convert(&store, &resolved, &source.to_string(), &out, Format::Squashfs, true, &mut progress)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
