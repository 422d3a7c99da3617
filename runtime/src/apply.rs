//! Apply a [`Plan`]'s mount steps through [`MountOps`]. The caller has already entered fresh
//! user and mount namespaces; everything done here is private to them and disappears with them.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::{Error, Result};
use crate::inject::InjectPlan;
use crate::plan::{ImageMount, PathKind, Plan, Step};
use crate::sys::{Attrs, MountOps};

/// Symlinks every Linux `/dev` has.
const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

/// The new root inside the staging area.
pub(crate) fn new_root(plan: &Plan) -> PathBuf {
    plan.steps
        .iter()
        .find_map(|s| match s {
            Step::Overlay { at, .. } => Some(at.clone()),
            _ => None,
        })
        .unwrap_or_else(|| plan.state_dir.join("mnt/root"))
}

pub(crate) fn apply(plan: &Plan, sys: &mut dyn MountOps) -> Result<()> {
    let root = new_root(plan);
    let mut staging = PathBuf::new();
    // The injection completed for this image (its checks passed), once the image is mounted:
    // before the overlay, so that only what will be bound gets a mount point.
    let mut finished: Option<InjectPlan> = None;
    for step in &plan.steps {
        match step {
            Step::Staging { at } => {
                sys.mkdir_all(at)?;
                sys.mount(
                    Some(Path::new("tmpfs")),
                    at,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=0755"),
                )?;
                sys.mount(None, at, None, MsFlags::MS_UNBINDABLE, None)?;
                staging = at.clone();
            }
            Step::Image { mount, at } => {
                sys.mkdir_all(at)?;
                match mount {
                    ImageMount::Squashfuse { program, library, image, offset } => {
                        sys.start_squashfuse(program, library, image, *offset, at)?
                    }
                    ImageMount::Directory { path } => {
                        sys.mount(Some(path), at, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
                        sys.set_attrs(at, true, Attrs::SAFE_RO)?;
                    }
                }
            }
            Step::Overlay { lower, upper, work, at, persistent } => {
                // overlayfs clones the upper layer's mount, which the unbindable staging mount
                // forbids: the layers get a tmpfs of their own.
                let layers = upper.parent().unwrap_or(upper);
                sys.mkdir_all(layers)?;
                sys.mount(
                    Some(Path::new("tmpfs")),
                    layers,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=0755"),
                )?;
                for d in [upper, work, at] {
                    sys.mkdir_all(d)?;
                }
                finished = finish_injection(plan, lower)?;
                prepare_mount_points(plan, finished.as_ref(), sys, lower, upper)?;
                match persistent {
                    None => kernel_overlay(
                        sys,
                        &format!(
                            "lowerdir={},upperdir={},workdir={}",
                            lower.display(),
                            upper.display(),
                            work.display()
                        ),
                        at,
                    )?,
                    Some(kept) => mount_kept_layer(sys, kept, lower, upper, at)?,
                }
            }
            Step::Dev { nodes, dirs } => {
                let dev = sys.resolve_in_root(&root, Path::new("/dev"))?;
                sys.mkdir_all(&dev)?;
                sys.mount(
                    Some(Path::new("tmpfs")),
                    &dev,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("mode=0755,size=65536k"),
                )?;
                for n in nodes {
                    let t = dev.join(n.strip_prefix("/dev").unwrap_or(n));
                    sys.ensure_file(&t)?;
                    sys.mount(Some(n), &t, None, MsFlags::MS_BIND, None)?;
                    sys.set_attrs(&t, false, Attrs { nosuid: true, noexec: true, ..Attrs::default() })?;
                }
                for d in dirs {
                    let t = dev.join(d.strip_prefix("/dev").unwrap_or(d));
                    sys.mkdir_all(&t)?;
                    sys.mount(Some(d), &t, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
                    sys.set_attrs(&t, true, Attrs::SAFE)?;
                }
                for (name, target) in DEV_LINKS {
                    sys.symlink(Path::new(target), &dev.join(name))?;
                }
            }
            Step::Bind { src, dst, kind, readonly, why } => {
                let target = sys.resolve_in_root(&root, dst)?;
                match kind {
                    PathKind::Dir => sys.mkdir_all(&target),
                    PathKind::File => sys.ensure_file(&target),
                }
                .map_err(|e| bind_error(src, dst, why, e))?;
                sys.mount(Some(src), &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
                    .map_err(|e| bind_error(src, dst, why, e))?;
                sys.set_attrs(&target, true, if *readonly { Attrs::SAFE_RO } else { Attrs::SAFE })?;
            }
            Step::Inject { .. } => {
                let done = match finished.take() {
                    Some(done) => Some(done),
                    None => finish_injection(plan, &root)?,
                };
                for item in done.iter().flat_map(|d| &d.items) {
                    bind_injected(sys, &root, item)?;
                }
            }
            Step::UserDb { dst, entries } => {
                let target = sys.resolve_in_root(&root, dst)?;
                if let Some(src) = host_dir_bound_over(plan, dst) {
                    // The user bound a host directory over this file's directory (`-B ~/dir:/etc`):
                    // creating the mount point would leave an empty file in that host directory.
                    // Their own file, if they have one there, still gets their entry added.
                    if !sys.exists(&target) {
                        tracing::warn!(
                            "{} comes from {} (a bind), which has no {}: your user and group names \
                             are not known inside the container",
                            dst.parent().unwrap_or(dst).display(),
                            src.display(),
                            dst.file_name().unwrap_or_default().to_string_lossy()
                        );
                        continue;
                    }
                }
                let image_copy = sys.read_file(&target).unwrap_or_default();
                let merged = merge_user_db(&image_copy, entries);
                bind_generated_file(sys, &staging, dst, &target, merged.as_bytes(), None)?;
            }
            Step::OwnFile { dst, data, mode } => {
                let target = sys.resolve_in_root(&root, dst)?;
                bind_generated_file(sys, &staging, dst, &target, data.as_bytes(), Some(*mode))?;
            }
            Step::ReadonlyRoot => sys.set_attrs(&root, false, Attrs::RO)?,
            Step::PivotRoot => sys.pivot_root(&root)?,
        }
    }
    Ok(())
}

/// Bind a file berth generates (`data`; `mode`, else 0644) read-only over `target`, the
/// container's `dst`. The file is kept on the layers' tmpfs: nothing can be bound from the
/// unbindable staging mount.
fn bind_generated_file(
    sys: &mut dyn MountOps,
    staging: &Path,
    dst: &Path,
    target: &Path,
    data: &[u8],
    mode: Option<u32>,
) -> Result<()> {
    let file = staging.join("overlay/files").join(dst.file_name().unwrap_or(dst.as_os_str()));
    sys.mkdir_all(file.parent().unwrap_or(staging))?;
    sys.write_file(&file, data)?;
    if let Some(mode) = mode {
        sys.chmod(&file, mode)?;
    }
    sys.ensure_file(target)?;
    sys.mount(Some(&file), target, None, MsFlags::MS_BIND, None)?;
    sys.set_attrs(target, false, Attrs::SAFE_RO)
}

/// `lowerdir=...,upperdir=...,workdir=...` (`layers`) mounted by the kernel's overlayfs on `at`
/// in the user namespace (`userxattr`).
fn kernel_overlay(sys: &mut dyn MountOps, layers: &str, at: &Path) -> Result<()> {
    sys.mount(
        Some(Path::new("overlay")),
        at,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("{layers},userxattr")),
    )
}

/// Mount the overlay whose writable layer is the user's directory: the mount points stay in
/// the tmpfs layer `mount_points`, now read-only above the image, so that the directory keeps
/// only what the user changed.
fn mount_kept_layer(
    sys: &mut dyn MountOps,
    kept: &crate::plan::KeptLayer,
    image: &Path,
    mount_points: &Path,
    at: &Path,
) -> Result<()> {
    use crate::config::OverlayMount;
    let (upper, work) = (crate::overlay::upper(&kept.dir), crate::overlay::work(&kept.dir));
    sys.mkdir_all(&upper)?;
    sys.mkdir_all(&work)?;
    let layers = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        mount_points.display(),
        image.display(),
        upper.display(),
        work.display()
    );
    let kernel = |sys: &mut dyn MountOps| kernel_overlay(sys, &layers, at);
    match kept.via {
        OverlayMount::Kernel => kernel(sys).map_err(|e| overlay_error(&kept.dir, e)),
        OverlayMount::Fuse => sys.start_fuse_overlay(&kept.fuse_program, &layers, at),
        OverlayMount::Auto => match kernel(sys) {
            Ok(()) => Ok(()),
            Err(refused) => {
                tracing::debug!("kernel overlayfs refused ({refused}); trying {}", kept.fuse_program);
                sys.start_fuse_overlay(&kept.fuse_program, &layers, at).map_err(|fuse| {
                    Error::request(
                        format!("--overlay {}", kept.dir.display()),
                        format!("the kernel refused the overlay ({refused}) and so did fuse-overlayfs ({fuse})"),
                        "unprivileged overlays need Linux 5.11 or later, or fuse-overlayfs; and DIR on a local \
                         filesystem with user extended attributes",
                    )
                })
            }
        },
    }
}

/// The kernel's refusal to mount a persistent overlay, with what the user can do about it.
fn overlay_error(dir: &Path, e: Error) -> Error {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    Error::request(
        format!("--overlay {}", dir.display()),
        format!("the kernel (Linux {release}) refused the overlay mount: {e}"),
        "unprivileged overlays need Linux 5.11 or later and a local filesystem with user extended \
         attributes for DIR; an overlay directory made by another tool (e.g. Apptainer as root, with \
         trusted.* attributes) cannot be reused: start from an empty directory",
    )
}

/// The plan's injection checked against and completed for the image at `image_root` (not a
/// system call: the glibc and MPI ABI checks read the mounted image); None without injection.
fn finish_injection(plan: &Plan, image_root: &Path) -> Result<Option<InjectPlan>> {
    let Some(injected) = plan.steps.iter().find_map(|s| match s {
        Step::Inject { plan } => Some(plan),
        _ => None,
    }) else {
        return Ok(None);
    };
    crate::inject::finish_for_image(injected.as_ref().clone(), image_root).map(Some)
}

/// Create, in the overlay's upper layer and before the overlay is mounted, every mount point
/// the image lacks (for the injection, only what `injected`, completed for this image, binds).
/// Through the mounted overlay the user could not: the image's directories belong to root,
/// who is not mapped in the user's namespace.
fn prepare_mount_points(
    plan: &Plan,
    injected: Option<&InjectPlan>,
    sys: &mut dyn MountOps,
    lower: &Path,
    upper: &Path,
) -> Result<()> {
    let mut wanted: Vec<(&Path, PathKind)> = vec![];
    for s in &plan.steps {
        match s {
            Step::Dev { .. } => wanted.push((Path::new("/dev"), PathKind::Dir)),
            Step::Bind { dst, kind, .. } => wanted.push((dst, *kind)),
            Step::UserDb { dst, .. } | Step::OwnFile { dst, .. } => wanted.push((dst, PathKind::File)),
            Step::Inject { .. } => {
                for i in injected.iter().flat_map(|p| &p.items) {
                    // Devices go into berth's own /dev tmpfs, made later; /proc and /sys are
                    // the kernel's. Under /.berth (not in any image) the user may create
                    // mount points later, and only for what the image checks let through: an
                    // empty placeholder in the library path would break the loader.
                    if !["/dev", "/proc", "/sys", "/.berth"].iter().any(|k| i.container_path.starts_with(k)) {
                        let kind = if i.kind == crate::inject::ItemKind::Dir {
                            PathKind::Dir
                        } else {
                            PathKind::File
                        };
                        wanted.push((&i.container_path, kind));
                    }
                }
            }
            _ => {}
        }
    }
    for (dst, kind) in wanted {
        let in_image = sys.resolve_in_root(lower, dst)?;
        if sys.exists(&in_image) {
            continue;
        }
        let rel = in_image.strip_prefix(lower).unwrap_or(&in_image);
        // Parent directories keep the image's permission bits where the image has them.
        let mut cur_lower = lower.to_path_buf();
        let mut cur_upper = upper.to_path_buf();
        let comps: Vec<_> = rel.components().collect();
        for (i, c) in comps.iter().enumerate() {
            cur_lower.push(c);
            cur_upper.push(c);
            let last = i + 1 == comps.len();
            if last && kind == PathKind::File {
                sys.ensure_file(&cur_upper)?;
            } else if !sys.exists(&cur_upper) {
                sys.mkdir_all(&cur_upper)?;
                let mode = sys.dir_mode(&cur_lower).unwrap_or(0o755);
                sys.chmod(&cur_upper, mode)?;
            }
        }
    }
    Ok(())
}

fn bind_injected(sys: &mut dyn MountOps, root: &Path, item: &crate::inject::InjectItem) -> Result<()> {
    use crate::inject::ItemKind;
    let target = sys.resolve_in_root(root, &item.container_path)?;
    // /proc and /sys are the kernel's (bound from the host): what the kernel does not show
    // there cannot be created, and what it shows is already the host's.
    if (item.container_path.starts_with("/proc") || item.container_path.starts_with("/sys"))
        && !sys.exists(&target)
    {
        tracing::debug!("{} is not provided by this kernel; not bound", item.container_path.display());
        return Ok(());
    }
    match item.kind {
        ItemKind::Dir => sys.mkdir_all(&target)?,
        _ => sys.ensure_file(&target)?,
    }
    let recursive = if item.kind == ItemKind::Dir { MsFlags::MS_REC } else { MsFlags::empty() };
    sys.mount(Some(&item.host_path), &target, None, MsFlags::MS_BIND | recursive, None)
        .map_err(|e| bind_error(&item.host_path, &item.container_path, &item.why, e))?;
    // Device nodes must stay usable (no nodev); nothing injected may gain privileges.
    let attrs = match item.kind {
        ItemKind::Device => Attrs { readonly: item.readonly, nosuid: true, noexec: true, nodev: false },
        _ => Attrs { readonly: item.readonly, ..Attrs::SAFE },
    };
    sys.set_attrs(&target, item.kind == ItemKind::Dir, attrs)
}

fn bind_error(src: &Path, dst: &Path, why: &str, e: Error) -> Error {
    Error::request(
        format!("bind {} -> {} ({why})", src.display(), dst.display()),
        e.to_string(),
        "check that the source is readable by you and the destination is a valid path in the image",
    )
}

/// The host directory a bind puts over `dst`'s directory, if one does (the last such bind wins,
/// as it is mounted last).
fn host_dir_bound_over<'a>(plan: &'a Plan, dst: &Path) -> Option<&'a Path> {
    plan.steps.iter().rev().find_map(|s| match s {
        Step::Bind { src, dst: bind_dst, kind: PathKind::Dir, .. } if dst.starts_with(bind_dst) => {
            Some(src.as_path())
        }
        _ => None,
    })
}

