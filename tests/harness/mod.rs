//! Test harness: a real unprivileged user, real images built in the run (busybox-static +
//! mksquashfs, Singularity 2.x and SIF layouts), and `berth` run as that user exactly as a
//! person would. Needs root (to create the user); CI runs as root.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

pub mod registry;

pub const USER: &str = "berthtest";

pub struct World {
    /// World-readable scratch tree for this test run.
    pub dir: PathBuf,
    pub berth: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The standard busybox image (SquashFS).
    pub image: PathBuf,
    /// Its root tree (also usable as a directory image).
    pub rootfs: PathBuf,
}

static WORLD: OnceLock<World> = OnceLock::new();

pub fn world() -> &'static World {
    WORLD.get_or_init(setup)
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "setup command failed: {cmd}");
}

fn setup() -> World {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the integration tests create an unprivileged user and must run as root (CI does); see README.md"
    );
    for tool in ["mksquashfs", "squashfuse_ll", "busybox", "cc"] {
        assert!(
            Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status().unwrap().success(),
            "{tool} is missing: run .ci/run or `apt-get install squashfs-tools squashfuse busybox-static gcc`"
        );
    }
    // Real systems have /dev/fuse 0666; this machine ships it 0600.
    sh("chmod 0666 /dev/fuse");
    let pw = ensure_user(USER);
    remove_dirs_of_ended_runs(&std::env::temp_dir());
    let dir = std::env::temp_dir().join(format!("berth-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary may sit under a private directory (e.g. /root): copy it where the user can run it.
    let berth = dir.join("berth");
    // Tests of other packages (berth-pbs) use the harness without the `berth` binary.
    if let Some(bin) = option_env!("CARGO_BIN_EXE_berth") {
        std::fs::copy(bin, &berth).unwrap();
    }
    let rootfs = dir.join("rootfs");
    build_busybox_root(&rootfs);
    let image = dir.join("app.sqsh");
    mksquashfs(&rootfs, &image);
    World { dir, berth, uid: pw.uid.as_raw(), gid: pw.gid.as_raw(), home: pw.dir, image, rootfs }
}

/// An ordinary user of this host, created if missing. Test binaries run at once and each may
/// create the same user on a new machine: the check and `useradd` run under one lock, so the
/// second one finds the user instead of failing with "already exists".
pub fn ensure_user(name: &str) -> nix::unistd::User {
    sh(&format!(
        "flock /run/berth-test-users.lock sh -c 'id -u {name} >/dev/null 2>&1 || useradd -m -s /bin/sh {name}'"
    ));
    nix::unistd::User::from_name(name).unwrap().unwrap_or_else(|| panic!("user {name} missing after useradd"))
}

/// An ordinary user of this host (a hostile second user, a victim), created if missing.
pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub fn user(name: &'static str) -> User {
    let pw = ensure_user(name);
    User { name, uid: pw.uid.as_raw(), gid: pw.gid.as_raw(), home: pw.dir }
}

/// The world of a test binary lives in a static, which is never dropped, so its directory
/// (images of a few hundred MB) outlives the run. Each run removes those of runs whose process
/// has ended; a live one (another test binary running now) keeps its own.
fn remove_dirs_of_ended_runs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("berth-it-")) else { continue };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if !Path::new("/proc").join(pid).exists() && !mounted_under(&e.path()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Whether anything is mounted at or below `dir` (a removal must never walk into a mount).
fn mounted_under(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| Path::new(m).starts_with(dir))
}

