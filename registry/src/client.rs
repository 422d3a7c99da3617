//! OCI distribution v2 over blocking HTTP: manifests and blobs, bearer-token and basic auth,
//! retries with backoff on 5xx/429 and dropped connections, and blob downloads that resume
//! where they stopped (Range) into the verified cache.

use std::io::Read;
use std::time::Duration;

use crate::auth::Credentials;
use crate::cache::BlobCache;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::reference::ImageRef;

pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or config accepted (real ones are a few KiB).
pub const MAX_DOC: u64 = 8 << 20;
const ATTEMPTS: u32 = 5;
/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 8;

/// Token services that may receive a registry's credentials although they live elsewhere:
/// `(registry as written in references, token service origin)`.
const KNOWN_REALMS: &[(&str, &str)] = &[
    (crate::reference::DOCKER_HUB, "https://auth.docker.io"),
    ("registry.gitlab.com", "https://gitlab.com"),
];

pub struct Client {
    agent: ureq::Agent,
    base: String,
    image: ImageRef,
    creds: Option<Credentials>,
    /// The `Authorization` value that worked last (a bearer token or basic credentials).
    authz: Option<String>,
    /// Base delay between retries (tests shorten it).
    pub backoff: Duration,
    /// Token services (`scheme://host[:port]`) besides the registry's own address that may
    /// receive the credentials (`[registry] credential_realms`).
    realms: Vec<String>,
}

fn status_hint(code: u16) -> &'static str {
    match code {
        401 | 403 => "log in (docker login / skopeo login / podman login write the credentials berth reads)",
        404 => "check the repository and tag (skopeo list-tags docker://REPO lists the tags)",
        429 => "the registry rate-limits you: log in, or wait and try again",
        _ => "",
    }
}

/// Parse `Bearer realm="...",service="...",scope="..."` into its scheme and parameters.
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = vec![];
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((k, v)) = s.split_once('=') else { break };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, tail) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].trim().to_string(), &v[end..])
        };
        params.push((k, val));
        s = tail.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

enum Attempt {
    Done(Box<ureq::Response>),
    /// Worth another try (5xx, 429, a dropped or refused connection).
    Retry(String, Option<Duration>),
    /// A final error status (4xx), to be explained or answered (401).
    Status(Box<ureq::Response>),
    Fatal(Error),
}

