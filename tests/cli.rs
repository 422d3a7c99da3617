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

fn fixture(name: &str) -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/sif").join(name);
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
        eprintln!("skipped: ../shared/fixtures/sif is absent");
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
