//! The container's environment: host variables (filtered by the plan), then the image's own
//! environment files, then the user's overrides.
//!
//! Image environment files (`/.singularity.d/env/*.sh`, written by `berth build` and by
//! Apptainer) are shell fragments. Like Apptainer, berth does not start a shell to read them: it
//! evaluates the assignments they contain (`export A=B`, `A="${A:-x}:$B"`, quotes, `${V}`
//! expansions) and ignores what is not an assignment, so start-up costs no extra process and an
//! image without `/bin/sh` still works.

use std::cell::Cell;
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::plan::{EnvPlan, DEFAULT_PATH};

/// Longest value an image's environment file may build: the kernel refuses any single
/// environment string longer than this at exec (MAX_ARG_STRLEN, 32 pages), so a longer one
/// could never reach the program. The cap also keeps `A=$A$A` repeated from doubling memory
/// until the allocator aborts.
pub(crate) const MAX_VALUE: usize = 128 << 10;
/// Most bytes (names and values) the image's environment files may set in all.
pub(crate) const MAX_TOTAL: usize = 8 << 20;

/// An ordered environment where setting a variable again keeps its first position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Env {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.index.get(k).map(|&i| self.vars[i].1.as_str())
    }

    pub fn set(&mut self, k: &str, v: &str) {
        match self.index.get(k) {
            Some(&i) => self.vars[i].1 = v.to_string(),
            None => {
                self.index.insert(k.to_string(), self.vars.len());
                self.vars.push((k.to_string(), v.to_string()));
            }
        }
    }

    pub fn unset(&mut self, k: &str) {
        if let Some(i) = self.index.remove(k) {
            self.vars.remove(i);
            for v in self.index.values_mut() {
                if *v > i {
                    *v -= 1;
                }
            }
        }
    }

    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }
}

/// Compose the final environment: `plan.host`, `PATH` default, each image env file in order,
/// then `plan.overrides` and the injected library directories.
///
/// An environment file that builds a value past [`MAX_VALUE`] (or the files together past
/// [`MAX_TOTAL`]) is an error: the container would not get the environment its image asks for.
pub(crate) fn try_compose(plan: &EnvPlan, image_env_files: &[(String, String)]) -> Result<Env> {
    compose_with(plan, image_env_files, true)
}

/// Like [`try_compose`], for callers that cannot fail (a task joining a container that
/// already started with the same files): evaluation stops at the file that grows too much.
pub(crate) fn compose(plan: &EnvPlan, image_env_files: &[(String, String)]) -> Env {
    compose_with(plan, image_env_files, false).unwrap_or_default()
}

fn compose_with(plan: &EnvPlan, image_env_files: &[(String, String)], strict: bool) -> Result<Env> {
    let mut env = Env::default();
    for (k, v) in &plan.host {
        env.set(k, v);
    }
    env.set("PATH", DEFAULT_PATH);
    let mut budget = MAX_TOTAL;
    for (name, text) in image_env_files {
        if let Err(e) = eval_assignments_bounded(text, &mut env, name, &mut budget) {
            if strict {
                return Err(e);
            }
            tracing::warn!("{e}");
            break;
        }
    }
    for (k, v) in &plan.overrides {
        env.set(k, v);
    }
    if !plan.path_append.is_empty() {
        let mut path = env.get("PATH").unwrap_or(DEFAULT_PATH).to_string();
        for d in &plan.path_append {
            path.push(':');
            path.push_str(&d.display().to_string());
        }
        env.set("PATH", &path);
    }
    if !plan.ld_library_path_prepend.is_empty() {
        let mut parts: Vec<String> =
            plan.ld_library_path_prepend.iter().map(|p| p.display().to_string()).collect();
        if let Some(old) = env.get("LD_LIBRARY_PATH").filter(|s| !s.is_empty()) {
            parts.push(old.to_string());
        }
        env.set("LD_LIBRARY_PATH", &parts.join(":"));
    }
    Ok(env)
}

/// Evaluate the assignments of a shell fragment into `env`. An error when a value would grow
/// past [`MAX_VALUE`] or the fragment would set more than [`MAX_TOTAL`] bytes.
pub(crate) fn eval_assignments(text: &str, env: &mut Env, source: &str) -> Result<()> {
    let mut budget = MAX_TOTAL;
    eval_assignments_bounded(text, env, source, &mut budget)
}

fn too_large(source: &str, line: usize, what: String) -> Error {
    Error::image(
        std::path::Path::new(&format!("/{}/env/{source}", crate::metadata::META_DIR)),
        format!("line {line}: {what}"),
        "the image's environment file builds values without bound (e.g. `A=$A$A` repeated); fix the \
         file in the image's definition and rebuild it",
    )
}

