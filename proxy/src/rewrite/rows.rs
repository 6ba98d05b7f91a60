//! Reads: RowDescription (present encrypted columns with their logical types, masked and nulled ones
//! as `text`) and DataRow (decrypt, mask or null each protected value).
//!
//! The key-id backstop: a value that is an envelope is decrypted only when its key belongs to the
//! column the plan expects there, or to a column the role may read in plaintext
//! ([`RowCtx::may_read_plaintext`]; aliases, views, unions). Otherwise it becomes NULL and is never
//! decrypted. A value that is not an envelope in an encrypted column (legacy plaintext not yet moved
//! by `pgcloak encrypt`) is passed on for `text` storage when it parses as the logical type (it is
//! the plaintext the reader may see), and NULL for `bytea` storage (raw bytes are no value of the
//! logical type) or when the storage is unknown.

use std::sync::Arc;

use bytes::Bytes;
use pgcloak_keymgr::subject::SUBJECT_FORMAT_VERSION;
use pgcloak_keymgr::{
    envelope, typed, Envelope, KeyError, Keyring, LogicalType, SubjectCipher, SubjectHeader,
};
use pgcloak_policy::{apply_mask, Class, Mask, MaskedValue, Output, OutputAction};

use super::error::{Result, RewriteError};
use super::params::{frame, put_i32_at};
use super::{type_len, Format, Storage};
use crate::protocol::reader::Reader;

/// What to do with each value of one result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnAction {
    /// Forward as received (ciphertext stays ciphertext).
    PassThrough,
    /// Decrypt with the key of `column` and present as `ty`.
    Decrypt {
        /// `schema.table.column`.
        column: String,
        /// Logical type presented.
        ty: LogicalType,
        class: Class,
    },
    /// Decrypt if `encrypted`, then mask; presented as `text`.
    Mask {
        /// `schema.table.column`.
        column: String,
        /// Logical type of the value before masking.
        ty: LogicalType,
        /// The mask.
        mask: Mask,
        /// Whether stored values are envelopes.
        encrypted: bool,
        class: Class,
    },
    /// Every value becomes NULL; presented as `text`.
    Null { class: Class },
}

impl ColumnAction {
    /// The action for a plan output.
    pub fn from_output(a: &OutputAction) -> ColumnAction {
        match a {
            OutputAction::PassThrough => ColumnAction::PassThrough,
            OutputAction::Decrypt {
                column,
                logical_type: t,
                class,
            } => ColumnAction::Decrypt {
                column: column.clone(),
                ty: *t,
                class: *class,
            },
            OutputAction::Mask {
                column,
                mask,
                logical_type: t,
                encrypted,
                class,
            } => ColumnAction::Mask {
                column: column.clone(),
                ty: *t,
                mask: *mask,
                encrypted: *encrypted,
                class: *class,
            },
            OutputAction::Null { class } => ColumnAction::Null { class: *class },
        }
    }
}

/// Per result column of a RowDescription with `n_fields` fields, the action of the plan's outputs
/// (by [`Output::index`]; columns without an output pass through). An output that needs an action at
/// a position the row does not have is an error (fail closed: the plan and the server disagree).
pub fn actions_for(outputs: &[Output], n_fields: usize) -> Result<Vec<ColumnAction>> {
    let mut actions = vec![ColumnAction::PassThrough; n_fields];
    for o in outputs {
        let a = ColumnAction::from_output(&o.action);
        if a == ColumnAction::PassThrough {
            continue;
        }
        let slot = actions
            .get_mut(o.index)
            .ok_or(RewriteError::MalformedServerMessage {
                what: "RowDescription",
                detail: "it has fewer columns than the statement's plan protects",
            })?;
        *slot = a;
    }
    Ok(actions)
}

/// What a DataRow or COPY rewrite needs besides the row: the unlocked keyring, the key-id backstop and
/// the `hash` mask key (`MasterKey::mask_hash_key`).
#[derive(Clone, Copy)]
pub struct RowCtx<'a> {
    /// The unlocked keyring.
    pub keyring: &'a Keyring,
    /// Whether the session's policy role may read `schema.table.column` in plaintext: a ciphertext
    /// of that column found where another column was expected may then be decrypted.
    pub may_read_plaintext: &'a (dyn Fn(&str) -> bool + Sync),
    /// Key of the `hash` mask.
    pub mask_hash_key: &'a [u8],
    /// The keys of data subjects (subject-keyed columns).
    pub subjects: &'a dyn super::SubjectSource,
}

