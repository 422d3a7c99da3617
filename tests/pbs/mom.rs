//! A pbs_mom emulator: starts `berth-pbs` exactly as TORQUE's pbs_mom does (design.md §5).
//! Each modelled behaviour follows TORQUE 6.1 (adaptivecomputing/torque, `src/resmom/`):
//!
//! - nodes: each emulated node is a network namespace (`ip netns`, loopback only) with its own
//!   `$PBS_HOME` (mom_priv/jobs, aux) and its own berth site configuration;
//! - pbs_mom's environment: at start it replaces its environment with the lines of
//!   `$PBS_HOME/pbs_environment` (`mom_main.c` `parse_command_line` -> `setup_env`);
//!   the emulator's file holds `PATH=/bin:/usr/bin` (what `make install` writes) and the
//!   node's `BERTH_CONFIG` (a real node has `/etc/berth/berth.toml`). Prologue, epilogue and
//!   every job process get these variables (`start_exec.c` `InitUserEnv`: "first variables
//!   from the local environment", then the job's `qsub -v` list, then the PBS_* variables);
//! - `$job_starter`, batch shell: argv `[starter, SHELL, -SHELLNAME]`
//!   (`start_exec.c` `mom_jobstarter_execute_job`, login name from
//!   `source_login_shells_or_not`), stdin a pipe carrying one line: the job script path
//!   `$PBS_HOME/mom_priv/jobs/<jobid>.SC`, `exec ` before it under `$exec_with_exec true`, the
//!   `qsub -F` arguments appended after a space (`start_exec.c` `TMomFinalizeJob2`); cwd
//!   `$HOME` (or `PBS_O_INITDIR`, `start_exec.c` `go_to_init_dir`); as the job user;
//! - interactive jobs (`qsub -I`): the same argv, the terminal as stdin (a pipe here, with
//!   the commands the user types), `PBS_ENVIRONMENT=PBS_INTERACTIVE` (`start_exec.c`
//!   `start_interactive_session`);
//! - TM tasks: `[starter, argv...]` with stdin `/dev/null`, as the job user;
//! - `$job_starter_run_privileged true` (`As::Root`): the starter as root with the job's
//!   environment;
//! - prologue/epilogue: root, argv `jobid user group jobname resources queue account`, the
//!   mom's environment plus PBS_NODEFILE, PBS_O_WORKDIR, PBS_NODENUM, PBS_MSHOST
//!   (`prolog.c` `setup_pelog_environment`), not the job's `-v` variables; their output goes
//!   to the job's spool output files (`PE_IO_TYPE_ASIS`);
//! - the prologue's exit status (`start_exec.c` `handle_prologs`): 0 runs the job; 1 (and any
//!   failure of an interactive job's prologue) ends it with exit status -2 (`JOB_EXEC_FAIL2`);
//!   other values requeue it, -3 (`JOB_EXEC_RETRY`);
//! - output return (`requests.c` `send_back_std_and_staged_files`, called from
//!   `catch_child.c` `preobit_preparation`): for exit statuses -1..-3 the job's `.o`/`.e`
//!   files are not returned to the user at all;
//! - GPUs: `PBS_GPUFILE=$PBS_HOME/aux/<jobid>gpu` for every job with a node file
//!   (`start_exec.c` `InitUserEnv`), the file written only for a job with `exec_gpus`
//!   (`write_gpus_to_file`, one `HOST-gpuN` line per GPU);
//! - `TMPDIR`: only under `$tmpdir DIR` in mom_priv/config, `DIR/<jobid>` (`TTmpDirName`);
//! - logging: a prologue or epilogue that exits non-zero is logged at the default log level
//!   (`prolog.c` `pelog_err`); their output is not, it goes to the job's spool files.
//!
//! With `Mom::openpbs` it is an OpenPBS 23.06 mom instead (openpbs/openpbs `src/resmom/`): the
//! execjob_launch hook's launch `[-berth-pbs, SHELL]` for the job's shell, `TMPDIR` for every
//! job (`tmpdirname`/`mktmpdir`), `PBS_JOBDIR` (the home directory, or a sandbox=PRIVATE
//! directory under `$jobdir_root` with `cd DIR;` before the script line, `finish_exec`), and
//! neither `PBS_HOME`, `PBS_VNODENUM` nor `PBS_GPUFILE`.

#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::{Out, World, USER};

