//! The writer pipeline: `AuditHandle::record` → bounded queue → sequencer task (assigns seq,
//! chains hashes, signs checkpoints) → one task per sink with its own ordered retry buffer.
//!
//! Failure handling:
//! - An event is *kept* when the queue has room and no sink's retry buffer is full
//!   (`AuditConfig::sink_backlog`). A kept event is never lost while the process lives: a failing
//!   sink retries it with exponential backoff (100 ms doubling to 5 s).
//! - An event that cannot be kept is counted (`dropped()`) and, once every sink is healthy
//!   again, a `gap` event with reason `"N events dropped"` is chained, so the loss is on record.
//! - `on_failure = Block`: `record` returns `Err` when the event was not kept or a sink is
//!   failing, and `is_healthy()` is false; the proxy checks `is_healthy()` before running a
//!   statement and answers SQLSTATE 58000 when false, so nothing executes unaudited.
//! - `on_failure = Drop`: `record` always returns `Ok`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::canonical::{self, GENESIS};
use crate::config::{AuditConfig, OnFailure};
use crate::error::{AuditError, AuditUnavailable, UnavailableReason};
use crate::event::{clean, format_ts, Checkpoint, EventSource, Kind, NewEvent, Who};
use crate::signer::{encode_signature, CheckpointSigner};
use crate::sink::{self, Entry, Sink, SinkState, Tail};

/// A checkpoint at least this often while there is traffic.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(250);
const MAX_BATCH: usize = 8192;
/// After the first event of a batch arrives, the writer waits this long for more before chaining and
/// handing the batch to the sinks. Without it a busy proxy woke the writer (and each sink) once per
/// statement, from another thread: a futex wake and a context switch per statement, ~14 µs of CPU per
/// pgbench transaction (deploy/bench/RESULTS.md). Records reach the sinks at most this much later;
/// they are fsynced once a second regardless, so durability is unchanged.
const GROUP_WINDOW: Duration = Duration::from_millis(2);
/// A queue smaller than this skips the window: a burst could fill it while the writer waits (and in
/// block mode a full queue refuses statements). 4096 events in 2 ms would be 2 M statements a second.
const GROUP_MIN_QUEUE: usize = 4096;

/// State shared by the handles and the writer.
struct Common {
    on_failure: OnFailure,
    sinks: Vec<Arc<SinkState>>,
    sink_backlog: usize,
    dropped: AtomicU64,
    /// Drops not yet recorded by a gap event.
    pending_gap: AtomicU64,
    closed: AtomicBool,
    shutdown: Notify,
    done: watch::Sender<Option<Result<(), String>>>,
    last_seq: AtomicU64,
    /// When the last signed checkpoint was made (ms since the Unix epoch; 0: none yet).
    last_checkpoint_ms: AtomicU64,
}

impl Common {
    fn failing_sink(&self) -> Option<&SinkState> {
        self.sinks.iter().map(|s| &**s).find(|s| !s.is_healthy())
    }

    fn full_sink(&self) -> Option<&SinkState> {
        self.sinks
            .iter()
            .map(|s| &**s)
            .find(|s| s.backlog.load(Ordering::Acquire) >= self.sink_backlog)
    }

    fn note_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if self.pending_gap.fetch_add(1, Ordering::AcqRel) == 0 {
            tracing::error!("audit events are being dropped (queue or sink backlog full); a gap event will record how many");
        }
    }
}

struct HandleInner {
    tx: mpsc::Sender<NewEvent>,
    common: Arc<Common>,
}

/// Cheap, cloneable handle the proxy records events with. When every handle is dropped the
/// writer flushes and stops as if `shutdown()` had been called.
#[derive(Clone)]
pub struct AuditHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle")
            .field("healthy", &self.is_healthy())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// A snapshot of the pipeline for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditStatus {
    pub healthy: bool,
    /// Events waiting in the queue to be sequenced.
    pub queued: usize,
    pub dropped: u64,
    /// The last seq assigned.
    pub last_seq: u64,
    /// Time since the last signed checkpoint (`None`: none yet).
    pub checkpoint_age: Option<Duration>,
    pub sinks: Vec<SinkStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStatus {
    pub name: String,
    pub healthy: bool,
    /// Records assigned to this sink and not yet stored.
    pub backlog: usize,
    pub last_error: Option<String>,
    /// Records stored since start.
    pub written: u64,
    /// Failed writes since start (each retried).
    pub failures: u64,
}

