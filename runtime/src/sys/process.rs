//! Process-level system calls: entering namespaces, starting the contained program, passing
//! signals and exit status through.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::error::{Error, Result, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};
use crate::plan::DEFAULT_PATH;

/// Enter new user and mount namespaces, mapping the user (and their group) to themselves.
/// Must be called while the process is single-threaded (a kernel rule for user namespaces).
pub(crate) fn enter_user_and_mount_ns(uid: u32, gid: u32) -> Result<()> {
    enter_user_and_mount_ns_as(uid, gid, (uid, gid))
}

/// [`enter_user_and_mount_ns`], the user and their group appearing inside as `inside`
/// (`(0, 0)` for pyxis' `--container-remap-root`). Still only the user's own ids are mapped,
/// so nothing is gained outside the namespace.
pub(crate) fn enter_user_and_mount_ns_as(uid: u32, gid: u32, inside: (u32, u32)) -> Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(|e| Error::sys("unshare", "user and mount namespaces", e))?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| Error::io("cannot write", Path::new(file), e))
    };
    // A process may map only its own ids from inside the new namespace (even root: its
    // capabilities are now the new namespace's), and for its group only after giving up
    // setgroups(); its supplementary groups still count for file access on the host.
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{} {uid} 1\n", inside.0))?;
    write("gid_map", format!("{} {gid} 1\n", inside.1))?;
    // Our mounts must never propagate back to the host; the host's unmounts still reach us.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| Error::sys("make mounts private on", "/", e))
}

/// Join the user and mount namespaces of `pid` (a holder), checking they are the ones recorded.
pub(crate) fn join_namespaces(pid: i32, user_ino: u64, mnt_ino: u64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let open = |ns: &str, want: u64| -> Result<std::fs::File> {
        let p = format!("/proc/{pid}/ns/{ns}");
        let f = std::fs::File::open(&p).map_err(|e| Error::io("cannot open namespace", Path::new(&p), e))?;
        let ino = f.metadata().map_err(|e| Error::io("cannot stat", Path::new(&p), e))?.ino();
        if ino != want {
            return Err(Error::request(
                format!("container holder {pid}"),
                format!("its {ns} namespace changed (process id reused?)"),
                "the container is gone; start it again",
            ));
        }
        Ok(f)
    };
    let user = open("user", user_ino)?;
    let mnt = open("mnt", mnt_ino)?;
    // The user namespace first: it grants the capability needed to join its mount namespace.
    // Joining one's own namespace again is refused (EINVAL), which happens when a process
    // inside the container starts another joiner: then there is nothing to do.
    let own = std::fs::metadata("/proc/self/ns/user").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    if own != Some(user_ino) {
        nix::sched::setns(user.as_fd(), CloneFlags::CLONE_NEWUSER)
            .map_err(|e| Error::sys("setns", "user namespace", e))?;
    }
    let own_mnt = super::proc::ns_inode("self", "mnt");
    if own_mnt != Some(mnt_ino) {
        nix::sched::setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS)
            .map_err(|e| Error::sys("setns", "mount namespace", e))?;
    }
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir", "/", e))
}

/// Why no candidate of a command could be executed.
enum ExecFailed {
    /// A file without a `#!` line, which `/bin/sh` could not run either.
    Shell(nix::Error),
    /// Any other error of execve.
    Other(nix::Error),
    /// Some candidate exists but may not be executed.
    Denied,
    /// No candidate exists.
    NotFound,
}

/// The shell-like error (127 not found, 126 not executable) for `cmd`.
fn exec_error(cmd: &str, failed: ExecFailed) -> Error {
    let (reason, code) = match failed {
        ExecFailed::Shell(e) => (format!("cannot run: {e}"), EXIT_NOT_EXECUTABLE),
        ExecFailed::Other(e) => (e.desc().to_lowercase(), EXIT_NOT_EXECUTABLE),
        ExecFailed::Denied => ("Permission denied".into(), EXIT_NOT_EXECUTABLE),
        ExecFailed::NotFound if cmd.contains('/') => {
            ("No such file or directory in the image".into(), EXIT_NOT_FOUND)
        }
        ExecFailed::NotFound => ("command not found in the image".into(), EXIT_NOT_FOUND),
    };
    Error::Exec { cmd: cmd.to_string(), reason, code }
}

