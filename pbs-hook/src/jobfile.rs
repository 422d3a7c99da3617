//! How pbs_mom hands a job to its `$job_starter`, and what berth-pbs makes of it.
//!
//! TORQUE (`src/resmom/start_exec.c`): `mom_jobstarter_execute_job` execs
//! `[starter, SHELL, ARGV0]`, ARGV0 being the shell's name with a leading `-` for a login
//! shell (`source_login_shells_or_not`; without `-` under `$source_login_batch false`). For a
//! batch job `TMomFinalizeJob2` then writes one line on a pipe that is the shell's stdin: the
//! job script's path, `exec ` before it under `$exec_with_exec true`, and the `qsub -F`
//! arguments after it, as they were given. The shell reads that line as a command, so the
//! arguments are split and quoted by the shell, as for any command line. Interactive jobs
//! (`qsub -I`) get the same argv with the terminal as stdin and
//! `PBS_ENVIRONMENT=PBS_INTERACTIVE`. TM tasks (pbsdsh, orted) are `[starter, ARGV...]`.
//!
//! OpenPBS (`src/resmom/start_exec.c` `finish_exec`) writes the same kind of line, with `[`
//! and `]` of array job ids escaped by a backslash, and `cd $PBS_JOBDIR;` before it under
//! `sandbox=PRIVATE`.

use std::path::{Path, PathBuf};

/// What pbs_mom asked the starter to run.
#[derive(Debug, PartialEq, Eq)]
pub enum Launch {
    /// The batch shell: its stdin carries the script line.
    Batch { shell: String },
    /// `qsub -I`: the job's shell on the terminal; `login` when pbs_mom asked for a login shell.
    Interactive { shell: String, login: bool },
    /// Anything else: a TM task, run as given.
    Task,
}

fn shell_name(p: &str) -> Option<&str> {
    let name = Path::new(p).file_name()?.to_str()?;
    matches!(name, "bash" | "sh" | "dash" | "ksh" | "zsh" | "csh" | "tcsh" | "ash").then_some(name)
}

/// Classify the starter's argv (without the starter itself). `interactive` is
/// `PBS_ENVIRONMENT=PBS_INTERACTIVE`; `stdin_pipe` whether fd 0 is a pipe or socket.
pub fn classify(argv: &[String], interactive: bool, stdin_pipe: bool) -> Launch {
    let Some(name) = argv.first().and_then(|s| shell_name(s)) else { return Launch::Task };
    // `[SHELL]` (OpenPBS hook, older moms) or `[SHELL, -NAME|NAME]` (TORQUE).
    let login = match argv.get(1).map(String::as_str) {
        None => false,
        Some(a) if argv.len() == 2 && a.strip_prefix('-').unwrap_or(a) == name => a.starts_with('-'),
        Some(_) => return Launch::Task,
    };
    let shell = argv[0].clone();
    if interactive {
        Launch::Interactive { shell, login }
    } else if stdin_pipe {
        Launch::Batch { shell }
    } else {
        Launch::Task
    }
}

/// The batch shell's stdin line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct ScriptLine {
    /// The job script (`$PBS_HOME/mom_priv/jobs/ID.SC`), bound into the container.
    pub script: PathBuf,
    /// The whole line, run by the job's shell inside the container as pbs_mom's shell
    /// would run it (`-F` arguments and `exec` keep their meaning).
    pub line: String,
}

/// Parse the line pbs_mom wrote (without its newline). Errors are sentences for the job's
/// error file.
pub fn parse_line(line: &str) -> Result<ScriptLine, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("the batch shell's stdin carried no job script path (expected one line, $PBS_HOME/mom_priv/jobs/<jobid>.SC); is berth-pbs configured as $job_starter of this pbs_mom?".into());
    }
    let mut rest = line;
    if rest.starts_with("cd ") {
        rest = rest.split_once(';').map(|(_, r)| r.trim_start()).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("exec ").map(str::trim_start).unwrap_or(rest);
    let path = rest.split_whitespace().next().unwrap_or_default();
    // The shell would drop the escaping backslashes: so does the path we bind.
    let mut unescaped = String::with_capacity(path.len());
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => unescaped.extend(chars.next()),
            c => unescaped.push(c),
        }
    }
    let script = PathBuf::from(unescaped);
    if !script.is_absolute() {
        return Err(format!("the job script path {path:?} from the batch shell's stdin is not absolute"));
    }
    Ok(ScriptLine { script, line: line.to_string() })
}

/// The command run inside the container for `launch` (`line`: the batch script line).
pub fn container_argv(launch: &Launch, line: Option<&ScriptLine>, argv: &[String]) -> Vec<String> {
    match (launch, line) {
        (Launch::Batch { shell }, Some(l)) => vec![shell.clone(), "-c".into(), l.line.clone()],
        (Launch::Interactive { shell, login: true }, _) => vec![shell.clone(), "-l".into()],
        (Launch::Interactive { shell, .. }, _) => vec![shell.clone()],
        _ => argv.to_vec(),
    }
}

/// Inside the container: the job's shell missing from the image is replaced by `/bin/sh`,
/// with a note in the job's error file (what batch and interactive jobs get alike) naming the
/// image as the job named it (`image`: its path or `docker://` reference).
pub fn shell_fallback(launch: &Launch, argv: &mut [String], image: &str) {
    if matches!(launch, Launch::Task) || argv.is_empty() || Path::new(&argv[0]).exists() {
        return;
    }
    eprintln!("berth: {} is not in the image {image}; running the job's shell as /bin/sh", argv[0]);
    argv[0] = "/bin/sh".into();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn argv_forms() {
        let batch = Launch::Batch { shell: "/bin/bash".into() };
        assert_eq!(classify(&v(&["/bin/bash", "-bash"]), false, true), batch);
        assert_eq!(classify(&v(&["/bin/bash", "bash"]), false, true), batch);
        assert_eq!(classify(&v(&["/bin/bash"]), false, true), batch);
        assert_eq!(
            classify(&v(&["/bin/tcsh", "-tcsh"]), true, false),
            Launch::Interactive { shell: "/bin/tcsh".into(), login: true }
        );
        assert_eq!(classify(&v(&["/bin/bash", "-c", "x"]), false, true), Launch::Task);
        assert_eq!(classify(&v(&["/bin/bash", "-bash"]), false, false), Launch::Task);
        assert_eq!(classify(&v(&["orted", "-mca"]), false, true), Launch::Task);
    }

    #[test]
    fn script_lines() {
        let p = "/var/spool/torque/mom_priv/jobs/28.vm.SC";
        let l = parse_line(p).unwrap();
        assert_eq!((l.script.to_str().unwrap(), l.line.as_str()), (p, p));
        let l = parse_line(&format!("{p} one 'two three'")).unwrap();
        assert_eq!(l.script, PathBuf::from(p));
        assert_eq!(l.line, format!("{p} one 'two three'"));
        let l = parse_line(&format!("exec {p}")).unwrap();
        assert_eq!(l.script, PathBuf::from(p));
        let l =
            parse_line("cd /home/u/pbs.12.srv.x8z;/var/spool/pbs/mom_priv/jobs/12\\[3\\].srv.SC").unwrap();
        assert_eq!(l.script, PathBuf::from("/var/spool/pbs/mom_priv/jobs/12[3].srv.SC"));
        assert!(parse_line("").unwrap_err().contains("no job script path"));
        assert!(parse_line("exec rel.SC").unwrap_err().contains("not absolute"));
    }
}
