//! Running the build's child processes (debootstrap, tar, %post, mksquashfs) with:
//! - all their output in the build log (never on the terminal, so logs stay readable);
//! - a one-line live status on a terminal (elapsed time and the last line of output);
//! - a time limit, and a clean stop on SIGINT/SIGTERM: each child runs in its own process group
//!   so the whole tree (`unshare` -> `chroot` -> `sh` -> `sleep`) can be killed at once.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;

use berth_runtime::error::{Error, Result};

/// Set by the SIGINT/SIGTERM handler; checked by the runner and between build steps.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: the one thing that is async-signal-safe here.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Catches SIGINT and SIGTERM for the duration of a build and restores the previous handlers
/// when dropped, so the build can stop its children and remove its temporary files.
pub struct SignalGuard {
    previous: Vec<(Signal, signal::SigAction)>,
}

impl SignalGuard {
    pub fn install() -> Result<SignalGuard> {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let action = signal::SigAction::new(
            SigHandler::Handler(on_signal),
            signal::SaFlags::empty(),
            signal::SigSet::empty(),
        );
        let mut previous = Vec::new();
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler only stores to an AtomicBool, which is async-signal-safe; the
            // previous action is kept and put back in Drop.
            let old =
                unsafe { signal::sigaction(sig, &action) }.map_err(|e| Error::sys("sigaction", sig, e))?;
            previous.push((sig, old));
        }
        Ok(SignalGuard { previous })
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, old) in self.previous.drain(..) {
            // SAFETY: restores the action that was in place before install().
            let _ = unsafe { signal::sigaction(sig, &old) };
        }
    }
}

/// The build log: every child's output, plus step headers. Kept in the work directory, or at
/// the path the user asked for with `--log`.
pub struct Log {
    pub path: PathBuf,
    /// True when the user asked for the log (`--log`); otherwise it goes with the work directory.
    pub kept: bool,
    file: Mutex<File>,
}

impl Log {
    pub fn create(path: &Path, kept: bool) -> Result<Log> {
        let file = File::create(path).map_err(|e| Error::io("create build log", path, e))?;
        Ok(Log { path: path.to_path_buf(), kept, file: Mutex::new(file) })
    }

    pub fn line(&self, text: &str) {
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "{text}");
        }
    }

    /// The last `n` lines of the log, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let text =
            std::fs::read(&self.path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        lines[start..].iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
    }
}

/// Whether to draw the live status line: only when stderr is a terminal.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// How a child run ended.
pub enum Outcome {
    Exited(ExitStatus),
    TimedOut,
    Interrupted,
}

/// Run `cmd` with stdout and stderr into the log; wait at most `limit`.
pub fn run(cmd: &mut Command, label: &str, log: &Log, limit: Option<Duration>) -> Result<Outcome> {
    run_with(cmd, label, log, limit, false)
}

/// Like [`run`]; with `passthrough` the child writes straight to berth's stdout/stderr (for a
/// tool that draws its own progress bar on a terminal, like mksquashfs).
pub fn run_with(
    cmd: &mut Command,
    label: &str,
    log: &Log,
    limit: Option<Duration>,
    passthrough: bool,
) -> Result<Outcome> {
    log.line(&format!("+ {}", describe(cmd)));
    if passthrough {
        cmd.stdin(Stdio::null());
        cmd.process_group(0);
        let mut child = Child::Spawned(cmd.spawn().map_err(|e| spawn_error(cmd, label, e))?);
        let pgid = child.pid();
        let started = Instant::now();
        return loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(Outcome::Exited(status)),
                Ok(None) => {}
                Err(e) => break Err(Error::build(label, format!("waiting for the child failed: {e}"), "")),
            }
            let timed_out = limit.is_some_and(|l| started.elapsed() > l);
            if interrupted() || timed_out {
                stop_group(pgid, &mut child);
                break Ok(if timed_out { Outcome::TimedOut } else { Outcome::Interrupted });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
    }
    let (reader, writer) = nix::unistd::pipe().map_err(|e| Error::sys("pipe", label, e))?;
    let writer2 =
        writer.try_clone().map_err(|e| Error::build(label, format!("cannot dup a pipe: {e}"), ""))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::from(writer)).stderr(Stdio::from(writer2));
    // Own process group: a terminal's Ctrl-C reaches only berth, which then stops the whole
    // child tree itself, after which it can clean up in order.
    cmd.process_group(0);
    let child = cmd.spawn().map_err(|e| spawn_error(cmd, label, e))?;
    // The parent's copies of the write ends are closed once `cmd` drops them; make sure by
    // replacing the Stdio values with nulls, so the reader sees EOF when the child exits.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    follow(Child::Spawned(child), File::from(reader), label, log, limit)
}

