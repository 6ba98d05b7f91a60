//! The messages the proxy builds itself (errors, key data, rewritten auth requests) and the bounded
//! decoders for the few it must read (auth requests, errors, command tags, statement text).

use bytes::{BufMut, Bytes, BytesMut};

use super::reader::Reader;
use crate::error::FrameError;

/// Starts a frame: tag and a length placeholder patched by [`finish`].
fn begin(tag: u8, capacity: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(capacity + 5);
    b.put_u8(tag);
    b.put_u32(0);
    b
}

fn finish(mut b: BytesMut) -> Bytes {
    let len = (b.len() - 1) as u32;
    if let Some(field) = b.get_mut(1..5) {
        field.copy_from_slice(&len.to_be_bytes());
    }
    b.freeze()
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early on the client; drop it.
    b.extend(s.bytes().filter(|&c| c != 0));
    b.put_u8(0);
}

/// Severity of a proxy-generated error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An ErrorResponse the way PostgreSQL writes one (S, V, C, M and optional H fields).
pub fn error_response(severity: Severity, code: &str, message: &str, hint: Option<&str>) -> Bytes {
    let mut b = begin(b'E', message.len() + 64);
    for (field, value) in [
        (b'S', severity.as_str()),
        (b'V', severity.as_str()),
        (b'C', code),
        (b'M', message),
    ] {
        b.put_u8(field);
        put_cstr(&mut b, value);
    }
    if let Some(h) = hint {
        b.put_u8(b'H');
        put_cstr(&mut b, h);
    }
    b.put_u8(0);
    finish(b)
}

/// BackendKeyData with the given process id and secret.
pub fn backend_key_data(process_id: u32, secret: &[u8]) -> Bytes {
    let mut b = begin(b'K', 4 + secret.len());
    b.put_u32(process_id);
    b.put_slice(secret);
    finish(b)
}

/// ReadyForQuery with a transaction status byte (I, T or E).
pub fn ready_for_query(status: u8) -> Bytes {
    let mut b = begin(b'Z', 1);
    b.put_u8(status);
    finish(b)
}

/// A simple Query message.
pub fn query(sql: &str) -> Bytes {
    let mut b = begin(b'Q', sql.len() + 1);
    put_cstr(&mut b, sql);
    finish(b)
}

/// A Flush message (the server sends what it has buffered; no answer of its own).
pub fn flush() -> Bytes {
    frame(b'H', &[])
}

/// A message of type `tag` with `body`.
pub fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut b = begin(tag, body.len());
    b.put_slice(body);
    finish(b)
}

/// A Describe of the statement (`kind` `S`) or portal (`P`) called `name`.
pub fn describe(kind: u8, name: &[u8]) -> Bytes {
    let mut b = begin(b'D', name.len() + 2);
    b.put_u8(kind);
    b.put_slice(name);
    b.put_u8(0);
    finish(b)
}

/// A CopyData message carrying `data`.
pub fn copy_data(data: &[u8]) -> Bytes {
    let mut b = begin(b'd', data.len());
    b.put_slice(data);
    finish(b)
}

/// A CopyFail message: the server aborts the COPY with an error quoting `reason`.
pub fn copy_fail(reason: &str) -> Bytes {
    let mut b = begin(b'f', reason.len() + 1);
    put_cstr(&mut b, reason);
    finish(b)
}

/// A Terminate message.
pub fn terminate() -> Bytes {
    Bytes::from_static(b"X\0\0\0\x04")
}

/// The authentication request codes the relay cares about.
pub const AUTH_OK: i32 = 0;
pub const AUTH_SASL: i32 = 10;

/// The code of an Authentication ('R') message body.
pub fn auth_code(body: &[u8]) -> Result<i32, FrameError> {
    Ok(Reader::new(body, "authentication").i32()?)
}

