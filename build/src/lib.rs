//! `berth build OUT DEF`: an image from a Singularity-syntax definition file.
//!
//! A crate of its own so that the front ends that only run containers (the SPANK plugin,
//! `berth-pbs`) do not link the builder. It uses `berth-runtime`'s public API for errors, image
//! formats and paths inside a root; running a container (for `%test`) is the caller's, through
//! a [`TestRunner`] (the `berth` CLI passes one that calls `berth_runtime::session::run_in_image`).
//!
//! Pipeline (each step checks for Ctrl-C before it starts):
//!
//! 1. checks: root, the definition parses, OUT's directory exists, OUT is not there (or --force);
//! 2. a private work directory (`$BERTH_TMPDIR` or /var/tmp, mode 0700) holding `rootfs/`;
//! 3. bootstrap the base (see [`bootstrap`]), then `%setup` on the host with `$BERTH_ROOTFS`
//!    and `$SINGULARITY_ROOTFS`, then `%files`;
//! 4. `%post` in a chroot of the rootfs, inside a private mount namespace (`unshare --mount`) with
//!    /proc, /dev and /sys mounted and the host's /etc/resolv.conf copied in for the duration;
//! 5. metadata in Apptainer's layout under `/.singularity.d/` so both tools run the image;
//! 6. `%test` (unless --notest): in the finished image through [`BuildOptions::test_runner`], or
//!    in a chroot of the root filesystem when there is none; a failing test fails the build;
//! 7. mksquashfs into a temporary file next to OUT, then rename: OUT appears whole or not at all.
//!
//! On any failure or SIGINT/SIGTERM the child tree is stopped, the work directory and the
//! temporary output are removed, and no mount is left (the mounts only ever existed in the
//! child's private namespace).

pub mod bootstrap;
pub mod def;
pub mod fsutil;
pub mod runner;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use def::{Definition, Script};
use fsutil::{resolve_in_root, write_in_root};
use runner::{interrupted, interrupted_error, run_checked, Log, SignalGuard};

use berth_runtime::error::{Error, Result};
use berth_runtime::session::Ended;

pub use def::{lint, parse, LintIssue};

/// The image file format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// A plain SquashFS file, berth's native format.
    #[default]
    Squashfs,
    /// An Apptainer/Singularity SIF file.
    Sif,
}

/// SquashFS compressors mksquashfs knows; gzip is the default because every kernel and
/// squashfuse can read it (Apptainer makes the same choice).
pub const COMPRESSIONS: &[&str] = &["gzip", "xz", "zstd", "lz4", "lzo", "lzma"];

/// Runs `argv` inside a container of the image at `image` (a finished SquashFS or SIF file),
/// for `%test`, and returns how it ended. The build calls it in a forked child of its own, like
/// every other step: its output goes to the build log and Ctrl-C stops its whole process tree.
/// The caller only says how a container runs (the CLI: through the runtime's session API), so
/// this crate needs no CLI of its own; an `Err` is reported in the log and fails the test.
pub type TestRunner = fn(image: &Path, argv: &[String]) -> Result<Ended>;

/// Everything `berth build` needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The image to write.
    pub output: PathBuf,
    /// The definition file.
    pub definition: PathBuf,
    pub format: OutputFormat,
    /// SquashFS compressor, one of [`COMPRESSIONS`].
    pub compression: String,
    /// Skip `%test`.
    pub notest: bool,
    /// Replace OUT if it exists.
    pub force: bool,
    /// Keep the full build log at this path.
    pub log: Option<PathBuf>,
    /// Where the work directory goes (default `$BERTH_TMPDIR`, else /var/tmp). It must be a local
    /// filesystem where root can create device nodes and own files (not NFS with root squash).
    pub work_parent: Option<PathBuf>,
    /// Cache for debootstrap bases; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Runs `%test` inside the finished image, as the container runtime would run it. `None`
    /// runs `%test` in a chroot of the root filesystem instead (before squashing).
    pub test_runner: Option<TestRunner>,
    /// Time limit for one debootstrap run.
    pub debootstrap_timeout: Duration,
    /// Plain HTTP to the registry of `Bootstrap: docker`.
    pub nohttps: bool,
}