/// A program to start in the container, made ready before it is started: the child of
/// [`spawn_and_wait`] shares berth's memory and may not allocate, so every string it uses is
/// made here (and the pointer arrays by [`Program::exec_args`]).
pub(crate) struct Program {
    cmd: String,
    workdir: std::path::PathBuf,
    workdir_c: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    candidates: Vec<CString>,
    sh: CString,
}

/// execve's arguments for a [`Program`]: null-terminated arrays of pointers into its strings;
/// `sh_argv` is `/bin/sh CANDIDATE ARGS...` for a file without `#!`, slot 1 set when used.
struct ExecArgs {
    argv: Vec<*const libc::c_char>,
    env: Vec<*const libc::c_char>,
    sh_argv: Vec<*const libc::c_char>,
}

/// Where a program's start failed ([`Program::chdir_harden_exec`]).
const STAGE_CHDIR: i32 = 1;
const STAGE_HARDEN: i32 = 2;
const STAGE_SHELL: i32 = 3;
const STAGE_EXEC: i32 = 4;
const STAGE_DENIED: i32 = 5;
const STAGE_NOT_FOUND: i32 = 6;

/// What the child of [`Program::spawn`] reports before it ends without exec'ing (written by
/// the child in the memory it shares with berth, read once it has exec'd or ended).
#[derive(Default)]
struct ChildReport {
    stage: std::sync::atomic::AtomicI32,
    errno: std::sync::atomic::AtomicI32,
}

/// A started program: its pid, and where and why its start failed if it did.
pub(crate) struct Started {
    pid: Pid,
    failed: Option<(i32, i32)>,
}

impl Program {
    /// `argv` run in `workdir` with `env`, found along the container's `PATH` in `env`.
    pub(crate) fn new(workdir: &Path, argv: &[String], env: &[(String, String)]) -> Program {
        let to_c = |s: &str| CString::new(s).unwrap_or_default();
        let cmd = argv.first().cloned().unwrap_or_default();
        let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
        Program {
            candidates: if cmd.is_empty() { vec![] } else { path_candidates(&cmd, path) }
                .iter()
                .map(|c| to_c(c))
                .collect(),
            cmd,
            workdir: workdir.to_path_buf(),
            workdir_c: CString::new(workdir.as_os_str().as_encoded_bytes()).unwrap_or_default(),
            argv: argv.iter().map(|a| to_c(a)).collect(),
            env: env.iter().map(|(k, v)| to_c(&format!("{k}={v}"))).collect(),
            sh: to_c("/bin/sh"),
        }
    }

    /// The one way a program starts in a container, in this process: change to its working
    /// directory, give up every way to gain privileges (`no_new_privs`), then exec it along
    /// the container's `PATH`. Returns only on failure, with a shell-like error (127 not
    /// found, 126 not executable). [`spawn_and_wait`] does the same in a child.
    pub(crate) fn exec(&self) -> Error {
        let mut args = self.exec_args();
        // SAFETY: `args` points into this program's strings, both alive across the call.
        let (stage, errno) = unsafe { self.chdir_harden_exec(&mut args) };
        self.error(stage, errno)
    }

    fn exec_args(&self) -> ExecArgs {
        let null = std::ptr::null::<libc::c_char>();
        let ptrs = |v: &[CString]| v.iter().map(|a| a.as_ptr()).chain(std::iter::once(null)).collect();
        ExecArgs {
            argv: ptrs(&self.argv),
            env: ptrs(&self.env),
            sh_argv: [self.sh.as_ptr(), null]
                .into_iter()
                .chain(self.argv.iter().skip(1).map(|a| a.as_ptr()))
                .chain(std::iter::once(null))
                .collect(),
        }
    }

    /// Change to the working directory, set `no_new_privs`, exec each candidate in turn (a
    /// file without `#!` through the image's `/bin/sh`, as shells do). Returns only on
    /// failure: the stage and errno. System calls only, no allocation: what a child sharing
    /// berth's memory may run.
    ///
    /// # Safety
    /// `args` is [`Program::exec_args`] of this program.
    unsafe fn chdir_harden_exec(&self, args: &mut ExecArgs) -> (i32, i32) {
        let failed = |stage: i32| (stage, nix::errno::Errno::last_raw());
        // SAFETY: NUL-terminated strings and null-terminated pointer arrays into them, alive
        // for the calls (the caller's promise).
        unsafe {
            if libc::chdir(self.workdir_c.as_ptr()) != 0 {
                return failed(STAGE_CHDIR);
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                return failed(STAGE_HARDEN);
            }
            let mut denied = false;
            for c in &self.candidates {
                libc::execve(c.as_ptr(), args.argv.as_ptr(), args.env.as_ptr());
                match nix::errno::Errno::last() {
                    nix::Error::ENOENT | nix::Error::ENOTDIR => continue,
                    nix::Error::EACCES => denied = true,
                    nix::Error::ENOEXEC => {
                        args.sh_argv[1] = c.as_ptr();
                        libc::execve(self.sh.as_ptr(), args.sh_argv.as_ptr(), args.env.as_ptr());
                        return failed(STAGE_SHELL);
                    }
                    _ => return failed(STAGE_EXEC),
                }
            }
            failed(if denied { STAGE_DENIED } else { STAGE_NOT_FOUND })
        }
    }