/// Rewrites AuthenticationSASL without SCRAM-SHA-256-PLUS: channel binding binds the client's TLS
/// session to the server's, which a relay terminating both cannot satisfy. Returns `None` when nothing
/// had to be removed, so the original frame is forwarded.
pub fn strip_channel_binding(body: &[u8]) -> Result<Option<Bytes>, FrameError> {
    let mut r = Reader::new(body, "AuthenticationSASL");
    let code = r.i32()?;
    if code != AUTH_SASL {
        return Ok(None);
    }
    let mut mechanisms = Vec::new();
    loop {
        let m = r.cstr()?;
        if m.is_empty() {
            break;
        }
        mechanisms.push(m);
    }
    if !mechanisms.iter().any(|m| m.ends_with(b"-PLUS")) {
        return Ok(None);
    }
    let kept: Vec<&[u8]> = mechanisms
        .into_iter()
        .filter(|m| !m.ends_with(b"-PLUS"))
        .collect();
    let mut b = begin(b'R', 64);
    b.put_i32(AUTH_SASL);
    for m in kept {
        b.put_slice(m);
        b.put_u8(0);
    }
    b.put_u8(0);
    Ok(Some(finish(b)))
}

/// The fields of an ErrorResponse or NoticeResponse that the proxy records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn error_fields(body: &[u8]) -> Result<ErrorFields, FrameError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut out = ErrorFields::default();
    loop {
        let field = r.u8()?;
        if field == 0 {
            break;
        }
        let value = String::from_utf8_lossy(r.cstr()?).into_owned();
        match field {
            b'V' => out.severity = value,
            b'S' if out.severity.is_empty() => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
    }
    Ok(out)
}

/// An ErrorResponse with only severity, code, message, detail and hint: used for errors the server
/// raised on the proxy's behalf, whose PL/pgSQL context and source location mean nothing to the client.
pub fn without_context(body: &[u8]) -> Bytes {
    let mut b = begin(b'E', body.len());
    let mut r = Reader::new(body, "ErrorResponse");
    while let Ok(field) = r.u8() {
        if field == 0 {
            break;
        }
        let Ok(value) = r.cstr() else { break };
        if matches!(field, b'S' | b'V' | b'C' | b'M' | b'D' | b'H') {
            b.put_u8(field);
            b.put_slice(value);
            b.put_u8(0);
        }
    }
    b.put_u8(0);
    finish(b)
}

/// Rows counted by a CommandComplete tag ("SELECT 5", "INSERT 0 3", "UPDATE 2", "COPY 10", ...).
pub fn command_rows(body: &[u8]) -> Option<u64> {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    // The count is the last word, after a first one (once per statement: no string parsing).
    let digits = tag.get(tag.iter().rposition(|&b| b == b' ')? + 1..)?;
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// Name and value of a ParameterStatus message.
pub fn parameter_status(body: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let mut r = Reader::new(body, "ParameterStatus");
    let name = r.cstr()?;
    Ok((name, r.cstr()?))
}

/// The SQL text of a Query message.
pub fn query_text(body: &[u8]) -> Result<&[u8], FrameError> {
    Ok(Reader::new(body, "Query").cstr()?)
}

/// Statement name and SQL text of a Parse message.
pub fn parse_text(body: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let sql = r.cstr()?;
    Ok((name, sql))
}

/// The statement name of a Parse message, without scanning its statement text.
pub fn parse_name(body: &[u8]) -> Result<&[u8], FrameError> {
    Ok(Reader::new(body, "Parse").cstr()?)
}

/// A decoded Parse message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMsg<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// Declared parameter types (0 = let the server infer).
    pub param_types: Vec<u32>,
}

pub fn parse_message(body: &[u8]) -> Result<ParseMsg<'_>, FrameError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let query = r.cstr()?;
    let n = r.count()?;
    let mut param_types = Vec::with_capacity(n.min(r.remaining().len() / 4));
    for _ in 0..n {
        param_types.push(r.i32()? as u32);
    }
    r.done()?;
    Ok(ParseMsg {
        name,
        query,
        param_types,
    })
}

pub fn encode_parse(name: &[u8], query: &str, param_types: &[u32]) -> Bytes {
    let mut b = begin(b'P', name.len() + query.len() + 4 * param_types.len() + 4);
    b.put_slice(name);
    b.put_u8(0);
    b.put_slice(query.as_bytes());
    b.put_u8(0);
    b.put_i16(param_types.len() as i16);
    for t in param_types {
        b.put_u32(*t);
    }
    finish(b)
}