/// The image's passwd/group file with berth's entries replacing any of the same names.
pub(crate) fn merge_user_db(image_copy: &str, entries: &[(String, String)]) -> String {
    let ours = |l: &str| entries.iter().any(|(key, _)| l.split(':').next() == Some(key.as_str()));
    let mut out: String = image_copy.lines().filter(|l| !ours(l)).map(|l| format!("{l}\n")).collect();
    for (_, line) in entries {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::plan::tests::{facts, sqfs_image};
    use crate::request::{Action, Request};
    use crate::sys::Recorder;

    #[test]
    fn mount_sequence_for_a_sif_image() {
        let req = Request::new("app.sif".into(), Action::Shell);
        let plan = crate::plan::plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        let mut rec = Recorder::default();
        rec.files.push((
            "/tmp/berth-1001/mnt/root/etc/passwd".into(),
            "root:x:0:0::/root:/bin/sh\nalice:x:5:5::/:/bin/false\n".into(),
        ));
        apply(&plan, &mut rec).unwrap();
        let ops = rec.ops.join("\n");
        let pos = |needle: &str| ops.find(needle).unwrap_or_else(|| panic!("missing {needle:?} in\n{ops}"));
        // Staging first, unbindable; then the image at its offset; then the overlay root.
        assert!(pos("mount tmpfs /tmp/berth-1001/mnt tmpfs") < pos("MS_UNBINDABLE"));
        assert!(
            pos("MS_UNBINDABLE")
                < pos("squashfuse squashfuse_ll library=libsquashfuse_ll.so.0 /images/app.sif offset=4096 on /tmp/berth-1001/mnt/image")
        );
        assert!(pos("offset=4096") < pos("mount overlay /tmp/berth-1001/mnt/root overlay"));
        // Binds land under the new root, recursive, then made nosuid,nodev.
        assert!(pos("mount /home/alice /tmp/berth-1001/mnt/root/home/alice - MsFlags(MS_BIND | MS_REC)")
            < pos("attrs /tmp/berth-1001/mnt/root/home/alice rec=true Attrs { readonly: false, nosuid: true, nodev: true"));
        assert!(ops.contains("attrs /tmp/berth-1001/mnt/root/etc/hosts rec=true Attrs { readonly: true"));
        // The user's passwd entry replaces the image's one of the same name.
        assert!(ops.contains(r#"write /tmp/berth-1001/mnt/overlay/files/passwd "root:x:0:0::/root:/bin/sh\nalice:x:1001:1001:alice:/home/alice:/bin/sh\n""#), "{ops}");
        // Read-only root, then pivot, last.
        let n = rec.ops.len();
        assert!(rec.ops[n - 2].starts_with("attrs /tmp/berth-1001/mnt/root rec=false Attrs { readonly: true"));
        assert_eq!(rec.ops[n - 1], "pivot_root /tmp/berth-1001/mnt/root");
    }

    /// `--overlay DIR`: mount points go to the tmpfs layer, which becomes a lower layer above
    /// the image; DIR/upper is the writable layer; the root stays writable.
    #[test]
    fn kept_overlay_layers_and_mount_points() {
        for (via, expect) in [
            (crate::config::OverlayMount::Auto, "mount overlay /tmp/berth-1001/mnt/root overlay"),
            (crate::config::OverlayMount::Fuse, "fuse-overlay fuse-overlayfs "),
        ] {
            let mut req = Request::new("app.sif".into(), Action::Shell);
            req.overlay = Some("/data/ovl".into());
            let cfg = Config { overlay_mount: via, ..Config::default() };
            let plan = crate::plan::plan(&req, &sqfs_image(), &cfg, &facts(), None).unwrap();
            let mut rec = Recorder::default();
            apply(&plan, &mut rec).unwrap();
            let ops = rec.ops.join("\n");
            let pos =
                |needle: &str| ops.find(needle).unwrap_or_else(|| panic!("missing {needle:?} in\n{ops}"));
            let layers = "lowerdir=/tmp/berth-1001/mnt/overlay/upper:/tmp/berth-1001/mnt/image,\
                          upperdir=/data/ovl/upper,workdir=/data/ovl/work";
            assert!(pos("mkdir /data/ovl/upper") < pos(expect) && pos("mkdir /data/ovl/work") < pos(expect));
            assert!(pos("touch /tmp/berth-1001/mnt/overlay/upper/etc/hosts") < pos(expect), "{ops}");
            assert!(ops.contains(layers), "{ops}");
            // The kernel needs user xattrs in a user namespace; fuse-overlayfs has no such option.
            assert_eq!(
                ops.contains(&format!("{layers},userxattr")),
                via == crate::config::OverlayMount::Auto
            );
            assert!(!ops.contains("touch /data/ovl") && !ops.contains("mkdir /data/ovl/upper/"), "{ops}");
            assert!(
                !ops.contains("attrs /tmp/berth-1001/mnt/root rec=false Attrs { readonly: true"),
                "{ops}"
            );
        }
    }

    /// The entrypoint launcher: written on the layers' tmpfs, mode 0555, bound read-only and
    /// nosuid,nodev at /.berth/entrypoint, its mount point made in the tmpfs layer before the
    /// overlay (with `--overlay DIR` too: nothing of it lands in the user's directory).
    #[test]
    fn the_entrypoint_launcher_is_a_read_only_bind_in_every_container() {
        for kept in [None, Some("/data/ovl")] {
            let mut req = Request::new("app.sif".into(), Action::Shell);
            req.overlay = kept.map(Into::into);
            let plan = crate::plan::plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
            let mut rec = Recorder::default();
            apply(&plan, &mut rec).unwrap();
            let ops = rec.ops.join("\n");
            let pos =
                |needle: &str| ops.find(needle).unwrap_or_else(|| panic!("missing {needle:?} in\n{ops}"));
            let file = "/tmp/berth-1001/mnt/overlay/files/entrypoint";
            assert!(
                pos("touch /tmp/berth-1001/mnt/overlay/upper/.berth/entrypoint")
                    < pos("overlay /tmp/berth-1001/mnt/root")
            );
            assert!(ops.contains(&format!("write {file} \"#!/bin/sh\\n")), "{ops}");
            assert!(pos(&format!("write {file}")) < pos(&format!("chmod {file} 555")));
            let bind =
                format!("mount {file} /tmp/berth-1001/mnt/root/.berth/entrypoint - MsFlags(MS_BIND) -");
            assert!(pos(&format!("chmod {file} 555")) < pos(&bind));
            assert!(pos(&bind) < pos("attrs /tmp/berth-1001/mnt/root/.berth/entrypoint rec=false Attrs { readonly: true, nosuid: true, nodev: true, noexec: false }"));
            assert!(pos(&bind) < pos("pivot_root"));
            assert!(!ops.contains("/data/ovl/upper/.berth"), "{ops}");
        }
        // A host directory bound over /.berth hides the launcher, rather than getting its
        // mount point: the launcher is bound before any bind.
        let mut req = Request::new("app.sif".into(), Action::Shell);
        req.binds.push(crate::request::BindSpec::parse("/data/mine:/.berth").unwrap());
        let plan = crate::plan::plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        let mut rec = Recorder::default();
        apply(&plan, &mut rec).unwrap();
        let ops = rec.ops.join("\n");
        let launcher = ops.find("mount /tmp/berth-1001/mnt/overlay/files/entrypoint").unwrap();
        assert!(launcher < ops.find("mount /data/mine /tmp/berth-1001/mnt/root/.berth").unwrap(), "{ops}");
    }

    /// `-B ~/dir:/etc` where `~/dir` has no passwd/group: nothing is created in the host
    /// directory (no empty mount-point files), and the rest of the container still starts.
    #[test]
    fn user_db_is_not_created_in_a_host_directory_bound_over_etc() {
        let myetc = tempfile::tempdir().unwrap();
        let mut req = Request::new("app.sif".into(), Action::Shell);
        req.binds.push(crate::request::BindSpec::parse(&format!("{}:/etc", myetc.path().display())).unwrap());
        let plan = crate::plan::plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        let mut rec = Recorder::default();
        apply(&plan, &mut rec).unwrap();
        let ops = rec.ops.join("\n");
        assert!(
            ops.contains(&format!("mount {} /tmp/berth-1001/mnt/root/etc", myetc.path().display())),
            "{ops}"
        );
        for f in ["passwd", "group"] {
            assert!(!ops.contains(&format!("touch /tmp/berth-1001/mnt/root/etc/{f}")), "{ops}");
            assert!(!ops.contains(&format!("/tmp/berth-1001/mnt/root/etc/{f} -")), "{ops}");
        }
        assert!(ops.ends_with("pivot_root /tmp/berth-1001/mnt/root"), "{ops}");
    }

    #[test]
    fn minimal_dev_keeps_device_access() {
        let req = Request::new("app.sif".into(), Action::Shell);
        let plan = crate::plan::plan(&req, &sqfs_image(), &Config::default(), &facts(), None).unwrap();
        let mut rec = Recorder::default();
        apply(&plan, &mut rec).unwrap();
        let ops = rec.ops.join("\n");
        assert!(
            ops.contains("mount /dev/null /tmp/berth-1001/mnt/root/dev/null - MsFlags(MS_BIND) -"),
            "{ops}"
        );
        assert!(ops.contains("attrs /tmp/berth-1001/mnt/root/dev/null rec=false Attrs { readonly: false, nosuid: true, nodev: false, noexec: true }"));
        assert!(ops.contains("mount /dev/shm /tmp/berth-1001/mnt/root/dev/shm - MsFlags(MS_BIND | MS_REC)"));
        assert!(ops.contains("symlink /tmp/berth-1001/mnt/root/dev/fd -> /proc/self/fd"));
        // Mount points the image lacks are made in the upper layer before the overlay exists.
        assert!(
            ops.find("mkdir /tmp/berth-1001/mnt/overlay/upper/home/alice").unwrap()
                < ops.find("mount overlay").unwrap()
        );
        assert_eq!(rec.ops.iter().filter(|o| *o == "mkdir /tmp/berth-1001/mnt/overlay/upper/etc").count(), 1);
    }

    #[test]
    fn one_passwd_file_holds_every_entry_berth_adds() {
        let image = "root:x:0:0::/root:/bin/sh\nalice:x:5:5::/:/bin/false\nslurm:x:9:9::/:/bin/false\nbin:x:2:2::/:/bin/false\n";
        let ours = [
            ("alice".to_string(), "alice:x:1001:1001:alice:/home/alice:/bin/sh".to_string()),
            ("slurm".to_string(), "slurm:x:64030:64030::/nonexistent:/usr/sbin/nologin".to_string()),
        ];
        assert_eq!(
            merge_user_db(image, &ours),
            "root:x:0:0::/root:/bin/sh\nbin:x:2:2::/:/bin/false\n\
             alice:x:1001:1001:alice:/home/alice:/bin/sh\nslurm:x:64030:64030::/nonexistent:/usr/sbin/nologin\n"
        );
    }
}
