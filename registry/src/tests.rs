//! Conversion tests on OCI layouts written here (no network): the merged tree, whiteouts,
//! hostile layers, atomic output, and one conversion per digest under concurrency.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::testimg::{finish, image, layer, Ent};
use crate::*;

fn opts(cache: &Path) -> Options {
    Options {
        platform: Platform::parse("linux/amd64").unwrap(),
        quiet: true,
        cache: BlobCache::new(cache),
        backoff: std::time::Duration::from_millis(10),
        ..Options::default()
    }
}

/// The merged tree as a tar, read back: path -> (type, mode, uid, gid, content or link).
/// (type, mode, uid, gid, content or link target)
type Entry = (char, u32, u64, u64, String);

fn merged(dir: &Path) -> Result<BTreeMap<String, Entry>> {
    let o = opts(&dir.join("cache"));
    let Located::Local { store, resolved } = locate(&Source::OciDir(dir.into(), None), &o)? else {
        unreachable!()
    };
    let tree = flatten::merge(&store, &resolved.layers, || {})?;
    let bytes = flatten::write_tar(&store, &resolved.layers, &tree, vec![], || {})?;
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(&bytes[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let t = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            _ => 'f',
        };
        let p = e.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
        let mut body = String::new();
        if t == 'f' {
            e.read_to_string(&mut body).unwrap();
        } else if t != 'd' {
            body = e.link_name().unwrap().unwrap().to_string_lossy().into_owned();
        }
        assert!(
            out.insert(p.clone(), (t, h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap(), body)).is_none(),
            "{p} twice"
        );
    }
    Ok(out)
}

fn cfg() -> serde_json::Value {
    serde_json::json!({"config": {"Env": ["PATH=/bin", "GREETING=hi"], "Cmd": ["/bin/sh"], "Labels": {"k": "v"}}})
}

fn layered(dir: &Path) {
    let l1 = layer(
        &[
            Ent::Dir("etc", 0o755, 0, 0),
            Ent::File("etc/passwd", b"root:x:0:0\n", 0o644, 0, 0),
            Ent::File("etc/gone", b"x", 0o644, 0, 0),
            Ent::Dir("opt", 0o755, 0, 0),
            Ent::Dir("opt/old", 0o755, 0, 0),
            Ent::File("opt/old/a", b"a", 0o644, 0, 0),
            Ent::Dir("srv", 0o750, 1234, 4321),
            Ent::File("srv/data", b"svc", 0o640, 1234, 4321),
            Ent::File("bin/su", b"su", 0o4755, 0, 0),
            Ent::File("big", b"orig", 0o644, 0, 0),
            Ent::Hardlink("biglink", "big"),
        ],
        true,
    );
    let l2 = layer(
        &[
            Ent::File("etc/.wh.gone", b"", 0o644, 0, 0),
            Ent::File("opt/.wh..wh..opq", b"", 0o644, 0, 0),
            Ent::File("opt/new", b"n", 0o600, 5, 6),
            Ent::File("big", b"replaced", 0o644, 0, 0),
            Ent::Hardlink("srv/data2", "srv/data"),
            Ent::Symlink("lib", "usr/lib"),
            Ent::Hardlink("lib64", "lib"),
        ],
        false,
    );
    let m = image(dir, &cfg(), &[l1, l2], "amd64");
    finish(dir, vec![m], "v1");
}

#[test]
fn layers_merge_with_whiteouts_owners_and_links() {
    let t = tempfile::tempdir().unwrap();
    layered(t.path());
    let m = merged(t.path()).unwrap();
    assert!(!m.contains_key("etc/gone"), "whiteout removes the lower file");
    assert!(!m.contains_key("opt/old") && !m.contains_key("opt/old/a"), "opaque dir hides lower entries");
    assert_eq!(m["opt/new"], ('f', 0o600, 5, 6, "n".into()));
    assert_eq!(m["srv"], ('d', 0o750, 1234, 4321, String::new()));
    assert_eq!(m["srv/data"], ('f', 0o640, 1234, 4321, "svc".into()));
    assert_eq!(m["srv/data2"].0, 'h');
    assert_eq!(m["srv/data2"].4, "srv/data");
    assert_eq!(m["bin/su"], ('f', 0o4755, 0, 0, "su".into()), "setuid bit kept");
    assert_eq!(m["big"].4, "replaced");
    // The link was made to the old `big`: it keeps that content although `big` was replaced.
    assert_eq!(m["biglink"], ('f', 0o644, 0, 0, "orig".into()));
    assert_eq!(m["lib"], ('l', 0o777, 0, 0, "usr/lib".into()));
    assert_eq!(m["lib64"], ('l', 0o777, 0, 0, "usr/lib".into()), "a hardlink to a symlink is that symlink");
    assert!(!m.keys().any(|k| k.contains(".wh.")), "no whiteout file reaches the image");
}

