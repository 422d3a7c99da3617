//! Definition files: the Singularity/Apptainer recipe syntax, so one file builds with berth and
//! with Apptainer.
//!
//! ```text
//! Bootstrap: debootstrap        <- header: `Key: value` lines before the first section
//! OSVersion: bookworm
//! MirrorURL: http://deb.debian.org/debian
//! Include: ca-certificates
//!
//! %post                         <- sections: `%name [args]` at the start of a line
//!     apt-get install -y openmpi-bin
//! ```
//!
//! [`lint`] reports every problem with its line; [`parse`] refuses a file with any problem, so a
//! build never starts from a recipe that `berth build --lint` would reject.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use berth_runtime::error::{Error, Result};

/// Header keys berth understands (compared case-insensitively, as Apptainer does).
pub const HEADER_KEYS: &[&str] = &["Bootstrap", "From", "OSVersion", "MirrorURL", "Include"];

/// Sections berth understands.
pub const SECTIONS: &[&str] =
    &["setup", "files", "post", "environment", "runscript", "labels", "help", "test"];

/// Apptainer sections berth does not implement; named in the lint message so the user knows
/// the file is valid Apptainer syntax, just not supported here.
const APPTAINER_ONLY_SECTIONS: &[&str] = &[
    "startscript",
    "arguments",
    "appinstall",
    "appfiles",
    "appenv",
    "apphelp",
    "applabels",
    "apprun",
    "appsetup",
    "apptest",
    "pre",
];

/// Mirror used by `Bootstrap: debootstrap` when the file names none.
pub const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// Where the image's starting root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// `debootstrap SUITE ROOTFS MIRROR` with `--include`.
    Debootstrap { suite: String, mirror: String, include: Vec<String> },
    /// An existing berth/SIF/SquashFS image or a directory.
    LocalImage { from: String },
    /// A `docker save` tarball.
    DockerArchive { from: String },
    /// An OCI image layout, as a tar archive or a directory.
    OciArchive { from: String },
    /// An image from a registry (`docker://` optional), pulled as `berth pull` does.
    Docker { from: String },
    /// An empty root filesystem.
    Scratch,
}

impl Bootstrap {
    /// The agent's name as written in `Bootstrap:`.
    pub fn agent(&self) -> &'static str {
        match self {
            Bootstrap::Debootstrap { .. } => "debootstrap",
            Bootstrap::LocalImage { .. } => "localimage",
            Bootstrap::DockerArchive { .. } => "docker-archive",
            Bootstrap::OciArchive { .. } => "oci-archive",
            Bootstrap::Docker { .. } => "docker",
            Bootstrap::Scratch => "scratch",
        }
    }

    /// What the image starts from, for labels ("bookworm", a path, "" for scratch).
    pub fn base(&self) -> String {
        match self {
            Bootstrap::Debootstrap { suite, .. } => suite.clone(),
            Bootstrap::LocalImage { from }
            | Bootstrap::DockerArchive { from }
            | Bootstrap::OciArchive { from }
            | Bootstrap::Docker { from } => from.clone(),
            Bootstrap::Scratch => String::new(),
        }
    }
}

/// A script section (`%setup`, `%post`, `%test`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Script {
    /// Text after the section name (`%post -c /bin/bash` gives `-c /bin/bash`).
    pub args: String,
    /// The body, verbatim, without the `%name` line.
    pub body: String,
    /// Line of the `%name` line (1-based).
    pub line: usize,
}

impl Script {
    /// The interpreter to run the body with: `-c PATH` in the section arguments, else `/bin/sh`.
    pub fn interpreter(&self) -> String {
        let mut words = self.args.split_whitespace();
        while let Some(w) = words.next() {
            if w == "-c" {
                if let Some(p) = words.next() {
                    return p.to_string();
                }
            }
        }
        "/bin/sh".to_string()
    }
}

/// One `%files` line: `SOURCE [DEST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopy {
    /// Host path, as written (may contain `$VAR` / `${VAR}`, expanded at build time).
    pub src: String,
    /// Path inside the image; `None` means the same path as the source.
    pub dest: Option<String>,
    pub line: usize,
}

