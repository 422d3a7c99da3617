//! Host injection seen from inside the container: the host's real rdma-core libraries loaded
//! by a tool in an image that lacks them, and the NVIDIA stack from a faithful fake host tree
//! (stub driver library compiled here, device nodes made with mknod, a stub nvidia-smi), since
//! this machine has no GPU and no InfiniBand. tests/gpu/check-real-gpu.sh does the real check.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::world;

fn sh(cmd: &str) {
    assert!(Command::new("sh").arg("-c").arg(cmd).status().unwrap().success(), "failed: {cmd}");
}

#[test]
fn hybrid_model_loads_the_hosts_verbs_library_in_an_image_without_it() {
    let w = world();
    let tool = Path::new("/usr/bin/ibv_devices");
    assert!(tool.exists(), "ibv_devices missing: scripts/install-deps.sh installs ibverbs-utils");
    let img = harness::glibc_image("verbs", &[(tool, "/usr/bin/ibv_devices")]);
    let img = img.to_str().unwrap();
    // Without injection the image cannot even load the tool.
    let out = w.run(&["exec", "--mpi=none", img, "ibv_devices"]);
    assert_eq!(out.code(), Some(127), "{}", out.stderr());
    assert!(out.stderr().contains("libibverbs.so.1"), "{}", out.stderr());
    // With the default hybrid model the host's rdma-core is bound in and found first.
    // No InfiniBand here: the tool runs, asks the host's libibverbs for devices and reports
    // that the kernel has none, as it does natively on this host.
    let out = w
        .run(&[
            "exec",
            img,
            "sh",
            "-c",
            "ibv_devices 2>&1; echo rc=$?; echo LD=$LD_LIBRARY_PATH; ls /.berth/host/lib",
        ])
        .ok();
    let native = Command::new("ibv_devices").output().unwrap();
    let native_said = String::from_utf8_lossy(&native.stderr).trim().to_string();
    assert!(out.starts_with(&native_said), "same answer as natively ({native_said}): {out}");
    assert!(out.contains(&format!("rc={}", native.status.code().unwrap())), "{out}");
    assert!(out.contains("LD=/.berth/host/lib"), "{out}");
    assert!(
        out.contains("libibverbs.so.1") && out.contains("libnl-3.so.200"),
        "library and its closure: {out}"
    );
    assert!(!out.contains("libc.so.6"), "glibc itself is never injected: {out}");
    let plan = w.run(&["exec", "--dry-run", img, "true"]).ok();
    assert!(plan.contains("host fabric library (libibverbs.so.1)"), "{plan}");
}

#[test]
fn injected_libraries_refused_for_an_image_without_glibc_when_asked_for() {
    let w = world();
    // The busybox image is static: asking for the host MPI cannot work, and says why.
    w.run(&["exec", "--mpi=host", w.image(), "true"]).fails_with(&["no glibc"]);
    // Not asking (site default) keeps static images working, and leaves no empty placeholder
    // in the library path (a loader would stop at it: "file too short").
    let out = w.run(&["exec", w.image(), "sh", "-c", "ls /.berth/host/lib 2>/dev/null | wc -l"]).ok();
    assert_eq!(out.trim(), "0", "nothing injected into an image without glibc");
}

/// A fake NVIDIA host: driver 535.104.05, four GPUs, stub libcuda/libnvidia-ml, nvidia-smi.
fn fake_nvidia_host() -> PathBuf {
    let w = world();
    let h = w.path("nvhost");
    let _ = std::fs::remove_dir_all(&h);
    let lib = h.join("usr/lib/x86_64-linux-gnu");
    for d in ["usr/lib/x86_64-linux-gnu", "usr/bin", "dev", "proc/driver/nvidia", "etc"] {
        std::fs::create_dir_all(h.join(d)).unwrap();
    }
    let stub = |src: &str, soname: &str, file: &str| {
        let c = w.path(&format!("{soname}.c"));
        std::fs::write(&c, src).unwrap();
        sh(&format!("cc -shared -fPIC -Wl,-soname,{soname} -o {}/{file} {}", lib.display(), c.display()));
        std::os::unix::fs::symlink(file, lib.join(soname)).unwrap();
    };
    stub("int cuInit(unsigned f){(void)f;return 0;}\n", "libcuda.so.1", "libcuda.so.535.104.05");
    stub("int nvmlInit_v2(void){return 0;}\n", "libnvidia-ml.so.1", "libnvidia-ml.so.535.104.05");
    for (name, minor) in [("nvidia0", 0), ("nvidia1", 1), ("nvidia2", 2), ("nvidia3", 3), ("nvidiactl", 255)]
    {
        sh(&format!("mknod -m 0666 {}/dev/{name} c 195 {minor}", h.display()));
    }
    sh(&format!("mknod -m 0666 {}/dev/nvidia-uvm c 509 0", h.display()));
    std::fs::write(
        h.join("proc/driver/nvidia/version"),
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n",
    )
    .unwrap();
    std::fs::write(h.join("usr/bin/nvidia-smi"), "#!/bin/sh\necho 'GPU 0: Fake H200 (UUID: GPU-fake)'\n")
        .unwrap();
    std::fs::set_permissions(h.join("usr/bin/nvidia-smi"), std::fs::Permissions::from_mode(0o755)).unwrap();
    sh(&format!("ldconfig -r {}", h.display()));
    sh(&format!("chmod -R a+rX {}", h.display()));
    h
}