#[test]
fn hostile_layers_are_refused() {
    let cases: Vec<(&str, Vec<Ent>)> = vec![
        ("dotdot", vec![Ent::RawFile("../../escape", b"x")]),
        (
            "through a symlink",
            vec![Ent::Symlink("evil", "/etc"), Ent::File("evil/passwd", b"x", 0o644, 0, 0)],
        ),
        ("hardlink outside", vec![Ent::Hardlink("h", "../../etc/shadow")]),
        ("hardlink to nothing", vec![Ent::Hardlink("h", "nope")]),
    ];
    for (name, ents) in cases {
        let t = tempfile::tempdir().unwrap();
        let m = image(t.path(), &cfg(), &[layer(&ents, true)], "amd64");
        finish(t.path(), vec![m], "v1");
        let e = merged(t.path()).unwrap_err().to_string();
        assert!(e.contains("malformed or hostile"), "{name}: {e}");
        // And through the whole conversion: no output, no partial file.
        let out = t.path().join("out/x.sqsh");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let src = Source::OciDir(t.path().into(), None);
        assert!(pull(&src, &out, &opts(&t.path().join("c"))).is_err(), "{name}");
        assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 0, "{name}: nothing left");
    }
}

#[test]
fn corrupt_layout_blob_is_refused_before_writing() {
    let t = tempfile::tempdir().unwrap();
    layered(t.path());
    // Flip a byte in the uncompressed (second) layer: still a valid tar, wrong digest.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("index.json")).unwrap()).unwrap();
    let man = idx["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("blobs/sha256").join(man)).unwrap()).unwrap();
    let l2 = t.path().join("blobs/sha256").join(&m["layers"][1]["digest"].as_str().unwrap()[7..]);
    let mut b = std::fs::read(&l2).unwrap();
    let pos = b.windows(8).position(|w| w == b"replaced").unwrap();
    b[pos] = b'R';
    std::fs::write(&l2, b).unwrap();
    let out = t.path().join("o.sqsh");
    let e = pull(&Source::OciDir(t.path().into(), None), &out, &opts(&t.path().join("c"))).unwrap_err();
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    assert!(!out.exists());
}

fn unsquash_list(img: &Path) -> String {
    let o = std::process::Command::new("unsquashfs").arg("-lln").arg(img).output().unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn converts_to_squashfs_with_owners_and_metadata() {
    let t = tempfile::tempdir().unwrap();
    layered(t.path());
    let out = t.path().join("img.sqsh");
    let r =
        pull(&Source::OciDir(t.path().into(), Some("v1".into())), &out, &opts(&t.path().join("c"))).unwrap();
    assert_eq!(r.layers, 2);
    let l = unsquash_list(&out);
    assert!(l.lines().any(|x| x.starts_with("-rwsr-xr-x 0/0") && x.ends_with("/bin/su")), "{l}");
    assert!(l.lines().any(|x| x.starts_with("drwxr-x--- 1234/4321") && x.ends_with("/srv")), "{l}");
    assert!(l.lines().any(|x| x.starts_with("-rw------- 5/6") && x.ends_with("/opt/new")), "{l}");
    assert!(
        l.contains("/.singularity.d/runscript") && l.contains("/.singularity.d/env/10-docker2singularity.sh"),
        "{l}"
    );
    let o = std::process::Command::new("unsquashfs")
        .args(["-cat"])
        .arg(&out)
        .arg(".singularity.d/labels.json")
        .output()
        .unwrap();
    let labels: BTreeMap<String, String> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(labels["k"], "v");
    assert_eq!(labels["org.berth.source.digest"], r.digest.unwrap());
    assert_eq!(
        std::fs::read_dir(t.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("partial"))
            .count(),
        0
    );
}

#[test]
fn ensure_converted_converts_once_under_concurrency() {
    let t = tempfile::tempdir().unwrap();
    let src_dir = t.path().join("layout");
    std::fs::create_dir(&src_dir).unwrap();
    layered(&src_dir);
    let cache_dir = t.path().join("site-cache");
    let src = format!("oci:{}", src_dir.display());
    let before = CONVERSIONS.load(std::sync::atomic::Ordering::SeqCst);
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| ensure_converted(&src, &cache_dir, &opts(&t.path().join("c"))).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(CONVERSIONS.load(std::sync::atomic::Ordering::SeqCst) - before, 1, "exactly one conversion");
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert!(paths[0].file_name().unwrap().to_string_lossy().ends_with(".sqsh"));
    assert!(unsquash_list(&paths[0]).contains("/srv/data"));
    // A later call finds it without converting.
    ensure_converted(&src, &cache_dir, &opts(&t.path().join("c"))).unwrap();
    assert_eq!(CONVERSIONS.load(std::sync::atomic::Ordering::SeqCst) - before, 1);
}

#[test]
fn multi_arch_layout_resolves_to_the_platform() {
    let t = tempfile::tempdir().unwrap();
    let a = image(t.path(), &cfg(), &[layer(&[Ent::File("arch", b"amd64", 0o644, 0, 0)], true)], "amd64");
    let b = image(t.path(), &cfg(), &[layer(&[Ent::File("arch", b"arm64", 0o644, 0, 0)], true)], "arm64");
    finish(t.path(), vec![a, b], "multi");
    let mut o = opts(&t.path().join("c"));
    o.platform = Platform::parse("linux/arm64").unwrap();
    let Located::Local { store, resolved } = locate(&Source::OciDir(t.path().into(), None), &o).unwrap()
    else {
        unreachable!()
    };
    let tree = flatten::merge(&store, &resolved.layers, || {}).unwrap();
    assert!(matches!(tree.nodes["arch"].kind, flatten::Kind::File(..)));
    let bytes = flatten::write_tar(&store, &resolved.layers, &tree, vec![], || {}).unwrap();
    assert!(bytes.windows(5).any(|w| w == b"arm64"));
    assert!(!bytes.windows(5).any(|w| w == b"amd64"));
}

/// A registry speaking just enough HTTP/1.1 to serve `layout`, with faults chosen per request
/// by `policy(n, path, headers) -> Option<(status, extra headers)>` (None: serve normally).
/// Blob bodies are cut half-way when the policy answers status 0.
type Policy = dyn Fn(usize, &str, &str) -> Option<(u16, String)> + Send + Sync;

struct Server {
    port: u16,
    hits: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn serve(layout: PathBuf, policy: Box<Policy>) -> Server {
    use std::io::{BufRead, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let log = hits.clone();
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let (mut line, mut headers) = (String::new(), String::new());
            r.read_line(&mut line).unwrap_or(0);
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                headers.push_str(&h.to_ascii_lowercase());
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(path.clone());
            let fault = policy(n, &path, &headers);
            if let Some((code, extra)) = fault.clone().filter(|(c, _)| *c != 0) {
                let body = if code == 200 { extra.clone() } else { String::new() };
                let extra = if code == 200 { "Content-Type: application/json\r\n".into() } else { extra };
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                continue;
            }
            let blob = |hex: &str| std::fs::read(layout.join("blobs/sha256").join(hex)).ok();
            let body = if path.contains("/manifests/") {
                let idx: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
                blob(&idx["manifests"][0]["digest"].as_str().unwrap()[7..])
            } else {
                path.split("sha256:").nth(1).and_then(blob)
            };
            let Some(body) = body else {
                let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let from = headers
                .lines()
                .find_map(|h| h.strip_prefix("range: bytes="))
                .and_then(|v| v.trim().trim_end_matches('-').parse::<usize>().ok())
                .unwrap_or(0);
            let status = if from > 0 { "206 Partial Content" } else { "200 OK" };
            let part = &body[from.min(body.len())..];
            let ct = if path.contains("/manifests/") {
                "application/vnd.oci.image.manifest.v1+json"
            } else {
                "application/octet-stream"
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                part.len()
            );
            let cut = if fault.is_some() { part.len() / 2 } else { part.len() };
            let _ = s.write_all(&part[..cut]);
        }
    });
    Server { port, hits }
}

fn registry_pull(port: u16, o: &Options, out: &Path) -> Result<Report> {
    let r = reference::parse_image_ref(&format!("127.0.0.1:{port}/test/app:v1")).unwrap();
    let mut o2 = Options {
        cache: BlobCache::new(&o.cache.root),
        credentials: o.credentials.clone(),
        credential_realms: o.credential_realms.clone(),
        ..opts(&o.cache.root)
    };
    o2.insecure = true;
    pull(&Source::Registry(r), out, &o2)
}

fn big_layout(dir: &Path) {
    // A layer larger than the faults' threshold, so it is cut and resumed.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let m = image(dir, &cfg(), &[layer(&[Ent::File("big", &data, 0o644, 0, 0)], true)], "amd64");
    finish(dir, vec![m], "v1");
}

fn is_big_blob(path: &str, layout: &Path) -> bool {
    path.split("sha256:").nth(1).is_some_and(|h| {
        std::fs::metadata(layout.join("blobs/sha256").join(h)).map(|m| m.len() > 4096).unwrap_or(false)
    })
}

#[test]
fn registry_bearer_token_flow_with_basic_credentials() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    std::fs::create_dir(&lay).unwrap();
    big_layout(&lay);
    let port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
    let p2 = port.clone();
    let srv = serve(
        lay.clone(),
        Box::new(move |_, path, headers| {
            let realm = format!("http://127.0.0.1:{}/token", p2.load(std::sync::atomic::Ordering::SeqCst));
            if path.starts_with("/token") {
                // alice:pw
                return Some(
                    if headers.contains("authorization: basic ywxpy2u6chc=")
                        && path.contains("scope=repository%3Atest%2Fapp%3Apull")
                    {
                        (200, r#"{"token":"tok-123"}"#.to_string())
                    } else {
                        (401, String::new())
                    },
                );
            }
            if headers.contains("authorization: bearer tok-123") {
                None
            } else {
                Some((401, format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"reg\",scope=\"repository:test/app:pull\"\r\n")))
            }
        }),
    );
    port.store(srv.port, std::sync::atomic::Ordering::SeqCst);
    let mut o = opts(&t.path().join("cache"));
    let out = t.path().join("o.sqsh");
    let e = registry_pull(srv.port, &o, &out).unwrap_err().to_string();
    assert!(e.contains("refused the credentials") || e.contains("401"), "no credentials: {e}");
    o.credentials = Some(auth::Credentials { user: "alice".into(), password: "wrong".into() });
    let e = registry_pull(srv.port, &o, &out).unwrap_err().to_string();
    assert!(e.contains("refused the credentials"), "{e}");
    assert!(!out.exists());
    o.credentials = Some(auth::Credentials { user: "alice".into(), password: "pw".into() });
    registry_pull(srv.port, &o, &out).unwrap();
    assert!(unsquash_list(&out).contains("/big"));
    assert!(srv.hits.lock().unwrap().iter().any(|h| h.starts_with("/token?service=reg&scope=")));
}

#[test]
fn registry_retries_5xx_and_429_and_resumes_dropped_blobs() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    std::fs::create_dir(&lay).unwrap();
    big_layout(&lay);
    let l2 = lay.clone();
    let big_seen = std::sync::Arc::new(AtomicUsize::new(0));
    let b2 = big_seen.clone();
    let srv = serve(
        lay.clone(),
        Box::new(move |n, path, _| match n {
            0 => Some((503, String::new())),
            1 => Some((429, "Retry-After: 0\r\n".into())),
            _ if is_big_blob(path, &l2) && b2.fetch_add(1, Ordering::SeqCst) < 2 => Some((0, String::new())),
            _ => None,
        }),
    );
    let out = t.path().join("o.sqsh");
    let o = opts(&t.path().join("cache"));
    registry_pull(srv.port, &o, &out).unwrap();
    let hits = srv.hits.lock().unwrap().clone();
    assert_eq!(big_seen.load(Ordering::SeqCst), 3, "cut twice, resumed: {hits:?}");
    assert!(unsquash_list(&out).contains("/big"));
}

