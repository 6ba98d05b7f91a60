//! The keyring: per-column data keys with versions, wrapped under the master key, serialised as JSON;
//! the editable document, the unlocked data-path view, and the compare-and-swap store protocol.

use std::collections::HashSet;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hmac;
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};

use crate::cipher::ColumnCipher;
use crate::envelope::{self, Envelope};
use crate::error::{KeyError, Result, StoreError};
use crate::secret::{fill_random, Dek, MasterKey, INFO_CHECK, INFO_WRAP, KEY_LEN};
use crate::Mode;

/// Value of the document's `format` field.
pub const KEYRING_FORMAT: &str = "pgcloak-keyring";
/// Keyring format version written and read by this crate.
pub const KEYRING_FORMAT_VERSION: u32 = 1;
/// Message authenticated by the master-key check value.
const CHECK_LABEL: &[u8] = b"pgcloak keyring master key check v1";
/// First bytes of a wrapped DEK's associated data.
const WRAP_AD_LABEL: &[u8] = b"pgcloak wrapped dek v1";
/// Wrapped DEK = nonce (12) ‖ AES-256-GCM(DEK) (32) ‖ tag (16).
const WRAPPED_LEN: usize = 12 + KEY_LEN + 16;
/// How many times [`update_with_retry`] reloads and reapplies after a compare-and-swap conflict.
pub const MAX_UPDATE_ATTEMPTS: u32 = 64;
/// Longest identifier part PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENT_LEN: usize = 63;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocJson {
    format: String,
    format_version: u32,
    generation: u64,
    master_check: String,
    next_key_id: u32,
    columns: Vec<ColumnJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnJson {
    column: String,
    key_id: u32,
    mode: Mode,
    active_version: u32,
    versions: Vec<VersionJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionJson {
    version: u32,
    created: String,
    wrapped_key: String,
}

/// One key version as listed (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// 1, 2, ...
    pub version: u32,
    /// Creation time as the caller gave it (RFC 3339 from the proxy).
    pub created: String,
}

/// One column's keys as listed by `pgcloak keys list` (no key material). Its JSON is the CONTRACT's
/// `{column, active_version, versions: [{version, created}]}` plus `key_id` and `mode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// `schema.table.column`.
    pub column: String,
    /// Stable column key id, written into each envelope.
    pub key_id: u32,
    /// Encryption mode.
    pub mode: Mode,
    /// Version used for new writes.
    pub active_version: u32,
    /// Every live version, ascending.
    pub versions: Vec<VersionInfo>,
}

/// Checks that `name` is `schema.table.column` (three non-empty parts of at most 63 bytes, no
/// control characters).
pub fn validate_column_name(name: &str) -> Result<()> {
    let bad = || KeyError::InvalidColumnName {
        column: name.chars().take(200).collect(),
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > MAX_IDENT_LEN || p.chars().any(char::is_control))
    {
        return Err(bad());
    }
    Ok(())
}

fn corrupt(detail: impl Into<String>) -> KeyError {
    KeyError::CorruptKeyring {
        detail: detail.into(),
    }
}

fn wrap_ad(column: &str, key_id: u32, version: u32, mode: Mode) -> Vec<u8> {
    let mut ad = Vec::with_capacity(WRAP_AD_LABEL.len() + 13 + column.len());
    ad.extend_from_slice(WRAP_AD_LABEL);
    ad.extend_from_slice(&key_id.to_be_bytes());
    ad.extend_from_slice(&version.to_be_bytes());
    ad.push(mode.byte());
    ad.extend_from_slice(&(column.len() as u32).to_be_bytes());
    ad.extend_from_slice(column.as_bytes());
    ad
}

/// The editable keyring document, opened with the master key.
///
/// It holds the wrapped DEKs (never unwrapped ones) and a wrapping key derived from the master key,
/// so it can add keys. Create with [`KeyringDoc::new`], read with [`KeyringDoc::open`], change with
/// [`ensure_column`](KeyringDoc::ensure_column) / [`rotate`](KeyringDoc::rotate), write with
/// [`to_json_bytes`](KeyringDoc::to_json_bytes) — preferably all through [`update_with_retry`].
pub struct KeyringDoc {
    doc: DocJson,
    wrap: LessSafeKey,
    base_generation: Option<u64>,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeyringDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringDoc")
            .field("generation", &self.doc.generation)
            .field("base_generation", &self.base_generation)
            .field("columns", &self.list())
            .field("keys", &"[redacted]")
            .finish()
    }
}

