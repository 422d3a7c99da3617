//! Route `tracing` events (from berth-runtime, which runs inside srun, slurmstepd and the
//! tasks) into Slurm's own log functions. Never stdout: that belongs to the job.
//!
//! error -> slurm_error, warn -> slurm_info ("warning: ..."), info -> slurm_verbose,
//! debug/trace -> slurm_debug. Slurm's own log level decides what is shown or kept.
//!
//! Every message to Slurm goes through [`emit`], which shows control characters as escapes:
//! messages carry user values (`--container-save=$'x\nerror: forged'`), and in slurmstepd
//! they land in root's log, where a raw newline would start a line the user wrote.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::sys;

struct SlurmLayer;

#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for SlurmLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let (level, prefix) = match *event.metadata().level() {
            Level::ERROR => (sys::Level::Error, ""),
            Level::WARN => (sys::Level::Info, "warning: "),
            Level::INFO => (sys::Level::Verbose, ""),
            _ => (sys::Level::Debug, ""),
        };
        emit(level, &format!("berth: {prefix}{}", line.0));
    }
}

/// Log `msg` through Slurm, control characters escaped. Newlines are kept only in srun and
/// sbatch, which run as the user and print on the user's own terminal (an error's hint line);
/// everywhere else (slurmstepd, root) the message stays one line.
pub(crate) fn emit(level: sys::Level, msg: &str) {
    let own_terminal = matches!(sys::context(), sys::Context::Local | sys::Context::Allocator);
    sys::log(level, &escape_controls(msg, own_terminal));
}

/// `msg` with every control character (C0, DEL, C1) shown as `\n`, `\r`, `\t` or `\xNN` /
/// `\u{NN}`; newlines kept when `keep_newlines`.
fn escape_controls(msg: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        match c {
            '\n' if keep_newlines => out.push('\n'),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Install once per process (later calls, or another global subscriber, are left alone).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(SlurmLayer));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_values_cannot_start_a_line_of_their_own() {
        let forged = "--container-save=x\nerror: forged\r\x1b[2Kok\u{9b}";
        let root = escape_controls(&format!("berth: cannot save to {forged}"), false);
        assert_eq!(root, "berth: cannot save to --container-save=x\\nerror: forged\\r\\x1b[2Kok\\u{9b}");
        assert!(!root.chars().any(char::is_control), "{root:?}");
        // On the user's own terminal (srun) an error keeps its hint line; the rest is escaped.
        let own = escape_controls("berth: bad image x\x1b]0;t\x07\n  hint: check it", true);
        assert_eq!(own, "berth: bad image x\\x1b]0;t\\x07\n  hint: check it");
        assert_eq!(escape_controls("plain text, \u{e9}t\u{e9}", false), "plain text, \u{e9}t\u{e9}");
    }
}