#[test]
fn registry_faults_that_do_not_heal_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    std::fs::create_dir(&lay).unwrap();
    big_layout(&lay);
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = opts(&t.path().join("cache"));
    let l2 = lay.clone();
    // Every transfer of the layer is cut.
    let srv = serve(lay.clone(), Box::new(move |_, p, _| is_big_blob(p, &l2).then(|| (0, String::new()))));
    let e = registry_pull(srv.port, &o, &out.join("o.sqsh")).unwrap_err().to_string();
    assert!(e.contains("transfer incomplete"), "{e}");
    // Always 500.
    let srv = serve(lay.clone(), Box::new(|_, _, _| Some((500, String::new()))));
    let e = registry_pull(srv.port, &o, &out.join("o.sqsh")).unwrap_err().to_string();
    assert!(e.contains("gave up after 5 attempts: HTTP 500"), "{e}");
    // Unknown tag.
    let srv = serve(lay.clone(), Box::new(|_, p, _| p.contains("/manifests/").then(|| (404, String::new()))));
    let e = registry_pull(srv.port, &o, &out.join("o.sqsh")).unwrap_err().to_string();
    assert!(e.contains("not found"), "{e}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing partial");
    let c = BlobCache::new(t.path().join("cache"));
    for (d, _) in c.list() {
        assert_eq!(cache::file_digest(&c.path(&d)).unwrap(), d);
    }
    assert!(!std::fs::read_dir(t.path().join("cache/blobs/sha256")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));
}

