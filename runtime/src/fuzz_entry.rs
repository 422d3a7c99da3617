//! Thin entry points into berth's parsers of untrusted input, for the mutation fuzzer
//! (`cargo run --release -p berth-runtime --example fuzz`). Each takes the raw bytes an image
//! author or a user controls and returns whether they parsed; what matters is that every input
//! ends in `Ok` or `Err` (no panic, no hang, bounded memory).

use std::path::Path;

/// Writes `bytes` to `scratch` and recognises it as an image (format sniffing, SquashFS and
/// ext3 superblocks, SIF header and descriptors, Singularity 2 layouts): what `berth inspect`,
/// `exec` and the privileged mount checks run on a user's file.
pub fn image(scratch: &Path, bytes: &[u8]) -> bool {
    if std::fs::write(scratch, bytes).is_err() {
        return false;
    }
    crate::image::open(scratch).is_ok()
}

/// Evaluates an image's environment file (`/.singularity.d/env/*.sh`), as container start does.
pub fn env_file(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let mut env = crate::env::Env::default();
    env.set("PATH", crate::plan::DEFAULT_PATH);
    crate::env::eval_assignments(&text, &mut env, "90-environment.sh").is_ok()
}

/// Parses an `ld.so.cache` (the host's, or an image's when its glibc is checked).
pub fn ld_cache(bytes: &[u8]) -> bool {
    crate::inject::ldcache::LdCache::parse(bytes).is_ok()
}

/// Reads the ELF facts of a shared library (an image's libc.so.6, MPI libraries).
pub fn elf(bytes: &[u8]) -> bool {
    crate::inject::elf::parse_elf(bytes).is_ok()
}

/// Parses `labels.json` as `berth inspect` does.
pub fn labels(bytes: &[u8]) -> bool {
    serde_json::from_slice::<std::collections::BTreeMap<String, serde_json::Value>>(bytes).is_ok()
}
