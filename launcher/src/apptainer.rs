//! Apptainer/Singularity habits: the variables and options berth gives the same meaning, and
//! the ones it refuses with what to use instead.

use std::path::Path;

use berth_runtime::error::Error;
use berth_runtime::request::{check_container_path, valid_env_name, BindSpec};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory};

/// Variables holding `--bind` lists, read in this order before the command line's binds.
pub const BIND_VARS: &[&str] =
    &["BERTH_BIND", "APPTAINER_BIND", "APPTAINER_BINDPATH", "SINGULARITY_BIND", "SINGULARITY_BINDPATH"];

struct Refused {
    long: &'static str,
    short: Option<char>,
    takes_value: bool,
    instead: &'static str,
}

const fn refused(
    long: &'static str,
    short: Option<char>,
    takes_value: bool,
    instead: &'static str,
) -> Refused {
    Refused { long, short, takes_value, instead }
}

const WRITABLE: &str = "use --writable-tmpfs for a throwaway writable layer, or --overlay DIR to keep the \
                        changes in a directory of yours";
const NO_PRIVS: &str = "berth runs your program as you, with no capabilities to add or drop";
const HOST_NS: &str = "berth keeps the host's network, process and IPC namespaces, which MPI and the \
                       scheduler rely on";
const NO_REMOTE: &str = "berth runs local image files: fetch or build the image first (`berth build`)";

/// Apptainer options whose meaning berth cannot give. They are parsed (hidden) so that their
/// values are not taken for the image, then refused.
const REFUSED: &[Refused] = &[
    refused(
        "fakeroot",
        Some('f'),
        false,
        "berth runs you as yourself; build images as root with `berth build`",
    ),
    refused("writable", Some('w'), false, WRITABLE),
    refused("scratch", Some('S'), true, "--bind a host directory (e.g. -B /scratch/$USER/tmp:/scratch)"),
    refused("mount", None, true, "use --bind SRC:DST[:ro]"),
    refused(
        "no-mount",
        None,
        true,
        "berth.toml's [binds] decides the default binds; see --no-home and --contain",
    ),
    refused("nvccli", None, false, "use --nv"),
    refused("app", None, true, "run the app's command with `berth exec IMAGE COMMAND`"),
    refused("net", Some('n'), false, HOST_NS),
    refused("network", None, true, HOST_NS),
    refused("network-args", None, true, HOST_NS),
    refused("pid", Some('p'), false, HOST_NS),
    refused("ipc", Some('i'), false, HOST_NS),
    refused("uts", None, false, HOST_NS),
    refused("hostname", None, true, HOST_NS),
    refused("dns", None, true, HOST_NS),
    refused("boot", None, false, "berth runs one program, not an init system"),
    refused("keep-privs", None, false, NO_PRIVS),
    refused("no-privs", None, false, NO_PRIVS),
    refused("add-caps", None, true, NO_PRIVS),
    refused("drop-caps", None, true, NO_PRIVS),
    refused("allow-setuid", None, false, NO_PRIVS),
    refused("security", None, true, NO_PRIVS),
    refused("apply-cgroups", None, true, "set limits through the scheduler (Slurm cgroups, PBS resources)"),
    refused("cpus", None, true, "set limits through the scheduler (Slurm cgroups, PBS resources)"),
    refused("memory", None, true, "set limits through the scheduler (Slurm cgroups, PBS resources)"),
    refused("disable-cache", None, false, NO_REMOTE),
    refused("docker-login", None, false, NO_REMOTE),
    refused("nohttps", None, false, NO_REMOTE),
    refused("no-https", None, false, NO_REMOTE),
    refused("compat", None, false, "combine --containall and --writable-tmpfs"),
    refused("oci", None, false, "berth runs single-file images (SquashFS, SIF) and directories"),
];

/// The refused Apptainer options seen on a command line (hidden from help).
#[derive(Clone, Default, Debug)]
pub struct Unsupported {
    first: Option<(&'static str, &'static str)>,
}

