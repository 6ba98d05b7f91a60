//! The crate's one error type, split by who is at fault; messages never carry key material or plaintext.

use crate::Mode;

/// Every error `pgcloak-keymgr` returns.
///
/// Each message is one sentence naming the thing that is wrong and what to do about it. No message
/// contains key material, a plaintext value or the text that failed to parse (a bad value may be a
/// secret the user mistyped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    // ---- the operator supplied a bad master key -------------------------------------------------
    /// The master key text is not base64 of exactly 32 bytes.
    #[error("the master key is not valid ({reason}); it must be 32 random bytes encoded in base64, as written by `pgcloak keys init`")]
    InvalidMasterKey {
        /// Why it was refused (never the key text itself).
        reason: &'static str,
    },
    /// The master key does not open this keyring.
    #[error("the master key does not match the keyring (its check value differs); use the master key the keyring was created with")]
    WrongMasterKey,

    // ---- the keyring document is damaged --------------------------------------------------------
    /// The keyring document cannot be used: bad JSON, missing fields, broken invariants or a wrapped
    /// key that fails authentication under the right master key.
    #[error("the keyring is corrupt ({detail}); restore it from a backup or recreate it with `pgcloak keys init`")]
    CorruptKeyring {
        /// What is wrong, without key material.
        detail: String,
    },
    /// The keyring was written by a newer pgcloak.
    #[error("the keyring has format version {found}, newer than the {supported} this pgcloak understands; upgrade pgcloak")]
    UnsupportedKeyringVersion {
        /// Version found in the document.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },

    // ---- the caller asked for something the keyring does not have -------------------------------
    /// No key for this column.
    #[error("column {column} has no key in the keyring; run `pgcloak keys init` to create keys for the policy's encrypted columns")]
    UnknownColumn {
        /// `schema.table.column`.
        column: String,
    },
    /// A column name that is not `schema.table.column`.
    #[error("{column:?} is not a column name of the form schema.table.column; name the column with its schema and table")]
    InvalidColumnName {
        /// The name given.
        column: String,
    },
    /// The keyring holds a key of one mode and the caller asked for the other.
    #[error("column {column} has a {existing} key in the keyring but {requested} was requested; keep the policy's `encrypt` mode as it was when the key was created")]
    ModeMismatch {
        /// `schema.table.column`.
        column: String,
        /// Mode recorded in the keyring.
        existing: Mode,
        /// Mode asked for.
        requested: Mode,
    },
    /// Equality variants were asked of a randomized column.
    #[error("column {column} is encrypted in randomized mode, which cannot be compared for equality; use `encrypt = \"deterministic\"` for columns that are filtered on")]
    NotDeterministic {
        /// `schema.table.column`.
        column: String,
    },

    // ---- the ciphertext is not one this keyring can open ----------------------------------------
    /// The value is not an envelope at all (no magic / prefix).
    #[error("the value is not a pgcloak ciphertext (no envelope header); it may be plaintext that was never encrypted, run `pgcloak encrypt` for the column")]
    NotAnEnvelope,
    /// The value starts like an envelope but its header or armour is malformed.
    #[error(
        "the pgcloak ciphertext is malformed ({reason}); the stored value was damaged or truncated"
    )]
    MalformedEnvelope {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The envelope names a column key id this keyring does not know.
    #[error("the ciphertext was made with column key id {key_id}, which is not in this keyring; use the keyring the data was encrypted with")]
    UnknownKeyId {
        /// Key id from the envelope.
        key_id: u32,
    },
    /// The envelope belongs to another column's key.
    #[error("the ciphertext belongs to column key id {found}, not to column {column} (key id {expected}); it was copied from another column")]
    WrongColumnKey {
        /// Column asked to decrypt.
        column: String,
        /// That column's key id.
        expected: u32,
        /// Key id in the envelope.
        found: u32,
    },
    /// The envelope names a key version the column does not have.
    #[error("the ciphertext for column {column} names key version {version}, which the keyring does not have; use the keyring the data was encrypted with")]
    UnknownKeyVersion {
        /// `schema.table.column`.
        column: String,
        /// Version from the envelope.
        version: u32,
    },
    /// AEAD authentication failed.
    #[error("the ciphertext for column {column} failed authentication; it was altered, truncated or copied from another column or key version")]
    DecryptFailed {
        /// `schema.table.column`.
        column: String,
    },

    // ---- a plaintext value in PostgreSQL wire format is invalid ---------------------------------
    /// A typed value does not parse (text format) or decode (binary format).
    #[error("invalid {ty} value in {format} format ({reason}); send a value PostgreSQL accepts for type {ty}")]
    InvalidValue {
        /// Logical type name (`int4`, ...).
        ty: &'static str,
        /// `text`, `binary` or `canonical`.
        format: &'static str,
        /// Why (never the value).
        reason: &'static str,
    },
    /// A value too large to encrypt.
    #[error("the value is too large to encrypt ({len} bytes); values are limited to {max} bytes")]
    ValueTooLarge {
        /// Length given.
        len: usize,
        /// Limit.
        max: usize,
    },

    // ---- the environment failed ------------------------------------------------------------------
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed; check that the OS entropy source (getrandom) is available")]
    Random,
    /// A keyring store reported an error.
    #[error("the keyring store failed: {detail}")]
    Store {
        /// The store's message.
        detail: String,
    },
    /// Compare-and-swap kept failing because other writers kept changing the keyring.
    #[error("the keyring kept changing under concurrent writers ({attempts} attempts); retry the command")]
    StoreContention {
        /// Attempts made.
        attempts: u32,
    },
    /// A cryptographic primitive refused an input the crate should never give it.
    #[error("an internal cryptographic operation failed ({what}); this is a pgcloak bug, please report it")]
    Internal {
        /// Which operation.
        what: &'static str,
    },
}

/// Result alias for this crate.
pub type Result<T, E = KeyError> = std::result::Result<T, E>;

/// What a [`crate::keyring::KeyringStore`] implementation reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The stored generation is not the expected one: someone else wrote in between.
    #[error("the keyring was changed by another writer since it was read")]
    Conflict,
    /// Any other failure (I/O, database), described by the store.
    #[error("{0}")]
    Backend(String),
}
