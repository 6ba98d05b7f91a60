//! The messages the proxy builds itself (errors, key data, rewritten auth requests) and the bounded
//! decoders for the few it must read (auth requests, errors, command tags, statement text).

use bytes::{BufMut, Bytes, BytesMut};

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

/// A bounds-checked reader over a message body.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    fn err(&self, detail: &'static str) -> FrameError {
        FrameError::Malformed {
            what: self.what,
            detail,
        }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        let v = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += 1;
        Ok(v)
    }

    pub fn i16(&mut self) -> Result<i16, FrameError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, FrameError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let s = self.bytes(N)?;
        s.try_into().map_err(|_| self.err("truncated"))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.err("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    /// A NUL-terminated string (without the NUL).
    pub fn cstr(&mut self) -> Result<&'a [u8], FrameError> {
        let rest = self.remaining();
        // Most names on the hot path are empty (the unnamed statement and portal): no search then.
        let end = match rest.first() {
            Some(0) => 0,
            _ => memchr::memchr(0, rest).ok_or_else(|| self.err("string not terminated"))?,
        };
        let s = rest.get(..end).ok_or_else(|| self.err("truncated"))?;
        self.pos += end + 1;
        Ok(s)
    }
}

/// The authentication request codes the relay cares about.
pub const AUTH_OK: i32 = 0;
pub const AUTH_SASL: i32 = 10;

/// The code of an Authentication ('R') message body.
pub fn auth_code(body: &[u8]) -> Result<i32, FrameError> {
    Reader::new(body, "authentication").i32()
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
    Reader::new(body, "Query").cstr()
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
    Reader::new(body, "Parse").cstr()
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
    let n = r.i16()?;
    if n < 0 {
        return Err(FrameError::Malformed {
            what: "Parse",
            detail: "negative parameter count",
        });
    }
    let mut param_types = Vec::with_capacity(n as usize);
    for _ in 0..n {
        param_types.push(r.i32()? as u32);
    }
    if !r.is_empty() {
        return Err(FrameError::Malformed {
            what: "Parse",
            detail: "trailing bytes",
        });
    }
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

/// A decoded Bind message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMsg<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// As sent: empty (all text), one (applies to all) or one per parameter.
    pub param_formats: Vec<i16>,
    /// `None` = NULL.
    pub params: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

impl BindMsg<'_> {
    /// The format code (0 text, 1 binary) of parameter `i` (0-based).
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.len() {
            0 => 0,
            1 => self.param_formats.first().copied().unwrap_or(0),
            _ => self.param_formats.get(i).copied().unwrap_or(0),
        }
    }
}

/// The format code of result column `i` given a Bind's result format list.
pub fn result_format(formats: &[i16], i: usize) -> i16 {
    match formats.len() {
        0 => 0,
        1 => formats.first().copied().unwrap_or(0),
        _ => formats.get(i).copied().unwrap_or(0),
    }
}

pub fn parse_bind(body: &[u8]) -> Result<BindMsg<'_>, FrameError> {
    let mut params = Vec::new();
    let walked = walk_bind(body, |count, p| {
        params.reserve_exact(count - params.len());
        params.push(p);
    })?;
    Ok(BindMsg {
        portal: walked.portal,
        statement: walked.statement,
        param_formats: codes(walked.param_formats).collect(),
        params,
        result_formats: codes(walked.result_formats).collect(),
    })
}

/// A Bind's result format codes, checked as [`parse_bind`] checks the whole message but without
/// collecting its parameters (what a statement whose parameters need no rewriting needs of it).
pub fn bind_result_formats(body: &[u8]) -> Result<impl Iterator<Item = i16> + '_, FrameError> {
    Ok(codes(walk_bind(body, |_, _| {})?.result_formats))
}

/// The parts of a Bind message as [`walk_bind`] finds them.
struct WalkedBind<'a> {
    portal: &'a [u8],
    statement: &'a [u8],
    /// Two bytes per code.
    param_formats: &'a [u8],
    result_formats: &'a [u8],
}