impl std::fmt::Debug for RowCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowCtx")
            .field("keyring", &self.keyring.generation())
            .field("mask_hash_key", &"[redacted]")
            .finish()
    }
}

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column label (without the NUL).
    pub name: Vec<u8>,
    /// Table oid (0 if not a table column).
    pub table_oid: u32,
    /// Attribute number (0 if not a table column).
    pub attnum: i16,
    /// Type oid.
    pub type_oid: u32,
    /// Type length (`pg_type.typlen`).
    pub typlen: i16,
    /// Type modifier.
    pub typmod: i32,
    /// Format code (0 text, 1 binary; 0 in a Describe of a statement).
    pub format: i16,
}

/// A parsed RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDescription {
    /// The fields, in order.
    pub fields: Vec<Field>,
}

impl RowDescription {
    /// Parses a RowDescription body (after tag and length).
    pub fn parse(body: &[u8]) -> Result<RowDescription> {
        let mut c = Reader::server(body, "RowDescription");
        let n = usize::try_from(c.i16()?).map_err(|_| c.err("its field count is negative"))?;
        let mut fields = Vec::with_capacity(n.min(body.len() / 19 + 1));
        for _ in 0..n {
            let nul = c
                .remaining()
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| c.err("a field name is not NUL-terminated"))?;
            let name = c.bytes(nul)?.to_vec();
            c.bytes(1)?;
            fields.push(Field {
                name,
                table_oid: c.i32()? as u32,
                attnum: c.i16()?,
                type_oid: c.i32()? as u32,
                typlen: c.i16()?,
                typmod: c.i32()?,
                format: c.i16()?,
            });
        }
        if c.pos() != body.len() {
            return Err(c.err("it has bytes after its last field").into());
        }
        Ok(RowDescription { fields })
    }

    /// The whole RowDescription frame (`T`, length, body).
    pub fn to_frame(&self) -> Result<Bytes> {
        let mut out =
            Vec::with_capacity(2 + self.fields.iter().map(|f| f.name.len() + 19).sum::<usize>());
        out.extend_from_slice(&(self.fields.len() as i16).to_be_bytes());
        for f in &self.fields {
            out.extend_from_slice(&f.name);
            out.push(0);
            out.extend_from_slice(&f.table_oid.to_be_bytes());
            out.extend_from_slice(&f.attnum.to_be_bytes());
            out.extend_from_slice(&f.type_oid.to_be_bytes());
            out.extend_from_slice(&f.typlen.to_be_bytes());
            out.extend_from_slice(&f.typmod.to_be_bytes());
            out.extend_from_slice(&f.format.to_be_bytes());
        }
        frame(b'T', &out)
    }
}

/// How to treat one column of a row: the action, the wire format values come in and leave in, and
/// the storage type the server reported (for the legacy-plaintext rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColSpec {
    pub(crate) action: ColumnAction,
    pub(crate) format: Format,
    pub(crate) storage: Option<Storage>,
    /// The server's type oid (to read unencrypted masked values in binary format).
    pub(crate) server_oid: Option<u32>,
}

/// The columns of a result as the session keeps them between RowDescription and DataRows.
///
/// Shared: a prepared statement's shape is handed to every Execute of it (libpq describes the portal
/// each time), so cloning is a reference count, not a copy of every column's action and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowShape {
    cols: Arc<Vec<ColSpec>>,
    /// Every column passes through (DataRows need not be looked at).
    passthrough: bool,
}

