//! What the Slurm plugin and berth-pbs share about schedulers: where a job's image is, what
//! its per-node holder is called, which variables are the scheduler's and the MPI process
//! managers' own, and how to quote a word for a remote shell.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

/// Prefixes of the variables by which a scheduler and the MPI process managers wire a task
/// up: its job and rank, where its peers and the PMI/PMIx server are. They pass into every
/// container (also with `--cleanenv`), and nothing inside may replace them: a rank that lost
/// them cannot find its peers.
///
/// - `SLURM_`, `SLURMD_`, `SPANK_`: Slurm's job, step and task, and its plugins' options;
/// - `PBS_`: TORQUE's and OpenPBS's job (`PBS_JOBID`, `PBS_NODEFILE`, `PBS_MOMPORT`...);
/// - `PMIX_`, `PMI_`: the PMIx and PMI-1/2 clients' server, rank and namespace;
/// - `OMPI_`, `PRTE_`: Open MPI's launcher (orted, prte) and its ranks;
/// - `HYDRA_`: MPICH's launcher.
pub const LAUNCH_PREFIXES: &[&str] =
    &["SLURM_", "SLURMD_", "SPANK_", "PBS_", "PMIX_", "PMI_", "OMPI_", "PRTE_", "HYDRA_"];

/// Prefixes of the MPI and fabric settings a site or user tunes on the host (`MPICH_`,
/// `UCX_`, `FI_` for libfabric). They pass into the container with `--cleanenv` too, but the
/// image and host injection may set them (injection sets `FI_PROVIDER_PATH`, for one).
pub(crate) const TUNING_PREFIXES: &[&str] = &["MPICH_", "UCX_", "FI_"];

