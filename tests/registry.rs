//! `berth pull` / `berth import` against real registries (Debian's `docker-registry`, one plain
//! HTTP instance and one with TLS from a CA made here and htpasswd auth), images pushed with
//! `skopeo copy` from OCI layouts written here, pulled and run as the unprivileged test user.
//! Faults a real registry does not make on demand (dropped connections, slow transfers) come
//! from a small HTTP server in this file that serves the same layout.

mod harness;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use berth_registry::testimg::{finish, image, layer, layer_zstd, Ent};
use harness::registry::{free_port, skopeo_push, Registry};
use harness::{world, World};

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What the test image holds besides busybox: layers with whiteouts, an opaque directory,
/// hardlinks, files of uid 0 and of other users, a setuid file.
fn app_layers(w: &World, dir: &Path) -> Vec<Vec<u8>> {
    let base = dir.join("base.tar.gz");
    sh(&format!(
        "tar -C {} --numeric-owner --owner=0 --group=0 --exclude=./.singularity.d -czf {} .",
        w.rootfs.display(),
        base.display()
    ));
    let l2 = layer(
        &[
            Ent::Dir("etc", 0o755, 0, 0),
            Ent::File("etc/gone", b"x", 0o644, 0, 0),
            Ent::Dir("opt/old", 0o755, 0, 0),
            Ent::File("opt/old/a", b"a", 0o644, 0, 0),
            Ent::Dir("srv", 0o750, 1234, 4321),
            Ent::File("srv/data", b"svc", 0o640, 1234, 4321),
            Ent::File("usr/bin/suid", b"#!/bin/sh\nid -u\n", 0o4755, 0, 0),
            Ent::File("pub/orig", b"orig\n", 0o644, 0, 0),
            Ent::Hardlink("pub/link", "pub/orig"),
            Ent::File("pub/mine", b"mine\n", 0o664, 4242, 4242),
        ],
        true,
    );
    let l3 = layer(
        &[
            Ent::File("etc/.wh.gone", b"", 0o644, 0, 0),
            Ent::File("opt/.wh..wh..opq", b"", 0o644, 0, 0),
            Ent::File("opt/new", b"new\n", 0o644, 0, 0),
            Ent::Hardlink("pub/link2", "pub/orig"),
            Ent::Symlink("pub/sym", "orig"),
        ],
        true,
    );
    vec![std::fs::read(base).unwrap(), l2, l3]
}

fn app_config() -> serde_json::Value {
    serde_json::json!({"config": {
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello from the registry"],
        "WorkingDir": "/opt",
        "Entrypoint": ["/bin/echo", "ep"],
        "Cmd": ["default-cmd"],
        "Labels": {"org.opencontainers.image.title": "berth-test-app"}
    }})
}

struct Fixture {
    /// Single-arch app image layout (tag v1).
    app: PathBuf,
    /// Multi-arch index (amd64 + arm64), tag multi.
    multi: PathBuf,
    /// A layer with a `../` entry, tag bad.
    hostile: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    htpasswd: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let w = world();
        let d = w.path("registry-fixture");
        std::fs::create_dir_all(&d).unwrap();
        let app = d.join("app");
        std::fs::create_dir_all(&app).unwrap();
        let m = image(&app, &app_config(), &app_layers(w, &d), "amd64");
        finish(&app, vec![m], "v1");

        let multi = d.join("multi");
        std::fs::create_dir_all(&multi).unwrap();
        let base = std::fs::read(d.join("base.tar.gz")).unwrap();
        let arch = |a: &str| layer(&[Ent::File("arch", format!("{a}\n").as_bytes(), 0o644, 0, 0)], true);
        let cfg = serde_json::json!({"config": {"Cmd": ["/bin/cat", "/arch"]}});
        let a = image(&multi, &cfg, &[base.clone(), arch("amd64")], "amd64");
        let b = image(&multi, &cfg, &[base, arch("arm64")], "arm64");
        finish(&multi, vec![a, b], "multi");

        let hostile = d.join("hostile");
        std::fs::create_dir_all(&hostile).unwrap();
        let evil = layer(&[Ent::File("ok", b"ok", 0o644, 0, 0), Ent::RawFile("../../../tmp/berth-escape", b"x")], true);
        let m = image(&hostile, &serde_json::json!({}), &[evil], "amd64");
        finish(&hostile, vec![m], "bad");

        let (ca, cert, key) = (d.join("ca.pem"), d.join("srv.pem"), d.join("srv.key"));
        sh(&format!(
            "cd {dir} && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
             -subj /CN=berth-test-ca 2>/dev/null && \
             openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null && \
             printf 'subjectAltName=IP:127.0.0.1\\n' > ext && \
             openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 \
             -extfile ext 2>/dev/null && chmod 644 ca.pem",
            dir = d.display()
        ));
        let htpasswd = d.join("htpasswd");
        sh(&format!("htpasswd -Bbn alice s3cret-pw > {}", htpasswd.display()));
        Fixture { app, multi, hostile, ca, cert, key, htpasswd }
    })
}

/// A directory the test user owns (outputs, caches, auth files).
fn user_dir(w: &World, name: &str) -> PathBuf {
    let p = w.path(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    nix::unistd::chown(&p, Some(w.uid.into()), Some(w.gid.into())).unwrap();
    p
}

fn pull_cmd(w: &World, home: &Path, args: &[&str]) -> Command {
    let mut c = w.berth(args);
    c.current_dir(home).env("BERTH_CACHE_DIR", home.join("cache"));
    c
}

fn run(mut c: Command) -> harness::Out {
    harness::Out(c.output().unwrap())
}

/// Files in `dir` whose names show a partial write.
fn partials(dir: &Path) -> Vec<String> {
    sh(&format!("find {} -name '*partial*' 2>/dev/null || true", dir.display()))
        .lines()
        .map(String::from)
        .collect()
}

fn listing(img: &Path) -> String {
    sh(&format!("unsquashfs -lln {}", img.display()))
}

fn line_for<'a>(list: &'a str, path: &str) -> &'a str {
    list.lines()
        .find(|l| {
            l.ends_with(&format!("squashfs-root{path}")) || l.contains(&format!("squashfs-root{path} -> "))
        })
        .unwrap_or_else(|| panic!("{path} missing:\n{list}"))
}

/// A plain-HTTP registry (`name`) holding the fixture's app image as `test/app:v1`, its
/// `docker://` reference, and a fresh home directory `home` for the test user.
fn plain_registry_with_app(name: &str, home: &str) -> (Registry, String, PathBuf) {
    let (w, f) = (world(), fixture());
    let reg = Registry::start(&w.path(name), None, None);
    let r = format!("docker://{}/test/app:v1", reg.addr());
    skopeo_push(&f.app, "v1", &r, &[]);
    (reg, r, user_dir(w, home))
}

/// A TLS registry with basic auth (user alice) holding the fixture's app image as
/// `private/app:v1`, its `docker://` reference, and a fresh home directory for the test user.
fn private_registry_with_app(name: &str, home: &str) -> (Registry, String, PathBuf) {
    let (w, f) = (world(), fixture());
    let reg = Registry::start(&w.path(name), Some((&f.cert, &f.key)), Some(&f.htpasswd));
    let r = format!("docker://{}/private/app:v1", reg.addr());
    skopeo_push(&f.app, "v1", &r, &["--dest-creds", "alice:s3cret-pw"]);
    (reg, r, user_dir(w, home))
}