/// A small image: busybox-static, a static POSIX-shm probe, Apptainer-layout metadata.
pub fn build_busybox_root(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    for d in ["bin", "etc", "data", "opt/app/bin", ".singularity.d/env", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    // Debian 12's busybox lists `busybox` itself among its applets: never link the binary to itself.
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let helpers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/helpers");
    let st = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(root.join("usr/bin/shmtool"))
        .arg(helpers.join("shmtool.c"))
        .status()
        .unwrap();
    assert!(st.success(), "building the shm probe failed");
    let w = |p: &str, s: &str| std::fs::write(root.join(p), s).unwrap();
    w("etc/os-release", "PRETTY_NAME=\"berth test image\"\nNAME=\"berth-busybox\"\nID=berthtest\n");
    w("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    w("etc/group", "root:x:0:\n");
    w("opt/app/bin/hello", "#!/bin/sh\necho \"hello from the image, args: $*\"\n");
    w(".singularity.d/runscript", "#!/bin/sh\necho \"runscript got: $*\"\nexit 0\n");
    w(
        ".singularity.d/env/90-environment.sh",
        "export APP_HOME=/opt/app\nexport PATH=/opt/app/bin:$PATH\nexport GREETING=\"hi ${USER:-nobody}\"\n",
    );
    w(
        ".singularity.d/labels.json",
        "{\"org.label-schema.name\": \"berth-busybox\", \"Maintainer\": \"berth tests\"}\n",
    );
    w(".singularity.d/runscript.help", "This image says hello.\n");
    w(".singularity.d/Singularity", "Bootstrap: scratch\n%runscript\n  echo hi\n");
    std::fs::set_permissions(root.join("opt/app/bin/hello"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(root.join(".singularity.d/runscript"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    // A world-writable directory, to tell --writable-tmpfs from a read-only root.
    std::fs::set_permissions(root.join("data"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Whether process `pid` runs (not a zombie) as an image's FUSE server: named `squashfuse_ll`
/// (`/proc/PID/stat`'s name), whether berth exec'd the program or forked itself to serve
/// through the library (whose command line is then berth's own).
pub fn is_image_server(pid: impl std::fmt::Display) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.split_once(" (")
        .and_then(|(_, rest)| rest.rsplit_once(") "))
        .is_some_and(|(name, rest)| name == "squashfuse_ll" && !rest.starts_with('Z'))
}

/// A minimal glibc image: the host's loader, libc and dash, plus `extra` host programs, with
/// its own ld.so.cache. It has no libibverbs and no libcuda of its own.
pub fn glibc_image(name: &str, extra: &[(&Path, &str)]) -> PathBuf {
    let w = world();
    let root = w.path(&format!("{name}-root"));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "usr/bin", "etc", "lib/x86_64-linux-gnu", "lib64", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // glibc's libraries, as any glibc-based image has them.
    for lib in ["libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libresolv.so.2"] {
        std::fs::copy(
            Path::new("/lib/x86_64-linux-gnu").join(lib),
            root.join("lib/x86_64-linux-gnu").join(lib),
        )
        .unwrap();
    }
    std::fs::copy("/lib64/ld-linux-x86-64.so.2", root.join("lib64/ld-linux-x86-64.so.2")).unwrap();
    std::fs::copy("/bin/dash", root.join("bin/sh")).unwrap();
    // coreutils need more than libc (libselinux...): the image gets busybox's tools.
    for prog in ["ls", "cat", "grep", "tr", "echo"] {
        let _ = std::os::unix::fs::symlink("/bin/busybox", root.join("bin").join(prog));
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for (src, dst) in extra {
        std::fs::copy(src, root.join(dst.trim_start_matches('/'))).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let st = Command::new("ldconfig").arg("-r").arg(&root).status().unwrap();
    assert!(st.success(), "ldconfig -r {}", root.display());
    let img = w.path(&format!("{name}.sqsh"));
    mksquashfs(&root, &img);
    img
}

/// `program ARGS` as the user `name` (`ids`: uid, gid) with a plain login-like environment,
/// in `cwd`, stdin closed: how every test runs berth as an ordinary user.
pub fn as_user(
    program: &Path,
    args: &[&str],
    ids: (u32, u32),
    home: &Path,
    name: &str,
    cwd: &Path,
) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .uid(ids.0)
        .gid(ids.1)
        .env_clear()
        .env("HOME", home)
        .env("USER", name)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir(cwd)
        .stdin(Stdio::null());
    c
}

/// `berth holder --user UID --name NAME IMAGE` started by root with site configuration `cfg`,
/// as the Slurm plugin starts it in privileged mode; its stdout (the ready line) and stderr
/// are pipes. `user`: the `USER` variable, when the caller's scheduler would set it.
pub fn root_holder(cfg: &Path, uid: u32, home: &Path, user: Option<&str>, name: &str, image: &Path) -> Child {
    let mut c = Command::new(&world().berth);
    c.args(["holder", "--user", &uid.to_string(), "--name", name])
        .arg(image)
        .env_clear()
        .env("BERTH_CONFIG", cfg)
        .env("HOME", home)
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = user {
        c.env("USER", u);
    }
    c.spawn().unwrap()
}

/// The first line `child` writes on its stdout (a pipe): a holder's `ready`, a program's
/// "started" mark. The rest of its output stays in the pipe, unread.
pub fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    let out = child.stdout.as_mut().expect("the child's stdout is a pipe");
    // One byte at a time: a buffered reader would swallow what follows the line.
    let mut byte = [0u8; 1];
    while std::io::Read::read(out, &mut byte).unwrap_or(0) == 1 {
        line.push(byte[0] as char);
        if byte[0] == b'\n' {
            break;
        }
    }
    line
}

pub fn mksquashfs(root: &Path, out: &Path) {
    let st = Command::new("mksquashfs")
        .arg(root)
        .arg(out)
        .args(["-noappend", "-quiet", "-all-root", "-comp", "gzip", "-no-progress"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mksquashfs failed");
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A Singularity 2.x image: the launch line, then an ext3 filesystem of `root`.
pub fn singularity2_image(root: &Path, out: &Path) {
    let fs = out.with_extension("ext3");
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext3", "-d"])
        .arg(root)
        .arg(&fs)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success(), "mke2fs failed");
    let mut bytes = b"#!/usr/bin/env run-singularity\n".to_vec();
    bytes.extend(std::fs::read(&fs).unwrap());
    std::fs::write(out, bytes).unwrap();
    std::fs::remove_file(&fs).unwrap();
}

impl World {
    /// A command running `berth ARGS` as the test user, from `cwd`, with a plain environment.
    pub fn berth(&self, args: &[&str]) -> Command {
        self.command(&self.berth, args)
    }

    /// `program ARGS` as the test user (e.g. berth under another name).
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = as_user(program, args, (self.uid, self.gid), &self.home, USER, &self.dir);
        c.env("TEST_HOST_MARK", "host");
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        Out(self.berth(args).output().expect("run berth"))
    }

    pub fn image(&self) -> &str {
        self.image.to_str().unwrap()
    }

    /// A path under the run's scratch dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A file the test user owns, with `contents`.
    pub fn user_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        nix::unistd::chown(&p, Some(self.uid.into()), Some(self.gid.into())).unwrap();
        p
    }

    /// The command lines of the test user's image FUSE servers (see [`is_image_server`]).
    pub fn user_image_servers(&self) -> Vec<String> {
        let mut v = vec![];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            use std::os::unix::fs::MetadataExt;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.metadata().is_ok_and(|m| m.uid() == self.uid) && is_image_server(&name) {
                if let Ok(cmd) = std::fs::read_to_string(e.path().join("cmdline")) {
                    v.push(cmd.replace('\0', " "));
                }
            }
        }
        v
    }

    /// Processes of the test user still running (none must be left after a test).
    pub fn user_processes(&self) -> Vec<String> {
        let mut v = vec![];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            use std::os::unix::fs::MetadataExt;
            let Ok(m) = e.metadata() else { continue };
            if m.uid() == self.uid && e.file_name().to_string_lossy().parse::<u32>().is_ok() {
                if let Ok(cmd) = std::fs::read_to_string(e.path().join("cmdline")) {
                    v.push(cmd.replace('\0', " "));
                }
            }
        }
        v
    }
}

pub struct Out(pub Output);

impl Out {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.0.status.code()
    }
    /// Assert success and return stdout.
    pub fn ok(&self) -> String {
        assert!(
            self.0.status.success(),
            "berth failed ({:?}):\nstdout: {}\nstderr: {}",
            self.0.status,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
    /// Assert berth's own failure (255) with one `berth:` message containing every needle.
    pub fn fails_with(&self, needles: &[&str]) -> String {
        let err = self.stderr();
        assert_eq!(
            self.code(),
            Some(255),
            "expected berth's error exit; stderr: {err}; stdout: {}",
            self.stdout()
        );
        assert!(err.starts_with("berth: "), "message must start with 'berth: ': {err}");
        assert_eq!(err.matches("berth: ").count(), 1, "one message expected: {err}");
        for n in needles {
            assert!(err.contains(n), "stderr lacks {n:?}: {err}");
        }
        err
    }
}
