//! A mutation fuzzer for berth's parsers of untrusted input: image files (format sniffing,
//! SquashFS/ext3 superblocks, SIF, Singularity 2.x), image environment files, definition files
//! (archive bootstraps among them), ld.so.cache, ELF libraries, labels JSON, and image layers
//! (a mutated layer tarball over a fixed lower one in a `docker save` archive, merged, written
//! as the tar stream mksquashfs gets and created in a directory as `berth build` does: extension
//! headers, deep paths, whiteouts, link chains across layers).
//!
//! In-process and deterministic: a seeded PRNG mutates seed inputs (built here, plus the SIF
//! fixtures in tests/fixtures/sif); each case runs under `catch_unwind`, and a watchdog thread
//! ends the run as a hang when one case takes longer than `--case-limit-ms`. The address space
//! is limited (`--max-memory-mib`), so that unbounded allocation aborts the run instead of the
//! machine. Prints `cases, panics, hangs` and exits non-zero on any panic or hang.
//!
//!     cargo run --release -p berth-build --example fuzz -- --seconds 30
//!     cargo run --release -p berth-build --example fuzz -- --seconds 3600 --seed 7 --out /tmp/finds
//!
//! A failing case is written to `--out` (default: target/fuzz-findings) as `TARGET-CASE.bin`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_runtime::fuzz_entry;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: small, fast and reproducible from the seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Image,
    Env,
    Def,
    LdCache,
    Elf,
    Labels,
    Layers,
}

impl Target {
    const ALL: [Target; 7] = [
        Target::Image,
        Target::Env,
        Target::Def,
        Target::LdCache,
        Target::Elf,
        Target::Labels,
        Target::Layers,
    ];
    fn name(self) -> &'static str {
        match self {
            Target::Image => "image",
            Target::Env => "env",
            Target::Def => "def",
            Target::LdCache => "ldcache",
            Target::Elf => "elf",
            Target::Labels => "labels",
            Target::Layers => "layers",
        }
    }
    /// Where mutations land: images are large and only their headers are parsed.
    fn hot_len(self) -> usize {
        match self {
            Target::Image => 1 << 16,
            _ => usize::MAX,
        }
    }
}

/// Definition files: parsed through the one public entry point `berth build` uses, kept in this
/// one function so that it follows the parser wherever it lives.
fn def_file(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let _ = berth_build::def::lint(&text, Path::new("fuzz.def"));
    berth_build::def::parse(&text, Path::new("fuzz.def")).is_ok()
}

/// The lower layer every `layers` case goes on: a directory, a file, a hardlink, and the first
/// half of a link chain out of the image (`y -> /etc`, then `x -> y` in the case's layer).
fn lower_layer() -> Vec<u8> {
    use berth_registry::testimg::{layer, Ent};
    layer(
        &[
            Ent::Dir("d", 0o755, 0, 0),
            Ent::File("d/inner", b"lower", 0o644, 0, 0),
            Ent::File("f", b"f", 0o644, 1000, 1000),
            Ent::Hardlink("h", "f"),
            Ent::Symlink("y", "/etc"),
        ],
        false,
    )
}

/// One `layers` case: `input` as the upper layer of a `docker save` archive, read as
/// `berth import` and `berth build` read it. The directory is made below `scratch`'s
/// directory; whatever the layers hold, nothing may appear outside it.
fn layers(scratch: &Path, input: &[u8]) -> bool {
    use berth_registry::testimg::{layer, Ent};
    let dir = scratch.with_extension("layers");
    let _ = std::fs::remove_dir_all(&dir);
    // Private: as root the cases make setuid files and device nodes.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir).unwrap();
    let manifest = br#"[{"Config":"c.json","Layers":["l0.tar","l1.tar"]}]"#;
    let lower = lower_layer();
    let outer = layer(
        &[
            Ent::File("manifest.json", manifest, 0o644, 0, 0),
            Ent::File("c.json", b"{\"config\":{}}", 0o644, 0, 0),
            Ent::File("l0.tar", &lower, 0o644, 0, 0),
            Ent::File("l1.tar", input, 0o644, 0, 0),
        ],
        false,
    );
    let archive = dir.join("a.tar");
    std::fs::write(&archive, outer).unwrap();
    let Ok(store) = berth_registry::image::Store::open_tar(&archive) else { return false };
    let Ok(r) = berth_registry::image::resolve_docker_archive(&store, "fuzz") else { return false };
    let Ok(tree) = berth_registry::flatten::merge(&store, &r.layers, || {}) else { return false };
    let ok = berth_registry::flatten::write_tar(&store, &r.layers, &tree, std::io::sink(), || {}).is_ok();
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap();
    let _ = berth_registry::flatten::write_dir(&store, &r.layers, &tree, &root, || {});
    let outside: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(outside.len() == 2, "write_dir created {outside:?} beside the root");
    let _ = std::fs::remove_dir_all(&dir);
    ok
}

