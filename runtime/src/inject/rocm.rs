//! AMD GPUs (ROCm): `/dev/kfd` (the compute interface every ROCm process opens), the DRM
//! render nodes of the GPUs the job was given (`/dev/dri/renderD128`... with their `card`
//! siblings, which some ROCm tools open), the ROCm user-space libraries and tools found on the
//! host (ld.so.cache, then ROCm's own prefix, which the cache often lacks), and the visible-
//! device variables renumbered from 0 as Slurm does for CUDA.
//!
//! Unlike NVIDIA's, AMD's user space is not tied to the loaded kernel driver's version: an
//! image that brings its own ROCm needs only the devices, and a host without ROCm libraries
//! still gets them, with a note.

use std::path::{Path, PathBuf};

use super::closure::{rooted, FoundLib, LibResolver};
use super::{DeviceCheck, GpuSelection, InjectItem, ItemKind};
use crate::error::{Error, Result};

/// The character-device major of DRM (`/dev/dri/card*`, `/dev/dri/renderD*`).
pub(crate) const DRM_MAJOR: u64 = 226;
/// Render nodes are numbered from this minor on (renderD128 is the first GPU's).
pub(crate) const RENDER_MINOR_BASE: u32 = 128;
/// The PCI vendor id of AMD (ATI) GPUs, as sysfs writes it.
pub(crate) const AMD_VENDOR: &str = "0x1002";

/// ROCm runtime library name prefixes (each matches `<prefix>.<N>` SONAMEs): HIP, the HSA
/// runtime and its kernel thunk, the code-object manager, SMI, and AMD's libdrm, as
/// Apptainer's `rocmliblist.conf` lists them for current ROCm releases.
pub(crate) const ROCM_LIBS: &[&str] = &[
    "libamdhip64.so",
    "libhiprtc.so",
    "libhsa-runtime64.so",
    "libhsakmt.so",
    "libamd_comgr.so",
    "librocm_smi64.so",
    "libamd_smi.so",
    "librocm-core.so",
    "librocprofiler-register.so",
    "libhsa-amd-aqlprofile64.so",
    "libdrm_amdgpu.so",
    "libdrm.so",
];

/// ROCm programs bound into the container's program directory when the host has them.
pub(crate) const ROCM_BINS: &[&str] = &["rocminfo", "rocm-smi", "amd-smi"];

/// The ROCm part of a plan.
#[derive(Default)]
pub(crate) struct RocmPart {
    pub(crate) items: Vec<InjectItem>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) notes: Vec<String>,
    pub(crate) libs: Vec<(FoundLib, String)>,
}

/// The AMD GPUs' render-node minors on the host, in order (the order ROCm numbers them in).
/// Render nodes of other vendors (an integrated Intel GPU) are left out.
pub(crate) fn amd_render_minors(root: &Path, notes: &mut Vec<String>) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(root.join("dev/dri")) else { return vec![] };
    let mut minors: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("renderD")?.parse::<u32>().ok())
        .filter(|m| {
            match std::fs::read_to_string(root.join(format!("sys/class/drm/renderD{m}/device/vendor"))) {
                Ok(v) if v.trim() != AMD_VENDOR => {
                    notes.push(format!(
                        "/dev/dri/renderD{m} is not an AMD GPU (vendor {}); not bound",
                        v.trim()
                    ));
                    false
                }
                // Without sysfs' word (an unusual kernel), a render node next to /dev/kfd is taken
                // for an AMD GPU.
                _ => true,
            }
        })
        .collect();
    minors.sort_unstable();
    minors
}