impl BuildOptions {
    /// Options with berth's defaults; the cache and timeout honour `BERTH_CACHE_DIR`
    /// (empty disables it) and `BERTH_DEBOOTSTRAP_TIMEOUT` (seconds).
    pub fn new(output: impl Into<PathBuf>, definition: impl Into<PathBuf>) -> BuildOptions {
        let cache_dir = match std::env::var_os("BERTH_CACHE_DIR") {
            Some(v) if v.is_empty() => None,
            Some(v) => Some(PathBuf::from(v)),
            None => Some(PathBuf::from(bootstrap::DEFAULT_CACHE_DIR)),
        };
        let timeout =
            std::env::var("BERTH_DEBOOTSTRAP_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(1800);
        BuildOptions {
            output: output.into(),
            definition: definition.into(),
            format: OutputFormat::Squashfs,
            compression: "gzip".into(),
            notest: false,
            force: false,
            log: None,
            work_parent: std::env::var_os("BERTH_TMPDIR").map(PathBuf::from),
            cache_dir,
            test_runner: None,
            debootstrap_timeout: Duration::from_secs(timeout),
            nohttps: false,
        }
    }
}

/// Lint a definition file on disk (for `berth build --lint`).
pub fn lint_file(path: &Path) -> Result<Vec<LintIssue>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("read definition file", path, e))?;
    Ok(def::lint(&text, path))
}

/// True when the last build stopped because of SIGINT/SIGTERM (frontends exit 130 then).
pub fn was_interrupted() -> bool {
    interrupted()
}

/// The private work directory; removed when dropped, whatever happened.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(parent: &Path) -> Result<WorkDir> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = parent.join(format!("berth-build-{}-{nanos:09}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| Error::Io {
            what: "create the build work directory".into(),
            path: path.clone(),
            source: e,
            hint: "set BERTH_TMPDIR to a local directory with free space".into(),
        })?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fsutil::remove_work_dir(&self.path) {
            eprintln!("berth: warning: could not remove the build directory {}: {e}", self.path.display());
        }
    }
}

