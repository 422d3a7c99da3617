//! `berth-pbs` driven exactly as TORQUE's pbs_mom drives it (the emulator in tests/pbs/mom.rs):
//! the batch script and every TM task of a job run in the image, one container per node per
//! job; prologue/epilogue check and clean up; bad input fails clearly and leaves nothing.
//! Needs root (creates a user and network namespaces).

mod harness;
#[path = "pbs/mom.rs"]
mod mom;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use harness::{world, World};
use mom::{assert_clean, job_files, job_processes, serial, As, Job, Mom, Node};

/// A job id unique to this run (holders of an interrupted earlier run never get in the way).
fn jid(n: &str) -> String {
    format!("{n}.srv{}", std::process::id())
}

/// Runs the epilogues even when a test fails half-way, so no holder outlives the test run.
struct Epilogues<'a>(&'a Mom<'a>, &'a Job, Vec<&'a Node>);

impl Drop for Epilogues<'_> {
    fn drop(&mut self) {
        for n in &self.2 {
            // Never a second panic while a failed test unwinds.
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.hook("epilogue", self.1, n)));
        }
    }
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} line in: {out}"))
}

const PROBE: &str = "echo NAME=$(grep ^NAME= /etc/os-release | cut -d= -f2); echo UID=$(id -u); echo PWD=$(pwd); echo MNT=$(readlink /proc/self/ns/mnt); echo NET=$(readlink /proc/self/ns/net); echo TASK=$PBS_TASKNUM";