impl AuditHandle {
    /// Queues one event without waiting. See the module docs for what `Err` means; with
    /// `OnFailure::Drop` this always returns `Ok` (except after shutdown).
    pub fn record(&self, ev: NewEvent) -> Result<(), AuditUnavailable> {
        let c = &self.inner.common;
        if c.closed.load(Ordering::Acquire) {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(AuditUnavailable {
                reason: UnavailableReason::ShutDown,
                event_kept: false,
            });
        }
        let full = c.full_sink();
        let not_kept = match full {
            Some(s) => Some(UnavailableReason::BacklogFull {
                sink: s.name.clone(),
            }),
            None => match self.inner.tx.try_send(ev) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => Some(UnavailableReason::QueueFull),
                Err(mpsc::error::TrySendError::Closed(_)) => Some(UnavailableReason::ShutDown),
            },
        };
        if let Some(reason) = not_kept {
            c.note_drop();
            return match c.on_failure {
                OnFailure::Drop if reason != UnavailableReason::ShutDown => Ok(()),
                _ => Err(AuditUnavailable {
                    reason,
                    event_kept: false,
                }),
            };
        }
        if c.on_failure == OnFailure::Block {
            if let Some(s) = c.failing_sink() {
                return Err(AuditUnavailable {
                    reason: UnavailableReason::SinkFailing {
                        sink: s.name.clone(),
                        error: s.last_error().unwrap_or_default(),
                    },
                    event_kept: true,
                });
            }
        }
        Ok(())
    }

    /// True when events can be stored right now: every sink's last write succeeded, no retry
    /// buffer is full and the queue has room. Check it before running a statement.
    pub fn is_healthy(&self) -> bool {
        let c = &self.inner.common;
        !c.closed.load(Ordering::Acquire)
            && c.failing_sink().is_none()
            && c.full_sink().is_none()
            && self.inner.tx.capacity() > 0
    }

    /// Why the trail is unhealthy, or `None` when healthy (for the 58000 message).
    pub fn unavailable_reason(&self) -> Option<AuditUnavailable> {
        let c = &self.inner.common;
        let reason = if c.closed.load(Ordering::Acquire) {
            UnavailableReason::ShutDown
        } else if let Some(s) = c.failing_sink() {
            UnavailableReason::SinkFailing {
                sink: s.name.clone(),
                error: s.last_error().unwrap_or_default(),
            }
        } else if let Some(s) = c.full_sink() {
            UnavailableReason::BacklogFull {
                sink: s.name.clone(),
            }
        } else if self.inner.tx.capacity() == 0 {
            UnavailableReason::QueueFull
        } else {
            return None;
        };
        Some(AuditUnavailable {
            reason,
            event_kept: false,
        })
    }

    /// Events lost since start (queue or backlog full, or recorded after shutdown).
    pub fn dropped(&self) -> u64 {
        self.inner.common.dropped.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> AuditStatus {
        let c = &self.inner.common;
        AuditStatus {
            healthy: self.is_healthy(),
            queued: self.inner.tx.max_capacity() - self.inner.tx.capacity(),
            dropped: self.dropped(),
            last_seq: c.last_seq.load(Ordering::Relaxed),
            checkpoint_age: match c.last_checkpoint_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(Duration::from_millis(unix_ms().saturating_sub(ms))),
            },
            sinks: c
                .sinks
                .iter()
                .map(|s| SinkStatus {
                    name: s.name.clone(),
                    healthy: s.is_healthy(),
                    backlog: s.backlog.load(Ordering::Relaxed),
                    last_error: s.last_error(),
                    written: s.written.load(Ordering::Relaxed),
                    failures: s.failures.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }

    /// Stops accepting events, writes everything queued, a `shutdown` event and a final signed
    /// checkpoint, flushes (fsync) every sink and waits for all of it. Idempotent.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        let c = &self.inner.common;
        c.shutdown.notify_one();
        let mut rx = c.done.subscribe();
        let r = rx
            .wait_for(|d| d.is_some())
            .await
            .map(|d| d.clone().expect("checked is_some"));
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Shutdown(e)),
            Err(_) => Err(AuditError::Shutdown(
                "the audit writer task ended unexpectedly".into(),
            )),
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the audit writer.
pub struct Auditor;

impl Auditor {
    /// Opens every configured sink (creating the file, the PostgreSQL schema, the NATS stream),
    /// finds where this instance's chain ends, and spawns the writer. Fails when a sink cannot be
    /// opened: the proxy must not serve without its audit trail.
    ///
    /// `instance` names this proxy instance; keep it stable across restarts (e.g. the host name)
    /// and unique in a fleet: the PostgreSQL chain is continued per instance name.
    ///
    /// The returned task ends after shutdown (or when every handle is dropped).
    pub async fn start(
        config: AuditConfig,
        signer: Arc<dyn CheckpointSigner>,
        instance: impl Into<String>,
    ) -> Result<(AuditHandle, JoinHandle<Result<(), AuditError>>), AuditError> {
        start_with_sinks(config, signer, instance.into(), Vec::new()).await
    }
}

type OpenedSink = (Box<dyn Sink>, Arc<SinkState>, Option<Tail>);

pub(crate) async fn start_with_sinks(
    config: AuditConfig,
    signer: Arc<dyn CheckpointSigner>,
    instance: String,
    extra: Vec<Box<dyn Sink>>,
) -> Result<(AuditHandle, JoinHandle<Result<(), AuditError>>), AuditError> {
    config.validate()?;
    let mut opened: Vec<OpenedSink> = Vec::new();
    if let Some(path) = &config.file {
        let state = Arc::new(SinkState::new(format!("file {}", path.display())));
        let (s, tail) = sink::file::FileSink::open(path, config.max_file_bytes, state.clone())?;
        opened.push((Box::new(s), state, tail));
    }
    if let Some(pg) = &config.postgres {
        let (s, tail) = sink::postgres::PgSink::open(pg, &instance).await?;
        let state = Arc::new(SinkState::new(s.name()));
        opened.push((Box::new(s), state, tail));
    }
    if let Some(n) = &config.nats {
        let s = sink::nats::NatsSink::open(n, &instance).await?;
        let state = Arc::new(SinkState::new(s.name()));
        opened.push((Box::new(s), state, None));
    }
    for s in extra {
        let state = Arc::new(SinkState::new(s.name()));
        opened.push((s, state, None));
    }

    // Continue the longest chain found; a sink that is behind gets a seq jump it will report.
    let tail = opened
        .iter()
        .filter_map(|(_, st, t)| t.as_ref().map(|t| (st.name.clone(), t.clone())))
        .max_by_key(|(_, t)| t.seq);
    for (_, st, t) in &opened {
        let behind = t.as_ref().map_or(0, |t| t.seq);
        if let Some((src, tail)) = &tail {
            if behind < tail.seq && behind > 0 {
                tracing::warn!(sink = %st.name, sink_seq = behind, chain_seq = tail.seq, source = %src,
                    "audit sink is behind the chain; it will show a seq gap");
            }
        }
    }

    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let (done, _) = watch::channel(None);
    let common = Arc::new(Common {
        on_failure: config.on_failure,
        sinks: opened.iter().map(|(_, st, _)| st.clone()).collect(),
        sink_backlog: config.sink_backlog,
        dropped: AtomicU64::new(0),
        pending_gap: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        shutdown: Notify::new(),
        done,
        last_seq: AtomicU64::new(0),
        last_checkpoint_ms: AtomicU64::new(0),
    });

    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for (s, st, _) in opened {
        let (stx, srx) = mpsc::unbounded_channel();
        senders.push((stx, st.clone()));
        tasks.push(tokio::spawn(sink::run_sink(
            s,
            st,
            srx,
            config.shutdown_timeout,
        )));
    }

    let (seq, prev_hash, start_reason) = match &tail {
        Some((src, t)) => (
            t.seq,
            t.hash.clone(),
            format!(
                "audit writer started; continuing the chain after seq {} found in {src}",
                t.seq
            ),
        ),
        None => (
            0,
            GENESIS.to_string(),
            "audit writer started; new chain".to_string(),
        ),
    };
    let instance = clean(instance);
    let chain = Chain {
        instance_json: canonical::instance_json(&instance),
        instance,
        seq,
        prev_hash,
        since_checkpoint: 0,
        last_checkpoint: Instant::now(),
        signer,
    };
    let writer = Writer {
        chain,
        common: common.clone(),
        senders,
        checkpoint_every: config.checkpoint_every,
    };
    let task = tokio::spawn(writer.run(rx, tasks, start_reason));
    Ok((
        AuditHandle {
            inner: Arc::new(HandleInner { tx, common }),
        },
        task,
    ))
}

/// The hash chain of one instance.
struct Chain {
    /// The instance name, NUL replaced (see [`clean`]).
    instance: String,
    /// `,"instance":"…"`, formatted once.
    instance_json: String,
    seq: u64,
    prev_hash: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    signer: Arc<dyn CheckpointSigner>,
}

impl Chain {
    fn event(&mut self, mut ne: NewEvent) -> Arc<Entry> {
        self.seq += 1;
        // Kept in `ne` too: the PostgreSQL sink stores the same time.
        let ts = *ne.ts.get_or_insert_with(time::OffsetDateTime::now_utc);
        ne.reason = ne.reason.map(clean);
        ne.sqlstate = ne.sqlstate.map(clean);
        let line = canonical::seal_new(self.seq, ts, &self.instance_json, &ne, &self.prev_hash);
        self.prev_hash.clear();
        self.prev_hash.push_str(canonical::line_hash(&line));
        self.since_checkpoint += 1;
        Arc::new(Entry::Event {
            seq: self.seq,
            ne,
            line,
        })
    }

    fn system_event(&mut self, kind: Kind, reason: String) -> Arc<Entry> {
        static SYSTEM: std::sync::OnceLock<Arc<EventSource>> = std::sync::OnceLock::new();
        let who = SYSTEM
            .get_or_init(|| {
                EventSource::new(Who {
                    application: "pgcloak".into(),
                    ..Who::default()
                })
            })
            .clone();
        self.event(NewEvent {
            who,
            reason: Some(reason),
            ..NewEvent::new(kind)
        })
    }

    fn checkpoint(&mut self) -> Arc<Entry> {
        let ts = format_ts(time::OffsetDateTime::now_utc());
        let instance = self.instance.clone();
        let msg = canonical::checkpoint_message(&instance, self.seq, &self.prev_hash, &ts);
        let cp = Checkpoint {
            seq: self.seq,
            hash: self.prev_hash.clone(),
            ts,
            signature: encode_signature(&self.signer.sign(&msg)),
            instance,
        };
        let line = canonical::checkpoint_line(&cp);
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Arc::new(Entry::Checkpoint { cp, line })
    }
}

/// The channel into one sink task and that sink's shared state.
type SinkSender = (mpsc::UnboundedSender<Vec<Arc<Entry>>>, Arc<SinkState>);

struct Writer {
    chain: Chain,
    common: Arc<Common>,
    senders: Vec<SinkSender>,
    checkpoint_every: u64,
}

impl Writer {
    fn send(&self, out: Vec<Arc<Entry>>) {
        if out.is_empty() {
            return;
        }
        self.common
            .last_seq
            .store(self.chain.seq, Ordering::Relaxed);
        for (tx, st) in &self.senders {
            st.backlog.fetch_add(out.len(), Ordering::AcqRel);
            if tx.send(out.clone()).is_err() {
                // The sink task is gone (it only ends after we close its channel).
                st.backlog.fetch_sub(out.len(), Ordering::AcqRel);
            }
        }
    }

    /// A signed checkpoint, its time noted for `AuditStatus::checkpoint_age`.
    fn checkpoint(&mut self) -> Arc<Entry> {
        self.common
            .last_checkpoint_ms
            .store(unix_ms(), Ordering::Relaxed);
        self.chain.checkpoint()
    }

    fn push_event(&mut self, out: &mut Vec<Arc<Entry>>, e: Arc<Entry>) {
        out.push(e);
        if self.chain.since_checkpoint >= self.checkpoint_every {
            out.push(self.checkpoint());
        }
    }

    fn maybe_gap(&mut self, out: &mut Vec<Arc<Entry>>) {
        let c = &self.common;
        if c.pending_gap.load(Ordering::Acquire) == 0
            || c.failing_sink().is_some()
            || c.full_sink().is_some()
        {
            return;
        }
        let n = c.pending_gap.swap(0, Ordering::AcqRel);
        if n > 0 {
            tracing::warn!(
                dropped = n,
                "audit: recording a gap event for dropped events"
            );
            let e = self
                .chain
                .system_event(Kind::Gap, format!("{n} events dropped"));
            self.push_event(out, e);
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<NewEvent>,
        tasks: Vec<JoinHandle<Result<(), String>>>,
        start_reason: String,
    ) -> Result<(), AuditError> {
        let mut out = Vec::new();
        let e = self.chain.system_event(Kind::Start, start_reason);
        self.push_event(&mut out, e);
        self.send(std::mem::take(&mut out));

        let mut buf: Vec<NewEvent> = Vec::with_capacity(MAX_BATCH);
        let group_window = rx.max_capacity() >= GROUP_MIN_QUEUE;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut stop = false;
            tokio::select! {
                biased;
                _ = self.common.shutdown.notified() => stop = true,
                n = rx.recv_many(&mut buf, MAX_BATCH) => if n == 0 { stop = true },
                _ = tick.tick() => {}
            }
            if !stop && !buf.is_empty() && buf.len() < MAX_BATCH && group_window {
                // Group commit: let the rest of this burst arrive (see GROUP_WINDOW).
                tokio::time::sleep(GROUP_WINDOW).await;
                while buf.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(e) => buf.push(e),
                        Err(_) => break,
                    }
                }
            }
            if stop {
                self.common.closed.store(true, Ordering::Release);
                rx.close();
                while let Ok(e) = rx.try_recv() {
                    buf.push(e);
                }
            }
            let mut out = Vec::with_capacity(buf.len() + 2);
            self.maybe_gap(&mut out);
            for ne in buf.drain(..) {
                let e = self.chain.event(ne);
                self.push_event(&mut out, e);
            }
            if stop {
                // Losses nobody could record yet still go into the chain.
                let n = self.common.pending_gap.swap(0, Ordering::AcqRel);
                if n > 0 {
                    let e = self
                        .chain
                        .system_event(Kind::Gap, format!("{n} events dropped"));
                    out.push(e);
                }
                let e = self
                    .chain
                    .system_event(Kind::Shutdown, "audit writer shutting down".into());
                out.push(e);
                out.push(self.checkpoint());
                self.send(out);
                break;
            }
            let rotate = self
                .senders
                .iter()
                .any(|(_, st)| st.want_checkpoint.swap(false, Ordering::AcqRel));
            if self.chain.since_checkpoint > 0
                && (rotate || self.chain.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
            {
                out.push(self.checkpoint());
            }
            self.send(out);
        }

        // Closing the channels lets each sink task finish its backlog and flush.
        self.senders.clear();
        let mut errors = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("a sink task failed: {e}")),
            }
        }
        let result = if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        };
        self.common.done.send_replace(Some(result.clone()));
        result.map_err(AuditError::Shutdown)
    }
}
