//! Progress: a bar on a terminal, a log line every few seconds otherwise.

use super::*;

// ---- progress ------------------------------------------------------------------------------------

/// Progress on stderr: a bar on a terminal, a line every few seconds otherwise, nothing with
/// `--quiet`.
pub(super) struct Progress {
    pub(super) label: String,
    pub(super) mode: ProgressMode,
}

pub(super) enum ProgressMode {
    Quiet,
    Bar(ProgressBar),
    Log {
        started: Instant,
        last: Instant,
        total: u64,
        first: u64,
    },
}

impl Progress {
    pub(super) fn new(quiet: bool, label: String) -> Progress {
        let mode = if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            // Hidden until `start` knows the length (no "0/0" frame).
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
            let style = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows, {rate}, ETA {eta} {msg}",
            )
            .map(|s| {
                s.with_key(
                    "rate",
                    |st: &indicatif::ProgressState, w: &mut dyn fmt::Write| {
                        let _ = write!(w, "{:.0} rows/s", st.per_sec());
                    },
                )
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label.clone());
            ProgressMode::Bar(bar)
        } else {
            let now = Instant::now();
            ProgressMode::Log {
                started: now,
                last: now,
                total: 0,
                first: 0,
            }
        };
        Progress { label, mode }
    }

    pub(super) fn start(&mut self, total: u64, done: u64) {
        match &mut self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Bar(bar) => {
                bar.set_length(total.max(done));
                bar.set_position(done);
                bar.reset_eta();
                bar.set_draw_target(ProgressDrawTarget::stderr());
                // Keeps elapsed time and ETA moving while a batch waits on the server.
                bar.enable_steady_tick(Duration::from_millis(500));
            }
            ProgressMode::Log {
                total: t, first, ..
            } => {
                *t = total;
                *first = done;
            }
        }
    }

    pub(super) fn advance(&mut self, _rows: u64, done: u64) {
        match &mut self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Bar(bar) => {
                if bar.length().is_some_and(|l| done > l) {
                    bar.set_length(done);
                }
                bar.set_position(done);
            }
            ProgressMode::Log {
                started,
                last,
                total,
                first,
            } => {
                if last.elapsed() < LOG_EVERY {
                    return;
                }
                *last = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = (done - *first) as f64 / secs;
                let total = (*total).max(done);
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                let eta = if rate > 0.0 {
                    format!(", about {:.0}s left", (total - done) as f64 / rate)
                } else {
                    String::new()
                };
                eprintln!(
                    "{}: {done}/{total} rows ({pct}%), {rate:.0} rows/s{eta}",
                    self.label
                );
            }
        }
    }

    pub(super) fn phase(&self, what: &str) {
        if let ProgressMode::Bar(bar) = &self.mode {
            bar.set_message(what.to_string());
        }
    }

    /// A line that does not break the bar.
    pub(super) fn note(&self, line: &str) {
        match &self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Bar(bar) if !bar.is_hidden() => bar.println(line),
            ProgressMode::Bar(_) => eprintln!("{line}"),
            ProgressMode::Log { .. } => eprintln!("{line}"),
        }
    }

    pub(super) fn finish(&self) {
        if let ProgressMode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}
