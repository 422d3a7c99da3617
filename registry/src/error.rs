//! Errors for people: one line saying what failed and why, and a hint when there is one.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub struct Error {
    pub what: String,
    pub reason: String,
    pub hint: String,
}

impl Error {
    pub fn new(what: impl Into<String>, reason: impl Into<String>, hint: impl Into<String>) -> Self {
        Error { what: what.into(), reason: reason.into(), hint: hint.into() }
    }

    pub fn io(what: impl Into<String>, e: std::io::Error) -> Self {
        let hint = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                "free some space, or write elsewhere (OUT, BERTH_CACHE_DIR)"
            }
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                "choose a place you can write to (OUT, BERTH_CACHE_DIR)"
            }
            _ => "",
        };
        Error::new(what, e.to_string(), hint)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
