//! Applying a policy plan to wire values: encrypting literals, Bind parameters and COPY fields on the way
//! in; decrypting, masking or nulling DataRow values and COPY fields on the way out; presenting encrypted
//! columns with their logical types in RowDescription and ParameterDescription.
//!
//! Pure: no sockets, files or clock; every function takes bytes and returns bytes, and never panics on
//! any input (every length is checked).
//!
//! # Layout
//!
//! - [`error`] — [`RewriteError`] (messages start `pgcloak: `, name the column, never carry a value).
//! - [`literal`] — SQL literals: [`decode_literal`], the range a ciphertext replaces ([`replace_range`]:
//!   covers `::type` casts, `DATE '...'` prefixes, `CAST(... AS type)`, `UESCAPE`), rotation variants
//!   written where the plan's site role allows ([`any_of`], [`in_list_range`], each checked against
//!   the text), and [`literal_edit`] + [`apply_edits`], the one-call path of the simple protocol.
//! - [`values`] — [`ColumnTarget`] methods: encrypt a canonical/text/binary value for a storage type,
//!   its SQL literal, its Bind parameter value in either format, its rotation variants.
//! - [`array`] — arrays (`col = ANY($1)`, `ANY('{a,b}')`): text and binary array formats.
//! - [`params`] — Bind (encrypt parameters), Parse (declared parameter types), ParameterDescription
//!   (present logical types).
//! - [`rows`] — RowDescription and DataRow: [`ColumnAction`], [`RowShape`], [`RowCtx`],
//!   [`rewrite_row_description`], [`rewrite_data_row`].
//! - [`copy`] — COPY FROM STDIN ([`CopyInRewriter`], text and CSV, streaming) and COPY TO STDOUT
//!   ([`CopyOutRewriter`]).
//!
//! # Storage and wire forms
//!
//! An encrypted column is stored as `bytea` (the raw envelope) or `text`/`varchar` (the armoured
//! envelope, `pgc1:...`). The forms a stored value takes:
//!
//! | where | `bytea` storage | `text` storage |
//! |---|---|---|
//! | SQL literal (simple protocol) | `E'\\x<hex>'` (right whatever `standard_conforming_strings` is) | `'pgc1:...'` |
//! | Bind parameter, text format | `\x<hex>` | `pgc1:...` |
//! | Bind parameter, binary format | raw envelope bytes | `pgc1:...` (text's binary form is its bytes) |
//! | DataRow / COPY from the server, text | `\x<hex>` (or bytea escape format) | `pgc1:...` |
//! | DataRow from the server, binary | raw envelope bytes | `pgc1:...` |
//! | COPY text format field | `\\x<hex>` (backslash escaped) | `pgc1:...` (delimiter escaped if it is `:`, `-` or `_`) |
//! | COPY CSV field | `\x<hex>` (quoted when needed) | `pgc1:...` (quoted when needed) |
//!
//! Values reaching the client are always in the logical type's own text or binary format (what
//! `keymgr::typed::to_text` / `to_binary` give), so an `int4` stored as `bytea` comes back as an int.
//! Masked and nulled columns are presented as `text`.
//!
//! # How the session calls it
//!
//! ```text
//! simple query:  for each plan.encryptions (ValueRef::Literal(i)):
//!                    edits.push(literal_edit(sql, &lexed.literals, i, &target, enc.array, enc.assignment, site.role)?);
//!                sql = apply_edits(sql, edits)?;
//! Parse:         rewrite_parse_param_types(body, &[(n, storage_param_oid)])   (declared types only)
//! Bind:          rewrite_bind(&Bind::decode(body)?, &[BindParam { index: n, target, array, assignment }], &replaced)
//! ParamDesc:     rewrite_parameter_description(body, &[(n, logical_type)])
//! RowDesc:       let (frame, shape) = rewrite_row_description(body, &actions_for(&outputs, n)?)?;
//! DataRow:       rewrite_data_row(body, &shape, &ctx, &mut row)? -> false: forward the original frame
//! COPY FROM:     CopyInRewriter::new(&copy_info, keyring, storage_of)?; push(data)? / finish()?
//! COPY TO:       CopyOutRewriter::new(&copy_info, columns)?; rewrite(payload, &ctx)?
//! ```
#![forbid(unsafe_code)]
// Parsers of untrusted input: no unwrap, expect or panic outside tests (the linter holds the "no panic
// on any input" claim; the fuzz targets in fuzz/ check it at run time).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod array;
pub mod copy;
pub mod error;
pub mod escape;
pub mod literal;
pub mod params;
pub mod rows;
pub mod values;