fn run_case(target: Target, scratch: &Path, input: &[u8]) -> bool {
    match target {
        Target::Image => fuzz_entry::image(scratch, input),
        Target::Env => fuzz_entry::env_file(input),
        Target::Def => def_file(input),
        Target::LdCache => fuzz_entry::ld_cache(input),
        Target::Elf => fuzz_entry::elf(input),
        Target::Labels => fuzz_entry::labels(input),
        Target::Layers => layers(scratch, input),
    }
}

const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0xffff,
    4096,
    585,
    1 << 20,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

fn mutate(rng: &mut Rng, seed: &[u8], pool: &[Vec<u8>], hot_len: usize) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        let hot = v.len().min(hot_len).max(1);
        match rng.below(10) {
            0 if !v.is_empty() => {
                let i = rng.below(hot.min(v.len()));
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(hot.min(v.len()));
                v[i] = rng.next() as u8;
            }
            2 | 3 if v.len() >= 8 => {
                // An integer field (little-endian, 2/4/8 bytes) set to an edge value.
                let width = [2, 4, 8][rng.below(3)];
                let i = rng.below(hot.min(v.len() - width + 1));
                let mut val = INTERESTING[rng.below(INTERESTING.len())];
                if rng.below(4) == 0 {
                    val = (v.len() as u64).wrapping_add(rng.below(3) as u64).wrapping_sub(1);
                }
                v[i..i + width].copy_from_slice(&val.to_le_bytes()[..width]);
            }
            4 => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            5 => {
                let n = 1 + rng.below(64);
                for _ in 0..n {
                    v.push(rng.next() as u8);
                }
            }
            6 if !v.is_empty() => {
                // Duplicate a chunk in place (repeated lines, repeated descriptors).
                let a = rng.below(v.len());
                let len = 1 + rng.below((v.len() - a).min(1024));
                let chunk = v[a..a + len].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            7 if !v.is_empty() => {
                let a = rng.below(v.len());
                let len = 1 + rng.below((v.len() - a).min(256));
                v.drain(a..a + len);
            }
            8 if !pool.is_empty() => {
                // Splice: the head of this input, the tail of another.
                let other = &pool[rng.below(pool.len())];
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                let tokens: [&[u8]; 18] = [
                    b"$A$A",
                    b"${A:-${B:+x}}",
                    b"\\\n",
                    b"\"",
                    b"'",
                    b"\n%post\n",
                    b"\nBootstrap: ",
                    b"\x00",
                    b"\x1b[2J",
                    b"hsqs",
                    b"SIF_MAGIC\0",
                    b"#!/usr/bin/env run-singularity\n",
                    b"././@LongLink",
                    b".wh.",
                    b".wh..wh..opq",
                    b"../",
                    b"x/y/",
                    b"ustar\x0000",
                ];
                let t = tokens[rng.below(tokens.len())];
                let at = rng.below(v.len().min(hot) + 1);
                v.splice(at..at, t.iter().copied());
            }
        }
    }
    v
}

