//! `pgcloak audit verify`: recompute every hash, check seq continuity and linkage, and check each
//! signed checkpoint against the chain, with only the Ed25519 public key.
//!
//! # Guarantee
//! Any edit, deletion, insertion or reordering of records up to the last signed checkpoint is
//! detected: hashes chain every record to the previous one, and a checkpoint signs the chain
//! hash at its seq, which nobody without the signing key can re-create. Records after the last
//! checkpoint are protected by the chain only (anyone able to write the file can rewrite them
//! consistently); the report says how many there are. Cutting records off the *end* (together
//! with the checkpoints covering them) leaves a shorter but valid chain: it can only be noticed
//! against something the auditor knows, so the report gives the last signed checkpoint seq to
//! compare, and [`VerifyOptions::expect_checkpoint`] turns "ends before checkpoint N" into an
//! error. In PostgreSQL, checkpoints live in their own table, so deleting the last events while
//! their checkpoints remain is detected as well.
//!
//! A chain must start at seq 1 with `prev_hash` = 64 zeros, unless
//! [`VerifyOptions::require_genesis`] is false: then the first record's `prev_hash` is taken as
//! given (a rotated file verified on its own, or a table whose old rows were archived).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::canonical::{self, Record, GENESIS};
use crate::config::PgSinkConfig;
use crate::error::AuditError;
use crate::event::{AuditEvent, Checkpoint};
use crate::signer::verify_signature;

/// Options for a verification run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The chain must begin at seq 1 from the genesis hash (default true).
    pub require_genesis: bool,
    /// Fail unless a signed checkpoint at or after this seq is present (what the auditor saw
    /// last time, or what another sink holds): detects truncation at the end.
    pub expect_checkpoint: Option<u64>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            require_genesis: true,
            expect_checkpoint: None,
        }
    }
}

/// An intact chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The files read, in order (empty for PostgreSQL).
    pub files: Vec<PathBuf>,
    pub events: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_checkpoint_seq: Option<u64>,
    /// Events after the last checkpoint (chain-protected only, not signed).
    pub unsigned_tail: u64,
}

impl VerifyReport {
    /// One line for the CLI.
    pub fn summary(&self) -> String {
        match (self.first_seq, self.last_seq) {
            (Some(first), Some(last)) => format!(
                "audit chain intact: {} events (seq {first}..{last}), {} signed checkpoints, signed up to seq {}",
                self.events,
                self.checkpoints,
                self.last_checkpoint_seq
                    .map_or_else(|| "- (none)".to_string(), |s| s.to_string())
            ),
            _ => "audit chain intact: no records".to_string(),
        }
    }

    /// What the auditor should know although nothing is broken.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.events == 0 {
            w.push("there are no audit records at all".to_string());
        }
        if let Some(first) = self.first_seq.filter(|&s| s > 1) {
            w.push(format!(
                "the chain starts at seq {first}, not 1: records before it are not covered here"
            ));
        }
        if self.unsigned_tail > 0 {
            let last = self.last_seq.unwrap_or(0);
            w.push(format!(
                "{} events after the last signed checkpoint (seq {}..{last}) are protected by the hash chain only, not signed: whoever can write the log could have changed or removed them",
                self.unsigned_tail,
                last + 1 - self.unsigned_tail
            ));
        }
        if self.events > 0 {
            w.push(match self.last_checkpoint_seq {
                Some(s) => format!(
                    "truncation at the end cannot be seen from the log alone: check that {s} is not below the last signed checkpoint you know of"
                ),
                None => "no signed checkpoint: nothing in this log is signed".to_string(),
            });
        }
        w
    }
}

/// The first broken record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct VerifyError {
    /// The seq of the first bad record (or the first missing one), when known.
    pub seq: Option<u64>,
    /// 1-based line number in `file`.
    pub line: Option<u64>,
    pub file: Option<PathBuf>,
    /// PostgreSQL: the instance whose chain is broken.
    pub instance: Option<String>,
    pub reason: String,
}