#[test]
fn pull_from_plain_registry_runs_like_docker_and_keeps_the_tree() {
    let w = world();
    let (reg, r, home) = plain_registry_with_app("reg-plain", "pull-plain");

    let err = run(pull_cmd(w, &home, &["pull", &r, "app.sqsh"])).fails_with(&["plain HTTP", "--insecure"]);
    assert!(partials(&home).is_empty(), "{err}");

    let out = run(pull_cmd(w, &home, &["pull", "--insecure", &r, "app.sqsh"]));
    out.ok();
    let img = home.join("app.sqsh");
    assert_eq!(std::fs::metadata(&img).unwrap().permissions().mode() & 0o777, 0o644);
    assert!(partials(&home).is_empty());

    // Owners and modes as in the image although no root was involved.
    let l = listing(&img);
    assert!(l.lines().next().unwrap().starts_with("drwxr-xr-x 0/0"), "root dir: {l}");
    assert!(line_for(&l, "/srv").starts_with("drwxr-x--- 1234/4321"), "{l}");
    assert!(line_for(&l, "/srv/data").starts_with("-rw-r----- 1234/4321"), "{l}");
    assert!(line_for(&l, "/usr/bin/suid").starts_with("-rwsr-xr-x 0/0"), "{l}");
    assert!(line_for(&l, "/pub/mine").starts_with("-rw-rw-r-- 4242/4242"), "{l}");
    assert!(line_for(&l, "/bin/busybox").starts_with("-rwxr-xr-x 0/0"), "{l}");
    assert!(line_for(&l, "/pub/sym").contains("-> orig"), "{l}");
    for gone in ["/etc/gone", "/opt/old", "/opt/old/a"] {
        assert!(
            !l.lines().any(|x| x.ends_with(&format!("squashfs-root{gone}"))),
            "{gone} must be whited out:\n{l}"
        );
    }
    assert!(!l.contains(".wh."), "{l}");
    // Every busybox applet of the base layer is there.
    let applets = std::fs::read_dir(w.rootfs.join("bin")).unwrap().count();
    assert_eq!(l.lines().filter(|x| x.contains("squashfs-root/bin/")).count(), applets);

    // Run it as the user: contents, hardlinks (same inode), env, workdir, docker-run semantics.
    let got = run(pull_cmd(
        w,
        &home,
        &[
            "exec",
            "app.sqsh",
            "sh",
            "-c",
            "cat /pub/orig /pub/link /pub/link2 /pub/sym /opt/new; echo \"$GREETING\"; \
             stat -c %i /pub/orig /pub/link /pub/link2 | sort -u | wc -l; stat -c '%a' /srv /usr/bin/suid; \
             ls /opt; cat /srv/data 2>/dev/null || echo denied",
        ],
    ))
    .ok();
    assert_eq!(
        got, "orig\norig\norig\norig\nnew\nhello from the registry\n1\n750\n4755\nnew\ndenied\n",
        "tree as seen inside"
    );
    let ran = run(pull_cmd(w, &home, &["run", "app.sqsh"])).ok();
    assert_eq!(ran, "ep default-cmd\n");
    let ran = run(pull_cmd(w, &home, &["run", "app.sqsh", "a b", "c"])).ok();
    assert_eq!(ran, "ep a b c\n");
    let pwd = run(pull_cmd(w, &home, &["exec", "app.sqsh", "/bin/sh", "/.singularity.d/runscript"])).ok();
    assert_eq!(pwd, "ep default-cmd\n");

    // inspect shows where it came from, with the digest; pulling by that digest gives the same.
    let info = run(pull_cmd(w, &home, &["inspect", "app.sqsh"])).ok();
    assert!(info.contains(&format!("org.berth.source: {r}")) || info.contains(&r), "{info}");
    let digest = info
        .split("sha256:")
        .nth(1)
        .map(|s| format!("sha256:{}", &s[..64]))
        .unwrap_or_else(|| panic!("no digest in inspect: {info}"));
    assert!(info.contains("berth-test-app"), "{info}");
    let by_digest = format!("docker://{}/test/app@{digest}", reg.addr());
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", &by_digest])).ok();
    let default_name = home.join("app_".to_string() + &digest[7..19] + ".sqsh");
    // The same tree (the root's time and the source label differ).
    let tree = |p: &Path| -> Vec<String> {
        listing(p)
            .lines()
            .skip(1)
            .filter(|l| !l.contains("labels.json"))
            .map(|l| l.replace(&p.display().to_string(), ""))
            .collect()
    };
    assert_eq!(tree(&default_name), tree(&img));
    // The blob cache: listed, reused (second pull reads nothing new), cleaned.
    let cached = run(pull_cmd(w, &home, &["cache", "list"])).ok();
    assert_eq!(cached.lines().count(), 4, "config + 3 layers: {cached}");
    let out = run(pull_cmd(w, &home, &["cache", "clean"]));
    assert!(out.stderr().contains("removed 4 blobs"), "{}", out.stderr());
    assert_eq!(run(pull_cmd(w, &home, &["cache", "list"])).ok(), "");
}

#[test]
fn multi_arch_index_resolves_to_the_platform() {
    let (w, f) = (world(), fixture());
    let reg = Registry::start(&w.path("reg-multi"), None, None);
    let r = format!("docker://{}/test/multi:latest", reg.addr());
    skopeo_push(&f.multi, "multi", &r, &["--all"]);
    let home = user_dir(w, "pull-multi");
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", "--platform", "linux/amd64", &r, "amd.sqsh"])).ok();
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", "--platform", "linux/arm64", &r, "arm.sqsh"])).ok();
    assert_eq!(run(pull_cmd(w, &home, &["run", "amd.sqsh"])).ok(), "amd64\n");
    assert_eq!(run(pull_cmd(w, &home, &["exec", "arm.sqsh", "cat", "/arch"])).ok(), "arm64\n");
    run(pull_cmd(w, &home, &["pull", "--insecure", "--platform", "linux/s390x", &r, "s.sqsh"]))
        .fails_with(&["no image for linux/s390x", "linux/amd64", "linux/arm64"]);
    assert!(!home.join("s.sqsh").exists());
}

