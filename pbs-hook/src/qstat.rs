//! A job's submission variables, as the prologue/epilogue (which do not see `qsub -v`) can
//! read them: `qstat -f JOBID`, attribute `Variable_List`.

use std::process::{Command, Stdio};

/// Parse the `Variable_List` attribute of `qstat -f` output. Long attributes continue on lines
/// starting with a tab; values escape commas as `\,`.
pub fn variable_list(qstat_f: &str) -> Option<Vec<(String, String)>> {
    // Join continuation lines to their attribute.
    let mut attrs: Vec<String> = vec![];
    for line in qstat_f.lines() {
        if let Some(cont) = line.strip_prefix('\t') {
            if let Some(last) = attrs.last_mut() {
                last.push_str(cont.trim_end_matches('\r'));
                continue;
            }
        }
        attrs.push(line.trim_end_matches('\r').to_string());
    }
    let list = attrs.iter().find_map(|a| {
        let (k, v) = a.split_once('=')?;
        (k.trim() == "Variable_List").then(|| v.trim_start().to_string())
    })?;
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n)
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    Some(
        out.into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.trim().to_string(), v.to_string())))
            .filter(|(k, _)| !k.is_empty())
            .collect(),
    )
}

/// Run `qstat -f JOBID` (`BERTH_PBS_QSTAT` names another command, for tests or odd installs).
pub fn job_variables(jobid: &str) -> Result<Vec<(String, String)>, String> {
    let cmd = std::env::var("BERTH_PBS_QSTAT").unwrap_or_else(|_| "qstat".into());
    let out = Command::new(&cmd)
        .arg("-f")
        .arg(jobid)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run `{cmd} -f {jobid}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd} -f {jobid}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    variable_list(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| format!("`{cmd} -f {jobid}` printed no Variable_List"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrapped_escaped_list() {
        let text = "Job Id: 12.server\n    Job_Name = job.sh\n    Variable_List = PBS_O_QUEUE=batch,PBS_O_HOME=/home/u,\n\tPBS_O_WORKDIR=/home/u/run,CONTAINER=/img/a\\,b.sqsh,BERTH_BIND=/x\\,/y\n    euser = u\n";
        let v = variable_list(text).unwrap();
        let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PBS_O_WORKDIR"), Some("/home/u/run"));
        assert_eq!(get("CONTAINER"), Some("/img/a,b.sqsh"));
        assert_eq!(get("BERTH_BIND"), Some("/x,/y"));
        assert_eq!(get("euser"), None);
    }

    #[test]
    fn no_list() {
        assert!(variable_list("Job Id: 1\n    Job_Name = x\n").is_none());
        assert_eq!(variable_list("    Variable_List = \n").unwrap(), vec![]);
    }
}