#[test]
fn job_and_tasks_run_in_one_container_per_node() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let (a, b) = (Node::new(w, "a"), Node::new(w, "b"));
    let script = format!("{PROBE}\necho NODES=$(cat $PBS_NODEFILE | tr '\\n' ' ')\necho SCRIPT=$(cat {}/mom_priv/jobs/{}.SC | wc -l)\necho HOSTS=$(wc -c < /etc/hosts)\n", a.pbs_home.display(), jid("101"));
    let job = Job::new(w, &jid("101"), &[("CONTAINER", w.image())], &script);
    mom.submit(&job, &[&a, &b]);
    let _cleanup = Epilogues(&mom, &job, vec![&a, &b]);
    let p = mom.hook("prologue", &job, &a);
    assert_eq!(p.code(), Some(0), "prologue: {} {}", p.stdout(), p.stderr());
    assert_eq!(mom.hook("prologue.parallel", &job, &b).code(), Some(0));

    // The batch script on the mother superior.
    let out = mom.batch(&job, &a, As::User);
    let text = out.ok();
    assert_eq!(line(&text, "NAME="), "\"berth-busybox\"", "the script runs in the image: {text}");
    assert_eq!(line(&text, "UID="), w.uid.to_string());
    assert_eq!(
        line(&text, "PWD="),
        w.home.display().to_string(),
        "starts where a native job starts: $HOME (pbs_mom's cwd)"
    );
    assert_eq!(line(&text, "NET="), a.net_id(), "host networking of the node");
    assert_eq!(line(&text, "NODES="), "a b", "$PBS_NODEFILE is readable inside");
    assert_eq!(line(&text, "SCRIPT="), "4", "the job script is visible inside");
    assert_eq!(
        line(&text, "HOSTS="),
        std::fs::metadata("/etc/hosts").unwrap().len().to_string(),
        "the node's /etc/hosts"
    );
    let batch_mnt = line(&text, "MNT=").to_string();

    // TM tasks on the mother superior join the same container.
    for t in 1..3 {
        let o = mom.task(&job, &a, t, &["sh", "-c", PROBE]).ok();
        assert_eq!(line(&o, "MNT="), batch_mnt, "task {t} shares the batch script's container");
        assert_eq!(line(&o, "TASK="), t.to_string());
        assert_eq!(line(&o, "NAME="), "\"berth-busybox\"");
    }

    // A task of the job asking for another image is refused, naming both.
    let other = Job {
        id: job.id.clone(),
        vars: vec![("CONTAINER".into(), w.rootfs.display().to_string())],
        workdir: job.workdir.clone(),
        script_body: String::new(),
        args: None,
        gpus: 0,
    };
    let out = mom.task(&other, &a, 9, &["true"]);
    assert_eq!(out.code(), Some(255));
    assert!(
        out.stderr().contains("already runs image")
            && out.stderr().contains(w.image())
            && out.stderr().contains(w.rootfs.to_str().unwrap()),
        "{}",
        out.stderr()
    );

    // On the sister node, four tasks start at once: exactly one of them creates the node's
    // container, all share it, and it is not node a's.
    let outs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (3..7)
            .map(|t| {
                s.spawn({
                    let (mom, job, b) = (&mom, &job, &b);
                    move || mom.task(job, b, t, &["sh", "-c", PROBE]).ok()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mnts: Vec<&str> = outs.iter().map(|o| line(o, "MNT=")).collect();
    assert!(mnts.iter().all(|m| *m == mnts[0]), "tasks on node b share one container: {mnts:?}");
    assert_ne!(mnts[0], batch_mnt, "node b has its own container");
    assert!(outs.iter().all(|o| line(o, "NET=") == b.net_id() && line(o, "NAME=") == "\"berth-busybox\""));
    let holders = |n: &Node| {
        job_files(n, &jid("101")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")).count()
    };
    assert_eq!((holders(&a), holders(&b)), (1, 1), "one holder per node");
    let running = job_processes(&jid("101"));
    assert_eq!(
        running.iter().filter(|p| p.split(':').next().is_some_and(harness::is_image_server)).count(),
        2,
        "one FUSE server per node: {running:?}"
    );

    // The epilogues leave nothing: no holder, no FUSE server, no state file, no lock.
    for (which, n) in [("epilogue", &a), ("epilogue.parallel", &b)] {
        let e = mom.hook(which, &job, n);
        assert_eq!(e.code(), Some(0), "{which}: {}", e.stderr());
    }
    assert_clean(&[&a, &b], &jid("101"));
    // An epilogue with nothing to do is fine too (here in the `berth-pbs epilogue ARGS` form).
    let starter = mom.starter.display().to_string();
    let again = mom::in_node(
        &a.netns_path(),
        As::Root,
        0,
        0,
        &[&starter, "epilogue", &job.id, harness::USER, "g", "job.sh"],
    )
    .env_clear()
    .env("BERTH_CONFIG", &a.config)
    .output()
    .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));
}

/// `$job_starter_run_privileged true`: pbs_mom starts the starter as root with the job's
/// environment, which the job's user sets. berth-pbs refuses at once, with or without
/// CONTAINER, whatever USER/LOGNAME say.
#[test]
fn run_privileged_starter_is_refused() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let victim_file = w.home.join(format!("victim-{}", std::process::id()));
    let _ = std::fs::remove_file(&victim_file);
    let touch = format!("id -u; touch {}", victim_file.display());
    for vars in [vec![("CONTAINER", w.image())], vec![]] {
        let job = Job::new(w, &jid("102"), &vars, &format!("{touch}\n"));
        mom.submit(&job, &[&a]);
        let out = mom.batch(&job, &a, As::Root);
        assert_eq!(out.code(), Some(255), "{vars:?}: {} {}", out.stdout(), out.stderr());
        assert!(out.stderr().contains("$job_starter_run_privileged"), "{}", out.stderr());
        assert_eq!(out.stdout(), "", "nothing ran");
        assert_clean(&[&a], &job.id);
    }
    // The audit's case: root, an environment naming another user, a TM task.
    let starter = mom.starter.display().to_string();
    for container in [Some(w.image()), None] {
        let mut c = mom::in_node(&a.netns_path(), As::Root, 0, 0, &[&starter, "task", "sh", "-c", &touch]);
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("USER", harness::USER)
            .env("LOGNAME", harness::USER)
            .env("PBS_JOBID", "77.srv")
            .env("BERTH_CONFIG", &a.config);
        if let Some(img) = container {
            c.env("CONTAINER", img);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{container:?}: {err}");
        assert!(err.starts_with("berth: ") && err.contains("$job_starter_run_privileged"), "{err}");
        assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(!victim_file.exists(), "nothing ran as the user the environment named");
}

#[test]
fn without_container_commands_run_unchanged() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let host_release = std::fs::read_to_string("/etc/os-release").unwrap();
    let job = Job::new(w, &jid("104"), &[], "cat /etc/os-release\n");
    mom.submit(&job, &[&a]);
    std::fs::set_permissions(job.script_path(&a), std::fs::Permissions::from_mode(0o700)).unwrap();
    // The batch shell reads the script path from stdin, as bash does under pbs_mom.
    assert_eq!(mom.batch(&job, &a, As::User).ok(), host_release);
    assert_eq!(mom.task(&job, &a, 1, &["cat", "/etc/os-release"]).ok(), host_release);
    let out = mom.task(&job, &a, 1, &["no-such-command-xyz"]);
    assert_eq!(out.code(), Some(127), "{}", out.stderr());
    assert!(!a.state_dir.exists(), "nothing of berth's was touched: {}", a.state_dir.display());
    // The whole job as pbs_mom runs it (pbs_mom's environment has no qstat and nothing of
    // berth's): prologue, script, epilogue say nothing; the job's files are the job's own.
    let end = mom.run_job(&job, &a, None);
    assert_eq!(end.status, 0);
    assert_eq!(end.out.as_deref(), Some(host_release.as_str()));
    assert_eq!(end.err.as_deref(), Some(""), "a native job sees nothing of berth");
    assert!(!a.state_dir.exists());
}

/// A user's mistake reaches the user: the prologue lets the job run, the starter writes the
/// usual `berth:` message into the job's error file and the job fails; pbs_mom returns the
/// files (it does not for a failed prologue) and the node keeps nothing.
#[test]
fn user_errors_reach_the_jobs_error_file() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let mut n = 0;
    let mut expect = |vars: &[(&str, &str)], needles: &[&str]| {
        n += 1;
        let job = Job::new(w, &jid(&format!("21{n}")), vars, "echo should-not-run\n");
        mom.submit(&job, &[&a]);
        let end = mom.run_job(&job, &a, None);
        let err = end.err.clone().unwrap_or_else(|| {
            panic!("{vars:?}: pbs_mom returned no output files (job exit status {})", end.status)
        });
        assert!(end.status > 0, "{vars:?}: a failed job, not a pbs_mom error: {}: {err}", end.status);
        assert!(err.starts_with("berth: "), "{vars:?}: {err}");
        for nd in needles {
            assert!(err.contains(nd), "{vars:?}: the .e file lacks {nd:?}: {err}");
        }
        assert!(!end.out.unwrap().contains("should-not-run"));
        assert_clean(&[&a], &job.id);
    };
    for (img, needle) in bad_images(w) {
        expect(&[("CONTAINER", img.as_str())], &[img.as_str(), needle]);
    }
    let img = w.image();
    expect(&[("CONTAINER", img), ("BERTH_BINDZ", "/x")], &["BERTH_BINDZ"]);
    expect(&[("CONTAINER", img), ("BERTH_BIND", "/no/such/dir:/data")], &["/no/such/dir"]);
    expect(&[("CONTAINER", img), ("BERTH_MPI", "openmpi")], &["BERTH_MPI", "hybrid, host or none"]);
    expect(&[("CONTAINER", img), ("BERTH_NV", "please")], &["BERTH_NV"]);
    // Relative images are taken from the submit directory.
    let ok = Job::new(w, &jid("230"), &[("CONTAINER", "rel.sqsh")], "grep ^NAME= /etc/os-release\n");
    std::fs::copy(&w.image, ok.workdir.join("rel.sqsh")).unwrap();
    mom.submit(&ok, &[&a]);
    let end = mom.run_job(&ok, &a, None);
    assert_eq!((end.status, end.out.as_deref()), (0, Some("NAME=\"berth-busybox\"\n")), "{:?}", end.err);
    assert_clean(&[&a], &ok.id);
}

/// Node faults only (here: a broken site configuration) stop a job in the prologue, with a
/// requeue code (never 1, which deletes the job and its output).
#[test]
fn broken_node_configuration_requeues() {
    let _s = serial();
    let w = world();
    let mut mom = Mom::new(w);
    let a = Node::new(w, "a");
    std::fs::write(&a.config, "state_dir = [\n").unwrap();
    let job = Job::new(w, &jid("240"), &[("CONTAINER", w.image())], "true\n");
    mom.submit(&job, &[&a]);
    // The reason reaches syslog: TORQUE keeps no output of a requeued job and logs only the
    // prologue's exit status at its default log level.
    let sock = w.path(&format!("syslog-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let syslog = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    syslog.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    mom.syslog = Some(sock.clone());
    let p = mom.hook("prologue", &job, &a);
    assert_eq!(p.code(), Some(2), "{}", p.stderr());
    assert!(p.stderr().contains("configuration") && p.stderr().contains(&job.id), "{}", p.stderr());
    let mut buf = [0u8; 4096];
    let n = syslog.recv(&mut buf).expect("a syslog message");
    let logged = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        logged.contains("berth-pbs[")
            && logged.contains(&format!(
                "berth-pbs prologue: job {}: requeued: this node's berth configuration is broken",
                job.id
            )),
        "{logged}"
    );
    let _ = std::fs::remove_file(&sock);
    mom.syslog = None;
    assert_eq!(mom.run_job(&job, &a, None).status, -3, "requeued (JOB_EXEC_RETRY)");
}

/// The prologue (root, the job owner from argv) makes the owner's state directory
/// `/run/berth/<uid>`, which no other user can create first (issue 11, row 4), when the site
/// sets no `state_dir`.
#[test]
fn prologue_makes_the_users_private_state_directory() {
    use std::os::unix::fs::MetadataExt;
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    std::fs::write(&a.config, "").unwrap();
    let dir = Path::new("/run/berth").join(w.uid.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let job = Job::new(w, &jid("245"), &[], "true\n");
    mom.submit(&job, &[&a]);
    let p = mom.hook("prologue", &job, &a);
    assert_eq!(p.code(), Some(0), "{}", p.stderr());
    let m = std::fs::symlink_metadata(&dir).unwrap();
    let root = std::fs::symlink_metadata("/run/berth").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(m.is_dir() && m.uid() == w.uid && m.mode() & 0o7777 == 0o700, "{:o} uid {}", m.mode(), m.uid());
    assert!(root.uid() == 0 && root.mode() & 0o7777 == 0o755, "{:o} uid {}", root.mode(), root.uid());
}

/// Images a user cannot use, with what the message must say.
fn bad_images(w: &World) -> Vec<(String, &'static str)> {
    let missing = w.path("no-such.sqsh");
    let unreadable = w.path("secret.sqsh");
    std::fs::copy(&w.image, &unreadable).unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o600)).unwrap();
    let corrupt = w.path("corrupt.sqsh");
    std::fs::write(&corrupt, b"this is not an image at all, just some text\n".repeat(100)).unwrap();
    std::fs::set_permissions(&corrupt, std::fs::Permissions::from_mode(0o644)).unwrap();
    let closed_dir = w.path("closed-rootfs");
    std::fs::create_dir_all(&closed_dir).unwrap();
    std::fs::set_permissions(&closed_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let s = |p: &Path| p.display().to_string();
    vec![
        (s(&missing), "No such file"),
        (s(&unreadable), "ermission denied"),
        (s(&corrupt), ""),
        // The directory is opened (as the user) before anything else looks at it.
        (s(&closed_dir), "readable by you"),
    ]
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let mut n = 0;
    let mut expect = |vars: &[(&str, &str)], batch_stdin: Option<&str>, needles: &[&str]| {
        n += 1;
        let id = jid(&format!("30{n}"));
        let job = Job::new(w, &id, vars, "echo should-not-run\n");
        mom.submit(&job, &[&a]);
        let out = match batch_stdin {
            Some(s) => mom.batch_with_stdin(&job, &a, As::User, "/bin/bash", s),
            None => mom.task(&job, &a, 1, &["echo", "should-not-run"]),
        };
        let err = out.stderr();
        assert_eq!(out.code(), Some(255), "berth-pbs's own error exit for {vars:?}: {err}");
        assert!(!out.stdout().contains("should-not-run"), "{}", out.stdout());
        assert!(err.starts_with("berth: "), "{err}");
        for nd in needles {
            assert!(err.contains(nd), "stderr lacks {nd:?}: {err}");
        }
        assert_clean(&[&a], &id);
    };
    for (img, needle) in bad_images(w) {
        expect(&[("CONTAINER", img.as_str())], None, &[img.as_str(), needle]);
        expect(
            &[("CONTAINER", img.as_str())],
            Some(&format!("{}/mom_priv/jobs/x.SC\n", a.pbs_home.display())),
            &[],
        );
    }
    let img = w.image();
    expect(&[("CONTAINER", img)], Some(""), &["stdin", "no job script path"]);
    expect(&[("CONTAINER", img)], Some("/no/such/script.SC\n"), &["/no/such/script.SC"]);
    expect(&[("CONTAINER", img), ("BERTH_BINDS", "/tmp")], None, &["unknown option BERTH_BINDS"]);
    expect(&[("CONTAINER", img), ("BERTH_CLEANENV", "perhaps")], None, &["BERTH_CLEANENV"]);
    expect(&[("CONTAINER", img), ("BERTH_BIND", "/no/such/dir:/data")], None, &["/no/such/dir"]);
}

/// The fake `pbs` module the OpenPBS hooks are driven with: the API they use
/// (pbs.event().job.Variable_List/id/euser, e.progname, e.argv, e.env, e.accept(),
/// e.reject(), pbs.logmsg); `accept` prints the launch as JSON, `logmsg` writes `LOG: msg`
/// lines on stderr. `"broken": true` in the event makes reading `progname` raise.
const FAKE_PBS: &str = r#"
import json, os, sys
class _Job:
    def __init__(self, vl, jid="", euser=""): self.Variable_List = vl; self.id = jid; self.euser = euser
class _Event:
    def __init__(self, d):
        self.job = _Job(d["vars"], d.get("id", ""), d.get("euser", "")); self._progname = d["progname"]; self.argv = list(d["argv"]); self.env = dict(d["env"]); self._broken = d.get("broken", False)
    @property
    def progname(self):
        if self._broken: raise RuntimeError("no progname today")
        return self._progname
    @progname.setter
    def progname(self, v): self._progname = v
    def accept(self):
        print(json.dumps({"progname": self._progname, "argv": list(self.argv), "env": self.env})); raise SystemExit(0)
    def reject(self, msg=""):
        print(json.dumps({"rejected": msg})); raise SystemExit(0)
_e = None
def event():
    global _e
    if _e is None: _e = _Event(json.loads(os.environ["FAKE_PBS_EVENT"]))
    return _e
def logmsg(level, msg): sys.stderr.write("LOG: %s\n" % msg)
LOG_DEBUG = 4
LOG_ERROR = 3
"#;

/// Runs an OpenPBS hook under python3 with the fake `pbs` module: (accepted launch, stderr).
fn run_hook(hook: &str, event: serde_json::Value, env: &[(&str, &Path)]) -> (serde_json::Value, String) {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pbs.py"), FAKE_PBS).unwrap();
        d
    });
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/openpbs").join(hook);
    let out = std::process::Command::new("python3")
        .arg(&hook)
        .env("PYTHONPATH", dir.path())
        .env("FAKE_PBS_EVENT", event.to_string())
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("python3");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let accepted = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{} {err}", String::from_utf8_lossy(&out.stdout)));
    (accepted, err)
}

