//! Container lifecycle: set up (namespaces + plan), then run a program, hold the container for
//! others to join, or join one.
//!
//! One container per node per job step; tasks join it. A holder sets the container up once and
//! records how to find it; joiners `setns()` into its user and mount namespaces, so processes
//! of one step share namespaces (and so shared memory transports between MPI ranks work).
#![warn(missing_docs)]

use std::io::Write;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::env::{compose, Env};
use crate::error::{Error, Result};
use crate::holder::HolderState;
use crate::metadata::{self, Metadata};
use crate::plan::{HostFacts, Plan};
use crate::request::Action;
use crate::sys::process::{self, Ended};
use crate::sys::real::{FuseKind, FuseServer, RealSys};

/// A container set up in this process's namespaces, root already pivoted.
pub(crate) struct Entered {
    /// The FUSE servers of the image and of a kept overlay, in start order.
    pub fuse: Vec<FuseServer>,
    pub meta: Metadata,
    pub env: Env,
    pub workdir: PathBuf,
}

/// Make sure the per-user state directory exists, is ours and is private. It may live in a
/// world-writable place such as /tmp, so anything we did not create ourselves is refused.
pub(crate) fn ensure_state_dir(dir: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(false).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("cannot create", dir, e))?,
        Err(e) => return Err(Error::io("cannot create", dir, e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| Error::io("cannot stat", dir, e))?;
    let rule = crate::safedir::Rule {
        what: "unsafe state directory",
        deny: 0o077,
        foreign_hint: &|owner| {
            format!(
                "another user, {owner}, made it first; ask them or an administrator to remove it. \
                 Meanwhile point berth elsewhere: XDG_RUNTIME_DIR set to a private (0700) directory \
                 of yours, or state_dir in berth.toml"
            )
        },
    };
    rule.check(dir, (&m).into(), uid)?;
    Ok(())
}

/// Set up the container of `plan` in this process: new namespaces, mounts, pivot_root.
pub(crate) fn enter(plan: &Plan) -> Result<Entered> {
    ensure_state_dir(&plan.state_dir, plan.user.uid)?;
    // The ids the user has inside: what the FUSE mount's owner options must name.
    let inside = if plan.remap_root { (0, 0) } else { (plan.user.uid, plan.user.gid) };
    process::enter_user_and_mount_ns_as(plan.user.uid, plan.user.gid, inside)?;
    let mut sys = RealSys::new(inside.0, inside.1);
    crate::apply::apply(plan, &mut sys)?;
    let meta = metadata::read(Path::new("/"));
    let env = crate::env::try_compose(&plan.env, &meta.env_files)?;
    let workdir = choose_workdir(&plan.workdir, plan.workdir_required)?;
    Ok(Entered { fuse: std::mem::take(&mut sys.fuse), meta, env, workdir })
}

fn choose_workdir(candidates: &[PathBuf], required: bool) -> Result<PathBuf> {
    for (i, w) in candidates.iter().enumerate() {
        if w.is_dir() {
            return Ok(w.clone());
        }
        if required && i == 0 {
            return Err(Error::request(
                format!("workdir {}", w.display()),
                "does not exist in the container",
                "create it in the image or bind a host directory there (-B host_dir:/path)",
            ));
        }
    }
    Ok(PathBuf::from("/"))
}

/// The argv an action runs, given the image's metadata.
pub(crate) fn action_argv(action: &Action, meta: &Metadata, env: &Env) -> Result<Vec<String>> {
    Ok(match action {
        Action::Exec(argv) => argv.clone(),
        Action::Run(args) => {
            if meta.runscript.is_some() {
                let mut v = vec!["/bin/sh".to_string(), crate::entrypoint::RUNSCRIPT.to_string()];
                v.extend(args.iter().cloned());
                v
            } else {
                return Err(Error::request(
                    "berth run",
                    "the image has no runscript",
                    "use `berth exec IMAGE COMMAND` to run a program from it",
                ));
            }
        }
        Action::Shell => {
            let shell = env
                .get("SHELL")
                .filter(|s| Path::new(s).exists())
                .map(str::to_string)
                .or_else(|| {
                    ["/bin/bash", "/bin/sh"].iter().find(|s| Path::new(s).exists()).map(|s| s.to_string())
                })
                .ok_or_else(|| {
                    Error::request(
                        "berth shell",
                        "the image has no /bin/sh",
                        "use `berth exec` with a program it has",
                    )
                })?;
            vec![shell]
        }
    })
}

