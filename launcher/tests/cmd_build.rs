//! `berth build` argument handling. main.rs belongs to the lead, so the module is compiled here
//! directly; once main.rs declares `mod cmd_build`, these tests still hold.

#[path = "../src/cmd_build.rs"]
#[allow(dead_code)]
mod cmd_build;

use std::path::PathBuf;

use clap::Parser;
use cmd_build::{BuildArgs, FormatArg};

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
    let opts = cmd_build::options(&a, a.def.clone().unwrap());
    assert_eq!(opts.compression, "zstd");
    assert!(opts.notest && opts.force);
    assert_eq!(opts.log, Some(PathBuf::from("b.log")));
    assert_eq!(opts.format, berth_runtime::build::OutputFormat::Sif);
}

#[test]
fn build_argument_errors() {
    assert!(parse(&["out.img"]).is_err(), "DEF is required without --lint");
    assert!(parse(&["--compression", "bzip9", "o", "d"]).is_err());
    assert!(parse(&["--format", "tar", "o", "d"]).is_err());
    assert!(parse(&["--lint", "app.def"]).is_ok(), "--lint takes the definition alone");
}

#[test]
fn build_lint_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.def");
    std::fs::write(&good, "Bootstrap: scratch\n%runscript\n    echo hi\n").unwrap();
    let bad = dir.path().join("bad.def");
    std::fs::write(&bad, "From: nothing\n%wrong\n").unwrap();
    assert_eq!(cmd_build::run(parse(&["--lint", good.to_str().unwrap()]).unwrap()).unwrap(), 0);
    assert_eq!(
        cmd_build::run(parse(&["--lint", bad.to_str().unwrap()]).unwrap()).unwrap(),
        cmd_build::EXIT_LINT_PROBLEMS
    );
    let missing = dir.path().join("missing.def");
    assert_eq!(cmd_build::run(parse(&["--lint", missing.to_str().unwrap()]).unwrap()).unwrap(), 255);
}