/// `budget`: bytes the files may still set; each assignment spends the length of its name
/// and value.
fn eval_assignments_bounded(text: &str, env: &mut Env, source: &str, budget: &mut usize) -> Result<()> {
    let overflow = Cell::new(false);
    for (n, raw) in logical_lines(text).into_iter().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_suffix(';').unwrap_or(line).trim();
        let (exported, rest) = match line.strip_prefix("export ") {
            Some(r) => (true, r.trim_start()),
            None => (false, line),
        };
        let parsed = parse_words(rest, env, &overflow);
        if overflow.get() {
            return Err(too_large(
                source,
                n + 1,
                format!(
                    "a value grows past {MAX_VALUE} bytes (the kernel's limit for one environment string)"
                ),
            ));
        }
        match parsed {
            Some(words) if !words.is_empty() => {
                let mut all_ok = true;
                let mut assigns = vec![];
                for w in &words {
                    match w.split_once('=') {
                        Some((k, v)) if crate::request::valid_env_name(k) => {
                            assigns.push((k.to_string(), v.to_string()))
                        }
                        None if exported && crate::request::valid_env_name(w) => {}
                        _ => all_ok = false,
                    }
                }
                if all_ok {
                    for (k, v) in assigns {
                        let cost = k.len() + v.len();
                        if cost > *budget {
                            return Err(too_large(
                                source,
                                n + 1,
                                format!("the image's environment files set more than {MAX_TOTAL} bytes"),
                            ));
                        }
                        *budget -= cost;
                        env.set(&k, &v);
                    }
                } else {
                    tracing::debug!("{source}:{}: not an assignment, ignored: {line}", n + 1);
                }
            }
            _ => tracing::debug!("{source}:{}: not understood, ignored: {line}", n + 1),
        }
    }
    Ok(())
}