impl VerifyError {
    fn describe(&self) -> String {
        let mut s = String::from("audit chain broken");
        if let Some(seq) = self.seq {
            s.push_str(&format!(" at seq {seq}"));
        }
        match (&self.file, self.line) {
            (Some(f), Some(l)) => s.push_str(&format!(" ({}:{l})", f.display())),
            (Some(f), None) => s.push_str(&format!(" ({})", f.display())),
            (None, Some(l)) => s.push_str(&format!(" (line {l})")),
            (None, None) => {}
        }
        if let Some(i) = &self.instance {
            s.push_str(&format!(" of instance {i:?}"));
        }
        s.push_str(": ");
        s.push_str(&self.reason);
        s
    }
}

/// The verification state machine, fed records in order.
struct Chain<'k> {
    pk: &'k [u8; 32],
    require_genesis: bool,
    last: Option<(u64, String)>,
    report: VerifyReport,
}

/// A failed check: the reason, and the seq to blame.
type Bad = (Option<u64>, String);

impl<'k> Chain<'k> {
    fn new(pk: &'k [u8; 32], opts: &VerifyOptions) -> Chain<'k> {
        Chain {
            pk,
            require_genesis: opts.require_genesis,
            last: None,
            report: VerifyReport::default(),
        }
    }

    /// `next_seq` peeks at the following record to tell a reorder from a deletion.
    fn event(
        &mut self,
        ev: &AuditEvent,
        line: Option<&str>,
        next_seq: impl FnOnce() -> Option<u64>,
    ) -> Result<(), Bad> {
        let s = ev.seq;
        let canon = canonical::canonical(ev);
        if canonical::chain_hash(&ev.prev_hash, &canon) != ev.hash {
            return Err((Some(s), "hash mismatch (record edited)".into()));
        }
        if let Some(line) = line {
            if canonical::event_line(ev) != line {
                return Err((
                    Some(s),
                    "record is not in the form pgcloak writes (edited by hand)".into(),
                ));
            }
        }
        match &self.last {
            None => {
                if s == 0 {
                    return Err((Some(s), "seq 0 is not a valid record number".into()));
                }
                if s == 1 && ev.prev_hash != GENESIS {
                    return Err((
                        Some(s),
                        "seq 1 does not start from the genesis hash (records inserted before it)"
                            .into(),
                    ));
                }
                if s > 1 && self.require_genesis {
                    return Err((
                        Some(1),
                        format!("the chain starts at seq {s}, not 1 (records 1..{} deleted, or this is a later segment: verify all files together)", s - 1),
                    ));
                }
                self.report.first_seq = Some(s);
            }
            Some((last, last_hash)) => {
                let last = *last;
                if s == last + 1 {
                    if &ev.prev_hash != last_hash {
                        return Err((
                            Some(s),
                            format!("prev_hash does not match the hash of seq {last} (record inserted or replaced)"),
                        ));
                    }
                } else if s > last + 1 {
                    let missing = last + 1;
                    let why = if next_seq() == Some(missing) {
                        "records reordered".to_string()
                    } else if s == missing + 1 {
                        format!("record {missing} deleted")
                    } else {
                        format!("records {missing}..{} deleted", s - 1)
                    };
                    return Err((Some(s), format!("seq {s} follows {last} ({why})")));
                } else if s == last {
                    return Err((
                        Some(s),
                        format!("seq {s} appears twice (record duplicated or inserted)"),
                    ));
                } else {
                    return Err((
                        Some(s),
                        format!("seq {s} follows {last} (records reordered)"),
                    ));
                }
            }
        }
        self.last = Some((s, ev.hash.clone()));
        self.report.events += 1;
        self.report.last_seq = Some(s);
        self.report.unsigned_tail += 1;
        Ok(())
    }

    fn checkpoint(&mut self, cp: &Checkpoint, line: Option<&str>) -> Result<(), Bad> {
        let msg = canonical::checkpoint_message(&cp.instance, cp.seq, &cp.hash, &cp.ts);
        if !verify_signature(self.pk, &msg, &cp.signature) {
            return Err((
                Some(cp.seq),
                format!("checkpoint signature invalid for seq {} (forged, edited, or signed with another key)", cp.seq),
            ));
        }
        if let Some(line) = line {
            if canonical::checkpoint_line(cp) != line {
                return Err((
                    Some(cp.seq),
                    "checkpoint is not in the form pgcloak writes (edited by hand)".into(),
                ));
            }
        }
        match &self.last {
            None => {
                return Err((
                    Some(cp.seq),
                    format!(
                        "checkpoint for seq {} but no record before it (records deleted)",
                        cp.seq
                    ),
                ))
            }
            Some((last, hash)) => {
                if cp.seq > *last {
                    let missing = if cp.seq == last + 1 {
                        format!("record {} deleted", cp.seq)
                    } else {
                        format!("records {}..{} deleted", last + 1, cp.seq)
                    };
                    return Err((
                        Some(last + 1),
                        format!(
                            "checkpoint for seq {} but the chain is only at seq {last} ({missing})",
                            cp.seq
                        ),
                    ));
                }
                if cp.seq < *last {
                    return Err((
                        Some(cp.seq),
                        format!("checkpoint for seq {} comes after seq {last} (records reordered or inserted)", cp.seq),
                    ));
                }
                if &cp.hash != hash {
                    return Err((
                        Some(cp.seq),
                        format!("the signed hash at seq {} does not match the chain (records up to it altered)", cp.seq),
                    ));
                }
            }
        }
        self.report.checkpoints += 1;
        self.report.last_checkpoint_seq = Some(cp.seq);
        self.report.unsigned_tail = 0;
        Ok(())
    }

    fn finish(self, opts: &VerifyOptions) -> Result<VerifyReport, Bad> {
        if let Some(expect) = opts.expect_checkpoint {
            if self.report.last_checkpoint_seq.is_none_or(|s| s < expect) {
                let have = self
                    .report
                    .last_checkpoint_seq
                    .map_or_else(|| "none".to_string(), |s| format!("seq {s}"));
                return Err((
                    Some(self.report.last_seq.map_or(1, |s| s + 1)),
                    format!("the log ends before checkpoint {expect}; its last signed checkpoint is {have} (truncated)"),
                ));
            }
        }
        Ok(self.report)
    }
}

/// Reads lines with their numbers, telling whether each ended with a newline.
struct Lines<R> {
    reader: R,
    n: u64,
}

impl<R: BufRead> Lines<R> {
    fn next_line(&mut self) -> std::io::Result<Option<(u64, String, bool)>> {
        let mut buf = Vec::new();
        if self.reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(None);
        }
        self.n += 1;
        let complete = buf.last() == Some(&b'\n');
        if complete {
            buf.pop();
        }
        let s = String::from_utf8(buf).unwrap_or_else(|e| {
            // Keep going so the line is reported as unreadable below.
            String::from_utf8_lossy(e.as_bytes()).into_owned() + "\u{0}"
        });
        Ok(Some((self.n, s, complete)))
    }
}