#[cfg(test)]
mod testkit;

use pgcloak_keymgr::{ColumnCipher, Encoding, Keyring, LogicalType};
use pgcloak_policy::Class;

pub use copy::{CopyInRewriter, CopyOutColumn, CopyOutRewriter};
pub use error::{Result, RewriteError};
pub use literal::{
    any_of, apply_edits, compared_at, decode_literal, in_list_range, literal_edit, param_range,
    replace_range, Edit, ListPiece, LiteralError,
};
pub use params::{
    encode_parameter_description, parse_parameter_description, present_parameter_types,
    rewrite_bind, rewrite_parameter_description, rewrite_parse_param_types, BindParam, Replaced,
};
pub use rows::{
    actions_for, rewrite_data_row, rewrite_row_description, ColumnAction, RowCtx, RowShape,
};
pub use values::{encrypt_for_storage, param_value, sql_literal, sql_literal_variants};

/// How an encrypted column stores its envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    /// `bytea`: the raw envelope.
    Bytea,
    /// `text` / `varchar`: the armoured envelope (`pgc1:...`).
    Text,
}

impl Storage {
    /// The storage for a PostgreSQL `format_type` name: `bytea`; `text`, `character varying`,
    /// `character varying(n)`, `varchar`, `varchar(n)` (case-insensitive, `pg_catalog.` allowed).
    /// Anything else (`character(n)` pads values, other types cannot hold an envelope) is `None`.
    pub fn from_type_name(name: &str) -> Option<Storage> {
        // Case-insensitive without lower-casing into a new String: this runs for every encrypted
        // parameter of every Bind.
        let name = name.trim();
        let name = match name.get(..11) {
            Some(p) if p.eq_ignore_ascii_case("pg_catalog.") => &name[11..],
            _ => name,
        };
        // A type modifier (`(20)`) does not change the storage; strip it.
        let base = match name.find('(') {
            Some(p) if name.ends_with(')') => name[..p].trim_end(),
            Some(_) => return None,
            None => name,
        };
        let is = |n: &str| base.eq_ignore_ascii_case(n);
        if is("bytea") {
            Some(Storage::Bytea)
        } else if is("text") || is("character varying") || is("varchar") {
            Some(Storage::Text)
        } else {
            None
        }
    }

    /// The storage for a type oid as a RowDescription or ParameterDescription carries it: 17 bytea,
    /// 25 text, 1043 varchar (and their array types 1001, 1009, 1015 for array values).
    pub fn from_oid(oid: u32) -> Option<Storage> {
        match oid {
            17 | 1001 => Some(Storage::Bytea),
            25 | 1043 | 1009 | 1015 => Some(Storage::Text),
            _ => None,
        }
    }

    /// The oid of a parameter of this storage (`bytea` 17, `text` 25).
    pub fn oid(self) -> u32 {
        match self {
            Storage::Bytea => 17,
            Storage::Text => 25,
        }
    }

    /// The oid of an array parameter of this storage (`bytea[]` 1001, `text[]` 1009).
    pub fn array_oid(self) -> u32 {
        match self {
            Storage::Bytea => 1001,
            Storage::Text => 1009,
        }
    }

    /// The SQL name of this storage type, or of an array of it, for casts (`bytea`, `text[]`, ...).
    pub fn sql_type(self, array: bool) -> &'static str {
        match (self, array) {
            (Storage::Bytea, false) => "bytea",
            (Storage::Bytea, true) => "bytea[]",
            (Storage::Text, false) => "text",
            (Storage::Text, true) => "text[]",
        }
    }

    /// The envelope encoding this storage holds.
    pub fn encoding(self) -> Encoding {
        match self {
            Storage::Bytea => Encoding::Raw,
            Storage::Text => Encoding::Armored,
        }
    }
}

