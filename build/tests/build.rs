//! `berth build` end to end, as root: real chroots, real mksquashfs, images checked with
//! unsquashfs. Without root (or without the tools) each test says why and passes without
//! running, so `cargo test` stays green on a laptop.
//!
//! The real debootstrap build (minutes, needs deb.debian.org) runs only with
//! BERTH_TEST_DEBOOTSTRAP=1; it uses the normal cache (/var/cache/berth/bootstrap, or
//! $BERTH_CACHE_DIR), so the second run skips the download.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_build::{self as build, BuildOptions};
use berth_runtime::session::Ended;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// None (with a message) when this machine cannot run build tests.
fn busybox() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: berth build tests need root");
        return None;
    }
    for tool in ["mksquashfs", "unsquashfs", "unshare", "chroot", "tar"] {
        if !have(tool) {
            eprintln!("SKIP: {tool} is not installed");
            return None;
        }
    }
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        let out = Command::new("file").arg("-L").arg(candidate).output();
        if Path::new(candidate).exists() {
            if let Ok(out) = out {
                if String::from_utf8_lossy(&out.stdout).contains("statically linked") {
                    return Some(PathBuf::from(candidate));
                }
            } else {
                return Some(PathBuf::from(candidate));
            }
        }
    }
    eprintln!("SKIP: needs a static busybox (apt-get install busybox-static)");
    None
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: tempfile::tempdir().expect("tempdir") }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn work(&self) -> PathBuf {
        let w = self.path("work");
        fs::create_dir_all(&w).unwrap();
        w
    }
    fn options(&self, out: &str, def: &str) -> BuildOptions {
        let mut o = BuildOptions::new(self.path(out), self.path(def));
        o.work_parent = Some(self.work());
        o.cache_dir = None;
        o.log = Some(self.path(&format!("{out}.log")));
        o
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }
    /// Nothing left in the work directory, and only expected names in the output directory.
    fn assert_clean(&self, expected_outputs: &[&str]) {
        let leftovers: Vec<_> = fs::read_dir(self.work()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(leftovers.is_empty(), "work directory not cleaned: {leftovers:?}");
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains("berth-partial"), "temporary output left behind: {name}");
            let _ = expected_outputs;
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(self.dir.path().to_str().unwrap()), "a mount was left behind:\n{mounts}");
    }
}