/// Names in the blob cache's directory that show a partial download.
fn partials_in(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.join("blobs/sha256"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Issue 20, finding 8. Redirects are followed by berth itself: to http(s) only, at most 8,
/// and a redirect anywhere else is one error, never a panic, with nothing left behind.
#[test]
fn registry_redirects_are_followed_to_http_only_and_never_panic() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    std::fs::create_dir(&lay).unwrap();
    big_layout(&lay);
    let out = t.path().join("o.sqsh");
    let l2 = lay.clone();
    // A blob store elsewhere, as Docker Hub's or GHCR's redirects lead: followed.
    let srv = serve(
        lay.clone(),
        Box::new(move |_, p, _| {
            let hex = p.split("sha256:").nth(1)?;
            (p.starts_with("/v2/") && is_big_blob(p, &l2))
                .then(|| (307, format!("Location: /store/sha256:{hex}\r\n")))
        }),
    );
    let o = opts(&t.path().join("cache"));
    registry_pull(srv.port, &o, &out).unwrap();
    assert!(unsquash_list(&out).contains("/big"));
    assert!(
        srv.hits.lock().unwrap().iter().any(|h| h.starts_with("/store/")),
        "{:?}",
        srv.hits.lock().unwrap()
    );
    std::fs::remove_file(&out).unwrap();

    for (location, needle) in [
        ("file:///etc/passwd", "file: is not http or https"),
        ("gopher://127.0.0.1:1/x", "gopher: is not http or https"),
        ("http://", "the registry redirected"),
    ] {
        let l2 = lay.clone();
        let cache = t.path().join(format!("cache-{}", location.len()));
        let srv = serve(
            lay.clone(),
            Box::new(move |_, p, _| is_big_blob(p, &l2).then(|| (302, format!("Location: {location}\r\n")))),
        );
        let e = registry_pull(srv.port, &opts(&cache), &out).unwrap_err().to_string();
        assert!(e.contains(needle), "{location}: {e}");
        assert!(!out.exists());
        assert!(partials_in(&cache).is_empty(), "{location}: {:?}", partials_in(&cache));
    }
    // Round in circles.
    let srv = serve(lay.clone(), Box::new(|_, p, _| Some((302, format!("Location: {p}\r\n")))));
    let e = registry_pull(srv.port, &o, &out).unwrap_err().to_string();
    assert!(e.contains("more than 8 redirects"), "{e}");
    assert_eq!(srv.hits.lock().unwrap().len(), 9, "the first request and 8 redirects");
    // A redirect without a Location.
    let srv = serve(lay.clone(), Box::new(|_, _, _| Some((301, String::new()))));
    let e = registry_pull(srv.port, &o, &out).unwrap_err().to_string();
    assert!(e.contains("without a Location"), "{e}");
}

/// Issue 20, finding 10. The image config is read up to the cap manifests have (8 MiB): a
/// manifest listing a larger one is refused before it is downloaded.
#[test]
fn registry_config_larger_than_the_cap_is_refused_unread() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    std::fs::create_dir(&lay).unwrap();
    let mut config = cfg();
    config["pad"] = "x".repeat(9 << 20).into();
    let m = image(&lay, &config, &[layer(&[Ent::File("f", b"f", 0o644, 0, 0)], true)], "amd64");
    finish(&lay, vec![m], "v1");
    let srv = serve(lay.clone(), Box::new(|_, _, _| None));
    let out = t.path().join("o.sqsh");
    let cache = t.path().join("cache");
    let e = registry_pull(srv.port, &opts(&cache), &out).unwrap_err().to_string();
    assert!(e.contains("image config") && e.contains("more than the 8388608 bytes"), "{e}");
    assert!(!out.exists());
    let hits = srv.hits.lock().unwrap().clone();
    assert!(!hits.iter().any(|h| h.contains("/blobs/")), "nothing downloaded: {hits:?}");
}