#[test]
fn openpbs_hook_rewrites_the_launch() {
    let _s = serial();
    let run = |event: serde_json::Value| run_hook("berth_launch.py", event, &[]).0;
    let starter = "/usr/libexec/berth/berth-pbs";
    // The job script's shell: OpenPBS 23.06 hands the hook progname /bin/bash and an empty
    // argv; older moms ["-bash"].
    for argv in [serde_json::json!([]), serde_json::json!(["-bash"])] {
        let r = run(
            serde_json::json!({"vars": {"CONTAINER": "/img/a.sif", "PBS_O_WORKDIR": "/home/u"}, "progname": "/bin/bash", "argv": argv, "env": {}}),
        );
        assert_eq!(r["progname"], starter);
        assert_eq!(r["argv"], serde_json::json!([starter, "/bin/bash"]));
        assert_eq!(r["env"]["CONTAINER"], "/img/a.sif");
    }
    // A TM task.
    let r = run(
        serde_json::json!({"vars": {"CONTAINER": "/img/a.sif"}, "progname": "/usr/bin/orted", "argv": ["orted", "-mca", "x", "y"], "env": {"CONTAINER": "/img/a.sif"}}),
    );
    assert_eq!(r["argv"], serde_json::json!([starter, "/usr/bin/orted", "-mca", "x", "y"]));
    // Without CONTAINER nothing changes (even a broken event is not looked at); an already
    // wrapped launch is not wrapped twice.
    let r = run(
        serde_json::json!({"vars": {"PBS_O_WORKDIR": "/home/u"}, "progname": "/bin/bash", "argv": [], "env": {}, "broken": true}),
    );
    assert_eq!((r["progname"].as_str(), r["argv"].clone()), (Some("/bin/bash"), serde_json::json!([])));
    let r = run(
        serde_json::json!({"vars": {"CONTAINER": "/i"}, "progname": starter, "argv": [starter, "/bin/bash"], "env": {}}),
    );
    assert_eq!(r["argv"], serde_json::json!([starter, "/bin/bash"]));
}