/// Join backslash-continued lines.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    for l in text.lines() {
        if let Some(s) = l.strip_suffix('\\') {
            cur.push_str(s);
        } else {
            cur.push_str(l);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Split into words with shell quoting and `$V`, `${V}`, `${V:-d}`, `${V-d}`, `${V:+a}`
/// expansion. Returns None for constructs we do not evaluate (command substitution,
/// unbalanced quotes, operators), so such lines are skipped whole. A word that grows past
/// [`MAX_VALUE`] sets `overflow` and gives None.
fn parse_words(s: &str, env: &Env, overflow: &Cell<bool>) -> Option<Vec<String>> {
    let mut words = vec![];
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        ch => cur.push(ch),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            ch @ ('"' | '\\' | '$' | '`') => cur.push(ch),
                            ch => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                        },
                        '$' => {
                            cur.push_str(&expand(&mut chars, env, overflow)?);
                            if cur.len() > MAX_VALUE {
                                overflow.set(true);
                                return None;
                            }
                        }
                        '`' => return None,
                        ch => cur.push(ch),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            '$' => {
                in_word = true;
                cur.push_str(&expand(&mut chars, env, overflow)?);
                if cur.len() > MAX_VALUE {
                    overflow.set(true);
                    return None;
                }
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '`' => return None,
            ch => {
                in_word = true;
                cur.push(ch);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

fn expand(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    env: &Env,
    overflow: &Cell<bool>,
) -> Option<String> {
    let lookup = |k: &str| env.get(k).map(str::to_string);
    match chars.peek() {
        Some('{') => {
            chars.next();
            let mut inner = String::new();
            loop {
                match chars.next()? {
                    '}' => break,
                    ch => inner.push(ch),
                }
            }
            let (name, op, word) = split_param(&inner);
            if !crate::request::valid_env_name(name) {
                return None;
            }
            let val = lookup(name);
            let word = || parse_words(word, env, overflow).map(|w| w.join(" "));
            Some(match op {
                "" => val.unwrap_or_default(),
                ":-" => match val.filter(|v| !v.is_empty()) {
                    Some(v) => v,
                    None => word()?,
                },
                "-" => match val {
                    Some(v) => v,
                    None => word()?,
                },
                ":+" => {
                    if val.is_some_and(|v| !v.is_empty()) {
                        word()?
                    } else {
                        String::new()
                    }
                }
                "+" => {
                    if val.is_some() {
                        word()?
                    } else {
                        String::new()
                    }
                }
                _ => return None,
            })
        }
        Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            Some(lookup(&name).unwrap_or_default())
        }
        Some('(') => None,
        _ => Some("$".into()),
    }
}

fn split_param(inner: &str) -> (&str, &str, &str) {
    for op in [":-", ":+", "-", "+"] {
        if let Some(i) = inner.find(op) {
            return (&inner[..i], op, &inner[i + op.len()..]);
        }
    }
    (inner, "", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, start: &[(&str, &str)]) -> Env {
        let mut env = Env::default();
        for (k, v) in start {
            env.set(k, v);
        }
        eval_assignments(text, &mut env, "test.sh").unwrap();
        env
    }

    #[test]
    fn doubling_values_is_an_error_not_an_abort() {
        let text = "A=x\n".to_string() + &"A=$A$A\n".repeat(40);
        let mut env = Env::default();
        let err = eval_assignments(&text, &mut env, "90-environment.sh").unwrap_err().to_string();
        assert!(err.contains("90-environment.sh") && err.contains("line 18"), "{err}");
        assert!(err.contains(&MAX_VALUE.to_string()), "{err}");
        assert!(env.get("A").unwrap().len() <= MAX_VALUE);
        // The same through try_compose; compose (joins) keeps what came before the bad file.
        let files = vec![("10-ok.sh".to_string(), "OK=1\n".to_string()), ("90-bad.sh".to_string(), text)];
        let plan = EnvPlan::default();
        assert!(try_compose(&plan, &files).is_err());
        assert_eq!(compose(&plan, &files).get("OK"), Some("1"));
        // Many distinct large values exhaust the total budget instead.
        let big = "v".repeat(100_000);
        let many: String = (0..100).map(|i| format!("V{i}={big}\n")).collect();
        let err = eval_assignments(&many, &mut Env::default(), "x.sh").unwrap_err().to_string();
        assert!(err.contains(&MAX_TOTAL.to_string()), "{err}");
    }

    #[test]
    fn assignments_and_expansions() {
        let env = run(
            "# comment\nexport PATH=/opt/app/bin:$PATH\nA='lit $PATH'\nexport B=\"x ${A}\" C=2\nD=${NOPE:-def}\nE=${B:+set}\nexport F\n",
            &[("PATH", "/usr/bin")],
        );
        assert_eq!(env.get("PATH"), Some("/opt/app/bin:/usr/bin"));
        assert_eq!(env.get("A"), Some("lit $PATH"));
        assert_eq!(env.get("B"), Some("x lit $PATH"));
        assert_eq!(env.get("C"), Some("2"));
        assert_eq!(env.get("D"), Some("def"));
        assert_eq!(env.get("E"), Some("set"));
        assert_eq!(env.get("F"), None);
    }

    #[test]
    fn non_assignments_are_skipped_whole() {
        let env = run("if [ -z \"$X\" ]; then\n  X=1\nfi\nY=$(uname)\nZ=`date`\necho hi\nW=ok\n", &[]);
        assert_eq!(env.get("X"), Some("1"), "assignments inside blocks are taken");
        assert_eq!(env.get("Y"), None);
        assert_eq!(env.get("Z"), None);
        assert_eq!(env.get("W"), Some("ok"));
        assert_eq!(env.vars().len(), 2);
    }

    #[test]
    fn compose_order() {
        let plan = EnvPlan {
            host: vec![("TERM".into(), "xterm".into()), ("LANG".into(), "C".into())],
            overrides: vec![("LANG".into(), "C.UTF-8".into())],
            ld_library_path_prepend: vec!["/.berth/host/lib".into()],
            path_append: vec!["/.berth/host/bin".into()],
        };
        let files = vec![(
            "90-environment.sh".into(),
            "export PATH=/opt/vasp/bin:$PATH\nexport LANG=en_US\nLD_LIBRARY_PATH=/opt/vasp/lib".into(),
        )];
        let env = compose(&plan, &files);
        assert_eq!(env.get("PATH"), Some(&*format!("/opt/vasp/bin:{DEFAULT_PATH}:/.berth/host/bin")));
        assert_eq!(env.get("LANG"), Some("C.UTF-8"));
        assert_eq!(env.get("LD_LIBRARY_PATH"), Some("/.berth/host/lib:/opt/vasp/lib"));
        assert_eq!(env.vars()[0].0, "TERM");
    }

    #[test]
    fn unset_keeps_order() {
        let mut e = Env::default();
        e.set("A", "1");
        e.set("B", "2");
        e.set("C", "3");
        e.unset("A");
        e.set("B", "x");
        assert_eq!(e.vars(), &[("B".to_string(), "x".to_string()), ("C".to_string(), "3".to_string())]);
    }
}