/// Wire format code of a value (Bind parameter / result column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Code 0.
    Text,
    /// Code 1.
    Binary,
}

impl Format {
    /// The format of a protocol format code (0 or 1; anything else is invalid).
    pub fn from_code(code: i16) -> Option<Format> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }

    /// The protocol code.
    pub fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }
}

/// The oid of the array type of a logical type (`int4[]` 1007, ...).
pub fn array_oid(t: LogicalType) -> u32 {
    match t {
        LogicalType::Text => 1009,
        LogicalType::Int4 => 1007,
        LogicalType::Int8 => 1016,
        LogicalType::Numeric => 1231,
        LogicalType::Date => 1182,
        LogicalType::Timestamptz => 1185,
        LogicalType::Bool => 1000,
        LogicalType::Jsonb => 3807,
        LogicalType::Bytea => 1001,
    }
}

/// `typlen` of a logical type as a RowDescription carries it (fixed-size types; -1 varlena).
pub fn type_len(t: LogicalType) -> i16 {
    match t {
        LogicalType::Int4 | LogicalType::Date => 4,
        LogicalType::Int8 | LogicalType::Timestamptz => 8,
        LogicalType::Bool => 1,
        LogicalType::Text | LogicalType::Numeric | LogicalType::Jsonb | LogicalType::Bytea => -1,
    }
}

/// One encrypted column as a write target: its cipher, the logical type clients use, its storage.
#[derive(Debug, Clone, Copy)]
pub struct ColumnTarget<'k> {
    /// The column's cipher (from the unlocked keyring).
    pub cipher: &'k ColumnCipher,
    /// The logical type clients send and receive.
    pub ty: LogicalType,
    /// How the column stores envelopes.
    pub storage: Storage,
    /// The column's class (values are counted per class).
    pub class: Class,
    /// For a subject-keyed column: the ciphers of the subject the value belongs to.
    pub subject: Option<&'k SubjectTarget>,
}

/// The ciphers of one subject for one subject-keyed column: the active key version's first, then
/// (for equality lookups on a rotated deterministic column) the older live versions'.
#[derive(Debug)]
pub struct SubjectTarget {
    pub ciphers: Vec<pgcloak_keymgr::SubjectCipher>,
}

/// What the subject keys of a result are, for reading subject-keyed values (see
/// [`crate::subjects::SubjectKeys`]): looked up without waiting; a key not known yet makes the
/// row fail with [`RewriteError::SubjectKeyUnknown`], which the session answers by fetching it and
/// rewriting the row again.
pub trait SubjectSource: Sync {
    /// The key of `id`.
    fn key(&self, id: &pgcloak_keymgr::SubjectKeyId) -> SubjectLookup;
    /// What a value of an erased subject of `column` reads as.
    fn erased(&self, column: &str) -> pgcloak_policy::Erased;
}

/// A [`SubjectSource`] without keys (tests, tools): subject-keyed values cannot be shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSubjects;

impl SubjectSource for NoSubjects {
    fn key(&self, _: &pgcloak_keymgr::SubjectKeyId) -> SubjectLookup {
        SubjectLookup::Unavailable("no subject keys here".into())
    }
    fn erased(&self, _: &str) -> pgcloak_policy::Erased {
        pgcloak_policy::Erased::Null
    }
}

/// One answer of a [`SubjectSource`].
#[derive(Debug, Clone)]
pub enum SubjectLookup {
    Key(std::sync::Arc<pgcloak_keymgr::SubjectDek>),
    /// There is none: the subject was erased (a value cannot exist before its key).
    Absent,
    /// Not known yet.
    Unknown,
    /// The key table cannot be read: the value cannot be shown (the reason).
    Unavailable(String),
}

