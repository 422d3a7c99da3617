//! The adversarial suite of issue 11: two ordinary users, `mallory` (hostile) and `victim`,
//! and root where a scheduler runs berth as root. One case per finding; where a case lives
//! with the feature's own tests, this table names it instead of repeating it.
//!
//! | row | finding | case |
//! |---|---|---|
//! | 1 | a root job starter takes the user from the job's environment | `tests/pbs.rs`: `run_privileged_starter_is_refused` |
//! | 2 | `LD_PRELOAD` reaches a root job starter | `tests/pbs.rs`: `static_starter_ignores_ld_preload_as_root` |
//! | 3 | privileged mode mounts what the user cannot read | `privileged_mode_opens_the_image_as_the_user` (here) |
//! | 4 | another user occupies the state directory (and, issue 20 finding 14, so denies service) | `another_user_cannot_occupy_the_state_directory` (here) |
//! | 5 | small crafted images exhaust memory | `tests/cli.rs`: `crafted_sif_with_overlapping_objects_is_refused_in_bounded_memory`, `sparse_huge_libc_in_a_directory_image_is_read_by_its_headers`, `doubling_environment_file_is_a_clear_error` |
//! | 6 | a holder whose record was removed lives forever | `a_holder_whose_record_is_removed_stops` (here) |
//! | 7 | a FIFO swapped in for the image hangs berth | `tests/cli.rs`: `a_fifo_as_image_fails_at_once` |
//! | 8 | root unlinks through a directory the user owns | `root_never_follows_the_users_links_when_removing_records` (here); the plugin's own `stop`: `spank-plugin/src/holder.rs` `stop_removes_no_file_through_the_users_link` |
//! | 9 | image strings reach the terminal raw | `tests/cli.rs`: `inspect_escapes_terminal_controls_from_the_image` |
//! | 10 | `berth stop` claims success on EPERM | `tests/cli.rs`: `stop_reports_signals_it_is_not_allowed_to_send` |
//! | 11 | `-B ~/dir:/etc` writes into the host directory | `tests/cli.rs`: `binding_over_etc_writes_nothing_into_the_host_directory` |
//! | 20.3 | privileged mode judges a vetted name reached through the user's own mount namespace | `privileged_mode_refuses_a_vetted_name_seen_through_another_mount_namespace` (here) |

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{user, world, User};