fn unsquash_cat(image: &Path, inner: &str) -> String {
    let out = Command::new("unsquashfs").arg("-cat").arg(image).arg(inner).output().unwrap();
    assert!(out.status.success(), "unsquashfs -cat {inner}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unpack(image: &Path, dest: &Path) {
    let st = Command::new("unsquashfs").args(["-q", "-n", "-d"]).arg(dest).arg(image).status().unwrap();
    assert!(st.success());
}

fn busybox_def(busybox: &Path) -> String {
    format!(
        "\
# A tiny image from nothing but a static busybox.
Bootstrap: scratch

%setup
    mkdir -p \"$SINGULARITY_ROOTFS/bin\"
    ln -s busybox \"$BERTH_ROOTFS/bin/sh\"

%files
    {} /bin/busybox
    data.txt /opt/data/

%post
    /bin/busybox --install -s /bin
    echo post-ran > /post-ran
    echo 'export FROM_POST=yes' >> \"$SINGULARITY_ENVIRONMENT\"

%environment
    export GREETING=hello-from-env

%runscript
    echo \"runscript: $GREETING $*\"

%labels
    Maintainer test@example.org
    Purpose \"integration test\"

%help
    This image greets.

%test
    test -f /opt/data/data.txt
    test \"$GREETING\" = hello-from-env
",
        busybox.display()
    )
}

#[test]
fn build_scratch_then_localimage() {
    let Some(busybox) = busybox() else { return };
    let env = Env::new();
    env.write("data.txt", "payload\n");
    env.write("scratch.def", &busybox_def(&busybox));
    let opts = env.options("scratch.img", "scratch.def");
    // %files sources are relative to the current directory, then the definition's directory.
    build::build(&opts).unwrap_or_else(|e| {
        panic!("{e}\n{}", fs::read_to_string(env.path("scratch.img.log")).unwrap_or_default())
    });
    let image = env.path("scratch.img");
    assert_eq!(&fs::read(&image).unwrap()[..4], b"hsqs");
    env.assert_clean(&["scratch.img"]);

    let runscript = unsquash_cat(&image, "/.singularity.d/runscript");
    assert!(runscript.starts_with("#!/bin/sh\n"), "{runscript}");
    assert!(runscript.contains("echo \"runscript: $GREETING $*\""));
    assert!(unsquash_cat(&image, "/.singularity.d/env/90-environment.sh")
        .contains("export GREETING=hello-from-env"));
    assert!(unsquash_cat(&image, "/.singularity.d/env/91-environment.sh").contains("FROM_POST=yes"));
    assert!(unsquash_cat(&image, "/.singularity.d/runscript.help").contains("This image greets."));
    assert_eq!(unsquash_cat(&image, "/.singularity.d/Singularity"), busybox_def(&busybox));
    assert_eq!(unsquash_cat(&image, "/opt/data/data.txt"), "payload\n");
    assert_eq!(unsquash_cat(&image, "/post-ran"), "post-ran\n");
    let labels: serde_json::Value =
        serde_json::from_str(&unsquash_cat(&image, "/.singularity.d/labels.json")).unwrap();
    assert_eq!(labels["Maintainer"], "test@example.org");
    assert_eq!(labels["Purpose"], "integration test");
    assert_eq!(labels["org.label-schema.usage.singularity.deffile.bootstrap"], "scratch");
    assert!(labels["org.label-schema.build-date"].as_str().unwrap().ends_with('Z'));
    assert!(labels["org.label-schema.usage.berth.version"].is_string());
    // /etc/resolv.conf was only there during %post.
    let listing = Command::new("unsquashfs").args(["-l"]).arg(&image).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(!listing.contains("resolv.conf"), "{listing}");
    assert!(!listing.contains(".berth-build"), "{listing}");

    // The image runs: unpack and use Apptainer's own action script in a chroot.
    let unpacked = env.path("unpacked");
    unpack(&image, &unpacked);
    let out = Command::new("chroot")
        .arg(&unpacked)
        .args(["/.singularity.d/actions/run", "a", "b"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "runscript: hello-from-env a b\n");

    // localimage: start from the image just built.
    env.write(
        "local.def",
        &format!(
            "Bootstrap: localimage\nFrom: {}\n\n%post\n    echo second > /second\n\n%labels\n    Layer two\n",
            image.display()
        ),
    );
    let opts = env.options("local.img", "local.def");
    build::build(&opts).unwrap_or_else(|e| panic!("{e}"));
    let local = env.path("local.img");
    assert_eq!(unsquash_cat(&local, "/post-ran"), "post-ran\n", "base content kept");
    assert_eq!(unsquash_cat(&local, "/second"), "second\n");
    assert!(unsquash_cat(&local, "/.singularity.d/runscript").contains("runscript:"), "base runscript kept");
    let labels: serde_json::Value =
        serde_json::from_str(&unsquash_cat(&local, "/.singularity.d/labels.json")).unwrap();
    assert_eq!(labels["Maintainer"], "test@example.org", "base labels kept");
    assert_eq!(labels["Layer"], "two");
    assert_eq!(labels["org.label-schema.usage.singularity.deffile.bootstrap"], "localimage");
    env.assert_clean(&["scratch.img", "local.img"]);

    // An existing OUT needs --force.
    let err = build::build(&opts).unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
    let mut forced = opts.clone();
    forced.force = true;
    forced.notest = true;
    build::build(&forced).unwrap();
}

/// A `docker save`-format tarball made here: two layers, the second with whiteouts.
fn make_docker_archive(env: &Env, busybox: &Path) -> PathBuf {
    let l1 = env.path("layer1");
    fs::create_dir_all(l1.join("bin")).unwrap();
    fs::create_dir_all(l1.join("etc")).unwrap();
    fs::create_dir_all(l1.join("opt/dir")).unwrap();
    fs::copy(busybox, l1.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", l1.join("bin/sh")).unwrap();
    for f in ["etc/gone", "etc/keep", "opt/dir/a", "opt/dir/b"] {
        fs::write(l1.join(f), f).unwrap();
    }
    let l2 = env.path("layer2");
    fs::create_dir_all(l2.join("etc")).unwrap();
    fs::create_dir_all(l2.join("opt/dir")).unwrap();
    fs::write(l2.join("etc/.wh.gone"), "").unwrap();
    fs::write(l2.join("opt/dir/.wh..wh..opq"), "").unwrap();
    fs::write(l2.join("opt/dir/c"), "c").unwrap();
    let archive = env.path("archive");
    fs::create_dir_all(archive.join("l1")).unwrap();
    fs::create_dir_all(archive.join("l2")).unwrap();
    for (src, dst) in [(&l1, "l1/layer.tar"), (&l2, "l2/layer.tar")] {
        let st = Command::new("tar")
            .arg("-cf")
            .arg(archive.join(dst))
            .arg("-C")
            .arg(src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
    }
    fs::write(
        archive.join("config.json"),
        r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","FROM_DOCKER=it's set"],"Cmd":["/bin/sh","-c","echo docker-cmd $FROM_DOCKER"],"Labels":{"vendor":"tests"}}}"#,
    )
    .unwrap();
    fs::write(
        archive.join("manifest.json"),
        r#"[{"Config":"config.json","RepoTags":["test:latest"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#,
    )
    .unwrap();
    let tarball = env.path("image-docker.tar");
    let st = Command::new("tar").arg("-cf").arg(&tarball).arg("-C").arg(&archive).arg(".").status().unwrap();
    assert!(st.success());
    tarball
}

#[test]
fn build_from_docker_archive_honours_whiteouts() {
    let Some(busybox) = busybox() else { return };
    let env = Env::new();
    let tarball = make_docker_archive(&env, &busybox);
    env.write(
        "docker.def",
        &format!(
            "Bootstrap: docker-archive\nFrom: {}\n\n%post\n    test ! -e /etc/gone\n    test -f /etc/keep\n    test ! -e /opt/dir/a\n    test ! -e /opt/dir/b\n    test -f /opt/dir/c\n",
            tarball.display()
        ),
    );
    let opts = env.options("docker.img", "docker.def");
    build::build(&opts).unwrap_or_else(|e| panic!("{e}"));
    let image = env.path("docker.img");
    let env_file = unsquash_cat(&image, "/.singularity.d/env/10-docker2singularity.sh");
    assert!(env_file.contains("export FROM_DOCKER='it'\\''s set'"), "{env_file}");
    let labels: serde_json::Value =
        serde_json::from_str(&unsquash_cat(&image, "/.singularity.d/labels.json")).unwrap();
    assert_eq!(labels["vendor"], "tests");
    let unpacked = env.path("unpacked");
    unpack(&image, &unpacked);
    assert!(!unpacked.join("etc/gone").exists());
    assert!(unpacked.join("opt/dir/c").exists());
    let out = Command::new("chroot")
        .arg(&unpacked)
        .arg("/.singularity.d/actions/run")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "docker-cmd it's set\n");
    env.assert_clean(&["docker.img"]);
    // `docker save | gzip` archives are read too; bzip2/xz ones get a hint.
    for (tool, def, ok) in
        [("gzip", "gz.def", true), ("bzip2", "bz.def", false)].into_iter().filter(|t| have(t.0))
    {
        let st = Command::new(tool).arg("-kf").arg(&tarball).status().unwrap();
        assert!(st.success());
        let ext = if ok { "gz" } else { "bz2" };
        env.write(def, &format!("Bootstrap: docker-archive\nFrom: {}.{ext}\n", tarball.display()));
        let r = build::build(&env.options(&format!("{def}.img"), def));
        if ok {
            r.unwrap_or_else(|e| panic!("{e}"));
            let unpacked = env.path("unpacked-gz");
            unpack(&env.path(&format!("{def}.img")), &unpacked);
            assert!(!unpacked.join("etc/gone").exists() && unpacked.join("opt/dir/c").exists());
        } else {
            let err = r.unwrap_err().to_string();
            assert!(
                err.contains("compressed with bzip2 or xz") && err.contains("decompress it first"),
                "{err}"
            );
        }
    }
    env.assert_clean(&["docker.img", "gz.def.img"]);
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// The same two layers as an OCI image layout (index.json -> manifest -> config + layers),
/// packed as a tar archive, the form `skopeo copy ... oci-archive:` writes.
fn make_oci_archive(env: &Env, busybox: &Path) -> PathBuf {
    make_docker_archive(env, busybox);
    let layout = env.path("oci");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |src: &Path| -> (String, u64) {
        let digest = sha256_of(src);
        fs::copy(src, blobs.join(&digest)).unwrap();
        (format!("sha256:{digest}"), fs::metadata(src).unwrap().len())
    };
    let (l1, s1) = put(&env.path("archive/l1/layer.tar"));
    let (l2, s2) = put(&env.path("archive/l2/layer.tar"));
    let (config, sc) = put(&env.path("archive/config.json"));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{sc}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l1}","size":{s1}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l2}","size":{s2}}}]}}"#
    );
    let manifest_file = env.write("oci-manifest.json", &manifest);
    let (m, sm) = put(&manifest_file);
    fs::write(
        layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{sm},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#),
    )
    .unwrap();
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tarball = env.path("image-oci.tar");
    let st = Command::new("tar").arg("-cf").arg(&tarball).arg("-C").arg(&layout).arg(".").status().unwrap();
    assert!(st.success());
    tarball
}