/// A tiny SquashFS (and the SIF and Singularity 2 files made from it) when mksquashfs is
/// here, an ext3 when mke2fs is, and the SIF fixtures.
fn image_seeds(work: &Path) -> Vec<Vec<u8>> {
    let mut seeds = vec![];
    let root = work.join("root");
    std::fs::create_dir_all(root.join(".singularity.d/env")).unwrap();
    std::fs::write(root.join(".singularity.d/runscript"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(root.join(".singularity.d/env/90-environment.sh"), "export A=1\n").unwrap();
    let sqsh = work.join("seed.sqsh");
    let made = Command::new("mksquashfs")
        .arg(&root)
        .arg(&sqsh)
        .args(["-noappend", "-quiet", "-no-progress", "-comp", "gzip"])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if made {
        let bytes = std::fs::read(&sqsh).unwrap();
        let mut simg = b"#!/usr/bin/env run-singularity\n".to_vec();
        simg.extend_from_slice(&bytes);
        seeds.push(simg);
        let sif = work.join("seed.sif");
        use berth_runtime::image::{write_sif, SifObject, SifObjectKind};
        let objects = [
            SifObject {
                kind: SifObjectKind::Deffile,
                name: "def".into(),
                data: b"Bootstrap: scratch\n".to_vec(),
            },
            SifObject { kind: SifObjectKind::Labels, name: "labels".into(), data: b"{\"a\":\"b\"}".to_vec() },
        ];
        if write_sif(&sif, &sqsh, &objects, None).is_ok() {
            seeds.push(std::fs::read(&sif).unwrap());
        }
        seeds.push(bytes);
    } else {
        eprintln!("fuzz: mksquashfs not found; image seeds are the SIF fixtures only");
    }
    let ext = work.join("seed.ext3");
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext3", "-d"])
        .arg(&root)
        .arg(&ext)
        .arg("2M")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if made {
        let mut img = b"#!/usr/bin/env run-singularity\n".to_vec();
        img.extend_from_slice(&std::fs::read(&ext).unwrap());
        seeds.push(img);
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sif");
    for e in std::fs::read_dir(fixtures).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "sif") {
            seeds.push(std::fs::read(e.path()).unwrap());
        }
    }
    seeds
}

fn text_seeds(target: Target) -> Vec<Vec<u8>> {
    let texts: &[&str] = match target {
        Target::Env => &[
            "export PATH=/opt/app/bin:$PATH\nA='lit $PATH'\nexport B=\"x ${A}\" C=2\nD=${NOPE:-def}\n",
            "if [ -z \"$X\" ]; then\n  X=1\nfi\nY=$(uname)\nexport LD_LIBRARY_PATH=/a:${LD_LIBRARY_PATH:-}\n",
            "A=x\nA=$A$A\nA=$A$A\nA=\"${A}${A}\"\n",
        ],
        Target::Def => &[
            "Bootstrap: docker\nFrom: debian:12\n\n%post\n  apt-get update\n%environment\n  export A=1\n%runscript\n  exec \"$@\"\n%labels\n  Maintainer me\n",
            "Bootstrap: scratch\n%files\n  a /b\n%help\n  help text\n%test\n  true\n",
            "Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://deb.debian.org/debian\n%post -c /bin/bash\n  echo hi\n",
            "Bootstrap: docker-archive\nFrom: ./image.tar\n\n%post\n  test -f /etc/os-release\n%runscript\n  exec \"$@\"\n",
            "Bootstrap: oci-archive\nFrom: /srv/images/app-oci.tar.gz\n%files\n  a /opt/\n%labels\n  Source archive\n",
            "Bootstrap: oci-archive\nFrom: layout-dir\n%environment\n  export A=$B\n",
        ],
        Target::Labels => &["{\"org.label-schema.name\": \"x\", \"n\": 3, \"nested\": {\"a\": [1, 2]}}"],
        _ => &[],
    };
    let mut seeds: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
    if target == Target::Def {
        let defs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../defs");
        for e in std::fs::read_dir(defs).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "def") {
                seeds.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    seeds
}

fn binary_seeds(target: Target) -> Vec<Vec<u8>> {
    let mut seeds = vec![];
    match target {
        Target::LdCache => {
            use berth_runtime::inject::ldcache::write_cache;
            seeds.push(write_cache(&[
                ("libc.so.6".into(), "/lib/x86_64-linux-gnu/libc.so.6".into(), 0x303),
                ("libm.so.6".into(), "/lib/x86_64-linux-gnu/libm.so.6".into(), 0x303),
            ]));
            if let Ok(b) = std::fs::read("/etc/ld.so.cache") {
                if b.len() < 256 << 10 {
                    seeds.push(b);
                }
            }
        }
        Target::Elf => {
            // The host's smallest shared libraries: real dynamic sections and version tables.
            let mut libs: Vec<PathBuf> =
                ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"]
                    .iter()
                    .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().contains(".so"))
                    .filter(|p| {
                        std::fs::metadata(p).map(|m| m.is_file() && m.len() < 48 << 10).unwrap_or(false)
                    })
                    .collect();
            libs.sort();
            seeds.extend(libs.iter().take(6).filter_map(|p| std::fs::read(p).ok()));
            seeds.push(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec());
        }
        _ => {}
    }
    seeds
}

/// Layer tarballs: every entry kind, whiteouts (also under a file and a missing directory),
/// GNU long names and links, pax records (path, size, xattrs), a deep path, and the rest of
/// the link chain the lower layer starts.
fn layer_seeds() -> Vec<Vec<u8>> {
    use berth_registry::testimg::{layer, Ent};
    let long = format!("{}/file", "long-directory-name".repeat(8));
    let deep = format!("{}leaf", "d/".repeat(300));
    let mut seeds = vec![
        layer(
            &[
                Ent::Dir("etc", 0o755, 0, 0),
                Ent::File("etc/passwd", b"root:x:0:0\n", 0o644, 0, 0),
                Ent::File(".wh.f", b"", 0o644, 0, 0),
                Ent::File("d/.wh..wh..opq", b"", 0o644, 0, 0),
                Ent::File("d/new", b"n", 0o4755, 5, 6),
                Ent::Symlink("lib", "usr/lib"),
                Ent::Hardlink("h2", "h"),
            ],
            false,
        ),
        layer(
            &[Ent::File("d", b"a file now", 0o644, 0, 0), Ent::File("d/.wh.inner", b"", 0o644, 0, 0)],
            false,
        ),
        layer(&[Ent::File("q/r/.wh.x", b"", 0o644, 0, 0), Ent::File(&deep, b"deep", 0o644, 0, 0)], false),
        layer(
            &[Ent::File(&long, b"long", 0o644, 0, 0), Ent::Symlink("s", &long), Ent::Hardlink("hl", &long)],
            false,
        ),
        layer(&[Ent::Symlink("x", "y"), Ent::File("x/file", b"through the chain", 0o644, 0, 0)], false),
        layer(&[Ent::RawFile("../escape", b"x"), Ent::Hardlink("out", "../../etc/shadow")], false),
    ];
    let mut p =
        berth_registry::testimg::pax(&[("path", b"p/x"), ("size", b"3"), ("SCHILY.xattr.user.k", b"v")]);
    p.extend_from_slice(&layer(&[Ent::File("ignored", b"abc", 0o644, 0, 0)], false));
    seeds.push(p);
    seeds
}

fn limit_memory(mib: u64) {
    let lim = libc::rlimit { rlim_cur: mib << 20, rlim_max: mib << 20 };
    // SAFETY: setrlimit reads the struct we pass; no other memory is involved.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
        eprintln!("fuzz: cannot limit memory: {}", std::io::Error::last_os_error());
    }
}

