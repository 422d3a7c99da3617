//! Tests of whole plans: the real host's fabric stack, fake host trees (stub NVIDIA driver
//! libraries compiled here, regular files for device nodes) and fake image trees (a libc.so.6
//! whose version script stops at GLIBC_2.31, stub MPI libraries of chosen versions).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::closure::is_glibc_core;
use super::ldcache::{write_cache, Arch};
use super::*;

const TRIPLET_DIR: &str = "usr/lib/x86_64-linux-gnu";

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

/// Tests with compiled fixtures run where berth runs in production: x86-64 with a C compiler.
fn can_compile() -> bool {
    Arch::native() == Some(Arch::X86_64)
        && Command::new("cc").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Compile `src` into a shared library `out` with `soname` (and more linker arguments).
fn cc_shared(dir: &Path, src: &str, soname: &str, out: &Path, extra: &[&str]) {
    let c = dir.join(format!("{soname}.c"));
    std::fs::write(&c, src).unwrap();
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", &format!("-Wl,-soname,{soname}"), "-o"])
        .arg(out)
        .arg(&c)
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success(), "cc failed for {soname}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// An ld.so.cache for `root` listing every SONAME in `dirs`: ldconfig -r when we are root
/// (the real writer), else our own writer.
fn make_cache(root: &Path, dirs: &[&str]) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    if is_root() && Command::new("ldconfig").arg("--version").output().is_ok() {
        let conf: String = dirs.iter().map(|d| format!("/{d}\n")).collect();
        std::fs::write(root.join("etc/ld.so.conf"), conf).unwrap();
        std::fs::create_dir_all(root.join("var/cache/ldconfig")).unwrap();
        let st = Command::new("ldconfig").arg("-r").arg(root).status().unwrap();
        assert!(st.success());
    } else {
        write_fake_cache(root, dirs);
    }
}

/// Our writer: entries for files named by their own SONAME (as ldconfig lists them).
fn write_fake_cache(root: &Path, dirs: &[&str]) {
    let mut entries = vec![];
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(root.join(d)) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.contains(".so.") {
                entries.push((
                    name.clone(),
                    PathBuf::from(format!("/{d}/{name}")),
                    Arch::X86_64.cache_flags(),
                ));
            }
        }
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/ld.so.cache"), write_cache(&entries)).unwrap();
}

/// A fake image libc.so.6 that defines GLIBC_2.2.5 .. GLIBC_<last>.
fn fake_image_libc(image: &Path, work: &Path, last: &str) {
    let map = work.join("libc.map");
    std::fs::write(&map, format!("GLIBC_2.2.5 {{ global: fake_old; local: *; }};\nGLIBC_{last} {{ global: fake_new; }} GLIBC_2.2.5;\n")).unwrap();
    cc_shared(
        work,
        "int fake_old(void){return 0;}\nint fake_new(void){return 1;}\n",
        "libc.so.6",
        &image.join(TRIPLET_DIR).join("libc.so.6"),
        &[&format!("-Wl,--version-script={}", map.display()), "-nostdlib"],
    );
}

fn container_paths(plan: &InjectPlan) -> Vec<String> {
    plan.items.iter().map(|i| i.container_path.to_string_lossy().to_string()).collect()
}

// ---------------------------------------------------------------- the real host's fabric

#[test]
fn inject_plan_real_host_fabric_has_verbs_providers_and_closure() {
    let Some(host) = HostFacts::real() else { return };
    let cfg = InjectConfig::default();
    let resolver = LibResolver::new(&host.root, host.arch, vec![]).unwrap();
    if resolver.find("libibverbs.so.1").unwrap().is_none() {
        eprintln!("skipped: libibverbs1 not installed");
        return;
    }
    let req = InjectRequest { mpi: Some(MpiMode::Hybrid), ..Default::default() };
    let plan = discover(&cfg, &host, &req, &no_env).unwrap();
    let paths = container_paths(&plan);
    assert!(paths.contains(&"/.berth/host/lib/libibverbs.so.1".to_string()), "{paths:#?}");
    let verbs = resolver.find("libibverbs.so.1").unwrap().unwrap();
    let providers = verbs.real.parent().unwrap().join("libibverbs");
    if providers.is_dir() {
        let item = plan
            .items
            .iter()
            .find(|i| i.container_path == providers)
            .expect("provider dir at the host's path");
        assert_eq!(item.kind, ItemKind::Dir);
    }
    if Path::new("/etc/libibverbs.d").is_dir() {
        assert!(paths.contains(&"/etc/libibverbs.d".to_string()));
    }
    // libibverbs needs libnl; the closure brings it, and never glibc.
    for dep in ["libnl-3.so.200", "libnl-route-3.so.200"] {
        assert!(paths.contains(&format!("/.berth/host/lib/{dep}")), "missing {dep} in {paths:#?}");
    }
    for p in &paths {
        let name = Path::new(p).file_name().unwrap().to_string_lossy();
        assert!(!is_glibc_core(&name), "glibc core {p} injected");
    }
    assert_eq!(plan.lib_dirs, vec![PathBuf::from("/.berth/host/lib")]);
    assert!(plan.pass_env_prefixes.iter().any(|p| p == "UCX_"));
    // Every injected file exists on the host.
    assert!(plan.items.iter().all(|i| i.host_path.exists()), "{:#?}", plan.items);
}

#[test]
fn inject_plan_mpi_none_injects_nothing() {
    let Some(host) = HostFacts::real() else { return };
    let req = InjectRequest { mpi: Some(MpiMode::None), ..Default::default() };
    let plan = discover(&InjectConfig::default(), &host, &req, &no_env).unwrap();
    assert!(plan.items.is_empty() && plan.lib_dirs.is_empty());
}

// ---------------------------------------------------------------- a fake NVIDIA host

