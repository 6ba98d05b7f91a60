//! pgcloak-keymgr: every secret and every byte of ciphertext pgcloak handles — master key, audit
//! signing key, column data keys and their versions, the keyring document, the ciphertext envelope,
//! and the typed plaintext conversions that make text and binary parameters encrypt alike.
//!
//! The crate is pure: no file, socket, process or clock access (timestamps are passed in), no
//! `unsafe`, and no panics on any input. The proxy does the I/O: it reads the master key (file,
//! environment variable or command), implements [`KeyringStore`] over a file or a PostgreSQL table,
//! and calls into this crate on the data path.
//!
//! # Layout
//!
//! - [`secret`] — [`MasterKey`] (32 bytes, base64 on disk), [`AuditSigningKey`] (Ed25519 derived
//!   from the master key), [`verify_audit_signature`]; all key bytes zeroised on drop, `Debug`
//!   prints `[redacted]`.
//! - [`types`] — [`LogicalType`] (the nine client-visible types, their oids) and [`Mode`].
//! - [`typed`] — PostgreSQL text/binary wire formats ⇄ canonical plaintext bytes.
//! - [`envelope`] — the ciphertext byte layout, [`armor`]/[`dearmor`], [`looks_like_envelope`].
//! - [`cipher`] — [`ColumnCipher`]: encrypt/decrypt one column under its key versions.
//! - [`subject`] — data subjects: [`SubjectRef`] (keyed HMAC of a subject id), per-subject data
//!   keys wrapped by the master key ([`SubjectKeyWrapper`]), a bounded LRU of unwrapped keys
//!   ([`KeyCache`]).
//! - [`matching`] — match terms for `LIKE`/`ILIKE` on encrypted text: a keyed trigram Bloom
//!   filter ([`matching::MatchKey`]) with no false negatives, and the exact matcher
//!   ([`matching::like_match`]) the proxy runs on decrypted candidates. Not used by the proxy yet.
//! - [`order`] — order terms for range queries: a keyed order-preserving encoding of 64-bit
//!   values whose bytes compare like the values (so a plain btree index works; why not an
//!   order-revealing scheme is in the module docs). Not used by the proxy yet.
//! - [`keyring`] — [`KeyringDoc`] (the editable JSON document of wrapped keys), [`Keyring`] (the
//!   unlocked data-path view), [`KeyringStore`] + [`update_with_retry`] (compare-and-swap writes).
//! - [`error`] — [`KeyError`], the one error enum, and [`StoreError`].
//!
//! # Typical use by the proxy
//!
//! ```
//! use pgcloak_keymgr::{typed, update_with_retry, Encoding, Keyring, LogicalType, MasterKey, Mode};
//! # use pgcloak_keymgr::{KeyringStore, StoreError};
//! # use std::sync::Mutex;
//! # struct Mem(Mutex<Option<Vec<u8>>>);
//! # impl KeyringStore for Mem {
//! #     fn load(&self) -> Result<Option<Vec<u8>>, StoreError> { Ok(self.0.lock().unwrap().clone()) }
//! #     fn store(&self, _expected: Option<u64>, doc: &[u8]) -> Result<(), StoreError> {
//! #         *self.0.lock().unwrap() = Some(doc.to_vec()); Ok(()) }
//! # }
//! # let store = Mem(Mutex::new(None));
//! let master = MasterKey::generate()?;                       // `keys init` writes master.to_base64()
//! // `keys init`: a key for every encrypted policy column, never replacing existing ones.
//! update_with_retry(&store, &master, |doc| {
//!     doc.ensure_column("public.customers.phone", Mode::Deterministic, "2024-01-02T03:04:05Z")
//! })?;
//! // `serve`: unlock once, share as Arc<Keyring>.
//! let keyring = Keyring::unlock(&store.load().unwrap().unwrap(), &master)?;
//! let phone = keyring.cipher("public.customers.phone").unwrap();
//! let plain = typed::canonical_from_text(LogicalType::Text, b"555-0100")?;
//! let stored = phone.encrypt_as(&plain, Encoding::Armored)?;     // text column: "pgc1:wQoB..."
//! let (column, back) = keyring.decrypt_any(&stored)?;
//! assert_eq!((column, typed::to_text(LogicalType::Text, &back)?), ("public.customers.phone", b"555-0100".to_vec()));
//! # Ok::<(), pgcloak_keymgr::KeyError>(())
//! ```
//!
//! # Envelope format (version 1)
//!
//! ```text
//!  offset  size  field
//!  ------  ----  -----------------------------------------------------------------
//!       0     2  magic            C1 0A   (0xC1 never occurs in UTF-8 text)
//!       2     1  format version   01
//!       3     1  mode             01 = randomized, 02 = deterministic
//!       4     4  column key id    u32 big-endian, stable per column, unique in the keyring
//!       8     4  key version      u32 big-endian, 1, 2, ...
//!      12    12  nonce            AES-GCM nonce
//!      24     n  ciphertext       AES-256-GCM of the canonical plaintext (n = plaintext length)
//!    24+n    16  tag              GCM authentication tag
//! ```
//!
//! The shortest envelope (empty plaintext) is 40 bytes. Associated data = the 12 header bytes ‖
//! u32 BE length of the column name ‖ the column name `schema.table.column` (UTF-8). So a value
//! copied into another column, relabelled with another version, mode or key id, or altered in any
//! bit fails authentication.
//!
//! **Armour** (for `text`/`varchar` storage): `pgc1:` followed by the raw envelope in URL-safe
//! base64 without padding (RFC 4648 §5; canonical, padding and stray bits refused). Every armoured
//! envelope starts with `pgc1:wQoB` (the base64 of `C1 0A 01`) and is at least 59 characters.
//! [`looks_like_envelope`] checks magic + version + mode + length (raw) or that lead + length
//! (armoured), without any cryptography.
//!
//! **Format 2** (subject-keyed values, [`subject`]): the same layout with format byte `02` and the
//! 16-byte [`SubjectRef`] after the key version (a 28-byte header), encrypted under the subject's
//! own data key (`HKDF(subject DEK, "pgcloak subject enc key v1")`, and `"... mac key v1"` for the
//! deterministic nonce); armoured it starts with `pgc1:wQoC`. The column path ([`Envelope::parse`],
//! [`ColumnCipher`]) refuses it; [`SubjectHeader`] reads which key opens it.
//!
//! # Keys and modes
//!
//! Each column has a data key (DEK, 32 random bytes) per key version. From each DEK, HKDF-SHA256
//! derives `k_enc = HKDF(DEK, "pgcloak column enc key v1")` and, for deterministic columns,
//! `k_mac = HKDF(DEK, "pgcloak column mac key v1")`. The AES key schedule and HMAC state are expanded
//! once per key version when the keyring is unlocked.
//!
//! - **randomized**: nonce = a random 32-bit prefix ‖ a 64-bit counter with a random start, both
//!   drawn from the OS RNG per [`ColumnCipher`] and the counter incremented atomically per value.
//!   Nonces never repeat within a process; across processes/reloads the random 96-bit starting
//!   points make an overlap less likely than a collision of independent random nonces. (Calling the
//!   OS RNG per value costs ~0.25 µs; this costs one atomic add.)
//! - **deterministic** (SIV-style): nonce = first 12 bytes of HMAC-SHA256(k_mac, associated data ‖
//!   plaintext), then AES-256-GCM under k_enc. Equal plaintexts give equal envelopes within one
//!   column and key version — equality filters, joins and unique indexes work — which also means
//!   **it reveals which rows hold equal values**. After a rotation, [`ColumnCipher::equality_variants`]
//!   gives the ciphertext under every live version so lookups still match older rows.
//!
//! # Keyring document (JSON)
//!
//! ```json
//! { "format": "pgcloak-keyring", "format_version": 1, "generation": 3,
//!   "master_check": "<64 hex digits>", "next_key_id": 2,
//!   "columns": [ { "column": "public.customers.phone", "key_id": 1, "mode": "deterministic",
//!                  "active_version": 2,
//!                  "versions": [ { "version": 1, "created": "2024-01-02T03:04:05Z", "wrapped_key": "<base64>" },
//!                                { "version": 2, "created": "2024-02-01T00:00:00Z", "wrapped_key": "<base64>" } ] } ] }
//! ```
//!
//! - `wrapped_key` = base64(nonce 12 ‖ AES-256-GCM(DEK) 32 ‖ tag 16) under
//!   `HKDF(master, "pgcloak keyring wrap key v1")`, with associated data `"pgcloak wrapped dek v1"` ‖
//!   key id ‖ version ‖ mode byte ‖ len ‖ column name: a key cannot be moved to another column,
//!   version or mode by editing the JSON.
//! - `master_check` = HMAC-SHA256(`HKDF(master, "pgcloak keyring check key v1")`,
//!   `"pgcloak keyring master key check v1"`). Opening with another master key fails this check
//!   first and returns [`KeyError::WrongMasterKey`]; any other damage (bad JSON, missing or unknown
//!   fields, broken invariants, a wrapped key that does not authenticate) returns
//!   [`KeyError::CorruptKeyring`].
//! - `generation` grows by one per change. Stores compare it to refuse stale writes (see
//!   [`KeyringStore`]), so concurrent `pgcloak keys rotate` commands never lose a rotation.
//!
//! The audit signing key is an Ed25519 key whose seed is `HKDF(master, "pgcloak audit signing key v1")`.
//! The `hash` mask's pseudonym key ([`MasterKey::mask_hash_key`]) is
//! `HKDF(master, "pgcloak mask hash key v1")`.
//! All HKDF uses share the salt `"pgcloak-keymgr hkdf salt v1"`.