fn verify_reader<R: BufRead>(
    chain: &mut Chain<'_>,
    reader: R,
    file: Option<&Path>,
) -> Result<(), VerifyError> {
    let err = |seq: Option<u64>, line: Option<u64>, reason: String| VerifyError {
        seq,
        line,
        file: file.map(Path::to_path_buf),
        instance: None,
        reason,
    };
    let io = |e: std::io::Error| err(None, None, format!("cannot read: {e}"));
    let mut lines = Lines { reader, n: 0 };
    let mut pending: Option<(u64, String, bool)> = lines.next_line().map_err(io)?;
    while let Some((n, text, complete)) = pending.take() {
        let next = lines.next_line().map_err(io)?;
        let expected_next = chain.last.as_ref().map_or(0, |(s, _)| s + 1);
        if !complete {
            return Err(err(
                Some(expected_next.max(1)),
                Some(n),
                "the log ends in the middle of a record (truncated, or still being written)".into(),
            ));
        }
        if text.contains('\0') || text.trim().is_empty() {
            return Err(err(
                Some(expected_next.max(1)),
                Some(n),
                "line is not an audit record (inserted or damaged)".into(),
            ));
        }
        let rec = canonical::parse_line(&text).map_err(|r| {
            err(
                Some(expected_next.max(1)),
                Some(n),
                format!("{r} (record edited or inserted)"),
            )
        })?;
        let r = match &rec {
            Record::Event(ev) => chain.event(ev, Some(&text), || {
                next.as_ref()
                    .and_then(|(_, t, _)| match canonical::parse_line(t) {
                        Ok(Record::Event(e)) => Some(e.seq),
                        _ => None,
                    })
            }),
            Record::Checkpoint(cp) => chain.checkpoint(cp, Some(&text)),
        };
        r.map_err(|(seq, reason)| err(seq, Some(n), reason))?;
        pending = next;
    }
    Ok(())
}

