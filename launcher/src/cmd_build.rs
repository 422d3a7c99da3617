//! `berth build OUT DEF` and `berth build --lint DEF`: the command-line piece of image building.
//! All the work is in `berth_runtime::build`; this file only maps options and exit codes.
//!
//! For the lead, in main.rs:
//!     mod cmd_build;
//!     enum Command { ..., /// Build an image from a definition file (root)
//!                    Build(cmd_build::BuildArgs), }
//!     Command::Build(args) => cmd_build::run(args),
//!
//! Exit codes: 0 built / lint clean; 1 lint found problems; 130 interrupted (SIGINT/SIGTERM);
//! 255 any other failure (the message is already printed as `berth: ...`).

use std::path::PathBuf;

use berth_runtime::build::{self, BuildOptions, OutputFormat, COMPRESSIONS};
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
    opts.log = args.log.clone();
    // %test runs in the real container, through this same berth.
    opts.berth_exec = std::env::current_exe().ok();
    opts
}
