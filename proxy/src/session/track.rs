//! Matching responses to requests. The frontend pump records what each forwarded message will be
//! answered with; the backend pump consumes the answers in order. This is what lets later stages attach
//! a statement's plan to its rows and report each statement's outcome in protocol order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::context::{PortalCtx, StmtCtx};

/// A forwarded client message still waiting for (part of) its answer.
#[derive(Debug)]
pub enum Pending {
    /// A simple Query: answered by one result per statement, then ReadyForQuery. `stmts` are the
    /// statements the server will run, in order; `next` is the one whose result comes next.
    Query {
        started: Instant,
        stmts: Vec<Arc<StmtCtx>>,
        next: usize,
    },
    Parse,
    Bind,
    /// Describe of a prepared statement (`stmt`) or a portal (`portal`), when known and analysed
    /// (only those descriptions are rewritten). `injected`: the proxy asked for it (the client sent
    /// an Execute of a portal whose row shape nobody described); its answer is swallowed.
    Describe {
        stmt: Option<Arc<StmtCtx>>,
        portal: Option<Arc<PortalCtx>>,
        injected: bool,
    },
    Close,
    Execute {
        started: Instant,
        stmt: Option<Arc<StmtCtx>>,
        /// The portal, when its statement was analysed (its rows may be rewritten).
        portal: Option<Arc<PortalCtx>>,
    },
    /// Answered by ReadyForQuery; errors skip everything before it.
    Sync,
    /// A FunctionCall: FunctionCallResponse, then ReadyForQuery.
    FunctionCall {
        started: Instant,
    },
    /// A Query the proxy injected in the extended protocol to make the server raise a refusal (so the
    /// transaction is aborted exactly as PostgreSQL aborts it). Its ErrorResponse is the client's answer;
    /// its ReadyForQuery is swallowed. Ignored by the server when it is already skipping to Sync.
    Refusal {
        started: Instant,
        stmt: Arc<StmtCtx>,
    },
    /// A failing Query the proxy injected after a statement exceeded `max_rows`, so the server aborts
    /// the transaction block (or rolls back the implicit transaction) as it would for any error. The
    /// client already has its 42501: the ErrorResponse and ReadyForQuery are swallowed.
    Abort,
}

/// What a held-back client stream waits for (see [`Barrier`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierKind {
    /// An Execute of a statement with `max_rows`: released when the Execute completes.
    Execute,
    /// A simple Query with such a statement: released at its ReadyForQuery.
    Query,
}

/// While a statement with a `max_rows` limit runs, the frontend forwards nothing more, so that when
/// the limit is exceeded the proxy can make the server fail the transaction before anything the
/// client sent later (a Sync, a COMMIT) reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    pub kind: BarrierKind,
    /// The statement exceeded its limit.
    pub exceeded: bool,
    /// The server finished the statement; the frontend may go on.
    pub released: bool,
    /// The frontend must inject an aborting statement before anything else.
    pub abort: bool,
}

impl Pending {
    /// Whether ReadyForQuery answers this entry.
    fn is_sync_point(&self) -> bool {
        matches!(
            self,
            Pending::Query { .. }
                | Pending::Sync
                | Pending::FunctionCall { .. }
                | Pending::Refusal { .. }
                | Pending::Abort
        )
    }
}

/// How a client ran a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A Query message.
    Simple,
    /// Parse/Bind/Execute.
    Extended,
    /// A FunctionCall message.
    Function,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Simple, Protocol::Extended, Protocol::Function];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::Function => "function",
        }
    }
}

/// One statement's outcome, reported when the server finishes it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub started: Instant,
    /// Which protocol ran the statement (for the latency metrics).
    pub protocol: Protocol,
    /// Rows from the command tag, when it has a count.
    pub rows: Option<u64>,
    /// SQLSTATE of the error, `None` on success.
    pub sqlstate: Option<String>,
    /// What the statement was, when the frontend knew.
    pub stmt: Option<Arc<StmtCtx>>,
}

/// What to do with the server message just consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// An answer to something the proxy injected: the client never asked for it.
    Swallow,
    /// The ErrorResponse of an injected refusal: forward it without the PL/pgSQL context line.
    ForwardRefusal,
}