/// The `card` node of the same GPU as render node `minor` (the DRM minors of one device are
/// listed together under its sysfs `drm/` directory; card numbers need not follow render ones).
fn card_of(root: &Path, minor: u32) -> Option<String> {
    let rd = std::fs::read_dir(root.join(format!("sys/class/drm/renderD{minor}/device/drm"))).ok()?;
    rd.flatten().filter_map(|e| e.file_name().into_string().ok()).find(|n| {
        n.strip_prefix("card").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Which GPUs the job may use, as positions in `all` (the host's AMD render minors), or
/// `None` for all of them. Slurm's gres plugin names a GPU by the number in its device file
/// (`File=/dev/dri/renderD[128-131]` gives `SLURM_STEP_GPUS=128,130`); ROCm's own variables
/// count GPUs from 0. A number from 128 on is a render node, below it a position.
fn selected(
    sel: &GpuSelection,
    all: &[u32],
    env: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<String>,
) -> Result<Option<Vec<u32>>> {
    let (source, values) = match sel {
        GpuSelection::FromEnvironment => {
            let mut found = None;
            for var in ["SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"] {
                let Some(v) = env(var).filter(|v| !v.trim().is_empty()) else { continue };
                match super::nvidia::parse_gpu_list(&v) {
                    Some(list) => {
                        found = Some((format!("{var}={v}"), list));
                        break;
                    }
                    None if var.starts_with("SLURM") => {
                        return Err(Error::inject(
                            format!("{var}={v}"),
                            "expected a list of GPU numbers like 128,129 or 0-3",
                            "",
                        ))
                    }
                    None => {
                        notes.push(format!(
                            "{var}={v} names GPUs by UUID; all GPUs are bound and the variable is passed unchanged"
                        ));
                        return Ok(None);
                    }
                }
            }
            match found {
                Some(f) => f,
                None => return Ok(None),
            }
        }
    };
    let mut minors = vec![];
    for v in values {
        let minor = if v >= RENDER_MINOR_BASE { Some(v) } else { all.get(v as usize).copied() };
        match minor.filter(|m| all.contains(m)) {
            Some(m) if !minors.contains(&m) => minors.push(m),
            Some(_) => {}
            None => {
                let have: Vec<String> = all.iter().map(|m| format!("renderD{m}")).collect();
                return Err(Error::inject(
                    format!("AMD GPU {v} ({source})"),
                    format!("this host has no such AMD GPU (it has {})", have.join(", ")),
                    "the GPU numbers come from SLURM_STEP_GPUS or ROCR_VISIBLE_DEVICES; check the allocation",
                ));
            }
        }
    }
    Ok(Some(minors))
}

fn check_device(path: &Path, logical: &str, check: DeviceCheck, expect: Option<(u64, u64)>) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::inject(
            format!("GPU device {logical}"),
            format!("cannot read it: {e}"),
            "check that the amdgpu driver is loaded (rocminfo on the host)",
        )
    })?;
    let ft = meta.file_type();
    if ft.is_char_device() {
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
        if let Some((em, en)) = expect {
            if (major, minor) != (em, en) {
                return Err(Error::inject(
                    format!("GPU device {logical}"),
                    format!("is device {major}:{minor}, expected {em}:{en}"),
                    "the /dev entry does not belong to the DRM subsystem; ask the administrator",
                ));
            }
        }
    } else if !(check == DeviceCheck::AcceptRegularFiles && ft.is_file()) {
        return Err(Error::inject(
            format!("GPU device {logical}"),
            "is not a character device",
            "ask the administrator to reload the amdgpu driver",
        ));
    }
    if nix::unistd::access(path, nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(Error::inject(
            format!("GPU device {logical}"),
            "you may not open it for reading and writing",
            "the job may not have been given this GPU (request one with --gpus / --gres=gpu:N), or you are \
             not in the group that owns it (render/video)",
        ));
    }
    Ok(())
}

fn item(host_path: PathBuf, container: &str, kind: ItemKind, readonly: bool, why: String) -> InjectItem {
    InjectItem { host_path, container_path: PathBuf::from(container), kind, readonly, why }
}

/// SONAME-like names (`libamdhip64.so.6`) in `dirs` under the resolver's root.
fn names_in(resolver: &LibResolver, dirs: &[PathBuf], prefix: &str) -> Vec<String> {
    let mut out = vec![];
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(rooted(&resolver.root, dir)) else { continue };
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else { continue };
            if name.strip_prefix(prefix).is_some_and(|v| v.matches('.').count() == 1 && v.starts_with('.')) {
                out.push(name);
            }
        }
    }
    out
}

/// What discovery needs besides the host tree.
pub(crate) struct Options<'a> {
    pub(crate) gpus: &'a GpuSelection,
    pub(crate) device_check: DeviceCheck,
    pub(crate) bin_dir: &'a Path,
    /// ROCm's installation directories for libraries (e.g. `/opt/rocm/lib`).
    pub(crate) lib_dirs: &'a [PathBuf],
    /// Bind the host's ROCm libraries (else the image's own ROCm user space is used).
    pub(crate) host_libs: bool,
}

