//! `berth pull`, `berth import` and `berth cache`: images from registries and archives into one
//! SquashFS file, as the user. All the work is in `berth_registry`; this file maps options.

use std::path::PathBuf;

use berth_registry::{BlobCache, Options, Platform, Source};
use clap::{Args, Subcommand};

/// Convert a registry image to a SquashFS file: berth pull docker://HOST/REPO:TAG [OUT]
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    berth pull docker://ubuntu:22.04\n  \
    berth pull docker://nvcr.io/hpc/gromacs:2023.2 gromacs.sqsh\n  \
    berth pull --insecure docker://registry.local:5000/app@sha256:<digest> app.sqsh\n  \
    berth pull --format sif docker://ubuntu:22.04 ubuntu.sif\n\n\
Credentials come from $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, \
~/.docker/config.json and ~/.netrc (docker/podman/skopeo login write them); credHelpers and \
credsStore there run docker-credential-NAME; identity tokens (identitytoken, a helper's <token>) \
are exchanged at the registry's token service. Blobs are cached \
(verified) in $BERTH_CACHE_DIR, else ~/.cache/berth.")]
pub struct PullArgs {
    /// docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST], or a Docker Hub name
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Image file to write (default: REPO_TAG.sqsh in the current directory)
    #[arg(value_name = "OUT")]
    pub out: Option<PathBuf>,
    /// Talk plain HTTP to the registry
    #[arg(long)]
    pub insecure: bool,
    /// OS/ARCH[/VARIANT] to choose from a multi-platform image (default: this machine's)
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// No progress display
    #[arg(short, long)]
    pub quiet: bool,
    /// File format: squashfs (berth's native) or sif (Apptainer's, directly executable)
    #[arg(long, value_enum, default_value_t = PullFormat::Squashfs)]
    pub format: PullFormat,
}

/// Image file format for `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullFormat {
    /// SquashFS file (default OUT: NAME.sqsh)
    Squashfs,
    /// Apptainer/Singularity SIF file (default OUT: NAME.sif)
    Sif,
}

impl PullFormat {
    fn registry(self) -> berth_registry::Format {
        match self {
            PullFormat::Squashfs => berth_registry::Format::Squashfs,
            PullFormat::Sif => berth_registry::Format::Sif,
        }
    }

    /// The default output name for a source whose SquashFS name would be `sqsh_name`.
    fn file_name(self, sqsh_name: String) -> PathBuf {
        match self {
            PullFormat::Squashfs => sqsh_name.into(),
            PullFormat::Sif => {
                let stem = sqsh_name.strip_suffix(".sqsh").unwrap_or(&sqsh_name);
                format!("{stem}.sif").into()
            }
        }
    }
}

/// Convert an image archive or OCI layout: berth import oci-archive:FILE|docker-archive:FILE|oci:DIR[:TAG] [OUT]
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// oci-archive:FILE, docker-archive:FILE or oci:DIR[:TAG]
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Image file to write (default: the source's name with .sqsh)
    #[arg(value_name = "OUT")]
    pub out: Option<PathBuf>,
    /// OS/ARCH[/VARIANT] to choose from a multi-platform layout
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// No progress display
    #[arg(short, long)]
    pub quiet: bool,
    /// File format: squashfs (berth's native) or sif (Apptainer's, directly executable)
    #[arg(long, value_enum, default_value_t = PullFormat::Squashfs)]
    pub format: PullFormat,
}

#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// List the cached blobs (digest, size)
    List,
    /// Remove every cached blob
    Clean,
    /// Convert a registry image once into the image cache ([registry] cache_dir in berth.toml,
    /// else ~/.cache/berth/images) and print the file's path (what berth exec docker://REF runs)
    Image {
        /// docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]
        #[arg(value_name = "REF")]
        reference: String,
    },
}

fn options(platform: Option<&str>, insecure: bool, quiet: bool) -> berth_registry::Result<Options> {
    let platform = platform.map(Platform::parse).transpose()?.unwrap_or_else(Platform::host);
    // The conversion needs no site configuration, but honours the token services it trusts;
    // a file that does not load trusts none beyond the registry's own.
    let credential_realms =
        berth_runtime::config::Config::load().map(|(c, _)| c.registry.credential_realms).unwrap_or_default();
    Ok(Options { platform, insecure, quiet, credential_realms, ..Options::default() })
}

fn report(r: berth_registry::Result<berth_registry::Report>, quiet: bool) -> i32 {
    match r {
        Ok(r) => {
            if !quiet {
                let digest = r.digest.map(|d| format!(" ({d})")).unwrap_or_default();
                eprintln!("berth: wrote {}{digest}, {} layers", r.out.display(), r.layers);
            }
            0
        }
        Err(e) => {
            eprintln!("berth: {e}");
            berth_runtime::error::EXIT_BERTH_ERROR
        }
    }
}

pub fn pull(a: PullArgs) -> i32 {
    let r = (|| {
        let src = berth_registry::reference::parse_image_ref(&a.reference)?;
        let out = a.out.clone().unwrap_or_else(|| a.format.file_name(src.default_file_name()));
        let mut opts = options(a.platform.as_deref(), a.insecure, a.quiet)?;
        opts.format = a.format.registry();
        berth_registry::pull(&Source::Registry(src), &out, &opts)
    })();
    report(r, a.quiet)
}

pub fn import(a: ImportArgs) -> i32 {
    let r = (|| {
        let src = berth_registry::parse_source(&a.source)?;
        let out = match (&a.out, &src) {
            (Some(o), _) => o.clone(),
            (None, Source::OciArchive(p) | Source::DockerArchive(p) | Source::OciDir(p, _)) => {
                let stem =
                    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
                a.format.file_name(format!("{stem}.sqsh"))
            }
            (None, Source::Registry(r)) => a.format.file_name(r.default_file_name()),
        };
        let mut opts = options(a.platform.as_deref(), false, a.quiet)?;
        opts.format = a.format.registry();
        berth_registry::pull(&src, &out, &opts)
    })();
    report(r, a.quiet)
}

pub fn cache(c: CacheCmd) -> i32 {
    let cache = BlobCache::new(BlobCache::default_root());
    match c {
        CacheCmd::List => {
            let list = cache.list();
            let total: u64 = list.iter().map(|(_, s)| s).sum();
            for (d, s) in &list {
                println!("{d}  {s}");
            }
            eprintln!("berth: {} blobs, {total} bytes in {}", list.len(), cache.root.display());
            0
        }
        CacheCmd::Image { .. } => {
            eprintln!("berth: internal error: berth cache image is run with the site configuration");
            berth_runtime::error::EXIT_BERTH_ERROR
        }
        CacheCmd::Clean => match cache.clean() {
            Ok((n, bytes)) => {
                eprintln!("berth: removed {n} blobs ({bytes} bytes) from {}", cache.root.display());
                0
            }
            Err(e) => {
                eprintln!("berth: {e}");
                berth_runtime::error::EXIT_BERTH_ERROR
            }
        },
    }
}
