//! One container per node per job step: a holder sets it up, tasks join it and share its
//! namespaces (and so POSIX shared memory), `berth stop` leaves nothing behind.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use harness::{world, World};

struct Holder {
    child: Child,
    name: String,
}

fn start_holder(w: &World, name: &str, extra: &[&str]) -> Holder {
    let mut args = vec!["holder", "--name", name];
    args.extend_from_slice(extra);
    args.push(w.image());
    let mut child = w.berth(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n", "holder did not become ready: {:?}", child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()));
    Holder { child, name: name.to_string() }
}

fn join(w: &World, name: &str, script: &str) -> harness::Out {
    w.run(&["exec", "--join", name, "sh", "-c", script])
}

#[test]
fn joined_tasks_share_namespaces_and_shared_memory() {
    let w = world();
    let h = start_holder(w, "step-shm", &["--env", "STEP_VAR=from-holder"]);
    let holder_ns = |ns: &str| std::fs::read_link(format!("/proc/{}/ns/{ns}", h.child.id())).unwrap();
    let a = join(w, &h.name, "readlink /proc/self/ns/user; readlink /proc/self/ns/mnt; shmtool put /berth-step hello-from-a; cat /etc/os-release | grep ^NAME; echo $STEP_VAR $APP_HOME").ok();
    let b = join(w, &h.name, "readlink /proc/self/ns/user; readlink /proc/self/ns/mnt; shmtool get /berth-step").ok();
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    assert_eq!(a[0], holder_ns("user").to_str().unwrap(), "joiner A in the holder's user namespace");
    assert_eq!(a[1], holder_ns("mnt").to_str().unwrap());
    assert_eq!(&a[..2], &b[..2], "both joiners share user and mount namespaces");
    assert_eq!(a[2], "NAME=\"berth-busybox\"");
    assert_eq!(a[3], "from-holder /opt/app", "holder's --env and the image env reach joiners");
    assert_eq!(b[2], "hello-from-a", "POSIX shared memory is shared between joined tasks");
    stop(w, h);
}

#[test]
fn names_are_unique_and_stop_cleans_up() {
    let w = world();
    let h = start_holder(w, "step-stop", &[]);
    w.run(&["holder", "--name", "step-stop", w.image()]).fails_with(&["step-stop", "already running"]);
    // A task left running in the container is ended by `stop` too.
    let mut bg = w.berth(&["exec", "--join", "step-stop", "sleep", "8888"]).spawn().unwrap();
    let t0 = Instant::now();
    while !w.user_processes().iter().any(|p| p.starts_with("sleep 8888")) {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let holder_pid = h.child.id();
    let fuse_pid = std::fs::read_to_string(format!("/proc/{holder_pid}/task/{holder_pid}/children")).unwrap();
    let fuse_pid = fuse_pid.trim();
    assert!(std::fs::read_to_string(format!("/proc/{fuse_pid}/cmdline")).unwrap().starts_with("squashfuse_ll"));
    stop(w, h);
    let _ = bg.wait();
    let left: Vec<String> =
        w.user_processes().into_iter().filter(|p| p.starts_with("sleep 8888") || p.contains("step-stop")).collect();
    assert!(left.is_empty(), "left after stop: {left:?}");
    assert!(!std::path::Path::new(&format!("/proc/{holder_pid}")).exists());
    assert!(!std::path::Path::new(&format!("/proc/{fuse_pid}")).exists(), "FUSE server stopped");
    join(w, "step-stop", "true").fails_with(&["step-stop", "not running"]);
}

#[test]
fn bad_holder_requests() {
    let w = world();
    join(w, "never-started", "true").fails_with(&["never-started", "not running"]);
    w.run(&["holder", "--name", "../evil", w.image()]).fails_with(&["../evil", "letters"]);
    w.run(&["holder", "--name", "bad-image", "/no/such.img"]).fails_with(&["/no/such.img"]);
}

fn stop(w: &World, mut h: Holder) {
    w.run(&["stop", &h.name]).ok();
    let st = h.child.wait().unwrap();
    assert!(st.success(), "holder exits cleanly on stop: {st:?}");
}
