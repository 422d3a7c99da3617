//! Route `tracing` events (from berth-runtime, which runs inside srun, slurmstepd and the
//! tasks) into Slurm's own log functions. Never stdout: that belongs to the job.
//!
//! error -> slurm_error, warn -> slurm_info ("warning: ..."), info -> slurm_verbose,
//! debug/trace -> slurm_debug. Slurm's own log level decides what is shown or kept.

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
        sys::log(level, &format!("berth: {prefix}{}", line.0));
    }
}

/// Install once per process (later calls, or another global subscriber, are left alone).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(SlurmLayer));
    });
}
