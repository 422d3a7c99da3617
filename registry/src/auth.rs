//! Registry credentials, read where the container tools keep them, never from the command line:
//! `$REGISTRY_AUTH_FILE` and `$XDG_RUNTIME_DIR/containers/auth.json` (podman/skopeo),
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` (docker), then `~/.netrc`.
//! Credential helpers named in those files (`credHelpers` per registry, `credsStore` for all) are
//! run as docker runs them: `docker-credential-NAME get`, the server on stdin, JSON on stdout;
//! only from a file the effective user owns, so no one's helper runs with another's rights.

use std::path::{Path, PathBuf};

use base64::Engine;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

/// The user name docker files with an identity token (`Username: "<token>"` from a helper).
pub const TOKEN_USER: &str = "<token>";

impl Credentials {
    /// An identity token (Docker Hub personal access tokens, ACR, Harbor robots through helpers):
    /// an OAuth2 refresh token for the registry's token service, never a password.
    pub fn identity_token(token: &str) -> Self {
        Credentials { user: TOKEN_USER.into(), password: token.into() }
    }

    /// The identity token, when these credentials are one.
    pub fn token(&self) -> Option<&str> {
        (self.user == TOKEN_USER).then_some(self.password.as_str())
    }

    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// The auth files to consult, most specific first.
pub fn auth_files() -> Vec<PathBuf> {
    let mut v = vec![];
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|f| !f.is_empty()) {
        v.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|f| !f.is_empty()) {
        v.push(Path::new(&d).join("containers/auth.json"));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|f| !f.is_empty()) {
        v.push(Path::new(&d).join("config.json"));
    } else if let Some(h) = home() {
        v.push(h.join(".docker/config.json"));
    }
    v
}

/// Keys a registry may be filed under in `auths`.
fn keys_for(registry: &str) -> Vec<String> {
    let mut k = vec![registry.to_string(), format!("https://{registry}"), format!("http://{registry}")];
    if registry == crate::reference::DOCKER_HUB {
        k.extend(
            ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"].map(String::from),
        );
    }
    k
}

/// What docker passes a helper for `registry`: Docker Hub's historical URL, else the host.
fn helper_server(registry: &str) -> String {
    if registry == crate::reference::DOCKER_HUB {
        "https://index.docker.io/v1/".into()
    } else {
        registry.to_string()
    }
}

/// How long a helper may take (one that prompts or hangs must not stall a job forever).
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `docker-credential-NAME get` for `server`; None when it has nothing (or is not installed).
fn run_helper(name: &str, server: &str) -> Option<Credentials> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let mut child = Command::new(format!("docker-credential-{name}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let _ = stdin.write_all(server.as_bytes());
    drop(stdin);
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = stdout.by_ref().take(1 << 20).read_to_end(&mut v);
        v
    });
    let t = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if t.elapsed() < HELPER_TIMEOUT => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let out = reader.join().ok()?;
    if !status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out).ok()?;
    let user = v.get("Username")?.as_str()?;
    let secret = v.get("Secret")?.as_str()?;
    if secret.is_empty() {
        return None;
    }
    // "<token>" marks an identity (refresh) token: `Credentials::token` tells the client.
    Some(Credentials { user: user.into(), password: secret.into() })
}

/// Credentials from one auth file's text: its `credHelpers` entry for the registry, then its
/// `auths` entry, then its `credsStore` (helpers only when `helpers`).
fn from_auth_json(text: &str, registry: &str, helpers: bool) -> Option<Credentials> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if helpers {
        if let Some(ch) = v.get("credHelpers").and_then(|c| c.as_object()) {
            for key in keys_for(registry) {
                if let Some(name) = ch.get(&key).and_then(|n| n.as_str()) {
                    return run_helper(name, &helper_server(registry));
                }
            }
        }
    }
    if let Some(c) = v.get("auths").and_then(|a| a.as_object()).and_then(|a| from_auths(a, registry)) {
        return Some(c);
    }
    let store = v.get("credsStore").and_then(|s| s.as_str()).filter(|_| helpers)?;
    run_helper(store, &helper_server(registry))
}

fn from_auths(auths: &serde_json::Map<String, serde_json::Value>, registry: &str) -> Option<Credentials> {
    for key in keys_for(registry) {
        let Some(e) = auths.get(&key).or_else(|| auths.get(&format!("{key}/"))) else { continue };
        // `docker login` with a token service files `identitytoken` (its `auth`, if any, only
        // names the user); docker then uses the token alone, and so does berth.
        if let Some(t) = e.get("identitytoken").and_then(|t| t.as_str()).filter(|t| !t.is_empty()) {
            return Some(Credentials::identity_token(t));
        }
        if let Some(a) = e.get("auth").and_then(|a| a.as_str()) {
            let raw = base64::engine::general_purpose::STANDARD.decode(a.trim()).ok()?;
            let raw = String::from_utf8(raw).ok()?;
            let (u, p) = raw.split_once(':')?;
            return Some(Credentials { user: u.into(), password: p.into() });
        }
        if let (Some(u), Some(p)) =
            (e.get("username").and_then(|x| x.as_str()), e.get("password").and_then(|x| x.as_str()))
        {
            return Some(Credentials { user: u.into(), password: p.into() });
        }
    }
    None
}

fn from_netrc(text: &str, host: &str) -> Option<Credentials> {
    let host = host.split(':').next().unwrap_or(host);
    let words: Vec<&str> = text.split_whitespace().collect();
    let (mut i, mut found, mut user, mut pass) = (0, false, None, None);
    while i < words.len() {
        match words[i] {
            "machine" => {
                if found {
                    break;
                }
                found = words.get(i + 1) == Some(&host);
                i += 1;
            }
            "default" => {
                if found {
                    break;
                }
                found = true;
            }
            "login" if found => user = words.get(i + 1).map(|s| s.to_string()),
            "password" if found => pass = words.get(i + 1).map(|s| s.to_string()),
            _ => {}
        }
        i += 1;
    }
    Some(Credentials { user: user?, password: pass? })
}

/// Credentials for `registry` (`host[:port]`), if the user has filed some.
pub fn lookup(registry: &str) -> Option<Credentials> {
    use std::os::unix::fs::MetadataExt;
    let euid = nix::unistd::geteuid().as_raw();
    for f in auth_files() {
        if let Ok(text) = std::fs::read_to_string(&f) {
            let own = std::fs::metadata(&f).is_ok_and(|m| m.uid() == euid);
            if let Some(c) = from_auth_json(&text, registry, own) {
                return Some(c);
            }
        }
    }
    let netrc = std::env::var_os("NETRC").map(PathBuf::from).or_else(|| home().map(|h| h.join(".netrc")))?;
    from_netrc(&std::fs::read_to_string(netrc).ok()?, registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_forms() {
        let j = r#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6czNjcjN0"},
                    "https://index.docker.io/v1/":{"auth":"Ym9iOnB3"},
                    "h.io":{"username":"u","password":"p:x"}}}"#;
        let c = from_auth_json(j, "127.0.0.1:5000", false).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "s3cr3t"));
        assert_eq!(c.basic_header(), "Basic YWxpY2U6czNjcjN0");
        assert_eq!(from_auth_json(j, "docker.io", false).unwrap().user, "bob");
        assert_eq!(from_auth_json(j, "h.io", false).unwrap().password, "p:x");
        assert!(from_auth_json(j, "other.io", false).is_none());
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(c.token().is_none());
    }

    #[test]
    fn identity_tokens() {
        let j = r#"{"auths":{"r.io":{"auth":"YWxpY2U6","identitytoken":"rt-123"}}}"#;
        let c = from_auth_json(j, "r.io", false).unwrap();
        assert_eq!(c.token(), Some("rt-123"));
        assert!(!format!("{c:?}").contains("rt-123"));
    }

    #[test]
    fn netrc() {
        let t = "machine a.io login x password y\nmachine reg.io\n  login alice\n  password pw\n";
        let c = from_netrc(t, "reg.io:5000").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "pw"));
        assert!(from_netrc(t, "b.io").is_none());
    }
}
