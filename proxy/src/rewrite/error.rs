//! [`RewriteError`]: everything that can go wrong while applying a plan to wire values. Messages start
//! with `pgcloak: `, name the column (or message) and the fix, and never carry a value or key material.

use pgcloak_keymgr::KeyError;

use crate::protocol::reader::{Malformed, Sender};

/// Why a value, literal or message could not be rewritten.
///
/// Split by who is at fault: the client sent something unusable (literal, parameter, COPY data), the
/// server sent something malformed, the stored data is damaged, or pgcloak's keys/config are missing.
/// [`RewriteError::sqlstate`] gives the SQLSTATE to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    // ---- the client sent a value that cannot be encrypted ----------------------------------------
    /// A SQL literal going to an encrypted column cannot be read (unterminated, bad escape, ...).
    #[error("pgcloak: the literal for encrypted column {column} cannot be read ({reason}); write it as a plain '...' string or pass it as a parameter")]
    BadLiteral {
        /// `schema.table.column`.
        column: String,
        /// What is wrong (never the literal itself).
        reason: &'static str,
    },
    /// A literal of a kind that cannot go into an encrypted column (bit strings, casts to another type).
    #[error("pgcloak: {what} cannot be written to or compared with encrypted column {column}; write the value as a plain '...' string of type {ty} or pass it as a parameter")]
    UnsupportedLiteral {
        /// `schema.table.column`.
        column: String,
        /// What was found, e.g. "a bit-string literal".
        what: &'static str,
        /// The column's logical type.
        ty: &'static str,
    },
    /// A value that does not parse as the column's logical type in the format it came in.
    #[error("pgcloak: invalid {ty} value for encrypted column {column} in {format} format ({reason}); send a value PostgreSQL accepts for type {ty}")]
    InvalidValue {
        /// `schema.table.column`.
        column: String,
        /// Logical type.
        ty: &'static str,
        /// `text`, `binary`, `array text` ...
        format: &'static str,
        /// Why (never the value).
        reason: &'static str,
    },
    /// A value too large to encrypt.
    #[error("pgcloak: a value for encrypted column {column} is too large to encrypt ({len} bytes, at most {max})")]
    ValueTooLarge {
        /// `schema.table.column`.
        column: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A malformed protocol message from the client (Bind, Parse).
    #[error("pgcloak: malformed {what} message from the client: {detail}")]
    MalformedClientMessage {
        /// Message type.
        what: &'static str,
        /// What is wrong.
        detail: &'static str,
    },
    /// COPY FROM data that cannot be split into rows and fields.
    #[error("pgcloak: COPY data for {table}, line {line}: {detail}")]
    MalformedCopy {
        /// `schema.table` (or the column list's table).
        table: String,
        /// 1-based line number in the COPY data (header included).
        line: u64,
        /// What is wrong.
        detail: &'static str,
    },
    /// Binary COPY out of a table whose columns must be decrypted, masked or nulled.
    #[error(
        "pgcloak: binary COPY from {table} cannot be decrypted or masked; use text or CSV format"
    )]
    BinaryCopyOut {
        /// `schema.table` (or `(query)`).
        table: String,
    },

    // ---- the server sent something unusable ----------------------------------------------------------
    /// A malformed message from the server (RowDescription, DataRow, ParameterDescription, COPY out).
    #[error("pgcloak: malformed {what} message from the server: {detail}")]
    MalformedServerMessage {
        /// Message type.
        what: &'static str,
        /// What is wrong.
        detail: &'static str,
    },

    /// Rows of an analysed statement arrived without a description of their columns (none was sent
    /// and the one pgcloak asked for never came): they cannot be decrypted, masked or nulled.
    #[error("pgcloak: rows of a statement on protected tables arrived without a description of their columns; the session is closed rather than pass them on unprocessed")]
    UnknownRowShape,

    // ---- stored data cannot be opened ----------------------------------------------------------------
    /// A stored ciphertext failed authentication or is damaged.
    #[error("pgcloak: a stored value of column {column} failed to decrypt (it was altered, truncated or damaged); restore the row from a backup or rewrite the value")]
    DecryptFailed {
        /// Column whose key the ciphertext names.
        column: String,
    },
    /// A stored ciphertext names a key version this proxy's keyring does not have (yet).
    #[error("pgcloak: a stored value of column {column} uses key version {version}, which this pgcloak's keyring does not have; reload the keyring (another instance may have rotated the key)")]
    StaleKeyring {
        /// `schema.table.column`.
        column: String,
        /// Version named by the ciphertext.
        version: u32,
    },
    /// A ciphertext of another column where only this column's values may be decrypted.
    #[error(
        "pgcloak: a value in column {column} was encrypted for another column and is not decrypted"
    )]
    WrongColumnKey {
        /// The column whose values were expected.
        column: String,
    },

    // ---- pgcloak's keys or catalog are missing something --------------------------------------------
    /// The policy encrypts a column the keyring has no key for.
    #[error("pgcloak: column {column} is encrypted by the policy but has no key in the keyring; run `pgcloak keys init`")]
    NoKey {
        /// `schema.table.column`.
        column: String,
    },
    /// The storage type of an encrypted column is unknown or unsuitable.
    #[error("pgcloak: encrypted column {column} must be stored as bytea, text or varchar; run `pgcloak check`")]
    UnknownStorage {
        /// `schema.table.column`.
        column: String,
    },
    /// The statement text around a value does not read as the analysis found it (an operator, a list
    /// or a parameter token is not where the plan puts it): refused rather than rewritten on a guess.
    #[error("pgcloak: the statement text around the value for encrypted column {column} does not read as its analysis found it ({detail}); the statement is refused rather than rewritten on a guess; this is a pgcloak bug, please report the statement's shape")]
    PlanMismatch {
        /// `schema.table.column`.
        column: String,
        /// What was not where the plan puts it.
        detail: &'static str,
    },
    /// A subject-keyed value whose subject key is not cached: the session fetches it and rewrites
    /// the row again (a client never sees this one).
    #[error("pgcloak: the key of a data subject of column {column} is being fetched")]
    SubjectKeyUnknown {
        column: String,
        key: pgcloak_keymgr::SubjectKeyId,
    },
    /// The subject key table cannot be read, so subject-keyed values cannot be shown.
    #[error("pgcloak: values of subject-keyed column {column} cannot be decrypted now: {reason}")]
    SubjectKeysUnavailable { column: String, reason: String },
    /// A crypto primitive or the system RNG failed.
    #[error("pgcloak: encryption for column {column} failed internally ({detail}); this is a pgcloak bug or a broken system random number generator")]
    Internal {
        /// `schema.table.column` (or the message being built).
        column: String,
        /// What failed.
        detail: String,
    },
}