fn wrap_key(master: &MasterKey) -> Result<LessSafeKey> {
    let k = master.derive(INFO_WRAP);
    let unbound = UnboundKey::new(&AES_256_GCM, &k[..]).map_err(|_| KeyError::Internal {
        what: "AES-256-GCM wrap key setup",
    })?;
    Ok(LessSafeKey::new(unbound))
}

fn check_key(master: &MasterKey) -> hmac::Key {
    let k = master.derive(INFO_CHECK);
    hmac::Key::new(hmac::HMAC_SHA256, &k[..])
}

fn parse_doc(bytes: &[u8]) -> Result<DocJson> {
    let doc: DocJson = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message names the field / position, never the secret values themselves
        // (wrapped keys are ciphertext anyway).
        corrupt(format!("not a valid keyring document: {e}"))
    })?;
    if doc.format != KEYRING_FORMAT {
        return Err(corrupt(format!(
            "the `format` field is not \"{KEYRING_FORMAT}\""
        )));
    }
    if doc.format_version == 0 {
        return Err(corrupt("format version 0 does not exist"));
    }
    if doc.format_version > KEYRING_FORMAT_VERSION {
        return Err(KeyError::UnsupportedKeyringVersion {
            found: doc.format_version,
            supported: KEYRING_FORMAT_VERSION,
        });
    }
    Ok(doc)
}

impl KeyringDoc {
    /// A new, empty keyring for `master` (generation 0, not yet stored).
    pub fn new(master: &MasterKey) -> Result<KeyringDoc> {
        let check = hmac::sign(&check_key(master), CHECK_LABEL);
        Ok(KeyringDoc {
            doc: DocJson {
                format: KEYRING_FORMAT.to_string(),
                format_version: KEYRING_FORMAT_VERSION,
                generation: 0,
                master_check: hex::encode(check.as_ref()),
                next_key_id: 1,
                columns: Vec::new(),
            },
            wrap: wrap_key(master)?,
            base_generation: None,
            rng: SystemRandom::new(),
        })
    }

    /// Opens a stored keyring: parses it, checks the master key against its check value
    /// ([`KeyError::WrongMasterKey`]) and verifies every invariant and every wrapped key
    /// ([`KeyError::CorruptKeyring`]).
    pub fn open(bytes: &[u8], master: &MasterKey) -> Result<KeyringDoc> {
        let doc = parse_doc(bytes)?;
        let check = hex::decode(&doc.master_check)
            .ok()
            .filter(|c| c.len() == 32)
            .ok_or_else(|| corrupt("the master key check value is not 64 hex digits"))?;
        if hmac::verify(&check_key(master), CHECK_LABEL, &check).is_err() {
            return Err(KeyError::WrongMasterKey);
        }
        let opened = KeyringDoc {
            base_generation: Some(doc.generation),
            doc,
            wrap: wrap_key(master)?,
            rng: SystemRandom::new(),
        };
        opened.validate()?;
        Ok(opened)
    }

    /// The generation recorded in a stored keyring, without the master key (for a store's
    /// compare-and-swap).
    pub fn peek_generation(bytes: &[u8]) -> Result<u64> {
        Ok(parse_doc(bytes)?.generation)
    }

    /// The current generation: the stored one plus one per change made since.
    pub fn generation(&self) -> u64 {
        self.doc.generation
    }

    /// The generation this document was loaded at (`None` for a new document): what
    /// [`KeyringStore::store`] must find in the store for the write to succeed.
    pub fn base_generation(&self) -> Option<u64> {
        self.base_generation
    }

    /// Whether the document must be written: it is new, or it changed since it was loaded.
    pub fn is_modified(&self) -> bool {
        self.base_generation != Some(self.doc.generation)
    }

    fn validate(&self) -> Result<()> {
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for c in &self.doc.columns {
            validate_column_name(&c.column)
                .map_err(|_| corrupt("a column name is not schema.table.column"))?;
            if !names.insert(c.column.as_str()) {
                return Err(corrupt(format!("column {} is listed twice", c.column)));
            }
            if c.key_id == 0 || c.key_id >= self.doc.next_key_id || !ids.insert(c.key_id) {
                return Err(corrupt(format!(
                    "column {} has a key id that is zero, duplicated or not below next_key_id",
                    c.column
                )));
            }
            if c.versions.is_empty() {
                return Err(corrupt(format!("column {} has no key versions", c.column)));
            }
            let mut prev = 0u32;
            for v in &c.versions {
                if v.version <= prev {
                    return Err(corrupt(format!(
                        "column {} has key versions that are not 1 or more and strictly ascending",
                        c.column
                    )));
                }
                prev = v.version;
            }
            if !c.versions.iter().any(|v| v.version == c.active_version) {
                return Err(corrupt(format!(
                    "column {} names an active version it does not have",
                    c.column
                )));
            }
            for v in &c.versions {
                self.unwrap_dek(c, v)?;
            }
        }
        Ok(())
    }

