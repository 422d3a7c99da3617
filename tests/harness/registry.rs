//! A real OCI registry for the tests of every package: Debian's `docker-registry`, plain HTTP or
//! with TLS and htpasswd auth, on 127.0.0.1 of the host or of an emulated node's network
//! namespace (the PBS emulator's nodes have only their own loopback), and `skopeo copy` to push.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `docker-registry`, stopped on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub storage: PathBuf,
    /// The network namespace (`ip netns` name) it listens in; None: the host's.
    pub netns: Option<String>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `argv` run in `netns` (`ip netns exec` execs it, so the child is the program itself).
fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

fn listening(netns: Option<&str>, port: u16) -> bool {
    match netns {
        None => TcpStream::connect(("127.0.0.1", port)).is_ok(),
        Some(ns) => Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

impl Registry {
    pub fn start(dir: &Path, tls: Option<(&Path, &Path)>, htpasswd: Option<&Path>) -> Registry {
        Self::start_in(dir, tls, htpasswd, None)
    }

    pub fn start_in(
        dir: &Path,
        tls: Option<(&Path, &Path)>,
        htpasswd: Option<&Path>,
        netns: Option<&str>,
    ) -> Registry {
        let auth = htpasswd
            .map(|h| format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", h.display()));
        Self::launch(dir, tls, |_| auth.unwrap_or_default(), netns)
    }

    /// A TLS registry with token authentication: every request without a token it trusts is
    /// answered 401 with a bearer challenge naming `realm(port)` as its token service (tokens
    /// it would trust are signed by `ca`'s key, which the tests never mint).
    pub fn start_token(
        dir: &Path,
        tls: (&Path, &Path),
        realm: impl Fn(u16) -> String,
        ca: &Path,
    ) -> Registry {
        let auth = |port| {
            format!(
                "auth:\n  token:\n    realm: {}\n    service: berth-test\n    issuer: berth-test\n    \
                 rootcertbundle: {}\n",
                realm(port),
                ca.display()
            )
        };
        Self::launch(dir, Some(tls), auth, None)
    }

    fn launch(
        dir: &Path,
        tls: Option<(&Path, &Path)>,
        auth: impl FnOnce(u16) -> String,
        netns: Option<&str>,
    ) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let storage = dir.join("storage");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((cert, key)) = tls {
            cfg += &format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display());
        }
        cfg += &auth(port);
        std::fs::write(dir.join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = in_netns(netns, "docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let reg = Registry { child, port, storage, netns: netns.map(String::from) };
        let t = Instant::now();
        while !listening(netns, port) {
            assert!(t.elapsed() < Duration::from_secs(20), "registry did not start: {}", dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of the OCI layout's `tag` to `dest` (`docker://...`), from where the
    /// registry listens.
    pub fn push(&self, layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
        skopeo_push_in(self.netns.as_deref(), layout, tag, dest, extra)
    }
}

pub fn skopeo_push_in(netns: Option<&str>, layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    let mut c = in_netns(netns, "skopeo");
    c.args(["copy", "--quiet", "--dest-tls-verify=false"]).args(extra);
    c.arg(format!("oci:{}:{tag}", layout.display())).arg(dest);
    let o = c.output().unwrap();
    assert!(o.status.success(), "skopeo copy to {dest}: {}", String::from_utf8_lossy(&o.stderr));
}

pub fn skopeo_push(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    skopeo_push_in(None, layout, tag, dest, extra)
}