#[test]
fn nvidia_driver_and_only_the_jobs_gpus() {
    let w = world();
    let host = fake_nvidia_host();
    let prog = w.path("cuinit-check");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/helpers/cuinit-check.c");
    sh(&format!("cc -O2 -o {} {}", prog.display(), src.display()));
    let img = harness::glibc_image("cuda", &[(&prog, "/usr/bin/cuinit-check")]);
    let cfg = w.path("nv.toml");
    std::fs::write(&cfg, format!("[inject]\nmpi = \"none\"\nhost_root = \"{}\"\n", host.display())).unwrap();
    let script = "cuinit-check; ls /dev | grep nvidia | tr '\\n' ' '; echo; echo CVD=$CUDA_VISIBLE_DEVICES; nvidia-smi";
    let out = w
        .berth(&["exec", "--nv", img.to_str().unwrap(), "sh", "-c", script])
        .env("BERTH_CONFIG", &cfg)
        .env("SLURM_STEP_GPUS", "1,3")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "cuInit=0", "the image's program loaded the host driver: {stdout}");
    assert_eq!(lines[1].trim(), "nvidia-uvm nvidia1 nvidia3 nvidiactl", "only the job's GPUs: {stdout}");
    assert_eq!(lines[2], "CVD=0,1", "renumbered from 0 as Slurm does: {stdout}");
    assert_eq!(lines[3], "GPU 0: Fake H200 (UUID: GPU-fake)");
    // Without --nv (and no GPUs from Slurm) nothing of the driver comes in.
    let out = w
        .berth(&["exec", img.to_str().unwrap(), "sh", "-c", "cuinit-check; ls /dev | grep -c nvidia"])
        .env("BERTH_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("dlopen failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A fake AMD node: /dev/kfd, two AMD GPUs (render nodes 128 and 129 with their card nodes,
/// as mknod makes them: DRM major 226) and an Intel iGPU render node, sysfs vendor ids and
/// DRM siblings as the kernel lays them out, the HSA runtime in the loader cache and the HIP
/// runtime (which needs it; its hipInit calls hsa_init) only under /opt/rocm/lib, and a stub
/// rocminfo.
fn fake_amd_host() -> PathBuf {
    let w = world();
    let h = w.path("amdhost");
    let _ = std::fs::remove_dir_all(&h);
    let lib = h.join("usr/lib/x86_64-linux-gnu");
    let rocm = h.join("opt/rocm-6.2.0/lib");
    for d in ["usr/lib/x86_64-linux-gnu", "opt/rocm-6.2.0/lib", "opt/rocm-6.2.0/bin", "dev/dri", "etc"] {
        std::fs::create_dir_all(h.join(d)).unwrap();
    }
    let c = w.path("hsa.c");
    std::fs::write(&c, "int hsa_init(void){return 0;}\n").unwrap();
    sh(&format!(
        "cc -shared -fPIC -Wl,-soname,libhsa-runtime64.so.1 -o {}/libhsa-runtime64.so.1.14.0 {}",
        lib.display(),
        c.display()
    ));
    std::os::unix::fs::symlink("libhsa-runtime64.so.1.14.0", lib.join("libhsa-runtime64.so.1")).unwrap();
    let c = w.path("hip.c");
    std::fs::write(&c, "int hsa_init(void);\nint hipInit(unsigned f){(void)f;return hsa_init();}\n").unwrap();
    sh(&format!(
        "cc -shared -fPIC -Wl,-soname,libamdhip64.so.6 -o {}/libamdhip64.so.6.2.60200 {} -L{} -l:libhsa-runtime64.so.1",
        rocm.display(),
        c.display(),
        lib.display()
    ));
    std::os::unix::fs::symlink("libamdhip64.so.6.2.60200", rocm.join("libamdhip64.so.6")).unwrap();
    std::os::unix::fs::symlink("rocm-6.2.0", h.join("opt/rocm")).unwrap();
    std::fs::write(h.join("opt/rocm-6.2.0/bin/rocminfo"), "#!/bin/sh\necho 'Name: gfx90a'\n").unwrap();
    std::fs::set_permissions(h.join("opt/rocm-6.2.0/bin/rocminfo"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    sh(&format!("mknod -m 0666 {}/dev/kfd c 235 0", h.display()));
    for (name, minor) in [
        ("card0", 0),
        ("card1", 1),
        ("card2", 2),
        ("renderD128", 128),
        ("renderD129", 129),
        ("renderD130", 130),
    ] {
        sh(&format!("mknod -m 0666 {}/dev/dri/{name} c 226 {minor}", h.display()));
    }
    for (render, card, vendor) in [(128, 1, "0x1002"), (129, 2, "0x1002"), (130, 0, "0x8086")] {
        let dev = h.join(format!("sys/class/drm/renderD{render}/device"));
        std::fs::create_dir_all(dev.join(format!("drm/card{card}"))).unwrap();
        std::fs::create_dir_all(dev.join(format!("drm/renderD{render}"))).unwrap();
        std::fs::write(dev.join("vendor"), format!("{vendor}\n")).unwrap();
    }
    // /opt/rocm/lib is not in the cache, as on most ROCm installs.
    sh(&format!("ldconfig -r {}", h.display()));
    sh(&format!("chmod -R a+rX {}", h.display()));
    h
}

#[test]
fn rocm_devices_libraries_and_only_the_jobs_gpus() {
    let w = world();
    let host = fake_amd_host();
    let prog = w.path("hipinit-check");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/helpers/hipinit-check.c");
    sh(&format!("cc -O2 -o {} {}", prog.display(), src.display()));
    let img = harness::glibc_image("hip", &[(&prog, "/usr/bin/hipinit-check")]);
    let img = img.to_str().unwrap();
    let cfg = w.path("rocm.toml");
    std::fs::write(&cfg, format!("[inject]\nmpi = \"none\"\nhost_root = \"{}\"\n", host.display())).unwrap();
    let script = "hipinit-check; ls /dev/dri | tr '\\n' ' '; echo; ls /dev/kfd; \
                  echo ROCR=$ROCR_VISIBLE_DEVICES HIP=$HIP_VISIBLE_DEVICES; rocminfo";
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = w.berth(args);
        c.env("BERTH_CONFIG", &cfg);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // --rocm with the GPU Slurm gave (named by its device file's number, as Slurm's gres
    // plugin does), and the same GPU named by ROCm's own variable.
    for env in [
        [("SLURM_STEP_GPUS", "129"), ("ROCR_VISIBLE_DEVICES", "1")],
        [("ROCR_VISIBLE_DEVICES", "1"), ("X", "")],
    ] {
        let (ok, out, err) = run(&["exec", "--rocm", img, "sh", "-c", script], &env);
        assert!(ok, "{out}\n{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0], "hipInit=0",
            "the image's program loaded the host's HIP and HSA runtimes: {out}"
        );
        assert_eq!(lines[1].trim(), "card2 renderD129", "only the job's GPU, with its card node: {out}");
        assert_eq!(lines[2], "/dev/kfd");
        assert_eq!(lines[3], "ROCR=0 HIP=0", "renumbered from 0: {out}");
        assert_eq!(lines[4], "Name: gfx90a");
    }
    // GPUs from Slurm on an AMD node, without --rocm: the same, automatically.
    let (ok, out, err) = run(&["exec", img, "sh", "-c", script], &[("SLURM_STEP_GPUS", "128,129")]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.starts_with("hipInit=0\ncard1 card2 renderD128 renderD129 \n/dev/kfd\nROCR=0,1 HIP=0,1\n"),
        "{out}"
    );
    // Without --rocm (and no GPUs from Slurm) nothing of it comes in.
    let (_, out, _) = run(&["exec", img, "sh", "-c", "hipinit-check; ls /dev/kfd /dev/dri 2>&1"], &[]);
    assert!(out.starts_with("dlopen failed") && out.contains("No such file"), "{out}");
    // A GPU the node does not have: one clear message, nothing started.
    let (ok, _, err) = run(&["exec", "--rocm", img, "true"], &[("SLURM_STEP_GPUS", "131")]);
    assert!(!ok && err.starts_with("berth: ") && err.contains("AMD GPU 131"), "{err}");
}

#[test]
fn bad_injection_settings_get_one_clear_message() {
    let w = world();
    let cfg = w.path("inject-bad.toml");
    std::fs::write(&cfg, "[inject]\nextra_libs = [\"libdoesnotexist.so.9\"]\n").unwrap();
    harness::Out(w.berth(&["exec", w.image(), "true"]).env("BERTH_CONFIG", &cfg).output().unwrap())
        .fails_with(&["libdoesnotexist.so.9", "extra_libs"]);
    std::fs::write(&cfg, "[inject]\nnvidia = \"never\"\n").unwrap();
    harness::Out(w.berth(&["exec", "--nv", w.image(), "true"]).env("BERTH_CONFIG", &cfg).output().unwrap())
        .fails_with(&["never"]);
    std::fs::write(&cfg, "[inject]\nmpi_allowed = [\"hybrid\"]\n").unwrap();
    harness::Out(
        w.berth(&["exec", "--mpi=host", w.image(), "true"]).env("BERTH_CONFIG", &cfg).output().unwrap(),
    )
    .fails_with(&["host"]);
}

/// An image with its own (stub) MPICH-ABI library and an application linked against it.
fn mpich_abi_image() -> PathBuf {
    let w = world();
    let dir = w.path("mpi-build");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("stub.c"),
        "#include <string.h>\n__attribute__((used)) const char mpich_version[] = \"MPICH Version:\\t4.0.0\";\n\
         int MPI_Get_library_version(char *s, int *len) { strcpy(s, \"IMAGE STUB MPI\"); *len = 14; return 0; }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("app.c"),
        "#include <stdio.h>\nint MPI_Get_library_version(char *, int *);\n\
         int main(void) { static char b[8192]; int l = 0; MPI_Get_library_version(b, &l); printf(\"%s\\n\", b); return 0; }\n",
    )
    .unwrap();
    let d = dir.display();
    sh(&format!("cc -shared -fPIC -Wl,-soname,libmpich.so.12 -o {d}/libmpich.so.12.0.0 {d}/stub.c && ln -sf libmpich.so.12.0.0 {d}/libmpich.so"));
    sh(&format!("cc -o {d}/mpi-version {d}/app.c -L{d} -lmpich"));
    harness::glibc_image(
        "mpich-abi",
        &[
            (&dir.join("libmpich.so.12.0.0"), "/lib/x86_64-linux-gnu/libmpich.so.12.0.0"),
            (&dir.join("mpi-version"), "/usr/bin/mpi-version"),
        ],
    )
}

#[test]
fn replace_model_runs_the_image_application_on_the_host_mpi() {
    let w = world();
    assert!(
        Path::new("/usr/lib/x86_64-linux-gnu/libmpich.so.12").exists(),
        "scripts/install-deps.sh installs libmpich-dev"
    );
    let img = mpich_abi_image();
    let img = img.to_str().unwrap();
    assert_eq!(w.run(&["exec", "--mpi=none", img, "mpi-version"]).ok(), "IMAGE STUB MPI\n");
    let out = w.run(&["exec", "--mpi=host", img, "mpi-version"]).ok();
    assert!(out.starts_with("MPICH Version:") && out.contains("4.0.2"), "the host's MPICH answered: {out}");
    let plan = w.run(&["exec", "--dry-run", "--mpi=host", img, "mpi-version"]).ok();
    assert!(plan.contains("host MPI") && plan.contains("libmpich.so.12"), "{plan}");
    // A host Open MPI cannot stand in for an MPICH-ABI library: refused, both sides named.
    let cfg = w.path("ompi-host.toml");
    std::fs::write(&cfg, "[inject]\nmpi_libs = [\"libmpi.so.40\"]\n").unwrap();
    harness::Out(
        w.berth(&["exec", "--mpi=host", img, "mpi-version"]).env("BERTH_CONFIG", &cfg).output().unwrap(),
    )
    .fails_with(&["libmpi.so.40"]);
}