/// The queue shared by the two pumps of one session.
#[derive(Debug)]
pub struct Tracker {
    queue: VecDeque<Pending>,
    /// Transaction status from the last ReadyForQuery (`I`, `T` or `E`).
    pub tx_status: u8,
    /// Outcomes completed by the last message(s), drained by the backend pump.
    pub done: Vec<Outcome>,
    /// The frontend is holding back the client's messages (a `max_rows` statement is running).
    pub barrier: Option<Barrier>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    pub fn new() -> Self {
        Tracker {
            queue: VecDeque::new(),
            tx_status: b'I',
            done: Vec::new(),
            barrier: None,
        }
    }

    pub fn push(&mut self, p: Pending) {
        self.queue.push_back(p);
    }

    /// Moves all of `ps` to the back of the queue, in order (a block copy, not one push per entry).
    pub fn append(&mut self, ps: &mut VecDeque<Pending>) {
        self.queue.append(ps);
    }

    /// Whether nothing is waiting for the server.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The statement whose rows are arriving now (for row rewriting).
    pub fn current_statement(&self) -> Option<&Arc<StmtCtx>> {
        match self.queue.front()? {
            Pending::Query { stmts, next, .. } => stmts.get(*next),
            Pending::Execute { stmt, .. } => stmt.as_ref(),
            _ => None,
        }
    }

    /// The entry the next server message answers.
    pub fn front(&self) -> Option<&Pending> {
        self.queue.front()
    }

    /// Pops entries up to and including the first one `matches` accepts; entries before it are answers
    /// the server skipped.
    fn pop_through(&mut self, matches: impl Fn(&Pending) -> bool) -> Option<Pending> {
        if self.queue.front().is_some_and(&matches) {
            // The usual case: the server answered the oldest message.
            return self.queue.pop_front();
        }
        let idx = self.queue.iter().position(matches)?;
        for skipped in self.queue.drain(..idx) {
            match skipped {
                Pending::Refusal { started, stmt } => {
                    // Never reached the server's attention, but the client's statement was still
                    // refused.
                    self.done.push(Outcome {
                        protocol: Protocol::Extended,
                        started,
                        rows: None,
                        sqlstate: stmt.refusal.as_ref().map(|r| r.sqlstate.to_string()),
                        stmt: Some(stmt),
                    });
                }
                Pending::Describe { stmt, portal, .. } => {
                    forget_describe(stmt.as_deref(), portal.as_deref())
                }
                _ => {}
            }
        }
        self.queue.pop_front()
    }

    /// Releases the barrier when `tag` (with `body`) ends the statement it waits for; says whether
    /// it did. The frontend must then inject an abort when [`Barrier::abort`] is set: for a simple
    /// Query that exceeded its limit inside a transaction block (the caller presents that
    /// ReadyForQuery as failed, `E`), or for an Execute that exceeded it (the server has not reached
    /// the client's Sync yet).
    pub fn release_barrier(&mut self, tag: u8, body: &[u8]) -> bool {
        let Some(kind) = self.barrier.filter(|b| !b.released).map(|b| b.kind) else {
            return false;
        };
        // The held statement was the last of its kind the frontend sent: it is done when no such
        // entry is left (called after `on_backend` consumed the message).
        let done = match kind {
            BarrierKind::Execute => {
                matches!(tag, b'C' | b's' | b'I' | b'E' | b'Z')
                    && !self
                        .queue
                        .iter()
                        .any(|p| matches!(p, Pending::Execute { .. }))
            }
            BarrierKind::Query => {
                tag == b'Z'
                    && !self
                        .queue
                        .iter()
                        .any(|p| matches!(p, Pending::Query { .. }))
            }
        };
        if !done {
            return false;
        }
        let Some(b) = self.barrier.as_mut() else {
            return false;
        };
        b.released = true;
        b.abort = b.exceeded
            && match b.kind {
                BarrierKind::Execute => matches!(tag, b'C' | b's'),
                BarrierKind::Query => body.first() == Some(&b'T'),
            };
        true
    }

