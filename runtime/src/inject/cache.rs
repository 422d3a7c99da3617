//! The node's host library discovery, kept in the user's state directory.
//!
//! Discovery reads the loader cache, the ELF headers of every fabric library, plugin and
//! dependency and the plugin directories: on a small node about as long as the rest of a
//! container's start. Its answer depends only on the site configuration, what was asked
//! (`--mpi`, `--nv` and the GPU variables that decide GPU support), and the host's library
//! files. So it is computed once and reused while all of those stay the same: the entry
//! records the identity (device, inode, size, mtime, ctime) of the loader cache, of every
//! library and directory it binds, and of the site's extra library directories, and is
//! thrown away when any of them changed (a package upgrade, `ldconfig`, a new provider).
//!
//! GPU plans are not kept: they also depend on device nodes and the driver's state.
//! The cache is only a shortcut: any problem reading or writing it means discovering anew.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{InjectConfig, InjectPlan, InjectRequest};

/// The variables [`super::discover`] reads from the caller's environment.
/// (`SLURM_CONF`: where the Slurm client tools' configuration is, `inject.scheduler_clients`.)
const ENV_READ: &[&str] = &[
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_MPS_PIPE_DIRECTORY",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "SLURM_CONF",
];

/// What identifies one version of a file or directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    path: PathBuf,
    id: Option<(u64, u64, u64, i64, i64, i64, i64)>,
}

impl Stamp {
    fn of(path: &Path) -> Stamp {
        let id = std::fs::metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()));
        Stamp { path: path.to_path_buf(), id }
    }

    fn still_valid(&self) -> bool {
        *self == Stamp::of(&self.path)
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    stamps: Vec<Stamp>,
    plan: InjectPlan,
}

/// Where discovery for one configuration and request is kept, and its full key.
pub(super) struct Slot {
    file: PathBuf,
    key: String,
}

/// The slot for this discovery, keyed by everything it reads besides the host's files.
pub(super) fn slot(
    state_dir: &Path,
    cfg: &InjectConfig,
    host_root: &Path,
    req: &InjectRequest,
    env: &dyn Fn(&str) -> Option<String>,
) -> Slot {
    let vars: Vec<(&str, Option<String>)> = ENV_READ.iter().map(|v| (*v, env(v))).collect();
    // The program that discovers, not only its version: a rebuilt or upgraded berth may
    // discover differently.
    let exe = std::env::current_exe().map(|p| Stamp::of(&p)).ok();
    let key = serde_json::json!({
        "berth": env!("CARGO_PKG_VERSION"),
        "exe": exe,
        "config": cfg,
        "root": host_root,
        "mpi": req.mpi,
        "nvidia": req.nvidia,
        "rocm": req.rocm,
        "gpus": req.gpus,
        "env": vars,
    })
    .to_string();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    Slot { file: state_dir.join(format!("inject-{:016x}.json", h.finish())), key }
}

/// Every file whose change can change what discovery finds.
fn stamps(cfg: &InjectConfig, host_root: &Path, plan: &InjectPlan) -> Vec<Stamp> {
    let mut paths: Vec<PathBuf> = vec![super::rooted(host_root, Path::new("/etc/ld.so.cache"))];
    paths.extend(cfg.extra_lib_dirs.iter().map(|d| super::rooted(host_root, d)));
    paths.extend(plan.items.iter().map(|i| i.host_path.clone()));
    if let Some(clients) = &plan.clients {
        // A client tool installed or removed changes its directory.
        paths.extend(clients.items.iter().map(|i| i.host_path.clone()));
        paths.extend(cfg.program_dirs.iter().map(|d| super::rooted(host_root, d)));
    }
    paths.extend(plan.mpi_replace.iter().map(|r| r.host_path.clone()));
    paths.sort();
    paths.dedup();
    paths.iter().map(|p| Stamp::of(p)).collect()
}

/// The kept plan of `slot`, if there is one and the host's files are unchanged.
pub(super) fn load(slot: &Slot) -> Option<InjectPlan> {
    let text = std::fs::read(&slot.file).ok()?;
    let entry: Entry = serde_json::from_slice(&text).ok()?;
    (entry.key == slot.key && entry.stamps.iter().all(Stamp::still_valid)).then_some(entry.plan)
}

/// Keep `plan` in `slot` (not GPU plans, see the module's notes). Best effort.
pub(super) fn store(slot: &Slot, cfg: &InjectConfig, host_root: &Path, plan: &InjectPlan) {
    if plan.nvidia || plan.rocm {
        return;
    }
    let entry = Entry { key: slot.key.clone(), stamps: stamps(cfg, host_root, plan), plan: plan.clone() };
    let Ok(text) = serde_json::to_vec(&entry) else { return };
    // Written aside and renamed, so that a concurrent start reads a whole entry or none.
    let tmp = slot.file.with_extension(format!("{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .and_then(|()| std::fs::rename(&tmp, &slot.file));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{InjectItem, ItemKind, MpiMode};
    use super::*;

    fn plan_binding(lib: &Path) -> InjectPlan {
        let mut plan = InjectPlan::empty(super::super::Arch::X86_64, MpiMode::Hybrid);
        plan.items.push(InjectItem {
            host_path: lib.to_path_buf(),
            container_path: "/.berth/host/lib/libfab.so.1".into(),
            kind: ItemKind::File,
            readonly: true,
            why: "host fabric library".into(),
        });
        plan
    }

    #[test]
    fn kept_plan_is_reused_until_a_bound_file_or_the_request_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("host");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/ld.so.cache"), b"cache v1").unwrap();
        let lib = root.join("libfab.so.1");
        std::fs::write(&lib, b"library v1").unwrap();
        let cfg = InjectConfig::default();
        let req = InjectRequest::default();
        let no_env = |_: &str| None;
        let slot = slot(dir.path(), &cfg, &root, &req, &no_env);
        assert!(load(&slot).is_none(), "nothing kept yet");

        let plan = plan_binding(&lib);
        store(&slot, &cfg, &root, &plan);
        assert_eq!(load(&slot), Some(plan.clone()));

        // Another request, GPU variable or configuration has a slot of its own.
        let other = InjectRequest { mpi: Some(MpiMode::None), ..InjectRequest::default() };
        assert!(load(&super::slot(dir.path(), &cfg, &root, &other, &no_env)).is_none());
        let gpus = |k: &str| (k == "SLURM_STEP_GPUS").then(|| "0".to_string());
        assert!(load(&super::slot(dir.path(), &cfg, &root, &req, &gpus)).is_none());

        // A replaced library (a package upgrade) makes the kept plan stale.
        std::fs::write(&lib, b"library v2, longer").unwrap();
        assert!(load(&slot).is_none());
        store(&slot, &cfg, &root, &plan);
        assert!(load(&slot).is_some());
        // So does a new loader cache (ldconfig after installing something).
        std::fs::remove_file(root.join("etc/ld.so.cache")).unwrap();
        std::fs::write(root.join("etc/ld.so.cache"), b"cache v2").unwrap();
        assert!(load(&slot).is_none());

        // A damaged entry is ignored, and GPU plans are never kept.
        std::fs::write(&slot.file, b"{not json").unwrap();
        assert!(load(&slot).is_none());
        let mut gpu = plan_binding(&lib);
        gpu.nvidia = true;
        std::fs::remove_file(&slot.file).unwrap();
        store(&slot, &cfg, &root, &gpu);
        assert!(load(&slot).is_none());
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
