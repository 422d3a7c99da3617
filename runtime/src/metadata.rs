//! Image metadata, read from the image's root tree (once mounted): runscript, environment
//! files, labels, help and the definition file. berth writes and reads Apptainer's layout
//! (`/.singularity.d/`), so images built by either tool behave as their authors intended.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub const META_DIR: &str = ".singularity.d";

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
const MAX_META: u64 = 4 << 20;

fn read_small(p: &Path) -> Option<String> {
    let m = std::fs::metadata(p).ok()?;
    if !m.is_file() || m.len() > MAX_META {
        return None;
    }
    std::fs::read(p).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The image's environment files, in the order they apply (all a joining task needs).
pub fn read_env_files(root: &Path) -> Vec<(String, String)> {
    let dir = root.join(META_DIR);
    let mut env_files: Vec<(String, String)> = std::fs::read_dir(dir.join("env"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.ends_with(".sh") {
                return None;
            }
            Some((name, read_small(&e.path())?))
        })
        .collect();
    env_files.sort();
    env_files
}

/// Read what the image at `root` carries. Missing pieces are simply absent.
pub fn read(root: &Path) -> Metadata {
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
