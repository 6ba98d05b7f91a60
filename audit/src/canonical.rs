//! The byte form of records: the JSON line written to every sink, the canonical form that is
//! hashed, and the message a checkpoint signs.
//!
//! # Format (normative; verifiers depend on it byte for byte)
//!
//! An event line is one compact JSON object (no spaces), fields in exactly this order:
//! `seq, ts, instance, session, client, user, role, database, application, kind, statement,
//! fingerprint, tables, columns, decision, reason, rows, duration_us, sqlstate, prev_hash, hash`;
//! each `columns` entry is `{"name":..,"class":..,"access":..}` in that order. Absent optional
//! values are `null`; numbers are plain decimal integers. Strings are escaped minimally:
//! `"` → `\"`, `\` → `\\`, U+0008/0009/000A/000C/000D → `\b \t \n \f \r`, other characters below
//! U+0020 → `\u00xx` (lowercase hex); everything else, including non-ASCII, is written as UTF-8.
//!
//! The **canonical form** of an event is that line without its hash: the same object ending
//! after `"prev_hash":"…"` with `}`. Then
//! `hash = lowercase_hex(SHA-256(prev_hash as 64 ASCII hex chars ‖ canonical))`, and the line
//! is the canonical form with `,"hash":"<hash>"` inserted before the closing brace. The first
//! event of a chain has `prev_hash` = [`GENESIS`] (64 zeros).
//!
//! A checkpoint line is
//! `{"checkpoint":{"seq":N,"hash":"…","ts":"…","signature":"…","instance":"…"}}` where the
//! signature is standard padded base64 of Ed25519 over [`checkpoint_message`]:
//! `pgcloak-audit-checkpoint\0{instance}\0{seq}\0{hash}\0{ts}`.

use ring::digest;

use crate::event::{AuditEvent, Checkpoint, ColumnAccess, Decision, Kind, NewEvent, What, Who};

/// `prev_hash` of the first event of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain-separation prefix of the signed checkpoint message.
pub const CHECKPOINT_DOMAIN: &str = "pgcloak-audit-checkpoint";

/// One line of an audit file or message of the NATS stream, parsed.
// Records are handled one at a time (and `Entry` lives behind an `Arc`): boxing the large
// variant would only add an allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Event(AuditEvent),
    Checkpoint(Checkpoint),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    checkpoint: Checkpoint,
}

/// Bytes that need escaping: control characters, `"` and `\`.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` as a JSON string literal with the escaping documented above.
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[b as usize] {
            continue;
        }
        // Byte positions at ASCII bytes are always char boundaries.
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x09 => out.push_str("\\t"),
            0x0a => out.push_str("\\n"),
            0x0c => out.push_str("\\f"),
            0x0d => out.push_str("\\r"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn write_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => write_json_str(out, s),
        None => out.push_str("null"),
    }
}

fn write_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn write_opt_u64(out: &mut String, n: Option<u64>) {
    match n {
        Some(n) => write_u64(out, n),
        None => out.push_str("null"),
    }
}

fn write_columns(out: &mut String, cols: &[ColumnAccess]) {
    out.push('[');
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        write_json_str(out, &c.name);
        out.push_str(",\"class\":");
        write_json_str(out, &c.class);
        out.push_str(",\"access\":");
        write_json_str(out, &c.access);
        out.push('}');
    }
    out.push(']');
}

/// Appends the fields of [`Who`] in canonical order, each with its leading comma.
fn write_who_fields(
    out: &mut String,
    session: &str,
    client: &str,
    user: &str,
    role: Option<&str>,
    database: &str,
    application: &str,
) {
    out.push_str(",\"session\":");
    write_json_str(out, session);
    out.push_str(",\"client\":");
    write_json_str(out, client);
    out.push_str(",\"user\":");
    write_json_str(out, user);
    out.push_str(",\"role\":");
    write_opt_str(out, role);
    out.push_str(",\"database\":");
    write_json_str(out, database);
    out.push_str(",\"application\":");
    write_json_str(out, application);
}

/// The piece of the canonical form an [`crate::EventSource`] keeps.
pub(crate) fn write_who(out: &mut String, w: &Who) {
    write_who_fields(
        out,
        &w.session,
        &w.client,
        &w.user,
        w.role.as_deref(),
        &w.database,
        &w.application,
    );
}

