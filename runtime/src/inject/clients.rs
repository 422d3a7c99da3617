//! The batch system's client tools, lent by the host (`inject.scheduler_clients`,
//! `inject.host_programs`, `inject.host_paths`).
//!
//! A job script that runs in an image calls `qstat`, `pbsdsh` or `srun` like any other job
//! script, but images rarely carry those tools, and a copy in the image would not match the
//! site's server anyway. So, where the site asks for it, the host's own commands appear in
//! the container's program directory (on `PATH` after the image's own), with the libraries
//! they need (`libtorque`, `libslurmfull`, found and closed over like the fabric libraries)
//! and the files they read at the host's paths (the server name, `slurm.conf`, munge's
//! socket).
//!
//! These are host programs run with the image's C library, so they get the same glibc check as
//! every injected library; but they are a convenience, not what the job asked for: an image
//! that cannot run them (no glibc, or an older one) gets none of them and a note, never a
//! refusal ([`super::finish_for_image`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::closure::{rooted, FoundLib, LibResolver};
use super::config::{InjectConfig, SchedulerClients};
use super::{push_glibc_check, InjectItem, InjectPlan, ItemKind};
use crate::error::{Error, Result};

/// What one batch system's client side is made of. Everything here is optional: a node has
/// the parts its installation has.
struct Preset {
    programs: &'static [&'static str],
    /// Files and directories the tools read, bound at the same path.
    paths: &'static [&'static str],
    /// Libraries the tools load with `dlopen` (so not in any `DT_NEEDED`).
    dlopened: &'static [&'static str],
}

/// TORQUE's clients find their server in `$PBS_SERVER_HOME/server_name` (`/var/spool/torque`
/// unless built otherwise) and authenticate through trqauthd's socket in `/tmp`, which berth
/// binds anyway. `pbsdsh` reaches the local mom over TCP: the container shares the network.
const TORQUE: Preset = Preset {
    programs: &[
        "qstat", "qsub", "qdel", "qalter", "qhold", "qrls", "qsig", "qselect", "qrerun", "pbsdsh",
        "pbsnodes", "tracejob",
    ],
    paths: &["/var/spool/torque/server_name", "/var/spool/torque/torque.cfg"],
    dlopened: &[],
};

/// OpenPBS keeps its commands under `PBS_EXEC` (named in `/etc/pbs.conf`, `/opt/pbs` by
/// default), which they read to find the server.
const OPENPBS: Preset = Preset {
    programs: &[
        "qstat",
        "qsub",
        "qdel",
        "qalter",
        "qhold",
        "qrls",
        "qsig",
        "qselect",
        "qrerun",
        "pbsdsh",
        "pbsnodes",
        "tracejob",
        "pbs_tmrsh",
        "pbs_attach",
    ],
    paths: &["/etc/pbs.conf"],
    dlopened: &[],
};

/// Slurm's commands read `slurm.conf` (`/etc/slurm`, or where `SLURM_CONF` says), load their
/// plugins from the directory of `libslurmfull` (Debian's `PluginDir`), authenticate through
/// munge's socket, and `auth_munge.so` loads `libmunge` with `dlopen`.
const SLURM: Preset = Preset {
    programs: &[
        "srun", "sbatch", "salloc", "scontrol", "squeue", "scancel", "sinfo", "sacct", "sstat", "sattach",
        "sprio", "sshare",
    ],
    paths: &["/etc/slurm", "/run/munge"],
    dlopened: &["libmunge.so.2"],
};

fn preset(which: SchedulerClients) -> &'static Preset {
    match which {
        SchedulerClients::Torque => &TORQUE,
        SchedulerClients::Openpbs => &OPENPBS,
        SchedulerClients::Slurm => &SLURM,
    }
}

/// Whether the site lends any client tools.
pub(super) fn wanted(cfg: &InjectConfig) -> bool {
    !cfg.scheduler_clients.is_empty() || !cfg.host_programs.is_empty() || !cfg.host_paths.is_empty()
}

/// A program found on the host.
enum Program {
    /// Dynamically or statically linked, for this architecture.
    Elf(FoundLib),
    /// A script or other file: bound as it is (its interpreter must be in the image).
    Other { listed: PathBuf, rooted: PathBuf },
}

