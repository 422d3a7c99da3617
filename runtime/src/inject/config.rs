//! The `[inject]` section of berth.toml: what to take from the host, with defaults that work on
//! a typical InfiniBand + NVIDIA cluster and do nothing harmful elsewhere.
//!
//! ```toml
//! [inject]
//! mpi = "hybrid"                       # default model: hybrid | host | none
//! mpi_allowed = ["hybrid", "none"]     # this site never binds its MPI into images
//! extra_lib_dirs = ["/opt/hpcx/ucx/lib"]
//! extra_libs = ["libhcoll.so.1"]       # must exist on every node
//! fabric_required = true               # IB-only partition: a node without verbs is broken
//! nvidia = "auto"                      # auto | always | never
//! nvidia_capabilities = ["compute", "utility"]
//! scheduler_clients = ["torque"]       # qstat, pbsdsh, libtorque from the host, in every container
//! host_programs = ["/opt/site/bin/quota"]
//! host_paths = ["/etc/site/quota.conf"]
//! rocm = "auto"                        # AMD GPUs: auto | always | never
//! rocm_lib_dirs = ["/opt/rocm/lib"]
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the host's MPI stack is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MpiMode {
    /// The image brings its MPI; berth binds the host's fabric userspace (verbs, rdmacm,
    /// libfabric, UCX) so that MPI reaches the network at native speed.
    #[default]
    Hybrid,
    /// The host's MPI is bound over the image's library of the same SONAME (ABI checked).
    Host,
    /// Nothing MPI- or fabric-related is injected.
    None,
}

impl std::fmt::Display for MpiMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MpiMode::Hybrid => "hybrid",
            MpiMode::Host => "host",
            MpiMode::None => "none",
        })
    }
}

/// A batch system whose client tools the host lends to every container
/// (`inject.scheduler_clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerClients {
    /// TORQUE: `qstat`, `qsub`, `pbsdsh` ... with `libtorque` and the server name file.
    Torque,
    /// OpenPBS / PBS Professional: the commands under `PBS_EXEC/bin` and `/etc/pbs.conf`.
    Openpbs,
    /// Slurm: `srun`, `sbatch`, `scontrol`, `squeue` ... with `libslurm`, the plugins, the
    /// configuration directory and munge's socket.
    Slurm,
}

impl std::fmt::Display for SchedulerClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SchedulerClients::Torque => "torque",
            SchedulerClients::Openpbs => "openpbs",
            SchedulerClients::Slurm => "slurm",
        })
    }
}
/// When a GPU stack (NVIDIA's, AMD's ROCm) is injected.
pub type GpuMode = NvidiaMode;

/// When the NVIDIA driver stack is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NvidiaMode {
    /// With `--nv`, or when the scheduler allocated GPUs to the job (SLURM_STEP_GPUS).
    #[default]
    Auto,
    /// Always (GPU-only partitions).
    Always,
    /// Never, and `--nv` is an error.
    Never,
}