    /// Consumes one server message (tag and body) and says what to do with it. Completed statements
    /// are appended to [`Tracker::done`].
    pub fn on_backend(&mut self, tag: u8, body: &[u8]) -> Action {
        match tag {
            b'Z' => {
                let status = body.first().copied().unwrap_or(b'I');
                self.tx_status = status;
                match self.pop_through(Pending::is_sync_point) {
                    Some(Pending::Refusal { .. } | Pending::Abort) => Action::Swallow,
                    _ => Action::Forward,
                }
            }
            b'1' => {
                self.pop_through(|p| matches!(p, Pending::Parse));
                Action::Forward
            }
            b'2' => {
                self.pop_through(|p| matches!(p, Pending::Bind));
                Action::Forward
            }
            b'3' => {
                self.pop_through(|p| matches!(p, Pending::Close));
                Action::Forward
            }
            b'n' | b'T' => match self.queue.front() {
                Some(Pending::Describe { injected, .. }) => {
                    let injected = *injected;
                    self.queue.pop_front();
                    if injected {
                        Action::Swallow
                    } else {
                        Action::Forward
                    }
                }
                _ => Action::Forward,
            },
            b'C' | b'I' | b's' => {
                let rows = if tag == b'C' {
                    crate::protocol::messages::command_rows(body)
                } else {
                    None
                };
                match self.queue.front_mut() {
                    Some(Pending::Query {
                        started,
                        stmts,
                        next,
                    }) => {
                        let stmt = stmts.get(*next).cloned();
                        *next += 1;
                        self.done.push(Outcome {
                            protocol: Protocol::Simple,
                            started: *started,
                            rows,
                            sqlstate: None,
                            stmt,
                        });
                    }
                    Some(Pending::Execute { .. }) => {
                        if let Some(Pending::Execute { started, stmt, .. }) = self.queue.pop_front()
                        {
                            self.done.push(Outcome {
                                protocol: Protocol::Extended,
                                started,
                                rows,
                                sqlstate: None,
                                stmt,
                            });
                        }
                    }
                    _ => {}
                }
                Action::Forward
            }
            b'E' => {
                let code = crate::protocol::messages::error_fields(body)
                    .map(|f| f.code)
                    .unwrap_or_default();
                match self.queue.front_mut() {
                    None | Some(Pending::Sync) => Action::Forward,
                    Some(Pending::Abort) => Action::Swallow,
                    Some(Pending::Query {
                        started,
                        stmts,
                        next,
                    }) => {
                        let stmt = stmts.get(*next).cloned();
                        // The rest of the string is not run.
                        *next = stmts.len();
                        self.done.push(Outcome {
                            protocol: Protocol::Simple,
                            started: *started,
                            rows: None,
                            sqlstate: Some(code),
                            stmt,
                        });
                        Action::Forward
                    }
                    Some(Pending::FunctionCall { started }) => {
                        self.done.push(Outcome {
                            protocol: Protocol::Function,
                            started: *started,
                            rows: None,
                            sqlstate: Some(code),
                            stmt: None,
                        });
                        Action::Forward
                    }
                    Some(Pending::Refusal { started, stmt }) => {
                        self.done.push(Outcome {
                            protocol: Protocol::Extended,
                            started: *started,
                            rows: None,
                            sqlstate: Some(code),
                            stmt: Some(stmt.clone()),
                        });
                        Action::ForwardRefusal
                    }
                    Some(_) => {
                        // Extended protocol: the server skips everything up to the next Sync, injected
                        // refusals included.
                        let mut failed: Option<(Instant, Option<Arc<StmtCtx>>)> = None;
                        while let Some(p) = self.queue.front() {
                            if matches!(
                                p,
                                Pending::Sync
                                    | Pending::Query { .. }
                                    | Pending::FunctionCall { .. }
                            ) {
                                break;
                            }
                            match self.queue.pop_front() {
                                Some(Pending::Execute { started, stmt, .. })
                                    if failed.is_none() =>
                                {
                                    failed = Some((started, stmt));
                                }
                                Some(Pending::Describe { stmt, portal, .. }) => {
                                    // Never answered: a later Execute must ask again.
                                    forget_describe(stmt.as_deref(), portal.as_deref());
                                }
                                Some(Pending::Refusal { started, stmt }) => {
                                    self.done.push(Outcome {
                                        protocol: Protocol::Extended,
                                        started,
                                        rows: None,
                                        sqlstate: stmt
                                            .refusal
                                            .as_ref()
                                            .map(|r| r.sqlstate.to_string()),
                                        stmt: Some(stmt),
                                    })
                                }
                                _ => {}
                            }
                        }
                        let (started, stmt) = failed.unwrap_or_else(|| (Instant::now(), None));
                        self.done.insert(
                            0,
                            Outcome {
                                protocol: Protocol::Extended,
                                started,
                                rows: None,
                                sqlstate: Some(code),
                                stmt,
                            },
                        );
                        Action::Forward
                    }
                }
            }
            b'V' => {
                if let Some(Pending::FunctionCall { started }) = self.queue.front() {
                    self.done.push(Outcome {
                        protocol: Protocol::Function,
                        started: *started,
                        rows: None,
                        sqlstate: None,
                        stmt: None,
                    });
                }
                Action::Forward
            }
            _ => Action::Forward,
        }
    }
}

