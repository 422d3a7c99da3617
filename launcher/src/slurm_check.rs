//! `berth config check`: the Slurm release the configured SPANK plugin was built for, against
//! the Slurm installed here. Slurm loads a plugin only if its `plugin_version` symbol equals
//! the running release's `SLURM_VERSION_NUMBER`, and then fails every `--container` step
//! with little more than "incompatible plugin version": this says which and what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `plugin_version` (major << 16 | minor << 8 | micro) read from the plugin file's symbol.
pub fn plugin_release(so: &Path) -> Result<u32, String> {
    use goblin::elf::section_header::SHT_NOBITS;
    let bytes = std::fs::read(so).map_err(|e| format!("cannot read {}: {e}", so.display()))?;
    let elf =
        goblin::elf::Elf::parse(&bytes).map_err(|e| format!("{} is not an ELF file: {e}", so.display()))?;
    let sym = elf
        .dynsyms
        .iter()
        .find(|s| elf.dynstrtab.get_at(s.st_name) == Some("plugin_version") && s.st_size >= 4)
        .ok_or_else(|| format!("{} exports no plugin_version: not a Slurm plugin", so.display()))?;
    let at = sym.st_value;
    let sh = elf
        .section_headers
        .iter()
        .find(|sh| sh.sh_type != SHT_NOBITS && sh.sh_addr <= at && at + 4 <= sh.sh_addr + sh.sh_size)
        .ok_or_else(|| format!("{}: plugin_version lies outside the file", so.display()))?;
    let off = (sh.sh_offset + (at - sh.sh_addr)) as usize;
    let raw: [u8; 4] = bytes
        .get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{}: truncated", so.display()))?;
    Ok(if elf.little_endian { u32::from_le_bytes(raw) } else { u32::from_be_bytes(raw) })
}

pub fn release_string(v: u32) -> String {
    format!("{}.{:02}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
}

/// The spank_berth.so named in plugstack.conf (beside `SLURM_CONF`, else in /etc/slurm) or
/// in the files it includes.
pub fn configured_plugin() -> Option<PathBuf> {
    let etc = std::env::var_os("SLURM_CONF")
        .map(PathBuf::from)
        .and_then(|c| c.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/etc/slurm"));
    find_in(&etc.join("plugstack.conf"), 0)
}

fn find_in(conf: &Path, depth: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(conf).ok()?;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["include", pattern, ..] if depth < 4 => {
                if let Some(p) = expand(pattern).into_iter().find_map(|f| find_in(&f, depth + 1)) {
                    return Some(p);
                }
            }
            [_, path, ..] if path.ends_with("spank_berth.so") => return Some(PathBuf::from(path)),
            _ => {}
        }
    }
    None
}

/// `include` takes a file or a `DIR/*.conf`-style pattern (a `*` in the last component).
fn expand(pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else { return vec![] };
    let Some((pre, post)) = name.split_once('*') else { return vec![p.to_path_buf()] };
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|f| {
                    f.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The installed Slurm's release, from `slurmd -V` (no configuration needed), else the
/// client commands' `--version`.
pub fn running_release() -> Option<String> {
    let candidates = [
        ("slurmd", "-V"),
        ("/usr/sbin/slurmd", "-V"),
        ("/usr/local/sbin/slurmd", "-V"),
        ("srun", "--version"),
        ("sbatch", "--version"),
    ];
    candidates.iter().find_map(|(prog, arg)| {
        let out = Command::new(prog).arg(arg).env_remove("SLURM_CONF").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some(n), Some(v))
                    if n.starts_with("slurm") && v.chars().all(|c| c.is_ascii_digit() || c == '.') =>
                {
                    Some(v.to_string())
                }
                _ => None,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_strings_match_slurm_version_output() {
        assert_eq!(release_string(0x160508), "22.05.8");
        assert_eq!(release_string(0x170b0a), "23.11.10");
    }

    #[test]
    fn plugstack_includes_are_followed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("plugstack.conf.d")).unwrap();
        std::fs::write(
            d.path().join("plugstack.conf"),
            format!("# comment\ninclude {}/plugstack.conf.d/*.conf\n", d.path().display()),
        )
        .unwrap();
        std::fs::write(d.path().join("plugstack.conf.d/a.conf"), "optional /x/other.so\n").unwrap();
        std::fs::write(
            d.path().join("plugstack.conf.d/berth.conf"),
            "# optional /old/spank_berth.so\noptional /p/spank_berth.so berth=/usr/bin/berth\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("plugstack.conf.d/berth.conf.dpkg-old"),
            "required /stale/spank_berth.so\n",
        )
        .unwrap();
        assert_eq!(find_in(&d.path().join("plugstack.conf"), 0), Some(PathBuf::from("/p/spank_berth.so")));
    }
}