impl Client {
    pub fn new(image: &ImageRef, insecure: bool) -> Result<Self> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(20))
            .timeout_read(Duration::from_secs(60))
            // Followed by `get_following` instead: ureq follows any scheme (and panicked on a
            // redirect to file://) and would drop TLS on a redirect to http.
            .redirects(0)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build();
        let scheme = if insecure { "http" } else { "https" };
        Ok(Client {
            agent,
            base: format!("{scheme}://{}/v2/{}", image.api_host(), image.repository),
            image: image.clone(),
            creds: crate::auth::lookup(&image.registry),
            authz: None,
            backoff: Duration::from_millis(500),
            realms: vec![],
        })
    }

    /// Token services besides the registry itself that may receive the credentials, as
    /// `[registry] credential_realms` lists them (`https://auth.example.com`, `http://host:port`;
    /// without a scheme, https).
    pub fn set_credential_realms(&mut self, realms: &[String]) {
        self.realms = realms.to_vec();
    }

    fn base_url(&self) -> url::Url {
        url::Url::parse(&self.base).expect("the registry's base URL is built from a parsed reference")
    }

    /// Why the user's credentials must not go to the token service at `realm`, if they must
    /// not: it is not the registry's own address (scheme, host and port), nor a service
    /// known to belong to this registry, nor one the user listed in `credential_realms`. A
    /// plain-HTTP service for an HTTPS registry is a different address, so it needs the list.
    fn realm_refusal(&self, realm: &url::Url) -> Option<String> {
        let own = self.base_url();
        if realm.origin() == own.origin() {
            return None;
        }
        let origin = |s: &str| {
            let s = if s.contains("://") { s.to_string() } else { format!("https://{s}") };
            url::Url::parse(&s).ok().map(|u| u.origin())
        };
        let known = KNOWN_REALMS.iter().filter(|(r, _)| *r == self.image.registry).map(|(_, o)| *o);
        if known.chain(self.realms.iter().map(String::as_str)).any(|o| origin(o) == Some(realm.origin())) {
            return None;
        }
        let downgrade = own.scheme() == "https" && realm.scheme() == "http";
        Some(if downgrade {
            "plain HTTP while the registry is HTTPS".into()
        } else {
            format!("not the registry's address ({})", own.origin().ascii_serialization())
        })
    }

    /// Where a redirect from `from` to `location` leads, if berth follows it: http or https
    /// only, and never from https down to plain http.
    fn redirect_target(&self, from: &url::Url, location: &str) -> Result<url::Url> {
        let bad = |why: String| {
            Error::new(
                self.what(),
                format!("the registry redirected {from} to {location:?}: {why}"),
                "berth follows redirects to http(s) addresses only, and none from https to http",
            )
        };
        let next = from.join(location).map_err(|e| bad(e.to_string()))?;
        match next.scheme() {
            "https" => {}
            "http" if from.scheme() == "http" => {}
            "http" => return Err(bad("that would drop TLS".into())),
            s => return Err(bad(format!("{s}: is not http or https"))),
        }
        if next.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host".into()));
        }
        Ok(next)
    }

    /// GET `url` with `headers`, following up to [`MAX_REDIRECTS`] redirects (see
    /// [`Client::redirect_target`]); `authz` goes only to `url`'s own origin, never to where a
    /// redirect leads elsewhere (a blob store's signed URL needs none). The answer of the last
    /// request as ureq gives it.
    fn get_following(
        &self,
        url: &str,
        headers: &[(&str, String)],
        authz: Option<&str>,
    ) -> Result<std::result::Result<ureq::Response, ureq::Error>> {
        let first = url::Url::parse(url).map_err(|e| Error::new(self.what(), format!("{url}: {e}"), ""))?;
        let mut at = first.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.agent.request_url("GET", &at);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = authz.filter(|_| at.origin() == first.origin()) {
                req = req.set("Authorization", a);
            }
            match req.call() {
                Ok(r) if matches!(r.status(), 301 | 302 | 303 | 307 | 308) => {
                    let Some(loc) = r.header("Location").map(str::to_string) else {
                        return Err(Error::new(
                            self.what(),
                            format!("{at}: HTTP {} without a Location", r.status()),
                            "",
                        ));
                    };
                    at = self.redirect_target(&at, &loc)?;
                }
                other => return Ok(other),
            }
        }
        Err(Error::new(
            self.what(),
            format!("{first}: more than {MAX_REDIRECTS} redirects"),
            "the registry (or a proxy before it) sends requests round in circles",
        ))
    }

    /// Use these credentials instead of the ones found in the user's files.
    pub fn set_credentials(&mut self, creds: Option<Credentials>) {
        self.creds = creds;
    }

    fn what(&self) -> String {
        self.image.to_string()
    }

    /// Fetch a token (or settle on basic auth) after a 401 with this challenge.
    fn authenticate(&mut self, challenge: &str) -> Result<()> {
        let (scheme, params) = parse_challenge(challenge);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match scheme.as_str() {
            "basic" => {
                let c = self.creds.as_ref().ok_or_else(|| {
                    Error::new(self.what(), "the registry wants a user name and password", status_hint(401))
                })?;
                if c.token().is_some() {
                    return Err(Error::new(
                        self.what(),
                        "the registry wants a user name and password, but the credentials berth found are an identity token (which only a token service accepts)",
                        "log in with a user name and password (docker login / skopeo login / podman login)",
                    ));
                }
                self.authz = Some(c.basic_header());
                Ok(())
            }
            "bearer" => {
                let realm = get("realm").ok_or_else(|| {
                    Error::new(self.what(), "the registry's bearer challenge has no realm", "")
                })?;
                let realm_url = url::Url::parse(&realm)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                    .ok_or_else(|| {
                        Error::new(
                            self.what(),
                            format!(
                                "the registry names {realm:?} as its token service, not an http(s) address"
                            ),
                            "",
                        )
                    })?;
                if self.creds.is_some() {
                    if let Some(why) = self.realm_refusal(&realm_url) {
                        let origin = realm_url.origin().ascii_serialization();
                        return Err(Error::new(
                            self.what(),
                            format!(
                                "the registry asks for your credentials to be sent to the token service {realm}, \
                                 which is {why}; berth did not send them"
                            ),
                            format!(
                                "if you trust that service with your credentials for {}, list \"{origin}\" in \
                                 [registry] credential_realms of berth.toml (BERTH_CONFIG may name a file of your own)",
                                self.image.registry
                            ),
                        ));
                    }
                }
                let scope =
                    get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.image.repository));
                let token = self.creds.as_ref().and_then(|c| c.token());
                let sent = match token {
                    // An identity token is an OAuth2 refresh token: POSTed as a form to the
                    // realm (distribution's "OAuth2 token authentication"), never put in a URL.
                    Some(t) => {
                        let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", t)];
                        let service = get("service");
                        if let Some(s) = &service {
                            form.push(("service", s));
                        }
                        form.push(("scope", &scope));
                        form.push(("client_id", "berth"));
                        // Not followed if redirected: the token is sent to this address only.
                        self.agent.request_url("POST", &realm_url).send_form(&form)
                    }
                    None => {
                        let mut url = realm.clone();
                        let mut sep = if url.contains('?') { '&' } else { '?' };
                        if let Some(s) = get("service") {
                            url.push_str(&format!("{sep}service={}", pct(&s)));
                            sep = '&';
                        }
                        url.push_str(&format!("{sep}scope={}", pct(&scope)));
                        let basic = self.creds.as_ref().map(|c| c.basic_header());
                        self.get_following(&url, &[], basic.as_deref())?
                    }
                };
                let resp = match sent {
                    Ok(r) if r.status() >= 300 => {
                        return Err(Error::new(
                            self.what(),
                            format!("token service {realm}: HTTP {} instead of a token", r.status()),
                            "",
                        ))
                    }
                    Ok(r) => r,
                    Err(ureq::Error::Status(code, _)) if token.is_some() => {
                        return Err(Error::new(
                            self.what(),
                            format!("the token service {realm} refused the identity token (HTTP {code})"),
                            "the identity token berth found (docker config identitytoken or a credential \
                             helper's <token> answer) is wrong or expired: log in again",
                        ))
                    }
                    Err(ureq::Error::Status(code, _)) => {
                        return Err(Error::new(
                            self.what(),
                            format!("the token service {realm} refused the credentials (HTTP {code})"),
                            status_hint(401),
                        ))
                    }
                    Err(e) => return Err(Error::new(self.what(), format!("token service {realm}: {e}"), "")),
                };
                let mut body = vec![];
                resp.into_reader()
                    .take(MAX_DOC)
                    .read_to_end(&mut body)
                    .map_err(|e| Error::new(self.what(), format!("token service {realm}: {e}"), ""))?;
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| Error::new(self.what(), format!("token service {realm}: {e}"), ""))?;
                let tok = v["token"].as_str().or(v["access_token"].as_str()).ok_or_else(|| {
                    Error::new(self.what(), format!("token service {realm} answered without a token"), "")
                })?;
                self.authz = Some(format!("Bearer {tok}"));
                Ok(())
            }
            _ => Err(Error::new(self.what(), format!("unsupported authentication scheme {scheme:?}"), "")),
        }
    }

    fn attempt(&self, url: &str, accept: Option<&str>, range: Option<u64>) -> Attempt {
        let mut headers = vec![];
        if let Some(a) = accept {
            headers.push(("Accept", a.to_string()));
        }
        if let Some(n) = range.filter(|n| *n > 0) {
            headers.push(("Range", format!("bytes={n}-")));
        }
        let answer = match self.get_following(url, &headers, self.authz.as_deref()) {
            Ok(a) => a,
            Err(e) => return Attempt::Fatal(e),
        };
        match answer {
            Ok(r) if r.status() >= 300 => Attempt::Fatal(Error::new(
                self.what(),
                format!("{url}: HTTP {} without a place to go", r.status()),
                "",
            )),
            Ok(r) => Attempt::Done(Box::new(r)),
            Err(ureq::Error::Status(code, r)) if code == 429 || code >= 500 => {
                let after =
                    r.header("Retry-After").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
                Attempt::Retry(format!("HTTP {code}"), after)
            }
            Err(ureq::Error::Status(_, r)) => Attempt::Status(Box::new(r)),
            Err(ureq::Error::Transport(t)) => {
                let msg = t.to_string();
                // TLS failures do not heal by retrying.
                if msg.contains("certificate") {
                    Attempt::Fatal(Error::new(
                        self.what(),
                        format!("TLS: {msg}"),
                        "the registry's certificate is not trusted: add its CA to the system store \
                         (/usr/local/share/ca-certificates + update-ca-certificates) or point SSL_CERT_FILE at it",
                    ))
                } else if msg.contains("InvalidContentType") {
                    // What rustls reports when the answer to its ClientHello is not TLS at all.
                    Attempt::Fatal(Error::new(
                        self.what(),
                        format!("TLS: {msg}"),
                        "the registry speaks plain HTTP: use --insecure",
                    ))
                } else {
                    Attempt::Retry(msg, None)
                }
            }
        }
    }

    fn sleep(&self, n: u32, after: Option<Duration>) {
        let d = after.unwrap_or(self.backoff * 2u32.pow(n)).min(Duration::from_secs(30));
        std::thread::sleep(d);
    }

    /// GET with authentication and retries; the response is a 2xx.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        what: &str,
        range: Option<u64>,
    ) -> Result<ureq::Response> {
        let mut authed = false;
        let mut last = String::new();
        let mut n = 0;
        while n < ATTEMPTS {
            match self.attempt(url, accept, range) {
                Attempt::Done(r) => return Ok(*r),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry(why, after) => {
                    last = why;
                    n += 1;
                    if n < ATTEMPTS {
                        self.sleep(n - 1, after);
                    }
                }
                Attempt::Status(r) if r.status() == 401 && !authed => {
                    authed = true;
                    let ch = r.header("WWW-Authenticate").unwrap_or("").to_string();
                    self.authenticate(&ch)?;
                }
                Attempt::Status(r) => {
                    let code = r.status();
                    let body = r.into_string().unwrap_or_default();
                    let detail = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default();
                    let reason = match code {
                        401 if self.creds.is_some() => {
                            format!("the registry refused your credentials (HTTP 401{detail})")
                        }
                        401 | 403 => format!("access denied (HTTP {code}{detail})"),
                        404 => format!("{what} not found (HTTP 404{detail})"),
                        _ => format!("{what}: HTTP {code}{detail}"),
                    };
                    let hint = if code == 401 && self.creds.is_some() {
                        "the credentials berth found (REGISTRY_AUTH_FILE, ~/.docker/config.json, ~/.netrc) are wrong: log in again"
                    } else {
                        status_hint(code)
                    };
                    return Err(Error::new(self.what(), reason, hint));
                }
            }
        }
        let hint = "check the network and the registry's address, then try again";
        Err(Error::new(self.what(), format!("{what}: gave up after {ATTEMPTS} attempts: {last}"), hint))
    }

    /// A manifest or index: `(body, media type, digest of the body)`.
    pub fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, String, String)> {
        let url = format!("{}/manifests/{reference}", self.base);
        let what = format!("manifest {reference}");
        let resp = self.get(&url, Some(MANIFEST_TYPES), &what, None)?;
        let mt = resp.content_type().to_string();
        let mut body = vec![];
        resp.into_reader()
            .take(MAX_DOC + 1)
            .read_to_end(&mut body)
            .map_err(|e| Error::new(self.what(), format!("{what}: {e}"), ""))?;
        if body.len() as u64 > MAX_DOC {
            return Err(Error::new(self.what(), format!("{what} is larger than {MAX_DOC} bytes"), ""));
        }
        use sha2::Digest;
        let digest = format!("sha256:{}", crate::cache::hex(&sha2::Sha256::digest(&body)));
        if reference.starts_with("sha256:") && digest != reference {
            return Err(Error::new(
                self.what(),
                format!("digest mismatch: asked for manifest {reference}, received {digest}"),
                "the registry served corrupt data",
            ));
        }
        Ok((body, mt, digest))
    }

    /// Make sure the blob is in the cache (downloaded, resumed on a dropped connection, verified).
    pub fn blob(
        &mut self,
        cache: &BlobCache,
        digest: &str,
        size: Option<u64>,
        progress: &mut Progress,
    ) -> Result<std::path::PathBuf> {
        if let Some(p) = cache.get(digest) {
            progress.add(size.unwrap_or(0));
            return Ok(p);
        }
        let url = format!("{}/blobs/{digest}", self.base);
        let what = format!("blob {digest}");
        let mut inc = cache.begin()?;
        let mut tries = 0;
        loop {
            let resp = self.get(&url, None, &what, Some(inc.written))?;
            if inc.written > 0 && resp.status() != 206 {
                progress.add_signed(-(inc.written as i64));
                inc.reset().map_err(|e| Error::io(format!("cache {}", cache.root.display()), e))?;
            }
            let mut r = resp.into_reader();
            let mut buf = vec![0u8; 256 << 10];
            let dropped = loop {
                match r.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        inc.write(&buf[..n])
                            .map_err(|e| Error::io(format!("cache {}", cache.root.display()), e))?;
                        progress.add(n as u64);
                        if size.is_some_and(|s| inc.written > s) {
                            return Err(Error::new(
                                self.what(),
                                format!(
                                    "{what}: the registry sent more than the {} bytes the manifest lists",
                                    size.unwrap_or(0)
                                ),
                                "the registry served corrupt data; nothing was kept",
                            ));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Some(e.to_string()),
                }
            };
            let short = size.is_some_and(|s| inc.written < s);
            match (dropped, short) {
                (None, false) => break,
                (why, _) => {
                    tries += 1;
                    let why = why.unwrap_or_else(|| {
                        format!("connection closed after {} of {} bytes", inc.written, size.unwrap_or(0))
                    });
                    if tries >= ATTEMPTS {
                        return Err(Error::new(
                            self.what(),
                            format!("{what}: transfer incomplete after {ATTEMPTS} attempts: {why}"),
                            "check the network and try again; the download resumes from the cache",
                        ));
                    }
                    self.sleep(tries - 1, None);
                }
            }
        }
        cache.commit(inc, digest, &self.what())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.docker.io/token".into()));
        assert_eq!(p[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(p[2], ("scope".into(), "repository:library/ubuntu:pull".into()));
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((s.as_str(), p[0].1.as_str()), ("basic", "Registry Realm"));
        assert_eq!(pct("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    /// Issue 20, findings 8 and 11, for an HTTPS registry (the tests' fake registries speak
    /// plain HTTP): no redirect from https down to http, no credentials to a plain-HTTP token
    /// service unless listed.
    #[test]
    fn an_https_registry_is_never_downgraded() {
        let r = crate::reference::parse_image_ref("reg.example.org/a/b:1").unwrap();
        let mut c = Client::new(&r, false).unwrap();
        let from = url::Url::parse("https://reg.example.org/v2/a/b/blobs/sha256:0").unwrap();
        let e = c.redirect_target(&from, "http://reg.example.org/x").unwrap_err().to_string();
        assert!(e.contains("drop TLS"), "{e}");
        assert!(c.redirect_target(&from, "https://cdn.example.net/x?sig=1").is_ok());
        assert_eq!(c.redirect_target(&from, "/y").unwrap().as_str(), "https://reg.example.org/y");
        let realm = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(c.realm_refusal(&realm("https://reg.example.org/token")), None);
        assert_eq!(c.realm_refusal(&realm("https://reg.example.org:443/token")), None);
        let why = c.realm_refusal(&realm("http://reg.example.org/token")).unwrap();
        assert!(why.contains("plain HTTP"), "{why}");
        assert!(c.realm_refusal(&realm("https://auth.example.org/token")).is_some());
        c.set_credential_realms(&["http://reg.example.org".into(), "auth.example.org".into()]);
        assert_eq!(c.realm_refusal(&realm("http://reg.example.org/token")), None);
        assert_eq!(c.realm_refusal(&realm("https://auth.example.org/token")), None);
        assert!(c.realm_refusal(&realm("http://auth.example.org/token")).is_some(), "a bare host is https");
        // Docker Hub's token service is its own.
        let hub = Client::new(&crate::reference::parse_image_ref("ubuntu:22.04").unwrap(), false).unwrap();
        assert_eq!(hub.realm_refusal(&realm("https://auth.docker.io/token")), None);
        assert!(hub.realm_refusal(&realm("http://auth.docker.io/token")).is_some());
    }
}