/// Run the plan's action in a new container and return how it ended. The FUSE server is
/// stopped before returning; all mounts go with the namespace.
pub(crate) fn run(plan: &Plan) -> Result<Ended> {
    // Read from the host's side, before the root changes.
    let slow_image = slow_to_decompress(&plan.image);
    let mut entered = enter(plan)?;
    if matches!(plan.action, Action::Shell) {
        entered.env.set("PS1", "Berth> ");
    }
    let argv = action_argv(&plan.action, &entered.meta, &entered.env)?;
    let env = entered.env.vars().to_vec();
    let workdir = entered.workdir.clone();
    // Read the program ahead while it starts (the child is forked after the thread exists;
    // glibc's fork keeps malloc usable in the child, and the child only execs).
    if let Some(program) =
        argv.first().filter(|_| entered.fuse.iter().any(|f| f.kind == FuseKind::Image) && slow_image)
    {
        warm_in_background(program, &entered.env, &workdir);
    }
    let fuse_pids: Vec<i32> = entered.fuse.iter().map(|f| f.pid()).collect();
    let ended =
        process::spawn_and_wait(&process::Program::new(&workdir, &argv, &env), &fuse_pids, |pid, st| {
            if fuse_pids.contains(&pid.as_raw()) {
                tracing::warn!("a FUSE server of the container ended early: {st:?}");
            }
        });
    crate::sys::real::stop_all(std::mem::take(&mut entered.fuse));
    ended
}

/// The most of a program [`warm_in_background`] reads: the start of very large binaries only,
/// so a program that touches little of itself does not pay for decompressing all of it.
const WARM_LIMIT: u64 = 64 << 20;

/// Read `program` (found the way exec finds it: the container's PATH, or relative to the
/// working directory) into the page cache in a background thread. The first exec of a binary
/// in a compressed image otherwise pages it in by faults, each a small read for which the
/// image's whole block is decompressed again, while every rank of the node waits on them; one
/// sequential read decompresses each block once. Best effort: it never delays the holder and
/// a program it cannot find is simply not warmed.
pub(crate) fn warm_in_background(program: &str, env: &Env, workdir: &Path) {
    let Some(path) = find_program(program, env.get("PATH"), workdir) else { return };
    process::spawn_without_signals("berth-warm", move || {
        use std::io::Read;
        let Ok(f) = std::fs::File::open(&path) else { return };
        let mut buf = vec![0u8; 1 << 20];
        let mut f = f.take(WARM_LIMIT);
        while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
    });
}

/// Whether faults on `image`'s files are costly enough to read a program ahead
/// ([`warm_in_background`]): data compressed with gzip, xz, lzma or zstd, where each fault
/// decompresses a whole block again. With lz4, lzo or uncompressed data a fault is cheap, and
/// reading the whole program only copies it twice through the FUSE server on a CPU the
/// program itself could use.
pub(crate) fn slow_to_decompress(image: &crate::image::Image) -> bool {
    use crate::image::{squashfs, FsType, RootFs};
    /// SQUASHFS_NOD: data blocks stored uncompressed (`mksquashfs -noD`).
    const DATA_UNCOMPRESSED: u16 = 1 << 1;
    let RootFs::Embedded { fs: FsType::Squashfs, offset, .. } = &image.root else { return false };
    squashfs::superblock_at(&image.path, *offset).is_ok_and(|sb| {
        matches!(sb.compression, "gzip" | "xz" | "lzma" | "zstd") && sb.flags & DATA_UNCOMPRESSED == 0
    })
}

/// The file exec would run for `program` (see [`process::path_candidates`]), relative paths
/// taken from `workdir`, where the program will start.
fn find_program(program: &str, path: Option<&str>, workdir: &Path) -> Option<PathBuf> {
    process::path_candidates(program, path).into_iter().map(|c| workdir.join(c)).find(|p| p.is_file())
}

