//! One container per node per job step: a holder sets it up, tasks join it and share its
//! namespaces (and so POSIX shared memory), `berth stop` leaves nothing behind.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use harness::{world, World};

struct Holder {
    child: Child,
    name: String,
}

fn start_holder(w: &World, name: &str, extra: &[&str]) -> Holder {
    let mut args = vec!["holder", "--name", name];
    args.extend_from_slice(extra);
    args.push(w.image());
    let mut child = w.berth(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let line = harness::first_line(&mut child);
    assert_eq!(
        line,
        "ready\n",
        "holder did not become ready: {:?}",
        child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
    Holder { child, name: name.to_string() }
}

fn join(w: &World, name: &str, script: &str) -> harness::Out {
    w.run(&["exec", "--join", name, "sh", "-c", script])
}

#[test]
fn joined_tasks_share_namespaces_and_shared_memory() {
    let w = world();
    let h = start_holder(w, "step-shm", &["--env", "STEP_VAR=from-holder"]);
    let holder_ns = |ns: &str| std::fs::read_link(format!("/proc/{}/ns/{ns}", h.child.id())).unwrap();
    let a = join(w, &h.name, "readlink /proc/self/ns/user; readlink /proc/self/ns/mnt; shmtool put /berth-step hello-from-a; cat /etc/os-release | grep ^NAME; echo $STEP_VAR $APP_HOME").ok();
    let b =
        join(w, &h.name, "readlink /proc/self/ns/user; readlink /proc/self/ns/mnt; shmtool get /berth-step")
            .ok();
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    assert_eq!(a[0], holder_ns("user").to_str().unwrap(), "joiner A in the holder's user namespace");
    assert_eq!(a[1], holder_ns("mnt").to_str().unwrap());
    assert_eq!(&a[..2], &b[..2], "both joiners share user and mount namespaces");
    assert_eq!(a[2], "NAME=\"berth-busybox\"");
    assert_eq!(a[3], "from-holder /opt/app", "holder's --env and the image env reach joiners");
    assert_eq!(b[2], "hello-from-a", "POSIX shared memory is shared between joined tasks");
    stop(w, h);
}

#[test]
fn names_are_unique_and_stop_cleans_up() {
    let w = world();
    let h = start_holder(w, "step-stop", &[]);
    w.run(&["holder", "--name", "step-stop", w.image()]).fails_with(&["step-stop", "already running"]);
    // A task left running in the container is ended by `stop` too.
    let mut bg = w.berth(&["exec", "--join", "step-stop", "sleep", "8888"]).spawn().unwrap();
    let t0 = Instant::now();
    while !w.user_processes().iter().any(|p| p.starts_with("sleep 8888")) {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let holder_pid = h.child.id();
    let fuse_pid = std::fs::read_to_string(format!("/proc/{holder_pid}/task/{holder_pid}/children")).unwrap();
    let fuse_pid = fuse_pid.trim();
    assert!(harness::is_image_server(fuse_pid), "{fuse_pid}");
    stop(w, h);
    let _ = bg.wait();
    let left: Vec<String> = w
        .user_processes()
        .into_iter()
        .filter(|p| p.starts_with("sleep 8888") || p.contains("step-stop"))
        .collect();
    assert!(left.is_empty(), "left after stop: {left:?}");
    assert!(!std::path::Path::new(&format!("/proc/{holder_pid}")).exists());
    assert!(!std::path::Path::new(&format!("/proc/{fuse_pid}")).exists(), "FUSE server stopped");
    join(w, "step-stop", "true").fails_with(&["step-stop", "not running"]);
}

#[test]
fn warming_the_step_program_changes_nothing_a_task_sees() {
    let w = world();
    // The Slurm plugin passes the step's program as typed; one the image lacks is not an error.
    let h = start_holder(w, "step-warm-missing", &["--warm", "no-such-program"]);
    assert_eq!(join(w, &h.name, "echo joined").ok().trim(), "joined");
    stop(w, h);
    let h = start_holder(w, "step-warm", &["--warm", "sh"]);
    let holder_pid = h.child.id();
    assert_eq!(join(w, &h.name, "grep ^NAME /etc/os-release").ok().trim(), "NAME=\"berth-busybox\"");
    // Stop still ends it cleanly (exit 0), record and FUSE server gone. (That the reading
    // thread leaves SIGTERM to the holder is checked where the thread is made, in
    // runtime's sys::process tests: here the read is usually over before the stop.)
    stop(w, h);
    assert!(!std::path::Path::new(&format!("/proc/{holder_pid}")).exists());
    join(w, "step-warm", "true").fails_with(&["step-warm", "not running"]);
}

#[test]
fn bad_holder_requests() {
    let w = world();
    join(w, "never-started", "true").fails_with(&["never-started", "not running"]);
    w.run(&["holder", "--name", "../evil", w.image()]).fails_with(&["../evil", "letters"]);
    w.run(&["holder", "--name", "bad-image", "/no/such.img"]).fails_with(&["/no/such.img"]);
}

fn stop(w: &World, mut h: Holder) {
    w.run(&["stop", &h.name]).ok();
    let st = h.child.wait().unwrap();
    assert!(st.success(), "holder exits cleanly on stop: {st:?}");
}

/// A scratch directory of the test user's, used as the working directory of warm runs: the
/// directory is part of a container's identity, so each test gets containers of its own.
fn own_dir(w: &World, name: &str) -> std::path::PathBuf {
    let d = w.path(name);
    std::fs::create_dir_all(&d).unwrap();
    nix::unistd::chown(&d, Some(w.uid.into()), Some(w.gid.into())).unwrap();
    d
}

/// `keep_warm_seconds = secs` as a config file the user can read.
fn warm_config(w: &World, dir: &std::path::Path, secs: u64) -> std::path::PathBuf {
    let cfg = dir.join("berth.toml");
    std::fs::write(&cfg, format!("keep_warm_seconds = {secs}\n")).unwrap();
    let _ = w;
    cfg
}

fn warm_run(
    w: &World,
    dir: &std::path::Path,
    cfg: &std::path::Path,
    image: &str,
    extra: &[&str],
    script: &str,
) -> String {
    let mut args = vec!["exec"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[image, "sh", "-c", script]);
    harness::Out(w.berth(&args).current_dir(dir).env("BERTH_CONFIG", cfg).output().unwrap()).ok()
}

/// The warm holder whose mount namespace is `mnt` ("mnt:[N]" as readlink shows it), if running.
fn warm_holder_of(w: &World, mnt: &str) -> Option<(String, i32)> {
    let dir = std::path::PathBuf::from(format!("/tmp/berth-{}/holders", w.uid));
    let ino: u64 = mnt.trim().trim_start_matches("mnt:[").trim_end_matches(']').parse().unwrap();
    for e in std::fs::read_dir(&dir).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_prefix("warm-").and_then(|n| n.strip_suffix(".json")) else { continue };
        let Ok(st) = std::fs::read_to_string(e.path()) else { continue };
        let v: serde_json::Value = serde_json::from_str(&st).unwrap();
        if v["mnt_ns"].as_u64() == Some(ino) {
            return Some((format!("warm-{stem}"), v["pid"].as_i64().unwrap() as i32));
        }
    }
    None
}

fn wait_gone(w: &World, name: &str, pid: i32, within: Duration) {
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
    {
        assert!(t0.elapsed() < within, "warm holder {name} (pid {pid}) still running after {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = std::path::PathBuf::from(format!("/tmp/berth-{}/holders", w.uid));
    for f in [format!("{name}.json"), format!(".{name}.lock")] {
        assert!(!dir.join(&f).exists(), "{f} left behind by the warm holder");
    }
}

#[test]
fn identical_runs_join_a_warm_container_that_goes_when_idle() {
    let w = world();
    let dir = own_dir(w, "warm-idle");
    let cfg = warm_config(w, &dir, 2);
    let ns = "readlink /proc/self/ns/mnt";
    let first = warm_run(w, &dir, &cfg, w.image(), &[], ns);
    let second = warm_run(w, &dir, &cfg, w.image(), &[], &format!("{ns}; cat /etc/os-release; pwd"));
    assert!(second.starts_with(&first), "an identical run joins the warm container: {first} vs {second}");
    assert!(
        second.contains("berth-busybox") && second.ends_with(&format!("{}\n", dir.display())),
        "{second}"
    );
    // Different options or --no-share: a container of their own.
    assert_ne!(warm_run(w, &dir, &cfg, w.image(), &["--no-share"], ns), first, "--no-share");
    assert_ne!(warm_run(w, &dir, &cfg, w.image(), &["--cleanenv"], ns), first, "--cleanenv");
    assert_ne!(warm_run(w, &dir, &cfg, w.image(), &["--env", "X=1"], ns), first, "--env");
    assert_ne!(warm_run(w, &dir, &cfg, w.image(), &["--mpi=none"], ns), first, "--mpi (host libraries)");
    let (name, pid) = warm_holder_of(w, &first).expect("a warm holder runs between runs");
    // Nobody inside: it goes after keep_warm_seconds (2 s), with its FUSE server and records.
    let fuse: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(fuse.len(), 1, "the holder's only child is its FUSE server: {fuse:?}");
    wait_gone(w, &name, pid, Duration::from_secs(10));
    assert!(!std::path::Path::new(&format!("/proc/{}", fuse[0])).exists(), "FUSE server {} left", fuse[0]);
    // The next run starts afresh: a holder of its own (the kernel may give the new mount
    // namespace the freed one's inode number, so the holder's pid tells them apart).
    let again = warm_run(w, &dir, &cfg, w.image(), &[], ns);
    let (_, again_pid) = warm_holder_of(w, &again).expect("the next run keeps a warm holder of its own");
    assert_ne!(again_pid, pid, "the next run joined the holder that went");
}

#[test]
fn a_warm_container_stays_while_a_run_is_inside() {
    let w = world();
    let dir = own_dir(w, "warm-busy");
    let cfg = warm_config(w, &dir, 1);
    let mut long = w
        .berth(&["exec", w.image(), "sh", "-c", "readlink /proc/self/ns/mnt; read line; echo got $line"])
        .current_dir(&dir)
        .env("BERTH_CONFIG", &cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(long.stdout.take().unwrap());
    let mut ns = String::new();
    out.read_line(&mut ns).unwrap();
    // Well past keep_warm_seconds: the running program keeps it.
    std::thread::sleep(Duration::from_millis(2500));
    let (name, pid) = warm_holder_of(w, &ns).expect("held while a program runs inside");
    assert_eq!(
        warm_run(w, &dir, &cfg, w.image(), &[], "readlink /proc/self/ns/mnt"),
        ns,
        "a new run joins it"
    );
    use std::io::{Read, Write};
    long.stdin.take().unwrap().write_all(b"eof\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got eof\n");
    assert!(long.wait().unwrap().success());
    wait_gone(w, &name, pid, Duration::from_secs(10));
}

#[test]
fn a_replaced_image_is_never_served_from_a_warm_container() {
    let w = world();
    let dir = own_dir(w, "warm-replaced");
    let cfg = warm_config(w, &dir, 30);
    let img = dir.join("app.sqsh");
    std::fs::copy(&w.image, &img).unwrap();
    let before = warm_run(
        w,
        &dir,
        &cfg,
        img.to_str().unwrap(),
        &[],
        "readlink /proc/self/ns/mnt; cat /etc/os-release",
    );
    assert!(before.contains("berth-busybox"), "{before}");
    // Rebuilt in place (new content, same path), as `berth build` does: write aside, rename.
    let root = dir.join("root2");
    std::process::Command::new("cp").arg("-a").arg(&w.rootfs).arg(&root).status().unwrap();
    std::fs::write(root.join("etc/os-release"), "NAME=\"rebuilt\"\n").unwrap();
    harness::mksquashfs(&root, &dir.join("new.sqsh"));
    std::fs::rename(dir.join("new.sqsh"), &img).unwrap();
    let after = warm_run(
        w,
        &dir,
        &cfg,
        img.to_str().unwrap(),
        &[],
        "readlink /proc/self/ns/mnt; cat /etc/os-release",
    );
    assert!(after.contains("NAME=\"rebuilt\""), "the new image is used: {after}");
    for out in [before, after] {
        let ns = out.lines().next().unwrap().to_string();
        if let Some((name, pid)) = warm_holder_of(w, &ns) {
            assert!(w.run(&["stop", &name]).0.status.success());
            wait_gone(w, &name, pid, Duration::from_secs(10));
        }
    }
}

/// A site configuration (root-owned, as an administrator's) with mount_mode = "privileged"
/// and the given vetted directory.
fn privileged_config(w: &World, name: &str, allowed: &std::path::Path) -> std::path::PathBuf {
    let cfg = w.path(name);
    std::fs::write(
        &cfg,
        format!("mount_mode = \"privileged\"\n[privileged]\nallowed_dirs = [\"{}\"]\n", allowed.display()),
    )
    .unwrap();
    cfg
}

/// `berth holder --user UID` started by root, as the Slurm plugin does in privileged mode.
fn start_root_holder(
    w: &World,
    cfg: &std::path::Path,
    name: &str,
    image: &std::path::Path,
) -> std::process::Output {
    let mut child = harness::root_holder(cfg, w.uid, &w.home, Some(harness::USER), name, image);
    let line = harness::first_line(&mut child);
    if line == "ready\n" {
        // Running: hand back an empty, successful output; the caller stops it by name.
        std::mem::forget(child);
        return std::process::Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(0),
            stdout: line.into_bytes(),
            stderr: vec![],
        };
    }
    child.wait_with_output().unwrap()
}

/// `berth stop NAME`, then the image's loop device must go (the kernel clears it).
fn stop_and_check_loop_freed(w: &World, name: &str, image: &std::path::Path) {
    assert!(w.run(&["stop", name]).0.status.success());
    let t0 = Instant::now();
    while !loop_devices_for(image).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "loop device left: {:?}", loop_devices_for(image));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn loop_devices_for(image: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("losetup").arg("-a").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*image.to_string_lossy()))
        .map(String::from)
        .collect()
}

#[test]
fn privileged_mode_mounts_with_the_kernel_then_runs_as_the_user() {
    let w = world();
    // The image sits in a root-owned directory the site vetted; a copy of its own, so the
    // loop device can be told apart from other tests'.
    let vetted = w.path("vetted");
    std::fs::create_dir_all(&vetted).unwrap();
    let image = vetted.join("app.sqsh");
    std::fs::copy(&w.image, &image).unwrap();
    let cfg = privileged_config(w, "privileged.toml", &vetted);
    let out = start_root_holder(w, &cfg, "priv-1", &image);
    assert!(out.status.success() && out.stdout == b"ready\n", "{}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/tmp/berth-{}/holders/priv-1.json", w.uid)).unwrap(),
    )
    .unwrap();
    let pid = st["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![w.uid.to_string(); 4],
        "the holder became the user: {uids}"
    );
    assert_eq!(loop_devices_for(&image).len(), 1, "one loop device: {:?}", loop_devices_for(&image));

    let inside = join(
        w,
        "priv-1",
        "id -u; cat /etc/os-release; grep ' / / ' /proc/self/mountinfo; touch /etc/x 2>&1; true",
    )
    .ok();
    assert!(inside.starts_with(&format!("{}\n", w.uid)), "{inside}");
    assert!(inside.contains("berth-busybox"), "{inside}");
    let root = inside.lines().find(|l| l.contains(" / / ")).unwrap_or_else(|| panic!("root mount: {inside}"));
    assert!(root.contains("ro,nosuid,nodev"), "{root}");
    assert!(inside.contains("Read-only file system"), "{inside}");
    // Served by the kernel (the loop device above), not by a FUSE server.
    let fuse: Vec<String> =
        w.user_image_servers().into_iter().filter(|p| p.contains(&*image.to_string_lossy())).collect();
    assert!(fuse.is_empty(), "{fuse:?}");
    // The host's mount table never saw the image mount.
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains("/run/berth-privileged/image"));

    stop_and_check_loop_freed(w, "priv-1", &image);
}