/// Plan the client tools: a plan of their own ([`InjectPlan::clients`]) whose items and checks
/// join the main plan only if the image can run them. `skip` holds the SONAMEs the main plan
/// already binds.
pub(super) fn discover(
    cfg: &InjectConfig,
    resolver: &LibResolver,
    skip: &BTreeSet<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<InjectPlan> {
    let mut part = InjectPlan::empty(resolver.arch, cfg.mpi);
    let mut programs: Vec<(String, Program, String)> = vec![];
    let mut paths: Vec<(PathBuf, String)> = vec![];
    let mut libs: Vec<(FoundLib, String)> = vec![];
    let mut lib_dirs_first: Vec<PathBuf> = vec![];

    for &which in &cfg.scheduler_clients {
        let p = preset(which);
        let why = format!("{which} client (inject.scheduler_clients)");
        let mut dirs = cfg.program_dirs.clone();
        let mut extra_paths: Vec<PathBuf> = vec![];
        if which == SchedulerClients::Openpbs {
            let exec = pbs_exec(&resolver.root);
            dirs.insert(0, exec.join("bin"));
            lib_dirs_first.push(exec.join("lib"));
        }
        if which == SchedulerClients::Slurm {
            // A configuration outside /etc/slurm, named by the job's environment.
            let conf = env("SLURM_CONF").map(PathBuf::from).filter(|c| c.is_absolute());
            if let Some(dir) = conf.as_ref().and_then(|c| c.parent()) {
                extra_paths.push(dir.to_path_buf());
            }
            let conf = conf.unwrap_or_else(|| PathBuf::from("/etc/slurm/slurm.conf"));
            if let Some(entry) = slurm_user_entry(&resolver.root, &conf) {
                part.user_entries.push(entry);
            }
        }
        let mut missing = vec![];
        for name in p.programs {
            match find_program(resolver, name, &dirs)? {
                Some(found) => programs.push((name.to_string(), found, why.clone())),
                None => missing.push(*name),
            }
        }
        if missing.len() == p.programs.len() {
            part.notes.push(format!("{which} clients: none of {} on this host", p.programs.join(", ")));
            continue;
        }
        if !missing.is_empty() {
            part.notes.push(format!("{which} clients not on this host: {}", missing.join(", ")));
        }
        for path in p.paths.iter().map(PathBuf::from).chain(extra_paths) {
            if rooted(&resolver.root, &path).exists() {
                paths.push((path, why.clone()));
            } else {
                part.notes.push(format!("{which} clients: {} is not on this host", path.display()));
            }
        }
        for soname in p.dlopened {
            match resolver.find(soname)? {
                Some(lib) => libs.push((lib, why.clone())),
                None => part.notes.push(format!("{which} clients: {soname} is not on this host")),
            }
        }
    }

    for name in &cfg.host_programs {
        let found = if name.starts_with('/') {
            find_program(resolver, name, &[])?
        } else {
            find_program(resolver, name, &cfg.program_dirs)?
        };
        let Some(found) = found else {
            let dirs: Vec<String> = cfg.program_dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(Error::inject(
                format!("host program {name}"),
                format!("not found on this host (looked in {})", dirs.join(", ")),
                "install it, correct inject.program_dirs, or remove it from inject.host_programs in berth.toml",
            ));
        };
        let base = Path::new(name).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        programs.push((base, found, "site program (inject.host_programs)".into()));
    }
    for path in &cfg.host_paths {
        if !rooted(&resolver.root, path).exists() {
            return Err(Error::inject(
                format!("host path {}", path.display()),
                "not found on this host (listed in inject.host_paths in berth.toml)",
                "create it, or remove it from inject.host_paths",
            ));
        }
        paths.push((path.clone(), "site file (inject.host_paths)".into()));
    }

    // The programs' libraries, found as their own loader would (RUNPATH first), then OpenPBS's
    // library directory.
    let elf: Vec<FoundLib> = programs
        .iter()
        .filter_map(|(_, p, _)| match p {
            Program::Elf(lib) => Some(lib.clone()),
            Program::Other { .. } => None,
        })
        .collect();
    let mut roots = elf.clone();
    roots.extend(libs.iter().map(|(l, _)| l.clone()));
    let mut seen: BTreeSet<String> = skip.clone();
    seen.extend(libs.iter().map(|(l, _)| l.soname.clone()));
    let (deps, notes) = if lib_dirs_first.is_empty() {
        resolver.closure(&roots, &seen)?
    } else {
        let with_first = LibResolver {
            root: resolver.root.clone(),
            arch: resolver.arch,
            cache: resolver.cache.clone(),
            extra_dirs: lib_dirs_first.iter().chain(&resolver.extra_dirs).cloned().collect(),
            map_files: resolver.map_files,
        };
        with_first.closure(&roots, &seen)?
    };
    part.notes.extend(notes);
    for dep in deps {
        // Slurm's commands load their plugins from libslurmfull's own directory.
        if dep.soname.starts_with("libslurmfull") {
            if let Some(dir) = dep.real.parent() {
                paths.push((dir.to_path_buf(), "Slurm plugins (the directory of libslurmfull)".into()));
            }
        }
        let why = format!("needed by host client tools ({})", dep.soname);
        libs.push((dep, why));
    }

    for (name, program, why) in &programs {
        let (host_path, listed) = match program {
            Program::Elf(lib) => {
                if lib.facts.is_dynamic {
                    push_glibc_check(&mut part, lib);
                }
                (lib.rooted.clone(), lib.listed.clone())
            }
            Program::Other { listed, rooted } => (rooted.clone(), listed.clone()),
        };
        if part.items.iter().any(|i| i.container_path == cfg.container_bin_dir.join(name)) {
            continue;
        }
        part.items.push(InjectItem {
            host_path,
            container_path: cfg.container_bin_dir.join(name),
            kind: ItemKind::File,
            readonly: true,
            why: format!("{why}: {}", listed.display()),
        });
    }
    let mut bound_libs = BTreeSet::new();
    for (lib, why) in &libs {
        if !bound_libs.insert(lib.soname.clone()) {
            continue;
        }
        push_glibc_check(&mut part, lib);
        part.items.push(InjectItem {
            host_path: lib.rooted.clone(),
            container_path: cfg.container_lib_dir.join(&lib.soname),
            kind: ItemKind::File,
            readonly: true,
            why: why.clone(),
        });
    }
    let mut bound_paths = BTreeSet::new();
    for (path, why) in paths {
        if !bound_paths.insert(path.clone()) {
            continue;
        }
        let at = rooted(&resolver.root, &path);
        let Ok(meta) = std::fs::metadata(&at) else { continue };
        use std::os::unix::fs::FileTypeExt;
        let kind = if meta.is_dir() {
            ItemKind::Dir
        } else if meta.file_type().is_socket() {
            ItemKind::Socket
        } else if meta.is_file() {
            ItemKind::File
        } else {
            part.notes.push(format!("{}: not a file, directory or socket; not bound", path.display()));
            continue;
        };
        part.items.push(InjectItem { host_path: at, container_path: path, kind, readonly: true, why });
    }
    if part.items.iter().any(|i| i.container_path.starts_with(&cfg.container_bin_dir)) {
        part.bin_dirs.push(cfg.container_bin_dir.clone());
    }
    if part.items.iter().any(|i| i.container_path.starts_with(&cfg.container_lib_dir)) {
        part.lib_dirs.push(cfg.container_lib_dir.clone());
    }
    Ok(part)
}

/// The first `dirs/name` (or `name` itself when absolute) that is a program for this host.
fn find_program(resolver: &LibResolver, name: &str, dirs: &[PathBuf]) -> Result<Option<Program>> {
    let candidates: Vec<PathBuf> = if name.starts_with('/') {
        vec![PathBuf::from(name)]
    } else {
        dirs.iter().map(|d| d.join(name)).collect()
    };
    for listed in candidates {
        let at = rooted(&resolver.root, &listed);
        let Ok(meta) = std::fs::metadata(&at) else { continue };
        if !meta.is_file() {
            continue;
        }
        let mut head = [0u8; 4];
        let is_elf = std::fs::File::open(&at)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok_and(|()| head == *b"\x7fELF");
        if !is_elf {
            let real = super::closure::resolve_in_root(&resolver.root, &listed).unwrap_or(listed.clone());
            return Ok(Some(Program::Other { rooted: rooted(&resolver.root, &real), listed }));
        }
        // Another architecture's program is skipped, as the shell's PATH search would fail on it.
        if let Some(found) = resolver.try_path(name, &listed)? {
            return Ok(Some(Program::Elf(found)));
        }
    }
    Ok(None)
}

/// The host's `/etc/passwd` line of `SlurmUser` (from `slurm.conf`), which every Slurm
/// command looks up when it reads the configuration. None when it is root (in every image)
/// or cannot be found.
fn slurm_user_entry(root: &Path, conf: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(rooted(root, conf)).ok()?;
    let user = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("SlurmUser"))
        .map(|(_, v)| v.trim().to_string())?;
    if user.is_empty() || user == "root" {
        return None;
    }
    let passwd = std::fs::read_to_string(rooted(root, Path::new("/etc/passwd"))).ok()?;
    let line = passwd.lines().find(|l| l.split(':').next() == Some(user.as_str()))?;
    Some((user, line.to_string()))
}

/// OpenPBS's `PBS_EXEC` from the host's `/etc/pbs.conf`, `/opt/pbs` when it says nothing.
fn pbs_exec(root: &Path) -> PathBuf {
    let conf = std::fs::read_to_string(rooted(root, Path::new("/etc/pbs.conf"))).unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("PBS_EXEC="))
        .map(|v| PathBuf::from(v.trim().trim_matches('"')))
        .find(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/opt/pbs"))
}