impl User {
    /// `program ARGS` as this user, with a plain environment.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        harness::as_user(program, args, (self.uid, self.gid), &self.home, self.name, Path::new("/"))
    }

    fn berth(&self, args: &[&str]) -> Command {
        self.command(&world().berth, args)
    }

    fn sh(&self, script: &str) -> std::process::Output {
        self.command(Path::new("/bin/sh"), &["-c", script]).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A configuration file root owns, with `body`.
fn config(name: &str, body: &str) -> PathBuf {
    let p = world().path(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// Row 3. Root (the scheduler's privileged holder) mounts only what the job's user could open
/// themselves: a root-only image under the vetted directory, and a vetted image behind a
/// directory the user cannot enter, reached by the user's own symlink, are both refused
/// with a message, and nothing is mounted.
#[test]
fn privileged_mode_opens_the_image_as_the_user() {
    let w = world();
    let victim = user("victim");
    let mallory = user("mallory");
    let vetted = w.path("adv-vetted");
    let closed = vetted.join("closed");
    std::fs::create_dir_all(&closed).unwrap();
    std::fs::set_permissions(&vetted, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = vetted.join("secret.sqsh");
    std::fs::copy(&w.image, &secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hidden = closed.join("app.sqsh");
    std::fs::copy(&w.image, &hidden).unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = mallory.home.join("adv-link.sqsh");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&hidden, &link).unwrap();
    let cfg = config(
        "adv-privileged.toml",
        &format!(
            "state_dir = \"/tmp/berth-adv-{{uid}}\"\nmount_mode = \"privileged\"\n[privileged]\nallowed_dirs = [\"{}\"]\n",
            vetted.display()
        ),
    );
    let root_holder = |who: &User, name: &str, image: &Path| {
        harness::root_holder(&cfg, who.uid, &who.home, None, name, image)
    };
    for (who, name, image, needle) in [
        (&victim, "adv-secret", &secret, "cannot be opened by the job's user victim"),
        (&mallory, "adv-link", &link, "cannot be opened by the job's user mallory"),
    ] {
        let mut child = root_holder(who, name, image);
        let line = harness::first_line(&mut child);
        if line == "ready\n" {
            let _ = who.berth(&["stop", name]).env("BERTH_CONFIG", &cfg).output();
            let _ = child.wait();
            panic!("{} was mounted for {}", image.display(), who.name);
        }
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.starts_with("berth: ") && err.contains(needle), "{err}");
        assert!(err.contains("Permission denied"), "{err}");
    }
    let losetup = text(&Command::new("losetup").arg("-a").output().unwrap().stdout);
    assert!(!losetup.contains("adv-vetted"), "no loop device left: {losetup}");
    let _ = std::fs::remove_file(&link);
}

/// Issue 20, finding 3. mallory binds a root-owned image the site never vetted over the
/// vetted image's name inside her own user and mount namespace (`unshare -Urm`), then asks
/// root's privileged holder for `/proc/<her pid>/root/<vetted name>`: the kernel's name for
/// what she opened is the vetted one, but it is another file, on another mount. Refused, with
/// the reason, and nothing is mounted; the vetted image by its own name still is.
#[test]
fn privileged_mode_refuses_a_vetted_name_seen_through_another_mount_namespace() {
    let w = world();
    let mallory = user("mallory");
    let vetted = w.path("adv-ns-vetted");
    let unvetted = w.path("adv-ns-unvetted");
    for d in [&vetted, &unvetted] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let app = vetted.join("app.sqsh");
    let other = unvetted.join("other.sqsh");
    for f in [&app, &other] {
        std::fs::copy(&w.image, f).unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let cfg = config(
        "adv-ns-privileged.toml",
        &format!(
            "state_dir = \"/tmp/berth-adv-ns-{{uid}}\"\nmount_mode = \"privileged\"\n[privileged]\nallowed_dirs = [\"{}\"]\n",
            vetted.display()
        ),
    );
    let mut ns = mallory
        .command(
            Path::new("/usr/bin/unshare"),
            &["-Urm", "sh", "-c", r#"mount --bind "$1" "$2" && echo bound && exec sleep 60"#, "sh"],
        )
        .arg(&other)
        .arg(&app)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = harness::first_line(&mut ns);
    if line != "bound\n" {
        let _ = ns.kill();
        let out = ns.wait_with_output().unwrap();
        panic!("mallory's namespace: {line:?} {}", text(&out.stderr));
    }
    let through = PathBuf::from(format!("/proc/{}/root{}", ns.id(), app.display()));
    let mut child = harness::root_holder(&cfg, mallory.uid, &mallory.home, None, "adv-ns", &through);
    let line = harness::first_line(&mut child);
    let _ = ns.kill();
    let _ = ns.wait();
    if line == "ready\n" {
        let _ = mallory.berth(&["stop", "adv-ns"]).env("BERTH_CONFIG", &cfg).output();
        let _ = child.wait();
        panic!("{} was mounted for mallory through her own mount namespace", other.display());
    }
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.starts_with("berth: ") && err.contains("another mount namespace"), "{err}");
    let losetup = text(&Command::new("losetup").arg("-a").output().unwrap().stdout);
    assert!(!losetup.contains("adv-ns-"), "no loop device left: {losetup}");

    // The vetted image by its own name is mounted for her as before.
    let mut child = harness::root_holder(&cfg, mallory.uid, &mallory.home, None, "adv-ns-ok", &app);
    let line = harness::first_line(&mut child);
    let stopped = mallory.berth(&["stop", "adv-ns-ok"]).env("BERTH_CONFIG", &cfg).output().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(line, "ready\n", "{}", text(&out.stderr));
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    let _ = std::fs::remove_dir_all(format!("/tmp/berth-adv-ns-{}", mallory.uid));
}

/// Row 4, and issue 20 finding 14. mallory makes `/tmp/berth-<victim's uid>` first. victim's
/// berth still runs: it says once who is in the way and moves to
/// `~/.local/state/berth/<host>`, which only victim can create; with a private
/// `XDG_RUNTIME_DIR`, or the `/run/berth/<uid>` root makes for a job (the Slurm plugin, the PBS
/// prologue), that is used instead.
#[test]
fn another_user_cannot_occupy_the_state_directory() {
    let w = world();
    let victim = user("victim");
    let mallory = user("mallory");
    let squat = PathBuf::from(format!("/tmp/berth-{}", victim.uid));
    let run_dir = Path::new("/run/berth").join(victim.uid.to_string());
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let fallback = victim.home.join(".local/state/berth").join(&host);
    let _ = std::fs::remove_dir_all(&squat);
    let _ = std::fs::remove_dir_all(&run_dir);
    let _ = std::fs::remove_dir_all(victim.home.join(".local/state/berth"));
    let out = mallory.sh(&format!("mkdir -m 700 {}", squat.display()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // No container kept warm: nothing of victim's stays behind.
    let cfg = config("adv-nowarm.toml", "keep_warm_seconds = 0\n");

    let out = victim.berth(&["exec", w.image(), "id", "-u"]).env("BERTH_CONFIG", &cfg).output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout).trim(), victim.uid.to_string());
    assert_eq!(err.matches(&squat.display().to_string()).count(), 2, "said once: {err}");
    assert!(err.contains(&format!("mallory (uid {})", mallory.uid)), "names the owner: {err}");
    assert!(err.contains(&fallback.display().to_string()), "says where instead: {err}");
    let m = std::fs::symlink_metadata(&fallback).unwrap();
    assert!(m.is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == victim.uid);
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&m) & 0o777, 0o700);
    let out =
        victim.berth(&["exec", "--dry-run", w.image(), "true"]).env("BERTH_CONFIG", &cfg).output().unwrap();
    assert!(text(&out.stdout).contains(&format!("state   {}", fallback.display())), "{}", text(&out.stdout));

    // A private runtime directory of victim's own (what a login manager makes).
    let rt = w.path("adv-victim-runtime");
    let _ = std::fs::remove_dir_all(&rt);
    std::fs::create_dir(&rt).unwrap();
    std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&rt, Some(victim.uid.into()), Some(victim.gid.into())).unwrap();
    let out = victim
        .berth(&["exec", w.image(), "id", "-u"])
        .env("BERTH_CONFIG", &cfg)
        .env("XDG_RUNTIME_DIR", &rt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), victim.uid.to_string());
    assert!(rt.join("berth").is_dir());
    // mallory's runtime directory setting cannot send victim's state elsewhere: a directory
    // victim does not own is not used.
    let out = victim
        .berth(&["exec", "--dry-run", w.image(), "true"])
        .env("BERTH_CONFIG", &cfg)
        .env("XDG_RUNTIME_DIR", &mallory.home)
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains(&format!("state   {}", fallback.display())), "{}", text(&out.stdout));

    // Root's side of a job makes /run/berth/<uid>; mallory cannot make or change it.
    berth_runtime::config::create_user_state_dir(victim.uid, victim.gid).unwrap();
    let out = mallory.sh(&format!("mkdir /run/berth/{}", mallory.uid + 100000));
    assert!(!out.status.success(), "mallory may not create state directories for others");
    let out =
        victim.berth(&["exec", "--dry-run", w.image(), "true"]).env("BERTH_CONFIG", &cfg).output().unwrap();
    assert!(text(&out.stdout).contains(&format!("state   {}", run_dir.display())), "{}", text(&out.stdout));
    let out = victim.berth(&["exec", w.image(), "id", "-u"]).env("BERTH_CONFIG", &cfg).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), victim.uid.to_string());

    let _ = std::fs::remove_dir_all(&squat);
    let _ = std::fs::remove_dir_all(&run_dir);
    let _ = std::fs::remove_dir_all(&rt);
    let _ = std::fs::remove_dir_all(victim.home.join(".local/state/berth"));
}

