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