    fn unwrap_dek(&self, c: &ColumnJson, v: &VersionJson) -> Result<Dek> {
        let bad = || {
            corrupt(format!(
                "the wrapped key of column {} version {} does not authenticate",
                c.column, v.version
            ))
        };
        let mut wrapped = B64.decode(&v.wrapped_key).map_err(|_| bad())?;
        if wrapped.len() != WRAPPED_LEN {
            return Err(bad());
        }
        let ad = wrap_ad(&c.column, c.key_id, v.version, c.mode);
        // nonce (12) ‖ sealed DEK and tag; the length was checked just above.
        let dek = wrapped
            .split_first_chunk_mut::<12>()
            .and_then(|(nonce, sealed)| {
                self.wrap
                    .open_in_place(
                        Nonce::assume_unique_for_key(*nonce),
                        Aad::from(&ad[..]),
                        sealed,
                    )
                    .ok()
            })
            .and_then(|pt| Dek::from_slice(pt));
        zeroize::Zeroize::zeroize(&mut wrapped);
        dek.ok_or_else(bad)
    }

    fn wrap_dek(
        &self,
        column: &str,
        key_id: u32,
        version: u32,
        mode: Mode,
        dek: &Dek,
    ) -> Result<String> {
        let mut nonce = [0u8; 12];
        fill_random(&self.rng, &mut nonce)?;
        let ad = wrap_ad(column, key_id, version, mode);
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(dek.expose());
        let sealed = out
            .get_mut(nonce.len()..)
            .ok_or(KeyError::Internal { what: "wrap DEK" })?;
        let tag = self
            .wrap
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&ad[..]),
                sealed,
            )
            .map_err(|_| KeyError::Internal { what: "wrap DEK" })?;
        out.extend_from_slice(tag.as_ref());
        Ok(B64.encode(&out))
    }

    fn new_version(
        &self,
        column: &str,
        key_id: u32,
        version: u32,
        mode: Mode,
        created: &str,
    ) -> Result<VersionJson> {
        let dek = Dek::generate(&self.rng)?;
        Ok(VersionJson {
            version,
            created: created.to_string(),
            wrapped_key: self.wrap_dek(column, key_id, version, mode, &dek)?,
        })
    }

    /// Makes sure `column` has a key: creates version 1 in `mode` if it has none (returns `true`),
    /// does nothing if it has one in the same mode (returns `false`; existing keys are never
    /// replaced), and fails with [`KeyError::ModeMismatch`] if it has one in the other mode.
    /// `created` is the creation time the caller formats (RFC 3339).
    pub fn ensure_column(&mut self, column: &str, mode: Mode, created: &str) -> Result<bool> {
        validate_column_name(column)?;
        if let Some(c) = self.doc.columns.iter().find(|c| c.column == column) {
            if c.mode != mode {
                return Err(KeyError::ModeMismatch {
                    column: column.to_string(),
                    existing: c.mode,
                    requested: mode,
                });
            }
            return Ok(false);
        }
        let key_id = self.doc.next_key_id;
        let next = key_id
            .checked_add(1)
            .ok_or_else(|| corrupt("no column key ids left"))?;
        let v = self.new_version(column, key_id, 1, mode, created)?;
        self.doc.columns.push(ColumnJson {
            column: column.to_string(),
            key_id,
            mode,
            active_version: 1,
            versions: vec![v],
        });
        self.doc.next_key_id = next;
        self.doc.generation = self.doc.generation.wrapping_add(1);
        Ok(true)
    }

    /// Adds a new key version to `column` and makes it active; returns the new version number.
    /// Older versions stay and keep decrypting.
    pub fn rotate(&mut self, column: &str, created: &str) -> Result<u32> {
        let unknown = || KeyError::UnknownColumn {
            column: column.to_string(),
        };
        let idx = self
            .doc
            .columns
            .iter()
            .position(|c| c.column == column)
            .ok_or_else(unknown)?;
        let c = self.doc.columns.get(idx).ok_or_else(unknown)?;
        let last = c.versions.last().map_or(0, |v| v.version);
        let version = last
            .checked_add(1)
            .ok_or_else(|| corrupt(format!("column {column} has no key versions left")))?;
        let v = self.new_version(column, c.key_id, version, c.mode, created)?;
        let c = self.doc.columns.get_mut(idx).ok_or_else(unknown)?;
        c.versions.push(v);
        c.active_version = version;
        self.doc.generation = self.doc.generation.wrapping_add(1);
        Ok(version)
    }

    /// Every column's key metadata, in creation order (no key material).
    pub fn list(&self) -> Vec<ColumnInfo> {
        self.doc.columns.iter().map(column_info).collect()
    }

    /// The document as pretty-printed JSON with a trailing newline (holds only wrapped keys).
    pub fn to_json_bytes(&self) -> Result<Vec<u8>> {
        let mut out = serde_json::to_vec_pretty(&self.doc).map_err(|_| KeyError::Internal {
            what: "serialise keyring",
        })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Unwraps every key and builds the data-path view.
    pub fn unlock(&self) -> Result<Keyring> {
        let mut ciphers = Vec::with_capacity(self.doc.columns.len());
        for c in &self.doc.columns {
            let mut versions = Vec::with_capacity(c.versions.len());
            for v in &c.versions {
                versions.push((v.version, self.unwrap_dek(c, v)?));
            }
            ciphers.push(ColumnCipher::new(
                &c.column,
                c.key_id,
                c.mode,
                versions,
                c.active_version,
                &self.rng,
            )?);
        }
        let mut by_name: Vec<(String, usize)> = ciphers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.column().to_string(), i))
            .collect();
        by_name.sort_unstable();
        let mut by_id: Vec<(u32, usize)> = ciphers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key_id(), i))
            .collect();
        by_id.sort_unstable();
        Ok(Keyring {
            ciphers,
            by_name,
            by_id,
            generation: self.doc.generation,
            info: self.list(),
        })
    }
}

