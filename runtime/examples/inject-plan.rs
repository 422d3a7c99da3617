//! Print the host-injection plan for this host (what `berth exec --dry-run` will show), and
//! optionally check it against an unpacked image tree.
//!
//!     cargo run -p berth-runtime --example inject-plan -- [--mpi=hybrid|host|none] [--nv] [IMAGE_ROOT]

use std::path::PathBuf;

use berth_runtime::inject::{self, HostFacts, InjectConfig, InjectRequest, MpiMode};

fn main() {
    let mut req = InjectRequest::default();
    let mut image: Option<PathBuf> = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--nv" => req.nvidia = true,
            "--mpi=hybrid" => req.mpi = Some(MpiMode::Hybrid),
            "--mpi=host" => req.mpi = Some(MpiMode::Host),
            "--mpi=none" => req.mpi = Some(MpiMode::None),
            a if !a.starts_with('-') => image = Some(PathBuf::from(a)),
            a => {
                eprintln!("inject-plan: unknown option {a}");
                std::process::exit(2);
            }
        }
    }
    let Some(host) = HostFacts::real() else {
        eprintln!("inject-plan: unsupported architecture");
        std::process::exit(2);
    };
    let env = |k: &str| std::env::var(k).ok();
    let result =
        inject::discover(&InjectConfig::default(), &host, &req, &env).and_then(|plan| match &image {
            Some(root) => inject::finish_for_image(plan, root),
            None => Ok(plan),
        });
    match result {
        Ok(plan) => println!("{}", serde_json::to_string_pretty(&plan).unwrap_or_default()),
        Err(e) => {
            eprintln!("berth: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
