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
pub(crate) const EXIT_NOT_FOUND: i32 = 127;
/// Exit status when the command exists but cannot be executed (like a shell).
pub(crate) const EXIT_NOT_EXECUTABLE: i32 = 126;

/// A result whose error is berth's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn hint_line(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("\n  hint: {hint}")
    }
}

/// Everything that can go wrong, each variant worded for the person who has to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image file is missing, unreadable, corrupt or of an unsupported kind.
    #[error("image {}: {reason}{}", path.display(), hint_line(hint))]
    BadImage {
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// What to do (may be empty).
        hint: String,
    },

    /// The configuration file is invalid.
    #[error("config {}:{line}: {msg}{}", path.display(), hint_line(hint))]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The line (1-based; 0 when not known).
        line: usize,
        /// What is wrong.
        msg: String,
        /// What to do (may be empty).
        hint: String,
    },

    /// The user's request is invalid (bad bind, env, workdir, option).
    #[error("{what}: {reason}{}", hint_line(hint))]
    Request {
        /// What was asked.
        what: String,
        /// Why it cannot be done.
        reason: String,
        /// What to do (may be empty).
        hint: String,
    },

    /// A file operation on the host failed.
    #[error("{what} {}: {source}{}", path.display(), hint_line(hint))]
    Io {
        /// What was being done.
        what: String,
        /// On which path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
        /// What to do (may be empty).
        hint: String,
    },

    /// A system call while building the container failed.
    #[error("{op} {target}: {source}{}", hint_line(hint))]
    Sys {
        /// The system call.
        op: String,
        /// What it was applied to.
        target: String,
        /// The system's error.
        source: nix::Error,
        /// What to do (may be empty).
        hint: String,
    },

    /// Host library/device injection refused or failed.
    #[error("{what}: {reason}{}", hint_line(hint))]
    Inject {
        /// What was to be injected.
        what: String,
        /// Why it was refused or failed.
        reason: String,
        /// What to do (may be empty).
        hint: String,
    },

    /// A definition file (`berth build`) is invalid.
    #[error("definition {}:{line}: {msg}{}", path.display(), hint_line(hint))]
    Definition {
        /// The definition file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        msg: String,
        /// What to do (may be empty).
        hint: String,
    },

    /// `berth build` failed at one step.
    #[error("build: {what}: {reason}{}", hint_line(hint))]
    Build {
        /// The step.
        what: String,
        /// Why it failed.
        reason: String,
        /// What to do (may be empty).
        hint: String,
    },

    /// A holder started for a scheduler's step was not ready: its own message (or why it
    /// could not start), already worded for people.
    #[error("{0}")]
    Holder(String),

    /// The command could not be started inside the container.
    #[error("{cmd}: {reason}")]
    Exec {
        /// The command.
        cmd: String,
        /// Why it could not start.
        reason: String,
        /// The exit status a shell would give (127 not found, 126 not executable).
        code: i32,
    },
}

impl Error {
    /// [`Error::BadImage`].
    pub fn image(path: &Path, reason: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::BadImage { path: path.to_path_buf(), reason: reason.into(), hint: hint.into() }
    }

    pub(crate) fn image_io(path: &Path, what: &str, e: io::Error) -> Self {
        let hint = match e.kind() {
            io::ErrorKind::NotFound => "check the path; relative paths are taken from the current directory",
            io::ErrorKind::PermissionDenied => {
                "the image must be readable by you (chmod a+r, or ask its owner)"
            }
            _ => "",
        };
        Error::BadImage { path: path.to_path_buf(), reason: format!("{what}: {e}"), hint: hint.into() }
    }

    /// [`Error::Request`].
    pub fn request(what: impl Into<String>, reason: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Request { what: what.into(), reason: reason.into(), hint: hint.into() }
    }

    /// [`Error::Io`] without a hint.
    pub fn io(what: impl Into<String>, path: &Path, source: io::Error) -> Self {
        Error::Io { what: what.into(), path: path.to_path_buf(), source, hint: String::new() }
    }

    /// [`Error::Sys`], with a hint when the kernel refused.
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

    /// [`Error::Inject`].
    pub fn inject(what: impl Into<String>, reason: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Inject { what: what.into(), reason: reason.into(), hint: hint.into() }
    }

    /// [`Error::Build`].
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