fn column_info(c: &ColumnJson) -> ColumnInfo {
    ColumnInfo {
        column: c.column.clone(),
        key_id: c.key_id,
        mode: c.mode,
        active_version: c.active_version,
        versions: c
            .versions
            .iter()
            .map(|v| VersionInfo {
                version: v.version,
                created: v.created.clone(),
            })
            .collect(),
    }
}

/// The unlocked keyring for the data path: one [`ColumnCipher`] per column, looked up by column name
/// or by the key id found in an envelope. Immutable, `Send + Sync`; share it as `Arc<Keyring>` and
/// swap the `Arc` to reload.
pub struct Keyring {
    ciphers: Vec<ColumnCipher>,
    /// Sorted by column name: looked up for every value written (see `by_id`).
    by_name: Vec<(String, usize)>,
    /// Sorted by key id: looked up for every value read (a binary search over a few entries costs
    /// less than hashing the id with SipHash).
    by_id: Vec<(u32, usize)>,
    generation: u64,
    info: Vec<ColumnInfo>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("generation", &self.generation)
            .field("ciphers", &self.ciphers)
            .finish()
    }
}

impl Keyring {
    /// Parses, checks and unlocks a stored keyring in one step (see [`KeyringDoc::open`]).
    pub fn unlock(bytes: &[u8], master: &MasterKey) -> Result<Keyring> {
        KeyringDoc::open(bytes, master)?.unlock()
    }

    /// The cipher of a column, if the keyring has a key for it.
    pub fn cipher(&self, column: &str) -> Option<&ColumnCipher> {
        let at = self
            .by_name
            .binary_search_by(|(name, _)| name.as_str().cmp(column))
            .ok()?;
        let &(_, i) = self.by_name.get(at)?;
        self.ciphers.get(i)
    }

    /// The cipher of a column, or [`KeyError::UnknownColumn`].
    pub fn require_cipher(&self, column: &str) -> Result<&ColumnCipher> {
        self.cipher(column).ok_or_else(|| KeyError::UnknownColumn {
            column: column.to_string(),
        })
    }

    /// The cipher whose key id an envelope names.
    pub fn cipher_for_key_id(&self, key_id: u32) -> Option<&ColumnCipher> {
        let at = self
            .by_id
            .binary_search_by_key(&key_id, |&(id, _)| id)
            .ok()?;
        let &(_, i) = self.by_id.get(at)?;
        self.ciphers.get(i)
    }

