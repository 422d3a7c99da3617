//! A one-line progress display on a terminal (bytes, rate, layers); silent otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    enabled: bool,
    start: Instant,
    last: Option<Instant>,
    bytes: u64,
    total: u64,
    done: usize,
    layers: usize,
    phase: &'static str,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl Progress {
    /// Enabled when stderr is a terminal (and `quiet` is not asked for).
    pub fn new(quiet: bool) -> Self {
        Progress {
            enabled: !quiet && std::io::stderr().is_terminal(),
            start: Instant::now(),
            last: None,
            bytes: 0,
            total: 0,
            done: 0,
            layers: 0,
            phase: "",
        }
    }

    pub fn phase(&mut self, phase: &'static str, layers: usize, total: u64) {
        self.phase = phase;
        self.layers = layers;
        self.total = total;
        self.done = 0;
        self.bytes = 0;
        self.start = Instant::now();
        self.draw(true);
    }

    pub fn add(&mut self, n: u64) {
        self.bytes += n;
        self.draw(false);
    }

    pub fn add_signed(&mut self, n: i64) {
        self.bytes = self.bytes.saturating_add_signed(n);
    }

    pub fn layer_done(&mut self) {
        self.done += 1;
        self.draw(true);
    }

    fn draw(&mut self, force: bool) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if !force && self.last.is_some_and(|l| now.duration_since(l) < Duration::from_millis(200)) {
            return;
        }
        self.last = Some(now);
        let secs = now.duration_since(self.start).as_secs_f64().max(0.001);
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[K{}: {}/{} layers, {:.1}/{:.1} MiB, {:.1} MiB/s",
            self.phase,
            self.done,
            self.layers,
            mib(self.bytes),
            mib(self.total),
            mib(self.bytes) / secs
        );
    }

    pub fn finish(&mut self) {
        if self.enabled {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}