pub struct Node {
    pub name: String,
    pub netns: String,
    pub pbs_home: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

impl Node {
    /// A fresh emulated node `name` for this test run.
    pub fn new(w: &World, name: &str) -> Node {
        let netns = format!("berth-it-{}-{name}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &netns]).stderr(Stdio::null()).status();
        sh(&format!("ip netns add {netns} && ip -n {netns} link set lo up"));
        let root = w.path(&format!("node-{name}"));
        let pbs_home = root.join("pbs_home");
        for (d, mode) in [("", 0o755), ("mom_priv", 0o751), ("mom_priv/jobs", 0o751), ("aux", 0o755)] {
            let p = pbs_home.join(d);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let state_dir = PathBuf::from(format!("/tmp/berth-it-{}-{name}-{}", std::process::id(), w.uid));
        let _ = std::fs::remove_dir_all(&state_dir);
        let config = root.join("berth.toml");
        std::fs::write(
            &config,
            format!("state_dir = \"/tmp/berth-it-{}-{name}-{{uid}}\"\n", std::process::id()),
        )
        .unwrap();
        // OpenPBS' /etc/pbs.conf, which the emulator cannot write: its jobs name this one in
        // PBS_CONF_FILE, which every PBS program honours.
        std::fs::write(
            root.join("pbs.conf"),
            format!("PBS_EXEC=/opt/pbs\nPBS_HOME={}\n", pbs_home.display()),
        )
        .unwrap();
        std::fs::write(
            pbs_home.join("pbs_environment"),
            format!("PATH=/bin:/usr/bin\nBERTH_CONFIG={}\n", config.display()),
        )
        .unwrap();
        Node { name: name.into(), netns, pbs_home, config, state_dir }
    }

    /// pbs_mom's own environment: `$PBS_HOME/pbs_environment`, `NAME=value` lines.
    pub fn mom_env(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.pbs_home.join("pbs_environment"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// `net:[inode]` as `readlink /proc/self/ns/net` prints it inside the node.
    pub fn net_id(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        format!("net:[{}]", std::fs::metadata(self.netns_path()).unwrap().ino())
    }

    pub fn holders_dir(&self) -> PathBuf {
        self.state_dir.join("holders")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        // The node's state directory (empty once the epilogues ran).
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// `argv` in the node's network namespace, as the user (after setgroups/setgid/setuid, as
/// pbs_mom does) or as root.
pub fn in_node(netns: &Path, as_: As, uid: u32, gid: u32, argv: &[&str]) -> Command {
    in_node_nss(netns, as_, uid, gid, argv, None)
}

/// [`in_node`], seeing `nsswitch` (when given) as /etc/nsswitch.conf (see [`with_nsswitch`],
/// done before the program becomes the user).
pub fn in_node_nss(
    netns: &Path,
    as_: As,
    uid: u32,
    gid: u32,
    argv: &[&str],
    nsswitch: Option<&Path>,
) -> Command {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    if let Some(f) = nsswitch {
        with_nsswitch(&mut c, f);
    }
    let ns = std::fs::File::open(netns).unwrap();
    // SAFETY: only async-signal-safe system calls between fork and exec; `ns` is moved into
    // the closure, which the Command keeps until it is dropped.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if as_ == As::User {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    c
}

/// Run `c` in a private mount namespace where `file` is /etc/nsswitch.conf.
pub fn with_nsswitch(c: &mut Command, file: &Path) {
    use std::ffi::CString;
    let src = CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    let (dst, root) = (CString::new("/etc/nsswitch.conf").unwrap(), CString::new("/").unwrap());
    // SAFETY: only system calls between fork and exec; the strings are made before the fork.
    unsafe {
        c.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
                    != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Run `c` in a private mount namespace whose /dev/log is the socket `sock` (on a tmpfs over
/// /dev: the program needs nothing else of /dev; its stdio is opened before it starts).
pub fn with_syslog(c: &mut Command, sock: &Path) {
    use std::ffi::CString;
    let src = CString::new(sock.as_os_str().as_encoded_bytes()).unwrap();
    let (dev, log, root) =
        (CString::new("/dev").unwrap(), CString::new("/dev/log").unwrap(), CString::new("/").unwrap());
    let tmpfs = CString::new("tmpfs").unwrap();
    // SAFETY: only system calls between fork and exec; the strings are made before the fork.
    unsafe {
        c.pre_exec(move || {
            let null = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(null, root.as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, null.cast()) != 0
                || libc::mount(tmpfs.as_ptr(), dev.as_ptr(), tmpfs.as_ptr(), 0, null.cast()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(log.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o666);
            if fd < 0
                || libc::close(fd) != 0
                || libc::mount(src.as_ptr(), log.as_ptr(), null, libc::MS_BIND, null.cast()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub struct Job {
    pub id: String,
    /// `qsub -v` variables (CONTAINER, BERTH_*...).
    pub vars: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub script_body: String,
    /// `qsub -F "..."`: the script's arguments, as one string.
    pub args: Option<String>,
    /// GPUs per node (`-l nodes=N:gpus=G`): the server's `exec_gpus` for the job.
    pub gpus: u32,
}

impl Job {
    pub fn new(w: &World, id: &str, vars: &[(&str, &str)], script: &str) -> Job {
        let workdir = w.path(&format!("submit-{id}"));
        std::fs::create_dir_all(&workdir).unwrap();
        nix::unistd::chown(&workdir, Some(w.uid.into()), Some(w.gid.into())).unwrap();
        Job {
            id: id.into(),
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            workdir,
            script_body: script.into(),
            args: None,
            gpus: 0,
        }
    }

    pub fn script_path(&self, node: &Node) -> PathBuf {
        node.pbs_home.join("mom_priv/jobs").join(format!("{}.SC", self.id))
    }

    pub fn nodefile(&self, node: &Node) -> PathBuf {
        node.pbs_home.join("aux").join(&self.id)
    }

    /// `$PBS_HOME/aux/<jobid>gpu`, the name TORQUE gives the GPU file of every job.
    pub fn gpufile(&self, node: &Node) -> PathBuf {
        node.pbs_home.join("aux").join(format!("{}gpu", self.id))
    }
}

/// The emulated moms of one test.
pub struct Mom<'w> {
    pub w: &'w World,
    pub starter: PathBuf,
    /// The rsh agent script, installed beside the starter.
    pub rsh_agent: PathBuf,
    /// `$exec_with_exec true` in mom_priv/config.
    pub exec_with_exec: bool,
    /// berth-pbs installed (`$job_starter`, prologue, epilogue); false: a mom without berth.
    pub berth: bool,
    /// An nsswitch.conf the prologue and epilogue see at /etc/nsswitch.conf (bound over it
    /// in a private mount namespace): a site's name services.
    pub nsswitch: Option<PathBuf>,
    /// A unix datagram socket the prologue and epilogue see as /dev/log (the node's syslog).
    pub syslog: Option<PathBuf>,
    /// What pbs_mom logs at its default log level about the hooks: a prologue or epilogue
    /// that exits non-zero (`prolog.c` `pelog_err`: "prolog/epilog failed, file: F, exit: N",
    /// PBSEVENT_ERROR, in the mom log and syslog). Their output is not logged; it goes to the
    /// job's spool files (`PE_IO_TYPE_ASIS`).
    pub log: std::sync::Mutex<Vec<String>>,
    /// An OpenPBS mom (23.06) instead of TORQUE's: the launch hook's argv, its job variables
    /// and directories (see `job_env`, `shell_job`).
    pub openpbs: bool,
    /// TORQUE's `$tmpdir DIR` in mom_priv/config: each job gets `DIR/<jobid>` as `TMPDIR`.
    pub tmpdir: Option<PathBuf>,
    /// OpenPBS' `$jobdir_root DIR` for a job with `sandbox=PRIVATE`: its staging and execution
    /// directory `PBS_JOBDIR` is a new directory under DIR instead of the home directory.
    pub sandbox_root: Option<PathBuf>,
}

/// How pbs_mom runs the starter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum As {
    User,
    /// `$job_starter_run_privileged true`
    Root,
}

impl<'w> Mom<'w> {
    pub fn new(w: &'w World) -> Mom<'w> {
        // BERTH_TEST_PBS_STARTER: another build (the packaged static release one, for timings).
        let build = std::env::var_os("BERTH_TEST_PBS_STARTER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth-pbs")));
        Mom::with_starter(w, &build, &w.path("berth-pbs"))
    }

    /// A mom whose berth-pbs is the build `build`, installed at `starter` (once per test run).
    pub fn with_starter(w: &'w World, build: &Path, starter: &Path) -> Mom<'w> {
        // Installed like /usr/libexec/berth/berth-pbs: where every user can run it.
        let starter = starter.to_path_buf();
        if !starter.exists() {
            let dir = starter.parent().unwrap();
            std::fs::create_dir_all(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::copy(build, &starter).unwrap();
        }
        let rsh_agent = w.path("berth-pbs-rsh");
        if !rsh_agent.exists() {
            std::fs::copy(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/torque/berth-pbs-rsh"),
                &rsh_agent,
            )
            .unwrap();
            std::fs::set_permissions(&rsh_agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Mom {
            w,
            starter,
            rsh_agent,
            exec_with_exec: false,
            berth: true,
            nsswitch: None,
            syslog: None,
            log: Default::default(),
            openpbs: false,
            tmpdir: None,
            sandbox_root: None,
        }
    }

    /// The job's `TMPDIR`, which the mom makes before the job and removes after it: OpenPBS
    /// for every job, `/var/tmp/pbs.<jobid>` (`start_exec.c`: `tmpdirname`, made by `mktmpdir`
    /// and removed by `rmtmpdir` when the job is purged); TORQUE only under `$tmpdir`
    /// (`start_exec.c` `TTmpDirName`, `DIR/<jobid>`).
    pub fn job_tmpdir(&self, job: &Job) -> Option<PathBuf> {
        if self.openpbs {
            Some(PathBuf::from(format!("/var/tmp/pbs.{}", job.id)))
        } else {
            self.tmpdir.as_ref().map(|t| t.join(&job.id))
        }
    }

    /// OpenPBS' `PBS_JOBDIR`: the home directory, or under `sandbox=PRIVATE` a directory the
    /// mom makes for the job (`jobdirname`, made by `mkjobdir`, removed by `rmjobdir`: here
    /// `pbs.<jobid>.x8z`); TORQUE sets none.
    pub fn job_jobdir(&self, job: &Job) -> Option<PathBuf> {
        if !self.openpbs {
            return None;
        }
        Some(match &self.sandbox_root {
            Some(r) => r.join(format!("pbs.{}.x8z", job.id)),
            None => self.w.home.clone(),
        })
    }

    /// What the mom removes when the job is purged (after the epilogue).
    pub fn purge(&self, job: &Job) {
        for d in [self.job_tmpdir(job), self.sandbox_root.as_ref().and_then(|_| self.job_jobdir(job))]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// What pbs_server sends the mother superior: the script and the node file.
    pub fn submit(&self, job: &Job, nodes: &[&Node]) {
        // The job's own directories, the user's, mode 0700 (as the moms make them).
        for d in [self.job_tmpdir(job), self.sandbox_root.as_ref().and_then(|_| self.job_jobdir(job))]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(&d).unwrap();
            nix::unistd::chown(&d, Some(self.w.uid.into()), Some(self.w.gid.into())).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        // The mother superior gets the script and the node file.
        let ms = nodes[0];
        let sc = job.script_path(ms);
        std::fs::write(&sc, &job.script_body).unwrap();
        nix::unistd::chown(&sc, Some(self.w.uid.into()), Some(self.w.gid.into())).unwrap();
        std::fs::set_permissions(&sc, std::fs::Permissions::from_mode(0o500)).unwrap();
        let nf = job.nodefile(ms);
        std::fs::write(&nf, nodes.iter().map(|n| format!("{}\n", n.name)).collect::<String>()).unwrap();
        std::fs::set_permissions(&nf, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The GPU file exists only for a job given GPUs (`start_exec.c` `write_gpus_to_file`,
        // called only when the job has `exec_gpus`): one `HOST-gpuN` line per GPU.
        let gf = job.gpufile(ms);
        let _ = std::fs::remove_file(&gf);
        if job.gpus > 0 {
            let lines: String = nodes
                .iter()
                .flat_map(|n| (0..job.gpus).map(move |g| format!("{}-gpu{g}\n", n.name)))
                .collect();
            std::fs::write(&gf, lines).unwrap();
            std::fs::set_permissions(&gf, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }

    /// The environment pbs_mom gives the job's processes on `node`: its own environment,
    /// then the job's `qsub -v` variables, then the PBS_* and login variables it sets itself
    /// (which win).
    pub fn job_env(&self, job: &Job, node: &Node, task: u32) -> Vec<(String, String)> {
        let home = self.w.home.display().to_string();
        let mut env: Vec<(String, String)> = node.mom_env();
        let mut set = |k: &str, v: String| {
            env.retain(|(n, _)| n != k);
            env.push((k.into(), v));
        };
        for (k, v) in [
            ("PBS_O_HOME", home.as_str()),
            ("PBS_O_LOGNAME", USER),
            ("PBS_O_HOST", "node-a"),
            ("PBS_O_QUEUE", "batch"),
            ("PBS_O_PATH", "/usr/local/bin:/usr/bin:/bin"),
        ] {
            set(k, v.to_string());
        }
        set("PBS_O_WORKDIR", job.workdir.display().to_string());
        for (k, v) in &job.vars {
            set(k, v.clone());
        }
        for (k, v) in [
            ("HOME", home.as_str()),
            ("USER", USER),
            ("LOGNAME", USER),
            ("SHELL", "/bin/bash"),
            ("PBS_JOBNAME", "job.sh"),
            ("PBS_ENVIRONMENT", "PBS_BATCH"),
            ("PBS_QUEUE", "batch"),
            ("PBS_MOMPORT", "15003"),
        ] {
            set(k, v.to_string());
        }
        set("PBS_JOBID", job.id.clone());
        set("PBS_HOME", node.pbs_home.display().to_string());
        set("PBS_NODEFILE", node.pbs_home.join("aux").join(&job.id).display().to_string());
        // For every job with a node file, GPUs or not (`start_exec.c` `InitUserEnv`, beside
        // PBS_NODEFILE); the file itself is written only for GPU jobs (`Mom::submit`).
        set("PBS_GPUFILE", job.gpufile(node).display().to_string());
        set("PBS_TASKNUM", task.to_string());
        set("PBS_NODENUM", if node.name == "a" { "0".into() } else { "1".into() });
        set("PBS_VNODENUM", task.to_string());
        if let Some(t) = self.job_tmpdir(job) {
            set("TMPDIR", t.display().to_string());
        }
        if self.openpbs {
            // OpenPBS' mom sets neither PBS_HOME, PBS_VNODENUM nor PBS_GPUFILE (its cgroup
            // hook sets CUDA_VISIBLE_DEVICES), and adds PBS_JOBDIR (`start_exec.c`
            // `finish_exec`).
            env.retain(|(k, _)| !matches!(k.as_str(), "PBS_HOME" | "PBS_VNODENUM" | "PBS_GPUFILE"));
            env.push(("PBS_JOBDIR".into(), self.job_jobdir(job).unwrap().display().to_string()));
            env.push((
                "PBS_CONF_FILE".into(),
                node.pbs_home.parent().unwrap().join("pbs.conf").display().to_string(),
            ));
        }
        env
    }

    fn command(&self, node: &Node, as_: As, argv: &[&str], env: &[(String, String)]) -> Command {
        let mut c = in_node(&node.netns_path(), as_, self.w.uid, self.w.gid, argv);
        c.env_clear().envs(env.iter().cloned()).current_dir(&self.w.home);
        c
    }

    /// The batch shell: `[starter, shell, -name]`, stdin a pipe carrying `stdin` (normally
    /// the line [`Mom::script_line`]). Without berth: the shell itself, argv0 `-name`.
    pub fn batch_with_stdin(&self, job: &Job, node: &Node, as_: As, shell: &str, stdin: &str) -> Out {
        self.shell_job(job, node, as_, shell, stdin, &[])
    }

    fn shell_job(
        &self,
        job: &Job,
        node: &Node,
        as_: As,
        shell: &str,
        stdin: &str,
        extra_env: &[(&str, &str)],
    ) -> Out {
        let mut env = self.job_env(job, node, 0);
        for (k, v) in extra_env {
            env.retain(|(n, _)| n != k);
            env.push((k.to_string(), v.to_string()));
        }
        let starter = self.starter.display().to_string();
        let login = format!("-{}", Path::new(shell).file_name().unwrap().to_string_lossy());
        let mut cmd = if self.berth && self.openpbs {
            // The launch hook hands the mom progname berth-pbs and argv [berth-pbs, SHELL]; the
            // mom execs that as a login shell would be: argv0 `-berth-pbs`.
            let mut c = self.command(node, as_, &[&starter, shell], &env);
            c.arg0("-berth-pbs");
            c
        } else if self.berth {
            self.command(node, as_, &[&starter, shell, &login], &env)
        } else {
            let mut c = self.command(node, as_, &[shell], &env);
            c.arg0(&login);
            c
        };
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(stdin.as_bytes());
        drop(pipe);
        Out(child.wait_with_output().unwrap())
    }

    /// The batch job killed as `qdel` or the walltime limit kills it, once `started` says so
    /// (within 10 s): the job's shell leads its own session (`setsid` before the exec,
    /// TORQUE's `TMomFinalizeChild`, OpenPBS' `finish_exec`), and the mom sends SIGKILL to
    /// every process of that session (TORQUE `kill_task`, OpenPBS `kill_session`). The
    /// epilogue runs after that, as after a normal end.
    pub fn killed_batch(&self, job: &Job, node: &Node, started: impl Fn() -> bool) -> Out {
        let env = self.job_env(job, node, 0);
        let starter = self.starter.display().to_string();
        let mut cmd = if self.openpbs {
            let mut c = self.command(node, As::User, &[&starter, "/bin/bash"], &env);
            c.arg0("-berth-pbs");
            c
        } else {
            self.command(node, As::User, &[&starter, "/bin/bash", "-bash"], &env)
        };
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(self.script_line(job, node).as_bytes());
        drop(pipe);
        let t0 = std::time::Instant::now();
        while !started() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let sid = child.id() as i32;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).is_ok_and(|s| s.as_raw() == sid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Out(child.wait_with_output().unwrap())
    }

    /// The line pbs_mom writes to the batch shell (`TMomFinalizeJob2`).
    pub fn script_line(&self, job: &Job, node: &Node) -> String {
        let mut line = job.script_path(node).display().to_string();
        if self.exec_with_exec {
            line.insert_str(0, "exec ");
        }
        if let Some(a) = &job.args {
            line.push(' ');
            line.push_str(a);
        }
        // OpenPBS under sandbox=PRIVATE starts the script in PBS_JOBDIR (`finish_exec`).
        if let (true, Some(_)) = (self.openpbs, &self.sandbox_root) {
            line.insert_str(0, &format!("cd {};", self.job_jobdir(job).unwrap().display()));
        }
        line.push('\n');
        line
    }

    pub fn batch(&self, job: &Job, node: &Node, as_: As) -> Out {
        let line = self.script_line(job, node);
        self.batch_with_stdin(job, node, as_, "/bin/bash", &line)
    }

    /// `qsub -I`: the job's shell with `typed` as what the user types.
    pub fn interactive(&self, job: &Job, node: &Node, typed: &str) -> Out {
        self.shell_job(job, node, As::User, "/bin/bash", typed, &[("PBS_ENVIRONMENT", "PBS_INTERACTIVE")])
    }

    /// A whole job on one node as pbs_mom runs it: prologue, the job (batch or interactive),
    /// epilogue, then what the user gets back.
    pub fn run_job(&self, job: &Job, node: &Node, interactive: Option<&str>) -> JobEnd {
        let t0 = std::time::Instant::now();
        let (mut out, mut err) = (String::new(), String::new());
        let mut status = 0;
        if self.berth {
            let p = self.hook("prologue", job, node);
            out.push_str(&p.stdout());
            err.push_str(&p.stderr());
            status = match p.code() {
                Some(0) => 0,
                Some(1) => -2,
                _ if interactive.is_some() => -2,
                _ => -3,
            };
        }
        if status == 0 {
            let r = match interactive {
                Some(typed) => self.interactive(job, node, typed),
                None => self.batch(job, node, As::User),
            };
            out.push_str(&r.stdout());
            err.push_str(&r.stderr());
            status = r.code().unwrap_or(128 + 9);
        }
        let t_job = t0.elapsed();
        if self.berth {
            let e = self.hook("epilogue", job, node);
            out.push_str(&e.stdout());
            err.push_str(&e.stderr());
        }
        self.purge(job);
        let returned = !(-3..=-1).contains(&status);
        JobEnd {
            status,
            out: returned.then_some(out),
            err: returned.then_some(err),
            elapsed: t0.elapsed(),
            until_job_end: t_job,
        }
    }

    /// A TM task (pbsdsh, orted): `[starter, argv...]`, stdin /dev/null.
    pub fn task(&self, job: &Job, node: &Node, task: u32, argv: &[&str]) -> Out {
        let env = self.job_env(job, node, task);
        let starter = self.starter.display().to_string();
        let mut full = vec![starter.as_str()];
        full.extend_from_slice(argv);
        Out(self.command(node, As::User, &full, &env).stdin(Stdio::null()).output().unwrap())
    }

    /// Prologue/epilogue (`which`) as pbs_mom's run_pelog() runs them: root; a regular file
    /// owned by root, mode 0500, named after what it is; prologue args `jobid user group
    /// jobname resources queue account`, epilogue args `jobid user group jobname sessionid
    /// resources resources_used queue account exit_status`; a few job variables in the
    /// environment (PBS_NODEFILE, PBS_O_WORKDIR, PBS_NODENUM, PBS_MSHOST), not `-v` ones.
    pub fn hook(&self, which: &str, job: &Job, node: &Node) -> Out {
        let path = node.pbs_home.join("mom_priv").join(which);
        if !path.exists() {
            std::fs::copy(&self.starter, &path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o500)).unwrap();
        }
        let path = path.display().to_string();
        let group = nix::unistd::Group::from_gid(self.w.gid.into()).unwrap().unwrap().name;
        let res = "nodes=2,walltime=00:10:00";
        let mut argv = vec![path.as_str(), &job.id, USER, &group, "job.sh"];
        if which.starts_with("epilogue") {
            argv.extend_from_slice(&[
                "4242",
                res,
                "cput=00:00:01,mem=1kb,walltime=00:00:02",
                "batch",
                "",
                "0",
            ]);
        } else {
            argv.extend_from_slice(&[res, "batch", ""]);
        }
        let mut env = node.mom_env();
        env.extend([
            ("PBS_NODEFILE".to_string(), job.nodefile(node).display().to_string()),
            ("PBS_O_WORKDIR".to_string(), job.workdir.display().to_string()),
            ("PBS_NODENUM".to_string(), if node.name == "a" { "0" } else { "1" }.to_string()),
            ("PBS_MSHOST".to_string(), "a".to_string()),
        ]);
        // A file just copied may still be open for writing in a child another test thread
        // forked meanwhile (ETXTBSY until that child execs): try again shortly.
        for _ in 0..100 {
            let mut c = self.command(node, As::Root, &argv, &env);
            if let Some(f) = &self.nsswitch {
                with_nsswitch(&mut c, f);
            }
            if let Some(sock) = &self.syslog {
                with_syslog(&mut c, sock);
            }
            match c.stdin(Stdio::null()).output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => {
                    let out = Out(r.unwrap());
                    if out.code() != Some(0) {
                        self.log.lock().unwrap().push(format!(
                            "pelog_err, prolog/epilog failed, file: {path}, exit: {}, nonzero p/e exit status",
                            out.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into())
                        ));
                    }
                    return out;
                }
            }
        }
        panic!("{path} stays busy");
    }
}

/// What the user sees of a finished job.
pub struct JobEnd {
    /// The job's exit status (negative: pbs_mom's JOB_EXEC_* codes).
    pub status: i32,
    /// The `.o` and `.e` files, when pbs_mom returns them.
    pub out: Option<String>,
    pub err: Option<String>,
    /// Prologue start to epilogue end (commit to obit, less the server's messages).
    pub elapsed: std::time::Duration,
    /// Prologue start to the job's end (the rest of `elapsed` is the epilogue).
    pub until_job_end: std::time::Duration,
}

/// Processes (not zombies) whose environment says they belong to `jobid`: holders, FUSE
/// servers, tasks.
pub fn job_processes(jobid: &str) -> Vec<String> {
    let needle = format!("PBS_JOBID={jobid}\0");
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(environ) = std::fs::read(e.path().join("environ")) else { continue };
        if !String::from_utf8_lossy(&environ).contains(&needle) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')).unwrap_or(true) {
            continue;
        }
        let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default();
        v.push(format!("{}: {}", e.file_name().to_string_lossy(), cmd.replace('\0', " ")));
    }
    v
}

/// Files the job left in a node's holders directory.
pub fn job_files(node: &Node, jobid: &str) -> Vec<PathBuf> {
    let name = format!("pbs-{jobid}");
    std::fs::read_dir(node.holders_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().map(|n| n.to_string_lossy().contains(&name)).unwrap_or(false))
        .collect()
}

pub fn assert_clean(nodes: &[&Node], jobid: &str) {
    // A holder being stopped may take a moment to go.
    let t0 = std::time::Instant::now();
    while !job_processes(jobid).is_empty() && t0.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(job_processes(jobid), Vec::<String>::new(), "processes of job {jobid} left");
    for n in nodes {
        assert_eq!(
            job_files(n, jobid),
            Vec::<PathBuf>::new(),
            "files of job {jobid} left on node {}",
            n.name
        );
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The PBS tests share emulated nodes' state directories and the installed starter: one at a
/// time (the machines running them have few cores anyway).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// An ssh stand-in between emulated nodes for the rsh-agent path: the nodes get a veth link
/// (addresses in `addrs`), each node an "sshd" (a thread here, listening on a unix socket)
/// that runs the remote command line with `sh -c` in that node's network namespace as the
/// user; `ssh` is a static client (runs inside any image) that sends the command line and
/// relays the output.
pub struct FakeSsh {
    pub ssh: String,
    pub addrs: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for FakeSsh {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

const FAKE_SSH_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
int main(int argc, char **argv) {
    int i = 1;
    while (i < argc && argv[i][0] == '-') i++;
    if (i + 1 >= argc) { fprintf(stderr, "fake-ssh: usage: ssh HOST COMMAND\n"); return 255; }
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof a.sun_path, "%s/sshd-%s.sock", SOCKDIR, argv[i]);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { perror(a.sun_path); return 255; }
    for (int j = i + 1; j < argc; j++) {
        if (j > i + 1) write(s, " ", 1);
        write(s, argv[j], strlen(argv[j]));
    }
    shutdown(s, SHUT_WR);
    char buf[4096]; ssize_t n;
    while ((n = read(s, buf, sizeof buf)) > 0) write(1, buf, n);
    return 0;
}
"#;

/// With `link`, the two nodes also get a veth link (for MPI traffic) and are named by their
/// addresses; without, by their names.
pub fn fake_ssh(w: &'static World, nodes: &[&Node], link: bool) -> FakeSsh {
    use std::io::Read;
    let net = 10 + std::process::id() % 200;
    let addrs: Vec<String> = if link {
        (1..=nodes.len()).map(|i| format!("10.251.{net}.{i}")).collect()
    } else {
        nodes.iter().map(|n| n.name.clone()).collect()
    };
    let (va, vb) =
        (format!("bva{}", std::process::id() % 100000), format!("bvb{}", std::process::id() % 100000));
    if link {
        sh(&format!(
        "ip link add {va} netns {} type veth peer name {vb} netns {} && ip -n {} addr add {}/24 dev {va} && ip -n {} addr add {}/24 dev {vb} && ip -n {} link set {va} up && ip -n {} link set {vb} up",
        nodes[0].netns, nodes[1].netns, nodes[0].netns, addrs[0], nodes[1].netns, addrs[1], nodes[0].netns, nodes[1].netns
    ));
    }
    let src = w.path("fake-ssh.c");
    std::fs::write(&src, FAKE_SSH_C).unwrap();
    let ssh = w.path("fake-ssh");
    let st = Command::new("cc")
        .args(["-static", "-O2", &format!("-DSOCKDIR=\"{}\"", w.dir.display()), "-o"])
        .arg(&ssh)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "building the ssh stand-in failed");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = vec![];
    for (n, addr) in nodes.iter().zip(&addrs) {
        let sock = w.path(&format!("sshd-{addr}.sock"));
        let _ = std::fs::remove_file(&sock);
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        l.set_nonblocking(true).unwrap();
        let (netns, config, stop) = (n.netns_path(), n.config.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut children = vec![];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((mut conn, _)) = l.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut line = String::new();
                let _ = conn.read_to_string(&mut line);
                let out: std::os::fd::OwnedFd = conn.try_clone().unwrap().into();
                let err: std::os::fd::OwnedFd = conn.into();
                let child = in_node(&netns, As::User, w.uid, w.gid, &["/bin/sh", "-c", &line])
                    .env_clear()
                    .env("HOME", &w.home)
                    .env("USER", USER)
                    .env("LOGNAME", USER)
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .env("BERTH_CONFIG", &config)
                    .current_dir(&w.home)
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(out))
                    .stderr(Stdio::from(err))
                    .spawn();
                if let Ok(c) = child {
                    children.push(c);
                }
            }
            for mut c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }));
    }
    FakeSsh { ssh: ssh.display().to_string(), addrs, stop, threads }
}
