//! Generates Rust bindings for the installed `<slurm/spank.h>`.
//!
//! A SPANK plugin is loaded only by the Slurm release whose `SLURM_VERSION_NUMBER` it exports,
//! so the bindings (and that number) always come from the header on the build machine.
//! `SLURM_INCLUDE_DIR` points at another include dir (the one that holds `slurm/spank.h`).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    let include = env::var("SLURM_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
    let header = PathBuf::from(&include).join("slurm/spank.h");
    println!("cargo:rerun-if-changed={}", header.display());
    if !header.exists() {
        panic!(
            "\n\nspank-plugin: {} not found.\n\
             The SPANK plugin is built against the Slurm it will be loaded by.\n\
             Install the Slurm development headers (Debian/Ubuntu: apt-get install libslurm-dev;\n\
             RHEL: dnf install slurm-devel), or set SLURM_INCLUDE_DIR to the directory that\n\
             contains slurm/spank.h.\n\n",
            header.display()
        );
    }
    let bindings = bindgen::Builder::default()
        .header_contents("wrapper.h", "#include <slurm/spank.h>\n#include <slurm/slurm_version.h>\n")
        .clang_arg(format!("-I{include}"))
        .allowlist_function("spank_.*")
        .allowlist_function("slurm_(info|error|debug|verbose)")
        .allowlist_type("spank_.*")
        .allowlist_var("SLURM_VERSION_NUMBER")
        .allowlist_var("SPANK_OPTION_MAXLEN")
        // enums stay plain integer constants: a value Slurm adds later must not be UB in Rust
        .generate()
        .unwrap_or_else(|e| panic!("spank-plugin: bindgen failed on {}: {e}", header.display()));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("spank_bindings.rs");
    bindings.write_to_file(&out).expect("write spank bindings");
}
