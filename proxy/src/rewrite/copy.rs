//! COPY data: encrypting fields of `COPY ... FROM STDIN` (text and CSV, streamed across CopyData
//! messages) and decrypting, masking or nulling fields of `COPY ... TO STDOUT` (one row per CopyData).
//!
//! Text format (PostgreSQL's `COPY` text rules): delimiter default tab, NULL default `\N` (compared with
//! the field as written), backslash escapes `\b \f \n \r \t \v \ooo \xhh` and `\c` for any other `c`, a
//! backslash also escapes a newline, `\.` alone on a line ends the data. CSV: delimiter default `,`,
//! quote default `"`, escape default the quote, NULL default the unquoted empty string (a quoted empty
//! string is an empty string), quoted fields may hold delimiters and newlines. Line endings are
//! detected from the first line like PostgreSQL does (`\n`, `\r\n` or `\r`). A HEADER line passes
//! through untouched; data after the end marker is dropped (PostgreSQL ignores it; it never reaches
//! the server). Binary format (asyncpg's `copy_records_to_table` always writes it): the header is
//! checked and forwarded, each tuple is parsed by its field lengths (tuples span CopyData messages
//! freely), and an encrypted column's field — the binary form of its logical type, as the client
//! learned it from pgcloak's RowDescription — is replaced by the binary form of its storage (the raw
//! envelope for `bytea`, the armoured text for `text`). Binary COPY *out* of protected columns is
//! refused.

use std::ops::Range;
use std::sync::Arc;

use pgcloak_keymgr::{Keyring, LogicalType};
use pgcloak_policy::{CopyFormat, CopyInfo};

use super::error::{Result, RewriteError};
use super::rows::{present, ColSpec, ColumnAction, Presented, RowCtx};
use super::values::encrypt_wire_into;
use super::{Format, Storage};

/// How COPY data is written: format and options, resolved to bytes.
#[derive(Debug, Clone)]
struct Opts {
    csv: bool,
    delim: u8,
    quote: u8,
    escape: u8,
    null: Vec<u8>,
}

fn single_byte(c: Option<char>, default: u8, table: &str, what: &'static str) -> Result<u8> {
    match c {
        None => Ok(default),
        Some(c) if c.is_ascii() => Ok(c as u8),
        Some(_) => Err(RewriteError::MalformedCopy {
            table: table.to_string(),
            line: 0,
            detail: what,
        }),
    }
}

impl Opts {
    fn from_info(info: &CopyInfo, table: &str) -> Result<Opts> {
        let csv = info.format == CopyFormat::Csv;
        let delim = single_byte(
            info.delimiter,
            if csv { b',' } else { b'\t' },
            table,
            "the COPY delimiter is not a single-byte character",
        )?;
        let quote = single_byte(
            info.quote,
            b'"',
            table,
            "the COPY quote is not a single-byte character",
        )?;
        let escape = single_byte(
            info.escape,
            quote,
            table,
            "the COPY escape is not a single-byte character",
        )?;
        let null = info
            .null
            .clone()
            .unwrap_or_else(|| {
                if csv {
                    String::new()
                } else {
                    "\\N".to_string()
                }
            })
            .into_bytes();
        Ok(Opts {
            csv,
            delim,
            quote,
            escape,
            null,
        })
    }

