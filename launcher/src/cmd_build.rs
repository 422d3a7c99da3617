//! `berth build OUT DEF` and `berth build --lint DEF`: the command-line piece of image building.
//! All the work is in `berth_build`; this file maps options and exit codes, and tells the
//! builder how to run `%test` in a container of the finished image (the runtime's
//! `session::run_in_image`).
//!
//! Exit codes: 0 built / lint clean; 1 lint found problems; 130 interrupted (SIGINT/SIGTERM);
//! 255 any other failure (the message is already printed as `berth: ...`).

use std::path::{Path, PathBuf};

use berth_build::{self as build, BuildOptions, OutputFormat, TestRunner, COMPRESSIONS};
use berth_runtime::config::Config;
use berth_runtime::session::{self, Ended};
use clap::builder::PossibleValuesParser;
use clap::{Args, ValueEnum};

/// Image file format for `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// SquashFS file (berth's native format; Apptainer runs it too)
    Squashfs,
    /// Apptainer/Singularity SIF file
    Sif,
}

/// Build an image from a Singularity-syntax definition file (needs root).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    sudo berth build openmpi.img defs/openmpi.def\n  \
    sudo berth build --compression zstd --log build.log app.img app.def\n  \
    berth build --lint app.def\n\n\
Environment: BERTH_TMPDIR (work directory, default /var/tmp), BERTH_CACHE_DIR (debootstrap \
base cache, default /var/cache/berth/bootstrap; empty disables it), BERTH_DEBOOTSTRAP_TIMEOUT \
(seconds, default 1800).")]
pub struct BuildArgs {
    /// Image file to write (with --lint: the definition file to check)
    #[arg(value_name = "OUT")]
    pub out: PathBuf,

    /// Definition file (Singularity/Apptainer syntax)
    #[arg(value_name = "DEF", required_unless_present = "lint")]
    pub def: Option<PathBuf>,

    /// Output format
    #[arg(long, value_enum, default_value_t = FormatArg::Squashfs)]
    pub format: FormatArg,

    /// SquashFS compression (gzip is readable by every kernel and squashfuse)
    #[arg(long, value_name = "ALGO", default_value = "gzip", value_parser = PossibleValuesParser::new(COMPRESSIONS))]
    pub compression: String,

    /// Do not run the %test section
    #[arg(long)]
    pub notest: bool,

    /// Only check the definition file (unknown sections and keys, missing headers), with file:line
    #[arg(long)]
    pub lint: bool,

    /// Keep the full build log in FILE
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Replace OUT if it exists
    #[arg(long)]
    pub force: bool,

    /// Talk plain HTTP to the registry of `Bootstrap: docker`
    #[arg(long, visible_alias = "no-https")]
    pub nohttps: bool,
}

/// Exit status for an interrupted build, as a shell reports SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit status when --lint finds problems.
pub const EXIT_LINT_PROBLEMS: i32 = 1;

/// Run `berth build`; returns the process exit status. Errors are printed here, for people.
pub fn run(args: BuildArgs) -> anyhow::Result<i32> {
    if args.lint {
        // `berth build --lint DEF`, or `berth build --lint OUT DEF` (the DEF is what is checked).
        let def = args.def.clone().unwrap_or_else(|| args.out.clone());
        return Ok(lint(&def));
    }
    let Some(def) = args.def.clone() else {
        eprintln!("berth: build: missing DEF (usage: berth build OUT DEF)");
        return Ok(berth_runtime::error::EXIT_BERTH_ERROR);
    };
    let opts = options(&args, def);
    match build::build(&opts) {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("berth: {e}");
            Ok(if build::was_interrupted() { EXIT_INTERRUPTED } else { e.exit_code() })
        }
    }
}

fn lint(def: &std::path::Path) -> i32 {
    match build::lint_file(def) {
        Ok(issues) if issues.is_empty() => {
            println!("{}: ok", def.display());
            0
        }
        Ok(issues) => {
            for issue in &issues {
                println!("{}", issue.render(def));
            }
            eprintln!("berth: {}: {} problem(s)", def.display(), issues.len());
            EXIT_LINT_PROBLEMS
        }
        Err(e) => {
            eprintln!("berth: {e}");
            e.exit_code()
        }
    }
}

/// The runtime's options for these arguments.
pub fn options(args: &BuildArgs, def: PathBuf) -> BuildOptions {
    let mut opts = BuildOptions::new(args.out.clone(), def);
    opts.format = match args.format {
        FormatArg::Squashfs => OutputFormat::Squashfs,
        FormatArg::Sif => OutputFormat::Sif,
    };
    opts.compression = args.compression.clone();
    opts.notest = args.notest;
    opts.force = args.force;
    opts.nohttps = args.nohttps;
    opts.log = args.log.clone();
    // %test runs in a real container of the finished image, through the runtime.
    opts.test_runner = Some(test_in_container as TestRunner);
    opts
}

/// `%test` in a container of its own of the built image, under the site configuration
/// `berth exec` uses, so the test sees the image as its users will.
fn test_in_container(image: &Path, argv: &[String]) -> berth_runtime::Result<Ended> {
    let (cfg, _) = Config::load()?;
    session::run_in_image(&cfg, image, argv.to_vec(), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        build: BuildArgs,
    }

    fn parse(args: &[&str]) -> Result<BuildArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("berth-build").chain(args.iter().copied())).map(|c| c.build)
    }

    #[test]
    fn build_arguments() {
        let a = parse(&["out.img", "app.def"]).unwrap();
        assert_eq!(a.out, PathBuf::from("out.img"));
        assert_eq!(a.def, Some(PathBuf::from("app.def")));
        assert_eq!(a.format, FormatArg::Squashfs);
        assert_eq!(a.compression, "gzip");
        assert!(!a.notest && !a.lint && !a.force && a.log.is_none());

        let a = parse(&[
            "--format",
            "sif",
            "--compression",
            "zstd",
            "--notest",
            "--force",
            "--log",
            "b.log",
            "o.sif",
            "d.def",
        ])
        .unwrap();
        assert_eq!(a.format, FormatArg::Sif);
        let opts = options(&a, a.def.clone().unwrap());
        assert_eq!(opts.compression, "zstd");
        assert!(opts.notest && opts.force);
        assert_eq!(opts.log, Some(PathBuf::from("b.log")));
        assert_eq!(opts.format, OutputFormat::Sif);
    }

    #[test]
    fn build_argument_errors() {
        assert!(parse(&["out.img"]).is_err(), "DEF is required without --lint");
        assert!(parse(&["--compression", "bzip9", "o", "d"]).is_err());
        assert!(parse(&["--format", "tar", "o", "d"]).is_err());
        assert!(parse(&["--lint", "app.def"]).is_ok(), "--lint takes the definition alone");
    }

    /// The runner opens the image itself (the runtime's error for a missing one), rather than
    /// handing back a command line for the CLI.
    #[test]
    fn test_runs_through_the_runtime() {
        let opts = options(&parse(&["o.img", "d.def"]).unwrap(), PathBuf::from("d.def"));
        let runner = opts.test_runner.expect("%test runs in a container of the image");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("x.img");
        let argv = ["/bin/sh", "/.singularity.d/test"].map(String::from);
        let e = runner(&missing, &argv).unwrap_err().to_string();
        assert!(e.starts_with(&format!("image {}", missing.display())), "{e}");
    }
}