/// Run `f` in a forked child, like [`run`] runs a command: its own process group, stdin
/// `/dev/null`, stdout and stderr into the log, stopped on SIGINT/SIGTERM or after `limit`.
/// `f`'s return value is the child's exit status. For work done by a library rather than a
/// program (`%test` through the container runtime, which forks and enters namespaces itself).
pub fn run_fn(label: &str, log: &Log, limit: Option<Duration>, f: impl FnOnce() -> i32) -> Result<Outcome> {
    use std::os::fd::AsRawFd;
    log.line(&format!("+ ({label})"));
    let (reader, writer) = nix::unistd::pipe().map_err(|e| Error::sys("pipe", label, e))?;
    let null = File::open("/dev/null").map_err(|e| Error::io("open", Path::new("/dev/null"), e))?;
    // SAFETY: the child only rearranges its descriptors and runs `f`, then leaves with _exit.
    // A build has no threads of its own besides the log copiers of finished steps, which
    // share no lock with `f` (glibc makes malloc usable in a forked child).
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork", label, e))? {
        nix::unistd::ForkResult::Child => {
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
            let _ = nix::unistd::dup2(writer.as_raw_fd(), 1);
            let _ = nix::unistd::dup2(writer.as_raw_fd(), 2);
            drop((reader, writer, null));
            let code = f();
            // SAFETY: leaving the forked child without running the parent's destructors
            // (the log's buffers, the build's temporary directories).
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            // Also here, so the group exists before the parent could signal it.
            let _ = nix::unistd::setpgid(child, child);
            drop(writer);
            follow(Child::Forked(child), File::from(reader), label, log, limit)
        }
    }
}

/// A child the runner waits for: started from a `Command`, or forked to run a function.
enum Child {
    Spawned(std::process::Child),
    Forked(Pid),
}

impl Child {
    fn pid(&self) -> Pid {
        match self {
            Child::Spawned(c) => Pid::from_raw(c.id() as i32),
            Child::Forked(p) => *p,
        }
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Child::Spawned(c) => c.try_wait(),
            Child::Forked(p) => {
                let mut status = 0;
                // SAFETY: waitpid on our own child with a valid out pointer.
                match unsafe { libc::waitpid(p.as_raw(), &mut status, libc::WNOHANG) } {
                    0 => Ok(None),
                    r if r < 0 => Err(std::io::Error::last_os_error()),
                    _ => Ok(Some(ExitStatus::from_raw(status))),
                }
            }
        }
    }

    fn wait(&mut self) {
        match self {
            Child::Spawned(c) => {
                let _ = c.wait();
            }
            Child::Forked(p) => {
                let _ = nix::sys::wait::waitpid(*p, None);
            }
        }
    }
}

/// Copy the child's output (`reader`) into the log and wait for it, drawing the status line.
fn follow(
    mut child: Child,
    reader: File,
    label: &str,
    log: &Log,
    limit: Option<Duration>,
) -> Result<Outcome> {
    let last_line = Arc::new(Mutex::new(String::new()));
    let (copier_done, copier_finished) = std::sync::mpsc::channel::<()>();
    let _copier = {
        let last_line = Arc::clone(&last_line);
        let file = log.file.lock().ok().and_then(|f| f.try_clone().ok());
        std::thread::spawn(move || {
            let mut file = file;
            let mut reader = BufReader::new(reader);
            let mut pending: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for &b in &chunk[..n] {
                    if b != b'\n' && b != b'\r' {
                        pending.push(b);
                        continue;
                    }
                    let line = String::from_utf8_lossy(&pending).into_owned();
                    pending.clear();
                    // A line ended by \r is a progress bar redrawing itself: show it on the
                    // terminal, keep it out of the log.
                    if b == b'\n' {
                        if let Some(f) = file.as_mut() {
                            let _ = writeln!(f, "{line}");
                        }
                    }
                    if !line.trim().is_empty() {
                        if let Ok(mut l) = last_line.lock() {
                            *l = line;
                        }
                    }
                }
            }
            if !pending.is_empty() {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{}", String::from_utf8_lossy(&pending));
                }
            }
            let _ = copier_done.send(());
        })
    };

    let started = Instant::now();
    let show = on_terminal();
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let pgid = child.pid();
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Outcome::Exited(status),
            Ok(None) => {}
            Err(e) => return Err(Error::build(label, format!("waiting for the child failed: {e}"), "")),
        }
        let timed_out = limit.is_some_and(|l| started.elapsed() > l);
        if interrupted() || timed_out {
            stop_group(pgid, &mut child);
            break if timed_out { Outcome::TimedOut } else { Outcome::Interrupted };
        }
        if show && last_draw.elapsed() >= Duration::from_millis(250) {
            last_draw = Instant::now();
            let last = last_line.lock().map(|l| l.clone()).unwrap_or_default();
            draw_status(label, started.elapsed(), &last);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Kill whatever the child left in its group (a daemon started by %post) so the pipe closes.
    let _ = signal::killpg(pgid, Signal::SIGKILL);
    // A daemon that left our process group (setsid) may still hold the pipe open: wait a
    // little for the rest of the output, then go on without it rather than hang the build.
    let _ = copier_finished.recv_timeout(Duration::from_secs(2));
    if show {
        eprint!("\r\x1b[2K");
    }
    log.line(&format!("({label}: {:.1}s)", started.elapsed().as_secs_f64()));
    Ok(outcome)
}