/// A launch hook that fails inside (here: the event's progname cannot be read) launches, in
/// place of the job's program, one that puts a `berth:` message in the job's error file and
/// exits 255, and logs it (a hook that raises ends the job with -17 and no output at all).
#[test]
fn openpbs_launch_hook_failure_reaches_the_jobs_error_file() {
    let (r, log) = run_hook(
        "berth_launch.py",
        serde_json::json!({"vars": {"CONTAINER": "/img/a.sif"}, "id": "5.srv", "progname": "/bin/bash", "argv": [], "env": {}, "broken": true}),
        &[],
    );
    assert_eq!(r["progname"], "/bin/sh", "{r}");
    assert!(
        log.contains("LOG: berth: job 5.srv: the berth launch hook failed (RuntimeError: no progname today)"),
        "{log}"
    );
    let argv: Vec<String> = serde_json::from_value(r["argv"].clone()).unwrap();
    let out = std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.starts_with("berth: the berth launch hook failed (RuntimeError: no progname today)"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// The execjob_epilogue hook calls `berth-pbs epilogue JOBID USER` (a recording stand-in
/// here) for container jobs only, and puts what it prints and a failure in the mom log.
#[test]
fn openpbs_epilogue_hook_stops_container_jobs_and_logs_failures() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("called");
    let stand_in = dir.path().join("berth-pbs");
    let write_stand_in = |body: &str| {
        std::fs::write(&stand_in, format!("#!/bin/sh\necho \"$@\" >> {}\n{body}\n", rec.display())).unwrap();
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let event = |vars: serde_json::Value| serde_json::json!({"vars": vars, "progname": "", "argv": [], "env": {}, "id": "9.srv", "euser": "alice"});
    let env = [("BERTH_PBS_STARTER", stand_in.as_path())];
    write_stand_in("exit 0");
    let (_, log) = run_hook("berth_end.py", event(serde_json::json!({})), &env);
    assert!(!rec.exists(), "a native job costs no berth-pbs run");
    assert_eq!(log, "");
    let (_, log) = run_hook("berth_end.py", event(serde_json::json!({"CONTAINER": "/i.sif"})), &env);
    assert_eq!(std::fs::read_to_string(&rec).unwrap(), "epilogue 9.srv alice\n");
    assert_eq!(log, "", "a clean stop logs nothing");
    write_stand_in("echo 'berth-pbs epilogue: job 9.srv: not stopped (why)' >&2; exit 1");
    let (_, log) = run_hook("berth_end.py", event(serde_json::json!({"CONTAINER": "/i.sif"})), &env);
    assert!(
        log.contains("LOG: berth: job 9.srv: berth-pbs epilogue: job 9.srv: not stopped (why)\n"),
        "{log}"
    );
    assert!(log.contains("epilogue 9.srv alice exited with 1"), "{log}");
    write_stand_in("kill -SEGV $$");
    let (_, log) = run_hook("berth_end.py", event(serde_json::json!({"CONTAINER": "/i.sif"})), &env);
    assert!(log.contains("exited with -11"), "{log}");
}

#[test]
fn rsh_agent_starts_remote_commands_in_the_job_container() {
    // What mpirun does without TM: from inside the job's container on node a, start a
    // command on node b through the agent and ssh (here a stand-in that needs no keys).
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let (a, b) = (Node::new(w, "a"), Node::new(w, "b"));
    let ssh = mom::fake_ssh(w, &[&a, &b], false);
    let probe = "echo REMOTE NET=$(readlink /proc/self/ns/net) NAME=$(grep ^NAME= /etc/os-release | cut -d= -f2) JOB=$PBS_JOBID X=$BERTH_ENV_CHECK$CHECK";
    let script = format!(
        "{} -x b '{probe}'\necho LOCAL NET=$(readlink /proc/self/ns/net) MNT=$(readlink /proc/self/ns/mnt)\n",
        mom.rsh_agent.display()
    );
    let job = Job::new(
        w,
        &jid("105"),
        &[("CONTAINER", w.image()), ("BERTH_PBS_SSH", ssh.ssh.as_str()), ("BERTH_ENV_CHECK", "carried")],
        &script,
    );
    mom.submit(&job, &[&a, &b]);
    let _cleanup = Epilogues(&mom, &job, vec![&a, &b]);
    let out = mom.batch(&job, &a, As::User).ok();
    assert!(
        out.contains(&format!("REMOTE NET={} NAME=\"berth-busybox\" JOB={} X=carried\n", b.net_id(), job.id)),
        "{out}"
    );
    assert!(out.contains(&format!("LOCAL NET={}", a.net_id())), "{out}");
    let holders = |n: &Node| {
        job_files(n, &job.id).into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")).count()
    };
    assert_eq!((holders(&a), holders(&b)), (1, 1), "the remote command made node b's container");
    // `berth-pbs rsh` does the same from the host side (where mpirun runs outside the image);
    // this time node b's container is joined, not created.
    let starter = mom.starter.display().to_string();
    let host_side = mom::in_node(&a.netns_path(), As::User, w.uid, w.gid, &[&starter, "rsh", "b", probe])
        .env_clear()
        .envs(mom.job_env(&job, &a, 9))
        .current_dir(&w.home)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&host_side.stdout);
    assert!(
        text.contains(&format!(
            "REMOTE NET={} NAME=\"berth-busybox\" JOB={} X=carried\n",
            b.net_id(),
            job.id
        )),
        "{text} {}",
        String::from_utf8_lossy(&host_side.stderr)
    );
    assert_eq!((holders(&a), holders(&b)), (1, 1));
    drop(ssh);
    drop(_cleanup);
    assert_clean(&[&a, &b], &job.id);
}

/// An MPI job across two emulated nodes through the rsh agent (Open MPI without TM): mpirun
/// runs in the job's container on node a and starts orted on node b through
/// `berth-pbs-rsh` and ssh (a stand-in here), so the remote ranks run in node b's container.
/// Gated: needs an Open MPI image (defs/openmpi.def, built with `berth build`) with `mpirun`
/// and `sed`: `BERTH_TEST_MPI_IMAGE=/path/openmpi.img cargo test -p berth-pbs --test pbs mpi`.
/// `BERTH_TEST_MPI_PROGRAM=/path/in/image/prog` also runs that MPI program (2 ranks, one per
/// node) and requires it to succeed.
#[test]
fn mpi_across_nodes_through_the_rsh_agent() {
    let Some(img) = std::env::var_os("BERTH_TEST_MPI_IMAGE") else {
        eprintln!("skipped: set BERTH_TEST_MPI_IMAGE=/path/to/openmpi.img to run the MPI test");
        return;
    };
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let (a, b) = (Node::new(w, "a"), Node::new(w, "b"));
    let img = img.to_string_lossy().into_owned();
    let ssh = mom::fake_ssh(w, &[&a, &b], true);
    let mpirun = format!(
        "mpirun --oversubscribe -np 2 --host {},{} --mca plm_rsh_agent {} --mca btl self,tcp --mca btl_tcp_if_include 10.251.0.0/16 --mca oob_tcp_if_include 10.251.0.0/16",
        ssh.addrs[0], ssh.addrs[1], mom.rsh_agent.display()
    );
    let mut script = format!("{mpirun} sh -c 'echo RANK=$OMPI_COMM_WORLD_RANK NET=$(readlink /proc/self/ns/net) MNT=$(readlink /proc/self/ns/mnt)'\n");
    let program = std::env::var("BERTH_TEST_MPI_PROGRAM").ok();
    if let Some(p) = &program {
        script.push_str(&format!("{mpirun} {p} && echo PROGRAM-OK\n"));
    }
    let job = Job::new(
        w,
        &jid("401"),
        &[("CONTAINER", img.as_str()), ("BERTH_PBS_SSH", ssh.ssh.as_str())],
        &script,
    );
    mom.submit(&job, &[&a, &b]);
    let _cleanup = Epilogues(&mom, &job, vec![&a, &b]);
    let out = mom.batch(&job, &a, As::User).ok();
    eprintln!("the job printed:\n{out}");
    let rank = |r: u32| {
        out.lines()
            .find(|l| l.starts_with(&format!("RANK={r} ")))
            .unwrap_or_else(|| panic!("no rank {r}: {out}"))
            .to_string()
    };
    let (r0, r1) = (rank(0), rank(1));
    let own_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap().display().to_string();
    assert!(
        r0.contains(&format!("NET={}", a.net_id())) && r1.contains(&format!("NET={}", b.net_id())),
        "one rank per node: {out}"
    );
    let mnt = |l: &str| l.split("MNT=").nth(1).unwrap().to_string();
    assert!(
        mnt(&r0) != own_mnt && mnt(&r1) != own_mnt && mnt(&r0) != mnt(&r1),
        "each rank in its node's container: {out}"
    );
    if program.is_some() {
        assert!(out.contains("PROGRAM-OK"), "the MPI program failed: {out}");
    }
    drop(ssh);
    drop(_cleanup);
    assert_clean(&[&a, &b], &job.id);
}

/// The script line's forms pbs_mom writes (`qsub -F` arguments appended, `$exec_with_exec`):
/// a container job gets its arguments exactly as the same job without CONTAINER does.
#[test]
fn script_arguments_and_exec_with_exec_as_native() {
    let _s = serial();
    let w = world();
    let mut mom = Mom::new(w);
    let a = Node::new(w, "a");
    let script = "echo \"ARGS=$#:$1:$2\"\n";
    let mut n = 0;
    let mut run = |mom: &Mom, container: bool, args: Option<&str>| {
        n += 1;
        let vars: Vec<(&str, &str)> = if container { vec![("CONTAINER", w.image())] } else { vec![] };
        let mut job = Job::new(w, &jid(&format!("50{n}")), &vars, script);
        job.args = args.map(str::to_string);
        mom.submit(&job, &[&a]);
        let end = mom.run_job(&job, &a, None);
        assert_eq!(end.status, 0, "{:?}", end.err);
        assert_clean(&[&a], &job.id);
        let out = end.out.unwrap();
        line(&out, "ARGS=").to_string()
    };
    for exec in [false, true] {
        mom.exec_with_exec = exec;
        for args in [None, Some("one 'two three'")] {
            let native = run(&mom, false, args);
            let contained = run(&mom, true, args);
            assert_eq!(contained, native, "exec_with_exec={exec} -F {args:?}");
        }
    }
    mom.exec_with_exec = false;
    assert_eq!(run(&mom, true, Some("one 'two three'")), "2:one:two three");
}

/// `qsub -I`: the user's shell is not in the image -> /bin/sh with a note, like batch jobs;
/// the shell starts where a native one does ($HOME).
#[test]
fn interactive_job_falls_back_to_sh() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let job = Job::new(w, &jid("601"), &[("CONTAINER", w.image())], "");
    mom.submit(&job, &[&a]);
    let end = mom.run_job(&job, &a, Some("grep ^NAME= /etc/os-release; pwd; exit 3\n"));
    let err = end.err.clone().unwrap();
    assert_eq!(end.status, 3, "the shell's exit status: {err}");
    let out = end.out.unwrap();
    assert!(out.contains("NAME=\"berth-busybox\""), "{out} {err}");
    assert!(out.contains(&format!("{}\n", w.home.display())), "{out}");
    assert!(err.contains("/bin/bash is not in the image") && err.contains("/bin/sh"), "{err}");
    assert_clean(&[&a], &job.id);
}

/// Per-job GPU and MPI switches are the CLI's `--nv` / `--mpi=`: a valid one is taken
/// (a bad one is refused in `user_errors_reach_the_jobs_error_file`).
#[test]
fn per_job_mpi_and_workdir() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let job = Job::new(
        w,
        &jid("701"),
        &[("CONTAINER", w.image()), ("BERTH_MPI", "none"), ("BERTH_WORKDIR", "/tmp")],
        "pwd\n",
    );
    mom.submit(&job, &[&a]);
    let end = mom.run_job(&job, &a, None);
    assert_eq!((end.status, end.out.as_deref()), (0, Some("/tmp\n")), "{:?}", end.err);
    assert_clean(&[&a], &job.id);
}

