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
use pgcloak_policy::{Class, CopyFormat, CopyInfo};

use super::error::{Result, RewriteError};
use super::escape::{decode_escape, Dialect};
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
            let Some((byte, next)) = decode_escape(raw, i + 1, Dialect::CopyText) else {
                out.push(b'\\');
                break;
            };
            out.push(byte);
            i = next;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Nl,
    Cr,
    CrNl,
}

#[derive(Debug, Clone)]
struct InCol {
    column: String,
    class: Class,
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
                        class: k.class,
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
    encrypt_wire_into(cipher, col.storage, &canonical, format, scratch)?;
    crate::metrics::with(|c| c.value(col.class, crate::metrics::ValueOutcome::Encrypted));
    Ok(())
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
mod tests;