/// The temporary output next to OUT; removed when dropped unless it was renamed into place.
struct PendingOutput {
    path: PathBuf,
    done: bool,
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn checkpoint() -> Result<()> {
    if interrupted() {
        Err(interrupted_error())
    } else {
        Ok(())
    }
}

fn step(log: &Log, text: &str) {
    log.line(&format!("==> {text}"));
    eprintln!("berth build: {text}");
}

/// Build an image. See the module documentation for the steps.
pub fn build(opts: &BuildOptions) -> Result<()> {
    require_root(nix::unistd::geteuid())?;
    if !bootstrap_compression_ok(&opts.compression) {
        return Err(Error::request(
            "--compression",
            format!("unknown compressor {:?}", opts.compression),
            format!("use one of: {}", COMPRESSIONS.join(", ")),
        ));
    }
    if opts.format == OutputFormat::Sif {
        sif_writer_available()?;
    }
    let def = def::parse_file(&opts.definition)?;
    let output = check_output(&opts.output, opts.force)?;

    let _signals = SignalGuard::install()?;
    let work_parent = opts.work_parent.clone().unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let work = WorkDir::create(&work_parent)?;
    let rootfs = work.path.join("rootfs");
    {
        use std::os::unix::fs::DirBuilderExt;
        // The rootfs directory becomes the image's `/`: 0755 like any root directory.
        fs::DirBuilder::new().mode(0o755).create(&rootfs).map_err(|e| Error::io("create", &rootfs, e))?;
    }
    let scratch = work.path.join("scratch");
    fs::create_dir(&scratch).map_err(|e| Error::io("create", &scratch, e))?;
    let log = match &opts.log {
        Some(p) => Log::create(p, true)?,
        None => Log::create(&work.path.join("build.log"), false)?,
    };
    log.line(&format!(
        "berth {} build {} from {}",
        env!("CARGO_PKG_VERSION"),
        output.display(),
        def.path.display()
    ));

    let result = build_in(&def, opts, &output, &work.path, &rootfs, &scratch, &log);
    if result.is_err() {
        log.line("==> build failed; removing the work directory");
    }
    // Deleting a Debian tree takes a while on some filesystems (discard on every unlink): say
    // so, instead of sitting silent after "wrote ...".
    eprintln!("berth build: removing the work directory {}", work.path.display());
    drop(work);
    result
}

fn require_root(euid: nix::unistd::Uid) -> Result<()> {
    if euid.is_root() {
        return Ok(());
    }
    Err(Error::build(
        "root required",
        "berth build creates files owned by other users and chroots into the new image",
        "run it with sudo, on a machine where you are root, or check a recipe without building with `berth build --lint DEF`",
    ))
}

fn bootstrap_compression_ok(c: &str) -> bool {
    COMPRESSIONS.contains(&c)
}

/// OUT's directory must exist; OUT itself must not, unless --force. Returns OUT made absolute.
fn check_output(out: &Path, force: bool) -> Result<PathBuf> {
    let name = out.file_name().ok_or_else(|| {
        Error::request(
            "OUT",
            format!("{} is not a file name", out.display()),
            "give the path of the image to write, e.g. app.img",
        )
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent.canonicalize().map_err(|e| Error::Io {
        what: "the directory for the image".into(),
        path: parent.clone(),
        source: e,
        hint: "create it first (berth build does not create directories)".into(),
    })?;
    if !parent.is_dir() {
        return Err(Error::request("OUT", format!("{} is not a directory", parent.display()), ""));
    }
    let out = parent.join(name);
    if let Ok(meta) = fs::symlink_metadata(&out) {
        if meta.is_dir() {
            return Err(Error::request(
                "OUT",
                format!("{} is a directory", out.display()),
                "give a file name for the image",
            ));
        }
        if !force {
            return Err(Error::request(
                "OUT",
                format!("{} already exists", out.display()),
                "use --force to replace it",
            ));
        }
    }
    Ok(out)
}

fn build_in(
    def: &Definition,
    opts: &BuildOptions,
    output: &Path,
    work: &Path,
    rootfs: &Path,
    scratch: &Path,
    log: &Log,
) -> Result<()> {
    let base = def.bootstrap.base();
    step(
        log,
        &format!("bootstrap: {}{}{base}", def.bootstrap.agent(), if base.is_empty() { "" } else { " " }),
    );
    let ctx = bootstrap::Context {
        rootfs,
        scratch,
        log,
        cache_dir: opts.cache_dir.as_deref(),
        debootstrap_timeout: opts.debootstrap_timeout,
        nohttps: opts.nohttps,
    };
    bootstrap::bootstrap(def, &ctx)?;
    checkpoint()?;
    // Mount points every container runtime expects; harmless when unused.
    for dir in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        ".singularity.d/env",
        ".singularity.d/actions",
        ".singularity.d/libs",
    ] {
        let path = resolve_in_root(rootfs, &Path::new("/").join(dir))?;
        fs::create_dir_all(&path).map_err(|e| Error::io("create", &path, e))?;
    }
    set_mode(&resolve_in_root(rootfs, Path::new("/tmp"))?, 0o1777)?;

    if let Some(setup) = &def.setup {
        step(log, "%setup (on the host)");
        run_setup(setup, def, rootfs, work, log)?;
        checkpoint()?;
    }
    if !def.files.is_empty() {
        step(log, &format!("%files ({} entries)", def.files.len()));
        copy_files(def, rootfs, log)?;
        checkpoint()?;
    }
    if let Some(post) = &def.post {
        step(log, "%post (in the image)");
        // Apptainer lets %post append to the runtime environment through this file.
        let env91 = resolve_in_root(rootfs, Path::new("/.singularity.d/env/91-environment.sh"))?;
        if !env91.exists() {
            write_in_root(rootfs, "/.singularity.d/env/91-environment.sh", b"", 0o755)?;
        }
        run_in_image(post, "%post", rootfs, log)?;
        checkpoint()?;
    }

    step(log, "metadata (/.singularity.d)");
    write_metadata(def, rootfs)?;

    let chroot_test = def.test.as_ref().filter(|_| !opts.notest && opts.test_runner.is_none());
    if let Some(test) = chroot_test {
        step(log, "%test (in a chroot of the image)");
        run_in_image(&Script { body: String::new(), ..test.clone() }, "%test", rootfs, log)
            .map_err(|e| add_hint(e, "fix the test, or build without it with --notest"))?;
        checkpoint()?;
    }

    let pending = PendingOutput { path: temp_output_path(output), done: false };
    step(log, &format!("mksquashfs ({} compression)", opts.compression));
    squash(rootfs, &pending.path, &opts.compression, log)?;
    checkpoint()?;
    let mut pending = pending;
    if opts.format == OutputFormat::Sif {
        let squashfs = scratch.join("rootfs.squashfs");
        fs::rename(&pending.path, &squashfs).map_err(|e| Error::io("move", &squashfs, e))?;
        write_sif(&squashfs, def, &labels_for(def, rootfs), &pending.path)?;
    }
    if let (Some(_), Some(runner)) = (def.test.as_ref().filter(|_| !opts.notest), opts.test_runner) {
        step(log, "%test (in the container)");
        let argv = ["/bin/sh", "/.singularity.d/test"].map(String::from);
        let image = pending.path.clone();
        let outcome = runner::run_fn("%test", log, None, || test_in_child(runner, &image, &argv))?;
        runner::check_outcome(outcome, "the test", "%test", log, None, true)
            .map_err(|e| add_hint(e, "fix the test, or build without it with --notest"))?;
        checkpoint()?;
    }

    set_mode(&pending.path, if opts.format == OutputFormat::Sif { 0o755 } else { 0o644 })?;
    // Data on disk before the name: a crash never leaves a truncated image under OUT's name.
    fs::File::open(&pending.path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("sync", &pending.path, e))?;
    checkpoint()?;
    fs::rename(&pending.path, output).map_err(|e| Error::io("rename into place", output, e))?;
    pending.done = true;
    let size = fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    step(log, &format!("wrote {} ({:.1} MiB)", output.display(), size as f64 / 1048576.0));
    Ok(())
}

/// In the forked child of [`runner::run_fn`]: run the test and leave as it ended.
fn test_in_child(runner: TestRunner, image: &Path, argv: &[String]) -> i32 {
    match runner(image, argv) {
        Ok(Ended::Exited(code)) => code,
        Ok(Ended::Signaled(sig)) => {
            // Ended by the same signal, so the build reports it as such.
            // SAFETY: restoring the default action of one signal in this single-purpose child.
            let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(sig);
            let _ = set.thread_unblock();
            let _ = nix::sys::signal::raise(sig);
            128 + sig as i32
        }
        Err(e) => {
            eprintln!("berth: {e}");
            e.exit_code()
        }
    }
}

fn add_hint(e: Error, extra: &str) -> Error {
    match e {
        Error::Build { what, reason, hint } if hint.is_empty() => {
            Error::Build { what, reason, hint: extra.into() }
        }
        Error::Build { what, reason, hint } => {
            Error::Build { what, reason, hint: format!("{extra}; {hint}") }
        }
        other => other,
    }
}

fn temp_output_path(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!(".{name}.berth-partial-{}", std::process::id()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io("chmod", path, e))
}

/// The environment scripts run with: nothing from the caller's session leaks into the image.
fn base_env() -> Vec<(&'static str, String)> {
    vec![
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("HOME", "/root".into()),
        ("LANG", "C.UTF-8".into()),
        ("TERM", "dumb".into()),
        ("DEBIAN_FRONTEND", "noninteractive".into()),
    ]
}

fn run_setup(setup: &Script, def: &Definition, rootfs: &Path, work: &Path, log: &Log) -> Result<()> {
    let script = work.join("setup.sh");
    fs::write(&script, &setup.body).map_err(|e| Error::io("write", &script, e))?;
    let mut cmd = Command::new(setup.interpreter());
    cmd.arg("-e").arg("-x").arg(&script);
    // The host's environment stays (the user's variables, such as source paths, are the point
    // of %setup), plus the rootfs location under both names.
    cmd.env("BERTH_ROOTFS", rootfs).env("SINGULARITY_ROOTFS", rootfs).env("APPTAINER_ROOTFS", rootfs);
    cmd.env("BERTH_DEFINITION", &def.path);
    run_checked(&mut cmd, "%setup", log, None, true).map_err(|e| at_line(e, def, setup.line))
}

fn at_line(e: Error, def: &Definition, line: usize) -> Error {
    match e {
        Error::Build { what, reason, hint } => {
            Error::Build { what: format!("{what} ({}:{line})", def.path.display()), reason, hint }
        }
        other => other,
    }
}

/// Expand `$VAR` and `${VAR}` from the host environment; an unset variable is an error, so a
/// recipe like vasp.def says which variable to set instead of copying a wrong path.
pub fn expand_env(text: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => return Err(format!("unterminated ${{ in {text:?}")),
            }
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
        } else {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => out.push_str(&v),
                _ => return Err(format!("environment variable {name} is not set")),
            }
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

fn copy_files(def: &Definition, rootfs: &Path, log: &Log) -> Result<()> {
    for file in &def.files {
        let where_ = format!("{}:{}: %files", def.path.display(), file.line);
        let src_text = expand_env(&file.src).map_err(|e| {
            Error::build(
                &where_,
                e,
                "set it to the path of the file to copy (see the comment block of the definition file)",
            )
        })?;
        let src = bootstrap::resolve_source(&src_text, def).map_err(|e| match e {
            Error::Build { reason, hint, .. } => {
                Error::Build { what: format!("{where_} source {src_text}"), reason, hint }
            }
            other => other,
        })?;
        let dest_text = match &file.dest {
            Some(d) => expand_env(d).map_err(|e| Error::build(&where_, e, ""))?,
            None => src_text.clone(),
        };
        let dest_inner = Path::new("/").join(&dest_text);
        // A destination ending in / names a directory to copy into.
        let dest = if dest_text.ends_with('/') {
            let d = resolve_in_root(rootfs, &dest_inner)?;
            fs::create_dir_all(&d).map_err(|e| Error::io("create", &d, e))?;
            d
        } else {
            let parent = resolve_in_root(rootfs, dest_inner.parent().unwrap_or(Path::new("/")))?;
            fs::create_dir_all(&parent).map_err(|e| Error::io("create", &parent, e))?;
            resolve_in_root(rootfs, &dest_inner)?
        };
        let mut cp = Command::new("cp");
        // -L: copy what links point to (the host's links mean nothing inside the image).
        cp.args(["-r", "-L", "--preserve=mode,timestamps", "--"]).arg(&src).arg(&dest);
        run_checked(&mut cp, &where_, log, None, true)?;
    }
    Ok(())
}

/// Host /etc/resolv.conf inside the image while a script runs, so %post can download; the
/// image's own file (or symlink) is put back afterwards.
struct ResolvConf {
    path: PathBuf,
    saved: Option<Saved>,
}

enum Saved {
    File(Vec<u8>),
    Link(PathBuf),
}

impl ResolvConf {
    fn install(rootfs: &Path) -> Result<ResolvConf> {
        let etc = resolve_in_root(rootfs, Path::new("/etc"))?;
        let path = etc.join("resolv.conf");
        let saved = match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => fs::read_link(&path).ok().map(Saved::Link),
            Ok(m) if m.is_file() => fs::read(&path).ok().map(Saved::File),
            _ => None,
        };
        let host = fs::read("/etc/resolv.conf").unwrap_or_default();
        let _ = fs::remove_file(&path);
        fs::write(&path, host).map_err(|e| Error::io("write", &path, e))?;
        Ok(ResolvConf { path, saved })
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        match self.saved.take() {
            Some(Saved::File(data)) => {
                let _ = fs::write(&self.path, data);
            }
            Some(Saved::Link(target)) => {
                let _ = std::os::unix::fs::symlink(target, &self.path);
            }
            None => {}
        }
    }
}