impl Unsupported {
    /// Exit like a command-line error (status 2) if a refused option was given.
    pub fn refuse<C: CommandFactory>(&self) {
        if let Some((long, instead)) = self.first {
            C::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("berth does not support --{long}: {instead}"),
                )
                .exit()
        }
    }
}

impl clap::FromArgMatches for Unsupported {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let first = REFUSED
            .iter()
            .find(|r| m.value_source(r.long) == Some(ValueSource::CommandLine))
            .map(|r| (r.long, r.instead));
        Ok(Unsupported { first })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for Unsupported {
    fn augment_args(cmd: Command) -> Command {
        REFUSED.iter().fold(cmd, |cmd, r| {
            let mut arg = Arg::new(r.long).long(r.long).hide(true);
            if let Some(s) = r.short {
                arg = arg.short(s);
            }
            arg = if r.takes_value {
                arg.action(ArgAction::Append).num_args(1).allow_hyphen_values(true)
            } else {
                arg.action(ArgAction::Count)
            };
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// `--home SRC[:DST]`: the bind of SRC at DST (default SRC) and the value of HOME inside.
pub fn home_bind(spec: &str) -> Result<(BindSpec, String), Error> {
    let bad = |reason: String| Error::request(format!("--home {spec:?}"), reason, "the form is SRC[:DST]");
    let (src, dst) = spec.split_once(':').unwrap_or((spec, spec));
    if src.is_empty() {
        return Err(bad("empty source path".into()));
    }
    if dst.contains(':') {
        return Err(bad("too many ':'".into()));
    }
    check_container_path(Path::new(dst)).map_err(bad)?;
    Ok((BindSpec { src: src.into(), dst: dst.into(), readonly: false }, dst.to_string()))
}

/// `--env-file FILE`: `NAME=VALUE` lines; `export ` before the name, blank lines, `#` comments
/// and one pair of matching quotes around the value are allowed. Values are taken literally
/// (no expansion), so the file means the same wherever it is read.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, Error> {
    let what = format!("--env-file {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::request(&what, format!("cannot read it: {e}"), "give a readable text file"))?;
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let bad = |reason: &str| {
            Error::request(
                format!("{}:{}", path.display(), n + 1),
                reason.to_string(),
                "each line is NAME=VALUE (optionally `export NAME=VALUE`)",
            )
        };
        let (k, v) = line.split_once('=').ok_or_else(|| bad("no '=' in this line"))?;
        if !valid_env_name(k) {
            return Err(bad("the name must be letters, digits and '_'"));
        }
        let v = match v.as_bytes() {
            [q @ (b'"' | b'\''), .., last] if last == q && v.len() >= 2 => &v[1..v.len() - 1],
            [b'"' | b'\'', ..] => return Err(bad("unterminated quote")),
            _ => v,
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        std::fs::write(&f, "# comment\n\nA=1\nexport B=\"two words\"\nC='x=y'\nD=\n").unwrap();
        let got = read_env_file(&f).unwrap();
        let want: Vec<(String, String)> = [("A", "1"), ("B", "two words"), ("C", "x=y"), ("D", "")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        assert_eq!(got, want);
        std::fs::write(&f, "A=1\nnot a line\n").unwrap();
        assert!(read_env_file(&f).unwrap_err().to_string().contains(":2"));
        std::fs::write(&f, "A=\"open\n").unwrap();
        assert!(read_env_file(&f).unwrap_err().to_string().contains("quote"));
    }

    #[test]
    fn home_spec() {
        let (b, h) = home_bind("/scratch/me:/home/me").unwrap();
        assert_eq!(
            (b.src.to_str().unwrap(), b.dst.to_str().unwrap(), h.as_str()),
            ("/scratch/me", "/home/me", "/home/me")
        );
        assert_eq!(home_bind("/scratch/me").unwrap().1, "/scratch/me");
        assert!(home_bind("/a:rel").is_err());
        assert!(home_bind(":/x").is_err());
    }
}
