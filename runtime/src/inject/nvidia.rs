//! The NVIDIA driver stack: device nodes of the GPUs the job was given, driver libraries and
//! programs by capability (the lists of NVIDIA/libnvidia-container `src/nvc_info.c`), firmware,
//! daemon sockets and `/proc/driver/nvidia`; and the driver-vs-CUDA check.

use std::path::{Path, PathBuf};

use super::closure::{rooted, FoundLib, LibResolver};
use super::{DeviceCheck, GpuSelection, InjectItem, ItemKind};
use crate::error::{Error, Result};

/// The character-device major of the NVIDIA kernel module (`nvidia-uvm` gets a dynamic one).
pub(crate) const NVIDIA_MAJOR: u64 = 195;
pub(crate) const NVIDIACTL_MINOR: u64 = 255;
pub(crate) const NVIDIA_MODESET_MINOR: u64 = 254;

/// Library name prefixes per capability (each matches `<prefix>.<version>` SONAMEs).
pub(crate) fn capability_libs(capability: &str) -> Option<&'static [&'static str]> {
    Some(match capability {
        "utility" => &["libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so"],
        "compute" => &[
            "libcuda.so",
            "libcudadebugger.so",
            "libnvidia-opencl.so",
            "libnvidia-gpucomp.so",
            "libnvidia-ptxjitcompiler.so",
            "libnvidia-fatbinaryloader.so",
            "libnvidia-allocator.so",
            "libnvidia-compiler.so",
            "libnvidia-pkcs11.so",
            "libnvidia-pkcs11-openssl3.so",
            "libnvidia-nvvm.so",
        ],
        "video" => {
            &["libvdpau_nvidia.so", "libnvidia-encode.so", "libnvidia-opticalflow.so", "libnvcuvid.so"]
        }
        "graphics" => &[
            "libnvidia-eglcore.so",
            "libnvidia-glcore.so",
            "libnvidia-tls.so",
            "libnvidia-glsi.so",
            "libnvidia-fbc.so",
            "libnvidia-ifr.so",
            "libnvidia-rtcore.so",
            "libnvoptix.so",
            "libGLX_nvidia.so",
            "libEGL_nvidia.so",
            "libGLESv2_nvidia.so",
            "libGLESv1_CM_nvidia.so",
            "libnvidia-glvkspirv.so",
        ],
        "ngx" => &["libnvidia-ngx.so"],
        _ => return None,
    })
}

/// Programs per capability.
pub(crate) fn capability_bins(capability: &str) -> &'static [&'static str] {
    match capability {
        "utility" => &["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"],
        "compute" => &["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"],
        _ => &[],
    }
}

/// The driver version from `/proc/driver/nvidia/version` text
/// (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 ...`; the open
/// modules say `NVIDIA UNIX Open Kernel Module for x86_64  535.104.05 ...`).
pub(crate) fn parse_proc_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace().find(|w| is_driver_version(w)).map(str::to_string)
}

fn is_driver_version(w: &str) -> bool {
    let parts: Vec<&str> = w.split('.').collect();
    parts.len() >= 2 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The loaded driver's version, from procfs or sysfs under `root`.
pub(crate) fn driver_version(root: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(root.join("proc/driver/nvidia/version")) {
        if let Some(v) = parse_proc_version(&text) {
            return Some(v);
        }
    }
    let v = std::fs::read_to_string(root.join("sys/module/nvidia/version")).ok()?;
    let v = v.trim();
    is_driver_version(v).then(|| v.to_string())
}

fn version_parts(v: &str) -> Vec<u32> {
    v.split('.').map_while(|p| p.parse().ok()).collect()
}

/// NVIDIA's documented minimum Linux driver for each CUDA major release under minor-version
/// compatibility (CUDA Toolkit release notes, "CUDA Toolkit and Minimum Required Driver
/// Version for CUDA Minor Version Compatibility").
pub(crate) fn minimum_driver_for_cuda_major(major: u32) -> Option<&'static str> {
    match major {
        11 => Some("450.80.02"),
        12 => Some("525.60.13"),
        13 => Some("580.65.06"),
        _ => None,
    }
}