fn peak_rss_mib() -> i64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss >> 10
    }
}

struct Args {
    seconds: u64,
    seed: u64,
    case_limit: Duration,
    max_memory_mib: u64,
    targets: Vec<Target>,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        seconds: 30,
        seed: 1,
        case_limit: Duration::from_secs(2),
        max_memory_mib: 2048,
        targets: Target::ALL.to_vec(),
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-findings"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--seconds" => a.seconds = value().parse().unwrap_or_else(|_| usage("--seconds N")),
            "--seed" => a.seed = value().parse().unwrap_or_else(|_| usage("--seed N")),
            "--case-limit-ms" => {
                a.case_limit =
                    Duration::from_millis(value().parse().unwrap_or_else(|_| usage("--case-limit-ms N")))
            }
            "--max-memory-mib" => {
                a.max_memory_mib = value().parse().unwrap_or_else(|_| usage("--max-memory-mib N"))
            }
            "--out" => a.out = PathBuf::from(value()),
            "--target" => {
                let v = value();
                a.targets = v
                    .split(',')
                    .map(|n| {
                        *Target::ALL
                            .iter()
                            .find(|t| t.name() == n)
                            .unwrap_or_else(|| usage(&format!("unknown target {n}")))
                    })
                    .collect();
            }
            _ => usage(&format!("unknown argument {flag}")),
        }
    }
    a
}