/// Issue 20, finding 11. Credentials go only to a token service at the registry's own
/// address, or one the user's `credential_realms` lists; a realm that is not http(s) is an
/// error, not a request.
#[test]
fn registry_credentials_go_only_to_the_registrys_own_token_service() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("lay");
    std::fs::create_dir(&lay).unwrap();
    big_layout(&lay);
    let port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
    let realm_host = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (p2, h2) = (port.clone(), realm_host.clone());
    let basic_seen = std::sync::Arc::new(AtomicUsize::new(0));
    let b2 = basic_seen.clone();
    let srv = serve(
        lay.clone(),
        Box::new(move |_, path, headers| {
            if path.starts_with("/token") {
                if headers.contains("authorization: basic ywxpy2u6chc=") {
                    b2.fetch_add(1, Ordering::SeqCst);
                    return Some((200, r#"{"token":"tok-123"}"#.to_string()));
                }
                return Some((401, String::new()));
            }
            if headers.contains("authorization: bearer tok-123") {
                return None;
            }
            let realm = h2.lock().unwrap().replace("PORT", &p2.load(Ordering::SeqCst).to_string());
            Some((401, format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"reg\"\r\n")))
        }),
    );
    port.store(srv.port, Ordering::SeqCst);
    let mut o = opts(&t.path().join("cache"));
    o.credentials = Some(auth::Credentials { user: "alice".into(), password: "pw".into() });
    let out = t.path().join("o.sqsh");
    let set_realm = |r: &str| *realm_host.lock().unwrap() = r.to_string();

    // The same service under another name (localhost, not 127.0.0.1): another host.
    set_realm("http://localhost:PORT/token");
    let e = registry_pull(srv.port, &o, &out).unwrap_err().to_string();
    assert!(e.contains("not the registry's address") && e.contains("did not send them"), "{e}");
    assert!(e.contains(&format!("\"http://localhost:{}\" in [registry] credential_realms", srv.port)), "{e}");
    assert_eq!(basic_seen.load(Ordering::SeqCst), 0, "the credentials were sent");
    assert!(!srv.hits.lock().unwrap().iter().any(|h| h.starts_with("/token")));
    // Listed by the user: sent, and the pull works.
    o.credential_realms = vec![format!("http://localhost:{}", srv.port)];
    registry_pull(srv.port, &o, &out).unwrap();
    assert_eq!(basic_seen.load(Ordering::SeqCst), 1);
    // The registry's own address needs no list.
    std::fs::remove_file(&out).unwrap();
    o.credential_realms.clear();
    set_realm("http://127.0.0.1:PORT/token");
    registry_pull(srv.port, &o, &out).unwrap();
    assert_eq!(basic_seen.load(Ordering::SeqCst), 2);
    // Not an http(s) service at all: one message, with or without credentials.
    for creds in [o.credentials.clone(), None] {
        set_realm("file:///etc/passwd");
        let mut o2 = opts(&t.path().join("cache"));
        o2.credentials = creds;
        let e = registry_pull(srv.port, &o2, &t.path().join("x.sqsh")).unwrap_err().to_string();
        assert!(e.contains("not an http(s) address"), "{e}");
    }
}
