//! `berth build` through the `berth` binary: lint exit codes and messages, argument errors, and
//! (as root, with a static busybox and mksquashfs) `%test` running in a container of the
//! finished image through `berth exec`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn berth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth")).arg("build").args(args).output().expect("run berth")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn build_lint_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.def");
    fs::write(&good, "Bootstrap: scratch\n%runscript\n    echo hi\n").unwrap();
    let bad = dir.path().join("bad.def");
    fs::write(&bad, "From: nothing\n%wrong\n").unwrap();

    let out = berth(&["--lint", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}: ok\n", good.display()));

    let out = berth(&["--lint", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bad.def:2"), "problems with file:line: {stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("problem(s)"), "{}", text(&out));

    let missing = dir.path().join("missing.def");
    let out = berth(&["--lint", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("berth: "), "{}", text(&out));
}

#[test]
fn build_argument_errors() {
    for args in [&["out.img"][..], &["--compression", "bzip9", "o", "d"], &["--format", "tar", "o", "d"]] {
        let out = berth(args);
        assert_eq!(out.status.code(), Some(2), "{args:?} is a usage error: {}", text(&out));
        assert!(!Path::new("o").exists() && !Path::new("out.img").exists());
    }
}

fn static_busybox() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: berth build needs root");
        return None;
    }
    let tools = Command::new("sh")
        .arg("-c")
        .arg("command -v mksquashfs && command -v unshare && command -v chroot")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !tools {
        eprintln!("SKIP: needs mksquashfs, unshare and chroot");
        return None;
    }
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        let Ok(out) = Command::new("file").arg("-L").arg(candidate).output() else { continue };
        if String::from_utf8_lossy(&out.stdout).contains("statically linked") {
            return Some(PathBuf::from(candidate));
        }
    }
    eprintln!("SKIP: needs a static busybox (apt-get install busybox-static)");
    None
}

/// `%test` runs in a container of the finished image (where berth sets BERTH_CONTAINER), not in
/// the chroot the build uses for `%post`, started by the build itself through the runtime (the
/// test's parent is `berth build`, not a `berth exec` the build ran); a failing test fails the
/// build and leaves no image.
#[test]
fn build_runs_test_in_the_container() {
    let Some(busybox) = static_busybox() else { return };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let def = |test: &str| {
        format!(
            "Bootstrap: scratch\n%setup\n    mkdir -p $BERTH_ROOTFS/bin\n%files\n    {} /bin/sh\n%test\n    {test}\n",
            busybox.display()
        )
    };
    let run = |name: &str, test: &str| {
        let def_path = dir.path().join(format!("{name}.def"));
        fs::write(&def_path, def(test)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("build")
            .arg(dir.path().join(format!("{name}.img")))
            .arg(&def_path)
            .env("BERTH_TMPDIR", &work)
            .env("BERTH_CACHE_DIR", "")
            .output()
            .expect("run berth build");
        (out, dir.path().join(format!("{name}.img")))
    };

    let (out, image) = run(
        "inside",
        "test -n \"$BERTH_CONTAINER\" && echo \"in $BERTH_CONTAINER\" && tr '\\0' ' ' < /proc/$PPID/cmdline | grep ' build '",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("%test (in the container)"), "{}", text(&out));
    assert_eq!(&fs::read(&image).unwrap()[..4], b"hsqs");

    let (out, image) = run("failing", "exit 3");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("berth: build: %test") && err.contains("--notest"), "{err}");
    assert!(!image.exists());
    let left: Vec<_> = fs::read_dir(&work).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "work directory not cleaned: {left:?}");
    let partial = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("berth-partial"))
        .collect::<Vec<_>>();
    assert!(partial.is_empty(), "{partial:?}");
}