/// Discover the ROCm stack under `root`.
pub(crate) fn discover(
    root: &Path,
    resolver: &LibResolver,
    opts: &Options,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RocmPart> {
    let mut part = RocmPart::default();
    let kfd = root.join("dev/kfd");
    if std::fs::symlink_metadata(&kfd).is_err() {
        return Err(Error::inject(
            "--rocm",
            "no AMD GPU driver on this host (/dev/kfd is missing)",
            "run on an AMD GPU node, or drop --rocm (inject.rocm = \"always\" forces it on every node)",
        ));
    }
    check_device(&kfd, "/dev/kfd", opts.device_check, None)?;
    part.items.push(item(kfd, "/dev/kfd", ItemKind::Device, false, "AMD GPU compute interface".into()));

    let all = amd_render_minors(root, &mut part.notes);
    if all.is_empty() {
        return Err(Error::inject(
            "--rocm",
            "no AMD GPU render node (/dev/dri/renderD*) on this host",
            "check that the amdgpu driver is loaded (ls /dev/dri), or drop --rocm",
        ));
    }
    let wanted = selected(opts.gpus, &all, env, &mut part.notes)?;
    let minors = wanted.clone().unwrap_or_else(|| all.clone());
    for m in &minors {
        let logical = format!("/dev/dri/renderD{m}");
        let host = rooted(root, Path::new(&logical));
        check_device(&host, &logical, opts.device_check, Some((DRM_MAJOR, *m as u64)))?;
        part.items.push(item(host, &logical, ItemKind::Device, false, format!("AMD GPU (render node {m})")));
        match card_of(root, *m) {
            Some(card) => {
                let logical = format!("/dev/dri/{card}");
                let host = rooted(root, Path::new(&logical));
                if host.exists() {
                    check_device(&host, &logical, opts.device_check, None)?;
                    part.items.push(item(
                        host,
                        &logical,
                        ItemKind::Device,
                        false,
                        format!("AMD GPU ({card})"),
                    ));
                }
            }
            None => part
                .notes
                .push(format!("no card node found for renderD{m} in sysfs; only the render node is bound")),
        }
    }

    // ROCm counts the GPUs it can open from 0; only the selected ones are in the container.
    if let Some(w) = &wanted {
        let inside = (0..w.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        for var in ["ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"] {
            if let Some(outside) = env(var).filter(|o| *o != inside) {
                part.notes.push(format!(
                    "{var}={outside} on the host becomes {inside} inside: only the job's GPUs are in the container"
                ));
            }
            part.env.push((var.into(), inside.clone()));
        }
    }

    if !opts.host_libs {
        part.notes.push("inject.rocm_host_libs = false: the image's own ROCm libraries are used".into());
        return Ok(part);
    }
    for prefix in ROCM_LIBS {
        let mut names: Vec<String> = resolver
            .cache
            .iter()
            .flat_map(|c| c.with_prefix(prefix, resolver.arch))
            .map(|e| e.name.clone())
            .filter(|n| n.len() > prefix.len() && n.as_bytes()[prefix.len()] == b'.')
            .chain(names_in(resolver, opts.lib_dirs, prefix))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            if let Some(lib) = resolver.find_from(&name, opts.lib_dirs)? {
                part.libs.push((lib, "ROCm library".into()));
            }
        }
    }
    if !part.libs.iter().any(|(l, _)| l.soname.starts_with("libhsa-runtime64.so")) {
        part.notes.push(
            "no ROCm runtime (libhsa-runtime64.so) on this host: the image's own ROCm user space is used"
                .into(),
        );
    }
    let mut bin_dirs: Vec<PathBuf> =
        opts.lib_dirs.iter().filter_map(|d| d.parent().map(|p| p.join("bin"))).collect();
    bin_dirs.extend(["/opt/rocm/bin", "/usr/bin", "/usr/local/bin"].iter().map(PathBuf::from));
    for bin in ROCM_BINS {
        for dir in &bin_dirs {
            let logical = dir.join(bin);
            let Ok(real) = super::closure::resolve_in_root(root, &logical) else { continue };
            let host = rooted(root, &real);
            if host.is_file() {
                part.items.push(item(
                    host,
                    &opts.bin_dir.join(bin).to_string_lossy(),
                    ItemKind::File,
                    true,
                    "ROCm program".into(),
                ));
                break;
            }
        }
    }
    Ok(part)
}
