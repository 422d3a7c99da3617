//! `berth` as a user meets it: every verb, binds, environment, exit codes, signals, image
//! formats and bad input, run as an unprivileged user on images built in this run.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::world;

#[test]
fn exec_runs_inside_the_image_as_the_user() {
    let w = world();
    let out = w
        .run(&[
            "exec",
            w.image(),
            "sh",
            "-c",
            "cat /etc/os-release; id -u; id -g; echo PATH=$PATH; pwd; echo HOME=$HOME; ls -d $HOME",
        ])
        .ok();
    assert!(out.contains("NAME=\"berth-busybox\""), "{out}");
    assert!(out.contains(&format!("\n{}\n{}\n", w.uid, w.gid)), "same uid and gid inside: {out}");
    assert!(out.contains("PATH=/opt/app/bin:/usr/local/sbin:"), "PATH is the image's: {out}");
    assert!(out.contains(&format!("\n{}\n", w.dir.display())), "workdir is the current directory: {out}");
    assert!(out.contains(&format!("HOME={}", w.home.display())), "{out}");
}

#[test]
fn user_name_resolves_and_the_root_is_read_only() {
    let w = world();
    let out =
        w.run(&["exec", w.image(), "sh", "-c", "whoami; touch /etc/x 2>&1; touch /data/x 2>&1; true"]).ok();
    assert!(out.starts_with(harness::USER), "{out}");
    assert_eq!(out.matches("Read-only file system").count(), 2, "{out}");
}

#[test]
fn run_uses_the_runscript_and_passes_arguments() {
    let w = world();
    let out = w.run(&["run", w.image(), "one", "two words"]).ok();
    assert_eq!(out, "runscript got: one two words\n");
}

#[test]
fn shell_reads_commands_and_exits_with_their_status() {
    let w = world();
    let mut c = w.berth(&["shell", w.image()]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"echo in-shell $APP_HOME\nexit 7\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-shell /opt/app\n");
}

#[test]
fn exit_status_passes_through() {
    let w = world();
    assert_eq!(w.run(&["exec", w.image(), "sh", "-c", "exit 42"]).code(), Some(42));
    assert_eq!(w.run(&["exec", w.image(), "true"]).code(), Some(0));
    let out = w.run(&["exec", w.image(), "no-such-program"]);
    assert_eq!(out.code(), Some(127), "like a shell");
    assert_eq!(out.stderr(), "berth: no-such-program: command not found in the image\n");
    let out = w.run(&["exec", w.image(), "/etc/os-release"]);
    assert_eq!(out.code(), Some(126), "not executable: {}", out.stderr());
}