/// A Bind message, checked once and read in place: its names, parameter format codes, parameter
/// values and result format codes, all borrowed from the body that arrived. Every step that looks
/// at a Bind (the portal's result formats, integer widening, scalar-to-array wrapping, encryption)
/// reads this one view; [`Bind::encode`] writes a Bind with some values replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Names and parameter format codes, as sent (everything before the parameter count).
    head: &'a [u8],
    /// The parameter format codes: empty (all text), one (applies to all) or one per parameter;
    /// two bytes per code.
    param_formats: &'a [u8],
    param_count: usize,
    /// The parameter values with their length fields, as sent.
    values: &'a [u8],
    /// The result format count and codes, as sent.
    tail: &'a [u8],
}

impl<'a> Bind<'a> {
    /// Checks a Bind body's framing (every count, length and string within the body, nothing after
    /// the last field) and returns the view of it.
    pub fn decode(body: &'a [u8]) -> Result<Bind<'a>, FrameError> {
        let mut r = Reader::new(body, "Bind");
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let nf = r.count()?;
        let param_formats = r.bytes(nf * 2)?;
        let head = r.since(0);
        let param_count = r.count()?;
        let values_at = r.pos();
        for _ in 0..param_count {
            let len = r.i32()?;
            if len < -1 {
                return Err(r.err("a parameter length is negative").into());
            }
            if let Ok(len) = usize::try_from(len) {
                r.bytes(len)?;
            }
        }
        let values = r.since(values_at);
        let tail_at = r.pos();
        let nr = r.count()?;
        r.bytes(nr * 2)?;
        r.done()?;
        Ok(Bind {
            portal,
            statement,
            head,
            param_formats,
            param_count,
            values,
            tail: r.since(tail_at),
        })
    }

    /// The number of parameter values.
    pub fn param_count(&self) -> usize {
        self.param_count
    }

    /// Whether the number of parameter format codes is 0, 1 or the number of parameters (the only
    /// forms the protocol allows).
    pub fn formats_fit(&self) -> bool {
        let n = self.param_formats.len() / 2;
        n <= 1 || n == self.param_count
    }

    /// The format code (0 text, 1 binary) of parameter `i` (0-based).
    pub fn param_format(&self, i: usize) -> i16 {
        let at = if self.param_formats.len() == 2 {
            0
        } else {
            2 * i
        };
        match self.param_formats.get(at..at + 2) {
            Some(&[hi, lo]) => i16::from_be_bytes([hi, lo]),
            _ => 0,
        }
    }

    /// The parameter values in order (`None`: NULL).
    pub fn values(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let mut r = Reader::new(self.values, "Bind");
        // Checked by `decode`: the reads cannot fail; if one did, the values would end early.
        std::iter::from_fn(move || {
            let len = r.i32().ok()?;
            Some(match usize::try_from(len) {
                Ok(len) => Some(r.bytes(len).ok()?),
                Err(_) => None,
            })
        })
    }

    /// The value of parameter `i` (0-based): `None` when it is NULL or there is no such parameter.
    pub fn value(&self, i: usize) -> Option<&'a [u8]> {
        self.values().nth(i).flatten()
    }

    /// The length of this Bind as a frame (tag and length field included): what a rewritten Bind
    /// needs before its values grow.
    pub fn frame_len(&self) -> usize {
        5 + self.body_len()
    }

    /// The length of this Bind's body as sent.
    fn body_len(&self) -> usize {
        self.head.len() + 2 + self.values.len() + self.tail.len()
    }