#[test]
fn tls_registry_with_basic_auth_uses_the_users_credentials() {
    let (w, f) = (world(), fixture());
    let (reg, r, home) = private_registry_with_app("reg-tls", "pull-tls");
    let auth = |user: &str, pw: &str| {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        let p = home.join("auth.json");
        std::fs::write(&p, format!(r#"{{"auths":{{"{}":{{"auth":"{b}"}}}}}}"#, reg.addr())).unwrap();
        nix::unistd::chown(&p, Some(w.uid.into()), Some(w.gid.into())).unwrap();
        p
    };
    let with = |args: &[&str], authfile: Option<&Path>| {
        let mut c = pull_cmd(w, &home, args);
        c.env("SSL_CERT_FILE", &f.ca);
        if let Some(a) = authfile {
            c.env("REGISTRY_AUTH_FILE", a);
        }
        run(c)
    };
    // Without the CA the certificate is refused.
    let mut c = pull_cmd(w, &home, &["pull", &r, "x.sqsh"]);
    c.env("SSL_CERT_FILE", "/dev/null");
    run(c).fails_with(&["certificate", "SSL_CERT_FILE"]);
    // No credentials, then wrong ones: one clear message each, nothing written.
    with(&["pull", &r, "x.sqsh"], None).fails_with(&["user name and password", "log in"]);
    let bad = auth("alice", "wrong");
    with(&["pull", &r, "x.sqsh"], Some(&bad)).fails_with(&["refused your credentials"]);
    assert!(!home.join("x.sqsh").exists());
    let good = auth("alice", "s3cret-pw");
    with(&["pull", "-q", &r, "x.sqsh"], Some(&good)).ok();
    assert_eq!(run(pull_cmd(w, &home, &["run", "x.sqsh", "private"])).ok(), "ep private\n");
    // docker's own config file works the same way.
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::copy(&good, home.join(".docker/config.json")).unwrap();
    sh(&format!("chown -R {}:{} {}", w.uid, w.gid, home.join(".docker").display()));
    let mut c = pull_cmd(w, &home, &["pull", "-q", &r, "y.sqsh"]);
    c.env("SSL_CERT_FILE", &f.ca).env("HOME", &home);
    run(c).ok();
}

#[test]
fn bad_input_gets_one_message_and_leaves_nothing() {
    let (w, f) = (world(), fixture());
    let reg = Registry::start(&w.path("reg-bad"), None, None);
    let a = reg.addr();
    skopeo_push(&f.app, "v1", &format!("docker://{a}/test/app:v1"), &[]);
    skopeo_push(&f.hostile, "bad", &format!("docker://{a}/test/hostile:bad"), &[]);
    let home = user_dir(w, "pull-bad");
    let p = |r: String| run(pull_cmd(w, &home, &["pull", "--insecure", &r, "o.sqsh"]));
    p(format!("docker://{a}/test/nope:v1")).fails_with(&["not found"]);
    p(format!("docker://{a}/test/app:nope")).fails_with(&["not found"]);
    p(format!("docker://{a}/test/hostile:bad")).fails_with(&["outside the image root", "hostile"]);
    assert!(!Path::new("/tmp/berth-escape").exists());
    run(pull_cmd(w, &home, &["pull", "docker://Bad/REF"])).fails_with(&["image reference"]);
    let free = free_port();
    p(format!("docker://127.0.0.1:{free}/x/y:z")).fails_with(&["gave up", "Connection refused"]);
    // A registry serving a corrupt blob: refused, and the cache keeps nothing bad.
    let blobs = reg.storage.join("docker/registry/v2/blobs/sha256");
    let layer = sh(&format!("find {} -name data -size +20k | head -1", blobs.display()));
    let layer = Path::new(layer.trim());
    let mut bytes = std::fs::read(layer).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(layer, bytes).unwrap();
    p(format!("docker://{a}/test/app:v1")).fails_with(&["digest mismatch"]);
    assert!(!home.join("o.sqsh").exists());
    assert!(partials(&home).is_empty(), "{:?}", partials(&home));
    for (d, _) in berth_registry::BlobCache::new(home.join("cache")).list() {
        let p = home.join("cache/blobs/sha256").join(&d[7..]);
        assert_eq!(berth_registry::cache::file_digest(&p).unwrap(), d, "the cache holds a bad blob");
    }
}

/// A minimal registry serving an OCI layout, with faults: blob responses cut after `cut` bytes
/// the first `cuts` times (then served whole, honouring Range), or sent slowly.
struct Faulty {
    port: u16,
    served: Arc<AtomicUsize>,
}

/// An HTTP request's first line and its headers (names lower-cased, values trimmed), read up
/// to the blank line; the body stays in `r`.
fn read_request(r: &mut BufReader<TcpStream>) -> (String, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap_or(0);
    let mut headers = vec![];
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            return (line, headers);
        }
        let (k, v) = h.split_once(':').unwrap_or(("", ""));
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
}

/// The value of header `name` (lower case) of a request read by [`read_request`].
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn faulty(layout: PathBuf, cuts: usize, slow: bool) -> Faulty {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let (line, headers) = read_request(&mut r);
            let range: u64 = header(&headers, "range")
                .and_then(|v| v.strip_prefix("bytes="))
                .map_or(0, |v| v.trim_end_matches('-').parse().unwrap_or(0));
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (body, ct) = if path == "/v2/" {
                (b"{}".to_vec(), "application/json")
            } else if let Some(i) = path.find("/manifests/") {
                let idx: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
                let d = &idx["manifests"][0]["digest"].as_str().unwrap()[7..];
                let _ = i;
                (
                    std::fs::read(layout.join("blobs/sha256").join(d)).unwrap(),
                    "application/vnd.oci.image.manifest.v1+json",
                )
            } else if let Some(i) = path.find("/blobs/sha256:") {
                let hex = &path[i + 14..];
                match std::fs::read(layout.join("blobs/sha256").join(hex)) {
                    Ok(b) => (b, "application/octet-stream"),
                    Err(_) => (vec![], "none"),
                }
            } else {
                (vec![], "none")
            };
            if ct == "none" {
                let _ =
                    s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            let blob = ct == "application/octet-stream" && body.len() > 4096;
            let n = if blob { counter.fetch_add(1, Ordering::SeqCst) } else { usize::MAX };
            let (status, start) =
                if blob && range > 0 { ("206 Partial Content", range as usize) } else { ("200 OK", 0) };
            let part = &body[start.min(body.len())..];
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                part.len()
            );
            let _ = s.write_all(head.as_bytes());
            if blob && n < cuts {
                // Drop the connection half-way through.
                let _ = s.write_all(&part[..part.len() / 2]);
                continue;
            }
            if slow && blob {
                for c in part.chunks(2048) {
                    if s.write_all(c).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            } else {
                let _ = s.write_all(part);
            }
        }
    });
    Faulty { port, served }
}

/// A registry serving `layout`'s manifest and small blobs, which answers every request for a
/// layer (a blob over 4 KiB) with a redirect to `location`.
fn redirecting(layout: PathBuf, location: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let (line, _) = read_request(&mut BufReader::new(s.try_clone().unwrap()));
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let blob = |hex: &str| std::fs::read(layout.join("blobs/sha256").join(hex)).ok();
            let found = if path.contains("/manifests/") {
                let idx: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
                blob(&idx["manifests"][0]["digest"].as_str().unwrap()[7..])
                    .map(|b| (b, "application/vnd.oci.image.manifest.v1+json"))
            } else {
                path.split("/blobs/sha256:").nth(1).and_then(blob).map(|b| (b, "application/octet-stream"))
            };
            let head = match &found {
                Some((b, _)) if b.len() > 4096 => {
                    format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n")
                }
                Some((b, ct)) => {
                    format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n", b.len())
                }
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n".into(),
            };
            let _ = s.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes());
            if let Some((b, _)) = found.filter(|(b, _)| b.len() <= 4096) {
                let _ = s.write_all(&b);
            }
        }
    });
    port
}

/// Issue 20, finding 8. A registry redirecting a layer to `file://` made berth panic inside
/// ureq (exit 101) and leave a `.partial-` blob; now it is one `berth:` message (exit 255),
/// with nothing written.
#[test]
fn a_redirect_to_a_file_url_is_one_message_and_leaves_nothing() {
    let (w, f) = (world(), fixture());
    let home = user_dir(w, "pull-redirect");
    let port = redirecting(f.app.clone(), "file:///etc/shadow");
    let r = format!("docker://127.0.0.1:{port}/test/app:v1");
    let out = run(pull_cmd(w, &home, &["pull", "--insecure", "-q", &r, "r.sqsh"]));
    assert_eq!(out.code(), Some(255), "{}", out.stderr());
    out.fails_with(&["berth: ", "redirected", "file:///etc/shadow", "not http or https"]);
    assert!(!home.join("r.sqsh").exists());
    assert!(partials(&home).is_empty(), "{:?}", partials(&home));
}