/// A Describe the server skipped (after an error) will not set the row shape it was sent for.
fn forget_describe(stmt: Option<&StmtCtx>, portal: Option<&PortalCtx>) {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(s) = stmt {
        s.describe_sent.store(false, Relaxed);
    }
    if let Some(p) = portal {
        p.describe_sent.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::{error_response, Severity};

    fn t0() -> Instant {
        Instant::now()
    }

    fn err(code: &str) -> Vec<u8> {
        error_response(Severity::Error, code, "x", None)[5..].to_vec()
    }

    #[test]
    fn pipeline_of_two_executes() {
        let mut t = Tracker::new();
        let s = t0();
        for p in [
            Pending::Parse,
            Pending::Bind,
            Pending::Execute {
                started: s,
                stmt: None,
                portal: None,
            },
            Pending::Bind,
            Pending::Execute {
                started: s,
                stmt: None,
                portal: None,
            },
            Pending::Sync,
        ] {
            t.push(p);
        }
        assert_eq!(t.on_backend(b'1', b""), Action::Forward);
        t.on_backend(b'2', b"");
        t.on_backend(b'D', b"");
        t.on_backend(b'C', b"SELECT 1\0");
        assert_eq!(
            t.done.drain(..).map(|o| o.rows).collect::<Vec<_>>(),
            vec![Some(1)]
        );
        t.on_backend(b'2', b"");
        t.on_backend(b'C', b"INSERT 0 3\0");
        assert_eq!(
            t.done.drain(..).map(|o| o.rows).collect::<Vec<_>>(),
            vec![Some(3)]
        );
        assert_eq!(t.on_backend(b'Z', b"I"), Action::Forward);
        assert!(t.is_idle());
    }

    #[test]
    fn error_skips_to_sync() {
        let mut t = Tracker::new();
        let s = t0();
        for p in [
            Pending::Parse,
            Pending::Bind,
            Pending::Describe {
                stmt: None,
                portal: None,
                injected: false,
            },
            Pending::Execute {
                started: s,
                stmt: None,
                portal: None,
            },
            Pending::Sync,
            Pending::Parse,
        ] {
            t.push(p);
        }
        t.on_backend(b'E', &err("42P01"));
        let d: Vec<_> = t.done.drain(..).collect();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].sqlstate.as_deref(), Some("42P01"));
        assert_eq!(t.len(), 2);
        t.on_backend(b'Z', b"E");
        assert_eq!(t.tx_status, b'E');
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn multi_statement_query_reports_each_statement() {
        let mut t = Tracker::new();
        t.push(Pending::Query {
            started: t0(),
            stmts: vec![],
            next: 0,
        });
        t.on_backend(b'C', b"CREATE TABLE\0");
        t.on_backend(b'T', b"");
        t.on_backend(b'D', b"");
        t.on_backend(b'C', b"SELECT 1\0");
        let d: Vec<_> = t.done.drain(..).map(|o| o.rows).collect();
        assert_eq!(d, vec![None, Some(1)]);
        assert_eq!(t.len(), 1);
        t.on_backend(b'Z', b"I");
        assert!(t.is_idle());
    }

    #[test]
    fn injected_refusal_error_forwarded_and_ready_swallowed() {
        let mut t = Tracker::new();
        let s = t0();
        let stmt = Arc::new(StmtCtx::refused("42501", "pgcloak: no".into()));
        t.push(Pending::Parse);
        t.push(Pending::Refusal { started: s, stmt });
        t.push(Pending::Sync);
        t.on_backend(b'1', b"");
        assert_eq!(t.on_backend(b'E', &err("42501")), Action::ForwardRefusal);
        assert_eq!(t.on_backend(b'Z', b"I"), Action::Swallow);
        assert_eq!(t.on_backend(b'Z', b"I"), Action::Forward);
        assert_eq!(t.done.len(), 1);
        assert!(t.is_idle());
    }

    #[test]
    fn refusal_ignored_by_a_server_already_skipping_to_sync() {
        let mut t = Tracker::new();
        let s = t0();
        let stmt = Arc::new(StmtCtx::refused("42501", "pgcloak: no".into()));
        t.push(Pending::Parse);
        t.push(Pending::Refusal { started: s, stmt });
        t.push(Pending::Sync);
        // The Parse fails: the server ignores the injected Query and answers only the Sync.
        assert_eq!(t.on_backend(b'E', &err("42601")), Action::Forward);
        assert_eq!(t.on_backend(b'Z', b"I"), Action::Forward);
        assert!(t.is_idle());
        let d: Vec<_> = t.done.drain(..).collect();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].sqlstate.as_deref(), Some("42601"));
        assert_eq!(d[1].sqlstate.as_deref(), Some("42501"));
    }

    #[test]
    fn unexpected_answers_do_not_panic() {
        let mut t = Tracker::new();
        for tag in *b"Z123nTCIsEVDGHdc" {
            let _ = t.on_backend(tag, b"");
        }
        assert!(t.is_idle());
    }

    fn barrier(kind: BarrierKind) -> Option<Barrier> {
        Some(Barrier {
            kind,
            exceeded: false,
            released: false,
            abort: false,
        })
    }

    fn execute() -> Pending {
        Pending::Execute {
            started: t0(),
            stmt: None,
            portal: None,
        }
    }

    #[test]
    fn execute_barrier_waits_for_the_held_execute_not_an_earlier_one() {
        let mut t = Tracker::new();
        t.push(Pending::Bind);
        t.push(execute());
        t.push(Pending::Bind);
        t.push(execute());
        t.barrier = barrier(BarrierKind::Execute);
        let done = b"SELECT 1\0";
        for (tag, body) in [(b'2', &b""[..]), (b'C', done), (b'2', b"")] {
            t.on_backend(tag, body);
            assert!(
                !t.release_barrier(tag, body),
                "released early at {}",
                tag as char
            );
        }
        t.barrier.as_mut().unwrap().exceeded = true;
        t.on_backend(b'C', done);
        assert!(t.release_barrier(b'C', done));
        let b = t.barrier.unwrap();
        assert!(b.released && b.abort);
        // Released once only.
        assert!(!t.release_barrier(b'Z', b"I"));
    }

    #[test]
    fn execute_barrier_released_without_abort_when_the_server_failed_first() {
        let mut t = Tracker::new();
        t.push(Pending::Parse);
        t.push(Pending::Bind);
        t.push(execute());
        t.barrier = barrier(BarrierKind::Execute);
        let e = err("42P01");
        t.on_backend(b'E', &e);
        assert!(t.release_barrier(b'E', &e));
        assert!(!t.barrier.unwrap().abort);
    }

    #[test]
    fn query_barrier_aborts_only_inside_a_transaction_block() {
        for (status, abort) in [(b'T', true), (b'I', false), (b'E', false)] {
            let mut t = Tracker::new();
            t.push(Pending::Query {
                started: t0(),
                stmts: Vec::new(),
                next: 0,
            });
            t.barrier = barrier(BarrierKind::Query);
            t.barrier.as_mut().unwrap().exceeded = true;
            t.on_backend(b'C', b"SELECT 60\0");
            assert!(!t.release_barrier(b'C', b"SELECT 60\0"));
            t.on_backend(b'Z', &[status]);
            assert!(t.release_barrier(b'Z', &[status]));
            assert_eq!(t.barrier.unwrap().abort, abort, "status {}", status as char);
        }
    }

    #[test]
    fn injected_abort_is_swallowed_whole() {
        let mut t = Tracker::new();
        t.push(Pending::Abort);
        t.push(Pending::Sync);
        assert_eq!(t.on_backend(b'E', &err("42501")), Action::Swallow);
        assert_eq!(t.on_backend(b'Z', b"E"), Action::Swallow);
        assert_eq!(t.on_backend(b'Z', b"E"), Action::Forward);
        assert!(
            t.done.is_empty(),
            "the abort is not a statement of the client's"
        );
        assert!(t.is_idle());
    }
}
