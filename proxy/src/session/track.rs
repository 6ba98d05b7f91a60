//! Matching responses to requests. The frontend pump records what each forwarded message will be
//! answered with; the backend pump consumes the answers in order. This is what lets later stages attach
//! a statement's plan to its rows and report each statement's outcome in protocol order.

use std::collections::VecDeque;
use std::time::Instant;

/// A forwarded client message still waiting for (part of) its answer.
#[derive(Debug)]
pub enum Pending {
    /// A simple Query: answered by one result per statement, then ReadyForQuery.
    Query {
        started: Instant,
    },
    Parse,
    Bind,
    Describe,
    Close,
    Execute {
        started: Instant,
    },
    /// Answered by ReadyForQuery; errors skip everything before it.
    Sync,
    /// A FunctionCall: FunctionCallResponse, then ReadyForQuery.
    FunctionCall {
        started: Instant,
    },
}

impl Pending {
    /// Whether ReadyForQuery answers this entry.
    fn is_sync_point(&self) -> bool {
        matches!(
            self,
            Pending::Query { .. } | Pending::Sync | Pending::FunctionCall { .. }
        )
    }
}

/// One statement's outcome, reported when the server finishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub started: Instant,
    /// Rows from the command tag, when it has a count.
    pub rows: Option<u64>,
    /// SQLSTATE of the error, `None` on success.
    pub sqlstate: Option<String>,
}

/// What the backend pump learned from one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    None,
    /// A statement finished (successfully or not).
    Statement(Outcome),
    /// ReadyForQuery with this transaction status.
    Ready(u8),
}

/// The queue shared by the two pumps of one session.
#[derive(Debug, Default)]
pub struct Tracker {
    queue: VecDeque<Pending>,
    /// Transaction status from the last ReadyForQuery (`I`, `T` or `E`).
    pub tx_status: u8,
}

impl Tracker {
    pub fn new() -> Self {
        Tracker {
            queue: VecDeque::new(),
            tx_status: b'I',
        }
    }