/// Commit-to-obit on the emulator (prologue start to epilogue end, the part berth adds to):
/// a mom without berth, berth with a native job, berth with a CONTAINER job; 5 runs each
/// after one warm-up. `cargo test -p berth-pbs --test pbs timings -- --ignored --nocapture`;
/// `BERTH_TEST_PBS_STARTER=target/x86_64-unknown-linux-gnu/release/berth-pbs` times the
/// packaged static build (packaging/build.sh) instead of the debug one.
#[test]
#[ignore]
fn timings() {
    let _s = serial();
    let w = world();
    let mut mom = Mom::new(w);
    let a = Node::new(w, "a");
    let mut n = 0;
    let mut measure = |mom: &Mom, container: bool| -> Vec<(f64, f64)> {
        (0..6)
            .map(|_| {
                n += 1;
                let vars: Vec<(&str, &str)> = if container { vec![("CONTAINER", w.image())] } else { vec![] };
                let job = Job::new(w, &jid(&format!("9{n:02}")), &vars, "true\n");
                mom.submit(&job, &[&a]);
                let end = mom.run_job(&job, &a, None);
                assert_eq!(end.status, 0, "{:?}", end.err);
                (end.elapsed.as_secs_f64() * 1000.0, end.until_job_end.as_secs_f64() * 1000.0)
            })
            .skip(1)
            .collect()
    };
    mom.berth = false;
    let none = measure(&mom, false);
    mom.berth = true;
    let native = measure(&mom, false);
    let contained = measure(&mom, true);
    for (what, both) in
        [("no berth", none), ("berth, native job", native), ("berth, CONTAINER job", contained)]
    {
        let v: Vec<f64> = both.iter().map(|p| p.0).collect();
        let epi: Vec<f64> = both.iter().map(|p| p.0 - p.1).collect();
        let min = v.iter().cloned().fold(f64::MAX, f64::min);
        let max = v.iter().cloned().fold(0.0, f64::max);
        let med = {
            let mut s = v.clone();
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            s[2]
        };
        eprintln!(
            "TIMING {what}: min {min:.1} ms, median {med:.1} ms, max {max:.1} ms ({v:.1?}); epilogue {epi:.1?}"
        );
    }
}

/// berth-pbs as packaging/build.sh builds it (`RUSTFLAGS="-C target-feature=+crt-static"`,
/// here the debug profile): `BERTH_TEST_PBS_STATIC` names a build, else it is built once into
/// `target/pbs-static` (a target directory of its own: the flag changes every crate).
fn static_starter() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("BERTH_TEST_PBS_STATIC") {
                return p.into();
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let target = root.join("target/pbs-static");
            let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
            let st = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .current_dir(&root)
                .args(["build", "-q", "-p", "berth-pbs", "--target", &triple])
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env("CARGO_TARGET_DIR", &target)
                .status()
                .unwrap();
            assert!(st.success(), "building the static berth-pbs failed");
            target.join(triple).join("debug/berth-pbs")
        })
        .clone()
}