#![forbid(unsafe_code)]
// Parsers of untrusted input: no unwrap, expect, panic or unchecked indexing/slicing outside tests
// (the linter holds the "no panic on any input" claim; the fuzz targets in fuzz/ check it at run time).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![warn(missing_docs)]

pub mod cipher;
pub mod envelope;
pub mod error;
pub mod keyring;
pub mod matching;
pub mod order;
pub mod secret;
pub mod subject;
pub mod typed;
pub mod types;

#[cfg(test)]
mod props;

pub use cipher::ColumnCipher;
pub use envelope::{armor, dearmor, decode_any, looks_like_envelope, Encoding, Envelope};
pub use error::{KeyError, StoreError};
pub use keyring::{
    update_with_retry, validate_column_name, ColumnInfo, Keyring, KeyringDoc, KeyringStore,
    VersionInfo,
};
pub use secret::{verify_audit_signature, AuditSigningKey, MasterKey};
pub use subject::{
    KeyCache, SubjectCipher, SubjectDek, SubjectHeader, SubjectKeyId, SubjectKeyWrapper,
    SubjectRef, SubjectRefKey,
};
pub use types::{LogicalType, Mode};

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn data_path_types_are_send_sync() {
        assert_send_sync::<crate::Keyring>();
        assert_send_sync::<crate::ColumnCipher>();
        assert_send_sync::<crate::MasterKey>();
        assert_send_sync::<crate::AuditSigningKey>();
    }
}