#[test]
fn build_from_oci_archive_honours_whiteouts() {
    let Some(busybox) = busybox() else { return };
    let env = Env::new();
    let tarball = make_oci_archive(&env, &busybox);
    env.write(
        "oci.def",
        &format!(
            "Bootstrap: oci-archive\nFrom: {}\n\n%post\n    test ! -e /etc/gone\n    test -f /etc/keep\n    test ! -e /opt/dir/a\n    test -f /opt/dir/c\n",
            tarball.display()
        ),
    );
    build::build(&env.options("oci.img", "oci.def")).unwrap_or_else(|e| panic!("{e}"));
    let image = env.path("oci.img");
    assert!(unsquash_cat(&image, "/.singularity.d/runscript").contains("docker-cmd"));
    let labels: serde_json::Value =
        serde_json::from_str(&unsquash_cat(&image, "/.singularity.d/labels.json")).unwrap();
    assert_eq!(labels["org.label-schema.usage.singularity.deffile.bootstrap"], "oci-archive");
    env.assert_clean(&["oci.img"]);
    // A tarball that is not an OCI layout says so.
    env.write(
        "notoci.def",
        &format!("Bootstrap: oci-archive\nFrom: {}\n", env.path("image-docker.tar").display()),
    );
    let err = build::build(&env.options("n.img", "notoci.def")).unwrap_err().to_string();
    assert!(err.contains("not an OCI image layout"), "{err}");
    env.assert_clean(&["oci.img"]);
}

