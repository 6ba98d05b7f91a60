//! Storage types and value transformation (pure): what a stored value is and what it becomes.

use super::*;

// ---- storage and value transformation (pure) -----------------------------------------------------

/// How the column stores ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Storage {
    /// `bytea`: raw envelopes.
    Bytea,
    /// `text` / `varchar` without a length limit: armoured envelopes.
    Text,
}

impl Storage {
    pub(super) fn sql_type(self) -> &'static str {
        match self {
            Storage::Bytea => "bytea",
            Storage::Text => "text",
        }
    }

    pub(super) fn encoding(self) -> Encoding {
        match self {
            Storage::Bytea => Encoding::Raw,
            Storage::Text => Encoding::Armored,
        }
    }
}

/// Why a storage type cannot hold ciphertext.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StorageProblem {
    /// Not a string or bytea type: the `ALTER TABLE` that converts it.
    WrongType(String),
    /// `varchar(n)`: the `ALTER TABLE` that lifts the limit.
    LengthLimit(String),
}

/// An identifier as SQL needs it: bare when it is a plain lower-case name, else double-quoted.
pub(super) fn ident(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        quote(s)
    }
}

/// Always double-quoted (for the SQL this module runs).
pub(super) fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Classifies the storage by the base type's name (`pg_type.typname`) and the column's
/// `format_type` text.
pub(super) fn classify_storage(
    t: &Target,
    base_type: &str,
    formatted: &str,
) -> Result<Storage, StorageProblem> {
    let table = format!("{}.{}", ident(&t.schema), ident(&t.table));
    let col = ident(&t.column);
    match base_type {
        "bytea" => Ok(Storage::Bytea),
        "text" => Ok(Storage::Text),
        "varchar" if !formatted.contains('(') => Ok(Storage::Text),
        "varchar" => Err(StorageProblem::LengthLimit(format!(
            "ALTER TABLE {table} ALTER COLUMN {col} TYPE text"
        ))),
        _ => Err(StorageProblem::WrongType(match t.logical {
            // bytea storage of a bytea value holds the bytes themselves, so a value of any other
            // storage type keeps its text form in a text column instead.
            LogicalType::Bytea => {
                format!("ALTER TABLE {table} ALTER COLUMN {col} TYPE text USING {col}::text")
            }
            _ => format!(
                "ALTER TABLE {table} ALTER COLUMN {col} TYPE bytea USING convert_to({col}::text, 'UTF8')"
            ),
        })),
    }
}

/// What to do with one stored value.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Already in the target form.
    Skip,
    /// reencrypt: a plaintext value (left alone).
    Plaintext,
    /// Write this new stored value.
    Write(Vec<u8>),
}

/// Why a stored value cannot be transformed.
#[derive(Debug)]
pub(super) enum ValueProblem {
    /// Not a valid value of the logical type (reason, never the value).
    Invalid { what: String, reason: String },
    /// An envelope this column's key does not open.
    Cipher(KeyError),
}

/// The canonical plaintext of a stored plaintext value (see the module docs for the forms).
pub(super) fn canonical_plaintext(
    storage: Storage,
    logical: LogicalType,
    stored: &[u8],
) -> Result<Vec<u8>, ValueProblem> {
    let invalid = |what: String, e: KeyError| ValueProblem::Invalid {
        what,
        reason: match e {
            KeyError::InvalidValue { reason, .. } => reason.to_string(),
            other => other.to_string(),
        },
    };
    match (storage, logical) {
        (Storage::Bytea, LogicalType::Bytea) => Ok(stored.to_vec()),
        (Storage::Bytea, _) => {
            let what = format!("UTF-8 text of a {logical} value");
            if std::str::from_utf8(stored).is_err() {
                return Err(ValueProblem::Invalid {
                    what,
                    reason: "the bytes are not UTF-8".to_string(),
                });
            }
            typed::canonical_from_text(logical, stored).map_err(|e| invalid(what, e))
        }
        (Storage::Text, _) => typed::canonical_from_text(logical, stored)
            .map_err(|e| invalid(format!("{logical} text"), e)),
    }
}

/// Decides and computes the new stored value of one non-NULL value.
pub(super) fn transform(
    op: Op,
    cipher: &ColumnCipher,
    storage: Storage,
    logical: LogicalType,
    stored: &[u8],
) -> Result<Outcome, ValueProblem> {
    match op {
        Op::Encrypt => {
            if looks_like_envelope(stored) {
                // Already encrypted — provided it really is this column's ciphertext; anything else
                // (another column's value, damage) must not be silently accepted as done.
                return cipher
                    .decrypt(stored)
                    .map(|_| Outcome::Skip)
                    .map_err(ValueProblem::Cipher);
            }
            let plain = canonical_plaintext(storage, logical, stored)?;
            cipher
                .encrypt_as(&plain, storage.encoding())
                .map(Outcome::Write)
                .map_err(ValueProblem::Cipher)
        }
        Op::Reencrypt => {
            if !looks_like_envelope(stored) {
                return Ok(Outcome::Plaintext);
            }
            match cipher.reencrypt(stored) {
                Ok(None) => Ok(Outcome::Skip),
                Ok(Some(v)) => Ok(Outcome::Write(v)),
                Err(e) => Err(ValueProblem::Cipher(e)),
            }
        }
    }
}