impl RowShape {
    /// The shape of a described result under `actions` (missing trailing actions pass through).
    pub fn new(rd: &RowDescription, actions: &[ColumnAction]) -> Result<RowShape> {
        if actions.len() > rd.fields.len() {
            return Err(RewriteError::MalformedServerMessage {
                what: "RowDescription",
                detail: "it has fewer columns than the statement's plan protects",
            });
        }
        let mut cols = Vec::with_capacity(rd.fields.len());
        for (i, f) in rd.fields.iter().enumerate() {
            let format =
                Format::from_code(f.format).ok_or(RewriteError::MalformedServerMessage {
                    what: "RowDescription",
                    detail: "a format code is neither 0 (text) nor 1 (binary)",
                })?;
            cols.push(ColSpec {
                action: actions.get(i).cloned().unwrap_or(ColumnAction::PassThrough),
                format,
                storage: Storage::from_oid(f.type_oid),
                server_oid: Some(f.type_oid),
            });
        }
        Ok(RowShape::from_cols(cols))
    }

    /// The shape of a statement that returns no rows (NoData).
    pub fn empty() -> RowShape {
        RowShape::from_cols(Vec::new())
    }

    fn from_cols(cols: Vec<ColSpec>) -> RowShape {
        let passthrough = cols.iter().all(|c| c.action == ColumnAction::PassThrough);
        RowShape {
            cols: Arc::new(cols),
            passthrough,
        }
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// No columns.
    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// Every column passes through: DataRows need not be looked at.
    #[inline]
    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// Sets the result formats from a Bind's result format codes (0 codes: all text; 1: all that
    /// code; else one per column) — needed when the RowDescription came from a Describe of the
    /// statement, which reports format 0 for every column.
    pub fn set_result_formats(&mut self, codes: &[i16]) -> Result<()> {
        let bad = |detail| RewriteError::MalformedClientMessage {
            what: "Bind",
            detail,
        };
        if codes.len() > 1 && codes.len() != self.cols.len() {
            return Err(bad("its number of result format codes is neither 0, 1 nor the number of result columns"));
        }
        let format_of = |i: usize| {
            let code = match codes {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            };
            Format::from_code(code).ok_or(bad(
                "a result format code is neither 0 (text) nor 1 (binary)",
            ))
        };
        // Copied only when a format changes (most Binds ask for what the shape already says).
        for i in 0..self.cols.len() {
            let format = format_of(i)?;
            if self.cols.get(i).is_some_and(|c| c.format != format) {
                if let Some(col) = Arc::make_mut(&mut self.cols).get_mut(i) {
                    col.format = format;
                }
            }
        }
        Ok(())
    }
}

/// Rewrites a RowDescription body for `actions` (one per field; missing ones pass through): a
/// decrypted column gets its logical type's oid, `typlen` (int4/date 4, int8/timestamptz 8, bool 1,
/// else -1) and typmod -1; masked and nulled columns become `text` (25, -1, -1). Table oid, attnum
/// and format stay. Returns the whole new frame and the [`RowShape`] for the DataRows that follow.
pub fn rewrite_row_description(body: &[u8], actions: &[ColumnAction]) -> Result<(Bytes, RowShape)> {
    let mut rd = RowDescription::parse(body)?;
    let shape = RowShape::new(&rd, actions)?;
    for (f, a) in rd.fields.iter_mut().zip(actions) {
        match a {
            ColumnAction::PassThrough => {}
            ColumnAction::Decrypt { ty, .. } => {
                f.type_oid = ty.oid();
                f.typlen = type_len(*ty);
                f.typmod = -1;
            }
            ColumnAction::Mask { .. } | ColumnAction::Null { .. } => {
                f.type_oid = 25;
                f.typlen = -1;
                f.typmod = -1;
            }
        }
    }
    Ok((rd.to_frame()?, shape))
}

/// What a non-NULL value became under its column's action.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// NULL (nothing was written).
    Null,
    /// Its new bytes were appended to the output.
    Written,
}

/// What [`open`] made of a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opened {
    /// The canonical plaintext is now `buf[start..]` (`own`: it belongs to the expected column
    /// itself).
    Shown { own: bool },
    /// It may not be shown.
    Hidden,
    /// Its data subject was erased: it reads as the column's `erased` says.
    Erased,
}