/// Run a script section inside the image: a private mount namespace (so nothing mounted here is
/// visible on the host or outlives the script), /proc, /dev and /sys mounted, then chroot.
/// An empty `script.body` runs the image's own `/.singularity.d/test` with its environment.
fn run_in_image(script: &Script, section: &str, rootfs: &Path, log: &Log) -> Result<()> {
    let interpreter = script.interpreter();
    if !resolve_in_root(rootfs, Path::new(&interpreter))?.exists() {
        return Err(Error::build(
            section,
            format!("the image has no {interpreter} to run it"),
            "bootstrap from a base that has a shell, or add one with %files (e.g. a static busybox as /bin/sh)",
        ));
    }
    let script_inner = if script.body.is_empty() {
        // Through the action script, so the test sees the image's environment, as under Apptainer.
        "/.singularity.d/actions/test".to_string()
    } else {
        write_in_root(rootfs, "/.berth-build/script.sh", script.body.as_bytes(), 0o700)?;
        "/.berth-build/script.sh".to_string()
    };
    let resolv = ResolvConf::install(rootfs)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--fork", "--", "/bin/sh", "-c"]);
    cmd.arg(concat!(
        "set -e; root=\"$1\"; shift; ",
        "mount -t proc proc \"$root/proc\"; ",
        "mount --rbind /dev \"$root/dev\"; ",
        "mount --rbind /sys \"$root/sys\"; ",
        "exec chroot \"$root\" \"$@\"",
    ));
    cmd.arg("berth-chroot").arg(rootfs).arg(&interpreter).arg("-e").arg("-x").arg(&script_inner);
    cmd.env_clear().envs(base_env());
    cmd.env("SINGULARITY_ENVIRONMENT", "/.singularity.d/env/91-environment.sh");
    cmd.env("APPTAINER_ENVIRONMENT", "/.singularity.d/env/91-environment.sh");
    cmd.env("SINGULARITY_ROOTFS", "/").env("BERTH_ROOTFS", "/");
    cmd.current_dir("/");
    let result = run_checked(&mut cmd, section, log, None, true);
    drop(resolv);
    if let Ok(dir) = resolve_in_root(rootfs, Path::new("/.berth-build")) {
        let _ = fsutil::remove_work_dir(&dir);
    }
    result
}