/// A parsed definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub path: PathBuf,
    /// The file as read; stored in the image as `/.singularity.d/Singularity`.
    pub text: String,
    pub bootstrap: Bootstrap,
    pub setup: Option<Script>,
    pub files: Vec<FileCopy>,
    pub post: Option<Script>,
    pub environment: Option<String>,
    pub runscript: Option<Script>,
    pub labels: BTreeMap<String, String>,
    pub help: Option<String>,
    pub test: Option<Script>,
}

/// One problem found by [`lint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintIssue {
    /// 1-based line; 0 for problems of the whole file (a missing header).
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for LintIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

impl LintIssue {
    /// `file:line: msg`, the form editors and compilers use.
    pub fn render(&self, path: &Path) -> String {
        format!("{}:{}: {}", path.display(), self.line, self.msg)
    }
}

/// What the scanner collects before validation.
#[derive(Default)]
struct Raw {
    /// Canonical key name -> (value, line).
    header: BTreeMap<&'static str, (String, usize)>,
    /// Section name -> script; a repeated section is appended, as Apptainer does.
    sections: BTreeMap<&'static str, Script>,
}

fn canonical_key(key: &str) -> Option<&'static str> {
    HEADER_KEYS.iter().copied().find(|k| k.eq_ignore_ascii_case(key))
}

fn canonical_section(name: &str) -> Option<&'static str> {
    SECTIONS.iter().copied().find(|s| s.eq_ignore_ascii_case(name))
}

/// A section line is `%` + a name at the very start of a line; indented `%` lines are body text
/// (shell `printf '%s'` never starts a line, but an indented one must not end the section).
fn section_start(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('%')?;
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    Some((&rest[..end], rest[end..].trim()))
}

fn scan(text: &str, issues: &mut Vec<LintIssue>) -> Raw {
    let mut raw = Raw::default();
    // None while in the header or inside an unknown section (whose body is skipped).
    let mut current: Option<&'static str> = None;
    let mut in_header = true;
    for (index, line) in text.lines().enumerate() {
        let lineno = index + 1;
        if let Some((name, args)) = section_start(line) {
            in_header = false;
            match canonical_section(name) {
                Some(section) => {
                    current = Some(section);
                    let script = raw.sections.entry(section).or_insert_with(|| Script {
                        args: args.to_string(),
                        body: String::new(),
                        line: lineno,
                    });
                    if script.line != lineno && !args.is_empty() && script.args != args {
                        issues.push(LintIssue {
                            line: lineno,
                            msg: format!(
                                "%{section} repeated with different arguments ({args:?} vs {:?} on line {})",
                                script.args, script.line
                            ),
                        });
                    }
                }
                None => {
                    current = None;
                    let lower = name.to_ascii_lowercase();
                    let msg = if APPTAINER_ONLY_SECTIONS.contains(&lower.as_str()) {
                        format!("section %{name} is Apptainer syntax that berth does not support")
                    } else {
                        format!("unknown section %{name} (known: %{})", SECTIONS.join(", %"))
                    };
                    issues.push(LintIssue { line: lineno, msg });
                }
            }
            continue;
        }
        if in_header {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((key, value)) = trimmed.split_once(':') else {
                issues.push(LintIssue {
                    line: lineno,
                    msg: format!("expected `Key: value` in the header, found {trimmed:?}"),
                });
                continue;
            };
            let key = key.trim();
            match canonical_key(key) {
                Some(k) => {
                    if let Some((_, first)) = raw.header.get(k) {
                        issues.push(LintIssue {
                            line: lineno,
                            msg: format!("{k} given twice (first on line {first})"),
                        });
                    } else {
                        raw.header.insert(k, (value.trim().to_string(), lineno));
                    }
                }
                None => issues.push(LintIssue {
                    line: lineno,
                    msg: format!("unknown header key {key:?} (known: {})", HEADER_KEYS.join(", ")),
                }),
            }
            continue;
        }
        if let Some(section) = current {
            if let Some(script) = raw.sections.get_mut(section) {
                script.body.push_str(line);
                script.body.push('\n');
            }
        }
    }
    raw
}

