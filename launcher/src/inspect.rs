//! `berth inspect`: what an image is and what it carries, as text or JSON.

use std::path::PathBuf;

use berth_runtime::config::Config;
use berth_runtime::error::Error;
use berth_runtime::image::{self, RootFs};
use clap::Args;

#[derive(Args)]
pub struct InspectArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// Show what this host would inject (MPI, fabric, NVIDIA) and why, instead of an image
    #[arg(long, conflicts_with = "image")]
    pub host: bool,
    /// With --host: the MPI model to show (hybrid, host, none)
    #[arg(long, value_name = "MODEL", value_parser = crate::parse_mpi, requires = "host")]
    pub mpi: Option<berth_runtime::inject::MpiMode>,
    /// With --host: include the NVIDIA driver stack
    #[arg(long, requires = "host")]
    pub nv: bool,
    #[arg(required_unless_present = "host")]
    image: Option<PathBuf>,
}

/// `berth inspect --host`: the injection plan for this host.
pub fn host(plan: Option<berth_runtime::inject::InjectPlan>, json: bool) -> Result<i32, Error> {
    let Some(plan) = plan else {
        println!("host injection: not supported on this architecture");
        return Ok(0);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&plan).unwrap_or_default());
        return Ok(0);
    }
    println!("host injection for this node (mpi: {:?}, nvidia: {}):", plan.mpi, plan.nvidia);
    for i in &plan.items {
        println!("  {} -> {}  [{}]", i.host_path.display(), i.container_path.display(), i.why);
    }
    for r in &plan.mpi_replace {
        println!("  host MPI {} replaces the image's {}", r.host_path.display(), r.soname);
    }
    for (k, v) in &plan.env {
        println!("  env {k}={v}");
    }
    for d in &plan.lib_dirs {
        println!("  LD_LIBRARY_PATH first: {}", d.display());
    }
    for n in &plan.notes {
        println!("  note: {n}");
    }
    println!("checked against each image before use: glibc versions, MPI ABI, CUDA driver");
    Ok(0)
}

pub fn run(cfg: &Config, a: InspectArgs) -> Result<i32, Error> {
    let img = image::open(a.image.as_deref().unwrap_or(std::path::Path::new("")))?;
    let meta = berth_runtime::container::read_image_metadata(&img, cfg)?;
    if a.json {
        let v = serde_json::json!({
            "image": img,
            "metadata": meta,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    println!("image:     {}", img.path.display());
    println!("format:    {:?}", img.format);
    match &img.root {
        RootFs::Embedded { fs, offset, size } => {
            println!("root fs:   {fs:?}, {size} bytes at offset {offset} (file is {} bytes)", img.file_size)
        }
        RootFs::Directory { path } => println!("root fs:   directory {}", path.display()),
    }
    if !img.partitions.is_empty() {
        println!("objects:");
        for p in &img.partitions {
            println!(
                "  id {:3} group {:2} {:10} {:>12} bytes @ {:<10} {}{}",
                p.id,
                p.group,
                p.kind,
                p.size,
                p.offset,
                p.name,
                match (&p.fs, &p.role) {
                    (Some(fs), Some(r)) => format!(" ({fs}, {r})"),
                    _ => String::new(),
                }
            );
        }
    }
    if !meta.labels.is_empty() {
        println!("labels:");
        for (k, v) in &meta.labels {
            println!("  {k}: {v}");
        }
    }
    let section = |title: &str, body: &Option<String>| {
        if let Some(b) = body {
            println!("{title}:");
            for l in b.lines() {
                println!("  {l}");
            }
        }
    };
    section("runscript", &meta.runscript);
    for (name, text) in &meta.env_files {
        section(&format!("environment ({name})"), &Some(text.clone()));
    }
    section("help", &meta.help);
    section("definition", &meta.definition);
    Ok(0)
}