/// Opens a stored value of encrypted column `expected` (see the module docs for the rules) onto the
/// end of `buf`, where the envelope is decoded and then decrypted in place. Unless it is
/// [`Opened::Shown`], and on error, `buf` is as it was.
fn open(
    value: &[u8],
    col: &ColSpec,
    expected: &str,
    ty: LogicalType,
    ctx: &RowCtx<'_>,
    buf: &mut Vec<u8>,
) -> Result<Opened> {
    let start = buf.len();
    let damaged = || RewriteError::DecryptFailed {
        column: expected.to_string(),
    };
    let decoded = if value.starts_with(envelope::ARMOR_PREFIX) {
        if envelope::looks_like_envelope(value) {
            envelope::dearmor_into(value, buf).map_err(|_| damaged())?;
            true
        } else {
            pgcloak_keymgr::subject::dearmor_subject_into(value, buf)
        }
    } else {
        match (col.format, col.storage) {
            (Format::Binary, _) => {
                buf.extend_from_slice(value);
                true
            }
            (Format::Text, Some(Storage::Bytea)) => typed::bytea_from_text_into(value, buf).is_ok(),
            (Format::Text, None) if value.starts_with(b"\\x") => {
                typed::bytea_from_text_into(value, buf).is_ok()
            }
            (Format::Text, _) => false,
        }
    };
    if decoded
        && buf.get(start..).unwrap_or_default().get(..3)
            == Some(
                &[
                    envelope::MAGIC[0],
                    envelope::MAGIC[1],
                    SUBJECT_FORMAT_VERSION,
                ][..],
            )
    {
        return open_subject(expected, ctx, buf, start);
    }
    let key_id = match buf.get(start..).unwrap_or_default() {
        raw if decoded && raw.starts_with(&envelope::MAGIC) => match Envelope::parse(raw) {
            Ok(env) => Some(env.key_id()),
            Err(_) => {
                buf.truncate(start);
                return Err(damaged());
            }
        },
        _ => None,
    };
    let Some(key_id) = key_id else {
        buf.truncate(start);
        // Not an envelope: legacy plaintext (text storage only), shown if it is a value of the type.
        if col.storage == Some(Storage::Text) {
            if let Ok(c) = typed::canonical_from_text(ty, value) {
                buf.extend_from_slice(&c);
                return Ok(Opened::Shown { own: true });
            }
        }
        return Ok(Opened::Hidden);
    };
    let Some((cipher, own)) = readable_cipher(ctx, key_id, expected) else {
        buf.truncate(start);
        return Ok(Opened::Hidden);
    };
    match cipher.decrypt_in_place(buf, start) {
        Ok(()) => Ok(Opened::Shown { own }),
        Err(e) => {
            buf.truncate(start);
            Err(match e {
                KeyError::UnknownKeyVersion { version, .. } => RewriteError::StaleKeyring {
                    column: cipher.column().to_string(),
                    version,
                },
                _ => RewriteError::DecryptFailed {
                    column: cipher.column().to_string(),
                },
            })
        }
    }
}

/// The column cipher of `key_id` when the value may be shown where `expected` was read: its own
/// column's (`true`), or another column's the role may read in plaintext (`false`).
fn readable_cipher<'k>(
    ctx: &RowCtx<'k>,
    key_id: u32,
    expected: &str,
) -> Option<(&'k pgcloak_keymgr::ColumnCipher, bool)> {
    let cipher = ctx.keyring.cipher_for_key_id(key_id)?;
    let own = cipher.column() == expected;
    (own || (ctx.may_read_plaintext)(cipher.column())).then_some((cipher, own))
}