/// Is `driver` recent enough for CUDA `cuda` (e.g. "12.2.2")? `Err` names both versions.
pub(crate) fn check_driver_for_cuda(driver: &str, cuda: &str) -> std::result::Result<(), String> {
    let cuda_parts = version_parts(cuda);
    let Some(&major) = cuda_parts.first() else {
        return Err(format!("cannot read the image's CUDA version {cuda:?}"));
    };
    let Some(min) = minimum_driver_for_cuda_major(major) else {
        // Older CUDA needed a driver per minor release; newer is unknown to this berth.
        return Ok(());
    };
    if version_parts(driver) < version_parts(min) {
        return Err(format!(
            "host NVIDIA driver {driver} is too old for the image's CUDA {cuda} (CUDA {major}.x needs driver >= {min})"
        ));
    }
    Ok(())
}

/// The CUDA version an image was built for: `/usr/local/cuda/version.json`, then
/// `/usr/local/cuda/version.txt`, then `CUDA_VERSION=` in the image's environment scripts.
pub(crate) fn image_cuda_version(image_root: &Path) -> Option<String> {
    // In NVIDIA's images /usr/local/cuda -> /etc/alternatives/cuda -> /usr/local/cuda-12.2:
    // absolute links, which must be followed inside the image, not on the host.
    let in_image = |p: &str| {
        super::closure::resolve_in_root(image_root, Path::new(p)).ok().map(|l| rooted(image_root, &l))
    };
    let read = |p: &str| in_image(p).and_then(|f| std::fs::read_to_string(f).ok());
    if let Some(text) = read("/usr/local/cuda/version.json") {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(s) = v.pointer("/cuda/version").and_then(|s| s.as_str()) {
                return Some(s.to_string());
            }
        }
    }
    if let Some(text) = read("/usr/local/cuda/version.txt") {
        // "CUDA Version 11.8.0"
        if let Some(v) = text.split_whitespace().find(|w| is_driver_version(w)) {
            return Some(v.to_string());
        }
    }
    let env_dir = in_image("/.singularity.d/env")?;
    let mut scripts: Vec<String> =
        std::fs::read_dir(env_dir).ok()?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    scripts.sort();
    for s in scripts {
        let Some(text) = read(&format!("/.singularity.d/env/{s}")) else { continue };
        for line in text.lines() {
            let line = line.trim().trim_start_matches("export ").trim();
            if let Some(v) = line.strip_prefix("CUDA_VERSION=") {
                let v = v.trim_matches(|c| c == '"' || c == '\'');
                if is_driver_version(v) {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// Parse a GPU list: "1,3", "0-3", "0-1,5". Non-numeric entries (UUIDs, MIG ids) give `None`.
pub(crate) fn parse_gpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
            if b < a || b - a > 1024 {
                return None;
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().ok()?);
        }
    }
    Some(out)
}

/// Which `/dev/nvidiaN` minors the job may use, or `None` for all of them.
pub(crate) fn selected_minors(
    sel: &GpuSelection,
    env: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<String>,
) -> Result<Option<Vec<u32>>> {
    match sel {
        GpuSelection::FromEnvironment => {
            // Slurm's gres plugin puts /dev minors in SLURM_STEP_GPUS (SLURM_JOB_GPUS for the
            // batch step); CUDA_VISIBLE_DEVICES may already be renumbered, so it comes last.
            for var in ["SLURM_STEP_GPUS", "SLURM_JOB_GPUS"] {
                if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
                    return parse_gpu_list(&v).map(Some).ok_or_else(|| {
                        Error::inject(
                            format!("{var}={v}"),
                            "expected a list of GPU numbers like 0,2 or 0-3",
                            "",
                        )
                    });
                }
            }
            if let Some(v) = env("CUDA_VISIBLE_DEVICES").filter(|v| !v.trim().is_empty()) {
                return match parse_gpu_list(&v) {
                    Some(m) => Ok(Some(m)),
                    None => {
                        notes.push(format!(
                            "CUDA_VISIBLE_DEVICES={v} names GPUs by UUID; all GPUs are bound and the variable is passed unchanged"
                        ));
                        Ok(None)
                    }
                };
            }
            Ok(None)
        }
    }
}

/// The NVIDIA part of a plan.
#[derive(Default)]
pub(crate) struct NvidiaPart {
    pub items: Vec<InjectItem>,
    pub env: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub libs: Vec<(FoundLib, String)>,
    pub driver_version: Option<String>,
}