/// The packaged build has no dynamic loader, so a job's `LD_PRELOAD` runs nothing even in a
/// starter that a misconfigured pbs_mom started as root; berth-pbs then refuses the job.
#[test]
fn static_starter_ignores_ld_preload_as_root() {
    let bin = static_starter();
    let _s = serial();
    let w = world();
    let file = std::process::Command::new("file").arg(&bin).output().unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(file.contains("statically linked") || file.contains("static-pie linked"), "{file}");
    let src = w.path("evil.c");
    let marker = w.path(&format!("evil-ran-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void evil(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let so = w.path("evil.so");
    assert!(std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let out = std::process::Command::new(&bin)
        .args(["task", "true"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LD_PRELOAD", &so)
        .env("USER", harness::USER)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("$job_starter_run_privileged"));
    assert!(!marker.exists(), "the job's LD_PRELOAD ran as root");
    // The same preload does run in a dynamically linked program (the test means something).
    std::process::Command::new("/bin/true").env("LD_PRELOAD", &so).status().unwrap();
    assert!(marker.exists(), "the preload library works in a dynamic program");
    let _ = std::fs::remove_file(&marker);
}

/// `BERTH_NV=1`, or GPUs allocated by pbs_mom (a GPU file that names them), ask for the host's
/// NVIDIA driver like `--nv`; on a node without one the job's error file says so.
#[test]
fn gpu_jobs_ask_for_the_driver() {
    if Path::new("/proc/driver/nvidia/version").exists() {
        eprintln!("skipped: this host has an NVIDIA driver (tests/gpu covers it)");
        return;
    }
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    for (n, var, gpus) in [("801", Some(("BERTH_NV", "1")), 0), ("802", None, 1)] {
        let mut vars = vec![("CONTAINER", w.image())];
        vars.extend(var);
        let mut job = Job::new(w, &jid(n), &vars, "echo should-not-run\n");
        job.gpus = gpus;
        mom.submit(&job, &[&a]);
        let end = mom.run_job(&job, &a, None);
        let err = end.err.unwrap();
        assert_eq!(end.status, 255, "{var:?} gpus={gpus}: {err}");
        assert!(err.starts_with("berth: ") && err.contains("no NVIDIA driver"), "{var:?}: {err}");
        assert_clean(&[&a], &job.id);
    }
}

/// A CPU-only node with the default configuration (`inject.nvidia = "auto"`): pbs_mom names a
/// GPU file for every job (`PBS_GPUFILE`) but writes none, and the container job runs without
/// the NVIDIA stack, as it would natively.
#[test]
fn cpu_jobs_run_without_gpus_though_pbs_gpufile_is_set() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let script = "grep ^NAME= /etc/os-release; echo GPUFILE=$PBS_GPUFILE; ls /dev/nvidiactl 2>/dev/null || echo no-nvidia\n";
    let job = Job::new(w, &jid("810"), &[("CONTAINER", w.image())], script);
    mom.submit(&job, &[&a]);
    let end = mom.run_job(&job, &a, None);
    let out = end.out.clone().unwrap_or_default();
    assert_eq!(end.status, 0, "{out}\n{:?}", end.err);
    assert_eq!(
        out,
        format!("NAME=\"berth-busybox\"\nGPUFILE={}\nno-nvidia\n", job.gpufile(&a).display()),
        "{:?}",
        end.err
    );
    assert!(!end.err.unwrap_or_default().contains("NVIDIA"));
    assert_clean(&[&a], &job.id);
}

/// Array jobs (`qsub -t`): ids like `12[3].server` name the holder and the script file.
#[test]
fn array_job_runs_in_its_container() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let id = format!("12[3].srv{}", std::process::id());
    let job =
        Job::new(w, &id, &[("CONTAINER", w.image())], "grep ^NAME= /etc/os-release; echo ID=$PBS_JOBID\n");
    mom.submit(&job, &[&a]);
    let end = mom.run_job(&job, &a, None);
    assert_eq!(end.status, 0, "{:?}", end.err);
    assert_eq!(end.out.unwrap(), format!("NAME=\"berth-busybox\"\nID={id}\n"));
    let t0 = std::time::Instant::now();
    while !job_processes(&id).is_empty() && t0.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(job_processes(&id), Vec::<String>::new());
    assert!(job_files(&a, &id.replace(['[', ']'], "_")).is_empty(), "holder files left");
}

/// A node whose site lends TORQUE's client tools (`inject.scheduler_clients = ["torque"]`):
/// the host tree is a faithful fake (this machine has no TORQUE) with a `qstat` program
/// linked against `libtorque.so.2` under /usr/local, as `make install` leaves them, and the
/// server name file. A job in an image without them runs the host's `qstat`; a job in an
/// image that cannot run host programs (busybox, no glibc) still runs, without them.
#[test]
fn host_torque_client_tools_inside_the_container() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let host = w.path("torque-host");
    let _ = std::fs::remove_dir_all(&host);
    let lib = host.join("usr/local/lib");
    let bin = host.join("usr/local/bin");
    for d in [&lib, &bin, &host.join("var/spool/torque")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let cc = |args: &[&str]| {
        let st = std::process::Command::new("cc").args(args).status().unwrap();
        assert!(st.success(), "cc {args:?}");
    };
    let src = w.path("libtorque.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nconst char *pbs_default(void){static char s[64]; FILE *f = fopen(\"/var/spool/torque/server_name\", \"r\");\n if (!f || !fgets(s, sizeof s, f)) return \"?\"; fclose(f); return s;}\n",
    )
    .unwrap();
    let so = lib.join("libtorque.so.2");
    cc(&[
        "-shared",
        "-fPIC",
        "-Wl,-soname,libtorque.so.2",
        "-o",
        so.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let main = w.path("qstat.c");
    std::fs::write(
        &main,
        "#include <stdio.h>\nconst char *pbs_default(void);\nint main(void){printf(\"host qstat, server %s\", pbs_default()); return 0;}\n",
    )
    .unwrap();
    cc(&[
        "-o",
        bin.join("qstat").to_str().unwrap(),
        main.to_str().unwrap(),
        so.to_str().unwrap(),
        "-Wl,--enable-new-dtags,-rpath,/usr/local/lib",
    ]);
    std::fs::write(host.join("var/spool/torque/server_name"), "srv.example\n").unwrap();
    for p in [host.as_path(), &w.dir] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut config = std::fs::read_to_string(&a.config).unwrap();
    config.push_str(&format!(
        "[inject]\nhost_root = \"{}\"\nscheduler_clients = [\"torque\"]\n",
        host.display()
    ));
    std::fs::write(&a.config, config).unwrap();

    let glibc = harness::glibc_image("torque-clients", &[]);
    let glibc = glibc.to_str().unwrap();
    let script = "command -v qstat || echo no-qstat; qstat\n";
    let job = Job::new(w, &jid("801"), &[("CONTAINER", glibc)], script);
    mom.submit(&job, &[&a]);
    let end = mom.run_job(&job, &a, None);
    let out = end.out.clone().unwrap_or_default();
    assert_eq!(end.status, 0, "{out}\n{:?}", end.err);
    assert!(out.contains("/.berth/host/bin/qstat"), "{out}");
    assert!(out.contains("host qstat, server srv.example"), "{out}");
    assert_clean(&[&a], &job.id);

    // An image without glibc (busybox) cannot run the host's programs: the job runs without them.
    let job = Job::new(w, &jid("802"), &[("CONTAINER", w.image())], "command -v qstat || echo no-qstat\n");
    mom.submit(&job, &[&a]);
    let end = mom.run_job(&job, &a, None);
    assert_eq!((end.status, end.out.as_deref()), (0, Some("no-qstat\n")), "{:?}", end.err);
    assert_clean(&[&a], &job.id);
}

/// `CONTAINER=docker://REF`: berth-pbs has the installed `berth` convert the image once per
/// digest into the node's `[registry] cache_dir`; the script and the TM tasks run in that image,
/// one container; a later job reuses the file; an unknown tag fails the job with the registry's
/// reason in its error file. The registry is a real `docker-registry` listening in the node's
/// own network namespace (the emulated nodes have only their loopback).
#[test]
fn registry_image_is_converted_once_and_shared_by_tasks() {
    use berth_registry::testimg::{finish, image, layer, Ent};
    use harness::registry::Registry;

    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let built = Path::new(env!("CARGO_BIN_EXE_berth-pbs")).with_file_name("berth");
    assert!(
        built.is_file(),
        "{} is missing: `cargo build -p berth` first (berth-pbs converts with it)",
        built.display()
    );
    // Installed beside berth-pbs, as the packages install it.
    std::fs::copy(&built, mom.starter.with_file_name("berth")).unwrap();

    let a = Node::new(w, "a");
    let d = w.path("pbs-registry");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let base = d.join("base.tar.gz");
    let tar = std::process::Command::new("tar")
        .args(["-C", mom::path_str(&w.rootfs), "--numeric-owner", "--owner=0", "--group=0", "-czf"])
        .arg(&base)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let layout = d.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let only_here = layer(&[Ent::File("from-registry", b"pulled-by-berth\n", 0o644, 0, 0)], true);
    let m = image(&layout, &serde_json::json!({}), &[std::fs::read(&base).unwrap(), only_here], "amd64");
    finish(&layout, vec![m], "v1");
    let reg = Registry::start_in(&d.join("reg"), None, None, Some(&a.netns));
    reg.push(&layout, "v1", &format!("docker://{}/test/pbs:v1", reg.addr()), &[]);

    let cache = d.join("site-cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut cfg = std::fs::read_to_string(&a.config).unwrap();
    cfg +=
        &format!("[registry]\ncache_dir = \"{}\"\ninsecure_hosts = [\"{}\"]\n", cache.display(), reg.addr());
    std::fs::write(&a.config, cfg).unwrap();
    let mine = cache.join(w.uid.to_string());
    let sqsh = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&mine)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sqsh"))
            .collect()
    };
    let conversions = || std::fs::read_to_string(mine.join("conversions.log")).unwrap_or_default();
    let reference = format!("docker://{}/test/pbs:v1", reg.addr());

    // The first job converts; its script and its TM tasks run in the registry image.
    let script = "cat /from-registry; echo MNT=$(readlink /proc/self/ns/mnt)\n";
    let job = Job::new(w, &jid("901"), &[("CONTAINER", &reference)], script);
    mom.submit(&job, &[&a]);
    let guard = Epilogues(&mom, &job, vec![&a]);
    assert_eq!(mom.hook("prologue", &job, &a).code(), Some(0));
    let text = mom.batch(&job, &a, As::User).ok();
    assert!(text.starts_with("pulled-by-berth\n"), "the script runs in the registry image: {text}");
    let batch_mnt = line(&text, "MNT=").to_string();
    for t in 1..3 {
        let o = mom
            .task(&job, &a, t, &["sh", "-c", "cat /from-registry; echo MNT=$(readlink /proc/self/ns/mnt)"])
            .ok();
        assert!(o.starts_with("pulled-by-berth\n"), "task {t}: {o}");
        assert_eq!(line(&o, "MNT="), batch_mnt, "task {t} joins the batch script's container");
    }
    drop(guard);
    assert_clean(&[&a], &job.id);
    let files = sqsh();
    assert_eq!(files.len(), 1, "one file per digest: {files:?}");
    assert_eq!(conversions().lines().count(), 1, "converted once, tasks included: {}", conversions());
    assert!(conversions().contains(&reference), "{}", conversions());
    let mtime = std::fs::metadata(&files[0]).unwrap().modified().unwrap();

    // A second job uses the same file: no second conversion. The image has no /bin/bash: the
    // note names the image as the job did, not the cache file.
    let again = Job::new(w, &jid("902"), &[("CONTAINER", &reference)], "cat /from-registry\n");
    mom.submit(&again, &[&a]);
    let end = mom.run_job(&again, &a, None);
    assert_eq!((end.status, end.out.as_deref()), (0, Some("pulled-by-berth\n")), "{:?}", end.err);
    assert!(
        end.err
            .as_deref()
            .unwrap_or_default()
            .contains(&format!("/bin/bash is not in the image {reference};")),
        "{:?}",
        end.err
    );
    assert_clean(&[&a], &again.id);
    assert_eq!(sqsh(), files);
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        mtime,
        "the file was not rewritten"
    );
    assert_eq!(conversions().lines().count(), 1, "no second conversion: {}", conversions());

    // An unknown tag: the registry's reason in the job's error file, a failed job, nothing left.
    let missing = format!("docker://{}/test/pbs:no-such-tag", reg.addr());
    let bad = Job::new(w, &jid("903"), &[("CONTAINER", &missing)], "echo should-not-run\n");
    mom.submit(&bad, &[&a]);
    let end = mom.run_job(&bad, &a, None);
    let err = end.err.clone().unwrap_or_default();
    assert!(end.status > 0, "a failed job, not a pbs_mom error: {}: {err}", end.status);
    assert!(err.starts_with("berth: "), "{err}");
    for needle in ["no-such-tag", "not found", "manifest unknown"] {
        assert!(err.contains(needle), "the .e file lacks {needle:?}: {err}");
    }
    assert!(!end.out.unwrap_or_default().contains("should-not-run"));
    assert_clean(&[&a], &bad.id);
    assert_eq!(sqsh(), files, "nothing converted for the unknown tag");
    let left: Vec<_> = std::fs::read_dir(&mine)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".sqsh") && !n.ends_with(".lock") && n != "conversions.log")
        .collect();
    assert!(left.is_empty(), "partial files left in the image cache: {left:?}");

    // The tag moves while a job runs: its later TM tasks still join the job's container, in
    // the image the job started with, and nothing is converted for them.
    let job = Job::new(w, &jid("904"), &[("CONTAINER", &reference)], script);
    mom.submit(&job, &[&a]);
    let guard = Epilogues(&mom, &job, vec![&a]);
    assert_eq!(mom.hook("prologue", &job, &a).code(), Some(0));
    let text = mom.batch(&job, &a, As::User).ok();
    let batch_mnt = line(&text, "MNT=").to_string();
    let moved = d.join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    let other = layer(&[Ent::File("from-registry", b"moved-tag\n", 0o644, 0, 0)], true);
    let m = image(&moved, &serde_json::json!({}), &[std::fs::read(&base).unwrap(), other], "amd64");
    finish(&moved, vec![m], "v1");
    reg.push(&moved, "v1", &reference, &[]);
    let o = mom
        .task(&job, &a, 1, &["sh", "-c", "cat /from-registry; echo MNT=$(readlink /proc/self/ns/mnt)"])
        .ok();
    assert!(o.starts_with("pulled-by-berth\n"), "the task runs in the job's image: {o}");
    assert_eq!(line(&o, "MNT="), batch_mnt);
    drop(guard);
    assert_clean(&[&a], &job.id);
    assert_eq!(conversions().lines().count(), 1, "nothing converted for the task: {}", conversions());
}