    /// Start the program in a child sharing this process's memory until it execs; berth is
    /// suspended until then. `old`: the signal mask the program gets.
    fn spawn(&self, old: &SigSet) -> Result<Started> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut args = self.exec_args();
        let report = ChildReport::default();
        let old_mask = *old.as_ref();
        let mut stack = vec![0u8; 64 * 1024];
        let child = Box::new(|| -> isize {
            // SAFETY: system calls only, on memory made before the clone (no allocation, no
            // lock): the signal mask, prctl, then `chdir_harden_exec` on this program's own
            // `exec_args`, all alive until this child has exec'd or ended.
            let (stage, errno) = unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
                // If berth is killed outright, the contained program goes too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                self.chdir_harden_exec(&mut args)
            };
            report.stage.store(stage, SeqCst);
            report.errno.store(errno, SeqCst);
            self.error_code(stage) as isize
        });
        // SAFETY: CLONE_VM | CLONE_VFORK: this thread waits until the child has exec'd or
        // ended, so everything the child touches (the closure, the strings, `report`, `stack`)
        // outlives its use; the child runs only the system calls above on its own stack.
        let pid = unsafe {
            nix::sched::clone(
                child,
                &mut stack,
                CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(|e| Error::sys("clone", "the program's process", e))?;
        let stage = report.stage.load(SeqCst);
        Ok(Started { pid, failed: (stage != 0).then(|| (stage, report.errno.load(SeqCst))) })
    }

    /// The exit status for a start that failed at `stage` (what [`Program::error`] carries),
    /// chosen without allocating.
    fn error_code(&self, stage: i32) -> i32 {
        match stage {
            STAGE_CHDIR | STAGE_HARDEN => crate::error::EXIT_BERTH_ERROR,
            STAGE_NOT_FOUND => EXIT_NOT_FOUND,
            _ => EXIT_NOT_EXECUTABLE,
        }
    }

    /// Why the program did not start, from where its start failed and the errno then.
    fn error(&self, stage: i32, errno: i32) -> Error {
        let cmd = &self.cmd;
        let errno = nix::errno::Errno::from_raw(errno);
        match stage {
            STAGE_CHDIR => Error::sys("chdir", self.workdir.display(), errno),
            STAGE_HARDEN => Error::sys("prctl", "no_new_privs", errno),
            STAGE_SHELL => exec_error(cmd, ExecFailed::Shell(errno)),
            STAGE_EXEC => exec_error(cmd, ExecFailed::Other(errno)),
            STAGE_DENIED => exec_error(cmd, ExecFailed::Denied),
            _ if cmd.is_empty() => {
                Error::Exec { cmd: "berth".into(), reason: "no command given".into(), code: EXIT_NOT_FOUND }
            }
            _ => exec_error(cmd, ExecFailed::NotFound),
        }
    }
}

/// The paths exec tries for `cmd`, in order: `cmd` itself when it holds a '/', else `cmd` in
/// each directory of `path` (the default PATH when None; an empty entry is the current
/// directory, as for shells).
pub(crate) fn path_candidates(cmd: &str, path: Option<&str>) -> Vec<String> {
    if cmd.contains('/') {
        return vec![cmd.to_string()];
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|d| if d.is_empty() { cmd.to_string() } else { format!("{d}/{cmd}") })
        .collect()
}

/// Start a thread that never takes a signal sent to the process: berth's supervisors and
/// holders receive theirs through a signalfd, which works only while every thread blocks
/// them. Threads inherit the signal mask they start with. False if it could not start.
pub(crate) fn spawn_without_signals(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    let mut old = SigSet::empty();
    if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old))
        .is_err()
    {
        return false;
    }
    let started = std::thread::Builder::new().name(name.into()).spawn(f).is_ok();
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    started
}

/// How the contained program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it.
    Signaled(Signal),
}