/// Verifies one stream of JSON lines (a file, or NATS messages joined by newlines).
pub fn verify_lines<R: BufRead>(
    reader: R,
    public_key: &[u8; 32],
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let mut chain = Chain::new(public_key, opts);
    verify_reader(&mut chain, reader, None)?;
    chain.finish(opts).map_err(|(seq, reason)| VerifyError {
        seq,
        line: None,
        file: None,
        instance: None,
        reason,
    })
}

/// Verifies several files as one chain, in the order given.
pub fn verify_files(
    files: &[PathBuf],
    public_key: &[u8; 32],
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let mut chain = Chain::new(public_key, opts);
    for f in files {
        let file = std::fs::File::open(f).map_err(|e| VerifyError {
            seq: None,
            line: None,
            file: Some(f.clone()),
            instance: None,
            reason: format!("cannot open: {e}"),
        })?;
        verify_reader(
            &mut chain,
            std::io::BufReader::with_capacity(1 << 16, file),
            Some(f),
        )?;
    }
    let mut report = chain.finish(opts).map_err(|(seq, reason)| VerifyError {
        seq,
        line: None,
        file: files.last().cloned(),
        instance: None,
        reason,
    })?;
    report.files = files.to_vec();
    Ok(report)
}

/// Verifies one file on its own.
pub fn verify_file(
    path: &Path,
    public_key: &[u8; 32],
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    verify_files(&[path.to_path_buf()], public_key, opts)
}

/// Verifies the whole chain written at `path`: its rotated siblings (`<path>.<seq>`, oldest
/// first) and then `path` itself. This is what `pgcloak audit verify --file F` should call.
pub fn verify_path(
    path: &Path,
    public_key: &[u8; 32],
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let files = crate::sink::file::chain_files(path);
    if files.is_empty() {
        return Err(VerifyError {
            seq: None,
            line: None,
            file: Some(path.to_path_buf()),
            instance: None,
            reason: "no such audit file (check [audit] file in the config)".into(),
        });
    }
    verify_files(&files, public_key, opts)
}

/// The result for one instance's chain in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceVerify {
    pub instance: String,
    pub result: Result<VerifyReport, VerifyError>,
}

