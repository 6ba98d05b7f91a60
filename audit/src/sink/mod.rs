//! Sinks: where sequenced records go. Each sink runs in its own task with its own ordered retry
//! buffer, so a slow or failing sink never stalls the others or the sequencer.

pub(crate) mod file;
pub(crate) mod nats;
pub(crate) mod postgres;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::event::{Checkpoint, NewEvent};

/// One sequenced record with its line (no newline), shared by every sink. An event keeps what
/// the proxy handed in (its `ts` set) rather than a parsed copy of the line: the file and NATS
/// sinks only write the line, the PostgreSQL sink reads the fields from `ne` and the hashes from
/// the line.
#[derive(Debug)]
pub(crate) enum Entry {
    Event {
        seq: u64,
        ne: NewEvent,
        line: String,
    },
    Checkpoint {
        cp: Checkpoint,
        line: String,
    },
}

impl Entry {
    pub(crate) fn line(&self) -> &str {
        match self {
            Entry::Event { line, .. } | Entry::Checkpoint { line, .. } => line,
        }
    }
}

/// Where a sink's existing chain ends for this instance (so a restart continues it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    pub seq: u64,
    pub hash: String,
}

/// A failed write: the first `written` entries were stored and must not be written again.
#[derive(Debug)]
pub(crate) struct SinkFailure {
    pub written: usize,
    pub error: String,
}

impl SinkFailure {
    pub(crate) fn none_written(error: impl Into<String>) -> SinkFailure {
        SinkFailure {
            written: 0,
            error: error.into(),
        }
    }
}

/// A destination for records. Writes come in order; a failed write is retried (from entry
/// `written`) after a backoff.
pub(crate) trait Sink: Send + 'static {
    fn name(&self) -> String;
    /// Stores `entries` in order.
    fn write(&mut self, entries: Vec<Arc<Entry>>) -> BoxFuture<'_, Result<(), SinkFailure>>;
    /// Called about once a second while the sink is idle: fsync, probe the connection, reconnect.
    fn tick(&mut self) -> BoxFuture<'_, Result<(), String>>;
    /// Final flush at shutdown.
    fn close(&mut self) -> BoxFuture<'_, Result<(), String>>;
}

/// What the handle and the sequencer can see of a sink.
#[derive(Debug)]
pub(crate) struct SinkState {
    pub name: String,
    healthy: AtomicBool,
    /// Records handed to the sink task and not yet stored.
    pub backlog: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// Set by the file sink when it wants a checkpoint soon (to rotate).
    pub want_checkpoint: AtomicBool,
    /// Records stored, and failed writes (for metrics).
    pub written: AtomicU64,
    pub failures: AtomicU64,
}

impl SinkState {
    pub(crate) fn new(name: String) -> SinkState {
        SinkState {
            name,
            healthy: AtomicBool::new(true),
            backlog: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            want_checkpoint: AtomicBool::new(false),
            written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    fn set_ok(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!(sink = %self.name, "audit sink recovered");
        }
    }

    fn set_failing(&self, error: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error.to_string());
        }
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(sink = %self.name, %error, "audit sink failing; retrying with backoff");
        }
    }
}

/// Most entries handed to one `write` call.
const MAX_WRITE: usize = 16_384;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Runs one sink until the sequencer closes `rx` and everything is stored (or `shutdown_timeout`
/// after the close, when the sink still fails: then the unwritten count is returned as error).
pub(crate) async fn run_sink(
    mut sink: Box<dyn Sink>,
    state: Arc<SinkState>,
    mut rx: mpsc::UnboundedReceiver<Vec<Arc<Entry>>>,
    shutdown_timeout: Duration,
) -> Result<(), String> {
    let mut pending: VecDeque<Arc<Entry>> = VecDeque::new();
    let mut deadline: Option<Instant> = None;
    let mut backoff = BACKOFF_START;
    loop {
        if pending.is_empty() {
            if deadline.is_some() {
                break;
            }
            tokio::select! {
                m = rx.recv() => match m {
                    Some(v) => pending.extend(v),
                    None => {
                        deadline = Some(Instant::now() + shutdown_timeout);
                        continue;
                    }
                },
                _ = tokio::time::sleep(IDLE_TICK) => {
                    match sink.tick().await {
                        Ok(()) => state.set_ok(),
                        Err(e) => state.set_failing(&e),
                    }
                    continue;
                }
            }
        }
        loop {
            match rx.try_recv() {
                Ok(v) => pending.extend(v),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + shutdown_timeout);
                    }
                    break;
                }
            }
        }
        let n = pending.len().min(MAX_WRITE);
        let chunk: Vec<Arc<Entry>> = pending.iter().take(n).cloned().collect();
        match sink.write(chunk).await {
            Ok(()) => {
                pending.drain(..n);
                state.backlog.fetch_sub(n, Ordering::AcqRel);
                state.written.fetch_add(n as u64, Ordering::Relaxed);
                state.set_ok();
                backoff = BACKOFF_START;
            }
            Err(f) => {
                let done = f.written.min(n);
                pending.drain(..done);
                state.backlog.fetch_sub(done, Ordering::AcqRel);
                state.written.fetch_add(done as u64, Ordering::Relaxed);
                state.failures.fetch_add(1, Ordering::Relaxed);
                state.set_failing(&f.error);
                if let Some(d) = deadline {
                    if Instant::now() >= d {
                        let lost = pending.len();
                        state.backlog.fetch_sub(lost, Ordering::AcqRel);
                        let _ = sink.close().await;
                        return Err(format!(
                            "sink {}: {lost} records could not be written before the shutdown timeout: {}",
                            state.name, f.error
                        ));
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    sink.close()
        .await
        .map_err(|e| format!("sink {}: final flush failed: {e}", state.name))
}

#[cfg(test)]
pub(crate) mod testing {
    //! A sink that fails on command, for pipeline tests.
    use super::*;

    #[derive(Clone, Default)]
    pub(crate) struct Control {
        pub fail: Arc<AtomicBool>,
        pub lines: Arc<Mutex<Vec<String>>>,
        /// Calls of `write`.
        pub writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    pub(crate) struct TestSink {
        pub control: Control,
    }

    impl Sink for TestSink {
        fn name(&self) -> String {
            "test".into()
        }

        fn write(&mut self, entries: Vec<Arc<Entry>>) -> BoxFuture<'_, Result<(), SinkFailure>> {
            Box::pin(async move {
                self.control.writes.fetch_add(1, Ordering::SeqCst);
                if self.control.fail.load(Ordering::SeqCst) {
                    return Err(SinkFailure::none_written("test sink told to fail"));
                }
                let mut l = self.control.lines.lock().unwrap();
                l.extend(entries.iter().map(|e| e.line().to_string()));
                Ok(())
            })
        }

        fn tick(&mut self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async move {
                if self.control.fail.load(Ordering::SeqCst) {
                    Err("test sink told to fail".into())
                } else {
                    Ok(())
                }
            })
        }

        fn close(&mut self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }
}
