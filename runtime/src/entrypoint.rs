//! berth's entrypoint launcher: a small script every container has at [`LAUNCHER`], through
//! which a scheduler's task runs the image's runscript with the task's own command (the Slurm
//! plugin's `--container-entrypoint`). Slurm lets a plugin replace a task's program (`argv[0]`)
//! but not lengthen its argv, so the task's program becomes this launcher and its old program
//! travels in [`PROGRAM_VAR`]; the launcher removes the variable and runs
//! `/bin/sh RUNSCRIPT PROGRAM ARGS...`, the runscript's argv as `berth run IMG PROGRAM ARGS`
//! gives it.
//!
//! It is a file of the container, not of one step: a step that joins a container another step
//! started finds it too. The holder writes it on its own tmpfs and binds it read-only
//! (`nosuid,nodev`) at [`LAUNCHER`] when it sets the container up, a few microseconds: nothing
//! inside the container can change it, and `--container-save` leaves it out as it leaves out
//! every mount.
#![warn(missing_docs)]

/// Where the launcher is inside every container.
pub const LAUNCHER: &str = "/.berth/entrypoint";

/// The variable that holds the program the launcher runs the runscript with. The launcher
/// removes it: the runscript and the program never see it.
pub const PROGRAM_VAR: &str = "BERTH_ENTRYPOINT_PROGRAM";

/// The runscript the launcher runs: where SIF images and `berth pull` keep it, and what
/// `berth run` runs.
pub const RUNSCRIPT: &str = "/.singularity.d/runscript";

/// The launcher's text for runscript `runscript`. Without [`PROGRAM_VAR`] in its environment it
/// runs the runscript with its own arguments only. The shell opens the launcher itself, with
/// close-on-exec, so the runscript starts with no descriptor the launcher had.
pub fn script(runscript: &str) -> String {
    let quoted = format!("'{}'", runscript.replace('\'', "'\\''"));
    format!(
        "#!/bin/sh\n\
         # berth: runs the image's runscript with the task's program (--container-entrypoint)\n\
         if [ -n \"${{{PROGRAM_VAR}+set}}\" ]; then\n\
         \x20   set -- \"${PROGRAM_VAR}\" \"$@\"\n\
         \x20   unset {PROGRAM_VAR}\n\
         fi\n\
         exec /bin/sh {quoted} \"$@\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// The launcher, run by the shells images have (dash, busybox), hands the runscript the
    /// program first and every argument as it was, removes the variable, and leaves the
    /// runscript no extra descriptor.
    #[test]
    fn the_runscript_gets_the_program_and_the_arguments_as_they_were() {
        let t = tempfile::tempdir().unwrap();
        let runscript = t.path().join("run script's");
        std::fs::write(
            &runscript,
            "printf '[%s]' \"$0\" \"$#\" \"$@\"; echo\n\
             echo \"var=${BERTH_ENTRYPOINT_PROGRAM-unset}\"\n\
             echo \"fds=$(ls /proc/self/fd | tr '\\n' ' ')\"\n",
        )
        .unwrap();
        let launcher = t.path().join("entrypoint");
        std::fs::write(&launcher, script(runscript.to_str().unwrap())).unwrap();
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o555)).unwrap();
        let shells: Vec<Vec<&str>> = [vec!["/bin/sh"], vec!["busybox", "sh"]]
            .into_iter()
            .filter(|s| Command::new(s[0]).args(&s[1..]).arg("-c").arg("true").status().is_ok())
            .collect();
        assert!(!shells.is_empty());
        // What any child of this test inherits (the harness may hand down descriptors), plus
        // ls's own: the runscript must see no more.
        let fds = |out: std::process::Output| {
            String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ")
        };
        let inherited = fds(Command::new("/bin/sh").args(["-c", "ls /proc/self/fd"]).output().unwrap());
        for sh in shells {
            let out = Command::new(sh[0])
                .args(&sh[1..])
                .arg(&launcher)
                .args(["a b", "it's", ""])
                .env(PROGRAM_VAR, "my prog's")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(
                lines.first().copied(),
                Some(format!("[{}][4][my prog's][a b][it's][]", runscript.display()).as_str()),
                "{sh:?}: {text}"
            );
            assert!(lines.contains(&"var=unset"), "{sh:?}: {text}");
            assert!(
                lines.contains(&format!("fds={inherited} ").as_str()),
                "{sh:?}: {text} (inherited: {inherited})"
            );

            // Without the variable: the runscript with the launcher's arguments alone.
            let out = Command::new(sh[0]).args(&sh[1..]).arg(&launcher).arg("x").output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.starts_with(&format!("[{}][1][x]\n", runscript.display())), "{sh:?}: {text}");
        }
    }
}