/// Signals berth passes on to the contained program.
const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];

/// Run `child` in a forked process and wait for it, forwarding signals sent to berth.
/// `on_other_child` is told about other children that end (the FUSE server). `servers` are
/// children that serve the container (the FUSE servers, stopped and reaped by their owner).
///
/// berth is a child subreaper meanwhile: whatever the program leaves running in the background
/// is re-parented to berth and killed once the program ends, since the image's FUSE server
/// stops then and such processes could only fail (nothing is left behind on a node).
pub(crate) fn fork_and_wait(
    child: impl FnOnce() -> i32,
    servers: &[i32],
    on_other_child: impl FnMut(Pid, WaitStatus),
) -> Result<Ended> {
    start_and_wait(
        |old| {
            // SAFETY: berth is single-threaded here, so the child may run any code before exec.
            match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork", "", e))? {
                ForkResult::Child => {
                    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old), None);
                    // If berth is killed outright, the contained program goes too (no orphans
                    // left running on a node after the FUSE server is gone).
                    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                    let code = child();
                    // SAFETY: leaving the forked child without running the parent's destructors.
                    unsafe { libc::_exit(code) }
                }
                ForkResult::Parent { child } => Ok(child),
            }
        },
        servers,
        on_other_child,
    )
}

/// [`fork_and_wait`] for `program` (see [`Program`]) without copying berth: its child shares
/// berth's memory until it execs (`CLONE_VM | CLONE_VFORK`, as posix_spawn starts programs),
/// where a fork copied the page tables of a process of several megabytes and took a
/// copy-on-write fault on each page either side wrote before the exec: about 0.15 ms of every
/// start. What the child does is the fork's child's: the signal mask back, SIGKILL if berth
/// dies, the working directory, no_new_privs, then exec along the container's PATH; its
/// failure is told here (`berth: ...`) with the exit status a shell gives.
pub(crate) fn spawn_and_wait(
    program: &Program,
    servers: &[i32],
    on_other_child: impl FnMut(Pid, WaitStatus),
) -> Result<Ended> {
    start_and_wait(
        |old| {
            let started = program.spawn(old)?;
            if let Some((stage, errno)) = started.failed {
                eprintln!("berth: {}", program.error(stage, errno));
            }
            Ok(started.pid)
        },
        servers,
        on_other_child,
    )
}

/// The waiting part of [`fork_and_wait`]: `start` starts the program (the signal mask to give
/// it is passed) and returns its pid.
fn start_and_wait(
    start: impl FnOnce(&SigSet) -> Result<Pid>,
    servers: &[i32],
    mut on_other_child: impl FnMut(Pid, WaitStatus),
) -> Result<Ended> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| Error::sys("prctl", "child subreaper", e))?;
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
        .map_err(|e| Error::sys("sigprocmask", "", e))?;
    match start(&old) {
        Err(e) => Err(e),
        Ok(child) => {
            let sfd = SignalFd::new(&set).map_err(|e| Error::sys("signalfd", "", e))?;
            loop {
                let Ok(Some(info)) = sfd.read_signal() else { continue };
                let sig = Signal::try_from(info.ssi_signo as i32).ok();
                if sig == Some(Signal::SIGCHLD) {
                    while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        let ended = match st {
                            WaitStatus::StillAlive => break,
                            WaitStatus::Exited(p, code) if p == child => Ended::Exited(code),
                            WaitStatus::Signaled(p, s, _) if p == child => Ended::Signaled(s),
                            other => {
                                if let Some(p) = other.pid() {
                                    on_other_child(p, other)
                                }
                                continue;
                            }
                        };
                        kill_orphans(servers, &mut on_other_child);
                        return Ok(ended);
                    }
                } else if let Some(s) = sig {
                    // A signal from the terminal already reached the whole foreground process
                    // group, the program included: pass on only those sent to berth itself.
                    if info.ssi_code != libc::SI_KERNEL {
                        let _ = nix::sys::signal::kill(child, s);
                    }
                }
            }
        }
    }
}

/// Our children: the container's servers, and orphans of the contained program re-parented
/// to us.
fn children() -> Vec<Pid> {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok().map(Pid::from_raw))
        .collect()
}