/// Appends `kind` through `columns` in canonical order, with the leading comma.
fn write_what_fields(
    out: &mut String,
    kind: Kind,
    statement: Option<&str>,
    fingerprint: Option<&str>,
    tables: &[String],
    columns: &[ColumnAccess],
) {
    out.push_str(",\"kind\":\"");
    out.push_str(kind.as_str());
    out.push_str("\",\"statement\":");
    write_opt_str(out, statement);
    out.push_str(",\"fingerprint\":");
    write_opt_str(out, fingerprint);
    out.push_str(",\"tables\":[");
    for (i, t) in tables.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(out, t);
    }
    out.push_str("],\"columns\":");
    write_columns(out, columns);
}

/// The piece of the canonical form an [`crate::EventStatement`] keeps.
pub(crate) fn write_what(out: &mut String, w: &What) {
    write_what_fields(
        out,
        w.kind,
        w.statement.as_deref(),
        w.fingerprint.as_deref(),
        &w.tables,
        &w.columns,
    );
}

/// Appends `decision` through `sqlstate` and the key of `prev_hash` (`,"prev_hash":`).
fn write_outcome(
    out: &mut String,
    decision: Decision,
    reason: Option<&str>,
    rows: Option<u64>,
    duration_us: Option<u64>,
    sqlstate: Option<&str>,
) {
    out.push_str(",\"decision\":\"");
    out.push_str(decision.as_str());
    out.push_str("\",\"reason\":");
    write_opt_str(out, reason);
    out.push_str(",\"rows\":");
    write_opt_u64(out, rows);
    out.push_str(",\"duration_us\":");
    write_opt_u64(out, duration_us);
    out.push_str(",\"sqlstate\":");
    write_opt_str(out, sqlstate);
    out.push_str(",\"prev_hash\":");
}

/// Appends the canonical form of `ev` (everything but `hash`) to `out`.
pub fn write_canonical(out: &mut String, ev: &AuditEvent) {
    out.push_str("{\"seq\":");
    write_u64(out, ev.seq);
    out.push_str(",\"ts\":");
    write_json_str(out, &ev.ts);
    out.push_str(",\"instance\":");
    write_json_str(out, &ev.instance);
    write_who_fields(
        out,
        &ev.session,
        &ev.client,
        &ev.user,
        ev.role.as_deref(),
        &ev.database,
        &ev.application,
    );
    write_what_fields(
        out,
        ev.kind,
        ev.statement.as_deref(),
        ev.fingerprint.as_deref(),
        &ev.tables,
        &ev.columns,
    );
    write_outcome(
        out,
        ev.decision,
        ev.reason.as_deref(),
        ev.rows,
        ev.duration_us,
        ev.sqlstate.as_deref(),
    );
    write_json_str(out, &ev.prev_hash);
    out.push('}');
}

/// `,"instance":"…"` as every event line of `instance` carries it (the writer formats it once).
pub(crate) fn instance_json(instance: &str) -> String {
    let mut s = String::with_capacity(instance.len() + 16);
    s.push_str(",\"instance\":");
    write_json_str(&mut s, instance);
    s
}

/// The line of a new event at time `ts` (without the newline): the same bytes [`seal`] gives for
/// the [`AuditEvent`] it stands for, built from the pieces its [`crate::EventSource`] and
/// [`crate::EventStatement`] formatted once. [`line_hash`] reads its hash back.
pub(crate) fn seal_new(
    seq: u64,
    ts: time::OffsetDateTime,
    instance_json: &str,
    ne: &NewEvent,
    prev_hash: &str,
) -> String {
    let mut line = String::with_capacity(
        ne.who.json().len() + ne.what.json().len() + instance_json.len() + 400,
    );
    line.push_str("{\"seq\":");
    write_u64(&mut line, seq);
    line.push_str(",\"ts\":\"");
    crate::event::write_ts(&mut line, ts);
    line.push('"');
    line.push_str(instance_json);
    line.push_str(ne.who.json());
    line.push_str(ne.what.json());
    write_outcome(
        &mut line,
        ne.decision,
        ne.reason.as_deref(),
        ne.rows,
        ne.duration_us,
        ne.sqlstate.as_deref(),
    );
    // The writer's own hash: 64 hex digits, nothing to escape.
    line.push('"');
    line.push_str(prev_hash);
    line.push_str("\"}");
    let digest = chain_digest(prev_hash, &line);
    line.pop();
    line.push_str(",\"hash\":\"");
    push_hex(&mut line, digest.as_ref());
    line.push_str("\"}");
    line
}