/// Verifies every instance's chain in `pgcloak_audit.statements` against
/// `pgcloak_audit.checkpoints`. `Err` only when the database cannot be read; broken chains are
/// in the per-instance results.
pub async fn verify_postgres(
    cfg: &PgSinkConfig,
    public_key: &[u8; 32],
    opts: &VerifyOptions,
) -> Result<Vec<InstanceVerify>, AuditError> {
    use crate::sink::postgres::{
        connect, describe_pg_error, row_to_checkpoint, row_to_event, CHECKPOINT_COLUMNS,
        EVENT_COLUMNS,
    };
    use futures_util::TryStreamExt;

    let err = |action, reason| AuditError::Postgres {
        target: cfg.target(),
        action,
        reason,
    };
    let client = connect(cfg).await.map_err(|r| err("connecting", r))?;
    let instances: Vec<String> = client
        .query(
            "SELECT instance FROM pgcloak_audit.statements UNION SELECT instance FROM pgcloak_audit.checkpoints ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| err("listing audit instances (does pgcloak_audit.statements exist?)", describe_pg_error(&e)))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for instance in instances {
        let cps_rows = client
            .query(
                &format!("SELECT {CHECKPOINT_COLUMNS} FROM pgcloak_audit.checkpoints WHERE instance = $1 ORDER BY seq"),
                &[&instance],
            )
            .await
            .map_err(|e| err("reading checkpoints", describe_pg_error(&e)))?;
        let stmt = format!(
            "SELECT {EVENT_COLUMNS} FROM pgcloak_audit.statements WHERE instance = $1 ORDER BY seq"
        );
        let rows = client
            .query_raw(&stmt, [&instance])
            .await
            .map_err(|e| err("reading audit records", describe_pg_error(&e)))?;
        let mut rows = std::pin::pin!(rows);

        let mut chain = Chain::new(public_key, opts);
        let mut cps = cps_rows.iter().peekable();
        let mut fail: Option<Bad> = None;
        let mut current: Option<AuditEvent> = None;
        let mut next_row = rows
            .try_next()
            .await
            .map_err(|e| err("reading audit records", describe_pg_error(&e)))?;
        'outer: loop {
            let Some(row) = next_row.take() else { break };
            let ev = match row_to_event(&row) {
                Ok(ev) => ev,
                Err(r) => {
                    let seq = row.try_get::<_, i64>(0).ok().map(|s| s as u64);
                    fail = Some((seq, format!("unreadable row: {r} (edited)")));
                    break;
                }
            };
            next_row = rows
                .try_next()
                .await
                .map_err(|e| err("reading audit records", describe_pg_error(&e)))?;
            // Checkpoints for seqs before this event belong before it.
            while let Some(cp_row) = cps.peek() {
                let cp = match row_to_checkpoint(cp_row) {
                    Ok(cp) => cp,
                    Err(r) => {
                        fail = Some((None, format!("unreadable checkpoint row: {r}")));
                        break 'outer;
                    }
                };
                if cp.seq >= ev.seq {
                    break;
                }
                cps.next();
                if let Err(b) = chain.checkpoint(&cp, None) {
                    fail = Some(b);
                    break 'outer;
                }
            }
            let peek = next_row
                .as_ref()
                .and_then(|r| r.try_get::<_, i64>(0).ok())
                .map(|s| s as u64);
            if let Err(b) = chain.event(&ev, None, || peek) {
                fail = Some(b);
                break;
            }
            current = Some(ev);
        }
        if fail.is_none() {
            for cp_row in cps {
                match row_to_checkpoint(cp_row) {
                    Ok(cp) => {
                        if let Err(b) = chain.checkpoint(&cp, None) {
                            fail = Some(b);
                            break;
                        }
                    }
                    Err(r) => {
                        fail = Some((None, format!("unreadable checkpoint row: {r}")));
                        break;
                    }
                }
            }
        }
        let _ = current;
        let result = match fail {
            Some(b) => Err(b),
            None => chain.finish(opts),
        }
        .map_err(|(seq, reason)| VerifyError {
            seq,
            line: None,
            file: None,
            instance: Some(instance.clone()),
            reason,
        });
        out.push(InstanceVerify { instance, result });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ColumnAccess, Decision, Kind};
    use crate::signer::{encode_signature, CheckpointSigner, RingSigner};

    /// Writes a chain of `n` events with a checkpoint after every `every`, like the writer.
    fn make_chain(n: u64, every: u64, signer: &RingSigner) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        let mut lines = Vec::new();
        for seq in 1..=n {
            let mut ev = AuditEvent {
                seq,
                ts: format!("2026-01-01T00:00:{:02}.000000Z", seq % 60),
                instance: "node-1".into(),
                session: format!("s{}", seq % 3),
                client: "127.0.0.1:40000".into(),
                user: if seq % 2 == 0 { "alice" } else { "bob" }.into(),
                role: Some("app".into()),
                database: "shop".into(),
                application: "psql".into(),
                kind: Kind::Select,
                statement: Some(format!("SELECT phone FROM customers WHERE id = ${seq}")),
                fingerprint: Some("f1".into()),
                tables: vec!["public.customers".into()],
                columns: vec![ColumnAccess {
                    name: "public.customers.phone".into(),
                    class: "confidential".into(),
                    access: "plaintext".into(),
                }],
                decision: Decision::Allow,
                reason: None,
                rows: Some(1),
                duration_us: Some(10),
                sqlstate: Some("00000".into()),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            lines.push(canonical::seal(&mut ev));
            prev = ev.hash.clone();
            if seq % every == 0 {
                let ts = "2026-01-01T00:01:00.000000Z".to_string();
                let msg = canonical::checkpoint_message("node-1", seq, &prev, &ts);
                lines.push(canonical::checkpoint_line(&Checkpoint {
                    seq,
                    hash: prev.clone(),
                    ts,
                    signature: encode_signature(&signer.sign(&msg)),
                    instance: "node-1".into(),
                }));
            }
        }
        lines
    }

    fn run(lines: &[String], pk: &[u8; 32]) -> Result<VerifyReport, VerifyError> {
        let mut text = lines.join("\n");
        text.push('\n');
        verify_lines(text.as_bytes(), pk, &VerifyOptions::default())
    }

    /// Index of the event line with this seq.
    fn pos(lines: &[String], seq: u64) -> usize {
        let needle = format!("{{\"seq\":{seq},\"ts\"");
        lines.iter().position(|l| l.starts_with(&needle)).unwrap()
    }

    #[test]
    fn intact_chain_verifies_with_counts_and_warning() {
        let s = RingSigner::from_seed(&[1; 32]);
        let lines = make_chain(25, 10, &s);
        let r = run(&lines, &s.public_key()).unwrap();
        assert_eq!((r.events, r.checkpoints), (25, 2));
        assert_eq!(r.last_checkpoint_seq, Some(20));
        assert_eq!(r.unsigned_tail, 5);
        assert!(r
            .warnings()
            .iter()
            .any(|w| w.contains("seq 21..25") && w.contains("not signed")));
        assert!(r.summary().contains("25 events"));
    }

    #[test]
    fn edited_field_is_a_hash_mismatch() {
        let s = RingSigner::from_seed(&[1; 32]);
        let mut lines = make_chain(30, 10, &s);
        let i = pos(&lines, 12);
        lines[i] = lines[i].replace("\"rows\":1", "\"rows\":0");
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert_eq!(e.seq, Some(12));
        assert_eq!(e.line, Some(i as u64 + 1));
        assert!(e.reason.contains("hash mismatch (record edited)"), "{e}");
    }

    #[test]
    fn edit_with_recomputed_hashes_is_caught_by_the_checkpoint() {
        // An attacker without the key rewrites seq 5 and re-chains everything after it.
        let s = RingSigner::from_seed(&[1; 32]);
        let lines = make_chain(10, 10, &s);
        let mut prev = GENESIS.to_string();
        let mut forged = Vec::new();
        for l in &lines {
            match canonical::parse_line(l).unwrap() {
                Record::Event(mut ev) => {
                    if ev.seq == 5 {
                        ev.user = "mallory".into();
                    }
                    ev.prev_hash = prev.clone();
                    forged.push(canonical::seal(&mut ev));
                    prev = ev.hash;
                }
                Record::Checkpoint(_) => forged.push(l.clone()),
            }
        }
        let e = run(&forged, &s.public_key()).unwrap_err();
        assert_eq!(e.seq, Some(10));
        assert!(e.reason.contains("does not match the chain"), "{e}");
    }

    #[test]
    fn deleted_line_is_named() {
        let s = RingSigner::from_seed(&[1; 32]);
        let mut lines = make_chain(50, 10, &s);
        lines.remove(pos(&lines, 38));
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert_eq!(e.seq, Some(39));
        assert!(
            e.reason.contains("seq 39 follows 37 (record 38 deleted)"),
            "{e}"
        );
        // Several in a row.
        let mut lines = make_chain(50, 10, &s);
        lines.drain(pos(&lines, 42)..pos(&lines, 45));
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert!(
            e.reason
                .contains("seq 45 follows 41 (records 42..44 deleted)"),
            "{e}"
        );
        // The record right before a checkpoint: the checkpoint names it.
        let mut lines = make_chain(50, 10, &s);
        lines.remove(pos(&lines, 40));
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert_eq!(e.seq, Some(40));
        assert!(
            e.reason.contains(
                "checkpoint for seq 40 but the chain is only at seq 39 (record 40 deleted)"
            ),
            "{e}"
        );
    }

    #[test]
    fn swapped_lines_are_reordering() {
        let s = RingSigner::from_seed(&[1; 32]);
        let mut lines = make_chain(30, 10, &s);
        let (a, b) = (pos(&lines, 14), pos(&lines, 15));
        lines.swap(a, b);
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert_eq!(e.seq, Some(15));
        assert!(e.reason.contains("records reordered"), "{e}");
    }

    #[test]
    fn inserted_line_is_caught() {
        let s = RingSigner::from_seed(&[1; 32]);
        // A copy of a line inserted elsewhere.
        let mut lines = make_chain(30, 10, &s);
        let copy = lines[pos(&lines, 3)].clone();
        lines.insert(pos(&lines, 7), copy);
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert!(
            e.reason.contains("seq 3 follows 6 (records reordered)"),
            "{e}"
        );
        // A well-formed forged record with a valid hash, linked to seq 6.
        let mut lines = make_chain(30, 10, &s);
        let Record::Event(mut ev) = canonical::parse_line(&lines[pos(&lines, 7)]).unwrap() else {
            panic!()
        };
        ev.user = "ghost".into();
        let forged = canonical::seal(&mut ev);
        lines.insert(pos(&lines, 7), forged);
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert_eq!(e.seq, Some(7));
        assert!(e.reason.contains("appears twice"), "{e}");
        // Garbage.
        let mut lines = make_chain(5, 10, &s);
        lines.insert(2, "{\"hello\":1}".into());
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert_eq!((e.seq, e.line), (Some(3), Some(3)));
    }

    #[test]
    fn truncation_before_a_checkpoint() {
        let s = RingSigner::from_seed(&[1; 32]);
        let lines = make_chain(30, 10, &s);
        // Cut in the middle of a line: always detected.
        let mut text = lines.join("\n");
        text.truncate(text.len() - 40);
        let e =
            verify_lines(text.as_bytes(), &s.public_key(), &VerifyOptions::default()).unwrap_err();
        assert!(e.reason.contains("truncated"), "{e}");
        // Cut cleanly before the checkpoint at 30: valid prefix, detected against what the
        // auditor knows, and the report says what is signed.
        let cut = &lines[..pos(&lines, 25)];
        let r = run(cut, &s.public_key()).unwrap();
        assert_eq!(r.last_checkpoint_seq, Some(20));
        let opts = VerifyOptions {
            expect_checkpoint: Some(30),
            ..VerifyOptions::default()
        };
        let mut text = cut.join("\n");
        text.push('\n');
        let e = verify_lines(text.as_bytes(), &s.public_key(), &opts).unwrap_err();
        assert!(e.reason.contains("ends before checkpoint 30"), "{e}");
        assert!(e.reason.contains("seq 20 (truncated)"), "{e}");
        assert_eq!(e.seq, Some(25));
        // Removing the first records is a deletion too.
        let e = run(&lines[pos(&lines, 4)..], &s.public_key()).unwrap_err();
        assert!(e.reason.contains("records 1..3 deleted"), "{e}");
    }

    #[test]
    fn forged_checkpoint_signature() {
        let s = RingSigner::from_seed(&[1; 32]);
        let mallory = RingSigner::from_seed(&[2; 32]);
        let lines = make_chain(20, 10, &mallory);
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert_eq!(e.seq, Some(10));
        assert!(e.reason.contains("checkpoint signature invalid"), "{e}");
        // Right key, but the checkpoint's seq edited.
        let mut lines = make_chain(20, 10, &s);
        let i = lines
            .iter()
            .position(|l| l.starts_with("{\"checkpoint\""))
            .unwrap();
        lines[i] = lines[i].replace("\"seq\":10", "\"seq\":9");
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert!(e.reason.contains("checkpoint signature invalid"), "{e}");
    }

    #[test]
    fn reformatted_line_is_rejected() {
        let s = RingSigner::from_seed(&[1; 32]);
        let mut lines = make_chain(5, 10, &s);
        lines[2] = lines[2].replacen("{\"seq\"", "{ \"seq\"", 1);
        let e = run(&lines, &s.public_key()).unwrap_err();
        assert!(e.reason.contains("form pgcloak writes"), "{e}");
    }

    #[test]
    fn later_segment_verifies_when_allowed() {
        let s = RingSigner::from_seed(&[1; 32]);
        let lines = make_chain(30, 10, &s);
        let seg = &lines[pos(&lines, 11)..];
        let mut text = seg.join("\n");
        text.push('\n');
        let opts = VerifyOptions {
            require_genesis: false,
            ..VerifyOptions::default()
        };
        let r = verify_lines(text.as_bytes(), &s.public_key(), &opts).unwrap();
        assert_eq!((r.first_seq, r.events), (Some(11), 20));
        assert!(r.warnings().iter().any(|w| w.contains("starts at seq 11")));
    }
}