    pub fn push(&mut self, p: Pending) {
        self.queue.push_back(p);
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

    /// Pops entries up to and including the first one `matches` accepts; entries before it are answers
    /// the server skipped. Returns the matched entry.
    fn pop_through(&mut self, matches: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let idx = self.queue.iter().position(matches)?;
        self.queue.drain(..idx);
        self.queue.pop_front()
    }

    /// Consumes one server message (tag and body) and says what it meant.
    pub fn on_backend(&mut self, tag: u8, body: &[u8]) -> Event {
        match tag {
            b'Z' => {
                let status = body.first().copied().unwrap_or(b'I');
                self.tx_status = status;
                self.pop_through(Pending::is_sync_point);
                Event::Ready(status)
            }
            b'1' => {
                self.pop_through(|p| matches!(p, Pending::Parse));
                Event::None
            }
            b'2' => {
                self.pop_through(|p| matches!(p, Pending::Bind));
                Event::None
            }
            b'3' => {
                self.pop_through(|p| matches!(p, Pending::Close));
                Event::None
            }
            b'n' | b'T' => {
                if matches!(self.queue.front(), Some(Pending::Describe)) {
                    self.queue.pop_front();
                }
                Event::None
            }
            b'C' | b'I' | b's' => {
                let rows = if tag == b'C' {
                    crate::protocol::messages::command_rows(body)
                } else {
                    None
                };
                match self.queue.front() {
                    Some(Pending::Query { started }) => Event::Statement(Outcome {
                        started: *started,
                        rows,
                        sqlstate: None,
                    }),
                    Some(Pending::Execute { .. }) => match self.queue.pop_front() {
                        Some(Pending::Execute { started }) => Event::Statement(Outcome {
                            started,
                            rows,
                            sqlstate: None,
                        }),
                        _ => Event::None,
                    },
                    _ => Event::None,
                }
            }
            b'E' => {
                let code = crate::protocol::messages::error_fields(body)
                    .map(|f| f.code)
                    .unwrap_or_default();
                match self.queue.front() {
                    None | Some(Pending::Sync) => Event::None,
                    Some(Pending::Query { started }) | Some(Pending::FunctionCall { started }) => {
                        Event::Statement(Outcome {
                            started: *started,
                            rows: None,
                            sqlstate: Some(code),
                        })
                    }
                    Some(_) => {
                        // Extended protocol: the server skips everything up to the next Sync.
                        let mut failed = None;
                        while let Some(p) = self.queue.front() {
                            if p.is_sync_point() {
                                break;
                            }
                            if let Some(Pending::Execute { started }) = self.queue.pop_front() {
                                failed.get_or_insert(started);
                            }
                        }
                        Event::Statement(Outcome {
                            started: failed.unwrap_or_else(Instant::now),
                            rows: None,
                            sqlstate: Some(code),
                        })
                    }
                }
            }
            b'V' => match self.queue.front() {
                Some(Pending::FunctionCall { started }) => Event::Statement(Outcome {
                    started: *started,
                    rows: None,
                    sqlstate: None,
                }),
                _ => Event::None,
            },
            _ => Event::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn pipeline_of_two_executes() {
        let mut t = Tracker::new();
        let s = t0();
        for p in [
            Pending::Parse,
            Pending::Bind,
            Pending::Execute { started: s },
            Pending::Bind,
            Pending::Execute { started: s },
            Pending::Sync,
        ] {
            t.push(p);
        }
        assert_eq!(t.on_backend(b'1', b""), Event::None);
        assert_eq!(t.on_backend(b'2', b""), Event::None);
        assert_eq!(t.on_backend(b'D', b""), Event::None);
        assert!(matches!(
            t.on_backend(b'C', b"SELECT 1\0"),
            Event::Statement(Outcome { rows: Some(1), .. })
        ));
        t.on_backend(b'2', b"");
        assert!(matches!(
            t.on_backend(b'C', b"INSERT 0 3\0"),
            Event::Statement(Outcome { rows: Some(3), .. })
        ));
        assert_eq!(t.on_backend(b'Z', b"I"), Event::Ready(b'I'));
        assert!(t.is_idle());
    }

    #[test]
    fn error_skips_to_sync() {
        let mut t = Tracker::new();
        let s = t0();
        for p in [
            Pending::Parse,
            Pending::Bind,
            Pending::Describe,
            Pending::Execute { started: s },
            Pending::Sync,
            Pending::Parse,
        ] {
            t.push(p);
        }
        let err = crate::protocol::messages::error_response(
            crate::protocol::messages::Severity::Error,
            "42P01",
            "no",
            None,
        );
        assert!(
            matches!(t.on_backend(b'E', &err[5..]), Event::Statement(Outcome { sqlstate: Some(ref c), .. }) if c == "42P01")
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.on_backend(b'Z', b"E"), Event::Ready(b'E'));
        assert_eq!(t.tx_status, b'E');
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn multi_statement_query_reports_each_statement() {
        let mut t = Tracker::new();
        t.push(Pending::Query { started: t0() });
        assert!(matches!(
            t.on_backend(b'C', b"CREATE TABLE\0"),
            Event::Statement(Outcome { rows: None, .. })
        ));
        t.on_backend(b'T', b"");
        t.on_backend(b'D', b"");
        assert!(matches!(
            t.on_backend(b'C', b"SELECT 1\0"),
            Event::Statement(Outcome { rows: Some(1), .. })
        ));
        assert_eq!(t.len(), 1);
        t.on_backend(b'Z', b"I");
        assert!(t.is_idle());
    }

    #[test]
    fn unexpected_answers_do_not_panic() {
        let mut t = Tracker::new();
        for tag in *b"Z123nTCIsEVDGHdc" {
            let _ = t.on_backend(tag, b"");
        }
        assert!(t.is_idle());
    }
}