impl<'k> ColumnTarget<'k> {
    /// The target for `column` (`schema.table.column`), or [`RewriteError::NoKey`].
    pub fn new(
        keyring: &'k Keyring,
        column: &str,
        ty: LogicalType,
        storage: Storage,
        class: Class,
    ) -> Result<ColumnTarget<'k>> {
        let cipher = keyring.cipher(column).ok_or_else(|| RewriteError::NoKey {
            column: column.to_string(),
        })?;
        Ok(ColumnTarget {
            cipher,
            ty,
            storage,
            class,
            subject: None,
        })
    }

    /// The target of a plan's [`pgcloak_policy::Encrypt`], given the column's storage type from the
    /// catalog.
    pub fn for_encrypt(
        keyring: &'k Keyring,
        e: &pgcloak_policy::Encrypt,
        storage: Storage,
    ) -> Result<ColumnTarget<'k>> {
        ColumnTarget::new(keyring, &e.column, e.logical_type, storage, e.class)
    }

    /// `schema.table.column`.
    pub fn column(&self) -> &str {
        self.cipher.column()
    }

    /// Whether equality lookups must match more than one ciphertext (deterministic column with more
    /// than one live key version).
    pub fn has_variants(&self) -> bool {
        self.cipher.mode() == pgcloak_keymgr::Mode::Deterministic
            && match self.subject {
                Some(s) => s.ciphers.len() > 1,
                None => self.cipher.versions().len() > 1,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_from_type_names_and_oids() {
        for (name, want) in [
            ("bytea", Some(Storage::Bytea)),
            ("BYTEA", Some(Storage::Bytea)),
            ("pg_catalog.bytea", Some(Storage::Bytea)),
            ("text", Some(Storage::Text)),
            ("character varying", Some(Storage::Text)),
            ("character varying(200)", Some(Storage::Text)),
            ("varchar(12)", Some(Storage::Text)),
            ("varchar", Some(Storage::Text)),
            ("character(10)", None),
            ("integer", None),
            ("text[]", None),
            ("varchar(12", None),
            ("", None),
        ] {
            assert_eq!(Storage::from_type_name(name), want, "{name}");
        }
        assert_eq!(Storage::from_oid(17), Some(Storage::Bytea));
        assert_eq!(Storage::from_oid(1043), Some(Storage::Text));
        assert_eq!(Storage::from_oid(23), None);
        assert_eq!(Storage::Bytea.oid(), 17);
        assert_eq!(Storage::Text.array_oid(), 1009);
    }

    #[test]
    fn array_oids_and_lengths() {
        for t in LogicalType::ALL {
            assert_ne!(array_oid(t), t.oid());
        }
        assert_eq!(type_len(LogicalType::Int8), 8);
        assert_eq!(type_len(LogicalType::Numeric), -1);
    }

    #[test]
    fn every_error_message_starts_with_pgcloak() {
        let col = || "public.customers.phone".to_string();
        let errs = [
            RewriteError::BadLiteral {
                column: col(),
                reason: "r",
            },
            RewriteError::UnsupportedLiteral {
                column: col(),
                what: "w",
                ty: "int4",
            },
            RewriteError::InvalidValue {
                column: col(),
                ty: "int4",
                format: "text",
                reason: "r",
            },
            RewriteError::ValueTooLarge {
                column: col(),
                len: 2,
                max: 1,
            },
            RewriteError::MalformedClientMessage {
                what: "Bind",
                detail: "d",
            },
            RewriteError::MalformedCopy {
                table: "public.customers".into(),
                line: 3,
                detail: "d",
            },
            RewriteError::BinaryCopyOut {
                table: "public.customers".into(),
            },
            RewriteError::MalformedServerMessage {
                what: "DataRow",
                detail: "d",
            },
            RewriteError::DecryptFailed { column: col() },
            RewriteError::StaleKeyring {
                column: col(),
                version: 3,
            },
            RewriteError::WrongColumnKey { column: col() },
            RewriteError::NoKey { column: col() },
            RewriteError::UnknownStorage { column: col() },
            RewriteError::Internal {
                column: col(),
                detail: "d".into(),
            },
        ];
        for e in errs {
            let m = e.to_string();
            assert!(m.starts_with("pgcloak: "), "{m}");
            assert_eq!(e.sqlstate().len(), 5);
        }
        assert_eq!(
            RewriteError::BinaryCopyOut {
                table: "public.customers".into()
            }
            .to_string(),
            "pgcloak: binary COPY from public.customers cannot be decrypted or masked; use text or CSV format"
        );
    }
}
