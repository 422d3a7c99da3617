//! The one reader of `/proc/PID/stat`, with one rule for zombies: a zombie has ended (it
//! only waits for its parent to reap it), so it counts as gone everywhere berth asks whether
//! a process still runs.

/// The fields of `/proc/PID/stat` berth uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 4.
    pub ppid: i32,
    /// Field 20: how many threads the process has.
    pub threads: u32,
    /// Field 22: clock ticks after boot, which tells a process from a later one with the same pid.
    pub start_time: u64,
}

/// The stat of `pid` (a number, or `self`) while it runs; None once it is gone or a zombie.
pub(crate) fn stat(pid: impl std::fmt::Display) -> Option<Stat> {
    parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time of `pid` while it runs (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: impl std::fmt::Display) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// The inode of namespace `ns` (`mnt`, `user`, `pid`) of `pid` (a number, or `self`) while it
/// runs: what tells two namespaces apart.
pub(crate) fn ns_inode(pid: impl std::fmt::Display, ns: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}")).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// Whether this process has one thread: what makes it safe for a forked child to allocate or
/// load libraries (no other thread can hold their locks at the fork).
pub(crate) fn single_threaded() -> bool {
    stat("self").is_some_and(|s| s.threads == 1)
}

/// Whether the process that started at `start_time` as `pid` still runs.
pub(crate) fn still_running(pid: i32, start_time: u64) -> bool {
    self::start_time(pid) == Some(start_time)
}

fn parse(text: &str) -> Option<Stat> {
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        threads: fields.get(17)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_command_name() {
        let line = "42 (a) b (c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 3 0 12345 0 0";
        assert_eq!(parse(line), Some(Stat { ppid: 7, threads: 3, start_time: 12345 }));
        assert_eq!(parse(&line.replace(" S 7", " Z 7")), None, "a zombie counts as gone");
        assert_eq!(parse("42 (x) S 7"), None);
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn threads_are_counted() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(stat("self").unwrap().threads >= 2);
        tx.send(()).unwrap();
        let _ = t.join();
    }

    #[test]
    fn this_process_runs_and_a_reaped_child_does_not() {
        let me = stat("self").unwrap();
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert!(still_running(std::process::id() as i32, me.start_time));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not reaped yet: once it exited, it is a zombie whose stat file is still there.
        let t0 = std::time::Instant::now();
        while start_time(pid).is_some() && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z "));
        assert_eq!(start_time(pid), None, "an exited, unreaped child is gone");
        child.wait().unwrap();
    }
}
