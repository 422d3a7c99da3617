//! `BERTH_*` options a job passes with `qsub -v` (or exports before submitting with `-V`).

use std::path::{Path, PathBuf};

use berth_runtime::inject::MpiMode;
use berth_runtime::request::BindSpec;

/// Options berth-pbs understands. Anything else starting with `BERTH_` is refused, so a typo
/// never silently runs the job without what the user asked for.
pub const KNOWN: &[(&str, &str)] = &[
    ("BERTH_BIND", "binds SRC[:DST[:ro|rw]], comma separated"),
    ("BERTH_WORKDIR", "working directory inside (default: $PBS_O_WORKDIR)"),
    ("BERTH_CLEANENV", "1: pass only scheduler/MPI/terminal variables"),
    ("BERTH_NO_HOME", "1: do not bind $HOME"),
    ("BERTH_WRITABLE_TMPFS", "1: a throwaway writable layer over the image"),
    ("BERTH_CONFIG", "site configuration file"),
    ("BERTH_LOG", "log filter"),
    ("BERTH_CONTAINER", "set by berth inside containers"),
    ("BERTH_NV", "1: the host's NVIDIA driver stack inside (like `berth exec --nv`)"),
    ("BERTH_ROCM", "1: the host's AMD GPUs and ROCm libraries inside (like `berth exec --rocm`)"),
    ("BERTH_MPI", "hybrid|host|none: the MPI model (like `berth exec --mpi=`)"),
    ("BERTH_PBS_SSH", "ssh command used by the rsh agent"),
];

/// `BERTH_ENV_NAME=value` sets NAME inside (handled by the runtime's planner).
pub const ENV_PREFIX: &str = "BERTH_ENV_";

/// Environment variable that carries the options to remote nodes (rsh agent) and into the
/// container (where `BERTH_*` variables are not passed): a JSON list of [name, value].
pub const CARRIED: &str = "PBS_BERTH_OPTIONS";

#[derive(Debug, Default, Clone)]
pub struct Options {
    pub binds: Vec<BindSpec>,
    pub workdir: Option<PathBuf>,
    pub cleanenv: bool,
    pub no_home: bool,
    pub writable_tmpfs: bool,
    pub nvidia: bool,
    pub rocm: bool,
    pub mpi: Option<MpiMode>,
}

fn flag(name: &str, v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "no" | "false" | "off" => Ok(false),
        "1" | "yes" | "true" | "on" => Ok(true),
        _ => Err(format!("{name}={v:?}: expected 1/yes/true or 0/no/false")),
    }
}