/// Civil date from a Unix time, in UTC: "2026-11-28T15:03:01Z". (No date crate for one label.)
pub fn iso8601_utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

const ENV_SOURCING: &str = "for script in /.singularity.d/env/*.sh; do\n    if [ -f \"$script\" ]; then\n        . \"$script\"\n    fi\ndone\n";

/// Write `/.singularity.d` the way Apptainer lays it out, so berth and Apptainer both run it.
fn write_metadata(def: &Definition, rootfs: &Path) -> Result<()> {
    if let Some(env) = &def.environment {
        let text = format!("#!/bin/sh\n# Custom environment shell code should follow\n\n{env}");
        write_in_root(rootfs, "/.singularity.d/env/90-environment.sh", text.as_bytes(), 0o755)?;
    }
    let has_runscript = resolve_in_root(rootfs, Path::new("/.singularity.d/runscript"))?.exists();
    match &def.runscript {
        Some(rs) => {
            let text = format!("#!{}\n\n{}", rs.interpreter(), rs.body);
            write_in_root(rootfs, "/.singularity.d/runscript", text.as_bytes(), 0o755)?;
        }
        // Keep a base image's runscript (localimage, docker Entrypoint/Cmd); else a shell.
        None if has_runscript => {}
        None => {
            write_in_root(rootfs, "/.singularity.d/runscript", b"#!/bin/sh\n\nexec /bin/sh \"$@\"\n", 0o755)?
        }
    }
    if let Some(help) = &def.help {
        write_in_root(rootfs, "/.singularity.d/runscript.help", help.as_bytes(), 0o644)?;
    }
    if let Some(test) = &def.test {
        let text = format!("#!{}\n\n{}", test.interpreter(), test.body);
        write_in_root(rootfs, "/.singularity.d/test", text.as_bytes(), 0o755)?;
    }
    write_in_root(rootfs, "/.singularity.d/Singularity", def.text.as_bytes(), 0o644)?;

    for (name, body) in [
        ("01-base.sh", "#!/bin/sh\n# berth/Apptainer base environment\n"),
        (
            "99-base.sh",
            "#!/bin/sh\nif [ -z \"${PS1:-}\" ] || [ \"$PS1\" = '$ ' ]; then PS1=\"Berth> \"; fi\nexport PS1\n",
        ),
    ] {
        let inner = format!("/.singularity.d/env/{name}");
        if !resolve_in_root(rootfs, Path::new(&inner))?.exists() {
            write_in_root(rootfs, &inner, body.as_bytes(), 0o755)?;
        }
    }
    let actions = [
        ("exec", format!("#!/bin/sh\n{ENV_SOURCING}exec \"$@\"\n")),
        ("run", format!("#!/bin/sh\n{ENV_SOURCING}if [ -x /.singularity.d/runscript ]; then\n    exec /.singularity.d/runscript \"$@\"\nfi\necho \"No runscript found in the container\" >&2\nexit 1\n")),
        ("shell", format!("#!/bin/sh\n{ENV_SOURCING}exec /bin/sh \"$@\"\n")),
        ("test", format!("#!/bin/sh\n{ENV_SOURCING}if [ -x /.singularity.d/test ]; then\n    exec /.singularity.d/test \"$@\"\nfi\necho \"No test found in the container\" >&2\nexit 0\n")),
    ];
    for (name, body) in actions {
        write_in_root(rootfs, &format!("/.singularity.d/actions/{name}"), body.as_bytes(), 0o755)?;
    }
    // Singularity 2 compatibility links.
    for (link, target) in
        [("singularity", ".singularity.d/runscript"), ("environment", ".singularity.d/env/90-environment.sh")]
    {
        let path = rootfs.join(link);
        if fs::symlink_metadata(&path).is_err() {
            let _ = std::os::unix::fs::symlink(target, &path);
        }
    }

    let labels = labels_for(def, rootfs);
    let json =
        serde_json::to_vec_pretty(&labels).map_err(|e| Error::build("labels.json", e.to_string(), ""))?;
    write_in_root(rootfs, "/.singularity.d/labels.json", &json, 0o644)
}