    /// The result format codes.
    pub fn result_formats(&self) -> impl Iterator<Item = i16> + 'a {
        self.tail
            .get(2..)
            .unwrap_or_default()
            .as_chunks::<2>()
            .0
            .iter()
            .map(|&c| i16::from_be_bytes(c))
    }

    /// Names and parameter format codes as sent: what a rewritten Bind starts with (after its tag
    /// and length).
    pub fn head(&self) -> &'a [u8] {
        self.head
    }

    /// The result format count and codes as sent: what a rewritten Bind ends with.
    pub fn tail(&self) -> &'a [u8] {
        self.tail
    }

    /// A Bind frame of the same names and formats with these parameter values (`None`: NULL).
    pub fn encode<'v>(&self, params: impl ExactSizeIterator<Item = Option<&'v [u8]>>) -> Bytes {
        let mut b = begin(b'B', self.body_len());
        b.put_slice(self.head);
        b.put_i16(params.len() as i16);
        for p in params {
            match p {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b.put_slice(self.tail);
        finish(b)
    }
}

/// Portal and statement names of a Bind message, without decoding its parameters: a Bind of a
/// statement the proxy leaves alone is forwarded as it arrived, and the server checks the rest.
pub fn bind_names(body: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let stmt = r.cstr()?;
    Ok((portal, stmt))
}

/// Portal name of an Execute message.
pub fn execute_portal(body: &[u8]) -> Result<&[u8], FrameError> {
    Ok(Reader::new(body, "Execute").cstr()?)
}

/// Kind ('S' statement / 'P' portal) and name of a Describe or Close message.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8]), FrameError> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(FrameError::Malformed {
            what,
            detail: "target is neither 'S' nor 'P'",
        });
    }
    Ok((kind, r.cstr()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{check, Direction};

    #[test]
    fn built_messages_frame_correctly() {
        for m in [
            error_response(Severity::Error, "42501", "pgcloak: no", Some("ask")),
            backend_key_data(1, &[1, 2, 3, 4]),
            ready_for_query(b'I'),
            query("select 1"),
        ] {
            assert_eq!(
                check(&m, Direction::Backend, 1 << 20)
                    .ok()
                    .flatten()
                    .or_else(|| check(&m, Direction::Frontend, 1 << 20).ok().flatten()),
                Some(m.len())
            );
        }
    }

    #[test]
    fn error_fields_round_trip() {
        let e = error_response(
            Severity::Fatal,
            "53300",
            "sorry, too many clients already",
            None,
        );
        let f = error_fields(&e[5..]).unwrap();
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.code, "53300");
        assert_eq!(f.message, "sorry, too many clients already");
    }

    #[test]
    fn nul_in_message_cannot_split_fields() {
        let e = error_response(Severity::Error, "42501", "a\0b", None);
        assert_eq!(error_fields(&e[5..]).unwrap().message, "ab");
    }

    #[test]
    fn context_is_stripped_from_raised_errors() {
        let mut body = Vec::new();
        for (f, v) in [
            (b'S', "ERROR"),
            (b'C', "42501"),
            (b'M', "pgcloak: no"),
            (b'W', "PL/pgSQL function inline_code_block line 1 at RAISE"),
            (b'F', "pl_exec.c"),
        ] {
            body.push(f);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let out = without_context(&body);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("pgcloak: no") && !text.contains("PL/pgSQL") && !text.contains("pl_exec")
        );
        assert_eq!(error_fields(&out[5..]).unwrap().code, "42501");
        assert_eq!(
            check(&out, Direction::Backend, 1 << 20),
            Ok(Some(out.len()))
        );
    }

    #[test]
    fn scram_plus_is_removed() {
        let mut body = Vec::new();
        body.extend_from_slice(&AUTH_SASL.to_be_bytes());
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let out = strip_channel_binding(&body).unwrap().unwrap();
        assert_eq!(&out[5..9], &AUTH_SASL.to_be_bytes());
        assert_eq!(&out[9..], b"SCRAM-SHA-256\0\0");
        assert_eq!(
            check(&out, Direction::Backend, 1 << 20),
            Ok(Some(out.len()))
        );

        let mut plain = Vec::new();
        plain.extend_from_slice(&AUTH_SASL.to_be_bytes());
        plain.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(strip_channel_binding(&plain).unwrap(), None);
        assert!(strip_channel_binding(&AUTH_SASL.to_be_bytes()).is_err());
    }

    /// A Bind frame built field by field, independent of the `Bind` view under test.
    fn encode_bind(
        portal: &[u8],
        statement: &[u8],
        param_formats: &[i16],
        params: &[Option<&[u8]>],
        result_formats: &[i16],
    ) -> Bytes {
        let mut b = begin(b'B', 64);
        for name in [portal, statement] {
            b.put_slice(name);
            b.put_u8(0);
        }
        b.put_i16(param_formats.len() as i16);
        for f in param_formats {
            b.put_i16(*f);
        }
        b.put_i16(params.len() as i16);
        for p in params {
            match p {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b.put_i16(result_formats.len() as i16);
        for f in result_formats {
            b.put_i16(*f);
        }
        finish(b)
    }

    #[test]
    fn bind_round_trip() {
        let params: [Option<&[u8]>; 3] = [Some(b"\x00\x00\x00\x2a"), None, Some(b"")];
        let out = encode_bind(b"p1", b"s1", &[1], &params, &[0, 1]);
        assert_eq!(
            check(&out, Direction::Frontend, 1 << 20),
            Ok(Some(out.len()))
        );
        let back = Bind::decode(&out[5..]).unwrap();
        assert_eq!((back.portal, back.statement), (&b"p1"[..], &b"s1"[..]));
        assert_eq!(back.param_count(), 3);
        assert!(back.formats_fit());
        assert_eq!(back.param_format(2), 1);
        assert_eq!(back.values().collect::<Vec<_>>(), params);
        assert_eq!(back.value(0), params[0]);
        assert_eq!(back.value(1), None);
        assert_eq!(back.value(7), None);
        assert_eq!(back.result_formats().collect::<Vec<_>>(), [0, 1]);
        // Encoding the view with its own values gives the message back, byte for byte.
        assert_eq!(
            back.encode(back.values().collect::<Vec<_>>().into_iter()),
            out
        );
        let two = encode_bind(b"", b"", &[0, 1], &params[..1], &[]);
        let two = Bind::decode(&two[5..]).unwrap();
        assert!(!two.formats_fit(), "two format codes for one parameter");
        assert_eq!(two.param_format(1), 1);
        assert_eq!(two.param_format(5), 0);
        let none = encode_bind(b"", b"", &[], &params, &[]);
        assert_eq!(Bind::decode(&none[5..]).unwrap().param_format(1), 0);
        let mut neg = out[5..].to_vec();
        // parameter count -> negative
        let pos = 2 + 1 + 2 + 1 + 2 + 2;
        neg[pos..pos + 2].copy_from_slice(&(-2i16).to_be_bytes());
        assert!(Bind::decode(&neg).is_err());
        // A parameter length below -1.
        let mut neg = out[5..].to_vec();
        neg[pos + 2..pos + 6].copy_from_slice(&(-2i32).to_be_bytes());
        assert!(Bind::decode(&neg).is_err());
        for cut in 0..out.len() - 5 {
            assert!(Bind::decode(&out[5..5 + cut]).is_err(), "{cut}");
        }
        let mut trailing = out[5..].to_vec();
        trailing.push(0);
        assert!(Bind::decode(&trailing).is_err());
    }

    #[test]
    fn parse_round_trip() {
        let out = encode_parse(b"st", "select $1", &[23, 0]);
        let m = parse_message(&out[5..]).unwrap();
        assert_eq!(m.name, b"st");
        assert_eq!(m.query, b"select $1");
        assert_eq!(m.param_types, vec![23, 0]);
        assert!(parse_message(&out[5..out.len() - 2]).is_err());
    }

    #[test]
    fn command_tags() {
        assert_eq!(command_rows(b"SELECT 5\0"), Some(5));
        assert_eq!(command_rows(b"INSERT 0 3\0"), Some(3));
        assert_eq!(command_rows(b"UPDATE 12\0"), Some(12));
        assert_eq!(command_rows(b"COPY 100000\0"), Some(100_000));
        assert_eq!(command_rows(b"CREATE TABLE\0"), None);
        assert_eq!(command_rows(b"BEGIN\0"), None);
        assert_eq!(command_rows(b"\0"), None);
        assert_eq!(command_rows(b"42\0"), None);
        assert_eq!(command_rows(b"SELECT \0"), None);
        assert_eq!(command_rows(b"SELECT 1x\0"), None);
        assert_eq!(
            command_rows(b"SELECT 18446744073709551615\0"),
            Some(u64::MAX)
        );
        assert_eq!(command_rows(b"SELECT 18446744073709551616\0"), None);
    }

    #[test]
    fn readers_reject_truncation() {
        assert!(parse_text(b"name\0select").is_err());
        assert!(parse_name(b"name").is_err());
        assert_eq!(parse_name(b"\0select").unwrap(), b"");
        assert_eq!(parse_name(b"s1\0select\0\0\0").unwrap(), b"s1");
        assert!(bind_names(b"\0").is_err());
        assert!(target(b"X\0", "Describe").is_err());
        assert!(target(b"", "Describe").is_err());
        assert_eq!(target(b"Sfoo\0", "Describe").unwrap(), (b'S', &b"foo"[..]));
    }
}