/// The program starts as a forked one did (it is now started by a child that shares berth's
/// memory until it execs), in a fresh container and in a warm one: no_new_privs set, no
/// signal blocked, its working directory, a file without `#!` run by the image's shell, and
/// berth's messages and statuses when it cannot start.
#[test]
fn the_program_starts_hardened_with_its_signals_and_directory() {
    let w = world();
    let script = w.user_file("no-shebang", b"echo script-ran-by-sh\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let probe = "grep -E '^(NoNewPrivs|SigBlk)' /proc/self/status; pwd";
    for share in [&["--no-share"][..], &[]] {
        let run = |args: &[&str]| {
            let mut a = vec!["exec"];
            a.extend_from_slice(share);
            a.extend_from_slice(args);
            w.run(&a)
        };
        let out = run(&["--workdir", "/opt/app", w.image(), "sh", "-c", probe]).ok();
        assert_eq!(out, "SigBlk:\t0000000000000000\nNoNewPrivs:\t1\n/opt/app\n", "{share:?}");
        assert_eq!(run(&[w.image(), script.to_str().unwrap()]).ok(), "script-ran-by-sh\n", "{share:?}");
        let out = run(&[w.image(), "no-such-program"]);
        assert_eq!(
            (out.code(), out.stderr().as_str()),
            (Some(127), "berth: no-such-program: command not found in the image\n")
        );
        let out = run(&["--workdir", "/no/such/dir", w.image(), "true"]);
        assert_ne!(out.code(), Some(0), "{share:?}");
        assert!(out.stderr().contains("/no/such/dir"), "{}", out.stderr());
    }
}

#[test]
fn death_by_signal_passes_through() {
    use std::os::unix::process::ExitStatusExt;
    let w = world();
    let out = w.run(&["exec", w.image(), "sh", "-c", "kill -USR1 $$"]);
    assert_eq!(out.0.status.signal(), Some(libc::SIGUSR1), "{:?}", out.0.status);
}

#[test]
fn signals_sent_to_berth_reach_the_program_and_nothing_is_left() {
    use std::os::unix::process::ExitStatusExt;
    let w = world();
    let marker = "sleep 7777";
    let child = w
        .berth(&[
            "exec",
            w.image(),
            "sh",
            "-c",
            &format!("trap 'echo got-term; exit 3' TERM; {marker} & wait"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !w.user_processes().iter().any(|p| p.starts_with(marker)) {
        assert!(t0.elapsed() < Duration::from_secs(10), "program did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{:?}", out.status.signal());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got-term\n");
    // The background sleep was orphaned inside: it must not outlive the container.
    let left: Vec<String> = w.user_processes().into_iter().filter(|p| p.starts_with(marker)).collect();
    assert!(left.is_empty(), "left running: {left:?}");
}

#[test]
fn binds_reach_missing_destinations_and_ro_is_enforced() {
    let w = world();
    let data = w.path("bind-src");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("input.txt"), "payload\n").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let spec_rw = format!("{}:/scratch/rw", data.display());
    let spec_ro = format!("{}:/scratch/ro:ro", data.display());
    let both = format!("{spec_rw},{spec_ro}");
    let out = w
        .run(&["exec", "-B", &both, w.image(), "sh", "-c", "cat /scratch/ro/input.txt; echo w > /scratch/rw/out.txt && echo wrote; (echo x > /scratch/ro/no.txt) 2>&1; mount | grep -c scratch"])
        .ok();
    assert!(out.starts_with("payload\nwrote\n"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "w\n",
        "rw bind writes through to the host"
    );
    assert!(!data.join("no.txt").exists());
    // BERTH_BIND works like -B.
    let out = w
        .berth(&["exec", w.image(), "cat", "/in/input.txt"])
        .env("BERTH_BIND", format!("{}:/in:ro", data.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "payload\n");
}

#[test]
fn site_binds_from_the_config_file() {
    let w = world();
    let lustre = w.path("lustre");
    std::fs::create_dir_all(&lustre).unwrap();
    std::fs::write(lustre.join("site.txt"), "site data\n").unwrap();
    let cfg = w.path("site.toml");
    std::fs::write(&cfg, format!("[binds]\nsite = [\"{}:/lustre/project:ro\"]\n", lustre.display())).unwrap();
    let out = w
        .berth(&["exec", w.image(), "cat", "/lustre/project/site.txt"])
        .env("BERTH_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "site data\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn environment_rules() {
    let w = world();
    let script = "echo A=$APP_HOME G=$GREETING M=${TEST_HOST_MARK:-unset} X=$X Y=$Y S=${SLURM_JOB_ID:-unset}";
    let out = w
        .berth(&["exec", "--env", "X=from-cli", w.image(), "sh", "-c", script])
        .env("BERTH_ENV_Y", "from-prefix")
        .env("SLURM_JOB_ID", "77")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("A=/opt/app G=hi {} M=host X=from-cli Y=from-prefix S=77\n", harness::USER)
    );
    let out = w
        .berth(&["exec", "--cleanenv", w.image(), "sh", "-c", script])
        .env("SLURM_JOB_ID", "77")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("A=/opt/app G=hi {} M=unset X= Y= S=77\n", harness::USER),
        "--cleanenv drops host variables but keeps the scheduler's"
    );
}

#[test]
fn writable_tmpfs_is_writable_and_thrown_away() {
    let w = world();
    // New paths can be made anywhere the user may write (the root of the layer is theirs);
    // the image's own directories keep their owners and permissions.
    let out = w
        .run(&[
            "exec",
            "--writable-tmpfs",
            w.image(),
            "sh",
            "-c",
            "mkdir /work && echo hi > /work/f && cat /work/f",
        ])
        .ok();
    assert_eq!(out, "hi\n");
    let out = w.run(&["exec", "--writable-tmpfs", w.image(), "ls", "/work"]);
    assert_ne!(out.code(), Some(0), "nothing persists between runs: {}", out.stdout());
    let out = w.run(&["exec", w.image(), "sh", "-c", "mkdir /work 2>&1"]);
    assert!(out.stdout().contains("Read-only file system"), "{}", out.stdout());
}

/// berth's entrypoint launcher (what the Slurm plugin's `--container-entrypoint` runs) is in
/// every container, executable, and read-only even in a writable one: a read-only,
/// nosuid,nodev mount nothing inside can change.
#[test]
fn the_entrypoint_launcher_is_read_only_in_a_writable_container() {
    let w = world();
    let out = w
        .run(&[
            "exec",
            "--writable-tmpfs",
            w.image(),
            "sh",
            "-c",
            "ls -l /.berth/entrypoint; head -n 1 /.berth/entrypoint; \
             echo x > /.berth/entrypoint || echo write-refused; chmod 0777 /.berth/entrypoint || echo chmod-refused; \
             grep ' /.berth/entrypoint ' /proc/self/mountinfo",
        ])
        .ok();
    assert!(out.starts_with("-r-xr-xr-x "), "{out}");
    assert!(
        out.contains("\n#!/bin/sh\n") && out.contains("write-refused") && out.contains("chmod-refused"),
        "{out}"
    );
    let mount = out.lines().find(|l| l.contains(" /.berth/entrypoint ")).unwrap_or_default();
    let opts = mount.split(' ').nth(5).unwrap_or_default();
    for o in ["ro", "nosuid", "nodev"] {
        assert!(opts.split(',').any(|x| x == o), "{o} missing in {mount:?}");
    }
}

/// The launcher runs the runscript with the program from its variable first, also where the
/// kernel refuses to execute memfds (`vm.memfd_noexec=2`, set in a PID namespace of its own:
/// the setting belongs to the PID namespace and is inherited, never lowered, below it).
#[test]
fn the_entrypoint_launcher_runs_where_memfds_may_not_execute() {
    let w = world();
    let noexec = if std::path::Path::new("/proc/sys/vm/memfd_noexec").exists() {
        "2"
    } else {
        eprintln!("note: this kernel has no vm.memfd_noexec; the launcher is checked without it");
        "none"
    };
    let script = "[ -e /proc/sys/vm/memfd_noexec ] && { echo 2 > /proc/sys/vm/memfd_noexec || exit 99; }; \
                  exec setpriv --reuid=\"$1\" --regid=\"$2\" --clear-groups -- \"$3\" exec --no-share \
                  --env 'BERTH_ENTRYPOINT_PROGRAM=my prog' \"$4\" sh -c \
                  'echo noexec=$(cat /proc/sys/vm/memfd_noexec 2>/dev/null || echo none); exec /.berth/entrypoint \"a b\" c'";
    let out = harness::Out(
        std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--", "sh", "-c", script, "sh"])
            .args([&w.uid.to_string(), &w.gid.to_string()])
            .arg(&w.berth)
            .arg(w.image())
            .env_clear()
            .env("HOME", &w.home)
            .env("USER", harness::USER)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir(&w.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    );
    // The runscript echoes its arguments: the program, then the command's own.
    assert_eq!(out.ok(), format!("noexec={noexec}\nrunscript got: my prog a b c\n"));
}

/// A site with a PID namespace per job: the same user's `berth exec` of the same image from
/// another PID namespace on the node sees none of the first job's processes. It must neither
/// take the first job's warm container for dead nor replace its record (the next lookup on the
/// host then removed the record, that holder stopped, and the program running in it lost its
/// image: "Transport endpoint is not connected"), nor fail: it gets a container of its own.
#[test]
fn a_run_from_another_pid_namespace_leaves_a_running_container_alone() {
    let w = world();
    let mut first = w
        .berth(&["exec", w.image(), "sh", "-c", "echo started; sleep 3; ls /bin"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = harness::first_line(&mut first);
    assert_eq!(line, "started\n");
    let other = harness::Out(
        std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--", "setpriv"])
            .args([format!("--reuid={}", w.uid), format!("--regid={}", w.gid), "--clear-groups".into()])
            .arg(&w.berth)
            .args(["exec", w.image(), "ls", "/bin"])
            .env_clear()
            .env("HOME", &w.home)
            .env("USER", harness::USER)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TEST_HOST_MARK", "host")
            .current_dir(&w.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    );
    let listing = other.ok();
    assert!(listing.contains("busybox"), "{listing}");
    // Back on the host, what any later run or `berth list` does: look the containers up.
    let list = w.run(&["list"]).ok();
    assert!(list.contains(w.image()), "the first run's container is still listed: {list}");
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the first run lost its container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), listing);
}

/// A cleaner of old files in /tmp (or a user) removes a warm container's record while a
/// program runs in it: nobody can join it any more, but the program keeps its image to the
/// end, and the container goes once it has (before, it went at once, under the program).
#[test]
fn a_removed_record_takes_no_image_away_from_a_running_program() {
    let w = world();
    let cfg = w.path("record-removed.toml");
    let state = format!("/tmp/berth-it-rm-{}-{{uid}}", std::process::id());
    std::fs::write(&cfg, format!("state_dir = \"{state}\"\n")).unwrap();
    let state = std::path::PathBuf::from(state.replace("{uid}", &w.uid.to_string()));
    let mut run = w
        .berth(&["exec", w.image(), "sh", "-c", "echo started; sleep 2.5; ls /bin"])
        .env("BERTH_CONFIG", &cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = harness::first_line(&mut run);
    assert_eq!(line, "started\n");
    let records: Vec<_> = std::fs::read_dir(state.join("holders"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert_eq!(records.len(), 1, "one warm container");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(records[0].path()).unwrap()).unwrap();
    let holder = std::path::PathBuf::from(format!("/proc/{}", record["pid"]));
    std::fs::remove_file(records[0].path()).unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "the program lost its image: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("busybox"));
    // The holder and its FUSE server end with the program, not after keep_warm_seconds.
    // (The holder is a child of the berth that started it, reaped by now, or gone.)
    let t0 = std::time::Instant::now();
    let alive = || std::fs::read_to_string(holder.join("stat")).is_ok_and(|s| !s.contains(") Z "));
    while alive() && t0.elapsed() < std::time::Duration::from_secs(3) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&state);
    assert!(!alive(), "the container ended with its last process");
}

/// A fresh directory of the test user's for `--overlay`.
fn overlay_dir(w: &harness::World, name: &str) -> std::path::PathBuf {
    let d = w.path(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    nix::unistd::chown(&d, Some(w.uid.into()), Some(w.gid.into())).unwrap();
    d
}

fn mounts_mentioning(p: &std::path::Path) -> Vec<String> {
    let needle = p.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

#[test]
fn overlay_dir_keeps_changes_across_runs_and_only_with_the_flag() {
    let w = world();
    let d = overlay_dir(w, "ovl-keep");
    let ovl = d.to_str().unwrap();
    let out = w
        .run(&[
            "exec",
            "--overlay",
            ovl,
            w.image(),
            "sh",
            "-c",
            "mkdir -p /state && echo x > /state/new && echo ok",
        ])
        .ok();
    assert_eq!(out, "ok\n");
    assert_eq!(w.run(&["exec", "--overlay", ovl, w.image(), "cat", "/state/new"]).ok(), "x\n");
    assert_eq!(
        w.run(&["exec", "-o", ovl, w.image(), "sh", "-c", "rm /state/new; echo y > /f; cat /f"]).ok(),
        "y\n"
    );
    let out = w.run(&["exec", "--overlay", ovl, w.image(), "sh", "-c", "ls /state; cat /f"]).ok();
    assert_eq!(out, "y\n", "a deletion persists too");
    // Without the flag the image is as built and read-only.
    let out = w.run(&["exec", w.image(), "sh", "-c", "cat /f 2>&1; touch /g 2>&1; true"]).ok();
    assert!(out.contains("No such file") && out.contains("Read-only file system"), "{out}");
    // A container kept warm by a plain run is not joined by an overlay run of the same
    // command, nor the other way round.
    assert_ne!(w.run(&["exec", w.image(), "cat", "/f"]).code(), Some(0));
    assert_eq!(w.run(&["exec", "-o", ovl, w.image(), "cat", "/f"]).ok(), "y\n");
    assert_ne!(w.run(&["exec", w.image(), "cat", "/f"]).code(), Some(0));
    // Apptainer's layout, owned by the user; the mount points made for binds ($HOME, the
    // current directory, /etc/passwd) are not left in it.
    let mut top: Vec<String> = std::fs::read_dir(d.join("upper"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["f", "state"]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(d.join("upper/f")).unwrap().uid(), w.uid);
    assert!(d.join("work").is_dir());
    assert!(mounts_mentioning(&d).is_empty(), "{:?}", mounts_mentioning(&d));
    assert!(w.user_processes().iter().all(|p| !p.contains("ovl-keep")), "{:?}", w.user_processes());
    // --contain keeps its meaning (no home, no host /tmp), its writable /tmp now in the kept layer.
    let out = w
        .run(&[
            "exec",
            "--contain",
            "-o",
            ovl,
            w.image(),
            "sh",
            "-c",
            "mkdir -p /tmp && touch /tmp/c && cat /f",
        ])
        .ok();
    assert_eq!(out, "y\n");
    assert!(d.join("upper/tmp/c").exists());
    let dry = w.run(&["exec", "--dry-run", "-o", ovl, w.image(), "true"]).ok();
    assert!(
        dry.contains(&format!("kept upper {ovl}/upper")) && !dry.contains("make the root read-only"),
        "{dry}"
    );
}

#[test]
fn overlay_dir_through_fuse_overlayfs_where_the_kernel_cannot() {
    // Kernels before 5.11 refuse overlayfs in a user namespace; the site's
    // overlay_mount = "fuse" takes the same path berth falls back to there.
    let w = world();
    if std::process::Command::new("sh")
        .args(["-c", "command -v fuse-overlayfs"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        panic!("fuse-overlayfs is missing: scripts/install-deps.sh installs it");
    }
    let d = overlay_dir(w, "ovl-fuse");
    let ovl = d.to_str().unwrap();
    let cfg = w.path("ovl-fuse.toml");
    std::fs::write(&cfg, "overlay_mount = \"fuse\"\n").unwrap();
    let run = |args: &[&str]| harness::Out(w.berth(args).env("BERTH_CONFIG", &cfg).output().unwrap());
    let dry = run(&["exec", "--dry-run", "-o", ovl, w.image(), "true"]).ok();
    assert!(dry.contains("; fuse-overlayfs)"), "{dry}");
    let out =
        run(&["exec", "-o", ovl, w.image(), "sh", "-c", "mkdir -p /state && echo x > /state/new && echo ok"])
            .ok();
    assert_eq!(out, "ok\n");
    assert_eq!(std::fs::read_to_string(d.join("upper/state/new")).unwrap(), "x\n", "written through to DIR");
    assert_eq!(run(&["exec", "-o", ovl, w.image(), "cat", "/state/new"]).ok(), "x\n");
    // The kernel's overlay reads what fuse-overlayfs kept, and the other way round.
    assert_eq!(w.run(&["exec", "-o", ovl, w.image(), "cat", "/state/new"]).ok(), "x\n");
    assert!(mounts_mentioning(&d).is_empty());
    let left: Vec<String> = w.user_processes().into_iter().filter(|p| p.contains("fuse-overlayfs")).collect();
    assert!(left.is_empty(), "{left:?}");
    // A missing server is one clear message.
    std::fs::write(&cfg, "overlay_mount = \"fuse\"\nfuse_overlayfs = \"/nonexistent/fuse-overlayfs\"\n")
        .unwrap();
    run(&["exec", "-o", ovl, w.image(), "true"])
        .fails_with(&["cannot start /nonexistent/fuse-overlayfs", "install fuse-overlayfs"]);
}

#[test]
fn overlay_dirs_that_cannot_serve_are_refused_and_left_unchanged() {
    let w = world();
    let missing = w.path("ovl-missing");
    let _ = std::fs::remove_dir_all(&missing);
    w.run(&["exec", "--overlay", missing.to_str().unwrap(), w.image(), "true"]).fails_with(&[
        "--overlay",
        "does not exist",
        "mkdir -p",
    ]);
    assert!(!missing.exists());
    // Someone else's directory (root's, world-writable even): refused, nothing made in it.
    let foreign = w.path("ovl-root");
    let _ = std::fs::remove_dir_all(&foreign);
    std::fs::create_dir(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o777)).unwrap();
    w.run(&["exec", "--overlay", foreign.to_str().unwrap(), w.image(), "true"])
        .fails_with(&["belongs to uid 0, not to you"]);
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);
    // An image file (Apptainer's other --overlay form): refused with the directory form.
    let file = w.user_file("ovl.img", b"");
    w.run(&["exec", "--overlay", file.to_str().unwrap(), w.image(), "true"])
        .fails_with(&["image-file overlays", "--overlay ~/overlay"]);
    // On a filesystem that cannot carry it (procfs here; NFS or Lustre on a cluster).
    w.run(&["exec", "--overlay", "/proc/self/", w.image(), "true"])
        .fails_with(&["cannot hold an unprivileged overlay"]);
    // upper/ taken by a file: refused before anything is mounted.
    let d = overlay_dir(w, "ovl-clash");
    std::fs::write(d.join("upper"), "").unwrap();
    w.run(&["exec", "--overlay", d.to_str().unwrap(), w.image(), "true"])
        .fails_with(&["upper exists and is not a directory"]);
    assert!(!d.join("work").exists());
    usage_error(
        &w.run(&["exec", "--overlay", d.to_str().unwrap(), "--writable-tmpfs", w.image(), "true"]),
        &["--writable-tmpfs", "--overlay"],
    );
    assert!(mounts_mentioning(&w.dir.join("ovl-")).is_empty());
}

#[test]
fn workdir_option() {
    let w = world();
    assert_eq!(w.run(&["exec", "--workdir", "/opt/app", w.image(), "pwd"]).ok(), "/opt/app\n");
    w.run(&["exec", "--workdir", "/nowhere", w.image(), "pwd"])
        .fails_with(&["workdir /nowhere", "does not exist"]);
}

#[test]
fn dry_run_prints_the_plan_and_runs_nothing() {
    let w = world();
    let out = w
        .run(&["exec", "--dry-run", "-B", "/tmp:/scratch", w.image(), "touch", "/tmp/should-not-exist"])
        .ok();
    for needle in ["squashfuse_ll", "bind /tmp -> /scratch", "pivot_root", "exec: [\"touch\""] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    assert!(!std::path::Path::new("/tmp/should-not-exist").exists());
    let json = w.run(&["exec", "--dry-run", "--json", w.image(), "true"]).ok();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["steps"][0]["op"], "staging");
    assert_eq!(v["steps"][1]["mount"]["via"], "squashfuse");
    assert_eq!(v["user"]["uid"], w.uid);
}

#[test]
fn directory_and_singularity2_images() {
    let w = world();
    let out = w.run(&["exec", w.rootfs.to_str().unwrap(), "cat", "/etc/os-release"]).ok();
    assert!(out.contains("berth-busybox"));
    let simg = w.path("legacy.simg");
    let mut bytes = b"#!/usr/bin/env run-singularity\n".to_vec();
    bytes.extend(std::fs::read(&w.image).unwrap());
    std::fs::write(&simg, bytes).unwrap();
    let out = w.run(&["exec", simg.to_str().unwrap(), "cat", "/etc/os-release"]).ok();
    assert!(out.contains("berth-busybox"));
}

#[test]
fn inspect_shows_metadata() {
    let w = world();
    let out = w.run(&["inspect", w.image()]).ok();
    for needle in [
        "format:    Squashfs",
        "Maintainer: berth tests",
        "runscript got",
        "APP_HOME",
        "This image says hello.",
        "Bootstrap: scratch",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    let v: serde_json::Value = serde_json::from_str(&w.run(&["inspect", "--json", w.image()]).ok()).unwrap();
    assert_eq!(v["image"]["format"], "squashfs");
    assert_eq!(v["metadata"]["labels"]["org.label-schema.name"], "berth-busybox");
}

#[test]
fn bad_images_get_one_clear_message() {
    let w = world();
    w.run(&["exec", "/no/such.img", "true"]).fails_with(&["/no/such.img", "No such file"]);
    let empty = w.user_file("empty.img", b"");
    w.run(&["exec", empty.to_str().unwrap(), "true"]).fails_with(&["empty.img"]);
    let junk = w.user_file("junk.img", &[7u8; 4096]);
    w.run(&["exec", junk.to_str().unwrap(), "true"]).fails_with(&["junk.img", "not a recognised image"]);
    let secret = w.path("secret.sqsh");
    std::fs::copy(&w.image, &secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    w.run(&["exec", secret.to_str().unwrap(), "true"]).fails_with(&[
        "secret.sqsh",
        "Permission denied",
        "readable",
    ]);
    let full = std::fs::read(&w.image).unwrap();
    let trunc = w.user_file("truncated.sqsh", &full[..full.len() / 2]);
    w.run(&["exec", trunc.to_str().unwrap(), "true"]).fails_with(&["truncated.sqsh"]);
    assert!(!w.user_processes().iter().any(|p| p.contains("truncated.sqsh")), "no FUSE server left");
}

#[test]
fn bad_requests_get_one_clear_message() {
    let w = world();
    w.run(&["exec", "-B", "/no/such/dir:/x", w.image(), "true"])
        .fails_with(&["/no/such/dir", "does not exist"]);
    w.run(&["exec", "-B", "/tmp:relative", w.image(), "true"]).fails_with(&["relative", "absolute"]);
    w.run(&["exec", "-B", "/tmp:/a/../etc", w.image(), "true"]).fails_with(&["'..'"]);
    w.run(&["exec", "--env", "NOEQUALS", w.image(), "true"]).fails_with(&["NOEQUALS", "NAME=VALUE"]);
    let cfg = w.path("bad.toml");
    std::fs::write(&cfg, "squashfuse = \"squashfuse_ll\"\n[binds]\nhomee = true\n").unwrap();
    harness::Out(w.berth(&["exec", w.image(), "true"]).env("BERTH_CONFIG", &cfg).output().unwrap())
        .fails_with(&[&format!("{}:3", cfg.display()), "homee"]);
}

#[test]
fn executable_image_via_run_singularity_link() {
    let w = world();
    let link = w.path("run-singularity");
    let _ = std::os::unix::fs::symlink(&w.berth, &link);
    let out = w.command(&link, &[w.image(), "x"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "runscript got: x\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_check_reports_prerequisites() {
    let w = world();
    let out = w.run(&["config", "check"]).ok();
    assert!(out.contains("ok   user namespaces"), "{out}");
    assert!(out.contains("ok   /dev/fuse"), "{out}");
}

/// `berth config check --pbs` on an emulated TORQUE node (a PBS_HOME laid out as
/// packaging/torque/install.sh leaves it): the correct layout passes; each broken item is
/// named with its fix, and the check fails.
#[test]
fn config_check_pbs_names_what_a_torque_node_lacks() {
    use std::os::unix::fs::PermissionsExt;
    let w = world();
    let node = w.path("pbs-check-node");
    let _ = std::fs::remove_dir_all(&node);
    let home = node.join("pbs_home");
    let mom_priv = home.join("mom_priv");
    let libexec = node.join("libexec");
    for (d, mode) in [(&node, 0o755), (&home, 0o755), (&mom_priv, 0o751), (&libexec, 0o755)] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let starter = libexec.join("berth-pbs");
    // A stand-in for the binary (which carries its own name, as this script does).
    let stand_in = |drop_check: &str| {
        std::fs::write(
            &starter,
            format!("#!/bin/sh\n# berth-pbs stand-in\n[ \"$1\" = drop-check ] && {{ {drop_check}; }}\nexec \"$@\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&starter, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let good_drop = "echo uid=65534 gid=65534 groups=65534; exit 0";
    stand_in(good_drop);
    let config = mom_priv.join("config");
    let good_config = format!("$pbsserver srv\n$job_starter {}\n", starter.display());
    let hooks = ["prologue", "epilogue", "prologue.parallel", "epilogue.parallel"];
    let install = |config_text: &str| {
        std::fs::write(&config, config_text).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        for h in hooks {
            let p = mom_priv.join(h);
            let _ = std::fs::remove_file(&p);
            std::fs::copy(&starter, &p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o500)).unwrap();
        }
    };
    let check = || {
        // As the administrator runs it: root reads the 0500 hook files.
        let out = std::process::Command::new(&w.berth)
            .args(["config", "check", "--pbs"])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("PBS_HOME", &home)
            .env("PBS_CONF_FILE", node.join("no-pbs.conf"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    install(&good_config);
    let (code, out, err) = check();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("ok   TORQUE, PBS_HOME {}", home.display())), "{out}");
    assert!(out.contains(&format!("$job_starter {}", starter.display())), "{out}");
    assert!(out.contains("ok   $job_starter_run_privileged is not set"), "{out}");
    assert!(
        out.contains(&format!(
            "ok   the epilogue's drop from root to nobody (`{} drop-check nobody`): uid=65534 gid=65534 groups=65534",
            starter.display()
        )),
        "{out}"
    );
    for h in hooks {
        assert!(out.contains(&format!("ok   {} (root's, mode 0500)", mom_priv.join(h).display())), "{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");

    // Each broken item on its own: the line that names it, and a failed check.
    type Breakage<'a> = (&'a str, Box<dyn Fn() + 'a>, String);
    let broken: Vec<Breakage> = vec![
        (
            "no $job_starter",
            Box::new(|| install("$pbsserver srv\n")),
            "FAIL {config}: no `$job_starter` line".replace("{config}", &config.display().to_string()),
        ),
        (
            "another starter",
            Box::new(|| install("$job_starter /usr/bin/env\n")),
            format!("FAIL {}: $job_starter is /usr/bin/env, not berth-pbs", config.display()),
        ),
        (
            "privileged starter",
            Box::new(|| install(&format!("{good_config}$job_starter_run_privileged True\n"))),
            format!("FAIL {}: $job_starter_run_privileged True", config.display()),
        ),
        (
            "setuid starter",
            Box::new(|| {
                install(&good_config);
                std::fs::set_permissions(&starter, std::fs::Permissions::from_mode(0o4755)).unwrap();
            }),
            format!("FAIL berth-pbs {}: setuid/setgid", starter.display()),
        ),
        (
            "the drop crashes",
            Box::new(|| {
                stand_in("kill -SEGV $$");
                install(&good_config);
            }),
            format!(
                "FAIL the epilogue's drop from root to nobody (`{} drop-check nobody`): killed by SIGSEGV",
                starter.display()
            ),
        ),
        (
            "epilogue missing",
            Box::new(|| {
                stand_in(good_drop);
                install(&good_config);
                std::fs::remove_file(mom_priv.join("epilogue")).unwrap();
            }),
            format!("FAIL {}: No such file", mom_priv.join("epilogue").display()),
        ),
        (
            "prologue writable",
            Box::new(|| {
                install(&good_config);
                std::fs::set_permissions(mom_priv.join("prologue"), std::fs::Permissions::from_mode(0o755))
                    .unwrap();
            }),
            format!("FAIL {}: mode 0755, not 0500 or 0700", mom_priv.join("prologue").display()),
        ),
        (
            "epilogue.parallel not berth",
            Box::new(|| {
                install(&good_config);
                let p = mom_priv.join("epilogue.parallel");
                std::fs::remove_file(&p).unwrap();
                std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
            }),
            format!(
                "FAIL {}: neither a copy of berth-pbs nor a script that runs it",
                mom_priv.join("epilogue.parallel").display()
            ),
        ),
    ];
    for (what, breakit, line) in &broken {
        breakit();
        let (code, out, err) = check();
        assert_ne!(code, Some(0), "{what}: {out}{err}");
        assert!(out.contains(line.as_str()), "{what}: expected {line:?} in\n{out}");
        assert_eq!(out.matches("FAIL").count(), 1, "{what}: only that item fails:\n{out}");
        assert!(out.contains("     fix: "), "{what}: {out}");
        assert!(err.contains("1 problem(s) found"), "{what}: {err}");
    }
    // A site's own epilogue script that calls berth-pbs is fine.
    install(&good_config);
    let p = mom_priv.join("epilogue");
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, "#!/bin/sh\n/usr/libexec/berth/berth-pbs epilogue \"$@\"\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, out, err) = check();
    assert_eq!(code, Some(0), "{out}{err}");

    // OpenPBS: the hooks are on the server; the check says so instead of passing them.
    let conf = node.join("pbs.conf");
    std::fs::write(&conf, format!("PBS_EXEC=/opt/pbs\nPBS_HOME={}\n", home.display())).unwrap();
    let out = std::process::Command::new(&w.berth)
        .args(["config", "check", "--pbs"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("PBS_CONF_FILE", &conf)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.contains(&format!("OpenPBS ({} names PBS_EXEC), PBS_HOME {}", conf.display(), home.display())),
        "{out}"
    );
    assert!(
        out.contains(
            "note the hooks `berth` (execjob_launch) and `berth_end` (execjob_epilogue) live on the server"
        ),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&node);
}

fn fixture(name: &str) -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sif").join(name);
    p.exists().then_some(p)
}

#[test]
fn sif_images_run_and_execute_directly() {
    use berth_runtime::image::{write_sif, SifObject, SifObjectKind};
    let w = world();
    let sif = w.path("app.sif");
    write_sif(
        &sif,
        &w.image,
        &[SifObject {
            kind: SifObjectKind::Deffile,
            name: "Singularity".into(),
            data: b"Bootstrap: scratch\n".to_vec(),
        }],
        None,
    )
    .unwrap();
    std::fs::set_permissions(&sif, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = w.run(&["exec", sif.to_str().unwrap(), "cat", "/etc/os-release"]).ok();
    assert!(out.contains("berth-busybox"), "{out}");
    let info = w.run(&["inspect", sif.to_str().unwrap()]).ok();
    assert!(info.contains("format:    Sif") && info.contains("primary-system"), "{info}");
    // `./app.sif args` runs the runscript through the `run-singularity` link to berth.
    let bin = w.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let _ = std::os::unix::fs::symlink(&w.berth, bin.join("run-singularity"));
    let out = w
        .command(&sif, &["direct", "call"])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "runscript got: direct call\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broken_sif_files_get_one_clear_message() {
    let w = world();
    let Some(empty) = fixture("empty.sif") else {
        eprintln!("skipped: tests/fixtures/sif is absent");
        return;
    };
    w.run(&["exec", empty.to_str().unwrap(), "true"]).fails_with(&["empty.sif", "primary"]);
    let good = std::fs::read(fixture("one-group.sif").unwrap()).unwrap();
    let mut bad_magic = good.clone();
    bad_magic[32..41].copy_from_slice(b"XIF_MAGIC");
    let p = w.user_file("bad-magic.sif", &bad_magic);
    w.run(&["exec", p.to_str().unwrap(), "true"]).fails_with(&["bad-magic.sif"]);
    let mut bad_version = good.clone();
    bad_version[42..44].copy_from_slice(b"02");
    let p = w.user_file("bad-version.sif", &bad_version);
    w.run(&["exec", p.to_str().unwrap(), "true"]).fails_with(&["bad-version.sif", "version"]);
    let p = w.user_file("short.sif", &good[..200]);
    w.run(&["exec", p.to_str().unwrap(), "true"]).fails_with(&["short.sif"]);
}

#[test]
fn singularity2_ext3_images_are_refused_unprivileged_with_the_fix() {
    let w = world();
    let img = w.path("legacy-ext3.img");
    harness::singularity2_image(&w.rootfs, &img);
    nix::unistd::chown(&img, Some(w.uid.into()), Some(w.gid.into())).unwrap();
    w.run(&["exec", img.to_str().unwrap(), "true"]).fails_with(&[
        "legacy-ext3.img",
        "ext3",
        "privileged",
        "convert",
    ]);
}

#[test]
fn a_closed_pipe_ends_the_program_like_natively() {
    let w = world();
    // `yes` must die of SIGPIPE when `head` stops reading, not loop on EPIPE errors.
    let out = w
        .run(&[
            "exec",
            w.image(),
            "sh",
            "-c",
            "yes | head -n 2; echo \"yes status: ${PIPESTATUS:-see}\"; (yes; echo $? >&2) | head -n 1",
        ])
        .0;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "141", "yes was ended by SIGPIPE (128+13), as natively: {stderr}");
    // berth's own output into a pipe closed early: it ends quietly, no panic message.
    let cmd = format!("{} inspect {} | head -n 1", w.berth.display(), w.image());
    let out = w.command(std::path::Path::new("/bin/sh"), &["-c", &cmd]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("image:"));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "quiet on a closed pipe");
}

// ---- Adversarial images and requests: bounded work, clear errors ----

/// What a measured run of berth gave: exit code, stdout, stderr, and its peak RSS in KiB
/// (its own and that of the children it waited for).
struct Measured {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    max_rss_kib: i64,
}

/// Runs `c` under a 1 GiB address-space limit (so that a regression fails this test with an
/// abort instead of exhausting the machine) and measures its peak RSS with wait4.
fn measured(mut c: std::process::Command) -> Measured {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only setrlimit runs (async-signal-safe), on a struct that
    // lives on this stack frame.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 1 << 30, rlim_max: 1 << 30 };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut stdout = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
    let stderr = err_reader.join().unwrap();
    let mut status = 0;
    // SAFETY: wait4 on our own child's pid, with pointers to locals; the Child is not waited
    // on again afterwards (it is forgotten).
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::wait4(child.id() as i32, &mut status, 0, &mut ru), child.id() as i32);
        ru
    };
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) { Some(libc::WEXITSTATUS(status)) } else { None };
    Measured { code, stdout, stderr, max_rss_kib: ru.ru_maxrss }
}

impl Measured {
    /// berth's error exit, one `berth:` message with every needle, and peak RSS under 64 MiB.
    fn fails_clearly(&self, needles: &[&str]) {
        assert_eq!(self.code, Some(255), "expected berth's error exit, got {:?}: {}", self.code, self.stderr);
        assert!(self.stderr.starts_with("berth: "), "{}", self.stderr);
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}: {}", self.stderr);
        }
        self.small();
    }

    fn small(&self) {
        assert!(
            self.max_rss_kib < 64 << 10,
            "peak RSS {} KiB (limit 64 MiB): {}",
            self.max_rss_kib,
            self.stderr
        );
    }
}

/// A 3.4 MB SIF: a real primary partition, then 4095 one-MiB deffile descriptors over the
/// same bytes. Reading each object would copy 4 GB.
fn sif_with_overlapping_objects(squashfs: &[u8]) -> Vec<u8> {
    const N: usize = 4096;
    const DL: usize = 585;
    let table_off = 4096usize;
    let data_off = (table_off + N * DL).div_ceil(4096) * 4096;
    let mut f = vec![0u8; data_off];
    f[..31].copy_from_slice(b"#!/usr/bin/env run-singularity\n");
    f[32..42].copy_from_slice(b"SIF_MAGIC\0");
    f[42..45].copy_from_slice(b"01\0");
    f[45..48].copy_from_slice(b"02\0");
    for (i, v) in [N as i64, table_off as i64, (N * DL) as i64, data_off as i64, 1 << 20].iter().enumerate() {
        f[88 + 8 * i..96 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    let mut desc = |i: usize, kind: i32, size: usize, name: &[u8], extra: &[u8]| {
        let d = &mut f[table_off + i * DL..table_off + (i + 1) * DL];
        d[0..4].copy_from_slice(&kind.to_le_bytes());
        d[4] = 1;
        d[5..9].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        d[9..13].copy_from_slice(&0xf000_0001u32.to_le_bytes());
        d[17..25].copy_from_slice(&(data_off as i64).to_le_bytes());
        d[25..33].copy_from_slice(&(size as i64).to_le_bytes());
        d[73..73 + name.len()].copy_from_slice(name);
        d[201..201 + extra.len()].copy_from_slice(extra);
    };
    desc(0, 0x4004, squashfs.len(), b"rootfs", &[1, 0, 0, 0, 2, 0, 0, 0, b'0', b'2', 0]);
    for i in 1..N {
        desc(i, 0x4001, 1 << 20, b"deffile", &[]);
    }
    f.extend_from_slice(squashfs);
    f.resize(f.len().max(data_off + (1 << 20)), 0);
    f
}

#[test]
fn crafted_sif_with_overlapping_objects_is_refused_in_bounded_memory() {
    let w = world();
    let sif = w.user_file("overlap.sif", &sif_with_overlapping_objects(&std::fs::read(&w.image).unwrap()));
    let sif = sif.to_str().unwrap();
    for args in [&["inspect", sif][..], &["inspect", "--json", sif], &["exec", "--no-share", sif, "true"]] {
        measured(w.berth(args)).fails_clearly(&["overlap.sif", "overlap"]);
    }
}

#[test]
fn sparse_huge_libc_in_a_directory_image_is_read_by_its_headers() {
    let w = world();
    let Some(libc) = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6"]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
    else {
        eprintln!("skipped: no host libc.so.6 to copy");
        return;
    };
    let root = w.path("sparse-libc-root");
    harness::build_busybox_root(&root);
    let dir = root.join(libc.parent().unwrap().strip_prefix("/").unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("libc.so.6");
    std::fs::copy(std::fs::canonicalize(libc).unwrap(), &big).unwrap();
    std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(3 << 30).unwrap();
    let m = measured(w.berth(&["exec", "--no-share", root.to_str().unwrap(), "cat", "/etc/os-release"]));
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(m.stdout.contains("berth-busybox"), "{}", m.stdout);
    m.small();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn doubling_environment_file_is_a_clear_error() {
    let w = world();
    let root = w.path("env-bomb-root");
    harness::build_busybox_root(&root);
    let text = "export A=x\n".to_string() + &"A=$A$A\n".repeat(40);
    std::fs::write(root.join(".singularity.d/env/90-environment.sh"), text).unwrap();
    let img = w.path("env-bomb.sqsh");
    harness::mksquashfs(&root, &img);
    let _ = std::fs::remove_dir_all(&root);
    let img = img.to_str().unwrap();
    measured(w.berth(&["exec", "--no-share", img, "true"])).fails_clearly(&[
        "90-environment.sh",
        "line 18",
        "131072 bytes",
    ]);
    // Through a shared (warm) container the same message reaches the user.
    w.run(&["exec", img, "true"]).fails_with(&["90-environment.sh", "131072 bytes"]);
    let m = measured(w.berth(&["inspect", img]));
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    m.small();
}

#[test]
fn a_fifo_as_image_fails_at_once() {
    let w = world();
    let fifo = w.path("pipe.sif");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    nix::unistd::chown(&fifo, Some(w.uid.into()), Some(w.gid.into())).unwrap();
    for verb in ["inspect", "exec"] {
        let t0 = Instant::now();
        let mut args = vec![verb, fifo.to_str().unwrap()];
        if verb == "exec" {
            args.push("true");
        }
        w.run(&args).fails_with(&["pipe.sif", "named pipe (FIFO)"]);
        assert!(t0.elapsed() < Duration::from_secs(10), "{verb} took {:?}", t0.elapsed());
    }
}

#[test]
fn inspect_escapes_terminal_controls_from_the_image() {
    use berth_runtime::image::{write_sif, SifObject, SifObjectKind};
    let w = world();
    let sif = w.path("escape.sif");
    write_sif(
        &sif,
        &w.image,
        &[SifObject {
            kind: SifObjectKind::Deffile,
            name: "def\u{1b}]0;owned\u{7}\u{1b}[2J".into(),
            data: b"Bootstrap: scratch\n".to_vec(),
        }],
        None,
    )
    .unwrap();
    let out = w.run(&["inspect", sif.to_str().unwrap()]).ok();
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "raw controls reached the terminal: {out:?}");
    assert!(out.contains("def\\x1b]0;owned\\x07\\x1b[2J"), "{out}");
}

#[test]
fn stop_reports_signals_it_is_not_allowed_to_send() {
    let w = world();
    let cfg = w.path("stop-eperm.toml");
    let state = format!("/tmp/berth-it-eperm-{}-{{uid}}", std::process::id());
    std::fs::write(&cfg, format!("state_dir = \"{state}\"\n")).unwrap();
    let mut holder = w
        .berth(&["holder", "--name", "eperm", w.image()])
        .env("BERTH_CONFIG", &cfg)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = harness::first_line(&mut holder);
    assert_eq!(line, "ready\n");
    // Point the record at init (root's): what a stale record after pid reuse by another
    // user's process looks like.
    let state = std::path::PathBuf::from(state.replace("{uid}", &w.uid.to_string()));
    let record = state.join("holders/eperm.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let stat = std::fs::read_to_string("/proc/1/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    v["pid"] = 1.into();
    v["start_time"] = fields[19].parse::<u64>().unwrap().into();
    std::fs::write(&record, v.to_string()).unwrap();
    let out = harness::Out(w.berth(&["stop", "eperm"]).env("BERTH_CONFIG", &cfg).output().unwrap());
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = std::fs::remove_dir_all(&state);
    out.fails_with(&["stop eperm", "process 1", "not permitted", "not yours"]);
}

#[test]
fn binding_over_etc_writes_nothing_into_the_host_directory() {
    let w = world();
    let etc = w.home.join("berth-it-etc");
    let _ = std::fs::remove_dir_all(&etc);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("motd"), "from the host\n").unwrap();
    nix::unistd::chown(&etc, Some(w.uid.into()), Some(w.gid.into())).unwrap();
    let bind = format!("{}:/etc", etc.display());
    let out = w.run(&["exec", "--no-share", "-B", &bind, w.image(), "cat", "/etc/motd"]).ok();
    assert_eq!(out, "from the host\n");
    let mut left: Vec<String> =
        std::fs::read_dir(&etc).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    left.sort();
    let _ = std::fs::remove_dir_all(&etc);
    assert_eq!(left, ["motd"], "berth wrote into the bound host directory");
}

// ---- Command-line errors and Apptainer habits ----

/// A clap usage error: status 2, clap's message, nothing run.
fn usage_error(o: &harness::Out, needles: &[&str]) {
    let err = o.stderr();
    assert_eq!(o.code(), Some(2), "expected a command-line error; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

#[test]
fn unknown_options_are_errors_on_every_verb_and_options_after_the_image_are_the_programs() {
    let w = world();
    for verb in [&["exec"][..], &["run"], &["shell"], &["holder", "--name", "x"], &["inspect"]] {
        let args: Vec<&str> = verb.iter().copied().chain(["--bogus", w.image(), "true"]).collect();
        usage_error(&w.run(&args), &["unexpected argument '--bogus'"]);
    }
    usage_error(&w.run(&["exec", "--clenaenv", w.image(), "true"]), &["similar argument", "--cleanenv"]);
    usage_error(&w.run(&["stop", "--bogus", "x"]), &["unexpected argument '--bogus'"]);
    usage_error(&w.run(&["config", "check", "--bogus"]), &["unexpected argument '--bogus'"]);
    // After IMAGE, berth's own options (-c, -e, --nv) are the program's arguments.
    assert_eq!(w.run(&["exec", w.image(), "echo", "-c", "-e", "--nv"]).ok(), "-c -e --nv\n");
    assert_eq!(w.run(&["run", w.image(), "-c", "--bogus"]).ok(), "runscript got: -c --bogus\n");
}

#[test]
fn apptainer_options_berth_cannot_honour_are_refused_with_what_to_use() {
    let w = world();
    for (args, needles) in [
        (&["exec", "--fakeroot"][..], &["berth does not support --fakeroot", "berth build"][..]),
        (&["exec", "--writable"], &["berth does not support --writable", "--overlay DIR"]),
        (&["run", "--nvccli"], &["berth does not support --nvccli", "use --nv"]),
    ] {
        let args: Vec<&str> = args.iter().copied().chain([w.image(), "touch", "/tmp/ran"]).collect();
        usage_error(&w.run(&args), needles);
    }
    usage_error(&w.run(&["shell", "-p", w.image()]), &["berth does not support --pid"]);
    usage_error(&w.run(&["holder", "--name", "n", "--net", w.image()]), &["berth does not support --net"]);
}

#[test]
fn apptainer_contain_home_pwd_env_file_and_bind_variables() {
    let w = world();
    let probe = "test -e /tmp/berth-contain-marker && echo host-tmp; test -d $HOME && echo home; \
                 test -e contain-marker && echo cwd; pwd; mkdir -p /tmp && touch /tmp/t && echo tmp-writable";
    // The default: home, cwd and the host /tmp are bound.
    let host_tmp_marker = w.user_file("contain-marker", b"");
    let _ = std::fs::copy(&host_tmp_marker, "/tmp/berth-contain-marker");
    let out = w.run(&["exec", w.image(), "sh", "-c", probe]).ok();
    assert!(out.starts_with("host-tmp\nhome\ncwd\n"), "{out}");
    for flag in ["-c", "--contain", "-C", "--containall"] {
        // Neither the host's /tmp, nor home, nor the current directory; a writable /tmp.
        let out = w.run(&["exec", flag, w.image(), "sh", "-c", probe]).ok();
        assert_eq!(out, "/\ntmp-writable\n", "{flag}");
    }
    let _ = std::fs::remove_file("/tmp/berth-contain-marker");
    let env = w.run(&["exec", "-C", w.image(), "sh", "-c", "echo mark=$TEST_HOST_MARK"]).ok();
    assert_eq!(env, "mark=\n", "--containall cleans the environment");

    // --home SRC:DST binds SRC at DST and sets HOME; --pwd sets the working directory.
    let alt = w.path("althome");
    std::fs::create_dir_all(&alt).unwrap();
    nix::unistd::chown(&alt, Some(w.uid.into()), Some(w.gid.into())).unwrap();
    std::fs::write(alt.join("file"), "in-alt-home\n").unwrap();
    let spec = format!("{}:/home/other", alt.display());
    let out = w
        .run(&[
            "exec",
            "--home",
            &spec,
            "--pwd",
            "/opt",
            w.image(),
            "sh",
            "-c",
            "echo $HOME; cat $HOME/file; pwd",
        ])
        .ok();
    assert_eq!(out, "/home/other\nin-alt-home\n/opt\n");

    // --env-file, with --env winning over it.
    let f = w.user_file("vars.env", b"# site\nexport A=\"one two\"\nB=file\n");
    let out = w
        .run(&[
            "exec",
            "--env-file",
            f.to_str().unwrap(),
            "--env",
            "B=cli",
            w.image(),
            "sh",
            "-c",
            "echo $A/$B",
        ])
        .ok();
    assert_eq!(out, "one two/cli\n");
    let bad = w.user_file("bad.env", b"A=1\nnonsense\n");
    w.run(&["exec", "--env-file", bad.to_str().unwrap(), w.image(), "true"]).fails_with(&["bad.env:2"]);

    // Apptainer's bind variables are --bind lists.
    let src = w.path("bindvar");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "via-var").unwrap();
    for var in ["APPTAINER_BIND", "SINGULARITY_BIND", "SINGULARITY_BINDPATH"] {
        let out = w
            .berth(&["exec", w.image(), "cat", "/mnt/v/f"])
            .env(var, format!("{}:/mnt/v:ro", src.display()))
            .output()
            .unwrap();
        assert_eq!(harness::Out(out).ok(), "via-var", "{var}");
    }
}

#[test]
fn version_names_the_release_and_commit() {
    let w = world();
    let out = w.run(&["--version"]).ok();
    assert!(out.starts_with(&format!("berth {} (commit ", env!("CARGO_PKG_VERSION"))), "{out}");
    assert!(!out.contains("(commit )"), "{out}");
}

/// `gcc -shared` of a one-symbol library named `file` in `dir`, with `soname` linking to it.
fn stub_library(dir: &std::path::Path, soname: &str, file: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join(format!("{file}.c"));
    std::fs::write(&src, format!("const char *stub_text = \"{text}\";\n")).unwrap();
    let st = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", &format!("-Wl,-soname,{soname}"), "-o"])
        .arg(dir.join(file))
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "cc failed for {file}");
    std::fs::remove_file(&src).unwrap();
    std::os::unix::fs::symlink(file, dir.join(soname)).unwrap();
}

#[test]
fn inspect_host_with_an_image_warns_about_an_older_pmix_client_and_says_what_to_set() {
    let w = world();
    // Slurm's PMIx server is the host's libpmix (Debian 12: PMIx 4.2.2, libpmix.so.2.6.2).
    let lib = "/usr/lib/x86_64-linux-gnu";
    let host_series = std::fs::canonicalize(format!("{lib}/libpmix.so.2"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .and_then(|n| {
            // libpmix.so.2.6.2 -> [2, 6, 2]
            let v = n.split_once(".so.")?.1;
            v.split('.').map(|x| x.parse::<u32>().ok()).collect::<Option<Vec<u32>>>()
        });
    if host_series.as_deref().is_none_or(|v| v.len() < 2 || v[..2] <= [2, 3][..]) {
        eprintln!("skipped: no PMIx newer than 4.0 on this host ({host_series:?}; apt-get install libpmix2)");
        return;
    }
    // Debian 11's Open MPI 4.1.0 and PMIx 4.0.0, as their files are named, in a SquashFS image.
    let root = w.path("old-mpi-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let img_lib = root.join(lib.trim_start_matches('/'));
    stub_library(&img_lib, "libmpi.so.40", "libmpi.so.40.30.0", "Open MPI v4.1.0");
    stub_library(&img_lib, "libpmix.so.2", "libpmix.so.2.3.0", "4.0.0");
    let old = w.path("old-mpi.sqsh");
    harness::mksquashfs(&root, &old);
    let out = w.run(&["inspect", "--host", old.to_str().unwrap()]).ok();
    let warning =
        out.lines().find(|l| l.starts_with("warning:")).unwrap_or_else(|| panic!("no warning in:\n{out}"));
    for needle in
        ["Open MPI 4.1.0", "libpmix.so.2.3.0", "srun --mpi=pmix", "2 s in MPI_Init", "OMPI_MCA_pml=ob1"]
    {
        assert!(warning.contains(needle), "{needle} missing from: {warning}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&w.run(&["inspect", "--host", "--json", old.to_str().unwrap()]).ok()).unwrap();
    assert_eq!(v["image_warnings"][0].as_str(), Some(&warning["warning: ".len()..]), "{v}");

    // The test image has no MPI: the host plan, and nothing to warn about.
    let out = w.run(&["inspect", "--host", w.image()]).ok();
    assert!(out.contains("host injection for this node") && !out.contains("warning:"), "{out}");
}

/// A `squashfuse` in berth.toml that cannot be run: missing, or on a `noexec` filesystem
/// (its mode says executable, the kernel refuses the exec), fails with berth's message naming
/// the program, never an aborted child.
#[test]
fn a_fuse_server_that_cannot_run_is_a_clear_error() {
    let w = world();
    let dir = w.path("noexec");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "noexec,mode=0755", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success());
    let server = dir.join("squashfuse_ll");
    std::fs::copy("/usr/bin/squashfuse_ll", &server).unwrap();
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outs: Vec<(String, harness::Out)> = [server.to_str().unwrap(), "/nonexistent/squashfuse_ll"]
        .iter()
        .map(|program| {
            let cfg = w.path("fuse-server.toml");
            std::fs::write(&cfg, format!("squashfuse = \"{program}\"\n")).unwrap();
            std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
            let cmd = w.berth(&["exec", "--no-share", w.image(), "true"]).env("BERTH_CONFIG", &cfg).output();
            (program.to_string(), harness::Out(cmd.unwrap()))
        })
        .collect();
    let _ = std::process::Command::new("umount").arg(&dir).status();
    for (program, out) in outs {
        let err = out.stderr();
        assert!(!err.contains("fatal runtime error") && !err.contains("panicked"), "{err}");
        out.fails_with(&[&format!("cannot start {program}")]);
    }
}

/// The image's FUSE server of `berth exec --no-share IMAGE` (with `config`, if given), looked
/// at while the container runs: its `/proc/PID/exe` and whether it (and berth itself) mapped
/// libsquashfuse_ll. Also checks the program read the image through it, and that nothing is
/// left once it ended.
struct Served {
    exe: std::path::PathBuf,
    server_maps_library: bool,
    berth_maps_library: bool,
}

fn served_by(image: &std::path::Path, config: Option<&std::path::Path>) -> Served {
    use std::io::{BufRead, BufReader, Write};
    let w = world();
    let mut cmd = w.berth(&[
        "exec",
        "--no-share",
        image.to_str().unwrap(),
        "sh",
        "-c",
        "cat /etc/os-release; echo ready; read x",
    ]);
    if let Some(c) = config {
        cmd.env("BERTH_CONFIG", c);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.ends_with("ready\n") {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let o = child.wait_with_output().unwrap();
            panic!("{} ended: {seen}{}", image.display(), String::from_utf8_lossy(&o.stderr));
        }
        seen.push_str(&line);
    }
    assert!(seen.contains("berth-busybox"), "{seen}");
    let berth = child.id();
    let children = std::fs::read_to_string(format!("/proc/{berth}/task/{berth}/children")).unwrap();
    let servers: Vec<&str> = children.split_whitespace().filter(|p| harness::is_image_server(p)).collect();
    assert_eq!(servers.len(), 1, "one image server among berth's children {children}");
    let maps_library = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap().contains("libsquashfuse_ll")
    };
    let server = servers[0].to_string();
    let served = Served {
        exe: std::fs::read_link(format!("/proc/{server}/exe")).unwrap(),
        server_maps_library: maps_library(servers[0]),
        berth_maps_library: maps_library(&berth.to_string()),
    };
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(!harness::is_image_server(&server), "the server {server} was left running");
    served
}

/// A cold start serves the image from a forked berth that loaded libsquashfuse_ll (no exec of
/// squashfuse_ll), for each compression and for an image at an offset (SIF); berth itself
/// never maps the library.
#[test]
fn a_cold_start_serves_the_image_from_a_forked_berth() {
    use berth_runtime::image::write_sif;
    let w = world();
    let lz4 = w.path("served-lz4.sqsh");
    let st = std::process::Command::new("mksquashfs")
        .arg(&w.rootfs)
        .arg(&lz4)
        .args(["-noappend", "-quiet", "-all-root", "-comp", "lz4", "-no-progress"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(&lz4, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sif = w.path("served.sif");
    write_sif(&sif, &w.image, &[], None).unwrap();
    std::fs::set_permissions(&sif, std::fs::Permissions::from_mode(0o644)).unwrap();
    let berth = std::fs::canonicalize(&w.berth).unwrap();
    for image in [w.image.clone(), lz4, sif] {
        let s = served_by(&image, None);
        assert_eq!(s.exe, berth, "{}: served by {}", image.display(), s.exe.display());
        assert!(s.server_maps_library, "{}", image.display());
        assert!(!s.berth_maps_library, "berth itself loaded the library");
    }
}

/// `squashfuse_library` empty, or naming a library that is not there: the `squashfuse`
/// program serves the image, as before.
#[test]
fn the_squashfuse_program_serves_without_the_library() {
    let w = world();
    for (name, setting) in [("off", ""), ("missing", "libno-such-squashfuse.so.0")] {
        let cfg = w.path(&format!("squashfuse-lib-{name}.toml"));
        std::fs::write(&cfg, format!("squashfuse_library = \"{setting}\"\n")).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = served_by(&w.image, Some(&cfg));
        assert_eq!(s.exe, std::path::Path::new("/usr/bin/squashfuse_ll"), "library {setting:?}");
        assert!(!s.berth_maps_library);
    }
}