/// A process that joined a held container (cwd `/` of the container).
pub struct Joined {
    /// The record of the holder that was joined.
    pub state: HolderState,
    /// What was read of the image's metadata (its environment files).
    pub meta: Metadata,
}

/// Join holder `name` in this process (must be single-threaded). Used by `berth exec --join`
/// and by the Slurm plugin in each task.
pub(crate) fn join_in_process(cfg: &Config, uid: u32, name: &str) -> Result<Joined> {
    let state = crate::holder::find(cfg, uid, name)?;
    process::join_namespaces(state.pid, state.user_ns, state.mnt_ns)?;
    let meta = Metadata { env_files: metadata::read_env_files(Path::new("/")), ..Metadata::default() };
    Ok(Joined { meta, state })
}

impl Joined {
    /// The environment for a joining task: its own host variables filtered like the holder's,
    /// the image's environment, then the holder's overrides.
    pub fn env(&self, cfg: &Config, host: &HostFacts) -> Env {
        let mut envplan = crate::plan::filter_host_env(&host.env, self.state.cleanenv, cfg, &host.user);
        envplan.overrides = self.state.env.overrides.clone();
        envplan.ld_library_path_prepend = self.state.env.ld_library_path_prepend.clone();
        envplan.path_append = self.state.env.path_append.clone();
        compose(&envplan, &self.meta.env_files)
    }

    /// Only what the container defines (the image's environment, the holder's overrides,
    /// PATH and injected library paths), for a frontend that adds it to a task environment
    /// it does not own (the Slurm plugin, through spank_setenv).
    pub fn container_env(&self, cfg: &Config, user: &crate::plan::UserInfo) -> Env {
        let mut envplan = crate::plan::filter_host_env(&[], true, cfg, user);
        envplan.overrides = self.state.env.overrides.clone();
        envplan.ld_library_path_prepend = self.state.env.ld_library_path_prepend.clone();
        envplan.path_append = self.state.env.path_append.clone();
        compose(&envplan, &self.meta.env_files)
    }

    /// Where a joining task starts: the holder's required workdir, else the task's own
    /// directory `cwd` when the container has it, else the holder's other candidates.
    pub fn workdir(&self, cwd: Option<&Path>) -> Result<PathBuf> {
        let mut cands = self.state.workdir.clone();
        if !self.state.workdir_required {
            if let Some(c) = cwd {
                cands.insert(0, c.to_path_buf());
            }
        }
        choose_workdir(&cands, self.state.workdir_required)
    }
}

/// Read an image's metadata without starting anything in it (see [`read_from_image`]).
pub fn read_image_metadata(image: &crate::image::Image, cfg: &Config) -> Result<Metadata> {
    use crate::image::{FsType, RootFs};
    if let RootFs::Embedded { fs: FsType::Ext3, .. } = &image.root {
        return Ok(Metadata::default());
    }
    read_from_image(image, cfg, |root| Ok(metadata::read(root)))
}