/// Labels: the base image's, then berth's build facts, then the definition's %labels (which win).
fn labels_for(def: &Definition, rootfs: &Path) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> =
        resolve_in_root(rootfs, Path::new("/.singularity.d/labels.json"))
            .ok()
            .and_then(|p| fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(&b).ok())
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, v.as_str().map(String::from).unwrap_or_else(|| v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut set = |k: &str, v: String| {
        labels.insert(k.to_string(), v);
    };
    set("org.label-schema.schema-version", "1.0".into());
    set("org.label-schema.build-date", iso8601_utc(now));
    set("org.label-schema.build-arch", arch.into());
    set("org.label-schema.usage.berth.version", env!("CARGO_PKG_VERSION").into());
    set("org.label-schema.usage.singularity.deffile.bootstrap", def.bootstrap.agent().into());
    match &def.bootstrap {
        def::Bootstrap::Debootstrap { suite, mirror, include } => {
            set("org.label-schema.usage.singularity.deffile.osversion", suite.clone());
            set("org.label-schema.usage.singularity.deffile.mirrorurl", mirror.clone());
            if !include.is_empty() {
                set("org.label-schema.usage.singularity.deffile.include", include.join(" "));
            }
        }
        def::Bootstrap::Scratch => {}
        other => set("org.label-schema.usage.singularity.deffile.from", other.base()),
    }
    if def.help.is_some() {
        set("org.label-schema.usage", "/.singularity.d/runscript.help".into());
    }
    for (k, v) in &def.labels {
        labels.insert(k.clone(), v.clone());
    }
    labels
}

