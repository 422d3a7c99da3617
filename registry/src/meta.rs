//! The image config as berth/Apptainer metadata: `/.singularity.d/env/10-docker2singularity.sh`
//! (Env), `/.singularity.d/runscript` (WorkingDir, Entrypoint + Cmd with Docker's argument
//! rules), `/.singularity.d/labels.json` (the image's labels and where it came from), written the
//! way `berth build` and `apptainer build docker://...` write them.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::flatten::{Kind, Meta, Node, Tree};

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn valid_env_name(k: &str) -> bool {
    let mut b = k.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

pub fn env_file(config: &Value) -> String {
    let mut env = String::from("#!/bin/sh\n");
    for kv in config["Env"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
        if let Some((k, v)) = kv.split_once('=') {
            if valid_env_name(k) {
                env.push_str(&format!("export {k}={}\n", shell_quote(v)));
            }
        }
    }
    env
}

pub fn runscript(config: &Value) -> String {
    let words = |key: &str| -> Vec<String> {
        config[key].as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(shell_quote).collect()
    };
    let (entrypoint, cmd) = (words("Entrypoint"), words("Cmd"));
    let mut s = String::from("#!/bin/sh\n");
    if let Some(dir) = config["WorkingDir"].as_str().filter(|d| !d.is_empty()) {
        s.push_str(&format!("cd {} || exit 1\n", shell_quote(dir)));
    }
    // Docker's rules: arguments replace Cmd and are appended to Entrypoint.
    let cmd_words = cmd.join(" ");
    let line = match (entrypoint.is_empty(), cmd.is_empty()) {
        (true, true) => "exec /bin/sh \"$@\"".to_string(),
        (true, false) => format!("if [ $# -gt 0 ]; then exec \"$@\"; fi\nexec {cmd_words}"),
        (false, _) => {
            let ep = entrypoint.join(" ");
            format!("if [ $# -gt 0 ]; then exec {ep} \"$@\"; fi\nexec {ep} {cmd_words}")
        }
    };
    s.push_str(line.trim_end());
    s.push('\n');
    s
}

pub fn labels(config: &Value, source: &str, digest: Option<&str>) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = config["Labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default();
    l.insert("org.berth.source".into(), source.to_string());
    if let Some(d) = digest {
        l.insert("org.berth.source.digest".into(), d.to_string());
    }
    l
}

/// Docker images put the fields under "config"; older `docker save` configs too.
fn fields(config: &Value) -> &Value {
    if config.get("config").is_some_and(|c| c.is_object()) {
        &config["config"]
    } else {
        config
    }
}

/// `labels.json` for an image config.
pub fn labels_json(config: &Value, source: &str, digest: Option<&str>) -> Vec<u8> {
    serde_json::to_vec_pretty(&labels(fields(config), source, digest)).unwrap_or_default()
}

/// Add the metadata files (and their directories) to the tree, replacing the image's own.
pub fn add_to(tree: &mut Tree, config: &Value, source: &str, digest: Option<&str>) {
    let c = fields(config);
    let dir = |mode| Meta { mode, uid: 0, gid: 0, mtime: 0, xattrs: vec![] };
    for d in [".singularity.d", ".singularity.d/env"] {
        if !matches!(tree.nodes.get(d).map(|n| &n.kind), Some(Kind::Dir)) {
            tree.nodes.retain(|k, _| k != d && !k.starts_with(&format!("{d}/")));
            tree.nodes.insert(d.into(), Node { layer: u32::MAX, kind: Kind::Dir, meta: dir(0o755) });
        }
    }
    let json = labels_json(config, source, digest);
    for (p, body, mode) in [
        (".singularity.d/env/10-docker2singularity.sh", env_file(c).into_bytes(), 0o755),
        (".singularity.d/runscript", runscript(c).into_bytes(), 0o755),
        (".singularity.d/labels.json", json, 0o644),
    ] {
        tree.nodes.insert(p.into(), Node { layer: u32::MAX, kind: Kind::Data(body), meta: dir(mode) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_run_semantics() {
        let c: Value = serde_json::from_str(
            r#"{"Env":["PATH=/usr/bin:/bin","X=it's","1BAD=x"],"Entrypoint":["/bin/echo","ep"],"Cmd":["c 1"],"WorkingDir":"/w"}"#,
        )
        .unwrap();
        let e = env_file(&c);
        assert!(e.contains("export PATH='/usr/bin:/bin'\n"));
        assert!(e.contains("export X='it'\\''s'\n"));
        assert!(!e.contains("1BAD"));
        let r = runscript(&c);
        assert!(r.contains("cd '/w' || exit 1\n"));
        assert!(
            r.contains(
                "if [ $# -gt 0 ]; then exec '/bin/echo' 'ep' \"$@\"; fi\nexec '/bin/echo' 'ep' 'c 1'\n"
            ),
            "{r}"
        );
        let r = runscript(&serde_json::json!({"Cmd": ["/bin/sh"]}));
        assert!(r.ends_with("if [ $# -gt 0 ]; then exec \"$@\"; fi\nexec '/bin/sh'\n"), "{r}");
        let l = labels(&serde_json::json!({"Labels": {"a": "b"}}), "docker://h/r:t", Some("sha256:x"));
        assert_eq!(l["a"], "b");
        assert_eq!(l["org.berth.source.digest"], "sha256:x");
    }
}
