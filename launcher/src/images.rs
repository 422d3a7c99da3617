//! Registry images where an image file is expected (`berth exec docker://REF`, the holder of
//! `srun --container=docker://REF`): converted once per digest into the site's cache
//! (`[registry] cache_dir`, one directory per user) or the user's own, then used as a file.
//! The conversion lives here, in the launcher, so that berth-runtime (linked into the Slurm
//! plugin) never carries the registry client.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use berth_registry::{BlobCache, Options};
use berth_runtime::config::Config;
use berth_runtime::error::Error;
pub use berth_runtime::scheduler::{is_registry_image as is_registry, REGISTRY_PREFIX as PREFIX};

/// The file of conversions, one line each (time, node, reference, file), in the cache directory.
pub const CONVERSION_LOG: &str = "conversions.log";

/// The user's own cache root (`$BERTH_CACHE_DIR`, `$XDG_CACHE_HOME/berth`, `~/.cache/berth`).
/// A holder started by slurmstepd may have no `HOME`: the password database has it then.
fn user_cache_root(uid: u32) -> PathBuf {
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    if set("BERTH_CACHE_DIR") || set("XDG_CACHE_HOME") || set("HOME") {
        return BlobCache::default_root();
    }
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.dir.join(".cache/berth"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/berth-cache-{uid}")))
}

/// Where this user's converted images go. In the site's directory each user has a directory
/// of their own: `ensure_converted` makes it (mode 0700) or vets the one there, so nobody can
/// plant a file another user would then run.
fn images_dir(cfg: &Config, uid: u32) -> Result<PathBuf, Error> {
    let Some(site) = &cfg.registry.cache_dir else {
        return Ok(user_cache_root(uid).join("images"));
    };
    if !site.is_dir() {
        return Err(Error::request(
            format!("image cache {}", site.display()),
            "does not exist",
            "the administrator creates [registry] cache_dir (owned by root, mode 1777, on a \
             filesystem all nodes share)",
        ));
    }
    Ok(site.join(uid.to_string()))
}

/// `image` itself, or for a registry reference the converted file (converting it first when
/// no one has: concurrent callers on any node sharing the cache wait for one conversion).
pub fn local_file(cfg: &Config, image: PathBuf) -> Result<PathBuf, Error> {
    if !is_registry(&image) {
        return Ok(image);
    }
    let reference = image.to_string_lossy().into_owned();
    let err = |e: berth_registry::Error| Error::request(e.what, e.reason, e.hint);
    let host = berth_registry::reference::parse_image_ref(&reference).map_err(err)?.registry;
    let uid = nix::unistd::getuid().as_raw();
    let dir = images_dir(cfg, uid)?;
    let opts = Options {
        insecure: cfg.registry.insecure_hosts.contains(&host),
        credential_realms: cfg.registry.credential_realms.clone(),
        cache: BlobCache::new(user_cache_root(uid)),
        ..Options::default()
    };
    let before = berth_registry::CONVERSIONS.load(Ordering::SeqCst);
    let file = berth_registry::ensure_converted(&reference, &dir, &opts).map_err(err)?;
    if berth_registry::CONVERSIONS.load(Ordering::SeqCst) != before {
        log_conversion(&dir, &reference, &file);
    }
    Ok(file)
}

/// One line per conversion, for whoever wants to know which node converted what and when.
fn log_conversion(dir: &Path, reference: &str, file: &Path) {
    let node = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let line = format!("{now} {node} {reference} {}\n", file.display());
    // One write with O_APPEND: lines from several nodes never interleave.
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(CONVERSION_LOG))
        .and_then(|mut f| f.write_all(line.as_bytes()));
}