#[test]
fn privileged_mode_mounts_singularity2_ext3_images() {
    let w = world();
    let vetted = w.path("vetted-ext3");
    std::fs::create_dir_all(&vetted).unwrap();
    let image = vetted.join("legacy.img");
    harness::singularity2_image(&w.rootfs, &image);
    let cfg = privileged_config(w, "privileged-ext3.toml", &vetted);
    let out = start_root_holder(w, &cfg, "priv-ext3", &image);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        loop_devices_for(&image).len(),
        1,
        "the ext3 inside, on a loop device: {:?}",
        loop_devices_for(&image)
    );
    let inside = join(w, "priv-ext3", "cat /etc/os-release; grep ' / / ' /proc/self/mountinfo").ok();
    assert!(inside.contains("berth-busybox"), "{inside}");
    assert!(inside.lines().any(|l| l.contains(" / / ") && l.contains("ro,nosuid,nodev")), "{inside}");
    stop_and_check_loop_freed(w, "priv-ext3", &image);
}

#[test]
fn privileged_mode_refuses_images_the_site_did_not_vet() {
    let w = world();
    let vetted = w.path("vetted-empty");
    std::fs::create_dir_all(&vetted).unwrap();
    let cfg = privileged_config(w, "privileged-refuse.toml", &vetted);
    // Outside the vetted directory (here: the user's own copy).
    let own = w.user_file("own.sqsh", &std::fs::read(&w.image).unwrap());
    let out = start_root_holder(w, &cfg, "priv-refused", &own);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("own.sqsh") && err.contains("not under an allowed directory"), "{err}");
    // Inside it but writable by others: refused too.
    let loose = vetted.join("loose.sqsh");
    std::fs::copy(&w.image, &loose).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = start_root_holder(w, &cfg, "priv-refused", &loose);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by group or others"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        loop_devices_for(&own).is_empty() && loop_devices_for(&loose).is_empty(),
        "no loop device attached"
    );
    // --user is for root only.
    w.run(&["holder", "--user", &w.uid.to_string(), "--name", "x", w.image()])
        .fails_with(&["--user", "root context"]);
}