impl From<Malformed> for RewriteError {
    fn from(m: Malformed) -> Self {
        match m.sender {
            Sender::Client => RewriteError::MalformedClientMessage {
                what: m.what,
                detail: m.detail,
            },
            Sender::Server => RewriteError::MalformedServerMessage {
                what: m.what,
                detail: m.detail,
            },
        }
    }
}

impl RewriteError {
    /// The SQLSTATE a client should receive for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            RewriteError::BadLiteral { .. } | RewriteError::InvalidValue { .. } => "22P02",
            RewriteError::UnsupportedLiteral { .. } => "0A000",
            RewriteError::ValueTooLarge { .. } => "54000",
            RewriteError::MalformedClientMessage { .. }
            | RewriteError::MalformedServerMessage { .. } => "08P01",
            RewriteError::MalformedCopy { .. } => "22P04",
            RewriteError::BinaryCopyOut { .. } => "0A000",
            RewriteError::DecryptFailed { .. } => "XX001",
            RewriteError::StaleKeyring { .. } | RewriteError::NoKey { .. } => "55000",
            RewriteError::SubjectKeyUnknown { .. }
            | RewriteError::SubjectKeysUnavailable { .. } => "58000",
            RewriteError::WrongColumnKey { .. } => "42501",
            RewriteError::UnknownStorage { .. } => "42804",
            RewriteError::Internal { .. }
            | RewriteError::PlanMismatch { .. }
            | RewriteError::UnknownRowShape => "XX000",
        }
    }

    /// Maps a keymgr error met while handling a value of `column` (no value or key material is kept).
    pub(crate) fn from_key(column: &str, e: KeyError) -> RewriteError {
        let column = column.to_string();
        match e {
            KeyError::InvalidValue { ty, format, reason } => RewriteError::InvalidValue {
                column,
                ty,
                format,
                reason,
            },
            KeyError::ValueTooLarge { len, max } => {
                RewriteError::ValueTooLarge { column, len, max }
            }
            KeyError::UnknownColumn { .. } => RewriteError::NoKey { column },
            KeyError::UnknownKeyVersion { version, .. } => {
                RewriteError::StaleKeyring { column, version }
            }
            KeyError::WrongColumnKey { .. } => RewriteError::WrongColumnKey { column },
            KeyError::DecryptFailed { .. }
            | KeyError::MalformedEnvelope { .. }
            | KeyError::NotAnEnvelope => RewriteError::DecryptFailed { column },
            other => RewriteError::Internal {
                column,
                detail: other.to_string(),
            },
        }
    }
}

/// Result alias of the rewrite module.
pub type Result<T, E = RewriteError> = std::result::Result<T, E>;