/// Run `read` on an image's root filesystem without starting anything in it: a directory is
/// read in place; for an embedded SquashFS a short-lived child applies a plan that only
/// mounts the image ([`crate::plan`]'s first steps), in its own namespaces, and sends the
/// result back as JSON. Ext3 images (privileged mode only) are refused.
pub fn read_from_image<T, F>(image: &crate::image::Image, cfg: &Config, read: F) -> Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
    F: FnOnce(&Path) -> Result<T>,
{
    use crate::image::{FsType, RootFs};
    match &image.root {
        RootFs::Directory { path } => return read(path),
        RootFs::Embedded { fs: FsType::Ext3, .. } => {
            return Err(Error::image(
                &image.path,
                "cannot read an ext3 image without mounting it as root",
                "convert it once to SquashFS (e.g. `apptainer build new.sif old.img`)",
            ))
        }
        RootFs::Embedded { fs: FsType::Squashfs, .. } => {}
    }
    let mut image = image.clone();
    image.path = std::fs::canonicalize(&image.path).unwrap_or(image.path);
    let host = HostFacts::probe()?;
    let (uid, gid) = (host.user.uid, host.user.gid);
    // Only the image's mount, from the same steps every container starts with.
    let plan = crate::plan::mount_only(&image, cfg, &host)?;
    let state = plan.state_dir.clone();
    ensure_state_dir(&state, uid)?;
    // An unlinked file rather than a pipe: the child can write any amount without waiting
    // for a reader.
    let scratch = state.join(format!(".meta-{}", std::process::id()));
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&scratch)
        .map_err(|e| Error::io("cannot create", &scratch, e))?;
    let _ = std::fs::remove_file(&scratch);
    let mut out_child = out.try_clone().map_err(|e| Error::io("cannot dup", &scratch, e))?;
    let ended = process::fork_and_wait(
        move || {
            let result = (|| -> Result<T> {
                process::enter_user_and_mount_ns(uid, gid)?;
                let mut sys = RealSys::new(uid, gid);
                crate::apply::apply(&plan, &mut sys)?;
                read(crate::plan::image_at(&plan).unwrap_or(Path::new("/")))
            })();
            let msg = match result {
                Ok(m) => serde_json::json!({ "ok": m }),
                Err(e) => serde_json::json!({ "err": e.to_string() }),
            };
            let _ = out_child.write_all(msg.to_string().as_bytes());
            0
        },
        &[],
        |_, _| {},
    )?;
    let mut text = String::new();
    let mut out = out;
    std::io::Seek::rewind(&mut out).map_err(|e| Error::io("cannot read", &scratch, e))?;
    std::io::Read::read_to_string(&mut out, &mut text).map_err(|e| Error::io("cannot read", &scratch, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| Error::image(&image.path, format!("reading it failed ({ended:?})"), ""))?;
    if let Some(e) = v.get("err").and_then(|e| e.as_str()) {
        return Err(Error::image(&image.path, format!("cannot read it: {e}"), ""));
    }
    serde_json::from_value(v["ok"].clone())
        .map_err(|e| Error::image(&image.path, format!("bad answer: {e}"), ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read-ahead only where a fault decompresses a block again at a real cost.
    #[test]
    fn programs_are_read_ahead_only_from_slowly_decompressed_images() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/prog"), vec![7u8; 300_000]).unwrap();
        let mut made = 0;
        for (name, args, slow) in [
            ("gzip", &["-comp", "gzip"][..], true),
            ("zstd", &["-comp", "zstd"][..], true),
            ("lz4", &["-comp", "lz4"][..], false),
            ("plain", &["-noD"][..], false),
        ] {
            let out = dir.path().join(format!("{name}.sqsh"));
            let ok = std::process::Command::new("mksquashfs")
                .arg(&tree)
                .arg(&out)
                .args(["-noappend", "-quiet", "-no-progress"])
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                continue; // mksquashfs missing, or built without this compressor
            }
            let img = crate::image::open(&out).unwrap();
            assert_eq!(slow_to_decompress(&img), slow, "{name}");
            made += 1;
        }
        if made > 0 {
            let dir_img = crate::image::open(&tree).unwrap();
            assert!(!slow_to_decompress(&dir_img));
        }
    }

    #[test]
    fn programs_are_found_as_exec_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(b.join("prog")).unwrap(); // a directory is not a program
        std::fs::write(a.join("prog"), b"x").unwrap();
        std::fs::write(b.join("only_b"), b"x").unwrap();
        let path = format!("{}:{}:relative", b.display(), a.display());
        assert_eq!(find_program("prog", Some(&path), Path::new("/")), Some(a.join("prog")));
        assert_eq!(find_program("only_b", Some(&path), Path::new("/")), Some(b.join("only_b")));
        assert_eq!(find_program("missing", Some(&path), Path::new("/")), None);
        assert_eq!(find_program("a/prog", None, dir.path()), Some(dir.path().join("a/prog")));
        assert_eq!(
            find_program(&a.join("prog").display().to_string(), None, Path::new("/x")),
            Some(a.join("prog"))
        );
        assert_eq!(find_program("", Some(&path), dir.path()), None);
    }
}