/// The epilogue's drop to the job's user never goes through the name service switch in
/// berth-pbs (a static glibc program that loads `/etc/nsswitch.conf`'s modules dies of
/// SIGSEGV): with `group: files systemd`, as on Debian 12, both the static build the README
/// recommends and the dynamic one stop the job's container; `drop-check` (what `berth config
/// check --pbs` runs) becomes the user with the user's groups.
#[test]
fn epilogue_stops_the_container_in_static_and_dynamic_builds() {
    let builds = [
        ("static", static_starter()),
        ("dynamic", std::path::PathBuf::from(env!("CARGO_BIN_EXE_berth-pbs"))),
    ];
    let _s = serial();
    let w = world();
    let nss = w.path("nsswitch-systemd.conf");
    std::fs::write(&nss, "passwd: files systemd\ngroup: files systemd\nshadow: files systemd\n").unwrap();
    let groups = std::process::Command::new("id").args(["-G", harness::USER]).output().unwrap();
    let groups = String::from_utf8_lossy(&groups.stdout).trim().replace(' ', ",");
    for (n, (what, build)) in builds.iter().enumerate() {
        let mut mom = Mom::with_starter(w, build, &w.path(&format!("{what}/berth-pbs")));
        mom.nsswitch = Some(nss.clone());
        let a = Node::new(w, "a");
        let job = Job::new(
            w,
            &jid(&format!("25{n}")),
            &[("CONTAINER", w.image())],
            "grep ^NAME= /etc/os-release\n",
        );
        mom.submit(&job, &[&a]);
        let end = mom.run_job(&job, &a, None);
        let err = end.err.clone().unwrap_or_default();
        assert_eq!((end.status, end.out.as_deref()), (0, Some("NAME=\"berth-busybox\"\n")), "{what}: {err}");
        assert!(!err.contains("berth-pbs"), "{what}: the epilogue had something to say: {err}");
        assert_clean(&[&a], &job.id);
        assert_eq!(mom.log.lock().unwrap().len(), 0, "{what}: {:?}", mom.log.lock().unwrap());

        let starter = mom.starter.display().to_string();
        let mut c = mom::in_node(&a.netns_path(), As::Root, 0, 0, &[&starter, "drop-check", harness::USER]);
        mom::with_nsswitch(&mut c, &nss);
        let out = c.env_clear().env("PATH", "/usr/bin:/bin").output().unwrap();
        assert_eq!(
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()),
            (Some(0), format!("uid={} gid={} groups={groups}\n", w.uid, w.gid)),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An epilogue that cannot stop the job's container says so where the job's owner and the
/// administrator look (its stderr, the job's error file under TORQUE; syslog) and exits
/// non-zero (pbs_mom logs that); once the cause is gone, it stops the container.
#[test]
fn a_failed_stop_is_loud() {
    let _s = serial();
    let w = world();
    let mut mom = Mom::new(w);
    let a = Node::new(w, "a");
    let sock = w.path(&format!("syslog-{}-260.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let syslog = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    syslog.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    mom.syslog = Some(sock.clone());
    let job = Job::new(w, &jid("260"), &[("CONTAINER", w.image())], "true\n");
    mom.submit(&job, &[&a]);
    let _cleanup = Epilogues(&mom, &job, vec![&a]);
    assert_eq!(mom.hook("prologue", &job, &a).code(), Some(0));
    mom.batch(&job, &a, As::User).ok();
    assert!(!job_files(&a, &job.id).is_empty(), "the job's container runs on");
    let good = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(&a.config, "state_dir = [\n").unwrap();
    let e = mom.hook("epilogue", &job, &a);
    std::fs::write(&a.config, good).unwrap();
    let err = e.stderr();
    assert_eq!(e.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "berth-pbs epilogue: job {}: the job's container on this node was not stopped",
            job.id
        )) && err.contains("berth.toml:"),
        "{err}"
    );
    assert!(
        mom.log.lock().unwrap().iter().any(|l| l.contains("epilogue, exit: 1")),
        "{:?}",
        mom.log.lock().unwrap()
    );
    let mut buf = [0u8; 4096];
    let n = syslog.recv(&mut buf).expect("a syslog message");
    let logged = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(logged.contains("the job's container on this node was not stopped"), "{logged}");
    let e = mom.hook("epilogue", &job, &a);
    assert_eq!(e.code(), Some(0), "{}", e.stderr());
    assert_clean(&[&a], &job.id);
}

/// The job's `TMPDIR` and `PBS_JOBDIR` are there inside the container as they are for a
/// native job: OpenPBS' mom makes `TMPDIR=/var/tmp/pbs.<jobid>` for every job (and under
/// `sandbox=PRIVATE` starts the script in a `PBS_JOBDIR` of its own), TORQUE's makes
/// `$tmpdir/<jobid>`. `mktemp` and `cd $TMPDIR` work in the job.
#[test]
fn tmpdir_and_jobdir_inside_the_container() {
    let _s = serial();
    let w = world();
    let base = std::path::PathBuf::from(format!("/var/tmp/berth-it-{}", std::process::id()));
    for (n, openpbs) in [(0, true), (1, false)] {
        let mut mom = Mom::new(w);
        mom.openpbs = openpbs;
        if openpbs {
            mom.sandbox_root = Some(base.join("jobdirs"));
        } else {
            mom.tmpdir = Some(base.join("tmpdir"));
        }
        let a = Node::new(w, "a");
        let script = "echo PWD=$(pwd)\ncd \"$TMPDIR\" && f=$(mktemp) && echo in-tmpdir > \"$f\" && cat \"$f\" && echo TMP=$(pwd)\n";
        for container in [false, true] {
            let vars: Vec<(&str, &str)> = if container { vec![("CONTAINER", w.image())] } else { vec![] };
            let job = Job::new(w, &jid(&format!("27{n}{}", container as u8)), &vars, script);
            for d in [&base, &base.join("jobdirs"), &base.join("tmpdir")] {
                std::fs::create_dir_all(d).unwrap();
            }
            mom.submit(&job, &[&a]);
            let tmpdir = mom.job_tmpdir(&job).unwrap();
            let pwd = mom.job_jobdir(&job).unwrap_or_else(|| w.home.clone());
            let end = mom.run_job(&job, &a, None);
            let what = format!("openpbs={openpbs} container={container}");
            assert_eq!(
                (end.status, end.out.as_deref().unwrap_or_default()),
                (0, format!("PWD={}\nin-tmpdir\nTMP={}\n", pwd.display(), tmpdir.display()).as_str()),
                "{what}: {:?}",
                end.err
            );
            assert!(!tmpdir.exists(), "{what}: the mom removed the job's TMPDIR");
            assert_clean(&[&a], &job.id);
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// A job's own `BERTH_CONFIG` (`qsub -v BERTH_CONFIG=~/my.toml`) may not move the state
/// directory the epilogue looks in (its container would outlive the job): the job fails
/// with a message naming both directories and nothing is started. A file that keeps the
/// site's state directory is fine.
#[test]
fn a_jobs_own_config_may_not_move_the_state_directory() {
    let _s = serial();
    let w = world();
    let mom = Mom::new(w);
    let a = Node::new(w, "a");
    let moved_dir = format!("/tmp/berth-it-{}-mine-{{uid}}", std::process::id());
    let moved = w.path("my-moved.toml");
    std::fs::write(&moved, format!("state_dir = \"{moved_dir}\"\n")).unwrap();
    let kept = w.path("my-kept.toml");
    std::fs::write(&kept, format!("{}keep_warm_seconds = 3\n", std::fs::read_to_string(&a.config).unwrap()))
        .unwrap();
    for p in [&moved, &kept] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let moved_state = Path::new(&moved_dir.replace("{uid}", &w.uid.to_string())).to_path_buf();
    let job = Job::new(
        w,
        &jid("280"),
        &[("CONTAINER", w.image()), ("BERTH_CONFIG", moved.to_str().unwrap())],
        "echo should-not-run\n",
    );
    mom.submit(&job, &[&a]);
    let end = mom.run_job(&job, &a, None);
    let err = end.err.clone().unwrap_or_default();
    assert_eq!(end.status, 255, "{err}");
    assert!(
        err.starts_with("berth: BERTH_CONFIG=")
            && err.contains("a job may not move berth's state directory")
            && err.contains(&moved_state.display().to_string())
            && err.contains(&a.state_dir.display().to_string()),
        "{err}"
    );
    assert!(!end.out.unwrap_or_default().contains("should-not-run"));
    assert_clean(&[&a], &job.id);
    assert!(!moved_state.join("holders").exists(), "nothing was started in the moved state directory");
    let _ = std::fs::remove_dir_all(&moved_state);

    let job = Job::new(
        w,
        &jid("281"),
        &[("CONTAINER", w.image()), ("BERTH_CONFIG", kept.to_str().unwrap())],
        "grep ^NAME= /etc/os-release\n",
    );
    mom.submit(&job, &[&a]);
    let end = mom.run_job(&job, &a, None);
    assert_eq!((end.status, end.out.as_deref()), (0, Some("NAME=\"berth-busybox\"\n")), "{:?}", end.err);
    assert_clean(&[&a], &job.id);
}

/// packaging/torque/install.sh tells a static build from a dynamic one by its ELF program
/// headers (`ldd` succeeds on static-pie programs too): only the dynamic build gets the note.
/// Run with `DESTDIR` in a private mount namespace whose /usr/libexec is a fresh tmpfs, so
/// nothing of the host is touched whatever the script does.
#[test]
fn install_sh_tells_static_from_dynamic() {
    let w = world();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/torque/install.sh");
    for (what, build, noted) in [
        ("static", static_starter(), false),
        ("dynamic", std::path::PathBuf::from(env!("CARGO_BIN_EXE_berth-pbs")), true),
    ] {
        let dest = w.path(&format!("install-{what}"));
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir_all(dest.join("var/spool/torque/mom_priv")).unwrap();
        let out = std::process::Command::new("unshare")
            .args([
                "-m",
                "sh",
                "-c",
                "mount --make-rprivate / && mount -t tmpfs none /usr/libexec && exec sh \"$@\"",
                "sh",
            ])
            .arg(&script)
            .arg("/var/spool/torque")
            .arg(&build)
            .env("DESTDIR", &dest)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {err}");
        assert_eq!(err.contains("dynamically linked"), noted, "{what}: {err}");
        let installed = dest.join("usr/libexec/berth/berth-pbs");
        assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&build).unwrap(), "{what}");
        let epilogue = std::fs::metadata(dest.join("var/spool/torque/mom_priv/epilogue")).unwrap();
        assert_eq!(epilogue.permissions().mode() & 0o7777, 0o500, "{what}");
        let _ = std::fs::remove_dir_all(&dest);
    }
}

/// A job of a user `/etc/passwd` does not list (a directory service's, at most sites) in the
/// static build, with `passwd: files systemd`: the starter looks the user up without the name
/// service switch (a static glibc program that loads nsswitch.conf's modules dies of SIGSEGV)
/// and runs the task in the image. (No such user exists here: the uid has no entry at all, so
/// berth names the user by number, as for any uid without one.)
#[test]
fn static_starter_runs_jobs_of_users_outside_etc_passwd() {
    let build = static_starter();
    let _s = serial();
    let w = world();
    let nss = w.path("nsswitch-systemd.conf");
    std::fs::write(&nss, "passwd: files systemd\ngroup: files systemd\nshadow: files systemd\n").unwrap();
    let mom = Mom::with_starter(w, &build, &w.path("static/berth-pbs"));
    let a = Node::new(w, "a");
    let (uid, gid) = (4242 + std::process::id() % 1000, 4242 + std::process::id() % 1000);
    let job = Job::new(w, &jid("290"), &[("CONTAINER", w.image()), ("BERTH_NO_HOME", "1")], "");
    mom.submit(&job, &[&a]);
    let starter = mom.starter.display().to_string();
    let mut env = mom.job_env(&job, &a, 1);
    env.retain(|(k, _)| k != "HOME");
    env.push(("HOME".into(), "/".into()));
    let mut c = mom::in_node_nss(
        &a.netns_path(),
        As::User,
        uid,
        gid,
        &[
            &starter,
            "sh",
            "-c",
            "echo ID=$(id -u):$(id -g) NAME=$(grep ^NAME= /etc/os-release | cut -d= -f2)",
        ],
        Some(&nss),
    );
    let out = c.env_clear().envs(env).current_dir("/").stdin(std::process::Stdio::null()).output().unwrap();
    // The container (a holder of that uid) goes by hand: no epilogue can name the user.
    let state = Path::new(&format!("/tmp/berth-it-{}-a-{uid}", std::process::id())).to_path_buf();
    for p in job_processes(&job.id) {
        if let Some(pid) = p.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()),
        (Some(0), format!("ID={uid}:{gid} NAME=\"berth-busybox\"\n")),
        "{err}"
    );
}

/// What `ps` shows of a container job under OpenPBS, whose mom execs the starter as
/// `-berth-pbs /bin/bash` (a login shell's name): the holder names itself (`berth-holder
/// pbs-<jobid>`, cut to the length of the starter's command line) and nothing of the job's
/// shows as `-berth-pbs`.
#[test]
fn job_processes_are_named_for_what_they_are() {
    let _s = serial();
    let w = world();
    let mut mom = Mom::new(w);
    mom.openpbs = true;
    let a = Node::new(w, "a");
    let job = Job::new(w, &jid("295"), &[("CONTAINER", w.image())], "true\n");
    mom.submit(&job, &[&a]);
    let _cleanup = Epilogues(&mom, &job, vec![&a]);
    mom.batch(&job, &a, As::User).ok();
    let running = job_processes(&job.id);
    eprintln!("the job's processes: {running:?}");
    assert!(!running.is_empty(), "the job's container runs on until the epilogue");
    assert!(running.iter().all(|p| !p.contains("-berth-pbs")), "{running:?}");
    assert!(running.iter().any(|p| p.contains(": berth-holder pbs-295")), "{running:?}");
    drop(_cleanup);
    assert_clean(&[&a], &job.id);
    mom.purge(&job);
}

/// A container job killed by `qdel` or its walltime (pbs_mom kills the job's session; the
/// holder, in a session of its own, survives that) leaves nothing once the epilogue ran, as a
/// job that ended normally: no process, no record (the mounts live in the container's own
/// namespace, gone with its processes). Both builds, both PBS flavours.
#[test]
fn killed_jobs_leave_nothing_after_the_epilogue() {
    let builds = [
        ("static", static_starter()),
        ("dynamic", std::path::PathBuf::from(env!("CARGO_BIN_EXE_berth-pbs"))),
    ];
    let _s = serial();
    let w = world();
    let mut n = 0;
    for (what, build) in &builds {
        for openpbs in [false, true] {
            n += 1;
            let mut mom = Mom::with_starter(w, build, &w.path(&format!("{what}/berth-pbs")));
            mom.openpbs = openpbs;
            let a = Node::new(w, "a");
            let job =
                Job::new(w, &jid(&format!("30{n}")), &[("CONTAINER", w.image())], "echo started\nsleep 60\n");
            mom.submit(&job, &[&a]);
            let p = mom.hook("prologue", &job, &a);
            assert_eq!(p.code(), Some(0), "{}", p.stderr());
            let out =
                mom.killed_batch(&job, &a, || job_processes(&job.id).iter().any(|p| p.contains("sleep 60")));
            assert_eq!(out.0.status.code(), None, "{what} openpbs={openpbs}: killed: {}", out.stderr());
            assert!(
                !job_files(&a, &job.id).is_empty(),
                "{what} openpbs={openpbs}: the container outlives the kill"
            );
            let e = mom.hook("epilogue", &job, &a);
            assert_eq!(e.code(), Some(0), "{what} openpbs={openpbs}: {}", e.stderr());
            assert_clean(&[&a], &job.id);
            mom.purge(&job);
        }
    }
}