/// [`open`] of a subject-keyed envelope (format 2, decoded at `buf[start..]`): decrypted with the
/// key of the subject it names, found through `ctx.subjects`.
fn open_subject(
    expected: &str,
    ctx: &RowCtx<'_>,
    buf: &mut Vec<u8>,
    start: usize,
) -> Result<Opened> {
    let damaged = |buf: &mut Vec<u8>| {
        buf.truncate(start);
        RewriteError::DecryptFailed {
            column: expected.to_string(),
        }
    };
    let Ok(header) = SubjectHeader::parse(buf.get(start..).unwrap_or_default()) else {
        return Err(damaged(buf));
    };
    let Some((cipher, own)) = readable_cipher(ctx, header.key.key_id, expected) else {
        buf.truncate(start);
        return Ok(Opened::Hidden);
    };
    let dek = match ctx.subjects.key(&header.key) {
        super::SubjectLookup::Key(k) => k,
        super::SubjectLookup::Absent => {
            buf.truncate(start);
            return Ok(Opened::Erased);
        }
        super::SubjectLookup::Unknown => {
            buf.truncate(start);
            return Err(RewriteError::SubjectKeyUnknown {
                column: cipher.column().to_string(),
                key: header.key,
            });
        }
        super::SubjectLookup::Unavailable(reason) => {
            buf.truncate(start);
            return Err(RewriteError::SubjectKeysUnavailable {
                column: cipher.column().to_string(),
                reason,
            });
        }
    };
    let plain = SubjectCipher::new(cipher.column(), header.mode, header.key, &dek)
        .and_then(|c| c.decrypt(buf.get(start..).unwrap_or_default()));
    match plain {
        Ok(p) => {
            buf.truncate(start);
            buf.extend_from_slice(&p);
            Ok(Opened::Shown { own })
        }
        Err(_) => Err(damaged(buf)),
    }
}

/// The text a value of an erased subject reads as with `erased = "marker"`.
pub const ERASED_MARKER: &str = "[erased]";

/// A value of an erased subject as its column's `erased` says: NULL, or the marker for a text
/// column (text's binary format is its text, so both formats carry the same bytes).
fn erased(column: &str, ty: LogicalType, ctx: &RowCtx<'_>, out: &mut Vec<u8>) -> Presented {
    match ctx.subjects.erased(column) {
        pgcloak_policy::Erased::Marker if ty == LogicalType::Text => {
            out.extend_from_slice(ERASED_MARKER.as_bytes());
            Presented::Written
        }
        _ => Presented::Null,
    }
}

/// Text form of a canonical value for masking (lossy UTF-8: masks work on characters).
fn text_for_mask(ty: LogicalType, canonical: &[u8]) -> Option<String> {
    typed::to_text(ty, canonical)
        .ok()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
}

/// Applies a column's action to one non-NULL value, appending what it becomes to `out` (decrypted
/// values are decoded, opened and converted there, with no buffer of their own). On `Null` and on
/// error `out` is as it was.
pub(crate) fn present(
    value: &[u8],
    col: &ColSpec,
    ctx: &RowCtx<'_>,
    out: &mut Vec<u8>,
) -> Result<Presented> {
    use crate::metrics::ValueOutcome;
    let r = present_value(value, col, ctx, out);
    let class = match &col.action {
        ColumnAction::PassThrough => return r,
        ColumnAction::Decrypt { class, .. }
        | ColumnAction::Mask { class, .. }
        | ColumnAction::Null { class } => *class,
    };
    let outcome = match (&col.action, &r) {
        (_, Err(_)) => ValueOutcome::Failed,
        (_, Ok(Presented::Null)) => ValueOutcome::Nulled,
        (ColumnAction::Decrypt { .. }, Ok(Presented::Written)) => ValueOutcome::Decrypted,
        (_, Ok(Presented::Written)) => ValueOutcome::Masked,
    };
    crate::metrics::with(|c| c.value(class, outcome));
    r
}