/// `[inject]` of the site configuration: what is injected from the host and how it is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectConfig {
    /// The MPI model when the user does not choose one.
    pub mpi: MpiMode,
    /// The MPI models users may choose (`--mpi=...`). A site whose host MPI must never be
    /// bound into images sets `["hybrid", "none"]`.
    pub mpi_allowed: Vec<MpiMode>,
    /// Host fabric libraries (SONAMEs) for the hybrid and host models. Missing ones are skipped
    /// with a note (a node without InfiniBand has no libibverbs), unless `fabric_required`.
    pub fabric_libs: Vec<String>,
    /// Refuse to start when a `fabric_libs` entry is missing on the host.
    pub fabric_required: bool,
    /// Host MPI libraries (SONAMEs) for `--mpi=host`. The first of them found on the host is
    /// the "primary" one whose ABI is checked against the image's; the others (C++ and
    /// Fortran bindings) follow it. Missing ones are skipped, but at least one must exist.
    pub mpi_libs: Vec<String>,
    /// More host libraries (SONAMEs or absolute paths) always injected; each must exist.
    pub extra_libs: Vec<String>,
    /// Host directories searched for libraries before the host's ld.so.cache (e.g. a vendor
    /// MPI under /opt that is not in the cache).
    pub extra_lib_dirs: Vec<PathBuf>,
    /// The NVIDIA driver stack.
    pub nvidia: NvidiaMode,
    /// Driver capabilities, as in libnvidia-container: compute, utility, video, graphics, ngx.
    pub nvidia_capabilities: Vec<String>,
    /// AMD GPUs (ROCm): with `--rocm`, or when the scheduler allocated GPUs on a node whose
    /// GPUs are AMD's (it has `/dev/kfd` and no NVIDIA driver).
    pub rocm: GpuMode,
    /// Where the host's ROCm libraries are besides the ld.so.cache (ROCm installs under
    /// /opt/rocm and often leaves it out of the cache); `bin/` next to each holds its tools.
    pub rocm_lib_dirs: Vec<PathBuf>,
    /// Bind the host's ROCm libraries; false: only the devices, for images that bring their
    /// own ROCm user space.
    pub rocm_host_libs: bool,
    /// Host environment variables with these prefixes are passed into the container even with
    /// `--cleanenv` (network and MPI tuning).
    pub pass_env_prefixes: Vec<String>,
    /// Where the host's files are found: "/" normally; another tree where the node's system is
    /// mounted elsewhere (and in tests, a fake host tree with stub drivers).
    pub host_root: PathBuf,
    /// Where injected libraries appear inside the container (prepended to LD_LIBRARY_PATH).
    pub container_lib_dir: PathBuf,
    /// Where injected programs (nvidia-smi, ...) appear inside the container (appended to PATH).
    pub container_bin_dir: PathBuf,
    /// Batch systems whose host client tools (commands, their libraries, the files they read)
    /// appear in every container, so job scripts in an image can run `qstat` or `srun`
    /// without carrying them. Parts a node lacks are skipped with a note.
    pub scheduler_clients: Vec<SchedulerClients>,
    /// More host programs (names looked up in `program_dirs`, or absolute paths) that appear in
    /// `container_bin_dir` with the libraries they need; each must exist.
    pub host_programs: Vec<String>,
    /// Host files, directories and sockets bound at the same path (read-only); each must exist.
    pub host_paths: Vec<PathBuf>,
    /// Where `host_programs` and the client tools are looked up on the host, in order.
    pub program_dirs: Vec<PathBuf>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        InjectConfig {
            mpi: MpiMode::Hybrid,
            mpi_allowed: vec![MpiMode::Hybrid, MpiMode::Host, MpiMode::None],
            fabric_libs: s(&[
                "libibverbs.so.1",
                "librdmacm.so.1",
                "libmlx5.so.1",
                "libefa.so.1",
                "libfabric.so.1",
                "libucp.so.0",
                "libuct.so.0",
                "libucs.so.0",
                "libucm.so.0",
                "libpsm2.so.2",
            ]),
            fabric_required: false,
            mpi_libs: s(&[
                "libmpi.so.12",
                "libmpich.so.12",
                "libmpi.so.40",
                "libmpicxx.so.12",
                "libmpichcxx.so.12",
                "libmpifort.so.12",
                "libmpichfort.so.12",
                "libmpi_cxx.so.40",
                "libmpi_mpifh.so.40",
                "libmpi_usempif08.so.40",
                "libmpi_usempi_ignore_tkr.so.40",
            ]),
            extra_libs: vec![],
            extra_lib_dirs: vec![],
            nvidia: NvidiaMode::Auto,
            nvidia_capabilities: s(&["compute", "utility"]),
            rocm: GpuMode::Auto,
            rocm_lib_dirs: vec![PathBuf::from("/opt/rocm/lib")],
            rocm_host_libs: true,
            pass_env_prefixes: s(&[
                "UCX_",
                "OMPI_MCA_",
                "FI_",
                "MLX5_",
                "IBV_",
                "RDMAV_",
                "PSM2_",
                "HFI_",
                "NCCL_",
                "MPICH_",
                "MPIR_CVAR_",
                "I_MPI_",
                "PMIX_",
                "CUDA_MPS_",
            ]),
            host_root: PathBuf::from("/"),
            container_lib_dir: PathBuf::from("/.berth/host/lib"),
            container_bin_dir: PathBuf::from("/.berth/host/bin"),
            scheduler_clients: vec![],
            host_programs: vec![],
            host_paths: vec![],
            program_dirs: ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"]
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

impl InjectConfig {
    /// Problems a site administrator should fix, as `(key, message)`; for `berth config check`
    /// and for the `[inject]` section of [`crate::config::Config`] validation.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.mpi_allowed.contains(&self.mpi) {
            return Err(("mpi", format!("the default model \"{}\" is not in mpi_allowed", self.mpi)));
        }
        for cap in &self.nvidia_capabilities {
            if crate::inject::nvidia::capability_libs(cap).is_none() {
                return Err((
                    "nvidia_capabilities",
                    format!("unknown capability {cap:?} (use compute, utility, video, graphics or ngx)"),
                ));
            }
        }
        for (key, dir) in
            [("container_lib_dir", &self.container_lib_dir), ("container_bin_dir", &self.container_bin_dir)]
        {
            crate::request::check_container_path(dir).map_err(|e| (key, e))?;
        }
        if let Some(d) = self.extra_lib_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(("extra_lib_dirs", format!("{} must be an absolute path", d.display())));
        }
        if let Some(d) = self.rocm_lib_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(("rocm_lib_dirs", format!("{} must be an absolute path", d.display())));
        }
        if let Some(l) = self.extra_libs.iter().find(|l| l.contains('/') && !l.starts_with('/')) {
            return Err(("extra_libs", format!("{l:?}: give a SONAME (libfoo.so.1) or an absolute path")));
        }
        if let Some(d) = self.program_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(("program_dirs", format!("{} must be an absolute path", d.display())));
        }
        if let Some(p) =
            self.host_programs.iter().find(|p| p.is_empty() || (p.contains('/') && !p.starts_with('/')))
        {
            return Err(("host_programs", format!("{p:?}: give a program name (qstat) or an absolute path")));
        }
        for p in &self.host_paths {
            crate::request::check_container_path(p).map_err(|e| ("host_paths", e))?;
            // Binding over the container's own trees would hide the image or berth's files.
            if p == std::path::Path::new("/")
                || ["/proc", "/sys", "/dev"].iter().any(|k| p.starts_with(k))
                || p.starts_with(&self.container_lib_dir)
                || p.starts_with(&self.container_bin_dir)
            {
                return Err(("host_paths", format!("{} cannot be bound from the host", p.display())));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_config_validate_names_the_key() {
        assert!(InjectConfig::default().validate().is_ok());
        let c = InjectConfig { mpi: MpiMode::Host, mpi_allowed: vec![MpiMode::Hybrid], ..Default::default() };
        assert_eq!(c.validate().unwrap_err().0, "mpi");
        let c = InjectConfig { nvidia_capabilities: vec!["display".into()], ..Default::default() };
        assert!(c.validate().unwrap_err().1.contains("display"));
        let c = InjectConfig { container_lib_dir: "host/lib".into(), ..Default::default() };
        assert_eq!(c.validate().unwrap_err().0, "container_lib_dir");
        let c = InjectConfig { extra_lib_dirs: vec!["opt/lib".into()], ..Default::default() };
        assert_eq!(c.validate().unwrap_err().0, "extra_lib_dirs");
        let c = InjectConfig { host_programs: vec!["bin/qstat".into()], ..Default::default() };
        assert_eq!(c.validate().unwrap_err().0, "host_programs");
        for bad in ["etc/slurm", "/", "/proc/self", "/dev/shm", "/.berth/host/bin/x"] {
            let c = InjectConfig { host_paths: vec![bad.into()], ..Default::default() };
            assert_eq!(c.validate().unwrap_err().0, "host_paths", "{bad}");
        }
        let c = InjectConfig { program_dirs: vec!["opt/bin".into()], ..Default::default() };
        assert_eq!(c.validate().unwrap_err().0, "program_dirs");
        let c: InjectConfig =
            toml::from_str("scheduler_clients = [\"torque\", \"slurm\"]\nhost_paths = [\"/etc/slurm\"]\n")
                .unwrap();
        assert_eq!(c.scheduler_clients, vec![SchedulerClients::Torque, SchedulerClients::Slurm]);
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<InjectConfig>("scheduler_clients = [\"lsf\"]\n").is_err());
    }

    #[test]
    fn inject_config_parses_section_and_rejects_typos() {
        let c: InjectConfig =
            toml::from_str("mpi = \"host\"\nnvidia = \"never\"\nextra_lib_dirs = [\"/opt/mpi/lib\"]\n")
                .unwrap();
        assert_eq!(c.mpi, MpiMode::Host);
        assert_eq!(c.nvidia, NvidiaMode::Never);
        assert_eq!(c.extra_lib_dirs, vec![PathBuf::from("/opt/mpi/lib")]);
        assert_eq!(c.fabric_libs, InjectConfig::default().fabric_libs, "unset keys keep defaults");
        let e = toml::from_str::<InjectConfig>("fabric_lib = []\n").unwrap_err().to_string();
        assert!(e.contains("fabric_lib"), "{e}");
        assert!(toml::from_str::<InjectConfig>("mpi = \"replace\"\n").is_err());
    }
}