/// Checks a Bind body's framing, handing each parameter value (`None`: NULL) with the number of
/// parameters to `param`.
fn walk_bind<'a>(
    body: &'a [u8],
    mut param: impl FnMut(usize, Option<&'a [u8]>),
) -> Result<WalkedBind<'a>, FrameError> {
    let bad = |detail| FrameError::Malformed {
        what: "Bind",
        detail,
    };
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let nf = usize::try_from(r.i16()?).map_err(|_| bad("negative format count"))?;
    let param_formats = r.bytes(nf * 2)?;
    let np = usize::try_from(r.i16()?).map_err(|_| bad("negative parameter count"))?;
    for _ in 0..np {
        let len = r.i32()?;
        if len == -1 {
            param(np, None);
        } else if len < 0 {
            return Err(bad("negative parameter length"));
        } else {
            param(np, Some(r.bytes(len as usize)?));
        }
    }
    let nr = usize::try_from(r.i16()?).map_err(|_| bad("negative result format count"))?;
    let result_formats = r.bytes(nr * 2)?;
    if !r.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(WalkedBind {
        portal,
        statement,
        param_formats,
        result_formats,
    })
}

/// Big-endian 16-bit codes.
fn codes(raw: &[u8]) -> impl Iterator<Item = i16> + '_ {
    raw.as_chunks::<2>()
        .0
        .iter()
        .map(|&c| i16::from_be_bytes(c))
}

/// Re-encodes a Bind with (some) parameter values replaced.
pub fn encode_bind(bind: &BindMsg<'_>, params: &[Option<&[u8]>]) -> Bytes {
    let size: usize = params.iter().map(|p| p.map_or(4, |v| v.len() + 4)).sum();
    let mut b = begin(b'B', bind.portal.len() + bind.statement.len() + size + 16);
    b.put_slice(bind.portal);
    b.put_u8(0);
    b.put_slice(bind.statement);
    b.put_u8(0);
    b.put_i16(bind.param_formats.len() as i16);
    for f in &bind.param_formats {
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
    b.put_i16(bind.result_formats.len() as i16);
    for f in &bind.result_formats {
        b.put_i16(*f);
    }
    finish(b)
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
    Reader::new(body, "Execute").cstr()
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

    #[test]
    fn bind_round_trip() {
        let bind = BindMsg {
            portal: b"p1",
            statement: b"s1",
            param_formats: vec![1],
            params: vec![Some(b"\x00\x00\x00\x2a"), None, Some(b"")],
            result_formats: vec![0, 1],
        };
        let out = encode_bind(&bind, &bind.params);
        assert_eq!(
            check(&out, Direction::Frontend, 1 << 20),
            Ok(Some(out.len()))
        );
        let back = parse_bind(&out[5..]).unwrap();
        assert_eq!(back, bind);
        assert_eq!(back.param_format(2), 1);
        assert_eq!(result_format(&back.result_formats, 1), 1);
        assert_eq!(result_format(&[], 3), 0);
        assert!(parse_bind(&out[5..out.len() - 1]).is_err());
        let mut neg = out[5..].to_vec();
        // parameter count -> negative
        let pos = 2 + 1 + 2 + 1 + 2 + 2;
        neg[pos..pos + 2].copy_from_slice(&(-2i16).to_be_bytes());
        assert!(parse_bind(&neg).is_err());
        assert!(bind_result_formats(&neg).is_err());
        // The result formats alone: the same codes, the same refusals of every truncation.
        let codes: Vec<i16> = bind_result_formats(&out[5..]).unwrap().collect();
        assert_eq!(codes, bind.result_formats);
        for cut in 0..out.len() - 5 {
            let body = &out[5..5 + cut];
            assert!(parse_bind(body).is_err(), "{cut}");
            assert!(bind_result_formats(body).is_err(), "{cut}");
        }
        let mut trailing = out[5..].to_vec();
        trailing.push(0);
        assert!(bind_result_formats(&trailing).is_err());
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
        let mut r = Reader::new(&[0, 0, 0], "x");
        assert!(r.i32().is_err());
        let mut r = Reader::new(&[0xff; 8], "x");
        assert!(r.bytes(usize::MAX).is_err());
    }
}