/// Row 6. A holder whose record (here: the whole state directory) was removed can never be
/// joined or stopped by name again: it ends by itself, with its FUSE server.
#[test]
fn a_holder_whose_record_is_removed_stops() {
    let w = world();
    let victim = user("victim");
    let cfg = config("adv-orphan.toml", "state_dir = \"/tmp/berth-adv-orphan-{uid}\"\n");
    let state = PathBuf::from(format!("/tmp/berth-adv-orphan-{}", victim.uid));
    let _ = std::fs::remove_dir_all(&state);
    let mut child = victim
        .berth(&["holder", "--name", "adv-orphan", w.image()])
        .env("BERTH_CONFIG", &cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = harness::first_line(&mut child);
    assert_eq!(line, "ready\n");
    // The holder's image server, a child of it, by pid (other tests' servers run meanwhile).
    let holder = child.id();
    let children = std::fs::read_to_string(format!("/proc/{holder}/task/{holder}/children")).unwrap();
    let server: Vec<&str> = children.split_whitespace().filter(|p| harness::is_image_server(p)).collect();
    assert_eq!(server.len(), 1, "{children}");
    let server = server[0].to_string();
    let fuse = || usize::from(harness::is_image_server(&server));
    std::fs::remove_dir_all(&state).unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the holder lived on without its record");
    }
    let t0 = Instant::now();
    while fuse() > 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fuse(), 0, "the FUSE server went with the holder");
}