/// Parse options from `(name, value)` pairs (the process environment, or a job's
/// Variable_List). Errors are complete sentences for the job's output.
pub fn parse<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Options, String> {
    let mut o = Options::default();
    for (k, v) in vars {
        if !k.starts_with("BERTH_") || k.starts_with(ENV_PREFIX) {
            continue;
        }
        match k {
            "BERTH_BIND" => o.binds.extend(BindSpec::parse_list(v).map_err(|e| format!("BERTH_BIND: {e}"))?),
            "BERTH_WORKDIR" => {
                let p = PathBuf::from(v);
                if !p.is_absolute() {
                    return Err(format!("BERTH_WORKDIR={v:?}: must be an absolute path inside the image"));
                }
                o.workdir = Some(p)
            }
            "BERTH_CLEANENV" => o.cleanenv = flag(k, v)?,
            "BERTH_NO_HOME" => o.no_home = flag(k, v)?,
            "BERTH_WRITABLE_TMPFS" => o.writable_tmpfs = flag(k, v)?,
            "BERTH_NV" => o.nvidia = flag(k, v)?,
            "BERTH_ROCM" => o.rocm = flag(k, v)?,
            "BERTH_MPI" => {
                o.mpi = Some(match v.trim() {
                    "hybrid" => MpiMode::Hybrid,
                    "host" => MpiMode::Host,
                    "none" => MpiMode::None,
                    _ => return Err(format!("BERTH_MPI={v:?}: use hybrid, host or none")),
                })
            }
            _ if KNOWN.iter().any(|(n, _)| *n == k) => {}
            _ => {
                let known: Vec<&str> = KNOWN
                    .iter()
                    .map(|(n, _)| *n)
                    .filter(|n| !matches!(*n, "BERTH_CONFIG" | "BERTH_LOG" | "BERTH_CONTAINER"))
                    .collect();
                return Err(format!(
                    "unknown option {k} (berth-pbs knows {}, and BERTH_ENV_NAME=value to set NAME inside); fix the name in `qsub -v`",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(o)
}

/// Which GPU stacks a job gets without asking, as `(nvidia, rocm)`: when pbs_mom allocated
/// GPUs to the job on this node, the node's own kind under the site's "auto", as under Slurm:
/// AMD's on a node with only AMD GPUs, NVIDIA's otherwise.
///
/// Allocated means a GPU is named: a line in the file `PBS_GPUFILE` names, or a device in
/// `CUDA_VISIBLE_DEVICES`/`ROCR_VISIBLE_DEVICES` (OpenPBS' cgroup hook, TORQUE's
/// exec_gpus-derived variables). The variable `PBS_GPUFILE` alone means nothing: TORQUE sets
/// it for every job with a node file (`start_exec.c` `InitUserEnv`, next to `PBS_NODEFILE`)
/// and writes the file only for jobs given GPUs (`write_gpus_to_file`, one `HOST-gpuN` line
/// per GPU).
pub fn gpus_allocated(
    cfg: &berth_runtime::config::Config,
    env: impl Fn(&str) -> Option<String>,
) -> (bool, bool) {
    use berth_runtime::inject::GpuMode;
    let allocated = env("PBS_GPUFILE").is_some_and(|f| gpu_file_names_gpus(Path::new(&f)))
        || ["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"]
            .iter()
            .any(|v| env(v).is_some_and(|v| !v.trim().is_empty()));
    if !allocated {
        return (false, false);
    }
    let amd = berth_runtime::inject::amd_gpus_only(&cfg.inject.host_root);
    (cfg.inject.nvidia == GpuMode::Auto && !amd, cfg.inject.rocm == GpuMode::Auto && amd)
}

/// Whether TORQUE's GPU file lists a GPU: missing, unreadable or blank is none.
fn gpu_file_names_gpus(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.iter().any(|c| !c.is_ascii_whitespace()))
}

/// The `BERTH_*` pairs of the environment, for [`CARRIED`].
pub fn carried_from_env() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| k.starts_with("BERTH_") && k != "BERTH_CONTAINER").collect()
}

/// Restore carried options into this process's environment (without overriding any set).
pub fn restore_carried() {
    let Ok(text) = std::env::var(CARRIED) else { return };
    let Ok(pairs) = serde_json::from_str::<Vec<(String, String)>>(&text) else { return };
    for (k, v) in pairs {
        if k.starts_with("BERTH_") && std::env::var_os(&k).is_none() {
            std::env::set_var(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_options() {
        let o = parse([
            ("BERTH_BIND", "/a,/b:/c:ro"),
            ("BERTH_CLEANENV", "yes"),
            ("BERTH_ENV_X", "1"),
            ("HOME", "/h"),
        ])
        .unwrap();
        assert_eq!(o.binds.len(), 2);
        assert!(o.cleanenv && !o.no_home);
    }

    #[test]
    fn unknown_and_bad_options() {
        assert!(parse([("BERTH_BINDS", "/a")]).unwrap_err().contains("unknown option BERTH_BINDS"));
        assert!(parse([("BERTH_CLEANENV", "maybe")]).unwrap_err().contains("BERTH_CLEANENV"));
        assert!(parse([("BERTH_WORKDIR", "rel")]).unwrap_err().contains("absolute"));
        assert!(parse([("BERTH_BIND", "/a:rel")]).unwrap_err().contains("BERTH_BIND"));
        assert!(parse([("BERTH_MPI", "openmpi")]).unwrap_err().contains("use hybrid, host or none"));
        assert!(parse([("BERTH_NV", "gpu")]).unwrap_err().contains("BERTH_NV"));
        let o = parse([("BERTH_MPI", "host"), ("BERTH_NV", "1")]).unwrap();
        assert_eq!((o.mpi, o.nvidia, o.rocm), (Some(MpiMode::Host), true, false));
        assert!(parse([("BERTH_ROCM", "1")]).unwrap().rocm);
        assert!(parse([("BERTH_ROCM", "amd")]).unwrap_err().contains("BERTH_ROCM"));
    }

    #[test]
    fn gpus_come_from_the_gpu_files_content() {
        let cfg = berth_runtime::config::Config::default();
        let dir = tempfile::tempdir().unwrap();
        let (listed, blank) = (dir.path().join("1.srvgpu"), dir.path().join("2.srvgpu"));
        std::fs::write(&listed, "node-a-gpu0\nnode-a-gpu1\n").unwrap();
        std::fs::write(&blank, "\n").unwrap();
        let missing = dir.path().join("3.srvgpu");
        let with = |vars: Vec<(&'static str, String)>| {
            gpus_allocated(&cfg, |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
        };
        let file = |p: &Path| vec![("PBS_GPUFILE", p.display().to_string())];
        let any = |(nv, rocm): (bool, bool)| nv || rocm;
        assert!(any(with(file(&listed))), "a file naming GPUs");
        assert!(!any(with(file(&missing))), "TORQUE names the file for every job: no file, no GPUs");
        assert!(!any(with(file(&blank))));
        assert!(!any(with(vec![])));
        assert!(any(with(vec![("CUDA_VISIBLE_DEVICES", "0".into())])));
        assert!(!any(with(vec![("CUDA_VISIBLE_DEVICES", " ".into())])));
    }
}