    /// The column (`schema.table.column`) a key id belongs to.
    pub fn column_for_key_id(&self, key_id: u32) -> Option<&str> {
        self.cipher_for_key_id(key_id).map(|c| c.column())
    }

    /// Decrypts a stored value (raw or armoured) of whichever column its key id names; returns that
    /// column's name with the plaintext. The caller checks the role may read that column — ideally
    /// before, with [`envelope::decode_any`] + [`Envelope::key_id`] + [`Keyring::column_for_key_id`].
    pub fn decrypt_any(&self, stored: &[u8]) -> Result<(&str, Vec<u8>)> {
        let raw = envelope::decode_any(stored)?;
        let env = Envelope::parse(&raw)?;
        let c = self
            .cipher_for_key_id(env.key_id())
            .ok_or(KeyError::UnknownKeyId {
                key_id: env.key_id(),
            })?;
        Ok((c.column(), c.decrypt_envelope(&env)?))
    }

    /// Every column cipher, in creation order.
    pub fn ciphers(&self) -> impl Iterator<Item = &ColumnCipher> {
        self.ciphers.iter()
    }

    /// The generation of the document this was unlocked from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Key metadata of every column (no key material).
    pub fn list(&self) -> Vec<ColumnInfo> {
        self.info.clone()
    }
}

/// Where the proxy keeps the serialised keyring (a file, a PostgreSQL table). Implementations do the
/// I/O; this crate only calls them.
///
/// `store` is a compare-and-swap: it must write `doc` only if the generation currently stored equals
/// `expected_generation` (`None`: nothing is stored yet), atomically with respect to other writers
/// (file: take a lock file, compare with [`KeyringDoc::peek_generation`], write a temp file, fsync,
/// rename, fsync the directory; PostgreSQL: `UPDATE ... WHERE generation = $expected` / `INSERT ...
/// ON CONFLICT DO NOTHING` and check the row count). Otherwise it returns [`StoreError::Conflict`]
/// and [`update_with_retry`] reloads and reapplies the change, so two concurrent `keys rotate`
/// commands both land instead of one overwriting the other.
pub trait KeyringStore {
    /// The stored document, or `None` if there is none yet.
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes `doc` if the stored generation is `expected_generation`, else [`StoreError::Conflict`].
    fn store(&self, expected_generation: Option<u64>, doc: &[u8]) -> Result<(), StoreError>;
}

fn store_error(e: StoreError) -> KeyError {
    match e {
        StoreError::Conflict => KeyError::Store {
            detail: "a load reported a conflict".to_string(),
        },
        StoreError::Backend(detail) => KeyError::Store { detail },
    }
}

/// Loads the keyring (or starts a new one), applies `change`, and stores the result with
/// compare-and-swap; on [`StoreError::Conflict`] it reloads and applies `change` again, at most
/// [`MAX_UPDATE_ATTEMPTS`] times. `change` must therefore be repeatable (it is called once per
/// attempt on a freshly loaded document). Nothing is written when `change` leaves a loaded document
/// unchanged; a new document is always written (so `keys init` records the master-key check).
/// Returns the value of the successful attempt and the document as stored.
pub fn update_with_retry<S, T, F>(
    store: &S,
    master: &MasterKey,
    mut change: F,
) -> Result<(T, KeyringDoc)>
where
    S: KeyringStore + ?Sized,
    F: FnMut(&mut KeyringDoc) -> Result<T>,
{
    for _ in 0..MAX_UPDATE_ATTEMPTS {
        let mut doc = match store.load().map_err(store_error)? {
            Some(bytes) => KeyringDoc::open(&bytes, master)?,
            None => KeyringDoc::new(master)?,
        };
        let value = change(&mut doc)?;
        if !doc.is_modified() {
            return Ok((value, doc));
        }
        let bytes = doc.to_json_bytes()?;
        match store.store(doc.base_generation, &bytes) {
            Ok(()) => {
                doc.base_generation = Some(doc.doc.generation);
                return Ok((value, doc));
            }
            Err(StoreError::Conflict) => continue,
            Err(StoreError::Backend(detail)) => return Err(KeyError::Store { detail }),
        }
    }
    Err(KeyError::StoreContention {
        attempts: MAX_UPDATE_ATTEMPTS,
    })
}