/// Lines of a section body with their line numbers, skipping blanks and `#` comments.
fn content_lines(script: &Script) -> impl Iterator<Item = (usize, &str)> {
    script
        .body
        .lines()
        .enumerate()
        .map(move |(i, l)| (script.line + 1 + i, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Split a line into shell-like words, honouring single and double quotes (for paths with spaces).
fn split_words(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn header_value<'a>(raw: &'a Raw, key: &str) -> Option<&'a (String, usize)> {
    raw.header.get(key).filter(|(v, _)| !v.is_empty())
}

/// Validate the scanned file and build the [`Definition`]; every problem goes to `issues`.
fn validate(raw: &Raw, text: &str, path: &Path, issues: &mut Vec<LintIssue>) -> Option<Definition> {
    let bootstrap = match header_value(raw, "Bootstrap") {
        None => {
            issues.push(LintIssue {
                line: raw.header.get("Bootstrap").map(|(_, l)| *l).unwrap_or(0),
                msg: "missing required header `Bootstrap:` (debootstrap, docker, localimage, docker-archive, oci-archive or scratch)".into(),
            });
            None
        }
        Some((agent, line)) => {
            let from = header_value(raw, "From").map(|(v, _)| v.clone());
            let need_from = |issues: &mut Vec<LintIssue>, what: &str| {
                if from.is_none() {
                    issues.push(LintIssue {
                        line: *line,
                        msg: format!("Bootstrap: {agent} needs `From:` ({what})"),
                    });
                }
            };
            match agent.to_ascii_lowercase().as_str() {
                "debootstrap" => {
                    // Apptainer takes the suite from OSVersion; accept From as well, as people write it.
                    let suite = header_value(raw, "OSVersion")
                        .or_else(|| header_value(raw, "From"))
                        .map(|(v, _)| v.clone());
                    if suite.is_none() {
                        issues.push(LintIssue {
                            line: *line,
                            msg: "Bootstrap: debootstrap needs `OSVersion:` (a Debian suite, e.g. bookworm)"
                                .into(),
                        });
                    }
                    let mirror = header_value(raw, "MirrorURL")
                        .map(|(v, _)| v.trim_end_matches('/').to_string())
                        .unwrap_or_else(|| DEFAULT_DEBIAN_MIRROR.to_string());
                    if !(mirror.starts_with("http://")
                        || mirror.starts_with("https://")
                        || mirror.starts_with("file:/"))
                    {
                        let l = raw.header.get("MirrorURL").map(|(_, l)| *l).unwrap_or(*line);
                        issues.push(LintIssue {
                            line: l,
                            msg: format!("MirrorURL {mirror:?} is not an http://, https:// or file:/ URL"),
                        });
                    }
                    let include = header_value(raw, "Include")
                        .map(|(v, _)| {
                            v.split(|c: char| c == ',' || c.is_whitespace())
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default();
                    suite.map(|suite| Bootstrap::Debootstrap { suite, mirror, include })
                }
                "localimage" => {
                    need_from(issues, "the path of an existing image");
                    from.map(|from| Bootstrap::LocalImage { from })
                }
                "docker-archive" => {
                    need_from(issues, "the path of a `docker save` tarball");
                    from.map(|from| Bootstrap::DockerArchive { from: strip_scheme(&from, "docker-archive:") })
                }
                "oci-archive" => {
                    need_from(issues, "the path of an OCI layout, as a tar archive or a directory");
                    from.map(|from| Bootstrap::OciArchive { from: strip_scheme(&from, "oci-archive:") })
                }
                "docker" => {
                    need_from(issues, "an image reference, e.g. ubuntu:22.04 or HOST:PORT/REPO:TAG");
                    let from = from.filter(|f| match berth_registry::reference::parse_image_ref(f) {
                        Ok(_) => true,
                        Err(e) => {
                            let l = raw.header.get("From").map(|(_, l)| *l).unwrap_or(*line);
                            issues.push(LintIssue { line: l, msg: format!("From: {}", e.reason) });
                            false
                        }
                    });
                    from.map(|from| Bootstrap::Docker { from })
                }
                "scratch" => Some(Bootstrap::Scratch),
                other => {
                    issues.push(LintIssue {
                        line: *line,
                        msg: format!("unknown bootstrap agent {other:?} (berth supports debootstrap, docker, localimage, docker-archive, oci-archive, scratch)"),
                    });
                    None
                }
            }
        }
    };

    let mut files = Vec::new();
    if let Some(script) = raw.sections.get("files") {
        if !script.args.is_empty() {
            issues.push(LintIssue {
                line: script.line,
                msg: format!("%files {} (copying from a build stage) is not supported by berth", script.args),
            });
        }
        for (line, content) in content_lines(script) {
            match split_words(content) {
                Err(e) => issues.push(LintIssue { line, msg: format!("%files: {e}") }),
                Ok(words) => match words.as_slice() {
                    [src] => files.push(FileCopy { src: src.clone(), dest: None, line }),
                    [src, dest] => files.push(FileCopy { src: src.clone(), dest: Some(dest.clone()), line }),
                    _ => issues.push(LintIssue {
                        line,
                        msg: format!(
                            "%files expects `SOURCE [DESTINATION]`, found {} words (quote paths with spaces)",
                            words.len()
                        ),
                    }),
                },
            }
        }
    }

    let mut labels = BTreeMap::new();
    if let Some(script) = raw.sections.get("labels") {
        for (line, content) in content_lines(script) {
            let (key, value) = match content.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (content, ""),
            };
            if value.is_empty() {
                issues.push(LintIssue {
                    line,
                    msg: format!("%labels: label {key:?} has no value (write `KEY VALUE`)"),
                });
                continue;
            }
            labels.insert(key.to_string(), unquote(value));
        }
    }

    for (name, script) in &raw.sections {
        let takes_interpreter = matches!(*name, "setup" | "post" | "test" | "runscript");
        if takes_interpreter && !script.args.is_empty() {
            let ok =
                matches!(split_words(&script.args).as_deref(), Ok([c, p]) if c == "-c" && p.starts_with('/'));
            if !ok {
                issues.push(LintIssue {
                    line: script.line,
                    msg: format!("%{name} accepts only `-c /path/to/interpreter`, found {:?}", script.args),
                });
            }
        } else if !takes_interpreter && *name != "files" && !script.args.is_empty() {
            issues.push(LintIssue {
                line: script.line,
                msg: format!("%{name} takes no arguments, found {:?}", script.args),
            });
        }
    }

    let bootstrap = bootstrap?;
    let script = |name: &str| raw.sections.get(name).cloned();
    let text_of = |name: &str| raw.sections.get(name).map(|s| s.body.clone());
    Some(Definition {
        path: path.to_path_buf(),
        text: text.to_string(),
        bootstrap,
        setup: script("setup"),
        files,
        post: script("post"),
        environment: text_of("environment"),
        runscript: script("runscript"),
        labels,
        help: text_of("help"),
        test: script("test"),
    })
}

fn strip_scheme(from: &str, scheme: &str) -> String {
    from.strip_prefix(scheme).unwrap_or(from).to_string()
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

/// Every problem in a definition file, in line order; empty when the file is good.
pub fn lint(text: &str, path: &Path) -> Vec<LintIssue> {
    let _ = path;
    let mut issues = Vec::new();
    let raw = scan(text, &mut issues);
    validate(&raw, text, path, &mut issues);
    issues.sort_by_key(|i| i.line);
    issues
}

/// Parse a definition file; any lint issue is an error listing all of them with `file:line`.
pub fn parse(text: &str, path: &Path) -> Result<Definition> {
    let mut issues = Vec::new();
    let raw = scan(text, &mut issues);
    let def = validate(&raw, text, path, &mut issues);
    issues.sort_by_key(|i| i.line);
    match def {
        Some(def) if issues.is_empty() => Ok(def),
        _ => {
            let first = issues.first().map(|i| i.line).unwrap_or(0);
            let msg = issues.iter().map(|i| i.render(path)).collect::<Vec<_>>().join("\n  ");
            Err(Error::Definition {
                path: path.to_path_buf(),
                line: first,
                msg: format!("{} problem(s):\n  {msg}", issues.len().max(1)),
                hint: "`berth build --lint FILE` checks a definition file without building".into(),
            })
        }
    }
}

/// Read and parse a definition file from disk.
pub fn parse_file(path: &Path) -> Result<Definition> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read definition file", path, e))?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "\
# a comment before the header
Bootstrap: debootstrap
OSVersion: bookworm
MirrorURL: http://deb.debian.org/debian/
Include: ca-certificates, curl  wget

%setup
    touch $SINGULARITY_ROOTFS/setup-ran
%files
    tests/mpi/berth-mpitest.c /opt/src/berth-mpitest.c
    \"/path with space/x\" /opt/x
    /etc/hostname
%post -c /bin/bash
    apt-get update
    printf '%s\\n' done
%environment
    export LC_ALL=C
%runscript
    exec /opt/bin/app \"$@\"
%labels
    Author someone@example.org
    Version \"1.2\"
%help
    This image runs app.
%test
    /opt/bin/app --version
";

    fn path() -> PathBuf {
        PathBuf::from("test.def")
    }

    #[test]
    fn parses_every_section_and_header_key() {
        let def = parse(FULL, &path()).expect("parses");
        assert_eq!(
            def.bootstrap,
            Bootstrap::Debootstrap {
                suite: "bookworm".into(),
                mirror: "http://deb.debian.org/debian".into(),
                include: vec!["ca-certificates".into(), "curl".into(), "wget".into()],
            }
        );
        assert_eq!(def.setup.as_ref().unwrap().body, "    touch $SINGULARITY_ROOTFS/setup-ran\n");
        assert_eq!(def.setup.as_ref().unwrap().line, 7);
        assert_eq!(def.files.len(), 3);
        assert_eq!(def.files[0].src, "tests/mpi/berth-mpitest.c");
        assert_eq!(def.files[0].dest.as_deref(), Some("/opt/src/berth-mpitest.c"));
        assert_eq!(def.files[0].line, 10);
        assert_eq!(def.files[1].src, "/path with space/x");
        assert_eq!(def.files[2].dest, None);
        let post = def.post.as_ref().unwrap();
        assert_eq!(post.interpreter(), "/bin/bash");
        assert!(post.body.contains("printf '%s\\n' done"), "indented % lines stay in the body");
        assert_eq!(def.environment.as_deref(), Some("    export LC_ALL=C\n"));
        assert_eq!(def.runscript.as_ref().unwrap().interpreter(), "/bin/sh");
        assert_eq!(def.labels.get("Author").map(String::as_str), Some("someone@example.org"));
        assert_eq!(def.labels.get("Version").map(String::as_str), Some("1.2"));
        assert_eq!(def.help.as_deref(), Some("    This image runs app.\n"));
        assert!(def.test.as_ref().unwrap().body.contains("--version"));
        assert_eq!(def.text, FULL);
        assert!(lint(FULL, &path()).is_empty());
    }

    #[test]
    fn docker_bootstrap_takes_a_registry_reference() {
        for from in ["ubuntu:22.04", "docker://127.0.0.1:5000/test/app:v1"] {
            let def = parse(&format!("Bootstrap: docker\nFrom: {from}\n"), &path()).unwrap();
            assert_eq!(def.bootstrap, Bootstrap::Docker { from: from.into() });
            assert_eq!(def.bootstrap.agent(), "docker");
        }
        let issues = lint("Bootstrap: docker\nFrom: Bad/REF\n", &path());
        assert!(issues.iter().any(|i| i.line == 2 && i.msg.contains("From:")), "{issues:?}");
        let issues = lint("Bootstrap: docker\n", &path());
        assert!(issues.iter().any(|i| i.msg.contains("needs `From:`")), "{issues:?}");
    }

    #[test]
    fn header_keys_are_case_insensitive_and_mirror_defaults() {
        let def = parse("bootstrap: debootstrap\nosversion: trixie\n", &path()).unwrap();
        assert_eq!(
            def.bootstrap,
            Bootstrap::Debootstrap {
                suite: "trixie".into(),
                mirror: DEFAULT_DEBIAN_MIRROR.into(),
                include: vec![]
            }
        );
    }

    #[test]
    fn other_agents() {
        let d = parse("Bootstrap: localimage\nFrom: base.img\n", &path()).unwrap();
        assert_eq!(d.bootstrap, Bootstrap::LocalImage { from: "base.img".into() });
        let d = parse("Bootstrap: docker-archive\nFrom: docker-archive:img.tar\n", &path()).unwrap();
        assert_eq!(d.bootstrap, Bootstrap::DockerArchive { from: "img.tar".into() });
        let d = parse("Bootstrap: oci-archive\nFrom: layout.tar\n", &path()).unwrap();
        assert_eq!(d.bootstrap, Bootstrap::OciArchive { from: "layout.tar".into() });
        let d = parse("Bootstrap: scratch\n", &path()).unwrap();
        assert_eq!(d.bootstrap, Bootstrap::Scratch);
        assert_eq!(d.bootstrap.agent(), "scratch");
    }

    #[test]
    fn unknown_key_and_section_have_line_numbers() {
        let text =
            "Bootstrap: scratch\nColour: blue\n\n%post\n  true\n%startscript\n  x\n%bogus\n%runscript\n  exec app\n";
        let issues = lint(text, &path());
        let lines: Vec<usize> = issues.iter().map(|i| i.line).collect();
        assert_eq!(lines, vec![2, 6, 8], "{issues:?}");
        assert!(issues[0].msg.contains("unknown header key \"Colour\""));
        assert!(issues[1].msg.contains("Apptainer syntax"));
        assert!(issues[2].msg.contains("unknown section %bogus"));
        let err = parse(text, &path()).unwrap_err().to_string();
        assert!(err.contains("test.def:2: unknown header key"), "{err}");
        assert!(err.contains("test.def:8: unknown section"), "{err}");
        assert!(err.contains("--lint"), "{err}");
    }

    #[test]
    fn missing_bootstrap_is_reported() {
        let issues = lint("From: bookworm\n%post\n  true\n", &path());
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].msg.contains("missing required header `Bootstrap:`"));
        assert!(parse("", &path()).is_err(), "an empty file is not a recipe");
    }

    #[test]
    fn agent_requirements() {
        let issues = lint("Bootstrap: debootstrap\n", &path());
        assert!(issues.iter().any(|i| i.line == 1 && i.msg.contains("OSVersion")), "{issues:?}");
        let issues = lint("Bootstrap: localimage\n", &path());
        assert!(issues.iter().any(|i| i.msg.contains("needs `From:`")), "{issues:?}");
        let issues = lint("Bootstrap: library\nFrom: ubuntu\n", &path());
        assert!(issues.iter().any(|i| i.msg.contains("unknown bootstrap agent \"library\"")), "{issues:?}");
        let issues =
            lint("Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: ftp.debian.org\n", &path());
        assert!(issues.iter().any(|i| i.line == 3 && i.msg.contains("MirrorURL")), "{issues:?}");
    }

    #[test]
    fn malformed_lines() {
        let text = "Bootstrap: scratch\nthis is not a header\n%files\n  a b c\n  'open\n%labels\n  lonely\n%help extra\n%post --weird\n";
        let issues = lint(text, &path());
        let lines: Vec<usize> = issues.iter().map(|i| i.line).collect();
        assert_eq!(lines, vec![2, 4, 5, 7, 8, 9], "{issues:?}");
        let dup = lint("Bootstrap: scratch\nBootstrap: scratch\n", &path());
        assert_eq!(dup.len(), 1);
        assert!(dup[0].msg.contains("given twice (first on line 1)"));
    }

    #[test]
    fn repeated_sections_are_appended() {
        let def = parse("Bootstrap: scratch\n%post\n  a\n%labels\n  K V\n%post\n  b\n", &path()).unwrap();
        assert_eq!(def.post.unwrap().body, "  a\n  b\n");
    }

    /// Every shipped recipe in defs/ must lint clean.
    #[test]
    fn every_shipped_definition_lints_clean() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../defs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("defs/ exists") {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("def") {
                continue;
            }
            seen += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let issues = lint(&text, &path);
            assert!(issues.is_empty(), "{}: {:?}", path.display(), issues);
            let def = parse(&text, &path).unwrap();
            assert!(
                def.text.lines().take_while(|l| l.starts_with('#') || l.trim().is_empty()).count() >= 3,
                "{} must start with a comment block saying how to use it",
                path.display()
            );
        }
        assert!(seen >= 9, "expected the shipped recipes in defs/, found {seen}");
    }
}
