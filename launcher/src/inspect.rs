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
    /// Show what this host would inject (MPI, fabric, NVIDIA) and why; with IMAGE, also what
    /// the image's own MPI stack will cost on this host
    #[arg(long)]
    pub host: bool,
    /// With --host: the MPI model to show (hybrid, host, none)
    #[arg(long, value_name = "MODEL", value_parser = crate::parse_mpi, requires = "host")]
    pub mpi: Option<berth_runtime::inject::MpiMode>,
    /// With --host: include the NVIDIA driver stack
    #[arg(long, requires = "host")]
    pub nv: bool,
    #[arg(required_unless_present = "host")]
    pub image: Option<PathBuf>,
}

/// `berth inspect --host`: the injection plan for this host.
/// `warnings`: what the image given with `--host IMAGE` will cost on this host, and what to set.
pub fn host(
    plan: Option<berth_runtime::inject::InjectPlan>,
    warnings: &[String],
    json: bool,
) -> Result<i32, Error> {
    let Some(plan) = plan else {
        println!("host injection: not supported on this architecture");
        return Ok(0);
    };
    if json {
        let mut v = serde_json::to_value(&plan).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("image_warnings".into(), serde_json::json!(warnings));
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    println!(
        "host injection for this node (mpi: {:?}, nvidia: {}, rocm: {}):",
        plan.mpi, plan.nvidia, plan.rocm
    );
    for (i, lent) in plan.binds() {
        let when = if lent { "; lent to images that can run it" } else { "" };
        println!("  {} -> {}  [{}{when}]", i.host_path.display(), i.container_path.display(), i.why);
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
    for d in &plan.bin_dirs {
        println!("  PATH last: {}", d.display());
    }
    for n in &plan.notes {
        println!("  note: {n}");
    }
    println!("checked against each image before use: glibc versions, MPI ABI, CUDA driver");
    for w in warnings {
        println!("warning: {w}");
    }
    Ok(0)
}

/// `s` with the control characters an image could use to drive the terminal (ESC sequences,
/// carriage returns, backspaces, C1 controls) shown as `\xNN`/`\u{NN}` instead. `multiline`
/// keeps newlines and tabs, for script bodies shown line by line.
fn clean(s: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' if multiline => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if ('\u{80}'..='\u{9f}').contains(&c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            // Bidirectional overrides reorder what follows them on screen.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// One-line text from the image (names, labels).
fn line(s: &str) -> String {
    clean(s, false)
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
    println!("image:     {}", line(&img.path.display().to_string()));
    println!("format:    {:?}", img.format);
    match &img.root {
        RootFs::Embedded { fs, offset, size } => {
            println!("root fs:   {fs:?}, {size} bytes at offset {offset} (file is {} bytes)", img.file_size)
        }
        RootFs::Directory { path } => println!("root fs:   directory {}", line(&path.display().to_string())),
    }
    if !img.partitions.is_empty() {
        println!("objects:");
        for p in &img.partitions {
            println!(
                "  id {:3} group {:2} {:10} {:>12} bytes @ {:<10} {}{}",
                p.id,
                p.group,
                line(&p.kind),
                p.size,
                p.offset,
                line(&p.name),
                match (&p.fs, &p.role) {
                    (Some(fs), Some(r)) => format!(" ({}, {})", line(fs), line(r)),
                    _ => String::new(),
                }
            );
        }
    }
    if !meta.labels.is_empty() {
        println!("labels:");
        for (k, v) in &meta.labels {
            println!("  {}: {}", line(k), line(v));
        }
    }
    let section = |title: &str, body: &Option<String>| {
        if let Some(b) = body {
            println!("{}:", line(title));
            for l in b.lines() {
                println!("  {}", clean(l, true));
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

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn terminal_controls_from_images_are_shown_not_obeyed() {
        assert_eq!(clean("evil\u{1b}]0;owned\u{7}\u{1b}[2J", false), "evil\\x1b]0;owned\\x07\\x1b[2J");
        assert_eq!(clean("a\rb\u{8}c\u{9b}d", false), "a\\x0db\\x08c\\u{9b}d");
        assert_eq!(clean("one\ttwo\nthree", true), "one\ttwo\nthree");
        assert_eq!(clean("one\ttwo\nthree", false), "one\\x09two\\x0athree");
        assert_eq!(clean("x\u{202e}y", false), "x\\u{202e}y");
        assert_eq!(clean("héllo wörld", false), "héllo wörld");
    }
}
