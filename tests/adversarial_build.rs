//! The build and conversion paths against a hostile second user (issue 20): `mallory` crafts
//! image archives, root builds from them with `berth build` (as `sudo berth build` would), and
//! ordinary users convert them with `berth import`. One case per finding:
//!
//! | finding | case |
//! |---|---|
//! | 1: root extracts a hostile archive | `sudo_build_of_a_hostile_archive_writes_nothing_outside_its_work_directory`, `odd_member_names_stay_inside_the_image` |
//! | 4: archive members that are symlinks to host files | `sudo_build_reads_archive_members_from_the_archive_only` |
//! | 5: header memory bomb | `header_bombs_fail_fast_in_bounded_memory` |
//! | 6: quadratic memory in path depth | `a_100kb_path_fails_fast_in_bounded_memory` |
//! | 9: mksquashfs dying mid-stream | `mksquashfs_dying_mid_stream_is_reported_and_leaves_nothing` |
//! | (build) a small archive that fills the disk as root | `sudo_build_of_a_disk_bomb_stops_at_what_a_user_could_write` |

mod harness;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{user, world, User};

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh directory for one case, world-readable, owned by `owner`.
fn case_dir(name: &str, owner: &User) -> PathBuf {
    let d = world().path(&format!("advb-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&d, Some(owner.uid), Some(owner.gid)).unwrap();
    d
}

// A minimal tar writer: the archives here are malformed on purpose, which no tar tool writes.

fn header(kind: u8, name: &[u8], link: &[u8], size: u64, mode: u32) -> Vec<u8> {
    assert!(name.len() <= 100 && link.len() <= 100);
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14531311200\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(512) * 512, 0);
}

#[derive(Clone)]
enum M {
    File(Vec<u8>, Vec<u8>),
    Dir(Vec<u8>),
    Symlink(Vec<u8>, Vec<u8>),
    Hardlink(Vec<u8>, Vec<u8>),
    /// A pax header whose `path` record names the next member.
    PaxPath(Vec<u8>),
}

fn file(name: &str, data: &str) -> M {
    M::File(name.into(), data.into())
}
fn symlink(name: &str, target: &str) -> M {
    M::Symlink(name.into(), target.into())
}

fn tar(members: &[M]) -> Vec<u8> {
    let mut out = vec![];
    for m in members {
        match m {
            M::File(n, d) => {
                out.extend(header(b'0', n, b"", d.len() as u64, 0o644));
                out.extend(d);
                pad(&mut out);
            }
            M::Dir(n) => out.extend(header(b'5', n, b"", 0, 0o755)),
            M::Symlink(n, t) => out.extend(header(b'2', n, t, 0, 0o777)),
            M::Hardlink(n, t) => out.extend(header(b'1', n, t, 0, 0o644)),
            M::PaxPath(p) => {
                let rest = "path".len() + p.len() + 3;
                let mut len = rest + rest.to_string().len();
                if len.to_string().len() != rest.to_string().len() {
                    len += 1;
                }
                let mut body = format!("{len} path=").into_bytes();
                body.extend(p);
                body.push(b'\n');
                out.extend(header(b'x', b"pax", b"", body.len() as u64, 0o644));
                out.extend(body);
                pad(&mut out);
            }
        }
    }
    out.extend([0u8; 1024]);
    out
}

/// A `docker save` archive at `path`: `layers` (their bytes) as `lN/layer.tar`, plus `extra`
/// members of the archive itself; the manifest lists `names` (default: the layers).
fn docker_archive(path: &Path, layers: &[Vec<u8>], extra: &[M], names: Option<&[&str]>) {
    let own: Vec<String> = (0..layers.len()).map(|i| format!("l{i}/layer.tar")).collect();
    let names: Vec<String> = match names {
        Some(n) => n.iter().map(|s| s.to_string()).collect(),
        None => own.clone(),
    };
    let mut members: Vec<M> =
        own.iter().zip(layers).map(|(n, l)| M::File(n.clone().into(), l.clone())).collect();
    members.extend_from_slice(extra);
    members.push(file("config.json", r#"{"config":{"Env":["PATH=/bin"]}}"#));
    let manifest = serde_json::json!([{"Config": "config.json", "Layers": names}]);
    members.push(M::File("manifest.json".into(), serde_json::to_vec(&manifest).unwrap()));
    std::fs::write(path, tar(&members)).unwrap();
}

/// Every path below `dir` but `work`, with type, size, mode and link count.
fn snapshot(dir: &Path) -> String {
    let out = Command::new("find")
        .arg(dir)
        .args(["-path", &format!("{}/work", dir.display()), "-prune", "-o", "-printf", "%P %y %s %m %n\\n"])
        .output()
        .unwrap();
    let mut lines: Vec<String> =
        text(&out.stdout).lines().filter(|l| !l.starts_with("img.def ")).map(String::from).collect();
    lines.sort();
    lines.join("\n")
}

/// `berth build` as root (as `sudo berth build` runs it) of a docker-archive bootstrap.
fn sudo_build(dir: &Path, from: &Path) -> harness::Out {
    sudo_build_with(dir, "docker-archive", from)
}

/// `berth build` as root of a `Bootstrap: AGENT` definition.
fn sudo_build_with(dir: &Path, agent: &str, from: &Path) -> harness::Out {
    let def = dir.join("img.def");
    std::fs::write(&def, format!("Bootstrap: {agent}\nFrom: {}\n", from.display())).unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let o = Command::new(&world().berth)
        .arg("build")
        .arg(dir.join("img.sqsh"))
        .arg(&def)
        .env("BERTH_TMPDIR", &work)
        .env("BERTH_CACHE_DIR", dir.join("work/cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(work.join("cache"));
    let left: Vec<_> = std::fs::read_dir(&work).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "the work directory was not cleaned: {left:?}");
    std::fs::remove_dir(&work).unwrap();
    harness::Out(o)
}

/// Finding 1. Each archive tries to make root write outside the build's root filesystem:
/// relative link chains across layers, member names that a tool's quoted listing renders
/// differently (backslash, newline), `..` and absolute names, and a hardlink through a
/// symlink to another user's file. Each build fails with one `berth:` message naming the
/// entry; nothing outside the work directory changes, and the other user's file gains no link.
#[test]
fn sudo_build_of_a_hostile_archive_writes_nothing_outside_its_work_directory() {
    let mallory = user("mallory");
    let victim = user("victim");
    let cases: Vec<(&str, Vec<Vec<M>>, &str)> = vec![
        (
            "chain-in-one-layer",
            vec![vec![symlink("y", "TARGET")], vec![symlink("x", "y"), file("x/file", "owned")]],
            "\"x\" is a symlink that a later entry writes through",
        ),
        (
            "chain-across-layers",
            vec![vec![symlink("y", "TARGET")], vec![symlink("x", "y")], vec![file("x/file", "owned")]],
            "\"x\" is a symlink that a later entry writes through",
        ),
        (
            "backslash",
            vec![vec![symlink("l\\k", "TARGET")], vec![file("l\\k/file", "owned")]],
            "is a symlink that a later entry writes through",
        ),
        (
            "newline",
            vec![vec![symlink("l\nk", "TARGET")], vec![file("l\nk/file", "owned")]],
            "is a symlink that a later entry writes through",
        ),
        ("dotdot", vec![vec![file("../../../../escaped", "owned")]], "would write outside the image root"),
        (
            "hardlink-through-a-symlink",
            vec![vec![symlink("r", "/")], vec![M::Hardlink("h".into(), "r/SECRET".into())]],
            "which is not a file in the image",
        ),
        (
            "hardlink-out",
            vec![vec![M::Hardlink("h".into(), "../../../../SECRET".into())]],
            "outside the image root",
        ),
    ];
    let mut problems = vec![];
    for (name, layers, expect) in cases {
        let dir = case_dir(name, &mallory);
        let target = dir.join("target");
        std::fs::create_dir(&target).unwrap();
        // Another user's private file, which the hardlink cases aim at.
        let private = dir.join("victim");
        std::fs::create_dir(&private).unwrap();
        std::fs::write(private.join("secret"), "VICTIM-SECRET\n").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(private.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        sh(&format!("chown -R {}:{} {}", victim.uid, victim.gid, private.display()));
        let secret = private.join("secret");
        let fill = |b: &[u8]| -> Vec<u8> {
            let s = text(b)
                .replace("TARGET", target.to_str().unwrap())
                .replace("SECRET", secret.to_str().unwrap().trim_start_matches('/'));
            s.into_bytes()
        };
        let layers: Vec<Vec<u8>> = layers
            .iter()
            .map(|l| {
                let l: Vec<M> = l
                    .iter()
                    .map(|m| match m {
                        M::Symlink(n, t) => M::Symlink(n.clone(), fill(t)),
                        M::Hardlink(n, t) => M::Hardlink(n.clone(), fill(t)),
                        other => other.clone(),
                    })
                    .collect();
                tar(&l)
            })
            .collect();
        let archive = dir.join("hostile.tar");
        docker_archive(&archive, &layers, &[], None);
        std::os::unix::fs::chown(&archive, Some(mallory.uid), Some(mallory.gid)).unwrap();
        let before = snapshot(&dir);
        let out = sudo_build(&dir, &archive);
        let err = out.stderr();
        // Every case is checked (and every failure listed), not only the first.
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("{name}: {what}; stderr: {err}"));
            }
        };
        let msg = err.lines().find(|l| l.starts_with("berth: ")).unwrap_or("");
        check(out.code() == Some(255), "the build did not fail with berth's error");
        check(msg.contains(expect), &format!("the message lacks {expect:?}"));
        check(std::fs::read_dir(&target).unwrap().count() == 0, "root wrote into the target");
        check(std::fs::metadata(&secret).unwrap().nlink() == 1, "the victim's file gained a link");
        check(snapshot(&dir) == before, "something outside the work directory changed");
        check(!dir.join("img.sqsh").exists(), "an image was written");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Finding 4. A `docker save` archive whose `l0/layer.tar`, and an OCI archive whose layer blob,
/// is a symlink member pointing at another user's private tarball (the OCI manifest even names
/// that file's true digest). Members are read from the archive only: each build fails naming
/// the member, and no image holding the other user's data is written.
#[test]
fn sudo_build_reads_archive_members_from_the_archive_only() {
    let mallory = user("mallory");
    let victim = user("victim");
    let dir = case_dir("member-symlink", &mallory);
    let private = dir.join("victim");
    std::fs::create_dir(&private).unwrap();
    std::fs::write(private.join("backup.tar"), tar(&[file("secret.txt", "VICTIM-SECRET\n")])).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(private.join("backup.tar"), std::fs::Permissions::from_mode(0o600)).unwrap();
    sh(&format!("chown -R {}:{} {}", victim.uid, victim.gid, private.display()));
    let backup = private.join("backup.tar");
    let archive = dir.join("hostile.tar");
    docker_archive(
        &archive,
        &[],
        &[M::Symlink("l0/layer.tar".into(), backup.to_str().unwrap().into())],
        Some(&["l0/layer.tar"]),
    );
    std::os::unix::fs::chown(&archive, Some(mallory.uid), Some(mallory.gid)).unwrap();
    let out = sudo_build(&dir, &archive);
    let err = out.stderr();
    assert_eq!(out.code(), Some(255), "{err}");
    assert!(err.contains("l0/layer.tar is missing"), "{err}");
    assert!(!err.contains("VICTIM-SECRET"));
    assert!(!dir.join("img.sqsh").exists(), "an image was written from another user's file");

    // The same through an OCI archive: index.json -> manifest -> a layer blob that is a link.
    let sha = |b: &[u8]| {
        let p = dir.join("blob");
        std::fs::write(&p, b).unwrap();
        let o = Command::new("sha256sum").arg(&p).output().unwrap();
        std::fs::remove_file(&p).unwrap();
        text(&o.stdout).split_whitespace().next().unwrap().to_string()
    };
    let layer_digest = sha(&std::fs::read(&backup).unwrap());
    let config =
        br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = sha(config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": 10240}],
    }))
    .unwrap();
    let manifest_digest = sha(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest_digest}"), "size": manifest.len()}]}))
    .unwrap();
    let oci = dir.join("hostile-oci.tar");
    std::fs::write(
        &oci,
        tar(&[
            M::File("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            M::File("index.json".into(), index),
            M::File(format!("blobs/sha256/{manifest_digest}").into(), manifest),
            M::File(format!("blobs/sha256/{config_digest}").into(), config.to_vec()),
            M::Symlink(format!("blobs/sha256/{layer_digest}").into(), backup.to_str().unwrap().into()),
        ]),
    )
    .unwrap();
    std::os::unix::fs::chown(&oci, Some(mallory.uid), Some(mallory.gid)).unwrap();
    let out = sudo_build_with(&dir, "oci-archive", &oci);
    let err = out.stderr();
    assert_eq!(out.code(), Some(255), "{err}");
    assert!(err.contains(&format!("blobs/sha256/{layer_digest} is missing")), "{err}");
    assert!(!dir.join("img.sqsh").exists(), "an image was written from another user's file");
}

/// Finding 1, the other side: names with a newline, a backslash, spaces and a leading `/` are
/// ordinary names inside the image (no listing is parsed), and the build succeeds.
#[test]
fn odd_member_names_stay_inside_the_image() {
    let mallory = user("mallory");
    let dir = case_dir("odd-names", &mallory);
    let target = dir.join("target");
    std::fs::create_dir(&target).unwrap();
    let abs = format!("{}/abs", target.display());
    let layer = tar(&[
        M::Dir("d".into()),
        file("d/new\nline", "nl"),
        file("back\\slash", "bs"),
        file("with space", "sp"),
        file(&abs, "absolute"),
    ]);
    let archive = dir.join("odd.tar");
    docker_archive(&archive, &[layer], &[], None);
    let out = sudo_build(&dir, &archive);
    out.ok();
    let unpacked = dir.join("unpacked");
    let st =
        Command::new("unsquashfs").args(["-q", "-n", "-d"]).arg(&unpacked).arg(dir.join("img.sqsh")).status();
    assert!(st.unwrap().success());
    let cat = |p: &str| std::fs::read_to_string(unpacked.join(p)).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    assert_eq!(cat("back\\slash"), "bs");
    assert_eq!(cat("d/new\nline"), "nl");
    assert_eq!(cat("with space"), "sp");
    assert_eq!(cat(abs.trim_start_matches('/')), "absolute", "an absolute name lands inside the image");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "nothing was written on the host");
}

/// How `cmd` ended, what it wrote to stderr, how long it took and its peak RSS (KiB, its own
/// `wait4` rusage). Its address space is capped at 2 GiB: a regression fails the test instead
/// of swamping the machine.
fn measured(mut cmd: Command) -> (std::process::ExitStatus, String, Duration, i64) {
    let err = tempfile::NamedTempFile::new().unwrap();
    cmd.stdout(Stdio::null()).stderr(err.reopen().unwrap());
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 2 << 30, rlim_max: 2 << 30 };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let started = Instant::now();
    // Reaped by wait4 below, which also gives its rusage.
    let pid = cmd.spawn().unwrap().id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child just spawned, whose handle was dropped unwaited.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    let took = started.elapsed();
    let status: std::process::ExitStatus = std::os::unix::process::ExitStatusExt::from_raw(status);
    (status, std::fs::read_to_string(err.path()).unwrap(), took, usage.ru_maxrss)
}

fn import_as(u: &User, dir: &Path, archive: &Path) -> Command {
    let mut c = harness::as_user(
        &world().berth,
        &["import", "--quiet", &format!("docker-archive:{}", archive.display()), "out.sqsh"],
        (u.uid, u.gid),
        &u.home,
        u.name,
        dir,
    );
    c.env("BERTH_CACHE_DIR", dir.join("cache"));
    c
}

/// A gzip stream of `header` followed by `total` zero bytes, made of repeated gzip members (a
/// few MB for gigabytes).
fn gzip_bomb(dir: &Path, header: &[u8], total: u64) -> Vec<u8> {
    let chunk = 8u64 << 20;
    let z = dir.join("zeros.gz");
    sh(&format!("head -c {chunk} /dev/zero | gzip -9 > {}", z.display()));
    let zeros = std::fs::read(&z).unwrap();
    std::fs::remove_file(&z).unwrap();
    let h = dir.join("header");
    std::fs::write(&h, header).unwrap();
    sh(&format!("gzip -1 -n {}", h.display()));
    let mut out = std::fs::read(dir.join("header.gz")).unwrap();
    std::fs::remove_file(dir.join("header.gz")).unwrap();
    for _ in 0..total.div_ceil(chunk) {
        out.extend_from_slice(&zeros);
    }
    out
}

fn assert_bounded(
    what: &str,
    status: std::process::ExitStatus,
    err: &str,
    took: Duration,
    rss_kib: i64,
    expect: &str,
) {
    assert_eq!(status.code(), Some(255), "{what}: berth's own error expected ({status:?}): {err}");
    assert!(err.starts_with("berth: ") && err.contains(expect), "{what}: {err}");
    assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
    assert!(rss_kib < 64 << 10, "{what}: peak RSS {rss_kib} KiB");
    eprintln!("{what}: failed in {took:?} with a peak RSS of {} KiB", rss_kib);
}

/// Finding 5. A small gzip layer holding a 3 GiB GNU long-name, long-link or pax header fails
/// in under 5 s and 64 MiB with one message, and writes nothing.
#[test]
fn header_bombs_fail_fast_in_bounded_memory() {
    let mallory = user("mallory");
    for (kind, name) in [(b'L', "GNU long-name"), (b'x', "pax")] {
        let dir = case_dir(&format!("bomb-{}", kind as char), &mallory);
        let size = 3u64 << 30;
        let layer = gzip_bomb(&dir, &header(kind, b"././@LongLink", b"", size, 0o644), size);
        assert!(layer.len() < 8 << 20, "the bomb is small: {} bytes", layer.len());
        let archive = dir.join("bomb.tar");
        docker_archive(&archive, &[layer], &[], None);
        sh(&format!("chown -R {}:{} {}", mallory.uid, mallory.gid, dir.display()));
        let (status, err, took, rss) = measured(import_as(&mallory, &dir, &archive));
        assert_bounded(
            name,
            status,
            &err,
            took,
            rss,
            &format!("a {name} header of {size} bytes is over berth's limit"),
        );
        assert!(!dir.join("out.sqsh").exists());
    }
}

/// Finding 6. One entry with a 100 KB path of 50,000 directories fails in under 5 s and 64 MiB.
#[test]
fn a_100kb_path_fails_fast_in_bounded_memory() {
    let mallory = user("mallory");
    let dir = case_dir("deep-path", &mallory);
    let deep = "a/".repeat(50_000);
    let layer = tar(&[M::PaxPath(deep.into_bytes()), file("x", "deep")]);
    let archive = dir.join("deep.tar");
    docker_archive(&archive, &[layer], &[], None);
    sh(&format!("chown -R {}:{} {}", mallory.uid, mallory.gid, dir.display()));
    let (status, err, took, rss) = measured(import_as(&mallory, &dir, &archive));
    assert_bounded(
        "100 KB path",
        status,
        &err,
        took,
        rss,
        "has a path longer than berth's limit of 4096 bytes",
    );
    assert!(!dir.join("out.sqsh").exists());
}

/// Finding 9. mksquashfs that dies mid-stream (here: a stand-in that reads a little, says the
/// disk is full and exits) makes berth print mksquashfs' reason in one message and exit with
/// its own error, not die of SIGPIPE (141) silently; no partial file is left.
#[test]
fn mksquashfs_dying_mid_stream_is_reported_and_leaves_nothing() {
    let mallory = user("mallory");
    let dir = case_dir("mksquashfs-dies", &mallory);
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let real =
        String::from_utf8(Command::new("sh").args(["-c", "command -v mksquashfs"]).output().unwrap().stdout)
            .unwrap();
    std::fs::write(
        bin.join("mksquashfs"),
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" -tar \"*) ;; *) exec {} \"$@\" ;; esac\n\
             head -c 65536 >/dev/null\necho 'FATAL ERROR: Failed to write to output filesystem: No space left on device' >&2\nexit 1\n",
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("mksquashfs"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Content that does not compress, well past the pipe's and berth's buffers.
    let mut data = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = b'a' + (x % 26) as u8;
    }
    let layer = tar(&[M::File("big".into(), data)]);
    let archive = dir.join("big.tar");
    docker_archive(&archive, &[layer], &[], None);
    let out_dir = dir.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    sh(&format!("chown -R {}:{} {}", mallory.uid, mallory.gid, dir.display()));
    let mut c = import_as(&mallory, &out_dir, &archive);
    c.env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()));
    let o = harness::Out(c.output().unwrap());
    o.fails_with(&["mksquashfs", "No space left on device"]);
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A loop-mounted ext4 of `mib` MiB that keeps half its blocks for root, unmounted on drop.
struct SmallDisk {
    mnt: PathBuf,
}

impl SmallDisk {
    fn new(dir: &Path, mib: u64) -> Option<SmallDisk> {
        let img = dir.join("disk.img");
        let mnt = dir.join("disk");
        std::fs::create_dir_all(&mnt).unwrap();
        sh(&format!("truncate -s {mib}M {} && mkfs.ext4 -q -F -m 50 {}", img.display(), img.display()));
        let st = Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt).status().unwrap();
        if !st.success() {
            eprintln!("SKIP: cannot loop-mount an ext4 image here");
            return None;
        }
        Some(SmallDisk { mnt })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// A disk bomb: a layer of a few KB (gzip) that holds 40 MiB of zeros, built with its work
/// directory on a filesystem where ordinary users have about 27 MiB. Root could write all of
/// it into the blocks the filesystem keeps for root; the build stops at what a user could
/// write, with one message, and leaves nothing. The same for an archive that is itself
/// compressed (decompressed into the work directory first).
#[test]
fn sudo_build_of_a_disk_bomb_stops_at_what_a_user_could_write() {
    let mallory = user("mallory");
    let dir = case_dir("disk-bomb", &mallory);
    let Some(disk) = SmallDisk::new(&dir, 64) else { return };
    let raw = dir.join("layer.tar");
    let mut layer = header(b'0', b"big", b"", 40 << 20, 0o644);
    layer.resize(layer.len() + (40 << 20), 0);
    layer.extend([0u8; 1024]);
    std::fs::write(&raw, &layer).unwrap();
    sh(&format!("gzip -9 {}", raw.display()));
    let gz = std::fs::read(dir.join("layer.tar.gz")).unwrap();
    assert!(gz.len() < 1 << 20, "the layer is small: {} bytes", gz.len());
    let archive = dir.join("bomb.tar");
    docker_archive(&archive, &[gz], &[], None);
    // The same 40 MiB as a compressed archive of a plain layer.
    let plain = dir.join("plain.tar");
    docker_archive(&plain, &[layer], &[], None);
    sh(&format!("gzip -9 {}", plain.display()));
    let used = || {
        let o = Command::new("df").args(["--output=used", "-B1"]).arg(&disk.mnt).output().unwrap();
        text(&o.stdout).lines().nth(1).unwrap().trim().to_string()
    };
    let before = used();
    for (from, expect) in [
        (archive.clone(), "40.0 MiB do not fit in the"),
        (dir.join("plain.tar.gz"), "no space is left for ordinary users"),
    ] {
        let def = dir.join("img.def");
        std::fs::write(&def, format!("Bootstrap: docker-archive\nFrom: {}\n", from.display())).unwrap();
        let work = disk.mnt.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let o = harness::Out(
            Command::new(&world().berth)
                .arg("build")
                .arg(dir.join("img.sqsh"))
                .arg(&def)
                .env("BERTH_TMPDIR", &work)
                .env("BERTH_CACHE_DIR", work.join("cache"))
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        );
        let err = o.stderr();
        assert_eq!(o.code(), Some(255), "{}: {err}", from.display());
        let msg = err.lines().find(|l| l.starts_with("berth: ")).unwrap_or("");
        assert!(
            msg.contains(expect) && msg.contains("blocks reserved for root"),
            "{}: {err}",
            from.display()
        );
        assert!(err.contains("BERTH_TMPDIR"), "{err}");
        assert!(!dir.join("img.sqsh").exists());
        let _ = std::fs::remove_dir_all(work.join("cache"));
        std::fs::remove_dir(&work).unwrap_or_else(|e| panic!("the work directory was not cleaned: {e}"));
        assert_eq!(used(), before, "{}: space left in use", from.display());
    }
}
