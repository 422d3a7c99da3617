//! berth-oci-run, the task runner of berth's oci.conf (spank-plugin/oci-run.c), built static
//! as the packages build it and run as slurmstepd's RunTimeRun runs it: `/bin/sh -c "exec
//! $BERTH_OCI_RUN ENVFILE PROGRAM ARGS"` with slurmstepd's own environment.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn runner(dir: &Path) -> PathBuf {
    let out = dir.join("berth-oci-run");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("oci-run.c");
    let st = Command::new("cc")
        .args(["-static", "-Os", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "cc -static {}", src.display());
    out
}

fn env_file(dir: &Path, name: &str, entries: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = Vec::new();
    for e in entries {
        bytes.extend_from_slice(e.as_bytes());
        bytes.push(0);
    }
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
    path
}

/// The program gets exactly the file's environment (values with newlines and `=` kept), not
/// the shell's; the runner's descriptor and variables are gone; the arguments arrive as given.
#[test]
fn the_task_runs_with_the_environment_file_only() {
    let t = tempfile::tempdir().unwrap();
    let run = runner(t.path());
    let env = env_file(
        t.path(),
        "environment",
        &["PATH=/usr/bin:/bin", "SLURM_PROCID=3", "MULTI=line one\nline two", "EQ=a=b", "BERTH_OCI_FD=9"],
    );
    // A number no program opens first (ls lists its own directory's descriptor, 3).
    let fd_file = std::fs::File::open(&run).unwrap();
    let fd = nix::unistd::dup2(fd_file.as_raw_fd(), 47).unwrap();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "exec $BERTH_OCI_RUN {} /bin/sh -c 'env; ls /proc/self/fd; echo \"args:$0:$1\"' 'a b' \"it's\"",
            env.display()
        ))
        .env_clear()
        .env("SLURMSTEPD_ONLY", "1")
        .env("BERTH_OCI_RUN", format!("/proc/self/fd/{fd}"))
        .env("BERTH_OCI_FD", fd.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("SLURM_PROCID=3\n")
            && text.contains("MULTI=line one\nline two\n")
            && text.contains("EQ=a=b\n"),
        "{text}"
    );
    assert!(!text.contains("SLURMSTEPD_ONLY") && !text.contains("BERTH_OCI"), "{text}");
    assert!(
        !text.lines().any(|l| l == fd.to_string()),
        "the runner's descriptor {fd} reached the program: {text}"
    );
    assert!(text.contains("args:a b:it's"), "{text}");
}

/// A file someone else put in the environment file's place (slurmstepd makes the directory
/// writable for the user's group) is refused, and so is a missing program, each with a message.
#[test]
fn a_file_of_another_owner_or_a_missing_program_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let run = runner(t.path());
    let env = env_file(t.path(), "planted", &["PATH=/bin"]);
    std::os::unix::fs::chown(&env, Some(65534), None).unwrap();
    let out = Command::new(&run).arg(&env).arg("/bin/true").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert!(err.contains("is not a file of yours that only you may write (owner uid 65534"), "{err}");

    let env = env_file(t.path(), "environment", &["PATH=/bin"]);
    let out = Command::new(&run).arg(&env).arg("/nonexistent/prog").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert!(err.contains("berth: error: cannot run /nonexistent/prog: No such file or directory"), "{err}");
}