struct FakeGpuHost {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn fake_gpu_host() -> FakeGpuHost {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("host");
    let lib = root.join(TRIPLET_DIR);
    let work = tmp.path();
    cc_shared(
        work,
        "int cuInit(unsigned f){return 0;}\n",
        "libcuda.so.1",
        &lib.join("libcuda.so.535.104.05"),
        &[],
    );
    symlink("libcuda.so.535.104.05", lib.join("libcuda.so.1")).unwrap();
    cc_shared(
        work,
        "int nvmlInit_v2(void){return 0;}\n",
        "libnvidia-ml.so.1",
        &lib.join("libnvidia-ml.so.535.104.05"),
        &[],
    );
    symlink("libnvidia-ml.so.535.104.05", lib.join("libnvidia-ml.so.1")).unwrap();
    // A leftover from an older driver, which must not be injected.
    cc_shared(
        work,
        "int x(void){return 0;}\n",
        "libnvidia-ptxjitcompiler.so.1",
        &lib.join("libnvidia-ptxjitcompiler.so.530.30.02"),
        &[],
    );
    symlink("libnvidia-ptxjitcompiler.so.530.30.02", lib.join("libnvidia-ptxjitcompiler.so.1")).unwrap();
    make_cache(&root, &[TRIPLET_DIR]);
    std::fs::create_dir_all(root.join("dev")).unwrap();
    for d in ["nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] {
        std::fs::write(root.join("dev").join(d), b"").unwrap();
    }
    std::fs::create_dir_all(root.join("proc/driver/nvidia")).unwrap();
    std::fs::write(
        root.join("proc/driver/nvidia/version"),
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/nvidia-smi"), "#!/bin/sh\necho 'GPU 0: Fake'\n").unwrap();
    std::fs::create_dir_all(root.join("lib/firmware/nvidia/535.104.05")).unwrap();
    FakeGpuHost { _tmp: tmp, root }
}

fn gpu_facts(root: &Path) -> HostFacts {
    HostFacts { root: root.to_path_buf(), arch: Arch::X86_64, device_check: DeviceCheck::AcceptRegularFiles }
}

fn gpu_request() -> InjectRequest {
    InjectRequest { mpi: Some(MpiMode::None), nvidia: true, rocm: false, gpus: GpuSelection::FromEnvironment }
}

#[test]
fn inject_plan_nvidia_slurm_gpus_are_selected_and_renumbered() {
    if !can_compile() {
        return;
    }
    let h = fake_gpu_host();
    let env = env_of(&[("SLURM_STEP_GPUS", "1,3"), ("CUDA_VISIBLE_DEVICES", "0,1")]);
    let plan = discover(&InjectConfig::default(), &gpu_facts(&h.root), &gpu_request(), &env).unwrap();
    let paths = container_paths(&plan);
    let gpus: Vec<&String> =
        paths.iter().filter(|p| p.starts_with("/dev/nvidia") && p[11..].parse::<u32>().is_ok()).collect();
    assert_eq!(gpus, ["/dev/nvidia1", "/dev/nvidia3"]);
    assert!(paths.contains(&"/dev/nvidiactl".to_string()) && paths.contains(&"/dev/nvidia-uvm".to_string()));
    assert!(plan.env.contains(&("CUDA_VISIBLE_DEVICES".into(), "0,1".into())), "{:?}", plan.env);
    let cuda = plan
        .items
        .iter()
        .find(|i| i.container_path == Path::new("/.berth/host/lib/libcuda.so.1"))
        .expect("libcuda");
    assert!(cuda.host_path.ends_with("libcuda.so.535.104.05") && cuda.host_path.starts_with(&h.root));
    assert!(paths.contains(&"/.berth/host/lib/libnvidia-ml.so.1".to_string()));
    assert!(!paths.iter().any(|p| p.contains("ptxjitcompiler")), "old driver's library injected: {paths:#?}");
    assert!(plan.notes.iter().any(|n| n.contains("530.30.02")), "{:?}", plan.notes);
    assert!(paths.contains(&"/.berth/host/bin/nvidia-smi".to_string()));
    assert_eq!(plan.bin_dirs, vec![PathBuf::from("/.berth/host/bin")]);
    assert!(paths.contains(&"/lib/firmware/nvidia/535.104.05".to_string()));
    assert!(paths.contains(&"/proc/driver/nvidia".to_string()));
    assert!(plan.checks.contains(&Check::CudaDriver { driver: "535.104.05".into() }));
}

#[test]
fn inject_plan_nvidia_without_slurm_takes_all_gpus_and_auto_mode_follows_slurm() {
    if !can_compile() {
        return;
    }
    let h = fake_gpu_host();
    let plan = discover(&InjectConfig::default(), &gpu_facts(&h.root), &gpu_request(), &no_env).unwrap();
    let n = plan.items.iter().filter(|i| i.kind == ItemKind::Device && i.why.starts_with("GPU ")).count();
    assert_eq!(n, 4);
    assert!(!plan.env.iter().any(|(k, _)| k == "CUDA_VISIBLE_DEVICES"));
    // No --nv, but Slurm allocated GPUs: automatic.
    let req = InjectRequest { nvidia: false, ..gpu_request() };
    let plan =
        discover(&InjectConfig::default(), &gpu_facts(&h.root), &req, &env_of(&[("SLURM_STEP_GPUS", "2")]))
            .unwrap();
    assert!(plan.nvidia && container_paths(&plan).contains(&"/dev/nvidia2".to_string()));
    let plan = discover(&InjectConfig::default(), &gpu_facts(&h.root), &req, &no_env).unwrap();
    assert!(!plan.nvidia && plan.items.is_empty());
}

#[test]
fn inject_plan_nvidia_bad_inputs() {
    if !can_compile() {
        return;
    }
    let h = fake_gpu_host();
    // Production checks refuse regular files standing in for devices.
    let strict = HostFacts { device_check: DeviceCheck::CharDevicesOnly, ..gpu_facts(&h.root) };
    let e = discover(&InjectConfig::default(), &strict, &gpu_request(), &no_env).unwrap_err().to_string();
    assert!(e.contains("/dev/nvidia0") && e.contains("not a character device"), "{e}");
    // A GPU the host does not have.
    let e = discover(
        &InjectConfig::default(),
        &gpu_facts(&h.root),
        &gpu_request(),
        &env_of(&[("SLURM_STEP_GPUS", "7")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/dev/nvidia7"), "{e}");
    // An unusable device node (here: a directory).
    std::fs::remove_file(h.root.join("dev/nvidia1")).unwrap();
    std::fs::create_dir(h.root.join("dev/nvidia1")).unwrap();
    let e = discover(
        &InjectConfig::default(),
        &gpu_facts(&h.root),
        &gpu_request(),
        &env_of(&[("SLURM_STEP_GPUS", "1")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/dev/nvidia1") && e.contains("character device"), "{e}");
    // --nv against a site that turned GPUs off.
    let cfg = InjectConfig { nvidia: NvidiaMode::Never, ..Default::default() };
    let e = discover(&cfg, &gpu_facts(&h.root), &gpu_request(), &no_env).unwrap_err().to_string();
    assert!(e.contains("--nv") && e.contains("inject.nvidia"), "{e}");
    // No driver loaded.
    std::fs::remove_file(h.root.join("proc/driver/nvidia/version")).unwrap();
    let e = discover(&InjectConfig::default(), &gpu_facts(&h.root), &gpu_request(), &no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no NVIDIA driver"), "{e}");
    // sysfs is the fallback for the version.
    std::fs::create_dir_all(h.root.join("sys/module/nvidia")).unwrap();
    std::fs::write(h.root.join("sys/module/nvidia/version"), "535.104.05\n").unwrap();
    std::fs::remove_dir(h.root.join("dev/nvidia1")).unwrap();
    std::fs::write(h.root.join("dev/nvidia1"), b"").unwrap();
    assert!(discover(&InjectConfig::default(), &gpu_facts(&h.root), &gpu_request(), &no_env).is_ok());
}

#[test]
fn inject_check_cuda_driver_too_old_for_image() {
    if !can_compile() {
        return;
    }
    let h = fake_gpu_host();
    let plan = discover(&InjectConfig::default(), &gpu_facts(&h.root), &gpu_request(), &no_env).unwrap();
    let img = tempfile::tempdir().unwrap();
    fake_image_libc(img.path(), img.path(), "2.35");
    std::fs::create_dir_all(img.path().join("usr/local/cuda")).unwrap();
    std::fs::write(img.path().join("usr/local/cuda/version.json"), r#"{"cuda":{"version":"12.2.2"}}"#)
        .unwrap();
    finish_for_image(plan.clone(), img.path()).unwrap();
    let old = InjectPlan { checks: vec![Check::CudaDriver { driver: "470.82.01".into() }], ..plan };
    let e = check_against_image(&old, img.path()).unwrap_err().to_string();
    assert!(e.contains("470.82.01") && e.contains("12.2.2"), "{e}");
}

// ---------------------------------------------------------------- glibc checks

/// A host tree with one library that needs GLIBC_2.34 (pthread_create moved into libc in 2.34,
/// so anything using it, built on a 2.34+ host, needs that version).
fn host_with_new_glibc_lib(tmp: &Path) -> PathBuf {
    let root = tmp.join("host");
    cc_shared(
        tmp,
        "#include <pthread.h>\nstatic void* f(void* a){return a;}\nint start(void){pthread_t t; return pthread_create(&t,0,f,0);}\n",
        "libmpi.so.12",
        &root.join(TRIPLET_DIR).join("libmpi.so.12.2.2"),
        &["-pthread"],
    );
    symlink("libmpi.so.12.2.2", root.join(TRIPLET_DIR).join("libmpi.so.12")).unwrap();
    write_fake_cache(&root, &[TRIPLET_DIR]);
    root
}

fn host_glibc_at_least_2_34() -> bool {
    let Ok(out) = Command::new("ldd").arg("--version").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.lines().next().and_then(|l| l.rsplit(' ').next()).and_then(GlibcVersion::parse);
    v.is_some_and(|v| v >= GlibcVersion(vec![2, 34]))
}

#[test]
fn inject_check_glibc_too_old_in_image_names_both_versions() {
    if !can_compile() || !host_glibc_at_least_2_34() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = host_with_new_glibc_lib(tmp.path());
    let cfg = InjectConfig { extra_libs: vec!["libmpi.so.12".into()], ..Default::default() };
    let req = InjectRequest { mpi: Some(MpiMode::None), ..Default::default() };
    let plan = discover(&cfg, &HostFacts::at(&root), &req, &no_env).unwrap();
    assert!(
        plan.checks
            .contains(&Check::Glibc { library: "libmpi.so.12".into(), needs: GlibcVersion::parse("2.34") }),
        "{:?}",
        plan.checks
    );

    let old = tmp.path().join("image-2.31");
    fake_image_libc(&old, tmp.path(), "2.31");
    let e = check_against_image(&plan, &old).unwrap_err().to_string();
    assert!(e.contains("host libmpi.so.12 needs GLIBC_2.34, image has 2.31"), "{e}");

    let new = tmp.path().join("image-2.36");
    fake_image_libc(&new, tmp.path(), "2.36");
    check_against_image(&plan, &new).unwrap();

    // Nothing asked (site default): the old image still starts, without the libraries, and
    // the note says why.
    let plan = discover(&cfg, &HostFacts::at(&root), &InjectRequest::default(), &no_env).unwrap();
    let done = finish_for_image(plan, &old).unwrap();
    assert!(done.items.is_empty() && done.lib_dirs.is_empty(), "{:?}", done.items);
    assert!(done.notes.iter().any(|n| n.contains("needs GLIBC_2.34, image has 2.31")), "{:?}", done.notes);
}

#[test]
fn inject_check_static_image_refuses_requested_libraries_and_drops_default_ones() {
    if !can_compile() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = host_with_new_glibc_lib(tmp.path());
    let image = tmp.path().join("busybox");
    std::fs::create_dir_all(image.join("bin")).unwrap();
    std::fs::write(image.join("bin/busybox"), b"static").unwrap();

    let cfg = InjectConfig { extra_libs: vec!["libmpi.so.12".into()], ..Default::default() };
    let asked = InjectRequest { mpi: Some(MpiMode::Hybrid), ..Default::default() };
    let plan = discover(&cfg, &HostFacts::at(&root), &asked, &no_env).unwrap();
    let e = check_against_image(&plan, &image).unwrap_err().to_string();
    assert!(e.contains("no glibc") && e.contains("libmpi.so.12") && e.contains("--mpi=none"), "{e}");

    // The site default (nothing asked): dropped with a note, the container still starts.
    let plan = discover(&cfg, &HostFacts::at(&root), &InjectRequest::default(), &no_env).unwrap();
    let done = finish_for_image(plan, &image).unwrap();
    assert!(done.items.is_empty() && done.lib_dirs.is_empty(), "{:?}", done.items);
    assert!(done.notes.iter().any(|n| n.contains("no glibc")));
}

// ---------------------------------------------------------------- MPI replace model

/// A stub MPI library `<dir>/<file>` with SONAME `soname` carrying `marker` in .rodata, and
/// its SONAME symlink.
fn stub_mpi(tmp: &Path, root: &Path, soname: &str, file: &str, marker: &str) {
    let src =
        format!("const char *mpi_marker = \"{marker}\";\nint MPI_Init(int *c, char ***v){{return 0;}}\n");
    cc_shared(tmp, &src, soname, &root.join(TRIPLET_DIR).join(file), &[]);
    symlink(file, root.join(TRIPLET_DIR).join(soname)).unwrap();
}

fn mpich_trees(tmp: &Path, host_lt: &str, host_v: &str, image_lt: &str, image_v: &str) -> (PathBuf, PathBuf) {
    let host = tmp.join("host");
    stub_mpi(
        tmp,
        &host,
        "libmpi.so.12",
        &format!("libmpi.so.{host_lt}"),
        &format!("MPICH Version:\\t{host_v}"),
    );
    write_fake_cache(&host, &[TRIPLET_DIR]);
    let image = tmp.join("image");
    stub_mpi(
        tmp,
        &image,
        "libmpi.so.12",
        &format!("libmpi.so.{image_lt}"),
        &format!("MPICH Version:\\t{image_v}"),
    );
    fake_image_libc(&image, tmp, "2.36");
    make_cache(&image, &[TRIPLET_DIR]);
    (host, image)
}

fn host_mode() -> (InjectConfig, InjectRequest) {
    let cfg = InjectConfig { fabric_libs: vec![], ..Default::default() };
    (cfg, InjectRequest { mpi: Some(MpiMode::Host), ..Default::default() })
}

#[test]
fn inject_mpi_host_mpich_newer_replaces_image_older() {
    if !can_compile() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (host, image) = mpich_trees(tmp.path(), "12.2.2", "4.0.2", "12.1.8", "3.3.2");
    let (cfg, req) = host_mode();
    let plan = discover(&cfg, &HostFacts::at(&host), &req, &no_env).unwrap();
    let done = finish_for_image(plan, &image).unwrap();
    let over = done.items.iter().find(|i| i.why.contains("replaces")).expect("bind over the image's MPI");
    assert_eq!(over.container_path, PathBuf::from("/usr/lib/x86_64-linux-gnu/libmpi.so.12.1.8"));
    assert!(over.host_path.ends_with("libmpi.so.12.2.2"));
    assert!(container_paths(&done).contains(&"/.berth/host/lib/libmpi.so.12".to_string()));
    assert_eq!(done.lib_dirs[0], PathBuf::from("/.berth/host/lib"), "host MPI first in the search path");
}

#[test]
fn inject_mpi_host_mpich_older_is_refused_naming_both() {
    if !can_compile() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (host, image) = mpich_trees(tmp.path(), "12.1.8", "3.3.2", "12.2.2", "4.0.2");
    let (cfg, req) = host_mode();
    let plan = discover(&cfg, &HostFacts::at(&host), &req, &no_env).unwrap();
    let e = finish_for_image(plan, &image).unwrap_err().to_string();
    assert!(e.contains("MPICH 3.3.2") && e.contains("MPICH 4.0.2") && e.contains("--mpi=hybrid"), "{e}");
}

#[test]
fn inject_mpi_host_real_open_mpi_4_vs_image_open_mpi_3_is_refused() {
    if !can_compile() {
        return;
    }
    let Some(real) = HostFacts::real() else { return };
    let (mut cfg, req) = host_mode();
    cfg.mpi_libs = vec!["libmpi.so.40".into()];
    let plan = match discover(&cfg, &real, &req, &no_env) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipped: no host Open MPI ({e})");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("image");
    stub_mpi(tmp.path(), &image, "libmpi.so.40", "libmpi.so.40.10.6", "Open MPI v3.1.6");
    fake_image_libc(&image, tmp.path(), "2.36");
    make_cache(&image, &[TRIPLET_DIR]);
    let e = finish_for_image(plan.clone(), &image).unwrap_err().to_string();
    assert!(e.contains("Open MPI 4.1") && e.contains("Open MPI 3.1.6") && e.contains("major"), "{e}");

    // Open MPI on the host, only an MPICH-ABI library in the image: nothing to replace.
    let image2 = tmp.path().join("image2");
    stub_mpi(tmp.path(), &image2, "libmpi.so.12", "libmpi.so.12.1.8", "MPICH Version:\\t3.3.2");
    fake_image_libc(&image2, tmp.path(), "2.36");
    make_cache(&image2, &[TRIPLET_DIR]);
    let e = finish_for_image(plan, &image2).unwrap_err().to_string();
    assert!(e.contains("no MPI library to replace") && e.contains("Open MPI"), "{e}");
}

#[test]
fn inject_mpi_host_real_mpich_4_vs_image_mpich_3() {
    if !can_compile() {
        return;
    }
    let Some(real) = HostFacts::real() else { return };
    let (mut cfg, req) = host_mode();
    cfg.mpi_libs = vec!["libmpich.so.12".into()];
    let plan = match discover(&cfg, &real, &req, &no_env) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipped: no host MPICH ({e})");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    // MPICH 3.3 (ABI 12.1) in the image: the host's 4.0 (ABI 12.2) may replace it.
    let image = tmp.path().join("image33");
    stub_mpi(tmp.path(), &image, "libmpich.so.12", "libmpich.so.12.1.8", "MPICH Version:\\t3.3.2");
    fake_image_libc(&image, tmp.path(), "2.36");
    make_cache(&image, &[TRIPLET_DIR]);
    let done = finish_for_image(plan.clone(), &image).unwrap();
    assert!(done
        .items
        .iter()
        .any(|i| i.container_path == Path::new("/usr/lib/x86_64-linux-gnu/libmpich.so.12.1.8")));
    // An image built against a newer ABI minor than the host's: refused, both named.
    let image = tmp.path().join("image-newer");
    stub_mpi(tmp.path(), &image, "libmpich.so.12", "libmpich.so.12.9.0", "MPICH Version:\\t9.9.0");
    fake_image_libc(&image, tmp.path(), "2.36");
    make_cache(&image, &[TRIPLET_DIR]);
    let e = finish_for_image(plan, &image).unwrap_err().to_string();
    assert!(e.contains("MPICH 9.9.0") && e.contains("MPICH 4.0.2") && e.contains("12.2.2"), "{e}");
}

#[test]
fn inject_mpi_host_mode_conflicts_with_hybrid_only_site() {
    let cfg = InjectConfig { mpi_allowed: vec![MpiMode::Hybrid, MpiMode::None], ..Default::default() };
    let req = InjectRequest { mpi: Some(MpiMode::Host), ..Default::default() };
    let e = discover(&cfg, &HostFacts::at("/nonexistent"), &req, &no_env).unwrap_err().to_string();
    assert!(e.contains("--mpi=host") && e.contains("inject.mpi_allowed") && e.contains("hybrid"), "{e}");
}

#[test]
fn inject_mpi_host_mode_without_host_mpi_names_the_config_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, req) = host_mode();
    let e = discover(&cfg, &HostFacts::at(tmp.path()), &req, &no_env).unwrap_err().to_string();
    assert!(e.contains("inject.mpi_libs") && e.contains("libmpi.so.12"), "{e}");
}

// ---------------------------------------------------------------- bad configuration and host trees

#[test]
fn inject_bad_missing_configured_library_names_lib_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = InjectConfig { extra_libs: vec!["libsitefabric.so.3".into()], ..Default::default() };
    let e = discover(&cfg, &HostFacts::at(tmp.path()), &InjectRequest::default(), &no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("libsitefabric.so.3") && e.contains("inject.extra_libs"), "{e}");

    let cfg = InjectConfig {
        fabric_libs: vec!["libibverbs.so.1".into()],
        fabric_required: true,
        ..Default::default()
    };
    let e = discover(&cfg, &HostFacts::at(tmp.path()), &InjectRequest::default(), &no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("libibverbs.so.1") && e.contains("inject.fabric_libs"), "{e}");

    // Not required: a note, no error.
    let cfg = InjectConfig { fabric_libs: vec!["libibverbs.so.1".into()], ..Default::default() };
    let plan = discover(&cfg, &HostFacts::at(tmp.path()), &InjectRequest::default(), &no_env).unwrap();
    assert!(plan.notes.iter().any(|n| n.contains("libibverbs.so.1")), "{:?}", plan.notes);
}

#[test]
fn inject_bad_broken_symlink_in_host_lib_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lib = root.join(TRIPLET_DIR);
    std::fs::create_dir_all(&lib).unwrap();
    symlink("libibverbs.so.1.14.44.0", lib.join("libibverbs.so.1")).unwrap();
    write_fake_cache(root, &[TRIPLET_DIR]);
    let cfg = InjectConfig { fabric_libs: vec!["libibverbs.so.1".into()], ..Default::default() };
    let e = discover(&cfg, &HostFacts::at(root), &InjectRequest::default(), &no_env).unwrap_err().to_string();
    assert!(
        e.contains("/usr/lib/x86_64-linux-gnu/libibverbs.so.1 -> libibverbs.so.1.14.44.0")
            && e.contains("broken symlink"),
        "{e}"
    );
}

#[test]
fn inject_closure_follows_runpath_origin_outside_the_cache() {
    if !can_compile() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("host");
    let vendor = root.join("opt/vendor/lib");
    cc_shared(tmp.path(), "int vdep(void){return 2;}\n", "libvdep.so.2", &vendor.join("libvdep.so.2"), &[]);
    let dep = vendor.join("libvdep.so.2").to_string_lossy().to_string();
    cc_shared(
        tmp.path(),
        "int vdep(void);\nint vmpi(void){return vdep();}\n",
        "libvmpi.so.1",
        &vendor.join("libvmpi.so.1"),
        &[&dep, "-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags"],
    );
    write_fake_cache(&root, &[TRIPLET_DIR]);
    let cfg = InjectConfig { extra_libs: vec!["/opt/vendor/lib/libvmpi.so.1".into()], ..Default::default() };
    let req = InjectRequest { mpi: Some(MpiMode::None), ..Default::default() };
    let plan = discover(&cfg, &HostFacts::at(&root), &req, &no_env).unwrap();
    let paths = container_paths(&plan);
    assert!(paths.contains(&"/.berth/host/lib/libvmpi.so.1".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"/.berth/host/lib/libvdep.so.2".to_string()),
        "RUNPATH $ORIGIN not followed: {paths:?}"
    );
}

#[test]
fn inject_bad_unknown_nvidia_capability() {
    if !can_compile() {
        return;
    }
    let h = fake_gpu_host();
    let cfg =
        InjectConfig { nvidia_capabilities: vec!["compute".into(), "quantum".into()], ..Default::default() };
    let e = discover(&cfg, &gpu_facts(&h.root), &gpu_request(), &no_env).unwrap_err().to_string();
    assert!(e.contains("quantum") && e.contains("inject.nvidia_capabilities"), "{e}");
}

#[test]
fn inject_plan_serializes_for_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let plan =
        discover(&InjectConfig::default(), &HostFacts::at(tmp.path()), &InjectRequest::default(), &no_env)
            .unwrap();
    let json = serde_json::to_string(&plan).unwrap();
    assert!(json.contains("\"mpi\":\"hybrid\""), "{json}");
}

// ---------------------------------------------------------------- the batch system's clients

/// A TORQUE host: `qstat` (a program) linked against `libtorque.so.2` (via RUNPATH, outside
/// the loader cache, as `make install` under /usr/local leaves it), `pbsdsh` a script, the
/// server name file; no other client.
fn fake_torque_host(tmp: &Path) -> PathBuf {
    let root = tmp.join("host");
    let lib = root.join("usr/local/lib");
    cc_shared(
        tmp,
        "const char *torque_server(void){return \"srv\";}\n",
        "libtorque.so.2",
        &lib.join("libtorque.so.2.0.0"),
        &[],
    );
    symlink("libtorque.so.2.0.0", lib.join("libtorque.so.2")).unwrap();
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let c = tmp.join("qstat.c");
    std::fs::write(
        &c,
        "const char *torque_server(void);\nint main(void){return torque_server()[0] != 's';}\n",
    )
    .unwrap();
    let st = Command::new("cc")
        .arg("-o")
        .arg(bin.join("qstat"))
        .arg(&c)
        .arg(lib.join("libtorque.so.2"))
        .arg("-Wl,--enable-new-dtags,-rpath,/usr/local/lib")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(bin.join("pbsdsh"), "#!/bin/sh\necho pbsdsh\n").unwrap();
    std::fs::create_dir_all(root.join("var/spool/torque")).unwrap();
    std::fs::write(root.join("var/spool/torque/server_name"), "srv\n").unwrap();
    make_cache(&root, &[TRIPLET_DIR]);
    root
}

fn torque_clients() -> InjectConfig {
    InjectConfig { scheduler_clients: vec![SchedulerClients::Torque], ..Default::default() }
}

#[test]
fn inject_clients_torque_programs_libraries_and_server_file() {
    if !can_compile() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = fake_torque_host(tmp.path());
    let req = InjectRequest { mpi: Some(MpiMode::None), ..Default::default() };
    let plan = discover(&torque_clients(), &HostFacts::at(&root), &req, &no_env).unwrap();
    // Nothing is bound before the image is known to run them.
    assert!(plan.items.is_empty(), "{:#?}", plan.items);
    let part = plan.clients.as_ref().expect("a client part");
    let paths = container_paths(part);
    for want in [
        "/.berth/host/bin/qstat",
        "/.berth/host/bin/pbsdsh",
        "/.berth/host/lib/libtorque.so.2",
        "/var/spool/torque/server_name",
    ] {
        assert!(paths.contains(&want.to_string()), "{want} missing from {paths:#?}");
    }
    let lib = part.items.iter().find(|i| i.container_path.ends_with("libtorque.so.2")).unwrap();
    assert_eq!(lib.host_path, root.join("usr/local/lib/libtorque.so.2.0.0"), "the real file, not the link");
    assert_eq!(plan.bin_dirs, vec![PathBuf::from("/.berth/host/bin")]);
    assert_eq!(plan.lib_dirs, vec![PathBuf::from("/.berth/host/lib")]);
    // The programs a node lacks are named, not fatal.
    assert!(
        plan.notes.iter().any(|n| n.contains("not on this host") && n.contains("qsub")),
        "{:?}",
        plan.notes
    );
    // The program and its library carry glibc checks; the script does not.
    let checked: Vec<String> = part.library_names();
    assert!(checked.contains(&"qstat".to_string()) && checked.contains(&"libtorque.so.2".to_string()));
    assert!(!checked.contains(&"pbsdsh".to_string()));

    // A host without any TORQUE client: a note, nothing lent.
    let bare = tmp.path().join("bare");
    make_cache(&bare, &[TRIPLET_DIR]);
    let plan = discover(&torque_clients(), &HostFacts::at(&bare), &req, &no_env).unwrap();
    assert!(plan.clients.as_ref().unwrap().items.is_empty() && plan.bin_dirs.is_empty());
    assert!(plan.notes.iter().any(|n| n.contains("torque clients: none of")), "{:?}", plan.notes);
}

#[test]
fn inject_clients_join_only_images_that_can_run_them() {
    if !can_compile() || !host_glibc_at_least_2_34() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = fake_torque_host(tmp.path());
    // Asked for explicitly: --mpi=none with the site's clients.
    let req = InjectRequest { mpi: Some(MpiMode::None), ..Default::default() };
    let plan = discover(&torque_clients(), &HostFacts::at(&root), &req, &no_env).unwrap();

    // An image whose glibc is new enough gets them.
    let new = tmp.path().join("new-image");
    fake_image_libc(&new, tmp.path(), "2.40");
    let done = finish_for_image(plan.clone(), &new).unwrap();
    assert!(container_paths(&done).contains(&"/.berth/host/bin/qstat".to_string()), "{:#?}", done.items);
    assert!(done.clients.is_none());

    // An older glibc, or none: the job still starts, without them, and says why.
    let old = tmp.path().join("old-image");
    fake_image_libc(&old, tmp.path(), "2.31");
    let static_image = tmp.path().join("static-image");
    std::fs::create_dir_all(&static_image).unwrap();
    for image in [&old, &static_image] {
        let done = finish_for_image(plan.clone(), image).unwrap();
        assert!(done.items.is_empty(), "{:#?}", done.items);
        assert!(done.notes.iter().any(|n| n.starts_with("host client tools not lent")), "{:?}", done.notes);
    }
}

#[test]
fn inject_clients_site_programs_and_paths_must_exist() {
    if !can_compile() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = fake_torque_host(tmp.path());
    let host = HostFacts::at(&root);
    let req = InjectRequest::default();
    let cfg = InjectConfig {
        host_programs: vec!["qstat".into()],
        host_paths: vec!["/var/spool/torque".into()],
        ..Default::default()
    };
    let plan = discover(&cfg, &host, &req, &no_env).unwrap();
    let part = plan.clients.unwrap();
    let dir = part.items.iter().find(|i| i.container_path == Path::new("/var/spool/torque")).unwrap();
    assert_eq!(dir.kind, ItemKind::Dir);
    assert!(container_paths(&part).contains(&"/.berth/host/bin/qstat".to_string()));

    let cfg = InjectConfig { host_programs: vec!["qmissing".into()], ..Default::default() };
    let e = discover(&cfg, &host, &req, &no_env).unwrap_err().to_string();
    assert!(e.contains("host program qmissing") && e.contains("inject.host_programs"), "{e}");
    let cfg = InjectConfig { host_paths: vec!["/etc/missing.conf".into()], ..Default::default() };
    let e = discover(&cfg, &host, &req, &no_env).unwrap_err().to_string();
    assert!(e.contains("/etc/missing.conf") && e.contains("inject.host_paths"), "{e}");
}

#[test]
fn inject_clients_real_slurm_host() {
    let Some(host) = HostFacts::real() else { return };
    if !Path::new("/usr/bin/srun").exists() {
        eprintln!("skipped: no Slurm client on this host");
        return;
    }
    let cfg = InjectConfig { scheduler_clients: vec![SchedulerClients::Slurm], ..Default::default() };
    let req = InjectRequest { mpi: Some(MpiMode::None), ..Default::default() };
    let env = env_of(&[("SLURM_CONF", "/srv/cluster/etc/slurm.conf")]);
    let plan = discover(&cfg, &host, &req, &env).unwrap();
    let part = plan.clients.unwrap();
    let paths = container_paths(&part);
    assert!(paths.contains(&"/.berth/host/bin/srun".to_string()), "{paths:#?}");
    // srun's own libslurmfull, and the plugin directory beside it at the host's path.
    let full =
        part.items.iter().find(|i| i.container_path.to_string_lossy().contains("libslurmfull")).unwrap();
    let plugin_dir = full.host_path.parent().unwrap();
    assert!(paths.contains(&plugin_dir.to_string_lossy().to_string()), "{paths:#?}");
    if Path::new("/run/munge").is_dir() {
        assert!(paths.contains(&"/run/munge".to_string()));
    }
    // SLURM_CONF's directory is named (it does not exist here: a note, not a bind).
    assert!(plan.notes.iter().any(|n| n.contains("/srv/cluster/etc")), "{:?}", plan.notes);
}

#[test]
fn inject_clients_slurm_user_entry_from_the_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("host");
    for d in ["usr/bin", "etc/slurm", "srv/etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("usr/bin/srun"), "#!/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nslurm:x:64030:64030::/nonexistent:/usr/sbin/nologin\nsched:x:500:500::/:/bin/false\n").unwrap();
    std::fs::write(
        root.join("etc/slurm/slurm.conf"),
        "# SlurmUser=root\nClusterName=c\n  slurmuser = slurm # the daemons\n",
    )
    .unwrap();
    std::fs::write(root.join("srv/etc/slurm.conf"), "SlurmUser=sched\n").unwrap();
    let cfg = InjectConfig { scheduler_clients: vec![SchedulerClients::Slurm], ..Default::default() };
    let req = InjectRequest { mpi: Some(MpiMode::None), ..Default::default() };
    let plan = discover(&cfg, &HostFacts::at(&root), &req, &no_env).unwrap();
    let part = plan.clients.unwrap();
    assert_eq!(
        part.user_entries,
        vec![("slurm".to_string(), "slurm:x:64030:64030::/nonexistent:/usr/sbin/nologin".to_string())]
    );
    assert!(container_paths(&part).contains(&"/etc/slurm".to_string()));
    // SLURM_CONF names another configuration: its directory and its SlurmUser.
    let env = env_of(&[("SLURM_CONF", "/srv/etc/slurm.conf")]);
    let part = discover(&cfg, &HostFacts::at(&root), &req, &env).unwrap().clients.unwrap();
    assert_eq!(part.user_entries[0].0, "sched");
    assert!(container_paths(&part).contains(&"/srv/etc".to_string()));
}

/// A tree with a PMIx client library file `file` (`libpmix.so.2` links to it) and, when
/// `open_mpi` is given, Open MPI's `libmpi.so.40` with that libtool version.
fn pmix_tree(tmp: &Path, name: &str, file: &str, open_mpi: Option<&str>) -> PathBuf {
    let root = tmp.join(name);
    stub_mpi(tmp, &root, "libpmix.so.2", file, "OpenPMIx");
    if let Some(lt) = open_mpi {
        stub_mpi(tmp, &root, "libmpi.so.40", &format!("libmpi.so.{lt}"), "Open MPI v4.1.0");
    }
    make_cache(&root, &[TRIPLET_DIR]);
    root
}

#[test]
fn inject_open_mpi_image_with_older_pmix_client_than_the_host_gets_the_pml_advice() {
    if !can_compile() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Debian 11's Open MPI 4.1.0 with PMIx 4.0.0, against Debian 12's PMIx 4.2.2.
    let host = pmix_tree(tmp.path(), "host", "libpmix.so.2.6.2", None);
    let old = pmix_tree(tmp.path(), "old", "libpmix.so.2.3.0", Some("40.30.0"));
    let w = stack_warnings(&old, &host, Arch::X86_64).unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    for part in
        ["Open MPI 4.1.0", "libpmix.so.2.3.0", "libpmix.so.2.6.2", "2 s in MPI_Init", "OMPI_MCA_pml=ob1"]
    {
        assert!(w[0].contains(part), "{part} not in {}", w[0]);
    }
    // The same release series as the host (a newer bug-fix release too): nothing to say.
    for (name, file) in
        [("same", "libpmix.so.2.6.2"), ("fix", "libpmix.so.2.6.5"), ("newer", "libpmix.so.2.9.1")]
    {
        let image = pmix_tree(tmp.path(), name, file, Some("40.30.4"));
        assert_eq!(stack_warnings(&image, &host, Arch::X86_64).unwrap(), Vec::<String>::new(), "{file}");
    }
    // An old PMIx without Open MPI (the advice is Open MPI's), or a host without PMIx.
    let no_ompi = pmix_tree(tmp.path(), "no-ompi", "libpmix.so.2.3.0", None);
    assert!(stack_warnings(&no_ompi, &host, Arch::X86_64).unwrap().is_empty());
    let bare_host = tmp.path().join("bare-host");
    std::fs::create_dir_all(&bare_host).unwrap();
    assert!(stack_warnings(&old, &bare_host, Arch::X86_64).unwrap().is_empty());
}

// ---------------------------------------------------------------- a fake AMD (ROCm) host

/// A fake AMD node: /dev/kfd, two AMD GPUs (renderD128/card1, renderD129/card2; card0 is the
/// BMC's display) and an Intel iGPU render node (renderD130), sysfs vendor ids and DRM
/// siblings as the kernel lays them out, libhsa-runtime64 in the cache and libamdhip64 (which
/// needs it) only under /opt/rocm/lib, and rocminfo in /opt/rocm/bin.
fn fake_amd_host() -> FakeGpuHost {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("host");
    let work = tmp.path();
    let lib = root.join(TRIPLET_DIR);
    cc_shared(
        work,
        "int hsa_init(void){return 0;}\n",
        "libhsa-runtime64.so.1",
        &lib.join("libhsa-runtime64.so.1.14.0"),
        &[],
    );
    symlink("libhsa-runtime64.so.1.14.0", lib.join("libhsa-runtime64.so.1")).unwrap();
    make_cache(&root, &[TRIPLET_DIR]);
    let rocm = root.join("opt/rocm-6.2.0/lib");
    cc_shared(
        work,
        "int hsa_init(void);\nint hipInit(unsigned f){(void)f;return hsa_init();}\n",
        "libamdhip64.so.6",
        &rocm.join("libamdhip64.so.6.2.60200"),
        &[&format!("-L{}", lib.display()), "-l:libhsa-runtime64.so.1"],
    );
    symlink("libamdhip64.so.6.2.60200", rocm.join("libamdhip64.so.6")).unwrap();
    symlink("libamdhip64.so.6", rocm.join("libamdhip64.so")).unwrap();
    symlink("rocm-6.2.0", root.join("opt/rocm")).unwrap();
    std::fs::create_dir_all(root.join("opt/rocm-6.2.0/bin")).unwrap();
    std::fs::write(root.join("opt/rocm-6.2.0/bin/rocminfo"), "#!/bin/sh\necho gfx90a\n").unwrap();
    std::fs::create_dir_all(root.join("dev/dri")).unwrap();
    for d in
        ["kfd", "dri/card0", "dri/card1", "dri/card2", "dri/renderD128", "dri/renderD129", "dri/renderD130"]
    {
        std::fs::write(root.join("dev").join(d), b"").unwrap();
    }
    for (render, card, vendor) in [(128, 1, "0x1002"), (129, 2, "0x1002"), (130, 3, "0x8086")] {
        let dev = root.join(format!("sys/class/drm/renderD{render}/device"));
        std::fs::create_dir_all(dev.join(format!("drm/card{card}"))).unwrap();
        std::fs::create_dir_all(dev.join(format!("drm/renderD{render}"))).unwrap();
        std::fs::write(dev.join("vendor"), format!("{vendor}\n")).unwrap();
    }
    FakeGpuHost { _tmp: tmp, root }
}

fn rocm_request() -> InjectRequest {
    InjectRequest { mpi: Some(MpiMode::None), rocm: true, ..Default::default() }
}

fn dri(plan: &InjectPlan) -> Vec<String> {
    container_paths(plan).into_iter().filter(|p| p.starts_with("/dev/")).collect()
}

#[test]
fn inject_plan_rocm_devices_libraries_and_renumbering() {
    if !can_compile() {
        return;
    }
    let h = fake_amd_host();
    // All AMD GPUs without a selection; the Intel render node is left out with a note.
    let plan = discover(&InjectConfig::default(), &gpu_facts(&h.root), &rocm_request(), &no_env).unwrap();
    assert!(plan.rocm && !plan.nvidia);
    assert_eq!(
        dri(&plan),
        ["/dev/kfd", "/dev/dri/renderD128", "/dev/dri/card1", "/dev/dri/renderD129", "/dev/dri/card2"]
    );
    assert!(plan.notes.iter().any(|n| n.contains("renderD130") && n.contains("0x8086")), "{:?}", plan.notes);
    assert!(!plan.env.iter().any(|(k, _)| k == "ROCR_VISIBLE_DEVICES"));
    let paths = container_paths(&plan);
    // libamdhip64 from ROCm's prefix (not in the cache), its dependency from the cache.
    let hip = plan.items.iter().find(|i| i.container_path == Path::new("/.berth/host/lib/libamdhip64.so.6"));
    assert!(hip.expect("libamdhip64").host_path.ends_with("opt/rocm-6.2.0/lib/libamdhip64.so.6.2.60200"));
    assert!(paths.contains(&"/.berth/host/lib/libhsa-runtime64.so.1".to_string()), "{paths:#?}");
    assert!(paths.contains(&"/.berth/host/bin/rocminfo".to_string()), "{paths:#?}");
    assert_eq!(plan.lib_dirs, vec![PathBuf::from("/.berth/host/lib")]);
    assert_eq!(plan.bin_dirs, vec![PathBuf::from("/.berth/host/bin")]);

    // Slurm names the GPU by its device file's number; ROCm's variables count from 0.
    for env in [
        env_of(&[("SLURM_STEP_GPUS", "129"), ("ROCR_VISIBLE_DEVICES", "1")]),
        env_of(&[("ROCR_VISIBLE_DEVICES", "1")]),
        env_of(&[("HIP_VISIBLE_DEVICES", "1")]),
    ] {
        let plan = discover(&InjectConfig::default(), &gpu_facts(&h.root), &rocm_request(), &env).unwrap();
        assert_eq!(dri(&plan), ["/dev/kfd", "/dev/dri/renderD129", "/dev/dri/card2"]);
        assert!(plan.env.contains(&("ROCR_VISIBLE_DEVICES".into(), "0".into())), "{:?}", plan.env);
        assert!(plan.env.contains(&("HIP_VISIBLE_DEVICES".into(), "0".into())), "{:?}", plan.env);
    }

    // Devices only, for images with their own ROCm.
    let cfg = InjectConfig { rocm_host_libs: false, ..Default::default() };
    let plan = discover(&cfg, &gpu_facts(&h.root), &rocm_request(), &no_env).unwrap();
    assert!(plan.items.iter().all(|i| i.kind == ItemKind::Device) && plan.lib_dirs.is_empty());
}

#[test]
fn inject_plan_rocm_follows_slurm_on_amd_nodes_and_bad_inputs_are_named() {
    if !can_compile() {
        return;
    }
    let h = fake_amd_host();
    // GPUs from Slurm on an AMD node: ROCm, not a failing NVIDIA discovery.
    let req = InjectRequest { mpi: Some(MpiMode::None), ..Default::default() };
    let plan =
        discover(&InjectConfig::default(), &gpu_facts(&h.root), &req, &env_of(&[("SLURM_STEP_GPUS", "128")]))
            .unwrap();
    assert!(plan.rocm && !plan.nvidia, "{:?}", plan.notes);
    assert_eq!(dri(&plan), ["/dev/kfd", "/dev/dri/renderD128", "/dev/dri/card1"]);
    // No GPUs asked for, none from Slurm: nothing.
    let plan = discover(&InjectConfig::default(), &gpu_facts(&h.root), &req, &no_env).unwrap();
    assert!(!plan.rocm && plan.items.is_empty());

    let err = |cfg: &InjectConfig, env: &dyn Fn(&str) -> Option<String>| {
        discover(cfg, &gpu_facts(&h.root), &rocm_request(), env).unwrap_err().to_string()
    };
    let e = err(&InjectConfig::default(), &env_of(&[("SLURM_STEP_GPUS", "131")]));
    assert!(e.contains("AMD GPU 131") && e.contains("renderD128, renderD129"), "{e}");
    // The Intel render node is not an AMD GPU, whatever number names it.
    let e = err(&InjectConfig::default(), &env_of(&[("SLURM_STEP_GPUS", "130")]));
    assert!(e.contains("AMD GPU 130"), "{e}");
    let e = err(&InjectConfig::default(), &env_of(&[("SLURM_STEP_GPUS", "gpu0")]));
    assert!(e.contains("SLURM_STEP_GPUS=gpu0"), "{e}");
    let e = err(&InjectConfig { rocm: GpuMode::Never, ..Default::default() }, &no_env);
    assert!(e.contains("--rocm") && e.contains("inject.rocm"), "{e}");
    std::fs::remove_file(h.root.join("dev/dri/renderD129")).unwrap();
    std::fs::create_dir(h.root.join("dev/dri/renderD129")).unwrap();
    let e = err(&InjectConfig::default(), &env_of(&[("ROCR_VISIBLE_DEVICES", "1")]));
    assert!(e.contains("/dev/dri/renderD129") && e.contains("character device"), "{e}");
    std::fs::remove_file(h.root.join("dev/kfd")).unwrap();
    let e = err(&InjectConfig::default(), &no_env);
    assert!(e.contains("/dev/kfd is missing"), "{e}");
}