/// The `hash` of an event line written by [`seal`] or [`seal_new`].
pub(crate) fn line_hash(line: &str) -> &str {
    // The line ends with `"<64 hex>"}`.
    let end = line.len().saturating_sub(2);
    line.get(end.saturating_sub(64)..end).unwrap_or("")
}

/// The `prev_hash` of an event line written by [`seal`] or [`seal_new`].
pub(crate) fn line_prev_hash(line: &str) -> &str {
    // … `"prev_hash":"<64 hex>","hash":"<64 hex>"}`: 2 + 64 + `","hash":"` (10) from the end.
    let end = line.len().saturating_sub(2 + 64 + 10);
    line.get(end.saturating_sub(64)..end).unwrap_or("")
}

/// The canonical form of `ev` as a string.
pub fn canonical(ev: &AuditEvent) -> String {
    let mut s = String::with_capacity(512);
    write_canonical(&mut s, ev);
    s
}

/// `lowercase_hex(SHA-256(prev_hash ‖ canonical))`.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    lower_hex(chain_digest(prev_hash, canonical).as_ref())
}

/// `SHA-256(prev_hash ‖ canonical)`.
fn chain_digest(prev_hash: &str, canonical: &str) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev_hash.as_bytes());
    ctx.update(canonical.as_bytes());
    ctx.finish()
}