fn present_value(
    value: &[u8],
    col: &ColSpec,
    ctx: &RowCtx<'_>,
    out: &mut Vec<u8>,
) -> Result<Presented> {
    let start = out.len();
    match &col.action {
        ColumnAction::PassThrough => {
            out.extend_from_slice(value);
            Ok(Presented::Written)
        }
        ColumnAction::Null { .. } => Ok(Presented::Null),
        ColumnAction::Decrypt { column, ty, .. } => {
            let own = match open(value, col, column, *ty, ctx, out)? {
                Opened::Shown { own } => own,
                Opened::Hidden => return Ok(Presented::Null),
                Opened::Erased => return Ok(erased(column, *ty, ctx, out)),
            };
            let shown = match col.format {
                Format::Text => typed::to_text_in_place(*ty, out, start),
                Format::Binary => typed::to_binary_in_place(*ty, out, start),
            };
            match shown {
                Ok(()) => Ok(Presented::Written),
                Err(e) => {
                    out.truncate(start);
                    if own {
                        Err(RewriteError::from_key(column, e))
                    } else {
                        // Another column's value (alias) of a different type: not presentable.
                        Ok(Presented::Null)
                    }
                }
            }
        }
        ColumnAction::Mask {
            column,
            ty,
            mask,
            encrypted,
            ..
        } => {
            let text = if *encrypted {
                match open(value, col, column, *ty, ctx, out)? {
                    Opened::Shown { .. } => {}
                    Opened::Hidden => return Ok(Presented::Null),
                    Opened::Erased => return Ok(erased(column, *ty, ctx, out)),
                }
                let text = text_for_mask(*ty, out.get(start..).unwrap_or_default());
                out.truncate(start);
                text
            } else {
                match col.format {
                    Format::Text => Some(String::from_utf8_lossy(value).into_owned()),
                    Format::Binary => match col.server_oid {
                        Some(25 | 1043 | 1042 | 19) => {
                            Some(String::from_utf8_lossy(value).into_owned())
                        }
                        Some(oid) => LogicalType::from_oid(oid).and_then(|t| {
                            typed::canonical_from_binary(t, value)
                                .ok()
                                .and_then(|c| text_for_mask(t, &c))
                        }),
                        None => None,
                    },
                }
            };
            let Some(text) = text else {
                return Ok(Presented::Null);
            };
            Ok(match apply_mask(*mask, &text, ctx.mask_hash_key) {
                MaskedValue::Text(t) => {
                    out.extend_from_slice(t.as_bytes());
                    Presented::Written
                }
                MaskedValue::Null => Presented::Null,
            })
        }
    }
}

/// Rewrites a DataRow body (after tag and length) per the shape's actions into `out` (the whole new
/// frame; whatever `out` held is dropped). Returns `false` when nothing changed (forward the original
/// bytes; `out` then holds nothing of use). The row is parsed and written in one pass: the new frame
/// starts at the first value that changes (everything before it is copied as it is), so a row of
/// hundreds of megabytes costs linear time and about its own size in memory. Each changed value is
/// decoded, decrypted and converted in place at the end of the new frame, and the caller keeps `out`
/// from row to row: a result's rows cost no allocation once the buffer has grown to a row's size.
pub fn rewrite_data_row(
    body: &[u8],
    shape: &RowShape,
    ctx: &RowCtx<'_>,
    out: &mut Vec<u8>,
) -> Result<bool> {
    out.clear();
    if shape.is_passthrough() {
        return Ok(false);
    }
    let mut c = Reader::server(body, "DataRow");
    let n = usize::try_from(c.i16()?).map_err(|_| c.err("its column count is negative"))?;
    if n != shape.cols.len() {
        return Err(c
            .err("its number of columns differs from its RowDescription")
            .into());
    }
    let too_large = || RewriteError::MalformedServerMessage {
        what: "DataRow",
        detail: "the decrypted row exceeds the protocol's 2 GiB message limit",
    };
    let mut started = false;
    for col in shape.cols.iter() {
        let field = c.pos();
        let len = c.i32()?;
        let value = if len >= 0 {
            c.bytes(len as usize)?
        } else if len == -1 {
            &[]
        } else {
            return Err(c.err("a value length is negative").into());
        };
        if len < 0 || col.action == ColumnAction::PassThrough {
            if started {
                out.extend_from_slice(c.since(field));
            }
            continue;
        }
        if !started {
            started = true;
            // Decrypted values are shorter than their envelopes: the row rarely grows.
            out.reserve(body.len() + 5);
            out.push(b'D');
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(body.get(..field).unwrap_or_default());
        }
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        let vlen = match present(value, col, ctx, out)? {
            Presented::Written => i32::try_from(out.len() - at - 4).map_err(|_| too_large())?,
            Presented::Null => -1,
        };
        put_i32_at(out, at, vlen);
    }
    if c.pos() != body.len() {
        return Err(c.err("it has bytes after its last column").into());
    }
    if !started {
        return Ok(false);
    }
    let total = i32::try_from(out.len() - 1).map_err(|_| too_large())?;
    put_i32_at(out, 1, total);
    Ok(true)
}

#[cfg(test)]
mod tests;
