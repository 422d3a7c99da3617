//! Ctrl-C (SIGINT) and SIGTERM during `%post`: the build stops its children, removes its work
//! directory and temporary output, leaves no mount, and writes no image.
//!
//! A file of its own, so the signals sent to this test process cannot hit other tests' builds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_build::{self as build, BuildOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn static_busybox() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: berth build tests need root");
        return None;
    }
    for tool in ["mksquashfs", "unshare", "chroot"] {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool} >/dev/null"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("SKIP: {tool} is not installed");
            return None;
        }
    }
    ["/bin/busybox", "/usr/bin/busybox"].iter().map(PathBuf::from).find(|p| {
        Command::new("file")
            .arg("-L")
            .arg(p)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
            .unwrap_or(false)
    })
}

/// Wait until some `%post` has written its marker somewhere under `work`.
fn wait_for_marker(work: &Path, deadline: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if let Ok(entries) = fs::read_dir(work) {
            for e in entries.flatten() {
                if e.path().join("rootfs/post-started").exists() {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn build_interrupted_during_post_leaves_nothing_behind() {
    let Some(busybox) = static_busybox() else {
        eprintln!("SKIP: needs a static busybox (apt-get install busybox-static)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let def = dir.path().join("sleep.def");
    fs::write(
        &def,
        format!(
            "Bootstrap: scratch\n%setup\n    mkdir -p $BERTH_ROOTFS/bin\n    ln -s busybox $BERTH_ROOTFS/bin/sh\n%files\n    {} /bin/busybox\n%post\n    /bin/busybox --install -s /bin\n    touch /post-started\n    sleep 7171\n",
            busybox.display()
        ),
    )
    .unwrap();

    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let out = dir.path().join("sleep.img");
        let mut opts = BuildOptions::new(&out, &def);
        opts.work_parent = Some(work.clone());
        opts.cache_dir = None;
        let work_for_thread = work.clone();
        let sender = std::thread::spawn(move || {
            if wait_for_marker(&work_for_thread, Duration::from_secs(60)) {
                kill(Pid::this(), signal).unwrap();
                true
            } else {
                false
            }
        });
        let started = Instant::now();
        let result = build::build(&opts);
        assert!(sender.join().unwrap(), "%post never started");
        let err = result.expect_err("an interrupted build fails").to_string();
        assert!(err.contains("interrupted"), "{signal}: {err}");
        assert!(build::was_interrupted());
        assert!(started.elapsed() < Duration::from_secs(60), "the sleep in %post was stopped");
        assert!(!out.exists(), "{signal}: no image after an interrupted build");
        let left: Vec<_> = fs::read_dir(&work).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{signal}: work directory left behind: {left:?}");
        let partial: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(partial.is_empty(), "{partial:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.path().to_str().unwrap()), "mount left behind");
        // No stray sleep from %post survives.
        let ps = Command::new("sh")
            .arg("-c")
            .arg("ps -eo args | grep -c '^sleep 7171$' || true")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "0", "{signal}: %post's sleep still runs");
    }
}