/// Kill and reap every child but `servers` (by pid: a server forked from berth has berth's
/// command line, so nothing else tells it from an orphan).
fn kill_orphans(servers: &[i32], on_other_child: &mut impl FnMut(Pid, WaitStatus)) {
    for _round in 0..100 {
        let orphans: Vec<Pid> = children().into_iter().filter(|p| !servers.contains(&p.as_raw())).collect();
        if orphans.is_empty() {
            return;
        }
        for p in &orphans {
            let _ = nix::sys::signal::kill(*p, Signal::SIGKILL);
        }
        for p in &orphans {
            if let Ok(st) = waitpid(*p, None) {
                on_other_child(*p, st);
            }
        }
    }
}

/// Leave the way the contained program did: same exit code, or the same signal.
pub fn exit_like(ended: Ended) -> ! {
    match ended {
        Ended::Exited(code) => std::process::exit(code),
        Ended::Signaled(sig) => {
            // SAFETY: restoring the default action of one signal; no handler state is shared.
            unsafe {
                let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl);
            }
            let mut set = SigSet::empty();
            set.add(sig);
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
            let _ = nix::sys::signal::raise(sig);
            std::process::exit(128 + sig as i32)
        }
    }
}

/// A descriptor that becomes readable when process `pid` ends (pidfd_open, Linux 5.3).
pub(crate) fn pidfd(pid: i32) -> Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Error::sys("pidfd_open", pid, nix::Error::last()));
    }
    // SAFETY: the kernel just returned this descriptor; we own it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Wait for what ends a holder: a signal (returned), `child_ended` saying so (None), the end
/// of the process behind `watch` (returned as SIGHUP: its launcher is gone), or `idle`'s check,
/// called every period, saying the holder is no longer needed (also returned as SIGHUP).
pub(crate) fn wait_for_stop(
    mut child_ended: impl FnMut(Pid, WaitStatus) -> bool,
    watch: Option<std::os::fd::OwnedFd>,
    mut idle: Option<(std::time::Duration, &mut dyn FnMut() -> bool)>,
) -> Result<Option<Signal>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
        set.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| Error::sys("sigprocmask", "", e))?;
    let sfd = SignalFd::new(&set).map_err(|e| Error::sys("signalfd", "", e))?;
    let timeout = match &idle {
        Some((period, _)) => PollTimeout::try_from(*period).unwrap_or(PollTimeout::MAX),
        None => PollTimeout::NONE,
    };
    loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(w) = &watch {
            fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Err(_) => continue,
            Ok(0) => {
                if let Some((_, no_longer_needed)) = &mut idle {
                    if no_longer_needed() {
                        return Ok(Some(Signal::SIGHUP));
                    }
                }
                continue;
            }
            Ok(_) => {}
        }
        if fds.get(1).is_some_and(|f| f.any().unwrap_or(false)) {
            return Ok(Some(Signal::SIGHUP));
        }
        if !fds[0].any().unwrap_or(false) {
            continue;
        }
        let Ok(Some(info)) = sfd.read_signal() else { continue };
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGCHLD) => {
                while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    match st.pid() {
                        None => break,
                        Some(p) => {
                            if child_ended(p, st) {
                                return Ok(None);
                            }
                        }
                    }
                }
            }
            Ok(s) => return Ok(Some(s)),
            Err(_) => {}
        }
    }
}

/// Show `title` as this process's command line in `ps` and /proc/PID/cmdline: a forked
/// helper (a holder) otherwise shows the command line of the program it was forked from (a
/// job's starter: under OpenPBS `-berth-pbs /bin/bash`, a login shell's name). The argument
/// strings are overwritten in place (the kernel reads the command line from them), cut to
/// their length; nothing happens where /proc/self/stat does not say where they are.
pub(crate) fn set_cmdline(title: &str) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name start with the state, field 3; arg_start and arg_end are
    // fields 48 and 49 (proc(5)).
    let Some((_, rest)) = stat.rsplit_once(')') else { return };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else { return };
    if start == 0 || end <= start + 1 {
        return;
    }
    let len = end - start;
    let n = title.len().min(len - 1);
    // SAFETY: [start, end) is this process's own argument strings, on its initial stack,
    // mapped writable for the life of the process; the last byte stays NUL, so the kernel
    // reads no further. Nothing reads the strings again (std keeps only pointers to them,
    // and the helpers calling this never ask for their arguments).
    unsafe {
        let p = start as *mut u8;
        std::ptr::copy_nonoverlapping(title.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, len - n);
    }
}

/// Close every descriptor from 3 up except those in `keep`. Detached helpers (holders, FUSE
/// servers) call it so they do not keep a launcher's pipes open: MPICH's hydra proxy waits
/// for EOF on its ranks' output pipes, and a holder holding them would hang the job.
/// Async-signal-safe (one syscall per range), so usable between fork and exec.
pub(crate) fn close_fds_except(keep: &[i32]) {
    close_range_except(keep, 0);
}