fn squash(rootfs: &Path, out: &Path, compression: &str, log: &Log) -> Result<()> {
    let terminal = runner::on_terminal();
    // On a terminal, mksquashfs's own progress bar feeds the status line (its \r-redrawn lines
    // stay out of the log). `-progress` forces the bar although stdout is our pipe, and
    // `stdbuf -o0` stops stdio from holding it back until exit.
    let unbuffer = terminal && Path::new("/usr/bin/stdbuf").exists();
    let mut cmd = if unbuffer {
        let mut c = Command::new("/usr/bin/stdbuf");
        c.args(["-o0", "mksquashfs"]);
        c
    } else {
        Command::new("mksquashfs")
    };
    cmd.arg(rootfs).arg(out).args(["-noappend", "-comp", compression]);
    if terminal {
        cmd.arg("-progress");
    } else {
        cmd.args(["-quiet", "-no-progress"]);
    }
    runner::run_checked(&mut cmd, "mksquashfs", log, None, true)
}

/// Fail early when SIF output is asked for but the writer is not in this build.
fn sif_writer_available() -> Result<()> {
    Ok(())
}

/// Wrap a finished SquashFS root filesystem into a SIF file at `out`, with the definition file
/// and labels as SIF data objects.
/// A SIF with the SquashFS as its primary partition, the definition file and the labels, and
/// the `run-singularity` launch line so `./app.sif args` runs its runscript.
fn write_sif(squashfs: &Path, def: &Definition, labels: &BTreeMap<String, String>, out: &Path) -> Result<()> {
    use berth_runtime::image::{SifObject, SifObjectKind};
    let labels =
        serde_json::to_vec_pretty(labels).map_err(|e| Error::build("labels.json", e.to_string(), ""))?;
    let objects = [
        SifObject {
            kind: SifObjectKind::Deffile,
            name: "Singularity".into(),
            data: def.text.clone().into_bytes(),
        },
        SifObject { kind: SifObjectKind::Labels, name: "labels.json".into(), data: labels },
    ];
    berth_runtime::image::write_sif(out, squashfs, &objects, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(1_795_878_181), "2026-11-28T15:03:01Z");
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("BERTH_TEST_EXPAND", "/src/vasp.tgz");
        assert_eq!(expand_env("$BERTH_TEST_EXPAND").unwrap(), "/src/vasp.tgz");
        assert_eq!(expand_env("${BERTH_TEST_EXPAND}.x").unwrap(), "/src/vasp.tgz.x");
        assert_eq!(expand_env("/plain/path").unwrap(), "/plain/path");
        let err = expand_env("${BERTH_TEST_UNSET_VARIABLE}").unwrap_err();
        assert!(err.contains("BERTH_TEST_UNSET_VARIABLE is not set"));
    }

    #[test]
    fn build_needs_root() {
        let err = require_root(nix::unistd::Uid::from_raw(1000)).unwrap_err().to_string();
        assert!(err.contains("root required") && err.contains("--lint"), "{err}");
        assert!(require_root(nix::unistd::Uid::from_raw(0)).is_ok());
    }

    #[test]
    fn output_checks() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_output(&dir.path().join("missing/out.img"), false).unwrap_err().to_string();
        assert!(err.contains("create it first"), "{err}");
        let existing = dir.path().join("x.img");
        fs::write(&existing, b"x").unwrap();
        let err = check_output(&existing, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert_eq!(check_output(&existing, true).unwrap(), existing.canonicalize().unwrap());
        assert!(check_output(dir.path(), true).is_err());
    }
}
