//! Records the git commit `berth --version` names: `BERTH_GIT_COMMIT` from the environment
//! (a build from a release tarball can set it), else `git rev-parse`, else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=BERTH_GIT_COMMIT");
    let commit = std::env::var("BERTH_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves: HEAD itself (branch switches, detached commits) and the
    // branch's ref (new commits), wherever this worktree keeps them.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", abs(&head));
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(r) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={}", abs(&r));
        }
    }
    if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
        println!("cargo:rerun-if-changed={}", abs(&packed));
    }
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={commit}");
}

fn abs(p: &str) -> String {
    let p = std::path::Path::new(p);
    if p.is_absolute() {
        p.display().to_string()
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p).display().to_string()
    }
}