/// Lowercase hex of `bytes`. `hex::encode` collects chars one by one (~1,000 instructions for a
/// SHA-256, once per audit event); this writes the bytes directly.
pub fn lower_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends the lowercase hex of `bytes` to `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
}

/// Fills in `ev.hash` from its other fields and returns its line (without the newline): the
/// reference the writer's [`seal_new`] is tested against.
#[cfg(test)]
pub(crate) fn seal(ev: &mut AuditEvent) -> String {
    let mut line = String::with_capacity(600);
    write_canonical(&mut line, ev);
    ev.hash = chain_hash(&ev.prev_hash, &line);
    line.pop();
    line.push_str(",\"hash\":\"");
    line.push_str(&ev.hash);
    line.push_str("\"}");
    line
}

/// The line of an event whose `hash` is already set (without the newline).
pub fn event_line(ev: &AuditEvent) -> String {
    let mut line = String::with_capacity(600);
    write_canonical(&mut line, ev);
    line.pop();
    line.push_str(",\"hash\":");
    write_json_str(&mut line, &ev.hash);
    line.push('}');
    line
}

/// The message a checkpoint signature covers.
pub fn checkpoint_message(instance: &str, seq: u64, hash: &str, ts: &str) -> Vec<u8> {
    format!("{CHECKPOINT_DOMAIN}\0{instance}\0{seq}\0{hash}\0{ts}").into_bytes()
}

/// The line of a checkpoint (without the newline).
pub fn checkpoint_line(cp: &Checkpoint) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("{\"checkpoint\":{\"seq\":");
    write_u64(&mut s, cp.seq);
    s.push_str(",\"hash\":");
    write_json_str(&mut s, &cp.hash);
    s.push_str(",\"ts\":");
    write_json_str(&mut s, &cp.ts);
    s.push_str(",\"signature\":");
    write_json_str(&mut s, &cp.signature);
    s.push_str(",\"instance\":");
    write_json_str(&mut s, &cp.instance);
    s.push_str("}}");
    s
}

/// Parses one line (without its newline) into a record.
pub fn parse_line(line: &str) -> Result<Record, String> {
    if line.starts_with("{\"checkpoint\"") {
        serde_json::from_str::<CheckpointLine>(line)
            .map(|c| Record::Checkpoint(c.checkpoint))
            .map_err(|e| format!("unreadable checkpoint: {e}"))
    } else {
        serde_json::from_str::<AuditEvent>(line)
            .map(Record::Event)
            .map_err(|e| format!("unreadable record: {e}"))
    }
}

/// The line a record must have had if it was written by pgcloak (used to reject lines that
/// were re-formatted or hand-edited even when their values still hash correctly).
pub fn record_line(rec: &Record) -> String {
    match rec {
        Record::Event(ev) => event_line(ev),
        Record::Checkpoint(cp) => checkpoint_line(cp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Decision, Kind};
    use proptest::prelude::*;

    fn sample() -> AuditEvent {
        AuditEvent {
            seq: 1,
            ts: "2026-01-02T03:04:05.000006Z".into(),
            instance: "i1".into(),
            session: "s1".into(),
            client: "127.0.0.1:5000".into(),
            user: "alice".into(),
            role: Some("app".into()),
            database: "shop".into(),
            application: "psql".into(),
            kind: Kind::Select,
            statement: Some("SELECT phone FROM customers WHERE id = $1".into()),
            fingerprint: Some("abc".into()),
            tables: vec!["public.customers".into()],
            columns: vec![ColumnAccess {
                name: "public.customers.phone".into(),
                class: "confidential".into(),
                access: "masked".into(),
            }],
            decision: Decision::Allow,
            reason: None,
            rows: Some(1),
            duration_us: Some(42),
            sqlstate: Some("00000".into()),
            prev_hash: GENESIS.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn lower_hex_matches_the_hex_crate() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(lower_hex(&all), hex::encode(&all));
        assert_eq!(lower_hex(&[]), "");
    }

    #[test]
    fn line_has_documented_shape_and_hash() {
        let mut ev = sample();
        let line = seal(&mut ev);
        let canon = canonical(&ev);
        assert!(canon
            .starts_with("{\"seq\":1,\"ts\":\"2026-01-02T03:04:05.000006Z\",\"instance\":\"i1\""));
        assert!(canon.ends_with(&format!(",\"prev_hash\":\"{GENESIS}\"}}")));
        assert_eq!(
            line,
            format!("{},\"hash\":\"{}\"}}", &canon[..canon.len() - 1], ev.hash)
        );
        // hash = SHA-256(prev_hash ‖ canonical), computed independently.
        let mut input = GENESIS.as_bytes().to_vec();
        input.extend_from_slice(canon.as_bytes());
        let d = digest::digest(&digest::SHA256, &input);
        assert_eq!(ev.hash, hex::encode(d.as_ref()));
        // The line is plain JSON that serde_json reads back to the same event.
        assert_eq!(parse_line(&line).unwrap(), Record::Event(ev));
    }

    #[test]
    fn escapes_match_documentation() {
        let mut s = String::new();
        write_json_str(
            &mut s,
            "a\"b\\c\u{8}\t\n\u{c}\r\u{0}\u{1f}\u{7f}é✓/\u{2028}",
        );
        assert_eq!(
            s,
            "\"a\\\"b\\\\c\\b\\t\\n\\f\\r\\u0000\\u001f\u{7f}é✓/\u{2028}\""
        );
    }

    #[test]
    fn checkpoint_line_round_trips() {
        let cp = Checkpoint {
            seq: 7,
            hash: "ab".repeat(32),
            ts: "2026-01-02T03:04:05.000006Z".into(),
            signature: "c2ln".into(),
            instance: "node-1".into(),
        };
        let line = checkpoint_line(&cp);
        assert!(line.starts_with("{\"checkpoint\":{\"seq\":7,\"hash\":"));
        let back = parse_line(&line).unwrap();
        assert_eq!(back, Record::Checkpoint(cp));
        assert_eq!(record_line(&back), line);
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[\\x00-\\x1f\"\\\\/a-z\u{7f}\u{80}-\u{10ffff}]{0,24}",
        ]
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        prop::option::of(any_text())
    }

    prop_compose! {
        fn any_event()(
            seq in any::<u64>(),
            texts in prop::collection::vec(any_text(), 7),
            opts in prop::collection::vec(opt_text(), 5),
            tables in prop::collection::vec(any_text(), 0..4),
            cols in prop::collection::vec((any_text(), any_text(), any_text()), 0..4),
            nums in (prop::option::of(any::<u64>()), prop::option::of(any::<u64>())),
            kind in 0usize..14,
            deny in any::<bool>(),
        ) -> AuditEvent {
            let kinds = Kind::ALL;
            AuditEvent {
                seq,
                ts: texts[0].clone(),
                instance: texts[1].clone(),
                session: texts[2].clone(),
                client: texts[3].clone(),
                user: texts[4].clone(),
                role: opts[0].clone(),
                database: texts[5].clone(),
                application: texts[6].clone(),
                kind: kinds[kind],
                statement: opts[1].clone(),
                fingerprint: opts[2].clone(),
                tables,
                columns: cols.into_iter().map(|(name, class, access)| ColumnAccess { name, class, access }).collect(),
                decision: if deny { Decision::Deny } else { Decision::Allow },
                reason: opts[3].clone(),
                rows: nums.0,
                duration_us: nums.1,
                sqlstate: opts[4].clone(),
                prev_hash: GENESIS.into(),
                hash: String::new(),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// parse ∘ print = id and print ∘ parse ∘ print = print, so a verifier re-creates the
        /// exact canonical bytes from a written line, whatever the strings hold.
        #[test]
        fn canonical_round_trip(mut ev in any_event()) {
            let line = seal(&mut ev);
            let parsed = parse_line(&line).unwrap();
            prop_assert_eq!(&parsed, &Record::Event(ev.clone()));
            prop_assert_eq!(record_line(&parsed), line.clone());
            let Record::Event(back) = parsed else { unreachable!() };
            prop_assert_eq!(chain_hash(&back.prev_hash, &canonical(&back)), ev.hash);
            // One line: no raw newline may survive escaping.
            prop_assert!(!line.contains('\n') && !line.contains('\r'));
        }

        /// The writer's line, built from pieces formatted once per session and per statement, is
        /// byte for byte the line [`seal`] gives for the same record (NUL replaced as the writer
        /// replaces it), and the hashes read back from it are the record's.
        #[test]
        fn writer_line_is_the_sealed_line(
            ev in any_event(),
            secs in 0i64..253_402_300_799,
            micros in 0u32..1_000_000,
            prev in prop::collection::vec(any::<u8>(), 32),
        ) {
            use crate::event::{clean, format_ts, EventSource, EventStatement};
            let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
                + time::Duration::microseconds(micros.into());
            let prev_hash = lower_hex(&prev);
            let ne = NewEvent {
                ts: Some(t),
                who: EventSource::new(Who {
                    session: ev.session.clone(),
                    client: ev.client.clone(),
                    user: ev.user.clone(),
                    role: ev.role.clone(),
                    database: ev.database.clone(),
                    application: ev.application.clone(),
                }),
                what: EventStatement::new(What {
                    kind: ev.kind,
                    statement: ev.statement.clone(),
                    fingerprint: ev.fingerprint.clone(),
                    tables: ev.tables.clone(),
                    columns: ev.columns.clone(),
                }),
                decision: ev.decision,
                reason: ev.reason.clone().map(clean),
                rows: ev.rows,
                duration_us: ev.duration_us,
                sqlstate: ev.sqlstate.clone().map(clean),
            };
            let instance = clean(ev.instance.clone());
            let line = seal_new(ev.seq, t, &instance_json(&instance), &ne, &prev_hash);

            let c = |s: &String| clean(s.clone());
            let mut want = AuditEvent {
                ts: format_ts(t),
                instance,
                session: c(&ev.session),
                client: c(&ev.client),
                user: c(&ev.user),
                role: ev.role.as_ref().map(c),
                database: c(&ev.database),
                application: c(&ev.application),
                statement: ev.statement.as_ref().map(c),
                fingerprint: ev.fingerprint.as_ref().map(c),
                tables: ev.tables.iter().map(c).collect(),
                columns: ev.columns.iter().map(|col| ColumnAccess {
                    name: c(&col.name),
                    class: c(&col.class),
                    access: c(&col.access),
                }).collect(),
                reason: ev.reason.as_ref().map(c),
                sqlstate: ev.sqlstate.as_ref().map(c),
                prev_hash: prev_hash.clone(),
                ..ev
            };
            let want_line = seal(&mut want);
            prop_assert_eq!(&line, &want_line);
            prop_assert_eq!(line_hash(&line), want.hash.as_str());
            prop_assert_eq!(line_prev_hash(&line), prev_hash.as_str());
        }

        #[test]
        fn escaping_agrees_with_serde_json(s in any_text()) {
            let mut mine = String::new();
            write_json_str(&mut mine, &s);
            prop_assert_eq!(serde_json::from_str::<String>(&mine).unwrap(), s);
        }
    }
}
