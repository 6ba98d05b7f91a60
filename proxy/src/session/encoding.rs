//! Whether the client's text is UTF-8. pgcloak reads statement text, literals and text-format
//! parameters as UTF-8 and sends decrypted text as UTF-8, so a session whose `client_encoding` is
//! something else gets its statements on protected tables refused (with the fix in the message)
//! instead of values encrypted or shown in the wrong encoding.
//!
//! Two views, both must say UTF-8:
//! - the server's, from ParameterStatus (authoritative, but it arrives after the statement that
//!   changed it ran — a pipelined statement behind a `SET client_encoding` is read before that);
//! - pgcloak's own, changed as soon as a statement that may change the encoding goes to the server:
//!   `SET client_encoding` / `SET NAMES` to UTF-8 keep it, anything else (another encoding, DEFAULT,
//!   RESET, `set_config`, code that names `client_encoding`) clears it.
//!
//! When the next statement comes and nothing is in flight (every statement sent has its
//! ReadyForQuery, nothing is queued), pgcloak's view is set to the server's: a `SET` that failed or
//! was rolled back does not leave the session refused.

use std::sync::atomic::{AtomicBool, Ordering};

use pgcloak_policy::Lexed;

use super::context::Refusal;

/// The refusal of a statement on a protected table in a session that is not UTF-8, naming the fix.
pub fn refusal() -> Refusal {
    Refusal {
        sqlstate: "0A000",
        message: "pgcloak: statements on protected tables need client_encoding UTF8 (pgcloak encrypts and decrypts text as UTF-8); run SET client_encoding TO 'UTF8' or connect with PGCLIENTENCODING=UTF8".into(),
    }
}

#[derive(Debug)]
pub struct ClientEncoding {
    server: AtomicBool,
    ours: AtomicBool,
}

impl ClientEncoding {
    /// Starts as `utf8`; the server's ParameterStatus during startup ([`ClientEncoding::reported`])
    /// then says what the session really is.
    pub fn new(utf8: bool) -> ClientEncoding {
        ClientEncoding {
            server: AtomicBool::new(utf8),
            ours: AtomicBool::new(utf8),
        }
    }

    /// Whether the client's text may be read as UTF-8 now.
    pub fn is_utf8(&self) -> bool {
        self.ours.load(Ordering::Relaxed) && self.server.load(Ordering::Relaxed)
    }

    /// A ParameterStatus from the server.
    pub fn reported(&self, name: &[u8], value: &[u8]) {
        if name == b"client_encoding" {
            self.server.store(is_utf8_name(value), Ordering::Relaxed);
        }
    }

    /// Nothing is in flight: the server's view is the truth.
    pub fn settle(&self) {
        self.ours
            .store(self.server.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A statement string on its way to the server.
    pub fn sending(&self, sql: &str, lexed: &Lexed) {
        if !mentions(sql, lexed) {
            return;
        }
        for s in &lexed.statements {
            let words: Vec<&str> = lexed.identifiers.slice(s.identifiers.clone()).collect();
            let setting = match words.as_slice() {
                ["set", "client_encoding" | "names", ..]
                | ["set", "session" | "local", "client_encoding" | "names", ..] => true,
                _ if words.contains(&"client_encoding")
                    || (words.contains(&"set_config")
                        && sql.get(s.range.clone()).is_some_and(|t| {
                            t.to_ascii_lowercase().contains("client_encoding")
                        })) =>
                {
                    // RESET, set_config, code: whatever it does, read nothing as UTF-8 until settled.
                    self.ours.store(false, Ordering::Relaxed);
                    continue;
                }
                _ => false,
            };
            if setting {
                let text = sql.get(s.range.clone()).unwrap_or("");
                if !sets_utf8(text) {
                    self.ours.store(false, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Whether a statement string may change the client encoding: it names `client_encoding` or
/// `NAMES`, or calls `set_config` with `client_encoding` anywhere in its text.
pub fn mentions(sql: &str, lexed: &Lexed) -> bool {
    lexed.identifiers.contains("client_encoding")
        || lexed.identifiers.contains("names")
        || (lexed.identifiers.contains("set_config")
            && sql.to_ascii_lowercase().contains("client_encoding"))
}

/// Whether a `SET client_encoding|NAMES ...` statement's value is UTF-8 (its last word).
fn sets_utf8(stmt: &str) -> bool {
    let value = stmt
        .trim_end()
        .rsplit(|c: char| c.is_whitespace() || c == '=')
        .next()
        .unwrap_or("");
    is_utf8_name(value.as_bytes())
}

/// PostgreSQL's names for UTF-8, as a value may spell them (quotes, case, `-`/`_`).
fn is_utf8_name(v: &[u8]) -> bool {
    let mut norm = Vec::with_capacity(v.len());
    for &c in v {
        match c {
            b'\'' | b'"' | b'-' | b'_' => {}
            c => norm.push(c.to_ascii_lowercase()),
        }
    }
    norm == b"utf8" || norm == b"unicode"
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcloak_policy::lex;

    fn after(start: bool, sql: &str) -> bool {
        let e = ClientEncoding::new(start);
        e.sending(sql, &lex(sql));
        e.is_utf8()
    }

    #[test]
    fn statements_that_change_the_encoding() {
        for sql in [
            "SELECT 1",
            "SET client_encoding TO 'UTF8'",
            "SET client_encoding = utf8",
            "set session client_encoding to \"UTF-8\"",
            "SET NAMES 'unicode'",
            "SELECT names FROM t",
            "SET search_path = public; SELECT 1",
            "SELECT set_config('app.tenant', '7', true)",
        ] {
            assert!(after(true, sql), "{sql}");
        }
        for sql in [
            "SET client_encoding TO 'LATIN1'",
            "SET client_encoding = DEFAULT",
            "SET LOCAL client_encoding TO sql_ascii",
            "SET NAMES 'WIN1252'",
            "RESET client_encoding",
            "SELECT set_config('client_encoding', 'UTF8', false)",
            "SELECT 1; SET client_encoding TO latin1; SELECT 2",
        ] {
            assert!(!after(true, sql), "{sql}");
        }
        assert!(!after(false, "SET client_encoding TO 'UTF8'"));
    }

    #[test]
    fn server_reports_and_settling() {
        let e = ClientEncoding::new(true);
        e.reported(b"client_encoding", b"LATIN1");
        assert!(!e.is_utf8());
        e.reported(b"DateStyle", b"ISO");
        e.reported(b"client_encoding", b"UTF8");
        assert!(e.is_utf8());
        // A SET to LATIN1 that failed on the server: refused until nothing is in flight.
        let sql = "SET client_encoding TO 'LATIN1'";
        e.sending(sql, &lex(sql));
        assert!(!e.is_utf8());
        e.settle();
        assert!(e.is_utf8());
        // Started in LATIN1, set to UTF-8: usable once the server says so.
        let e = ClientEncoding::new(false);
        let sql = "SET client_encoding TO 'UTF8'";
        e.sending(sql, &lex(sql));
        assert!(!e.is_utf8());
        e.reported(b"client_encoding", b"UTF8");
        e.settle();
        assert!(e.is_utf8());
    }
}