#[test]
fn dropped_connections_resume_and_give_up_cleanly() {
    let (w, f) = (world(), fixture());
    let home = user_dir(w, "pull-drop");
    // Cut twice: the download resumes from where it stopped and the image is complete.
    let srv = faulty(f.app.clone(), 2, false);
    let r = format!("docker://127.0.0.1:{}/test/app:v1", srv.port);
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", &r, "ok.sqsh"])).ok();
    assert!(srv.served.load(Ordering::SeqCst) >= 3);
    assert_eq!(run(pull_cmd(w, &home, &["exec", "ok.sqsh", "cat", "/opt/new"])).ok(), "new\n");
    // Cut every time: one message after the retries, nothing partial, nothing bad cached.
    run(pull_cmd(w, &home, &["cache", "clean"])).ok();
    let srv = faulty(f.app.clone(), usize::MAX, false);
    let r = format!("docker://127.0.0.1:{}/test/app:v1", srv.port);
    let t = Instant::now();
    run(pull_cmd(w, &home, &["pull", "--insecure", &r, "bad.sqsh"])).fails_with(&["transfer incomplete"]);
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(!home.join("bad.sqsh").exists());
    assert!(partials(&home).is_empty(), "{:?}", partials(&home));
    assert!(
        berth_registry::BlobCache::new(home.join("cache")).list().len() <= 1,
        "only the small config may be cached"
    );
}

#[test]
fn interrupted_pull_leaves_nothing_partial() {
    let (w, f) = (world(), fixture());
    let home = user_dir(w, "pull-int");
    let srv = faulty(f.app.clone(), 0, true);
    let r = format!("docker://127.0.0.1:{}/test/app:v1", srv.port);
    let mut c = pull_cmd(w, &home, &["pull", "--insecure", "-q", &r, "int.sqsh"]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let t = Instant::now();
    while partials(&home).is_empty() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!partials(&home).is_empty(), "the download should be under way");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGINT).unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success());
    assert!(partials(&home).is_empty(), "{:?}", partials(&home));
    assert!(!home.join("int.sqsh").exists());
}

#[test]
fn import_archives_and_layouts() {
    let (w, f) = (world(), fixture());
    let home = user_dir(w, "import");
    let oci_tar = home.join("app-oci.tar");
    let docker_tar = home.join("app-docker.tar");
    let src = format!("oci:{}:v1", f.app.display());
    sh(&format!("skopeo copy --quiet {src} oci-archive:{}", oci_tar.display()));
    sh(&format!("skopeo copy --quiet {src} docker-archive:{}:test/app:v1", docker_tar.display()));
    sh(&format!("chmod 644 {} {}", oci_tar.display(), docker_tar.display()));
    let layout = format!("oci:{}:v1", f.app.display());
    for (source, out) in [
        (format!("oci-archive:{}", oci_tar.display()), "a.sqsh"),
        (format!("docker-archive:{}", docker_tar.display()), "b.sqsh"),
        (layout, "c.sqsh"),
    ] {
        run(pull_cmd(w, &home, &["import", "-q", &source, out])).ok();
        assert_eq!(run(pull_cmd(w, &home, &["run", out, "imported"])).ok(), "ep imported\n", "{source}");
        let l = listing(&home.join(out));
        assert!(line_for(&l, "/srv/data").starts_with("-rw-r----- 1234/4321"), "{source}: {l}");
    }
    run(pull_cmd(w, &home, &["import", "oci-archive:/nonexistent.tar", "z.sqsh"]))
        .fails_with(&["/nonexistent.tar"]);
}

/// Lines of the conversion log in an image cache directory (0 when there is none).
fn conversions(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("conversions.log")).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn exec_run_inspect_docker_refs_convert_once_and_reuse_the_file() {
    let w = world();
    let (reg, r, home) = plain_registry_with_app("reg-exec", "exec-ref");
    let cfg = home.join("berth.toml");
    std::fs::write(&cfg, format!("[registry]\ninsecure_hosts = [\"{}\"]\n", reg.addr())).unwrap();
    let berth = |args: &[&str]| {
        let mut c = pull_cmd(w, &home, args);
        c.env("BERTH_CONFIG", &cfg);
        run(c)
    };

    // The user's own cache when the site has none: converted on first use, then reused.
    assert_eq!(berth(&["exec", &r, "cat", "/opt/new"]).ok(), "new\n");
    let images = home.join("cache/images");
    assert_eq!(conversions(&images), 1);
    let files: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".sqsh"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(berth(&["run", &r, "x"]).ok(), "ep x\n");
    let info = berth(&["inspect", &r]).ok();
    assert!(info.contains("berth-test-app"), "{info}");
    // `berth cache image` (what berth-pbs runs for CONTAINER=docker://...) prints that file.
    let path = berth(&["cache", "image", &r]).ok();
    assert_eq!(path.trim(), images.join(&files[0]).display().to_string());
    assert_eq!(conversions(&images), 1, "the later uses found the file");

    // A site cache: two runs at once, one conversion, both run the image.
    let site = w.path("exec-ref-site");
    let _ = std::fs::remove_dir_all(&site);
    std::fs::create_dir_all(&site).unwrap();
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(
        &cfg,
        format!("[registry]\ncache_dir = \"{}\"\ninsecure_hosts = [\"{}\"]\n", site.display(), reg.addr()),
    )
    .unwrap();
    let spawn = || {
        let mut c = pull_cmd(w, &home, &["exec", "--no-share", &r, "cat", "/pub/orig"]);
        c.env("BERTH_CONFIG", &cfg).env("BERTH_CACHE_DIR", home.join("cache2")).stdout(Stdio::piped());
        c.stderr(Stdio::piped()).spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        assert_eq!(harness::Out(c.wait_with_output().unwrap()).ok(), "orig\n");
    }
    let mine = site.join(w.uid.to_string());
    assert_eq!(conversions(&mine), 1, "one conversion for two concurrent runs");
    assert_eq!(std::fs::metadata(&mine).unwrap().permissions().mode() & 0o777, 0o700);

    // A registry the site did not mark insecure: one clear message, nothing run.
    std::fs::write(&cfg, format!("[registry]\ncache_dir = \"{}\"\n", site.display())).unwrap();
    let other = format!("docker://{}/test/app:nope", reg.addr());
    berth(&["exec", &other, "true"]).fails_with(&["berth: ", "plain HTTP"]);
}

/// Under umask 002 in a group shared with others (here `users`), the cache berth makes and the
/// file it converts are still writable by the user alone, so the next run uses that file
/// instead of refusing it.
#[test]
fn the_image_cache_stays_the_users_own_under_umask_002() {
    let w = world();
    let (reg, r, home) = plain_registry_with_app("reg-umask", "exec-umask");
    let cfg = home.join("berth.toml");
    std::fs::write(&cfg, format!("[registry]\ninsecure_hosts = [\"{}\"]\n", reg.addr())).unwrap();
    let cache = home.join("cache-umask");
    let users = nix::unistd::Group::from_name("users").unwrap().expect("group users").gid.as_raw();
    let convert = || {
        let script = format!("umask 002 && exec {} cache image {r}", w.berth.display());
        let mut c = harness::as_user(
            Path::new("/bin/sh"),
            &["-c", &script],
            (w.uid, users),
            &home,
            harness::USER,
            &home,
        );
        c.env("BERTH_CONFIG", &cfg).env("BERTH_CACHE_DIR", &cache);
        run(c).ok()
    };
    let first = convert();
    assert_eq!(convert(), first, "the same file");
    let images = cache.join("images");
    assert_eq!(conversions(&images), 1, "converted once, then used");
    use std::os::unix::fs::MetadataExt;
    for p in [cache.clone(), images, PathBuf::from(first.trim())] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o022, 0, "{} is {:o}", p.display(), m.mode());
    }
}