fn check_device(path: &Path, logical: &str, check: DeviceCheck, expect_minor: Option<u64>) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::inject(
            format!("GPU device {logical}"),
            format!("cannot read it: {e}"),
            "check that the NVIDIA driver is loaded (nvidia-smi on the host)",
        )
    })?;
    let ft = meta.file_type();
    if ft.is_char_device() {
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
        if let Some(m) = expect_minor {
            if major != NVIDIA_MAJOR || minor != m {
                return Err(Error::inject(
                    format!("GPU device {logical}"),
                    format!("is device {major}:{minor}, expected {NVIDIA_MAJOR}:{m}"),
                    "the /dev entry does not belong to the NVIDIA driver; ask the administrator",
                ));
            }
        }
    } else if !(check == DeviceCheck::AcceptRegularFiles && ft.is_file()) {
        return Err(Error::inject(
            format!("GPU device {logical}"),
            "is not a character device",
            "ask the administrator to recreate it (nvidia-modprobe -c N)",
        ));
    }
    // The kernel checks permissions when the program opens it; say so now, by name.
    if nix::unistd::access(path, nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(Error::inject(
            format!("GPU device {logical}"),
            "you may not open it for reading and writing",
            "the job may not have been given this GPU (request one with --gpus / --gres=gpu:N)",
        ));
    }
    Ok(())
}