/// In a child about to exec (`pre_exec`): every descriptor above 2 but `keep` is closed by the
/// exec itself. Closed at once instead, the pipe through which the standard library reports a
/// failed exec would be gone, and a failed exec would abort the child instead of becoming the
/// parent's error.
pub(crate) fn cloexec_fds_except(keep: &[i32]) {
    close_range_except(keep, libc::CLOSE_RANGE_CLOEXEC);
}

fn close_range_except(keep: &[i32], flags: u32) {
    let mut keep: Vec<u32> = keep.iter().filter(|&&fd| fd >= 3).map(|&fd| fd as u32).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd > from {
            // SAFETY: close_range only closes (or marks close-on-exec) descriptors; the callers
            // own every descriptor of their process (single-threaded, about to exec or to run
            // a detached helper).
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, flags) };
        }
        from = fd.saturating_add(1);
    }
}

/// An anonymous in-memory file, close-on-exec (a child's stderr read back after it failed,
/// a spec it reads on stdin).
pub(crate) fn memfd(name: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let n = std::ffi::CString::new(name.replace('\0', "?")).map_err(std::io::Error::other)?;
    // SAFETY: n is NUL-terminated; the flags are valid.
    let fd = unsafe { libc::memfd_create(n.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Make `cmd` run as `creds` (uid, gid, supplementary groups: real, effective and saved ids),
/// or as root (uid 0) for None, with fd `pass_fd` of the parent as fd `as_fd`, every other fd
/// above `as_fd` marked close-on-exec, and SIGKILL when its parent dies. For slurmstepd (ruid
/// 0, euid the user in user_init) starting a holder.
pub(crate) fn run_as(
    cmd: &mut std::process::Command,
    creds: Option<(u32, u32, Vec<u32>)>,
    pass_fd: i32,
    as_fd: i32,
) {
    use std::os::unix::process::CommandExt;
    // None: stay root (ruid 0 here; the euid is the user's in user_init). The program started
    // then is `berth holder` with the spec's user set, which becomes the user itself.
    let (uid, gid, groups, drop) = match creds {
        Some((uid, gid, groups)) => (uid, gid, groups, true),
        None => (0, 0, vec![], false),
    };
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // system calls (seteuid, setgroups, setresgid, setresuid, dup2, close_range, prctl); it
    // allocates nothing (`groups` was allocated before the fork).
    unsafe {
        cmd.pre_exec(move || {
            if libc::geteuid() != 0 && libc::seteuid(0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if drop
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if !drop && libc::setresuid(0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getuid() != uid || libc::geteuid() != uid {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            if pass_fd >= 0 && libc::dup2(pass_fd, as_fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Mark (not close) the fds above: std's own exec-error pipe must stay open until
            // exec. CLOSE_RANGE_CLOEXEC = 1 << 2 (Linux 5.11).
            libc::syscall(libc::SYS_close_range, (as_fd + 1) as u32, u32::MAX, 4u32);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
}

/// Reap our child `pid` within `timeout`; its raw wait status if we reaped it.
pub(crate) fn reap_within(pid: i32, timeout: std::time::Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 => {}
            r if r == pid => return Some(status),
            // ECHILD: reaped elsewhere (slurmstepd), or not ours.
            _ => return None,
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_candidates_follow_exec_rules() {
        assert_eq!(path_candidates("./a.out", Some("/bin")), ["./a.out"]);
        assert_eq!(path_candidates("/bin/sh", None), ["/bin/sh"]);
        assert_eq!(path_candidates("prog", Some("/a::/b")), ["/a/prog", "prog", "/b/prog"]);
        assert_eq!(path_candidates("prog", None).len(), DEFAULT_PATH.split(':').count());
    }

    #[test]
    fn threads_without_signals_block_them_and_leave_the_caller_as_it_was() {
        let mut before = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, None, Some(&mut before)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(spawn_without_signals("test-quiet", move || {
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let blocked = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap().trim().to_string();
            tx.send(u64::from_str_radix(&blocked, 16).unwrap()).unwrap();
        }));
        let blocked = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
            assert_ne!(blocked & (1 << (sig as i32 - 1)), 0, "{sig} blocked in the thread");
        }
        let mut after = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, None, Some(&mut after)).unwrap();
        assert_eq!(before, after, "the caller's mask is restored");
    }
}