/// `berth build` (root) of `def` into `out` with plain HTTP to the registry; returns the time.
fn build_as_root(w: &World, dir: &Path, out: &str, def: &str) -> Duration {
    let defp = dir.join(format!("{out}.def"));
    std::fs::write(&defp, def).unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let t = Instant::now();
    let o = Command::new(&w.berth)
        .args(["build", "--nohttps", "--force"])
        .arg(dir.join(out))
        .arg(&defp)
        .env("BERTH_TMPDIR", &work)
        .env("BERTH_CACHE_DIR", dir.join("bootstrap-cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = t.elapsed();
    harness::Out(o).ok();
    sh(&format!("chmod 755 {}", dir.display()));
    took
}

#[test]
fn build_bootstrap_docker_starts_from_the_registry_image() {
    let (w, f) = (world(), fixture());
    let reg = Registry::start(&w.path("reg-build"), None, None);
    let a = reg.addr();
    skopeo_push(&f.app, "v1", &format!("docker://{a}/test/app:v1"), &[]);
    let home = user_dir(w, "build-docker");

    // %post adds a file (owned by a service user) to the pulled tree; %environment adds to
    // and overrides the image's Env; Entrypoint/Cmd and WorkingDir stay the runscript.
    let def = format!(
        "Bootstrap: docker\nFrom: {a}/test/app:v1\n\n%post\n    echo built > /opt/built\n    \
         chown 4242:4242 /opt/built\n\n%environment\n    export ADDED=\"from the def\"\n    export GREETING=overridden\n\n\
         %labels\n    org.example.stage two\n"
    );
    let took = build_as_root(w, &home, "built.sqsh", &def);
    let img = home.join("built.sqsh");
    let l = listing(&img);
    assert!(line_for(&l, "/srv/data").starts_with("-rw-r----- 1234/4321"), "{l}");
    assert!(line_for(&l, "/pub/mine").starts_with("-rw-rw-r-- 4242/4242"), "{l}");
    assert!(line_for(&l, "/usr/bin/suid").starts_with("-rwsr-xr-x 0/0"), "{l}");
    assert!(line_for(&l, "/opt/built").starts_with("-rw-r--r-- 4242/4242"), "{l}");
    assert!(!l.contains("/etc/gone") && !l.contains("/opt/old"), "whiteouts applied: {l}");
    let got = run(pull_cmd(
        w,
        &home,
        &["exec", "built.sqsh", "sh", "-c", "cat /opt/built /pub/link2 /opt/new; echo \"$GREETING/$ADDED\""],
    ))
    .ok();
    assert_eq!(got, "built\norig\nnew\noverridden/from the def\n");
    assert_eq!(run(pull_cmd(w, &home, &["run", "built.sqsh", "x"])).ok(), "ep x\n");
    let info = run(pull_cmd(w, &home, &["inspect", "built.sqsh"])).ok();
    for want in ["berth-test-app", "org.example.stage", "sha256:", "docker"] {
        assert!(info.contains(want), "{want} in {info}");
    }

    // The definition's %runscript wins over Entrypoint/Cmd; the same image from a local file
    // (the pull's output) for the timing.
    let def2 =
        format!("Bootstrap: docker\nFrom: docker://{a}/test/app:v1\n\n%runscript\n    echo mine \"$@\"\n");
    build_as_root(w, &home, "own.sqsh", &def2);
    assert_eq!(run(pull_cmd(w, &home, &["run", "own.sqsh", "y"])).ok(), "mine y\n");
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", &format!("docker://{a}/test/app:v1"), "app.sqsh"]))
        .ok();
    let local = format!(
        "Bootstrap: localimage\nFrom: {}\n\n%post\n    echo built > /opt/built\n",
        home.join("app.sqsh").display()
    );
    let took_local = build_as_root(w, &home, "local.sqsh", &local);
    eprintln!("berth build: Bootstrap docker {took:?} (cold blob cache), localimage {took_local:?}");

    // An unknown tag: one message, no image.
    let bad = format!("Bootstrap: docker\nFrom: {a}/test/app:nope\n");
    std::fs::write(home.join("bad.def"), bad).unwrap();
    let o = Command::new(&w.berth)
        .args(["build", "--nohttps"])
        .arg(home.join("bad.sqsh"))
        .arg(home.join("bad.def"))
        .env("BERTH_TMPDIR", home.join("work"))
        .env("BERTH_CACHE_DIR", "")
        .output()
        .unwrap();
    let o = harness::Out(o);
    assert!(!o.0.status.success());
    assert!(o.stderr().contains("berth: build: Bootstrap: docker: docker://"), "{}", o.stderr());
    assert!(o.stderr().contains("manifest nope not found"), "{}", o.stderr());
    assert!(!home.join("bad.sqsh").exists());
    assert_eq!(std::fs::read_dir(home.join("work")).unwrap().count(), 0, "work directories removed");
}

#[test]
fn zstd_layers_are_decoded() {
    let w = world();
    // The fixture writes the busybox base layer this image shares.
    fixture();
    let reg = Registry::start(&w.path("reg-zstd"), None, None);
    let layout = w.path("registry-fixture/zstd");
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::create_dir_all(&layout).unwrap();
    let base = std::fs::read(w.path("registry-fixture/base.tar.gz")).unwrap();
    let z = layer_zstd(&[
        Ent::Dir("srv", 0o750, 1234, 4321),
        Ent::File("srv/data", b"zstd layer\n", 0o640, 1234, 4321),
        Ent::File("etc/.wh.passwd", b"", 0o644, 0, 0),
        Ent::File("big", &vec![b'z'; 300_000], 0o644, 0, 0),
    ]);
    let m = image(
        &layout,
        &serde_json::json!({"config": {"Cmd": ["/bin/cat", "/srv/data"]}}),
        &[base, z],
        "amd64",
    );
    finish(&layout, vec![m], "z");
    let r = format!("docker://{}/test/zstd:z", reg.addr());
    skopeo_push(&layout, "z", &r, &[]);
    // The registry keeps the layer as pushed: zstd, with its media type.
    let manifest = sh(&format!("skopeo inspect --raw --tls-verify=false {r}"));
    assert!(manifest.contains("application/vnd.oci.image.layer.v1.tar+zstd"), "{manifest}");

    let home = user_dir(w, "pull-zstd");
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", &r, "z.sqsh"])).ok();
    let l = listing(&home.join("z.sqsh"));
    assert!(line_for(&l, "/srv/data").starts_with("-rw-r----- 1234/4321"), "{l}");
    assert!(!l.contains("squashfs-root/etc/passwd"), "whited out by the zstd layer: {l}");
    let got = run(pull_cmd(w, &home, &["exec", "z.sqsh", "sh", "-c", "wc -c < /big; ls /bin | wc -l"])).ok();
    let applets = std::fs::read_dir(w.rootfs.join("bin")).unwrap().count();
    assert_eq!(got, format!("300000\n{applets}\n"));
    assert!(partials(&home).is_empty());
}

/// The SIF descriptors of `bytes` as (data type, offset, size, fs type, partition type), read
/// at the offsets the header gives (sylabs/sif's layout).
fn sif_descriptors(bytes: &[u8]) -> Vec<(i32, usize, usize, i32, i32)> {
    let i64_at = |o: usize| i64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let i32_at = |o: usize| i32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!(&bytes[32..42], b"SIF_MAGIC\0");
    assert_eq!(&bytes[42..45], b"01\0");
    let (total, off, size) = (i64_at(88), i64_at(96), i64_at(104));
    assert_eq!(size, total * 585, "descriptor area");
    (0..total)
        .map(|i| off + i * 585)
        .filter(|&d| bytes[d + 4] == 1)
        .map(|d| (i32_at(d), i64_at(d + 17), i64_at(d + 25), i32_at(d + 201), i32_at(d + 205)))
        .collect()
}

#[test]
fn pull_format_sif_writes_a_sif_berth_runs() {
    let w = world();
    let (_reg, r, home) = plain_registry_with_app("reg-sif", "pull-sif");
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", "--format", "sif", &r])).ok();
    let sif = home.join("app_v1.sif");
    assert_eq!(
        std::fs::metadata(&sif).unwrap().permissions().mode() & 0o777,
        0o755,
        "SIF files are executable"
    );
    assert!(partials(&home).is_empty(), "{:?}", partials(&home));
    let bytes = std::fs::read(&sif).unwrap();
    assert!(bytes.starts_with(b"#!/usr/bin/env run-singularity\n"));
    let d = sif_descriptors(&bytes);
    // One primary system partition (0x4004, squashfs = 1, system = 2), a definition (0x4001)
    // naming the source, labels (0x4003).
    let parts: Vec<_> = d.iter().filter(|x| x.0 == 0x4004).collect();
    assert_eq!(parts.len(), 1, "{d:?}");
    let (_, off, size, fs, ptype) = *parts[0];
    assert_eq!((fs, ptype), (1, 2));
    assert_eq!(&bytes[off..off + 4], b"hsqs");
    assert_eq!(off % 4096, 0, "partitions are aligned");
    assert!(off + size <= bytes.len() && size >= std::fs::metadata(&sif).unwrap().len() as usize / 2);
    let object = |t: i32| -> String {
        let (_, o, s, ..) = *d.iter().find(|x| x.0 == t).unwrap_or_else(|| panic!("{t:#x} in {d:?}"));
        String::from_utf8_lossy(&bytes[o..o + s]).into_owned()
    };
    assert_eq!(object(0x4001), format!("bootstrap: docker\nfrom: {}\n", &r["docker://".len()..]));
    assert!(object(0x4003).contains("berth-test-app"), "{}", object(0x4003));

    // The same tree as the SquashFS pull, and it runs like it.
    let img = home.join("app.sqsh");
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", &r, "app.sqsh"])).ok();
    let tree = |p: &Path, off: usize| -> Vec<String> {
        let l = sh(&format!("unsquashfs -o {off} -lln {}", p.display()));
        l.lines()
            .skip(1)
            .filter(|l| !l.contains("labels.json"))
            .map(|l| l.split_once("squashfs-root").unwrap().1.to_string())
            .collect()
    };
    assert_eq!(tree(&sif, off), tree(&img, 0));
    let l = sh(&format!("unsquashfs -o {off} -lln {}", sif.display()));
    assert!(line_for(&l, "/srv/data").starts_with("-rw-r----- 1234/4321"), "{l}");
    assert_eq!(run(pull_cmd(w, &home, &["run", "app_v1.sif", "a b"])).ok(), "ep a b\n");
    let got = run(pull_cmd(
        w,
        &home,
        &["exec", "app_v1.sif", "sh", "-c", "cat /pub/link; echo \"$GREETING\"; pwd"],
    ))
    .ok();
    assert_eq!(got, format!("orig\nhello from the registry\n{}\n", home.display()));
    let info = run(pull_cmd(w, &home, &["inspect", "app_v1.sif"])).ok();
    for want in
        ["berth-test-app", "org.berth.source.digest", "sha256:", "rootfs.squashfs (squashfs, primary-system)"]
    {
        assert!(info.contains(want), "{want} in {info}");
    }
}

/// Files and directories under `dir` whose names show a partial write, and the empty work
/// directories of conversions.
fn leftovers(dir: &Path) -> Vec<String> {
    sh(&format!("find {} -name '*partial*' -o -name '.berth-root-*' 2>/dev/null || true", dir.display()))
        .lines()
        .map(String::from)
        .collect()
}

/// Start `berth pull REF OUT` as the user and SIGKILL it as soon as `when` holds.
fn kill_pull_when(w: &World, home: &Path, r: &str, out: &str, when: impl Fn() -> bool) {
    let mut c = pull_cmd(w, home, &["pull", "--insecure", "-q", r, out]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let t = Instant::now();
    while !when() {
        assert!(t.elapsed() < Duration::from_secs(60), "never reached the point to kill at");
        assert!(child.try_wait().unwrap().is_none(), "the pull ended before it could be killed");
        std::thread::sleep(Duration::from_millis(2));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL).unwrap();
    child.wait().unwrap();
}

#[test]
fn sigkilled_pull_leaves_no_out_and_the_next_pull_cleans_up() {
    let (w, f) = (world(), fixture());
    let home = user_dir(w, "pull-kill");
    let cache = home.join("cache/blobs/sha256");

    // Killed while downloading: the blob's partial file stays (nothing runs on SIGKILL), OUT
    // is not there, and the next pull removes it and succeeds.
    let slow = faulty(f.app.clone(), 0, true);
    let r = format!("docker://127.0.0.1:{}/test/app:v1", slow.port);
    // The config (small, served at once) is in; a layer is on its way, slowly.
    let blobs = berth_registry::BlobCache::new(home.join("cache"));
    kill_pull_when(w, &home, &r, "dl.sqsh", || !blobs.list().is_empty() && !leftovers(&cache).is_empty());
    assert!(!home.join("dl.sqsh").exists());
    let stale = leftovers(&home);
    assert_eq!(stale.len(), 1, "{stale:?}");
    let fast = faulty(f.app.clone(), 0, false);
    let r = format!("docker://127.0.0.1:{}/test/app:v1", fast.port);
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", &r, "dl.sqsh"])).ok();
    assert!(leftovers(&home).is_empty(), "{:?}", leftovers(&home));
    assert_eq!(run(pull_cmd(w, &home, &["exec", "dl.sqsh", "cat", "/opt/new"])).ok(), "new\n");

    // Killed while writing the image (a large layer keeps mksquashfs busy): no OUT, and the
    // next pull into the same OUT removes the partial image and its work directory.
    let layout = w.path("registry-fixture/big");
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::create_dir_all(&layout).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..48 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let base = std::fs::read(w.path("registry-fixture/base.tar.gz")).unwrap();
    let big = layer(&[Ent::File("big", &noise, 0o644, 0, 0)], true);
    let m = image(&layout, &serde_json::json!({"config": {"Cmd": ["/bin/true"]}}), &[base, big], "amd64");
    finish(&layout, vec![m], "big");
    let srv = faulty(layout, 0, false);
    let r = format!("docker://127.0.0.1:{}/test/big:big", srv.port);
    let out_partial = |h: &Path| leftovers(h).iter().any(|p| p.contains(".big.sqsh.partial-"));
    kill_pull_when(w, &home, &r, "big.sqsh", || out_partial(&home));
    assert!(!home.join("big.sqsh").exists());
    assert!(out_partial(&home), "the killed conversion's partial file is left: {:?}", leftovers(&home));
    // No process of the killed pull (mksquashfs included) is left writing.
    let t = Instant::now();
    while w.user_processes().iter().any(|p| p.contains("mksquashfs")) {
        assert!(t.elapsed() < Duration::from_secs(10), "mksquashfs outlived berth");
        std::thread::sleep(Duration::from_millis(50));
    }
    run(pull_cmd(w, &home, &["pull", "--insecure", "-q", &r, "big.sqsh"])).ok();
    assert!(leftovers(&home).is_empty(), "{:?}", leftovers(&home));
    assert_eq!(
        run(pull_cmd(w, &home, &["exec", "big.sqsh", "wc", "-c", "/big"])).ok(),
        format!("{} /big\n", 48 << 20)
    );
}

#[test]
fn docker_credential_helpers_are_asked_for_the_registry() {
    let (w, f) = (world(), fixture());
    let (reg, r, home) = private_registry_with_app("reg-helper", "pull-helper");
    // Two fake helpers as docker would run them: `get`, the server on stdin, JSON out; each
    // records what it was asked. `wrong` answers with a bad password.
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, pw) in [("berthtest", "s3cret-pw"), ("wrong", "nope")] {
        let p = bin.join(format!("docker-credential-{name}"));
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" >> {}/{name}.asked\n\
                 printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"{pw}\"}}\\n' \"$server\"\n",
                home.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    let config = |json: String| {
        std::fs::write(home.join(".docker/config.json"), json).unwrap();
        sh(&format!("chown -R {}:{} {}", w.uid, w.gid, home.display()));
    };
    let pull = |out: &str| {
        let mut c = pull_cmd(w, &home, &["pull", "-q", &r, out]);
        c.env("SSL_CERT_FILE", &f.ca)
            .env("HOME", &home)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()));
        run(c)
    };
    let asked = |name: &str| std::fs::read_to_string(home.join(format!("{name}.asked"))).unwrap_or_default();

    // credHelpers for this registry wins over credsStore.
    config(format!(
        r#"{{"auths":{{"{a}":{{}}}},"credsStore":"wrong","credHelpers":{{"{a}":"berthtest"}}}}"#,
        a = reg.addr()
    ));
    pull("h.sqsh").ok();
    assert_eq!(asked("berthtest"), format!("{}\n", reg.addr()));
    assert_eq!(asked("wrong"), "");
    assert_eq!(run(pull_cmd(w, &home, &["run", "h.sqsh", "helped"])).ok(), "ep helped\n");
    // credsStore for every registry without a helper of its own.
    config(r#"{"auths":{},"credsStore":"berthtest"}"#.into());
    pull("s.sqsh").ok();
    assert_eq!(asked("berthtest").lines().count(), 2);
    // A store with the wrong password: the registry's refusal, nothing written.
    config(r#"{"credsStore":"wrong"}"#.into());
    pull("x.sqsh").fails_with(&["refused your credentials"]);
    assert!(!home.join("x.sqsh").exists());
    // A helper that is not installed: as if there were no credentials.
    config(r#"{"credsStore":"absent"}"#.into());
    pull("y.sqsh").fails_with(&["user name and password"]);
    // Someone else's config file names a helper: it is not run.
    config(r#"{"credsStore":"berthtest"}"#.into());
    sh(&format!("chown root:root {}", home.join(".docker/config.json").display()));
    pull("z.sqsh").fails_with(&["user name and password"]);
    assert_eq!(asked("berthtest").lines().count(), 2);
}

/// A registry that only answers bearer tokens from its own OAuth2 token service (`POST
/// /token`), which issues one only for the right identity (refresh) token: what Docker Hub,
/// ACR or Harbor do for `docker login` with a personal or robot token. Serves `layout`'s image
/// and records each form POSTed to the token service and each token request's URL.
struct TokenRegistry {
    port: u16,
    forms: Arc<std::sync::Mutex<Vec<String>>>,
}

const REFRESH: &str = "rt-berth-identity-7f3a";
const ACCESS: &str = "at-issued-for-pull";

fn token_registry(layout: PathBuf, realm_host: &'static str) -> TokenRegistry {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let forms = Arc::new(std::sync::Mutex::new(vec![]));
    let seen = forms.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let (line, headers) = read_request(&mut r);
            let len: usize = header(&headers, "content-length").map_or(0, |v| v.parse().unwrap_or(0));
            let authz = header(&headers, "authorization").unwrap_or_default().to_string();
            let mut body = vec![0u8; len];
            let _ = std::io::Read::read_exact(&mut r, &mut body);
            let mut words = line.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or("").to_string());
            let reply = |s: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
                let head = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body);
            };
            if path.starts_with("/token") {
                let form = String::from_utf8_lossy(&body).into_owned();
                seen.lock().unwrap().push(format!("{method} {path} {form}"));
                let fields: Vec<(&str, &str)> = form.split('&').filter_map(|kv| kv.split_once('=')).collect();
                let has = |k: &str, v: &str| fields.contains(&(k, v));
                if method == "POST"
                    && has("grant_type", "refresh_token")
                    && has("refresh_token", REFRESH)
                    && has("service", "berth-test-registry")
                    && has("client_id", "berth")
                {
                    let tok = format!(r#"{{"access_token":"{ACCESS}","expires_in":300}}"#);
                    reply(&mut s, "200 OK", "Content-Type: application/json\r\n", tok.as_bytes());
                } else {
                    let e = br#"{"error":"invalid_grant"}"#;
                    reply(&mut s, "401 Unauthorized", "Content-Type: application/json\r\n", e);
                }
                continue;
            }
            if authz != format!("Bearer {ACCESS}") {
                let ch = format!(
                    "WWW-Authenticate: Bearer realm=\"http://{realm_host}:{port}/token\",service=\"berth-test-registry\",scope=\"repository:test/app:pull\"\r\nContent-Type: application/json\r\n"
                );
                reply(&mut s, "401 Unauthorized", &ch, br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#);
                continue;
            }
            let blob = |hex: &str| std::fs::read(layout.join("blobs/sha256").join(hex)).ok();
            let found = if path == "/v2/" {
                Some((b"{}".to_vec(), "application/json"))
            } else if path.contains("/manifests/") {
                let idx: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
                blob(&idx["manifests"][0]["digest"].as_str().unwrap()[7..])
                    .map(|b| (b, "application/vnd.oci.image.manifest.v1+json"))
            } else if let Some(i) = path.find("/blobs/sha256:") {
                blob(&path[i + 14..]).map(|b| (b, "application/octet-stream"))
            } else {
                None
            };
            match found {
                Some((b, ct)) => reply(&mut s, "200 OK", &format!("Content-Type: {ct}\r\n"), &b),
                None => reply(&mut s, "404 Not Found", "", b""),
            }
        }
    });
    TokenRegistry { port, forms }
}

#[test]
fn identity_tokens_are_refresh_tokens_for_the_token_service() {
    let (w, f) = (world(), fixture());
    let srv = token_registry(f.app.clone(), "127.0.0.1");
    let reg = format!("127.0.0.1:{}", srv.port);
    let r = format!("docker://{reg}/test/app:v1");
    let home = user_dir(w, "pull-idtoken");
    let bin = home.join("bin");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    // A credential helper answering as docker-credential-acr-env or Harbor's do for tokens.
    let helper = bin.join("docker-credential-tok");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"<token>\",\"Secret\":\"%s\"}}\\n' \"$server\" \"$(cat {}/helper-token)\"\n",
            home.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = |json: String, helper_token: &str| {
        std::fs::write(home.join(".docker/config.json"), json).unwrap();
        std::fs::write(home.join("helper-token"), helper_token).unwrap();
        sh(&format!("chown -R {}:{} {}", w.uid, w.gid, home.display()));
    };
    let pull = |out: &str| {
        let mut c = pull_cmd(w, &home, &["pull", "--insecure", "-q", &r, out]);
        c.env("HOME", &home).env("PATH", format!("{}:/usr/bin:/bin", bin.display()));
        run(c)
    };

    // Without credentials the token service issues nothing.
    config("{}".into(), "");
    let err = pull("none.sqsh").fails_with(&["token service", "refused"]);
    assert!(!home.join("none.sqsh").exists(), "{err}");

    // `docker login` with a token files `identitytoken`: used as the OAuth2 refresh token.
    config(format!(r#"{{"auths":{{"{reg}":{{"auth":"YWxpY2U6","identitytoken":"{REFRESH}"}}}}}}"#), "");
    pull("a.sqsh").ok();
    assert_eq!(run(pull_cmd(w, &home, &["run", "a.sqsh", "tok"])).ok(), "ep tok\n");
    let forms = srv.forms.lock().unwrap().clone();
    let last = forms.last().unwrap();
    assert!(last.starts_with("POST /token "), "{forms:?}");
    for field in [
        "grant_type=refresh_token",
        &format!("refresh_token={REFRESH}"),
        "service=berth-test-registry",
        "scope=repository%3Atest%2Fapp%3Apull",
        "client_id=berth",
    ] {
        assert!(last.contains(field), "{field} missing from the token request: {last}");
    }
    assert!(
        forms.iter().all(|f| !f.split(' ').nth(1).unwrap().contains(REFRESH)),
        "the token in a URL: {forms:?}"
    );

    // A credential helper's `<token>` answer is the same.
    config(r#"{"credsStore":"tok"}"#.into(), REFRESH);
    pull("b.sqsh").ok();
    assert!(home.join("b.sqsh").is_file());

    // A wrong or expired token: one clear message, which never shows the token, nothing written.
    config(r#"{"credsStore":"tok"}"#.into(), "rt-revoked-0000");
    let err = pull("c.sqsh").fails_with(&["refused the identity token", "log in again"]);
    assert!(!err.contains("rt-revoked"), "the token leaked into the message: {err}");
    config(format!(r#"{{"auths":{{"{reg}":{{"identitytoken":"rt-wrong-1111"}}}}}}"#), "");
    let err = pull("d.sqsh").fails_with(&["refused the identity token"]);
    assert!(!err.contains("rt-wrong"), "{err}");
    assert!(!home.join("c.sqsh").exists() && !home.join("d.sqsh").exists());
    assert!(partials(&home).is_empty(), "{:?}", partials(&home));
}

/// Issue 20, finding 11. A registry naming a token service on another host (here the same
/// server as `localhost`, the registry being `127.0.0.1`) gets no credentials: one message
/// naming `credential_realms`, and no token request at all. Listed in the user's own
/// configuration (`BERTH_CONFIG`), the service gets them and the pull works.
#[test]
fn credentials_go_to_another_hosts_token_service_only_when_listed() {
    let (w, f) = (world(), fixture());
    let srv = token_registry(f.app.clone(), "localhost");
    let reg = format!("127.0.0.1:{}", srv.port);
    let r = format!("docker://{reg}/test/app:v1");
    let home = user_dir(w, "pull-realm");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::write(
        home.join(".docker/config.json"),
        format!(r#"{{"auths":{{"{reg}":{{"identitytoken":"{REFRESH}"}}}}}}"#),
    )
    .unwrap();
    let cfg = home.join("berth.toml");
    sh(&format!("chown -R {}:{} {}", w.uid, w.gid, home.display()));
    let pull = |out: &str| {
        let mut c = pull_cmd(w, &home, &["pull", "--insecure", "-q", &r, out]);
        c.env("HOME", &home).env("BERTH_CONFIG", &cfg);
        run(c)
    };

    std::fs::write(&cfg, "").unwrap();
    let err = pull("a.sqsh").fails_with(&[
        "berth: ",
        &format!("token service http://localhost:{}/token", srv.port),
        "did not send them",
        &format!("\"http://localhost:{}\" in [registry] credential_realms", srv.port),
    ]);
    assert!(!err.contains(REFRESH), "{err}");
    assert!(srv.forms.lock().unwrap().is_empty(), "the token went out: {:?}", srv.forms.lock().unwrap());
    assert!(!home.join("a.sqsh").exists());

    std::fs::write(&cfg, format!("[registry]\ncredential_realms = [\"http://localhost:{}\"]\n", srv.port))
        .unwrap();
    pull("b.sqsh").ok();
    assert!(home.join("b.sqsh").is_file());
    assert_eq!(srv.forms.lock().unwrap().len(), 1);
}

/// Issue 20, finding 11, against a real HTTPS registry whose token service is named with plain
/// http at its own host and port: the user's password is not sent in clear text, and the
/// message says which key would allow it.
#[test]
fn an_https_registry_gets_no_credentials_over_plain_http() {
    let (w, f) = (world(), fixture());
    let reg = Registry::start_token(
        &w.path("reg-downgrade"),
        (&f.cert, &f.key),
        |port| format!("http://127.0.0.1:{port}/token"),
        &f.ca,
    );
    let r = format!("docker://{}/private/app:v1", reg.addr());
    let home = user_dir(w, "pull-downgrade");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    // alice:s3cret-pw
    let auths = format!(r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6czNjcmV0LXB3"}}}}}}"#, reg.addr());
    std::fs::write(home.join(".docker/config.json"), auths).unwrap();
    let cfg = home.join("berth.toml");
    std::fs::write(&cfg, "").unwrap();
    sh(&format!("chown -R {}:{} {}", w.uid, w.gid, home.display()));
    let pull = || {
        let mut c = pull_cmd(w, &home, &["pull", "-q", &r, "d.sqsh"]);
        c.env("SSL_CERT_FILE", &f.ca).env("HOME", &home).env("BERTH_CONFIG", &cfg);
        run(c)
    };
    let err = pull().fails_with(&[
        "berth: ",
        "plain HTTP while the registry is HTTPS",
        "did not send them",
        &format!("\"http://{}\" in [registry] credential_realms", reg.addr()),
    ]);
    assert!(!err.contains("s3cret"), "{err}");
    assert!(!home.join("d.sqsh").exists());
    // Listed, the credentials go there (and this registry's TLS port answers plain HTTP with
    // 400): the key is what decides.
    std::fs::write(&cfg, format!("[registry]\ncredential_realms = [\"http://{}\"]\n", reg.addr())).unwrap();
    pull().fails_with(&["token service", "HTTP 400"]);
}