/// Discover the NVIDIA stack under `root`.
pub(crate) fn discover(
    root: &Path,
    resolver: &LibResolver,
    capabilities: &[String],
    gpus: &GpuSelection,
    device_check: DeviceCheck,
    bin_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NvidiaPart> {
    let mut part = NvidiaPart::default();
    let Some(driver) = driver_version(root) else {
        return Err(Error::inject(
            "--nv",
            "no NVIDIA driver on this host (neither /proc/driver/nvidia/version nor /sys/module/nvidia/version)",
            "run on a GPU node, or drop --nv (inject.nvidia = \"always\" forces it on every node)",
        ));
    };
    part.driver_version = Some(driver.clone());

    // Device nodes: the GPUs given to the job, plus the shared control nodes.
    let dev = root.join("dev");
    let mut all_minors: Vec<u32> = std::fs::read_dir(&dev)
        .map_err(|e| Error::io("cannot list", &dev, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("nvidia")?.parse::<u32>().ok())
        .collect();
    all_minors.sort_unstable();
    let wanted = selected_minors(gpus, env, &mut part.notes)?;
    let minors = match &wanted {
        None => all_minors.clone(),
        Some(w) => {
            if let Some(missing) = w.iter().find(|m| !all_minors.contains(m)) {
                return Err(Error::inject(
                    format!("GPU {missing}"),
                    format!("/dev/nvidia{missing} does not exist on this host (it has {:?})", all_minors),
                    "the GPU numbers come from SLURM_STEP_GPUS or CUDA_VISIBLE_DEVICES; check the allocation",
                ));
            }
            w.clone()
        }
    };
    if minors.is_empty() {
        return Err(Error::inject(
            "--nv",
            "no /dev/nvidiaN device on this host",
            "load the driver's device nodes (nvidia-modprobe) or drop --nv",
        ));
    }
    for m in &minors {
        let logical = format!("/dev/nvidia{m}");
        let host = rooted(root, Path::new(&logical));
        check_device(&host, &logical, device_check, Some(*m as u64))?;
        part.items.push(item(host, &logical, ItemKind::Device, false, format!("GPU {m}")));
    }
    for (name, minor, required) in [
        ("nvidiactl", Some(NVIDIACTL_MINOR), true),
        ("nvidia-uvm", None, false),
        ("nvidia-uvm-tools", None, false),
        ("nvidia-modeset", Some(NVIDIA_MODESET_MINOR), false),
    ] {
        let logical = format!("/dev/{name}");
        let host = rooted(root, Path::new(&logical));
        if host.exists() {
            check_device(&host, &logical, device_check, minor)?;
            part.items.push(item(host, &logical, ItemKind::Device, false, "NVIDIA control device".into()));
        } else if required {
            return Err(Error::inject(
                format!("GPU device {logical}"),
                "missing",
                "the NVIDIA driver is not fully loaded; ask the administrator",
            ));
        } else if name == "nvidia-uvm" {
            part.notes
                .push("/dev/nvidia-uvm is missing: CUDA needs it (nvidia-modprobe -u -c0 creates it)".into());
        }
    }
    let caps = root.join("dev/nvidia-caps");
    if caps.is_dir() {
        part.items.push(item(
            caps,
            "/dev/nvidia-caps",
            ItemKind::Dir,
            false,
            "NVIDIA MIG capability devices".into(),
        ));
    }

    // CUDA numbers the GPUs it can open from 0; only the selected ones are in the container.
    if let Some(w) = &wanted {
        let inside: Vec<String> = (0..w.len()).map(|i| i.to_string()).collect();
        let inside = inside.join(",");
        if let Some(outside) = env("CUDA_VISIBLE_DEVICES") {
            if outside != inside && env("SLURM_STEP_GPUS").is_some() {
                part.notes.push(format!(
                    "CUDA_VISIBLE_DEVICES={outside} on the host becomes {inside} inside: only the job's GPUs are in the container"
                ));
            }
        }
        part.env.push(("CUDA_VISIBLE_DEVICES".into(), inside));
    }

    // Libraries by capability, matched to the running driver's version.
    for cap in capabilities {
        let Some(prefixes) = capability_libs(cap) else {
            return Err(Error::inject(
                format!("inject.nvidia_capabilities: {cap:?}"),
                "unknown capability",
                "use compute, utility, video, graphics or ngx",
            ));
        };
        for prefix in prefixes {
            let mut names: Vec<String> = resolver
                .cache
                .iter()
                .flat_map(|c| c.with_prefix(prefix, resolver.arch))
                .map(|e| e.name.clone())
                .chain(names_in_dirs(resolver, prefix))
                .filter(|n| n.len() > prefix.len() && n.as_bytes()[prefix.len()] == b'.')
                .collect();
            names.sort();
            names.dedup();
            for name in names {
                let Some(lib) = resolver.find(&name)? else { continue };
                // A library from another driver install would fail against the loaded module.
                let file = lib.real.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
                let versioned = file.rsplit_once(".so.").map(|(_, v)| v.to_string()).unwrap_or_default();
                if versioned.contains('.') && versioned != driver {
                    part.notes.push(format!(
                        "skipped {}: it is from driver {versioned}, the loaded driver is {driver}",
                        lib.listed.display()
                    ));
                    continue;
                }
                part.libs.push((lib, format!("NVIDIA {cap} library")));
            }
        }
        for bin in capability_bins(cap) {
            for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
                let logical = Path::new(dir).join(bin);
                if let Ok(real) = super::closure::resolve_in_root(root, &logical) {
                    let host = rooted(root, &real);
                    if host.is_file() {
                        part.items.push(item(
                            host,
                            &bin_dir.join(bin).to_string_lossy(),
                            ItemKind::File,
                            true,
                            format!("NVIDIA {cap} program"),
                        ));
                        break;
                    }
                }
            }
        }
    }
    if !part.libs.iter().any(|(l, _)| l.soname.starts_with("libcuda.so"))
        && capabilities.iter().any(|c| c == "compute")
    {
        return Err(Error::inject(
            "--nv",
            format!("the host's ld.so.cache lists no libcuda.so for driver {driver}"),
            "install the driver's user-space libraries and run ldconfig, or list their directory in inject.extra_lib_dirs",
        ));
    }

    // Firmware, daemons, procfs.
    let fw = format!("/lib/firmware/nvidia/{driver}");
    if let Ok(real) = super::closure::resolve_in_root(root, Path::new(&fw)) {
        if rooted(root, &real).is_dir() {
            part.items.push(item(
                rooted(root, &real),
                &fw,
                ItemKind::Dir,
                true,
                "NVIDIA GSP firmware".into(),
            ));
        }
    }
    let persistenced = rooted(root, Path::new("/run/nvidia-persistenced/socket"));
    if persistenced.exists() {
        part.items.push(item(
            persistenced,
            "/run/nvidia-persistenced/socket",
            ItemKind::Socket,
            false,
            "nvidia-persistenced".into(),
        ));
    }
    let mps = env("CUDA_MPS_PIPE_DIRECTORY").unwrap_or_else(|| "/tmp/nvidia-mps".into());
    let mps_host = rooted(root, Path::new(&mps));
    if mps_host.is_dir() {
        part.items.push(item(mps_host, &mps, ItemKind::Dir, false, "CUDA MPS pipes".into()));
    }
    let proc_nv = root.join("proc/driver/nvidia");
    if proc_nv.is_dir() {
        part.items.push(item(
            proc_nv,
            "/proc/driver/nvidia",
            ItemKind::Dir,
            true,
            "NVIDIA driver state".into(),
        ));
    }
    Ok(part)
}

/// SONAME-like names (`libcuda.so.1`) under the site's extra library directories: drivers
/// installed outside the cache (e.g. a driver under /opt on diskless nodes).
fn names_in_dirs(resolver: &LibResolver, prefix: &str) -> Vec<String> {
    let mut out = vec![];
    for dir in &resolver.extra_dirs {
        let Ok(rd) = std::fs::read_dir(rooted(&resolver.root, dir)) else { continue };
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else { continue };
            // Only the SONAME link (libcuda.so.1), not the versioned file (libcuda.so.535.104.05).
            if name.starts_with(prefix) && name[prefix.len()..].matches('.').count() == 1 {
                out.push(name);
            }
        }
    }
    out
}