/// Row 8. `slurm_spank_exit` removes the step's record as root with
/// `holder::remove_file_nofollow`; mallory turns her `holders` directory into a link to a
/// directory of root's holding a file of the record's name: root removes nothing there.
#[test]
fn root_never_follows_the_users_links_when_removing_records() {
    let w = world();
    let mallory = user("mallory");
    let state = PathBuf::from(format!("/tmp/berth-adv-rm-{}", mallory.uid));
    let _ = std::fs::remove_dir_all(&state);
    let target = w.path("adv-root-only");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("slurm-7.0.json"), b"root's").unwrap();
    let out = mallory.sh(&format!(
        "mkdir -m 700 {s} && ln -s {t} {s}/holders",
        s = state.display(),
        t = target.display()
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record = state.join("holders/slurm-7.0.json");
    assert!(berth_runtime::holder::remove_file_nofollow(&record).is_err());
    assert!(target.join("slurm-7.0.json").exists(), "root removed a file through mallory's link");
    // A link higher up (the state directory itself) is not followed either.
    let _ = std::fs::remove_dir_all(&state);
    let out = mallory.sh(&format!("ln -s {} {}", w.dir.display(), state.display()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::create_dir_all(w.dir.join("holders")).unwrap();
    std::fs::write(w.dir.join("holders/slurm-7.0.json"), b"root's").unwrap();
    assert!(berth_runtime::holder::remove_file_nofollow(&record).is_err());
    assert!(w.dir.join("holders/slurm-7.0.json").exists());
    // Her own record in her own directory goes.
    let _ = std::fs::remove_file(&state);
    let out = mallory.sh(&format!(
        "mkdir -p -m 700 {s}/holders && echo {{}} > {s}/holders/slurm-7.0.json",
        s = state.display()
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    berth_runtime::holder::remove_file_nofollow(&record).unwrap();
    assert!(!record.exists());
    let _ = std::fs::remove_dir_all(&state);
}

/// Issue 20, finding 2. With a shared site image cache (`[registry] cache_dir`, mode 1777),
/// mallory makes the directory berth would make for victim first, or a link in its place, and
/// puts her own image at the name victim's digest-pinned reference converts to. Neither
/// `berth exec docker://...` nor `berth cache image` (what berth-pbs runs) nor a holder (what
/// the Slurm plugin starts) uses it: each fails with a message naming mallory, and runs nothing.
#[test]
fn a_planted_image_in_the_shared_cache_is_refused() {
    let w = world();
    let victim = user("victim");
    let mallory = user("mallory");
    let site = w.path("adv-site-cache");
    let _ = std::fs::remove_dir_all(&site);
    std::fs::create_dir_all(&site).unwrap();
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Nothing listens on port 9: a pinned reference whose file exists needs no registry, and
    // a run that reached the network would fail differently.
    let hex = "5eed".repeat(16);
    let reference = format!("docker://127.0.0.1:9/test/app@sha256:{hex}");
    let cfg = config(
        "adv-site-cache.toml",
        &format!(
            "keep_warm_seconds = 0\n[registry]\ncache_dir = \"{}\"\ninsecure_hosts = [\"127.0.0.1:9\"]\n",
            site.display()
        ),
    );
    let mine = site.join(victim.uid.to_string());
    let planted = mine.join(format!("{hex}.sqsh"));
    let owner = format!("mallory (uid {})", mallory.uid);
    let refused = |needles: &[&str]| {
        for args in [
            vec!["exec", reference.as_str(), "id", "-u"],
            vec!["cache", "image", reference.as_str()],
            vec!["holder", "--name", "adv-plant", reference.as_str()],
        ] {
            let out = victim.berth(&args).env("BERTH_CONFIG", &cfg).output().unwrap();
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(255), "{args:?} used the planted image: {err}");
            assert_eq!(text(&out.stdout), "", "{args:?}");
            assert!(err.starts_with("berth: "), "{args:?}: {err}");
            for n in needles {
                assert!(err.contains(n), "{args:?} should say {n:?}: {err}");
            }
        }
    };

    // Her directory (0777) where victim's should be, with her image in it.
    let out = mallory.sh(&format!(
        "mkdir -m 777 {d} && cp {img} {f} && chmod 666 {f}",
        d = mine.display(),
        img = w.image(),
        f = planted.display()
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    refused(&[&mine.display().to_string(), &owner, "made it first"]);
    assert!(planted.exists(), "victim's berth removes nothing of mallory's");

    // A link to a directory of hers in its place.
    let hers = mallory.home.join("adv-plant");
    let _ = std::fs::remove_dir_all(&mine);
    let _ = std::fs::remove_dir_all(&hers);
    let out = mallory.sh(&format!(
        "mkdir -m 755 {h} && cp {img} {h}/{hex}.sqsh && ln -s {h} {d}",
        h = hers.display(),
        img = w.image(),
        d = mine.display()
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    refused(&[&mine.display().to_string(), &owner, "not a directory"]);
    let _ = std::fs::remove_file(&mine);
    let _ = std::fs::remove_dir_all(&hers);

    // victim's own private directory, but a file in it that victim's berth did not write (a
    // directory once open to others, a file an administrator copied): not used by its name.
    std::fs::create_dir(&mine).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&mine, Some(victim.uid.into()), Some(victim.gid.into())).unwrap();
    std::fs::copy(&w.image, &planted).unwrap();
    nix::unistd::chown(&planted, Some(mallory.uid.into()), Some(mallory.gid.into())).unwrap();
    refused(&[&planted.display().to_string(), &owner]);

    // victim's own directory left writable by everyone: no file in it is trusted.
    nix::unistd::chown(&planted, Some(victim.uid.into()), Some(victim.gid.into())).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&[&mine.display().to_string(), "chmod go-w"]);
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();

    // A site directory others may write without the sticky bit: anyone could rename victim's
    // directory away and put their own in its place.
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&[&site.display().to_string(), "sticky"]);
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o1777)).unwrap();

    // The user's own cache (no site cache) in a directory mallory made in /tmp: refused too.
    let shared = PathBuf::from(format!("/tmp/berth-adv-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shared);
    let out = mallory.sh(&format!(
        "mkdir -m 777 {s} && mkdir -m 777 {s}/images && cp {img} {s}/images/{hex}.sqsh",
        s = shared.display(),
        img = w.image()
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let own_cfg = config("adv-own-cache.toml", "keep_warm_seconds = 0\n");
    let out = victim
        .berth(&["exec", &reference, "id", "-u"])
        .env("BERTH_CONFIG", &own_cfg)
        .env("BERTH_CACHE_DIR", &shared)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "the planted image ran: {err}");
    assert!(err.starts_with("berth: ") && err.contains(&owner), "{err}");

    // With the squat gone, victim's own fresh directory is made private and used as before.
    std::fs::remove_dir_all(&mine).unwrap();
    let out = victim.berth(&["cache", "image", &reference]).env("BERTH_CONFIG", &cfg).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("127.0.0.1:9"), "asks the registry: {err}");
    let m = std::fs::symlink_metadata(&mine).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(m.is_dir() && m.uid() == victim.uid && m.mode() & 0o777 == 0o700, "{:o}", m.mode());
    let _ = std::fs::remove_dir_all(&site);
    let _ = std::fs::remove_dir_all(&shared);
}
