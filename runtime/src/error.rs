//! Errors for people: every error says what failed, on which path, and what to do.
//!
//! Each variant renders as one line (`what: why`) optionally followed by a `hint:` line.
//! Frontends print `berth: <error>` and exit with [`EXIT_BERTH_ERROR`]; under Slurm and PBS the
//! same text reaches the job's output.

use std::io;
use std::path::{Path, PathBuf};

/// Exit status for berth's own failures, distinct from anything the contained program returns
/// in normal use (Apptainer uses 255 as well).
pub const EXIT_BERTH_ERROR: i32 = 255;
/// Exit status when the command is not found inside the image (like a shell).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit status when the command exists but cannot be executed (like a shell).
pub const EXIT_NOT_EXECUTABLE: i32 = 126;

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn hint_line(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("\n  hint: {hint}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image file is missing, unreadable, corrupt or of an unsupported kind.
    #[error("image {}: {reason}{}", path.display(), hint_line(hint))]
    BadImage { path: PathBuf, reason: String, hint: String },

    /// The configuration file is invalid.
    #[error("config {}:{line}: {msg}{}", path.display(), hint_line(hint))]
    Config { path: PathBuf, line: usize, msg: String, hint: String },

    /// The user's request is invalid (bad bind, env, workdir, option).
    #[error("{what}: {reason}{}", hint_line(hint))]
    Request { what: String, reason: String, hint: String },

    /// A file operation on the host failed.
    #[error("{what} {}: {source}{}", path.display(), hint_line(hint))]
    Io { what: String, path: PathBuf, source: io::Error, hint: String },

    /// A system call while building the container failed.
    #[error("{op} {target}: {source}{}", hint_line(hint))]
    Sys { op: String, target: String, source: nix::Error, hint: String },

    /// Host library/device injection refused or failed.
    #[error("{what}: {reason}{}", hint_line(hint))]
    Inject { what: String, reason: String, hint: String },

    /// A definition file (`berth build`) is invalid.
    #[error("definition {}:{line}: {msg}{}", path.display(), hint_line(hint))]
    Definition { path: PathBuf, line: usize, msg: String, hint: String },

    /// `berth build` failed at one step.
    #[error("build: {what}: {reason}{}", hint_line(hint))]
    Build { what: String, reason: String, hint: String },

    /// A holder started for a scheduler's step was not ready: its own message (or why it
    /// could not start), already worded for people.
    #[error("{0}")]
    Holder(String),

    /// The command could not be started inside the container.
    #[error("{cmd}: {reason}")]
    Exec { cmd: String, reason: String, code: i32 },
}

impl Error {
    pub fn image(path: &Path, reason: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::BadImage { path: path.to_path_buf(), reason: reason.into(), hint: hint.into() }
    }

    pub fn image_io(path: &Path, what: &str, e: io::Error) -> Self {
        let hint = match e.kind() {
            io::ErrorKind::NotFound => "check the path; relative paths are taken from the current directory",
            io::ErrorKind::PermissionDenied => {
                "the image must be readable by you (chmod a+r, or ask its owner)"
            }
            _ => "",
        };
        Error::BadImage { path: path.to_path_buf(), reason: format!("{what}: {e}"), hint: hint.into() }
    }

    pub fn request(what: impl Into<String>, reason: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Request { what: what.into(), reason: reason.into(), hint: hint.into() }
    }

    pub fn io(what: impl Into<String>, path: &Path, source: io::Error) -> Self {
        Error::Io { what: what.into(), path: path.to_path_buf(), source, hint: String::new() }
    }

    pub fn sys(op: impl Into<String>, target: impl std::fmt::Display, source: nix::Error) -> Self {
        let hint = match source {
            nix::Error::EPERM | nix::Error::EACCES => {
                "the kernel refused; check that unprivileged user namespaces are enabled \
                 (sysctl user.max_user_namespaces > 0) and that /dev/fuse is usable (mode 0666)"
            }
            _ => "",
        };
        Error::Sys { op: op.into(), target: target.to_string(), source, hint: hint.into() }
    }

    pub fn inject(what: impl Into<String>, reason: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Inject { what: what.into(), reason: reason.into(), hint: hint.into() }
    }

    pub fn build(what: impl Into<String>, reason: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Build { what: what.into(), reason: reason.into(), hint: hint.into() }
    }

    /// The exit status a frontend should use for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Exec { code, .. } => *code,
            _ => EXIT_BERTH_ERROR,
        }
    }
}
