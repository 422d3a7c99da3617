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
    json: bool,
    image: PathBuf,
}

pub fn run(cfg: &Config, a: InspectArgs) -> Result<i32, Error> {
    let img = image::open(&a.image)?;
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