#[test]
fn build_failing_post_leaves_nothing_and_shows_the_log_tail() {
    let Some(busybox) = busybox() else { return };
    let env = Env::new();
    env.write(
        "fail.def",
        &format!(
            "Bootstrap: scratch\n%setup\n    mkdir -p $BERTH_ROOTFS/bin\n%files\n    {} /bin/sh\n%post\n    echo the-step-before-failure\n    false\n    echo never\n",
            busybox.display()
        ),
    );
    let mut opts = env.options("fail.img", "fail.def");
    opts.log = None;
    let err = build::build(&opts).unwrap_err().to_string();
    assert!(err.contains("%post"), "{err}");
    assert!(err.contains("the-step-before-failure"), "the log tail is shown: {err}");
    assert!(!err.contains("echo never\n  | never"), "{err}");
    assert!(err.contains("--log"), "{err}");
    assert!(!env.path("fail.img").exists());
    env.assert_clean(&[]);
}

#[test]
fn build_bad_inputs_have_clear_messages() {
    let Some(busybox) = busybox() else { return };
    let env = Env::new();
    // Missing %files source, with file:line.
    env.write("missing.def", "Bootstrap: scratch\n%files\n    /nonexistent/source.tgz /opt/\n");
    let err = build::build(&env.options("m.img", "missing.def")).unwrap_err().to_string();
    assert!(err.contains("missing.def:3"), "{err}");
    assert!(err.contains("/nonexistent/source.tgz"), "{err}");
    // An unset variable in %files names the variable.
    env.write("var.def", "Bootstrap: scratch\n%files\n    ${BERTH_TEST_NOT_SET_SRC} /opt/\n");
    let err = build::build(&env.options("v.img", "var.def")).unwrap_err().to_string();
    assert!(err.contains("BERTH_TEST_NOT_SET_SRC is not set"), "{err}");
    // Syntax errors stop the build before anything happens.
    env.write("bad.def", "Bootstrap: scratch\nFlavour: x\n%frobnicate\n");
    let err = build::build(&env.options("b.img", "bad.def")).unwrap_err().to_string();
    assert!(err.contains("bad.def:2") && err.contains("bad.def:3"), "{err}");
    // %post without a shell in the image.
    env.write("noshell.def", "Bootstrap: scratch\n%post\n    true\n");
    let err = build::build(&env.options("n.img", "noshell.def")).unwrap_err().to_string();
    assert!(err.contains("no /bin/sh"), "{err}");
    // OUT in a missing directory.
    let mut opts = env.options("x.img", "noshell.def");
    opts.output = env.path("no/such/dir/x.img");
    let err = build::build(&opts).unwrap_err().to_string();
    assert!(err.contains("create it first"), "{err}");
    // A mirror that does not answer fails in seconds, not after debootstrap's retries.
    env.write(
        "mirror.def",
        "Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://127.0.0.1:9/debian\n",
    );
    let started = Instant::now();
    let err = build::build(&env.options("d.img", "mirror.def")).unwrap_err().to_string();
    assert!(err.contains("mirror http://127.0.0.1:9/debian") && err.contains("cannot connect"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // A failing %test fails the build; --notest skips it.
    env.write(
        "test.def",
        &format!(
            "Bootstrap: scratch\n%setup\n    mkdir -p $BERTH_ROOTFS/bin\n%files\n    {} /bin/sh\n%test\n    echo checking\n    exit 3\n",
            busybox.display()
        ),
    );
    let err = build::build(&env.options("t.img", "test.def")).unwrap_err().to_string();
    assert!(err.contains("%test") && err.contains("--notest"), "{err}");
    assert!(!env.path("t.img").exists());
    let mut opts = env.options("t.img", "test.def");
    opts.notest = true;
    build::build(&opts).unwrap_or_else(|e| panic!("{e}"));
    env.assert_clean(&["t.img"]);
}

/// A caller's [`berth_build::TestRunner`]: records its argv next to the image, then runs the
/// image's own `/.singularity.d/test` (read out of the finished image) with a variable the
/// chroot fallback never sets.
fn recording_runner(image: &Path, argv: &[String]) -> berth_runtime::Result<Ended> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(concat!(
            "img=$1; shift; dir=$(dirname \"$img\"); printf '%s\\n' \"$img\" \"$@\" > \"$dir/runner-argv\"; ",
            "unsquashfs -cat \"$img\" /.singularity.d/test > \"$dir/runner-test\" || exit 90; ",
            "BERTH_TEST_RUNNER=yes sh \"$dir/runner-test\"; rc=$?; rm -f \"$dir/runner-test\"; exit $rc",
        ))
        .arg("runner")
        .arg(image)
        .args(argv);
    let status = cmd.status().map_err(|e| berth_runtime::error::Error::io("run", Path::new("sh"), e))?;
    Ok(Ended::Exited(status.code().unwrap_or(99)))
}

#[test]
fn build_runs_test_through_the_callers_runner() {
    let Some(busybox) = busybox() else { return };
    let env = Env::new();
    let def = |test: &str| {
        format!(
            "Bootstrap: scratch\n%setup\n    mkdir -p $BERTH_ROOTFS/bin\n%files\n    {} /bin/sh\n%test\n    {test}\n",
            busybox.display()
        )
    };
    // Passes only under the runner: in the chroot fallback the variable is not set.
    env.write("runner.def", &def("test \"$BERTH_TEST_RUNNER\" = yes"));
    let mut opts = env.options("r.img", "runner.def");
    opts.test_runner = Some(recording_runner);
    build::build(&opts)
        .unwrap_or_else(|e| panic!("{e}\n{}", fs::read_to_string(env.path("r.img.log")).unwrap_or_default()));
    assert_eq!(&fs::read(env.path("r.img")).unwrap()[..4], b"hsqs");
    let argv = fs::read_to_string(env.path("runner-argv")).unwrap();
    let lines: Vec<&str> = argv.lines().collect();
    assert_eq!(lines.len(), 3, "{argv}");
    // The runner gets the finished image (not yet under OUT's name) and the test's argv.
    assert!(lines[0].contains(".r.img.berth-partial-"), "{argv}");
    assert_eq!(&lines[1..], ["/bin/sh", "/.singularity.d/test"]);
    env.assert_clean(&["r.img"]);
    // Without a runner the same test runs in the chroot, where it fails.
    let mut opts = env.options("c.img", "runner.def");
    opts.test_runner = None;
    let err = build::build(&opts).unwrap_err().to_string();
    assert!(err.contains("%test"), "{err}");
    assert!(!env.path("c.img").exists());

    // A test that fails under the runner fails the build and leaves no image.
    fs::remove_file(env.path("runner-argv")).unwrap();
    env.write("fail.def", &def("exit 3"));
    let mut opts = env.options("f.img", "fail.def");
    opts.test_runner = Some(recording_runner);
    let err = build::build(&opts).unwrap_err().to_string();
    assert!(err.contains("%test") && err.contains("--notest"), "{err}");
    assert!(env.path("runner-argv").exists(), "the runner ran");
    assert!(!env.path("f.img").exists());
    env.assert_clean(&["r.img"]);
}

/// Optional: the real openmpi.def from defs/ (minutes; needs deb.debian.org).
#[test]
fn build_openmpi_def_with_debootstrap() {
    if std::env::var("BERTH_TEST_DEBOOTSTRAP").as_deref() != Ok("1") {
        eprintln!("SKIP: set BERTH_TEST_DEBOOTSTRAP=1 to build defs/openmpi.def with debootstrap (minutes; cached in /var/cache/berth/bootstrap)");
        return;
    }
    if busybox().is_none() || !have("debootstrap") {
        eprintln!("SKIP: needs root and debootstrap");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let env = Env::new();
    let mut opts = BuildOptions::new(env.path("openmpi.img"), repo.join("defs/openmpi.def"));
    opts.work_parent = Some(env.work());
    opts.log = Some(env.path("openmpi.log"));
    // %files paths in defs/ are relative to the repository root.
    std::env::set_current_dir(&repo).unwrap();
    let started = Instant::now();
    build::build(&opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("openmpi.def built in {:.0}s", started.elapsed().as_secs_f64());
    let unpacked = env.path("unpacked");
    unpack(&env.path("openmpi.img"), &unpacked);
    assert!(unpacked.join("usr/local/bin/berth-mpitest").exists());
    env.assert_clean(&["openmpi.img"]);
}