fn usage(why: &str) -> ! {
    eprintln!(
        "fuzz: {why}\nusage: fuzz [--seconds N] [--seed N] [--target image,env,def,ldcache,elf,labels,layers] \
         [--case-limit-ms N] [--max-memory-mib N] [--out DIR]"
    );
    std::process::exit(2)
}

fn main() {
    let args = parse_args();
    let work = std::env::temp_dir().join(format!("berth-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let scratch = work.join("case.img");
    let corpus: Vec<(Target, Vec<Vec<u8>>)> = args
        .targets
        .iter()
        .map(|&t| {
            let seeds = match t {
                Target::Image => image_seeds(&work),
                Target::Env | Target::Def | Target::Labels => text_seeds(t),
                Target::LdCache | Target::Elf => binary_seeds(t),
                Target::Layers => layer_seeds(),
            };
            (t, seeds)
        })
        .filter(|(_, s)| !s.is_empty())
        .collect();
    limit_memory(args.max_memory_mib);
    // Panics are counted and saved, not printed one by one.
    std::panic::set_hook(Box::new(|_| {}));

    // The watchdog: the case in progress (its number and start) and a copy of its input.
    let started = Arc::new(AtomicU64::new(0));
    let current: Arc<Mutex<(Target, Vec<u8>, u64)>> = Arc::new(Mutex::new((Target::Env, vec![], 0)));
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    {
        let (started, current, done, out, limit) =
            (started.clone(), current.clone(), done.clone(), args.out.clone(), args.case_limit);
        let work = work.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            if done.load(Ordering::Relaxed) {
                return;
            }
            let at = started.load(Ordering::Relaxed);
            if at != 0 && t0.elapsed().as_millis() as u64 > at + limit.as_millis() as u64 {
                // A case cannot be stopped from outside its thread: report it and end the run.
                let (target, input, case) =
                    current.lock().map(|c| c.clone()).unwrap_or((Target::Env, vec![], 0));
                let _ = std::fs::create_dir_all(&out);
                let file = out.join(format!("hang-{}-{case}.bin", target.name()));
                let _ = std::fs::write(&file, &input);
                println!(
                    "fuzz: HANG in {} case {case} (over {limit:?}), input saved to {}",
                    target.name(),
                    file.display()
                );
                println!("fuzz: cases {case}, panics ?, hangs 1");
                let _ = std::fs::remove_dir_all(&work);
                std::process::exit(1);
            }
        });
    }

    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let deadline = Duration::from_secs(args.seconds);
    let (mut cases, mut panics, mut accepted) = (0u64, 0u64, 0u64);
    let mut per_target = vec![0u64; corpus.len()];
    while t0.elapsed() < deadline {
        let k = (cases as usize) % corpus.len();
        let (target, seeds) = &corpus[k];
        let seed = &seeds[rng.below(seeds.len())];
        // Every 16th case is an unmutated seed, so that the targets' good paths stay covered.
        let input =
            if cases % 16 == 0 { seed.clone() } else { mutate(&mut rng, seed, seeds, target.hot_len()) };
        if let Ok(mut c) = current.lock() {
            *c = (*target, input.clone(), cases);
        }
        started.store((t0.elapsed().as_millis() as u64).max(1), Ordering::Relaxed);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| run_case(*target, &scratch, &input)));
        started.store(0, Ordering::Relaxed);
        match result {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => {
                panics += 1;
                let _ = std::fs::create_dir_all(&args.out);
                let file = args.out.join(format!("panic-{}-{cases}.bin", target.name()));
                let _ = std::fs::write(&file, &input);
                println!("fuzz: PANIC in {} case {cases}, input saved to {}", target.name(), file.display());
            }
        }
        per_target[k] += 1;
        cases += 1;
    }
    done.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&work);
    let per: Vec<String> = corpus
        .iter()
        .zip(&per_target)
        .map(|((t, s), n)| format!("{} {n} ({} seeds)", t.name(), s.len()))
        .collect();
    println!("fuzz: {} (seed {}, {}s)", per.join(", "), args.seed, args.seconds);
    println!(
        "fuzz: cases {cases}, panics {panics}, hangs 0 (parsed ok: {accepted}; peak RSS {} MiB)",
        peak_rss_mib()
    );
    std::process::exit(if panics > 0 { 1 } else { 0 });
}