    /// Splits one line (without its end of line) into field ranges and whether each was quoted.
    fn split(&self, line: &[u8]) -> std::result::Result<Vec<(Range<usize>, bool)>, &'static str> {
        let mut fields = Vec::new();
        let mut start = 0;
        let mut quoted = false;
        let mut in_quote = false;
        let mut i = 0;
        while let Some(&c) = line.get(i) {
            if self.csv {
                if in_quote {
                    if c == self.escape
                        && self.escape != self.quote
                        && matches!(line.get(i + 1), Some(&n) if n == self.quote || n == self.escape)
                    {
                        i += 2;
                        continue;
                    }
                    if c == self.quote {
                        if self.escape == self.quote && line.get(i + 1) == Some(&self.quote) {
                            i += 2;
                            continue;
                        }
                        in_quote = false;
                    }
                } else if c == self.quote {
                    in_quote = true;
                    quoted = true;
                } else if c == self.delim {
                    fields.push((start..i, quoted));
                    start = i + 1;
                    quoted = false;
                }
                i += 1;
            } else if c == b'\\' {
                i += 2;
            } else {
                if c == self.delim {
                    fields.push((start..i, false));
                    start = i + 1;
                }
                i += 1;
            }
        }
        if in_quote {
            return Err("a quoted CSV field is not closed");
        }
        fields.push((start..line.len(), quoted));
        Ok(fields)
    }

    /// Whether a field as written is NULL.
    fn is_null(&self, raw: &[u8], quoted: bool) -> bool {
        !quoted && raw == self.null.as_slice()
    }

    /// The value of a field as written.
    fn decode(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        if self.csv {
            let mut in_quote = false;
            while let Some(&c) = raw.get(i) {
                if in_quote {
                    match raw.get(i + 1) {
                        Some(&n) if c == self.escape && (n == self.quote || n == self.escape) => {
                            out.push(n);
                            i += 2;
                            continue;
                        }
                        _ => {}
                    }
                    if c == self.quote {
                        in_quote = false;
                    } else {
                        out.push(c);
                    }
                } else if c == self.quote {
                    in_quote = true;
                } else {
                    out.push(c);
                }
                i += 1;
            }
            return out;
        }
        while let Some(&c) = raw.get(i) {
            if c != b'\\' {
                out.push(c);
                i += 1;
                continue;
            }
            let Some(&e) = raw.get(i + 1) else {
                out.push(b'\\');
                break;
            };
            i += 2;
            match e {
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(0x0b),
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match raw.get(i) {
                            Some(d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push((v & 0xff) as u8);
                }
                b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                    let mut v = raw.get(i).map_or(0, |&d| hex_val(d));
                    i += 1;
                    if let Some(&d) = raw.get(i).filter(|d| d.is_ascii_hexdigit()) {
                        v = v * 16 + hex_val(d);
                        i += 1;
                    }
                    out.push(v);
                }
                other => out.push(other),
            }
        }
        out
    }

    /// Writes a value as a field.
    /// Writes `value` as a field; in CSV, `quote` quotes it even where nothing requires it (the server
    /// quoted the field it replaces: `FORCE_QUOTE`).
    fn encode(&self, value: &[u8], quote: bool, out: &mut Vec<u8>) {
        if self.csv {
            let needs_quote = quote
                || value == self.null.as_slice()
                || value == b"\\."
                || value.iter().any(|&c| {
                    c == self.delim
                        || c == self.quote
                        || c == self.escape
                        || c == b'\r'
                        || c == b'\n'
                });
            if !needs_quote {
                out.extend_from_slice(value);
                return;
            }
            out.push(self.quote);
            for &c in value {
                if c == self.quote || c == self.escape {
                    out.push(self.escape);
                }
                out.push(c);
            }
            out.push(self.quote);
            return;
        }
        for &c in value {
            match c {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' if self.delim == b'\t' => out.extend_from_slice(b"\\t"),
                c if c == self.delim => {
                    out.push(b'\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
    }
}

/// A field range found in a buffer no longer fits it: a pgcloak bug, refused rather than guessed at.
const OUT_OF_BUFFER: &str = "a field pgcloak located lies outside the data (a pgcloak bug)";

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Nl,
    Cr,
    CrNl,
}

#[derive(Debug, Clone)]
struct InCol {
    column: String,
    ty: LogicalType,
    storage: Storage,
    /// CSV `FORCE_NULL`: a quoted field equal to the null string is NULL too.
    force_null: bool,
    /// CSV `FORCE_NOT_NULL`: a field equal to the null string is a value, never NULL.
    force_not_null: bool,
}

/// Streams `COPY ... FROM STDIN` data (text or CSV) and encrypts the fields of encrypted columns.
///
/// Feed each CopyData payload to [`push`](Self::push) and send what it returns (possibly nothing: a
/// row may span messages, its tail is kept); at CopyDone call [`finish`](Self::finish) and send what
/// it returns before the CopyDone. Output is always whole rows.
#[derive(Debug)]
pub struct CopyInRewriter {
    keyring: Arc<Keyring>,
    table: String,
    opts: Opts,
    cols: Vec<Option<InCol>>,
    encrypting: bool,
    header_pending: bool,
    buf: Vec<u8>,
    /// Binary format (its signature header is always there: `header_pending` until it was read).
    binary: bool,
    /// Bytes of `buf` already scanned for the end of the current line.
    scan: usize,
    in_quote: bool,
    last_was_escape: bool,
    eol: Option<Eol>,
    /// Lines completed so far (for error messages).
    line: u64,
    done: bool,
    /// Where each encrypted field is sealed and encoded before COPY escaping (kept from field to
    /// field: no buffer per value).
    scratch: Vec<u8>,
}

impl CopyInRewriter {
    /// A rewriter for the plan's COPY info. `storage_of` gives each encrypted column's storage type
    /// (from the catalog); a column without a known storage or without a key in `keyring` is an error.
    pub fn new(
        info: &CopyInfo,
        keyring: Arc<Keyring>,
        storage_of: &dyn Fn(&str) -> Option<Storage>,
    ) -> Result<CopyInRewriter> {
        let table = info.table.clone().unwrap_or_else(|| "(query)".to_string());
        let encrypting = info.columns.iter().any(|c| c.encrypt.is_some());
        let mut cols = Vec::with_capacity(info.columns.len());
        for c in &info.columns {
            cols.push(match &c.encrypt {
                None => None,
                Some(k) => {
                    let storage =
                        storage_of(&k.column).ok_or_else(|| RewriteError::UnknownStorage {
                            column: k.column.clone(),
                        })?;
                    if keyring.cipher(&k.column).is_none() {
                        return Err(RewriteError::NoKey {
                            column: k.column.clone(),
                        });
                    }
                    Some(InCol {
                        column: k.column.clone(),
                        ty: k.logical_type,
                        storage,
                        force_null: c.force_null,
                        force_not_null: c.force_not_null,
                    })
                }
            });
        }
        let opts = if info.format == CopyFormat::Binary {
            Opts {
                csv: false,
                delim: b'\t',
                quote: b'"',
                escape: b'"',
                null: Vec::new(),
            }
        } else {
            Opts::from_info(info, &table)?
        };
        Ok(CopyInRewriter {
            keyring,
            table,
            opts,
            cols,
            encrypting,
            header_pending: info.header || info.format == CopyFormat::Binary,
            binary: info.format == CopyFormat::Binary,
            buf: Vec::new(),
            scan: 0,
            in_quote: false,
            last_was_escape: false,
            eol: None,
            line: 0,
            done: false,
            scratch: Vec::new(),
        })
    }

    fn err(&self, detail: &'static str) -> RewriteError {
        RewriteError::MalformedCopy {
            table: self.table.clone(),
            line: self.line + 1,
            detail,
        }
    }

    /// Rewrites the complete rows in `data` (plus any partial row kept from before); keeps the tail.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        if self.done {
            return Ok(Vec::new());
        }
        if !self.encrypting {
            return Ok(data.to_vec());
        }
        self.buf.extend_from_slice(data);
        let mut out = Vec::with_capacity(self.buf.len() * 3);
        if self.binary {
            let used = self.binary_tuples(&mut out)?;
            self.buf.drain(..used);
            return Ok(out);
        }
        let mut start = 0;
        while !self.done {
            match self.next_line_end(start, false)? {
                Some((end, next)) => {
                    self.emit_line(start, end, next, &mut out)?;
                    start = next;
                    self.scan = next;
                }
                None => break,
            }
        }
        if self.done {
            self.buf.clear();
            self.scan = 0;
        } else {
            self.buf.drain(..start);
            self.scan -= start;
        }
        Ok(out)
    }

    /// At CopyDone: rewrites a last row that has no line end (PostgreSQL accepts one). A quoted CSV
    /// field still open is an error.
    pub fn finish(&mut self) -> Result<Vec<u8>> {
        if self.done || !self.encrypting {
            self.done = true;
            return Ok(Vec::new());
        }
        if self.binary {
            // PostgreSQL requires the trailer; data that stops inside the header or a tuple is cut.
            if !self.buf.is_empty() {
                return Err(self.err("the binary COPY data ends inside a tuple"));
            }
            self.done = true;
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut start = 0;
        while !self.done && start < self.buf.len() {
            match self.next_line_end(start, true)? {
                Some((end, next)) => {
                    self.emit_line(start, end, next, &mut out)?;
                    start = next;
                    self.scan = next;
                }
                None => {
                    if self.in_quote {
                        return Err(
                            self.err("a quoted CSV field is not closed at the end of the data")
                        );
                    }
                    let end = self.buf.len();
                    self.emit_line(start, end, end, &mut out)?;
                    start = end;
                }
            }
        }
        self.buf.clear();
        self.scan = 0;
        self.done = true;
        Ok(out)
    }

    /// Binary format: forwards the header, rewrites every complete tuple in `buf` into `out`, and
    /// returns how many bytes of `buf` were used (a partial tuple waits for more data).
    fn binary_tuples(&mut self, out: &mut Vec<u8>) -> Result<usize> {
        const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
        let be32 = |b: &[u8], at: usize| -> Option<i32> {
            Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        let mut at = 0;
        if self.header_pending {
            let Some(ext) = be32(&self.buf, 15) else {
                return Ok(0);
            };
            if !self.buf.starts_with(SIGNATURE) {
                return Err(
                    self.err("it is not binary COPY data (the PGCOPY signature is missing)")
                );
            }
            let flags = be32(&self.buf, 11).unwrap_or(0);
            if flags & (1 << 16) != 0 {
                return Err(self.err("binary COPY data WITH OIDS is not supported"));
            }
            let Ok(ext) = usize::try_from(ext) else {
                return Err(self.err("the binary COPY header extension length is negative"));
            };
            let end = 19 + ext;
            if self.buf.len() < end {
                return Ok(0);
            }
            out.extend_from_slice(self.buf.get(..end).unwrap_or_default());
            self.header_pending = false;
            at = end;
        }
        while !self.done {
            let Some(&[hi, lo]) = self.buf.get(at..at + 2) else {
                break;
            };
            let count = i16::from_be_bytes([hi, lo]);
            if count == -1 {
                out.extend_from_slice(&[0xff, 0xff]);
                self.done = true;
                return Ok(self.buf.len());
            }
            if usize::try_from(count).ok() != Some(self.cols.len()) {
                return Err(self.err(if i32::from(count) > self.cols.len() as i32 {
                    "it has more fields than the COPY has columns"
                } else {
                    "it has fewer fields than the COPY has columns"
                }));
            }
            // The whole tuple must be here before any of it is written.
            let mut fields = Vec::with_capacity(self.cols.len());
            let mut p = at + 2;
            for _ in 0..self.cols.len() {
                let Some(len) = be32(&self.buf, p) else {
                    return Ok(at);
                };
                p += 4;
                if len == -1 {
                    fields.push(None);
                    continue;
                }
                let Ok(len) = usize::try_from(len) else {
                    return Err(self.err("a binary COPY field has a negative length"));
                };
                if self.buf.len() < p + len {
                    return Ok(at);
                }
                fields.push(Some(p..p + len));
                p += len;
            }
            out.extend_from_slice(&[hi, lo]);
            for (field, col) in fields.into_iter().zip(&self.cols) {
                let (range, col) = match (field, col) {
                    (Some(range), Some(col)) => (range, col),
                    (None, _) => {
                        out.extend_from_slice(&(-1i32).to_be_bytes());
                        continue;
                    }
                    (Some(r), None) => {
                        // The field with its length word, as it came.
                        let field = self.buf.get(r.start - 4..r.end);
                        out.extend_from_slice(field.ok_or_else(|| self.err(OUT_OF_BUFFER))?);
                        continue;
                    }
                };
                seal_field(
                    &self.keyring,
                    col,
                    self.buf.get(range).ok_or_else(|| self.err(OUT_OF_BUFFER))?,
                    Format::Binary,
                    &mut self.scratch,
                )?;
                let len = i32::try_from(self.scratch.len())
                    .map_err(|_| self.err("an encrypted binary COPY field is too long"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&self.scratch);
            }
            self.line += 1;
            at = p;
        }
        Ok(at)
    }

    /// Finds the end of the line starting at `start`: (end of its content, start of the next line).
    /// `None` when more data is needed. Resumes scanning at `self.scan`.
    fn next_line_end(&mut self, start: usize, at_eof: bool) -> Result<Option<(usize, usize)>> {
        let b = &self.buf;
        let mut i = self.scan.max(start);
        while let Some(&c) = b.get(i) {
            if self.opts.csv {
                if self.in_quote && c == self.opts.escape && self.opts.escape != self.opts.quote {
                    self.last_was_escape = !self.last_was_escape;
                    i += 1;
                    continue;
                }
                if c == self.opts.quote {
                    if !self.last_was_escape {
                        self.in_quote = !self.in_quote;
                    }
                    self.last_was_escape = false;
                    i += 1;
                    continue;
                }
                self.last_was_escape = false;
                if self.in_quote {
                    i += 1;
                    continue;
                }
            } else if c == b'\\' {
                if i + 1 >= b.len() && !at_eof {
                    self.scan = i;
                    return Ok(None);
                }
                i += 2;
                continue;
            }
            match c {
                b'\n' => {
                    match self.eol {
                        None => self.eol = Some(Eol::Nl),
                        Some(Eol::Nl) => {}
                        Some(_) => {
                            return Err(
                                self.err("a literal newline is in the data; write it as \\n")
                            )
                        }
                    }
                    return Ok(Some((i, i + 1)));
                }
                b'\r' => {
                    let next = b.get(i + 1).copied();
                    if next.is_none() && !at_eof && self.eol != Some(Eol::Cr) {
                        self.scan = i;
                        return Ok(None);
                    }
                    let eol = if next == Some(b'\n') {
                        Eol::CrNl
                    } else {
                        Eol::Cr
                    };
                    match self.eol {
                        None => self.eol = Some(eol),
                        Some(e) if e == eol => {}
                        Some(_) => {
                            return Err(self
                                .err("a literal carriage return is in the data; write it as \\r"))
                        }
                    }
                    let next_start = if eol == Eol::CrNl { i + 2 } else { i + 1 };
                    return Ok(Some((i, next_start)));
                }
                _ => i += 1,
            }
        }
        self.scan = i.min(b.len());
        Ok(None)
    }

    /// Rewrites line `buf[start..end]` followed by its line end `buf[end..next]` into `out`.
    fn emit_line(
        &mut self,
        start: usize,
        end: usize,
        next: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let line = self.buf.get(start..end).unwrap_or_default();
        let eol = self.buf.get(end..next).unwrap_or_default();
        self.in_quote = false;
        self.last_was_escape = false;
        if self.header_pending {
            self.header_pending = false;
            out.extend_from_slice(line);
            out.extend_from_slice(eol);
            self.line += 1;
            return Ok(());
        }
        if line == b"\\." {
            out.extend_from_slice(line);
            out.extend_from_slice(eol);
            self.done = true;
            return Ok(());
        }
        let fields = self.opts.split(line).map_err(|d| self.err(d))?;
        if fields.len() != self.cols.len() {
            return Err(self.err(if fields.len() > self.cols.len() {
                "it has more fields than the COPY has columns"
            } else {
                "it has fewer fields than the COPY has columns"
            }));
        }
        for (i, ((range, quoted), col)) in fields.iter().zip(&self.cols).enumerate() {
            if i > 0 {
                out.push(self.opts.delim);
            }
            let raw = line.get(range.clone()).unwrap_or_default();
            let Some(col) = col else {
                out.extend_from_slice(raw);
                continue;
            };
            // The server reads the same options, so a NULL field is forwarded as it came.
            let value = self.opts.decode(raw);
            let null = if col.force_not_null {
                false
            } else {
                self.opts.is_null(raw, *quoted)
                    || (col.force_null && *quoted && value == self.opts.null)
            };
            if null {
                out.extend_from_slice(raw);
                continue;
            }
            seal_field(&self.keyring, col, &value, Format::Text, &mut self.scratch)?;
            self.opts.encode(&self.scratch, false, out);
        }
        out.extend_from_slice(eol);
        self.line += 1;
        Ok(())
    }
}

/// Seals one COPY field of an encrypted column (`value` in the COPY's format, text or binary) into
/// `scratch`, in the storage's form for that format.
fn seal_field(
    keyring: &Keyring,
    col: &InCol,
    value: &[u8],
    format: Format,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let cipher = keyring
        .cipher(&col.column)
        .ok_or_else(|| RewriteError::NoKey {
            column: col.column.clone(),
        })?;
    let canonical = match format {
        Format::Text => pgcloak_keymgr::typed::canonical_from_text(col.ty, value),
        Format::Binary => pgcloak_keymgr::typed::canonical_from_binary(col.ty, value),
    }
    .map_err(|e| copy_value_error(&col.column, e))?;
    scratch.clear();
    encrypt_wire_into(cipher, col.storage, &canonical, format, scratch)
}

/// A COPY field that is no value of its column's type, named by column, never by value.
fn copy_value_error(column: &str, e: pgcloak_keymgr::KeyError) -> RewriteError {
    match RewriteError::from_key(column, e) {
        RewriteError::InvalidValue {
            column, ty, reason, ..
        } => RewriteError::InvalidValue {
            column,
            ty,
            format: "COPY",
            reason,
        },
        other => other,
    }
}

/// One column of `COPY ... TO STDOUT` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutColumn {
    /// What to do with its values.
    pub action: ColumnAction,
    /// The storage type of an encrypted column (from the catalog); `None` when unknown (then only
    /// envelopes are opened, and any other value becomes NULL).
    pub storage: Option<Storage>,
}

/// Rewrites `COPY ... TO STDOUT` rows (text or CSV; one CopyData message is one row, as PostgreSQL
/// sends them): decrypts, masks or nulls fields per column action.
#[derive(Debug)]
pub struct CopyOutRewriter {
    table: String,
    opts: Opts,
    cols: Vec<ColSpec>,
    header_pending: bool,
    passthrough: bool,
    rows: u64,
    /// Where each rewritten value is presented before it is escaped into the row.
    scratch: Vec<u8>,
}

impl CopyOutRewriter {
    /// A rewriter for the plan's COPY info and one [`CopyOutColumn`] per field of the data. Binary
    /// COPY with any column to rewrite is an error.
    pub fn new(info: &CopyInfo, columns: Vec<CopyOutColumn>) -> Result<CopyOutRewriter> {
        let table = info.table.clone().unwrap_or_else(|| "(query)".to_string());
        let passthrough = columns
            .iter()
            .all(|c| c.action == ColumnAction::PassThrough);
        if info.format == CopyFormat::Binary && !passthrough {
            return Err(RewriteError::BinaryCopyOut { table });
        }
        let opts = Opts::from_info(info, &table)?;
        let cols = columns
            .into_iter()
            .map(|c| ColSpec {
                action: c.action,
                format: Format::Text,
                storage: c.storage,
                server_oid: None,
            })
            .collect();
        Ok(CopyOutRewriter {
            table,
            opts,
            cols,
            header_pending: info.header,
            passthrough,
            rows: 0,
            scratch: Vec::new(),
        })
    }

    /// Rewrites one CopyData payload (one row with its newline). `None`: forward it unchanged.
    pub fn rewrite(&mut self, payload: &[u8], ctx: &RowCtx<'_>) -> Result<Option<Vec<u8>>> {
        if self.passthrough {
            return Ok(None);
        }
        if self.header_pending {
            self.header_pending = false;
            return Ok(None);
        }
        self.rows += 1;
        let bad = |detail| RewriteError::MalformedServerMessage {
            what: "COPY data",
            detail,
        };
        let (line, eol) = if let Some(l) = payload.strip_suffix(b"\r\n") {
            (l, &b"\r\n"[..])
        } else if let Some(l) = payload.strip_suffix(b"\n") {
            (l, &b"\n"[..])
        } else {
            (payload, &b""[..])
        };
        let fields = self.opts.split(line).map_err(bad)?;
        if fields.len() != self.cols.len() {
            return Err(bad(
                "a row's number of fields differs from the COPY's columns",
            ));
        }
        let mut out = Vec::with_capacity(payload.len() + 16);
        let mut changed = false;
        for (i, ((range, quoted), col)) in fields.iter().zip(&self.cols).enumerate() {
            if i > 0 {
                out.push(self.opts.delim);
            }
            let raw = line.get(range.clone()).unwrap_or_default();
            if col.action == ColumnAction::PassThrough || self.opts.is_null(raw, *quoted) {
                out.extend_from_slice(raw);
                continue;
            }
            let value = self.opts.decode(raw);
            self.scratch.clear();
            match present(&value, col, ctx, &mut self.scratch)? {
                Presented::Null => out.extend_from_slice(&self.opts.null),
                Presented::Written => self.opts.encode(&self.scratch, *quoted, &mut out),
            }
            changed = true;
        }
        out.extend_from_slice(eol);
        Ok(changed.then_some(out))
    }

    /// `schema.table` (or `(query)`) the data comes from.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Data rows rewritten so far (header excluded).
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::testkit::{ctx, Kit, Rng, EMAIL, NOTES, PHONE, SALARY};
    use crate::rewrite::values::stored_text;
    use pgcloak_policy::{ColumnKey, CopyColumn, CopyDirection, CopyEndpoint, EncryptMode, Mask};

    fn copy_info(
        format: CopyFormat,
        cols: &[(&str, Option<(&str, pgcloak_policy::LogicalType)>)],
    ) -> CopyInfo {
        CopyInfo {
            direction: CopyDirection::From,
            endpoint: CopyEndpoint::Stdin,
            table: Some("public.customers".into()),
            columns: cols
                .iter()
                .map(|(name, enc)| CopyColumn {
                    force_null: false,
                    force_not_null: false,
                    name: name.to_string(),
                    encrypt: enc.map(|(column, t)| ColumnKey {
                        column: column.to_string(),
                        mode: EncryptMode::Deterministic,
                        logical_type: t,
                    }),
                })
                .collect(),
            format,
            delimiter: None,
            null: None,
            header: false,
            quote: None,
            escape: None,
        }
    }

    use pgcloak_policy::LogicalType as P;

    fn storage_map(column: &str) -> Option<Storage> {
        match column {
            EMAIL => Some(Storage::Text),
            PHONE | SALARY => Some(Storage::Bytea),
            _ => None,
        }
    }

    fn customers(format: CopyFormat) -> CopyInfo {
        copy_info(
            format,
            &[
                ("id", None),
                ("email", Some((EMAIL, P::Text))),
                ("phone", Some((PHONE, P::Text))),
                ("note", None),
            ],
        )
    }

    fn rewriter(kit: &Kit, info: &CopyInfo) -> CopyInRewriter {
        CopyInRewriter::new(info, Arc::new(kit.keyring()), &storage_map).unwrap()
    }

    fn run(kit: &Kit, info: &CopyInfo, chunks: &[&[u8]]) -> Result<Vec<u8>> {
        let mut r = rewriter(kit, info);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(r.push(c)?);
        }
        out.extend(r.finish()?);
        Ok(out)
    }

    /// Reads the rewritten data back through COPY TO rules: decrypt everything (what the server
    /// would send back for these rows is exactly what was sent in).
    fn read_back(kit: &Kit, info: &CopyInfo, data: &[u8]) -> Vec<u8> {
        let kr = kit.keyring();
        let all = |_: &str| true;
        let cx = ctx(&kr, &all);
        let columns = info
            .columns
            .iter()
            .map(|c| CopyOutColumn {
                action: match &c.encrypt {
                    None => ColumnAction::PassThrough,
                    Some(k) => ColumnAction::Decrypt {
                        column: k.column.clone(),
                        ty: k.logical_type,
                    },
                },
                storage: c.encrypt.as_ref().and_then(|k| storage_map(&k.column)),
            })
            .collect();
        let mut out_info = info.clone();
        out_info.direction = CopyDirection::To;
        let mut r = CopyOutRewriter::new(&out_info, columns).unwrap();
        let mut out = Vec::new();
        // Split into rows the way the server sends them (one per message); CSV rows may hold
        // quoted newlines, so split with the COPY IN scanner.
        let mut scan = CopyInRewriter::new(
            &copy_info(info.format, &[("x", None)]),
            Arc::new(kit.keyring()),
            &storage_map,
        )
        .unwrap();
        scan.opts = r.opts.clone();
        scan.buf = data.to_vec();
        let mut start = 0;
        while let Some((_, next)) = scan.next_line_end(start, true).unwrap() {
            let row = &data[start..next];
            if row.starts_with(b"\\.\r") || row.starts_with(b"\\.\n") {
                out.extend_from_slice(&data[start..]);
                return out;
            }
            match r.rewrite(row, &cx).unwrap() {
                Some(v) => out.extend(v),
                None => out.extend_from_slice(row),
            }
            start = next;
            scan.scan = next;
            scan.in_quote = false;
        }
        if start < data.len() {
            match r.rewrite(&data[start..], &cx).unwrap() {
                Some(v) => out.extend(v),
                None => out.extend_from_slice(&data[start..]),
            }
        }
        out
    }

    const TEXT_DATA: &[u8] = b"1\talice@example.com\t555-0100\tplain\n\
2\t\\N\tx\\ty\\\\z\\nw\t\\N\n\
3\t\t\\101\\x42C\\.\tend\\\n next\n\
4\tb@c\t\xc3\xa9\tdone\n\
\\.\n\
5\tafter the end marker is dropped\n";

    #[test]
    fn text_format_encrypts_only_encrypted_fields() {
        let kit = Kit::new();
        let info = customers(CopyFormat::Text);
        let out = run(&kit, &info, &[TEXT_DATA]).unwrap();
        let s = String::from_utf8(out.clone()).unwrap();
        let lines: Vec<&str> = s.split('\n').collect();
        assert!(
            lines[0].starts_with("1\tpgc1:") && lines[0].ends_with("\tplain"),
            "{}",
            lines[0]
        );
        let f: Vec<&str> = lines[0].split('\t').collect();
        assert!(f[2].starts_with("\\\\x"), "bytea in COPY text: {}", f[2]);
        assert!(lines[1].starts_with("2\t\\N\t\\\\x") && lines[1].ends_with("\t\\N"));
        assert!(!s.contains("alice") && !s.contains("555-0100") && !s.contains("after"));
        assert!(s.ends_with("\\.\n"));
        // Decrypting gives the values back, in COPY text form.
        let back = read_back(&kit, &info, &out);
        let expect = b"1\talice@example.com\t555-0100\tplain\n\
2\t\\N\tx\\ty\\\\z\\nw\t\\N\n\
3\t\tABC.\tend\\\n next\n\
4\tb@c\t\xc3\xa9\tdone\n\
\\.\n";
        assert_eq!(
            String::from_utf8_lossy(&back),
            String::from_utf8_lossy(expect)
        );
    }

    #[test]
    fn csv_quotes_header_nulls_and_empty_strings() {
        let kit = Kit::new();
        let mut info = customers(CopyFormat::Csv);
        info.header = true;
        let data = b"id,email,phone,note\r\n\
1,\"a,b@c\",\"line1\r\nline2\",\"x\"\"y\"\r\n\
2,,\"\",\r\n\
3,\"q\"\"uote\",plain,\"multi\nline\"\r\n";
        let out = run(&kit, &info, &[data]).unwrap();
        let s = String::from_utf8_lossy(&out).into_owned();
        assert!(s.starts_with("id,email,phone,note\r\n1,pgc1:"), "{s}");
        assert!(!s.contains("line1") && !s.contains("b@c") && !s.contains("uote"));
        // Row 2: NULL email stays NULL (unquoted empty); the quoted empty phone is encrypted.
        let row2 = s.split("\r\n").nth(2).unwrap();
        assert!(row2.starts_with("2,,\\x") && row2.ends_with(','), "{row2}");
        let back = read_back(&kit, &info, &out);
        let expect = b"id,email,phone,note\r\n\
1,\"a,b@c\",\"line1\r\nline2\",\"x\"\"y\"\r\n\
2,,\"\",\r\n\
3,\"q\"\"uote\",plain,\"multi\nline\"\r\n";
        assert_eq!(
            String::from_utf8_lossy(&back),
            String::from_utf8_lossy(expect)
        );
    }

    #[test]
    fn csv_force_null_and_force_not_null() {
        let kit = Kit::new();
        let mut info = customers(CopyFormat::Csv);
        info.columns[1].force_null = true; // email
        info.columns[2].force_not_null = true; // phone
        let data = b"1,\"\",,n\r\n2,,\"\",n\r\n3,\"\"\"\",x,n\r\n";
        let out = run(&kit, &info, &[data]).unwrap();
        let s = String::from_utf8_lossy(&out).into_owned();
        let rows: Vec<&str> = s.split("\r\n").collect();
        // Quoted empty email under FORCE_NULL: NULL, forwarded as written (the server reads it so).
        // Unquoted empty phone under FORCE_NOT_NULL: an empty string, so encrypted.
        assert!(rows[0].starts_with("1,\"\",\\x"), "{}", rows[0]);
        // Without FORCE_NULL the unquoted empty email is NULL as always; a quoted empty phone is a value.
        assert!(rows[1].starts_with("2,,\\x"), "{}", rows[1]);
        // A quoted field that is not the null string is a value under FORCE_NULL.
        assert!(rows[2].starts_with("3,pgc1:"), "{}", rows[2]);
        let back = String::from_utf8_lossy(&read_back(&kit, &info, &out)).into_owned();
        let back: Vec<&str> = back.split("\r\n").collect();
        assert_eq!(back[1], "2,,\"\",n");
        assert_eq!(back[2], "3,\"\"\"\",x,n");
        assert!(back[0].ends_with(",\"\",n"), "{}", back[0]);
    }

    #[test]
    fn csv_with_other_delimiter_quote_escape_and_null() {
        let kit = Kit::new();
        let mut info = customers(CopyFormat::Csv);
        info.delimiter = Some(':');
        info.quote = Some('\'');
        info.escape = Some('\\');
        info.null = Some("NULL".into());
        let data = b"1:'it\\'s:here':NULL:'a''b'\n2:NULL:'NULL':x\n";
        let out = run(&kit, &info, &[data]).unwrap();
        let s = String::from_utf8_lossy(&out).into_owned();
        // Armour contains `:`, the delimiter here: the field is quoted.
        assert!(s.starts_with("1:'pgc1:"), "{s}");
        let back = read_back(&kit, &info, &out);
        assert_eq!(
            String::from_utf8_lossy(&back),
            "1:'it\\'s:here':NULL:'a''b'\n2:NULL:'NULL':x\n"
        );
    }

    #[test]
    fn text_with_colon_delimiter_escapes_armour() {
        let kit = Kit::new();
        let mut info = customers(CopyFormat::Text);
        info.delimiter = Some(':');
        let out = run(&kit, &info, &[b"1:a@b:c:d\n"]).unwrap();
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(s.starts_with("1:pgc1\\:"), "{s}");
        assert_eq!(read_back(&kit, &info, &out), b"1:a@b:c:d\n");
    }

    #[test]
    fn last_line_without_newline_and_crlf_and_cr() {
        let kit = Kit::new();
        let info = customers(CopyFormat::Text);
        for data in [
            &b"1\ta\tb\tc"[..],
            b"1\ta\tb\tc\r\n2\td\te\tf",
            b"1\ta\tb\tc\r2\td\te\tf\r",
        ] {
            let out = run(&kit, &info, &[data]).unwrap();
            assert_eq!(read_back(&kit, &info, &out), data);
        }
        // Mixed line endings are refused like PostgreSQL does.
        assert!(run(&kit, &info, &[b"1\ta\tb\tc\r\n2\td\te\tf\n"]).is_err());
        let csv = customers(CopyFormat::Csv);
        let e = run(&kit, &csv, &[b"1,\"open,b,c"]).unwrap_err();
        assert_eq!(e.sqlstate(), "22P04");
    }

    #[test]
    fn wrong_field_counts_and_values_are_errors_naming_the_line() {
        let kit = Kit::new();
        let info = customers(CopyFormat::Text);
        let e = run(&kit, &info, &[b"1\ta\tb\tc\n2\ta\tb\n"]).unwrap_err();
        assert_eq!(
            e,
            RewriteError::MalformedCopy {
                table: "public.customers".into(),
                line: 2,
                detail: "it has fewer fields than the COPY has columns"
            }
        );
        assert!(run(&kit, &info, &[b"1\ta\tb\tc\td\n"]).is_err());
        let sal = copy_info(CopyFormat::Text, &[("salary", Some((SALARY, P::Int4)))]);
        let e = run(&kit, &sal, &[b"12\nlots\n"]).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains(SALARY) && m.contains("COPY") && !m.contains("lots"),
            "{m}"
        );
    }

    fn binary_copy(tuples: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut d = b"PGCOPY\n\xff\r\n\0".to_vec();
        d.extend_from_slice(&0i32.to_be_bytes());
        d.extend_from_slice(&3i32.to_be_bytes());
        d.extend_from_slice(b"ext");
        for t in tuples {
            d.extend_from_slice(&(t.len() as i16).to_be_bytes());
            for f in t {
                match f {
                    None => d.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        d.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        d.extend_from_slice(v);
                    }
                }
            }
        }
        d.extend_from_slice(&(-1i16).to_be_bytes());
        d
    }

    /// The tuples of binary COPY data (after a header without extension bytes beyond `ext`).
    fn binary_fields(data: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
        let mut at = 22;
        let mut out = Vec::new();
        loop {
            let n = i16::from_be_bytes([data[at], data[at + 1]]);
            at += 2;
            if n == -1 {
                assert_eq!(at, data.len());
                return out;
            }
            let mut t = Vec::new();
            for _ in 0..n {
                let len = i32::from_be_bytes(data[at..at + 4].try_into().unwrap());
                at += 4;
                if len < 0 {
                    t.push(None);
                } else {
                    t.push(Some(data[at..at + len as usize].to_vec()));
                    at += len as usize;
                }
            }
            out.push(t);
        }
    }

    /// asyncpg's `copy_records_to_table` writes binary COPY: each encrypted field is replaced by its
    /// storage's binary form, whatever the chunking; malformed data is an error naming the tuple.
    #[test]
    fn binary_copy_in_encrypts_fields_of_encrypted_columns() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let info = copy_info(
            CopyFormat::Binary,
            &[
                ("id", None),
                ("email", Some((EMAIL, P::Text))),
                ("salary", Some((SALARY, P::Int4))),
            ],
        );
        let data = binary_copy(&[
            vec![
                Some(&7i32.to_be_bytes()),
                Some(b"a@example.com"),
                Some(&5000i32.to_be_bytes()),
            ],
            vec![
                Some(&8i32.to_be_bytes()),
                None,
                Some(&(-1i32).to_be_bytes()),
            ],
        ]);
        let out = run(&kit, &info, &[&data]).unwrap();
        assert_eq!(&out[..22], &data[..22], "the header passes through");
        let t = binary_fields(&out);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0][0].as_deref(), Some(&7i32.to_be_bytes()[..]));
        let email = t[0][1].as_deref().unwrap();
        assert!(
            email.starts_with(b"pgc1:"),
            "text storage holds the armoured envelope"
        );
        assert_eq!(
            kr.cipher(EMAIL).unwrap().decrypt(email).unwrap(),
            b"a@example.com"
        );
        let salary = t[0][2].as_deref().unwrap();
        assert_eq!(
            kr.cipher(SALARY).unwrap().decrypt(salary).unwrap(),
            5000i32.to_be_bytes(),
            "bytea storage holds the raw envelope"
        );
        assert_eq!(t[1][1], None, "NULL stays NULL");
        assert_eq!(
            kr.cipher(SALARY)
                .unwrap()
                .decrypt(t[1][2].as_deref().unwrap())
                .unwrap(),
            (-1i32).to_be_bytes()
        );
        // salary is randomized in the test keyring: compare what the fields decrypt to.
        let plain = |out: &[u8]| -> Vec<Vec<Option<Vec<u8>>>> {
            binary_fields(out)
                .into_iter()
                .map(|t| {
                    t.into_iter()
                        .zip([None, Some(EMAIL), Some(SALARY)])
                        .map(|(f, col)| match (f, col) {
                            (Some(v), Some(c)) => Some(kr.cipher(c).unwrap().decrypt(&v).unwrap()),
                            (f, _) => f,
                        })
                        .collect()
                })
                .collect()
        };
        let whole = plain(&out);
        for k in 0..=data.len() {
            let (a, b) = data.split_at(k);
            assert_eq!(
                plain(&run(&kit, &info, &[a, b]).unwrap()),
                whole,
                "split at {k}"
            );
        }
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(plain(&run(&kit, &info, &bytes).unwrap()), whole);

        let err = |d: &[u8]| run(&kit, &info, &[d]).unwrap_err().to_string();
        let two = |a: Option<&[u8]>| binary_copy(&[vec![Some(&1i32.to_be_bytes()), a]]);
        assert!(err(&two(Some(b"x"))).contains("fewer fields"));
        let short_int = binary_copy(&[vec![Some(&1i32.to_be_bytes()), Some(b"x"), Some(b"12")]]);
        let m = err(&short_int);
        assert!(m.contains(SALARY) && !m.contains("12"), "{m}");
        let bad_utf8 = binary_copy(&[vec![None, Some(b"\xff\xfe"), None]]);
        assert!(err(&bad_utf8).contains("UTF-8"), "{}", err(&bad_utf8));
        assert!(err(b"PGCOPX\n\xff\r\n\0\0\0\0\0\0\0\0\0").contains("signature"));
        let mut oids = data.clone();
        oids[12] = 1; // flag bit 16
        assert!(err(&oids).contains("OIDS"));
        let mut negative = data.clone();
        negative[24..28].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(err(&negative).contains("negative length"));
        assert!(err(&data[..data.len() - 3]).contains("ends inside a tuple"));
        // Without encrypted columns the data is not parsed at all.
        let plain = copy_info(CopyFormat::Binary, &[("id", None)]);
        let mut r = CopyInRewriter::new(&plain, Arc::new(kit.keyring()), &storage_map).unwrap();
        assert_eq!(r.push(b"anything").unwrap(), b"anything");
    }

    #[test]
    fn copy_in_needs_storage_and_key_and_binary_copy_out_is_refused() {
        let kit = Kit::new();
        // Unknown storage / missing key are refused up front.
        let odd = copy_info(CopyFormat::Text, &[("n", Some((NOTES, P::Text)))]);
        assert!(matches!(
            CopyInRewriter::new(&odd, Arc::new(kit.keyring()), &storage_map).unwrap_err(),
            RewriteError::UnknownStorage { .. }
        ));
        let nokey = copy_info(CopyFormat::Text, &[("n", Some(("public.x.y", P::Text)))]);
        assert!(matches!(
            CopyInRewriter::new(&nokey, Arc::new(kit.keyring()), &|_: &str| Some(
                Storage::Text
            ))
            .unwrap_err(),
            RewriteError::NoKey { .. }
        ));
        let mut out_info = customers(CopyFormat::Binary);
        out_info.direction = CopyDirection::To;
        let cols = vec![CopyOutColumn {
            action: ColumnAction::Null,
            storage: None,
        }];
        assert!(CopyOutRewriter::new(&out_info, cols).is_err());
    }

    /// Any chunking of the input across CopyData messages gives the same output (deterministic columns
    /// make the ciphertexts reproducible).
    #[test]
    fn any_chunking_gives_identical_output() {
        let kit = Kit::new();
        let mut csv = customers(CopyFormat::Csv);
        csv.header = true;
        let csv_data: &[u8] = b"id,email,phone,note\r\n1,\"a,b\",\"l1\r\nl2\",\"x\"\"y\"\r\n2,,\"\",\r\n3,e,f,g\r\n\\.\r\nignored";
        let cases: Vec<(CopyInfo, &[u8])> =
            vec![(customers(CopyFormat::Text), TEXT_DATA), (csv, csv_data)];
        let mut rng = Rng::new(42);
        for (info, data) in cases {
            let whole = run(&kit, &info, &[data]).unwrap();
            for k in 0..=data.len() {
                let (a, b) = data.split_at(k);
                assert_eq!(run(&kit, &info, &[a, b]).unwrap(), whole, "split at {k}");
            }
            for _ in 0..300 {
                let mut chunks = Vec::new();
                let mut rest = data;
                while !rest.is_empty() {
                    let n = 1 + rng.below(rest.len().min(7));
                    let (c, r) = rest.split_at(n);
                    chunks.push(c);
                    rest = r;
                }
                assert_eq!(run(&kit, &info, &chunks).unwrap(), whole);
            }
            // Byte by byte.
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            assert_eq!(run(&kit, &info, &bytes).unwrap(), whole);
        }
    }

    #[test]
    fn copy_out_masks_nulls_and_decrypts() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let none = |_: &str| false;
        let cx = ctx(&kr, &none);
        let email = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
        let phone = kit.target(&kr, PHONE, LogicalType::Text, Storage::Bytea);
        let e = String::from_utf8(email.encrypt(b"alice@example.com").unwrap()).unwrap();
        let p = String::from_utf8(stored_text(
            Storage::Bytea,
            &phone.encrypt(b"555-123-4567").unwrap(),
        ))
        .unwrap();
        let mut out_info = customers(CopyFormat::Text);
        out_info.direction = CopyDirection::To;
        out_info.header = true;
        let cols = vec![
            CopyOutColumn {
                action: ColumnAction::PassThrough,
                storage: None,
            },
            CopyOutColumn {
                action: ColumnAction::Decrypt {
                    column: EMAIL.into(),
                    ty: LogicalType::Text,
                },
                storage: Some(Storage::Text),
            },
            CopyOutColumn {
                action: ColumnAction::Mask {
                    column: PHONE.into(),
                    ty: LogicalType::Text,
                    mask: Mask::Last4,
                    encrypted: true,
                },
                storage: Some(Storage::Bytea),
            },
            CopyOutColumn {
                action: ColumnAction::Null,
                storage: None,
            },
        ];
        let mut r = CopyOutRewriter::new(&out_info, cols).unwrap();
        assert_eq!(
            r.rewrite(b"id\temail\tphone\tnote\n", &cx).unwrap(),
            None,
            "header"
        );
        let row = format!("7\t{e}\t{}\tsecret note\n", p.replace('\\', "\\\\"));
        let got = r.rewrite(row.as_bytes(), &cx).unwrap().unwrap();
        assert_eq!(got, b"7\talice@example.com\t****4567\t\\N\n");
        let got = r.rewrite(b"8\t\\N\t\\N\t\\N\n", &cx).unwrap();
        assert_eq!(got, None);
        // A ciphertext of another column in the email field is not decrypted.
        let other = kit.target(&kr, NOTES, LogicalType::Text, Storage::Text);
        let o = String::from_utf8(other.encrypt(b"x").unwrap()).unwrap();
        let got = r
            .rewrite(format!("9\t{o}\t\\N\t\\N\n").as_bytes(), &cx)
            .unwrap()
            .unwrap();
        assert_eq!(got, b"9\t\\N\t\\N\t\\N\n");
        assert_eq!(r.rows(), 3);
        assert!(r.rewrite(b"1\t2\n", &cx).is_err());
    }

    #[test]
    fn copy_out_csv_keeps_the_servers_quoting() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let none = |_: &str| false;
        let cx = ctx(&kr, &none);
        let email = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
        let e = String::from_utf8(email.encrypt(b"alice@example.com").unwrap()).unwrap();
        let mut out_info = customers(CopyFormat::Csv);
        out_info.direction = CopyDirection::To;
        out_info.columns.truncate(2);
        let cols = vec![
            CopyOutColumn {
                action: ColumnAction::PassThrough,
                storage: None,
            },
            CopyOutColumn {
                action: ColumnAction::Decrypt {
                    column: EMAIL.into(),
                    ty: LogicalType::Text,
                },
                storage: Some(Storage::Text),
            },
        ];
        let mut r = CopyOutRewriter::new(&out_info, cols).unwrap();
        // FORCE_QUOTE: the server quoted the ciphertext, so the plaintext is quoted too.
        let got = r
            .rewrite(format!("\"7\",\"{e}\"\n").as_bytes(), &cx)
            .unwrap()
            .unwrap();
        assert_eq!(got, b"\"7\",\"alice@example.com\"\n");
        let got = r
            .rewrite(format!("7,{e}\n").as_bytes(), &cx)
            .unwrap()
            .unwrap();
        assert_eq!(got, b"7,alice@example.com\n");
    }

    #[test]
    fn copy_parsers_never_panic_on_random_bytes() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let all = |_: &str| true;
        let cx = ctx(&kr, &all);
        let mut rng = Rng::new(99);
        let alphabet = b"\t,\"\\\r\nN.pgc1:x0a";
        for round in 0..1500 {
            let mut i = customers(if round % 2 == 0 {
                CopyFormat::Text
            } else {
                CopyFormat::Csv
            });
            i.header = rng.below(3) == 0;
            if rng.below(4) == 0 {
                i.escape = Some('\\');
            }
            let mut r = rewriter(&kit, &i);
            for _ in 0..rng.below(4) {
                let chunk = rng.bytes_from(alphabet, 40);
                if r.push(&chunk).is_err() {
                    break;
                }
            }
            let _ = r.finish();
            let mut o = i.clone();
            o.direction = CopyDirection::To;
            let cols = (0..4)
                .map(|k| CopyOutColumn {
                    action: if k == 1 {
                        ColumnAction::Decrypt {
                            column: EMAIL.into(),
                            ty: LogicalType::Int4,
                        }
                    } else {
                        ColumnAction::Mask {
                            column: PHONE.into(),
                            ty: LogicalType::Date,
                            mask: Mask::Email,
                            encrypted: k == 2,
                        }
                    },
                    storage: if k == 2 { Some(Storage::Bytea) } else { None },
                })
                .collect();
            let mut w = CopyOutRewriter::new(&o, cols).unwrap();
            let _ = w.rewrite(&rng.bytes_from(alphabet, 60), &cx);
        }
        // Binary: a valid header, then random tuples.
        let header = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
        for _ in 0..1500 {
            let mut r = rewriter(&kit, &customers(CopyFormat::Binary));
            let mut data = header.to_vec();
            data.extend(rng.bytes_from(b"\0\x04\xff\x01x", 60));
            let cut = rng.below(data.len());
            if r.push(&data[..cut]).is_ok() && r.push(&data[cut..]).is_ok() {
                let _ = r.finish();
            }
        }
    }
}