fn item(host_path: PathBuf, container: &str, kind: ItemKind, readonly: bool, why: String) -> InjectItem {
    InjectItem { host_path, container_path: PathBuf::from(container), kind, readonly, why }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_nvidia_parses_driver_version() {
        let t = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(parse_proc_version(t).as_deref(), Some("535.104.05"));
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build\n";
        assert_eq!(parse_proc_version(open).as_deref(), Some("550.54.14"));
        assert_eq!(parse_proc_version("garbage"), None);
    }

    #[test]
    fn inject_nvidia_driver_vs_cuda() {
        assert!(check_driver_for_cuda("535.104.05", "12.2.2").is_ok());
        let e = check_driver_for_cuda("470.82.01", "12.0.1").unwrap_err();
        assert!(e.contains("470.82.01") && e.contains("12.0.1") && e.contains("525.60.13"), "{e}");
        assert!(check_driver_for_cuda("450.80.02", "11.8.0").is_ok());
        assert!(check_driver_for_cuda("440.33.01", "11.0").is_err());
    }

    #[test]
    fn inject_nvidia_gpu_lists() {
        assert_eq!(parse_gpu_list("1,3"), Some(vec![1, 3]));
        assert_eq!(parse_gpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_gpu_list("GPU-8a7f..."), None);
    }

    #[test]
    fn inject_nvidia_image_cuda_version_sources() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert_eq!(image_cuda_version(root), None);
        std::fs::create_dir_all(root.join(".singularity.d/env")).unwrap();
        std::fs::write(
            root.join(".singularity.d/env/10-docker2singularity.sh"),
            "export CUDA_VERSION=\"11.8.0\"\n",
        )
        .unwrap();
        assert_eq!(image_cuda_version(root).as_deref(), Some("11.8.0"));
        std::fs::create_dir_all(root.join("usr/local/cuda")).unwrap();
        std::fs::write(root.join("usr/local/cuda/version.txt"), "CUDA Version 11.4.3\n").unwrap();
        assert_eq!(image_cuda_version(root).as_deref(), Some("11.4.3"));
        std::fs::write(
            root.join("usr/local/cuda/version.json"),
            r#"{"cuda":{"name":"CUDA SDK","version":"12.2.2"}}"#,
        )
        .unwrap();
        assert_eq!(image_cuda_version(root).as_deref(), Some("12.2.2"));
        // NVIDIA's layout: absolute links, resolved inside the image.
        std::fs::rename(root.join("usr/local/cuda"), root.join("usr/local/cuda-12.2")).unwrap();
        std::fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        std::os::unix::fs::symlink("/usr/local/cuda-12.2", root.join("etc/alternatives/cuda")).unwrap();
        std::os::unix::fs::symlink("/etc/alternatives/cuda", root.join("usr/local/cuda")).unwrap();
        assert_eq!(image_cuda_version(root).as_deref(), Some("12.2.2"));
    }
}