fn spawn_error(cmd: &Command, label: &str, e: std::io::Error) -> Error {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let hint = if e.kind() == std::io::ErrorKind::NotFound {
        format!("install {program} (Debian: apt-get install {})", debian_package_for(&program))
    } else {
        String::new()
    };
    Error::build(label, format!("cannot start {program}: {e}"), hint)
}

/// TERM the child's process group, then KILL what is left after a grace period.
fn stop_group(pgid: Pid, child: &mut Child) {
    let _ = signal::killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = signal::killpg(pgid, Signal::SIGKILL);
    child.wait();
}

fn draw_status(label: &str, elapsed: Duration, last: &str) {
    let width = terminal_width().max(40);
    let head = format!("  {label} [{}s] ", elapsed.as_secs());
    let room = width.saturating_sub(head.chars().count() + 1);
    // "[=====\   ] 800/1432  55%" -> "800/1432  55%": the counts fit, the bar would not.
    let last = match last.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((_, counts)) => counts.trim(),
        None => last,
    };
    let tail: String = last.chars().filter(|c| !c.is_control()).take(room).collect();
    eprint!("\r\x1b[2K{head}{tail}");
    let _ = std::io::stderr().flush();
}

fn terminal_width() -> usize {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own; fd 2 may not be a tty, in
    // which case the call fails and we fall back.
    let rc = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        80
    }
}

/// A command line as a person would type it, for the log.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn debian_package_for(program: &str) -> &str {
    match program {
        "mksquashfs" | "unsquashfs" => "squashfs-tools",
        "unshare" | "mount" => "util-linux",
        "chroot" | "cp" | "timeout" => "coreutils",
        other => other,
    }
}

/// Run a command and turn anything but exit status 0 into an error; `what` names the step.
pub fn run_checked(
    cmd: &mut Command,
    what: &str,
    log: &Log,
    limit: Option<Duration>,
    tail_on_failure: bool,
) -> Result<()> {
    check_outcome(run(cmd, what, log, limit)?, &describe_short(cmd), what, log, limit, tail_on_failure)
}

/// `outcome` as the build's result; `shown` names what ran, for the message.
pub fn check_outcome(
    outcome: Outcome,
    shown: &str,
    what: &str,
    log: &Log,
    limit: Option<Duration>,
    tail_on_failure: bool,
) -> Result<()> {
    match outcome {
        Outcome::Exited(status) if status.success() => Ok(()),
        Outcome::Exited(status) => {
            let tail = if tail_on_failure {
                format!("\n  last lines of the build log:\n{}", log.tail(20))
            } else {
                String::new()
            };
            Err(Error::build(what, format!("{shown} failed ({status}){tail}"), log_hint(log)))
        }
        Outcome::TimedOut => Err(Error::build(
            what,
            format!("gave up after {}s", limit.map(|l| l.as_secs()).unwrap_or(0)),
            log_hint(log),
        )),
        Outcome::Interrupted => Err(interrupted_error()),
    }
}

/// What failed, in the user's terms: the script of a section runs under `unshare`, but the
/// user wrote the script, not the unshare.
fn describe_short(cmd: &Command) -> String {
    match cmd.get_program().to_string_lossy().as_ref() {
        "unshare" => "the script".to_string(),
        other => format!("`{other}`"),
    }
}

pub fn interrupted_error() -> Error {
    Error::build("interrupted", "stopped on SIGINT/SIGTERM; temporary files removed, no image written", "")
}

pub fn log_hint(log: &Log) -> String {
    if log.kept {
        format!("the full build log is in {}", log.path.display())
    } else {
        "rerun with --log FILE to keep the full build log".to_string()
    }
}