/// Whether `name` is one of the scheduler's or process managers' own variables
/// ([`LAUNCH_PREFIXES`]).
pub fn is_launch_var(name: &str) -> bool {
    LAUNCH_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether the host variable `name` passes into a container started with `--cleanenv`
/// because it belongs to the scheduler or to MPI ([`LAUNCH_PREFIXES`], [`TUNING_PREFIXES`]).
pub(crate) fn passes_cleanenv(name: &str) -> bool {
    is_launch_var(name) || TUNING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A job's image path made absolute: a relative one is taken from `base` (the submit
/// directory), else from the current directory. A registry image (`registry_reference`)
/// is kept as its `docker://` reference: the holder converts it on the node.
pub fn resolve_image(image: &str, base: Option<&Path>) -> PathBuf {
    if let Some(r) = registry_reference(image, base) {
        return PathBuf::from(r);
    }
    absolute(image, base)
}

fn absolute(image: &str, base: Option<&Path>) -> PathBuf {
    let p = Path::new(image);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    base.map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"))
        .join(p)
}

/// The prefix of image values that name a registry image.
pub const REGISTRY_PREFIX: &str = "docker://";

/// True when `image` (as [`resolve_image`] returns it) names a registry image, not a file.
pub fn is_registry_image(image: &Path) -> bool {
    image.to_str().is_some_and(|s| s.starts_with(REGISTRY_PREFIX))
}

/// The `docker://` reference a job's image value names, or None for a file path. As pyxis
/// reads `--container-image`: `docker://REF`; `[USER@]REGISTRY#IMAGE[:TAG]` (the `#`
/// separates the registry, `nvcr.io#nvidia/pytorch:24.01-py3`); and any other value that is
/// not an existing file, does not start with `/`, `./`, `../` or `~`, and has a `/` or a
/// `:TAG` (`nvcr.io/hpc/gromacs:2023.2`, `ubuntu:22.04`). A bare word (`vasp.img`) and a
/// missing file with an image file's extension stay paths, so a typo in a file name gets
/// "cannot open the image", not a download from Docker Hub.
pub(crate) fn registry_reference(image: &str, base: Option<&Path>) -> Option<String> {
    if image.starts_with(REGISTRY_PREFIX) {
        return Some(image.to_string());
    }
    if image.is_empty()
        || ["/", "./", "../", "~"].iter().any(|p| image.starts_with(p))
        || image.contains("://")
    {
        return None;
    }
    if let Some((registry, name)) = image.split_once('#') {
        // enroot's `USER@` names a credential; berth reads credentials from the user's files.
        let registry = registry.rsplit_once('@').map_or(registry, |(_, r)| r);
        return Some(format!("{REGISTRY_PREFIX}{registry}/{name}"));
    }
    if !(image.contains('/') || image.contains(':')) || absolute(image, base).exists() {
        return None;
    }
    let lower = image.to_ascii_lowercase();
    if [".sqsh", ".squashfs", ".sif", ".simg", ".img"].iter().any(|e| lower.ends_with(e)) {
        return None;
    }
    Some(format!("{REGISTRY_PREFIX}{image}"))
}

/// Slurm's step id of a job's batch script (`SLURM_BATCH_SCRIPT`).
pub const SLURM_BATCH_STEP: u32 = 0xffff_fffb;
/// Slurm's step id of a job's extern step (`SLURM_EXTERN_CONT`).
pub const SLURM_EXTERN_STEP: u32 = 0xffff_fffc;
/// Slurm's step id of `salloc`'s interactive step (`SLURM_INTERACTIVE_STEP`).
pub(crate) const SLURM_INTERACTIVE_STEP: u32 = 0xffff_fffa;

/// The holder of a Slurm job step on a node: one per step.
pub fn slurm_holder_name(job: u32, step: u32) -> String {
    match step {
        SLURM_BATCH_STEP => format!("slurm-{job}.batch"),
        SLURM_INTERACTIVE_STEP => format!("slurm-{job}.interactive"),
        SLURM_EXTERN_STEP => format!("slurm-{job}.extern"),
        s => format!("slurm-{job}.{s}"),
    }
}

/// The holder of a PBS job on a node: `pbs-<job id>`, characters a holder name cannot hold
/// (array ids: `12[3].server`) replaced by `_`.
pub fn pbs_holder_name(jobid: &str) -> String {
    let id: String = jobid
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-+@".contains(c) { c } else { '_' })
        .take(150)
        .collect();
    format!("pbs-{id}")
}

/// `s` as one word for a POSIX shell: as it is when that is safe, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_images_as_pyxis_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("imgs")).unwrap();
        std::fs::write(dir.path().join("imgs/app:v1"), b"").unwrap();
        let b = Some(dir.path());
        let r = |s: &str| registry_reference(s, b);
        assert_eq!(r("docker://h.io/a/b:1").as_deref(), Some("docker://h.io/a/b:1"));
        assert_eq!(
            r("nvcr.io#nvidia/pytorch:24.01-py3").as_deref(),
            Some("docker://nvcr.io/nvidia/pytorch:24.01-py3")
        );
        assert_eq!(r("joe@nvcr.io#hpc/app").as_deref(), Some("docker://nvcr.io/hpc/app"));
        assert_eq!(r("nvcr.io/hpc/gromacs:2023.2").as_deref(), Some("docker://nvcr.io/hpc/gromacs:2023.2"));
        assert_eq!(r("ubuntu:22.04").as_deref(), Some("docker://ubuntu:22.04"));
        // Paths: explicit, existing, bare words, image files that are missing.
        for p in ["/x/a.sqsh", "./a:b", "../a/b", "~/a/b", "vasp.img", "imgs/app:v1", "missing/x.sif"] {
            assert_eq!(r(p), None, "{p}");
        }
        assert_eq!(resolve_image("imgs/app:v1", b), dir.path().join("imgs/app:v1"));
        assert_eq!(resolve_image("h.io/a:1", b), PathBuf::from("docker://h.io/a:1"));
    }

    #[test]
    fn relative_images_are_taken_from_the_submit_directory() {
        assert_eq!(
            resolve_image("a.sif", Some(Path::new("/home/u/run"))),
            PathBuf::from("/home/u/run/a.sif")
        );
        assert_eq!(resolve_image("/x/a.sif", Some(Path::new("/home/u/run"))), PathBuf::from("/x/a.sif"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(resolve_image("a.sif", None), cwd.join("a.sif"));
    }

    #[test]
    fn holder_names_are_valid_for_every_job() {
        assert_eq!(slurm_holder_name(12, 0), "slurm-12.0");
        assert_eq!(slurm_holder_name(12, SLURM_BATCH_STEP), "slurm-12.batch");
        assert_eq!(slurm_holder_name(12, SLURM_EXTERN_STEP), "slurm-12.extern");
        assert_eq!(pbs_holder_name("12.server.example"), "pbs-12.server.example");
        assert_eq!(pbs_holder_name("12[3].srv"), "pbs-12_3_.srv");
        for name in [pbs_holder_name("a/b c;d"), slurm_holder_name(1, SLURM_INTERACTIVE_STEP)] {
            assert!(crate::holder::valid_name(&name), "{name}");
        }
    }

    #[test]
    fn one_list_of_scheduler_variables() {
        for v in ["SLURM_PROCID", "PMIX_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK", "PBS_JOBID", "HYDRA_PROXY"] {
            assert!(is_launch_var(v) && passes_cleanenv(v), "{v}");
        }
        for v in ["UCX_TLS", "FI_PROVIDER", "MPICH_GPU_SUPPORT_ENABLED"] {
            assert!(!is_launch_var(v) && passes_cleanenv(v), "{v}");
        }
        for v in ["PATH", "LD_LIBRARY_PATH", "HOME", "MYVAR"] {
            assert!(!is_launch_var(v) && !passes_cleanenv(v), "{v}");
        }
    }

    #[test]
    fn words_are_quoted_for_a_remote_shell() {
        assert_eq!(shell_quote("PBS_JOBID=7.srv"), "PBS_JOBID=7.srv");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
