//! Image metadata, read from the image's root tree (once mounted): runscript, environment
//! files, labels, help and the definition file. berth writes and reads Apptainer's layout
//! (`/.singularity.d/`), so images built by either tool behave as their authors intended.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub(crate) const META_DIR: &str = ".singularity.d";

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Metadata {
    pub runscript: Option<String>,
    /// `(file name, contents)` of `env/*.sh`, in the order they apply.
    pub env_files: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub help: Option<String>,
    pub definition: Option<String>,
    pub test: Option<String>,
}

/// Largest metadata file read (they are small; a huge one is a broken image).
const MAX_META: u64 = 256 << 10;
/// Most bytes of environment files read in all: a SquashFS of a few megabytes can hold
/// thousands of files of `MAX_META` zeros, and the image must not decide berth's memory.
const MAX_ENV_TOTAL: usize = 1 << 20;

fn read_small(p: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Open first (never blocking: a FIFO in a sandbox directory), then check what was opened.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).ok()?;
    let m = file.metadata().ok()?;
    if !m.is_file() || m.len() > MAX_META {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_META).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The image's environment files, in the order they apply (all a joining task needs).
pub(crate) fn read_env_files(root: &Path) -> Vec<(String, String)> {
    let dir = root.join(META_DIR);
    let mut names: Vec<String> = std::fs::read_dir(dir.join("env"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.ends_with(".sh"))
        .take(4096)
        .collect();
    names.sort();
    let mut total = 0usize;
    let mut env_files = Vec::new();
    for name in names {
        let Some(text) = read_small(&dir.join("env").join(&name)) else { continue };
        total += text.len();
        if total > MAX_ENV_TOTAL {
            tracing::warn!("image environment files beyond {MAX_ENV_TOTAL} bytes ignored, from {name} on");
            break;
        }
        env_files.push((name, text));
    }
    env_files
}

/// Read what the image at `root` carries. Missing pieces are simply absent.
pub(crate) fn read(root: &Path) -> Metadata {
    let dir = root.join(META_DIR);
    let env_files = read_env_files(root);
    let labels = read_small(&dir.join("labels.json"))
        .and_then(|t| serde_json::from_str::<BTreeMap<String, serde_json::Value>>(&t).ok())
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Metadata {
        runscript: read_small(&dir.join("runscript")),
        env_files,
        labels,
        help: read_small(&dir.join("runscript.help")),
        definition: read_small(&dir.join("Singularity")),
        test: read_small(&dir.join("test")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_apptainer_layout() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join(META_DIR);
        std::fs::create_dir_all(d.join("env")).unwrap();
        std::fs::write(d.join("runscript"), "#!/bin/sh\nexec app \"$@\"\n").unwrap();
        std::fs::write(d.join("env/90-environment.sh"), "export A=1\n").unwrap();
        std::fs::write(d.join("env/01-base.sh"), "B=2\n").unwrap();
        std::fs::write(d.join("env/README"), "not env").unwrap();
        std::fs::write(d.join("labels.json"), r#"{"Author":"me","n":3}"#).unwrap();
        let m = read(t.path());
        assert!(m.runscript.unwrap().contains("exec app"));
        let names: Vec<&str> = m.env_files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["01-base.sh", "90-environment.sh"]);
        assert_eq!(m.labels.get("Author").map(String::as_str), Some("me"));
        assert_eq!(m.labels.get("n").map(String::as_str), Some("3"));
        assert!(m.help.is_none());
    }
}
