//! Data subjects (the people rows belong to): pseudonymous references, per-subject data keys wrapped
//! by the master key, and a bounded cache of unwrapped keys.
//!
//! - A subject is addressed by its [`SubjectRef`], a keyed HMAC of the subject id under a key derived
//!   from the master key ([`SubjectRefKey`]): stable, so the same person always gets the same
//!   reference, and not invertible without the master key, so the reference can be stored, audited
//!   and indexed without revealing the id.
//! - Each (subject, column key id, key version) has its own random 32-byte data key
//!   ([`SubjectDek`]), stored only wrapped ([`SubjectKeyWrapper::wrap`]): AES-256-GCM under a key
//!   derived from the master key, the associated data binding the wrapped key to its subject,
//!   column key id and version, so a wrapped key moved to another row does not unwrap. Destroying a
//!   subject's wrapped keys makes every value encrypted under them unreadable: erasure by
//!   crypto-shredding.
//! - [`KeyCache`] keeps at most a fixed number of unwrapped keys (least recently used evicted), so a
//!   million subjects never need a million keys in memory; evicted keys are zeroised when the last
//!   holder drops them ([`SubjectDek`] zeroises on drop).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hmac;
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use crate::envelope::{Encoding, ARMOR_PREFIX, MAGIC, MAX_PLAINTEXT_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{KeyError, Result};
use crate::secret::{fill_random, hkdf32, MasterKey, KEY_LEN};
use crate::Mode;

/// HKDF label: master key -> HMAC key of subject references.
const INFO_SUBJECT_REF: &[u8] = b"pgcloak subject reference key v1";
/// HKDF label: master key -> AES-256-GCM key that wraps subject data keys.
const INFO_SUBJECT_WRAP: &[u8] = b"pgcloak subject key wrap v1";
/// Domain separation of the reference HMAC input.
const REF_DOMAIN: &[u8] = b"pgcloak subject v1\0";
/// Domain separation of the wrapped key's associated data.
const WRAP_DOMAIN: &[u8] = b"pgcloak subject key v1\0";

/// Length of a [`SubjectRef`] in bytes.
pub const SUBJECT_REF_LEN: usize = 16;
/// Length of a wrapped subject key: nonce (12) + key (32) + tag (16).
pub const WRAPPED_LEN: usize = 12 + KEY_LEN + 16;

/// A subject's pseudonymous reference: the first 16 bytes of HMAC-SHA256 over the subject id. Shown
/// and parsed as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectRef(pub [u8; SUBJECT_REF_LEN]);

impl SubjectRef {
    /// Parses 32 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<SubjectRef> {
        let mut out = [0u8; SUBJECT_REF_LEN];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(SubjectRef(out))
    }
}

impl std::fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for SubjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubjectRef({self})")
    }
}

/// Computes subject references (derived from the master key; `Debug` prints `[redacted]`).
pub struct SubjectRefKey {
    key: hmac::Key,
}

impl std::fmt::Debug for SubjectRefKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectRefKey([redacted])")
    }
}

impl SubjectRefKey {
    /// The reference key of `master`.
    pub fn new(master: &MasterKey) -> SubjectRefKey {
        let k = master.derive(INFO_SUBJECT_REF);
        SubjectRefKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &k[..]),
        }
    }

    /// The reference of the subject whose id (the subject column's value in its canonical text
    /// form, e.g. `42` for an integer id) is `id`.
    pub fn reference(&self, id: &[u8]) -> SubjectRef {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(REF_DOMAIN);
        ctx.update(id);
        let tag = ctx.sign();
        let mut out = [0u8; SUBJECT_REF_LEN];
        for (o, b) in out.iter_mut().zip(tag.as_ref()) {
            *o = *b;
        }
        SubjectRef(out)
    }
}

/// One subject's data key for one column key version: 32 random bytes, zeroised on drop, `Debug`
/// prints `[redacted]`.
pub struct SubjectDek {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl SubjectDek {
    /// The raw key, for building the cipher that uses it.
    pub fn expose(&self) -> &[u8] {
        &self.bytes[..]
    }
}

impl std::fmt::Debug for SubjectDek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectDek([redacted])")
    }
}

/// Where a subject key belongs: its subject, column key id and key version (the wrapped key's
/// associated data, and the cache key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubjectKeyId {
    /// Whose key.
    pub subject: SubjectRef,
    /// The column key id (as in envelopes) the key belongs to.
    pub key_id: u32,
    /// The column key version it belongs to (a rotation gives every subject a new key).
    pub version: u32,
}

impl SubjectKeyId {
    fn associated_data(&self) -> [u8; WRAP_DOMAIN.len() + SUBJECT_REF_LEN + 8] {
        let mut ad = [0u8; WRAP_DOMAIN.len() + SUBJECT_REF_LEN + 8];
        let parts = [
            WRAP_DOMAIN,
            &self.subject.0[..],
            &self.key_id.to_be_bytes()[..],
            &self.version.to_be_bytes()[..],
        ];
        let mut at = 0;
        for p in parts {
            for (o, b) in ad.iter_mut().skip(at).zip(p) {
                *o = *b;
            }
            at += p.len();
        }
        ad
    }
}

/// Creates and unwraps subject data keys (derived from the master key).
pub struct SubjectKeyWrapper {
    aead: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SubjectKeyWrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKeyWrapper([redacted])")
    }
}

impl SubjectKeyWrapper {
    /// The wrapper of `master`.
    pub fn new(master: &MasterKey) -> Result<SubjectKeyWrapper> {
        let k = master.derive(INFO_SUBJECT_WRAP);
        let unbound = UnboundKey::new(&AES_256_GCM, &k[..]).map_err(|_| KeyError::Internal {
            what: "AES-256-GCM key setup",
        })?;
        Ok(SubjectKeyWrapper {
            aead: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// A fresh random key for `id` and its wrapped form ([`WRAPPED_LEN`] bytes) to store.
    pub fn generate(&self, id: &SubjectKeyId) -> Result<(SubjectDek, Vec<u8>)> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(&self.rng, &mut bytes[..])?;
        let dek = SubjectDek { bytes };
        let wrapped = self.wrap(id, &dek)?;
        Ok((dek, wrapped))
    }

    /// Wraps `dek` for `id`: nonce ‖ AES-256-GCM(dek) ‖ tag, the associated data naming `id`.
    pub fn wrap(&self, id: &SubjectKeyId, dek: &SubjectDek) -> Result<Vec<u8>> {
        let mut nonce = [0u8; 12];
        fill_random(&self.rng, &mut nonce)?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(dek.expose());
        let body = out.get_mut(12..).ok_or(KeyError::Internal {
            what: "wrap a subject key",
        })?;
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.associated_data()),
                body,
            )
            .map_err(|_| KeyError::Internal {
                what: "wrap a subject key",
            })?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Unwraps a stored key of `id`; fails when it was altered, or belongs to another subject,
    /// column key or version, or was wrapped under another master key.
    pub fn unwrap(&self, id: &SubjectKeyId, wrapped: &[u8]) -> Result<SubjectDek> {
        let corrupt = || {
            KeyError::CorruptKeyring {
            detail: format!(
                "the stored key of subject {} for column key {} version {} does not unwrap (altered, moved from another row, or wrapped under another master key)",
                id.subject, id.key_id, id.version
            ),
        }
        };
        if wrapped.len() != WRAPPED_LEN {
            return Err(corrupt());
        }
        let (nonce, sealed) = wrapped.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(id.associated_data()), &mut buf[..])
            .map_err(|_| corrupt())?;
        if plain.len() != KEY_LEN {
            return Err(corrupt());
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(plain);
        Ok(SubjectDek { bytes })
    }
}

/// A bounded least-recently-used cache: `get` and `insert` are O(1); inserting past `capacity`
/// evicts the entry used longest ago. Values are shared (`Arc`), so an evicted key stays valid for a
/// holder still using it and is dropped (zeroised, for [`SubjectDek`]) with the last holder.
#[derive(Debug)]
pub struct KeyCache<K, V> {
    capacity: usize,
    map: HashMap<K, usize>,
    /// Entries in a slab, linked most recent first.
    slots: Vec<Slot<K, V>>,
    head: Option<usize>,
    tail: Option<usize>,
    free: Vec<usize>,
}

#[derive(Debug)]
struct Slot<K, V> {
    key: K,
    value: Option<Arc<V>>,
    prev: Option<usize>,
    next: Option<usize>,
}

impl<K: Hash + Eq + Clone, V> KeyCache<K, V> {
    /// A cache of at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> KeyCache<K, V> {
        KeyCache {
            capacity: capacity.max(1),
            map: HashMap::new(),
            slots: Vec::new(),
            head: None,
            tail: None,
            free: Vec::new(),
        }
    }

    /// Entries cached now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value of `key`, marking it most recently used.
    pub fn get(&mut self, key: &K) -> Option<Arc<V>> {
        let at = *self.map.get(key)?;
        self.unlink(at);
        self.push_front(at);
        self.slots.get(at).and_then(|s| s.value.clone())
    }

    /// Inserts (or replaces) `key`, evicting the least recently used entry when full.
    pub fn insert(&mut self, key: K, value: Arc<V>) {
        if let Some(&at) = self.map.get(&key) {
            if let Some(s) = self.slots.get_mut(at) {
                s.value = Some(value);
            }
            self.unlink(at);
            self.push_front(at);
            return;
        }
        if self.map.len() >= self.capacity {
            if let Some(old) = self.tail {
                self.remove_at(old);
            }
        }
        let slot = Slot {
            key: key.clone(),
            value: Some(value),
            prev: None,
            next: None,
        };
        let at = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    *s = slot;
                }
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.map.insert(key, at);
        self.push_front(at);
    }

    /// Drops `key` (e.g. its subject was erased); returns whether it was cached.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.map.get(key).copied() {
            Some(at) => {
                self.remove_at(at);
                true
            }
            None => false,
        }
    }

    /// Drops every entry whose key matches `pred` (all keys of an erased subject).
    pub fn remove_where(&mut self, pred: impl Fn(&K) -> bool) -> usize {
        let doomed: Vec<usize> = self
            .map
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, &at)| at)
            .collect();
        for at in &doomed {
            self.remove_at(*at);
        }
        doomed.len()
    }

    fn remove_at(&mut self, at: usize) {
        self.unlink(at);
        if let Some(s) = self.slots.get_mut(at) {
            s.value = None;
            let key = s.key.clone();
            self.map.remove(&key);
            self.free.push(at);
        }
    }

    fn unlink(&mut self, at: usize) {
        let (prev, next) = match self.slots.get(at) {
            Some(s) => (s.prev, s.next),
            None => return,
        };
        match prev {
            Some(p) => {
                if let Some(s) = self.slots.get_mut(p) {
                    s.next = next;
                }
            }
            None => {
                if self.head == Some(at) {
                    self.head = next;
                }
            }
        }
        match next {
            Some(n) => {
                if let Some(s) = self.slots.get_mut(n) {
                    s.prev = prev;
                }
            }
            None => {
                if self.tail == Some(at) {
                    self.tail = prev;
                }
            }
        }
        if let Some(s) = self.slots.get_mut(at) {
            s.prev = None;
            s.next = None;
        }
    }

    fn push_front(&mut self, at: usize) {
        let old = self.head;
        if let Some(s) = self.slots.get_mut(at) {
            s.prev = None;
            s.next = old;
        }
        if let Some(h) = old {
            if let Some(s) = self.slots.get_mut(h) {
                s.prev = Some(at);
            }
        }
        self.head = Some(at);
        if self.tail.is_none() {
            self.tail = Some(at);
        }
    }
}

/// HKDF label: subject data key -> AES-256-GCM key.
const INFO_SUBJECT_ENC: &[u8] = b"pgcloak subject enc key v1";
/// HKDF label: subject data key -> HMAC key of the deterministic (synthetic) nonce.
const INFO_SUBJECT_MAC: &[u8] = b"pgcloak subject mac key v1";

/// Envelope format version of subject-keyed values.
pub const SUBJECT_FORMAT_VERSION: u8 = 2;
/// Header of a subject-keyed envelope: magic (2) + format (1) + mode (1) + column key id (4) + key
/// version (4) + subject reference (16).
pub const SUBJECT_HEADER_LEN: usize = 12 + SUBJECT_REF_LEN;
/// Shortest subject-keyed raw envelope (empty plaintext): header, nonce, tag.
pub const SUBJECT_MIN_RAW_LEN: usize = SUBJECT_HEADER_LEN + NONCE_LEN + TAG_LEN;

/// The header of a subject-keyed envelope: which key opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectHeader {
    /// Randomized or deterministic (within the subject).
    pub mode: Mode,
    /// The column key id, subject and version of the key.
    pub key: SubjectKeyId,
}

impl SubjectHeader {
    /// Reads the header of a stored value in either encoding; `None` when it is not a
    /// subject-keyed envelope (e.g. a column-keyed one, or plaintext).
    pub fn of_stored(stored: &[u8]) -> Option<SubjectHeader> {
        let raw = raw_of(stored).ok()?;
        SubjectHeader::parse(&raw).ok()
    }

    /// Parses the header of a raw subject-keyed envelope.
    pub fn parse(raw: &[u8]) -> Result<SubjectHeader> {
        if raw.first_chunk::<2>() != Some(&MAGIC) {
            return Err(KeyError::NotAnEnvelope);
        }
        let Some(h) = raw.first_chunk::<SUBJECT_HEADER_LEN>() else {
            return Err(KeyError::MalformedEnvelope {
                reason: "it is shorter than a subject envelope header, nonce and tag",
            });
        };
        if raw.len() < SUBJECT_MIN_RAW_LEN {
            return Err(KeyError::MalformedEnvelope {
                reason: "it is shorter than a subject envelope header, nonce and tag",
            });
        }
        let [_, _, format, mode, k0, k1, k2, k3, v0, v1, v2, v3, subject @ ..] = *h;
        if format != SUBJECT_FORMAT_VERSION {
            return Err(KeyError::MalformedEnvelope {
                reason: "not a subject-keyed envelope",
            });
        }
        let mode = Mode::from_byte(mode).ok_or(KeyError::MalformedEnvelope {
            reason: "unknown encryption mode byte",
        })?;
        Ok(SubjectHeader {
            mode,
            key: SubjectKeyId {
                subject: SubjectRef(subject),
                key_id: u32::from_be_bytes([k0, k1, k2, k3]),
                version: u32::from_be_bytes([v0, v1, v2, v3]),
            },
        })
    }

    fn bytes(&self) -> [u8; SUBJECT_HEADER_LEN] {
        let mut h = [0u8; SUBJECT_HEADER_LEN];
        let parts: [&[u8]; 5] = [
            &MAGIC,
            &[SUBJECT_FORMAT_VERSION, self.mode.byte()],
            &self.key.key_id.to_be_bytes(),
            &self.key.version.to_be_bytes(),
            &self.key.subject.0,
        ];
        let mut at = 0;
        for p in parts {
            for (o, b) in h.iter_mut().skip(at).zip(p) {
                *o = *b;
            }
            at += p.len();
        }
        h
    }
}

/// Every armoured subject-keyed envelope starts with this: the prefix plus the base64 of magic +
/// format 2 (`C1 0A 02` encodes to `wQoC`).
const SUBJECT_ARMOR_LEAD: &[u8] = b"pgc1:wQoC";

/// Decodes an armoured subject-keyed envelope onto the end of `out`: false (and `out` as it was)
/// when `text` is not one.
pub fn dearmor_subject_into(text: &[u8], out: &mut Vec<u8>) -> bool {
    if !text.starts_with(SUBJECT_ARMOR_LEAD) {
        return false;
    }
    let start = out.len();
    let body = text.get(ARMOR_PREFIX.len()..).unwrap_or_default();
    if !crate::envelope::decode_base64url_into(body, out)
        || SubjectHeader::parse(out.get(start..).unwrap_or_default()).is_err()
    {
        out.truncate(start);
        return false;
    }
    true
}

/// The raw envelope of a stored value: dearmoured when it is armoured text, else as stored.
fn raw_of(stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    match stored.strip_prefix(ARMOR_PREFIX) {
        Some(body) => {
            let mut raw = Vec::new();
            if !crate::envelope::decode_base64url_into(body, &mut raw) {
                return Err(KeyError::MalformedEnvelope {
                    reason: "the armoured text is not valid base64",
                });
            }
            Ok(std::borrow::Cow::Owned(raw))
        }
        None => Ok(std::borrow::Cow::Borrowed(stored)),
    }
}

/// Encrypts and decrypts one column's values of one subject under one key version: AES-256-GCM
/// with random nonces (randomized) or HMAC-synthetic nonces (deterministic: equal values of the same
/// subject encrypt equally, across subjects they differ). The envelope (format 2) names the subject
/// reference, so a reader knows which key to fetch; the associated data binds the value to its
/// header and column, so it neither opens under another subject's key nor in another column.
pub struct SubjectCipher {
    column: String,
    header: SubjectHeader,
    aead: LessSafeKey,
    /// HMAC state with the associated data absorbed (deterministic only).
    mac: Option<hmac::Context>,
    ad: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SubjectCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectCipher")
            .field("column", &self.column)
            .field("header", &self.header)
            .field("keys", &"[redacted]")
            .finish()
    }
}

impl SubjectCipher {
    /// The cipher of `column` (`schema.table.column`) for the subject key `id` in `mode`.
    pub fn new(
        column: &str,
        mode: Mode,
        id: SubjectKeyId,
        dek: &SubjectDek,
    ) -> Result<SubjectCipher> {
        let header = SubjectHeader { mode, key: id };
        let enc = hkdf32(dek.expose(), INFO_SUBJECT_ENC);
        let unbound = UnboundKey::new(&AES_256_GCM, &enc[..]).map_err(|_| KeyError::Internal {
            what: "AES-256-GCM key setup",
        })?;
        let mut ad = Vec::with_capacity(SUBJECT_HEADER_LEN + 4 + column.len());
        ad.extend_from_slice(&header.bytes());
        ad.extend_from_slice(&(column.len() as u32).to_be_bytes());
        ad.extend_from_slice(column.as_bytes());
        let mac = match mode {
            Mode::Randomized => None,
            Mode::Deterministic => {
                let k = hkdf32(dek.expose(), INFO_SUBJECT_MAC);
                let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &k[..]));
                ctx.update(&ad);
                Some(ctx)
            }
        };
        Ok(SubjectCipher {
            column: column.to_string(),
            header,
            aead: LessSafeKey::new(unbound),
            mac,
            ad,
            rng: SystemRandom::new(),
        })
    }

    /// The key this cipher uses.
    pub fn key(&self) -> SubjectKeyId {
        self.header.key
    }

    /// Encrypts a canonical plaintext into a stored value in `encoding`.
    pub fn encrypt(&self, plaintext: &[u8], encoding: Encoding) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(KeyError::ValueTooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let nonce = match &self.mac {
            None => {
                let mut n = [0u8; NONCE_LEN];
                fill_random(&self.rng, &mut n)?;
                n
            }
            Some(mac) => crate::cipher::synthetic_nonce(mac, plaintext)?,
        };
        let mut raw = Vec::with_capacity(SUBJECT_MIN_RAW_LEN + plaintext.len());
        raw.extend_from_slice(&self.header.bytes());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(plaintext);
        let body = raw
            .get_mut(SUBJECT_HEADER_LEN + NONCE_LEN..)
            .ok_or(KeyError::Internal {
                what: "subject envelope shorter than its header",
            })?;
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.ad[..]),
                body,
            )
            .map_err(|_| KeyError::Internal {
                what: "seal a subject value",
            })?;
        raw.extend_from_slice(tag.as_ref());
        Ok(match encoding {
            Encoding::Raw => raw,
            Encoding::Armored => crate::envelope::armor(&raw).into_bytes(),
        })
    }

    /// Decrypts a stored value (raw or armoured) of this column and subject key. Fails when it is
    /// not a subject envelope, names another subject, column key or version, or was altered.
    pub fn decrypt(&self, stored: &[u8]) -> Result<Vec<u8>> {
        let raw = raw_of(stored)?;
        let header = SubjectHeader::parse(&raw)?;
        if header != self.header {
            return Err(KeyError::DecryptFailed {
                column: self.column.clone(),
            });
        }
        let nonce = raw
            .get(SUBJECT_HEADER_LEN..)
            .and_then(<[u8]>::first_chunk::<NONCE_LEN>)
            .copied()
            .ok_or(KeyError::MalformedEnvelope {
                reason: "it is shorter than a subject envelope header, nonce and tag",
            })?;
        let mut body = raw
            .get(SUBJECT_HEADER_LEN + NONCE_LEN..)
            .unwrap_or_default()
            .to_vec();
        let len = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.ad[..]),
                &mut body,
            )
            .map(|p| p.len())
            .map_err(|_| KeyError::DecryptFailed {
                column: self.column.clone(),
            })?;
        body.truncate(len);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(seed: u8) -> MasterKey {
        MasterKey::from_bytes(&[seed; KEY_LEN]).unwrap()
    }

    fn subject_cipher(mode: Mode, subject: &[u8], version: u32) -> (SubjectCipher, SubjectDek) {
        let w = SubjectKeyWrapper::new(&master(1)).unwrap();
        let id = SubjectKeyId {
            subject: SubjectRefKey::new(&master(1)).reference(subject),
            key_id: 9,
            version,
        };
        let (dek, _) = w.generate(&id).unwrap();
        (
            SubjectCipher::new("public.customers.email", mode, id, &dek).unwrap(),
            dek,
        )
    }

    #[test]
    fn subject_values_round_trip_and_name_their_key() {
        for mode in [Mode::Randomized, Mode::Deterministic] {
            let (c, _) = subject_cipher(mode, b"42", 1);
            for enc in [Encoding::Raw, Encoding::Armored] {
                let stored = c.encrypt(b"ada@example.com", enc).unwrap();
                assert_eq!(c.decrypt(&stored).unwrap(), b"ada@example.com");
                let h = SubjectHeader::of_stored(&stored).expect("a subject envelope");
                assert_eq!(h.key, c.key());
                assert_eq!(h.mode, mode);
                if enc == Encoding::Armored {
                    assert!(
                        stored.starts_with(b"pgc1:wQoC"),
                        "{:?}",
                        String::from_utf8_lossy(&stored)
                    );
                }
                // Not a column-keyed envelope: the column path refuses it rather than guessing.
                assert!(crate::envelope::decode_any(&stored).is_err());
            }
            let a = c.encrypt(b"x", Encoding::Raw).unwrap();
            let b = c.encrypt(b"x", Encoding::Raw).unwrap();
            assert_eq!(a == b, mode == Mode::Deterministic);
            assert_eq!(
                c.encrypt(b"", Encoding::Raw).unwrap().len(),
                SUBJECT_MIN_RAW_LEN
            );
        }
    }

    #[test]
    fn subject_values_do_not_open_under_another_subject_version_column_or_when_altered() {
        let (c, dek) = subject_cipher(Mode::Deterministic, b"42", 1);
        let stored = c.encrypt(b"secret", Encoding::Raw).unwrap();
        // Deterministic within a subject, not across subjects.
        let (other, _) = subject_cipher(Mode::Deterministic, b"43", 1);
        assert_ne!(other.encrypt(b"secret", Encoding::Raw).unwrap(), stored);
        assert!(other.decrypt(&stored).is_err());
        let (v2, _) = subject_cipher(Mode::Deterministic, b"42", 2);
        assert!(v2.decrypt(&stored).is_err());
        let elsewhere =
            SubjectCipher::new("public.customers.phone", Mode::Deterministic, c.key(), &dek)
                .unwrap();
        assert!(elsewhere.decrypt(&stored).is_err(), "bound to its column");
        for i in [3, 13, SUBJECT_HEADER_LEN + 2, stored.len() - 1] {
            let mut t = stored.clone();
            t[i] ^= 1;
            assert!(c.decrypt(&t).is_err(), "byte {i} altered");
        }
        assert!(c.decrypt(&stored[..SUBJECT_MIN_RAW_LEN - 1]).is_err());
        assert!(c.decrypt(b"plain text").is_err());
        assert!(SubjectHeader::of_stored(b"plain text").is_none());
        assert!(format!("{c:?}").contains("redacted"));
    }

    #[test]
    fn column_keyed_envelopes_are_not_subject_envelopes() {
        let kr_cipher = crate::cipher::tests::test_cipher(Mode::Randomized, "public.t.c", 1);
        let stored = kr_cipher.encrypt_as(b"v", Encoding::Armored).unwrap();
        assert!(SubjectHeader::of_stored(&stored).is_none());
        let raw = kr_cipher.encrypt(b"v").unwrap();
        assert!(SubjectHeader::parse(&raw).is_err());
        // And a column cipher does not open a subject value.
        let (c, _) = subject_cipher(Mode::Randomized, b"42", 1);
        assert!(kr_cipher
            .decrypt(&c.encrypt(b"v", Encoding::Raw).unwrap())
            .is_err());
    }

    #[test]
    fn references_are_stable_keyed_and_hex_round_trips() {
        let k = SubjectRefKey::new(&master(1));
        let a = k.reference(b"42");
        assert_eq!(a, k.reference(b"42"));
        assert_ne!(a, k.reference(b"43"));
        assert_ne!(a, SubjectRefKey::new(&master(2)).reference(b"42"));
        let hex = a.to_string();
        assert_eq!(hex.len(), 32);
        assert_eq!(SubjectRef::from_hex(&hex), Some(a));
        assert_eq!(SubjectRef::from_hex(&hex.to_uppercase()), Some(a));
        assert_eq!(SubjectRef::from_hex(&hex[..31]), None);
        assert_eq!(SubjectRef::from_hex(&format!("{}g", &hex[..31])), None);
        assert!(format!("{k:?}").contains("redacted"));
    }

    #[test]
    fn wrapped_keys_unwrap_only_for_their_subject_column_version_and_master() {
        let w = SubjectKeyWrapper::new(&master(1)).unwrap();
        let r = SubjectRefKey::new(&master(1));
        let id = SubjectKeyId {
            subject: r.reference(b"7"),
            key_id: 3,
            version: 1,
        };
        let (dek, wrapped) = w.generate(&id).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert_eq!(w.unwrap(&id, &wrapped).unwrap().expose(), dek.expose());
        // Two keys of the same id differ (random), and so do their wrappings.
        let (dek2, wrapped2) = w.generate(&id).unwrap();
        assert_ne!(dek.expose(), dek2.expose());
        assert_ne!(wrapped, wrapped2);
        for other in [
            SubjectKeyId {
                subject: r.reference(b"8"),
                ..id
            },
            SubjectKeyId { key_id: 4, ..id },
            SubjectKeyId { version: 2, ..id },
        ] {
            let e = w.unwrap(&other, &wrapped).unwrap_err();
            assert!(e.to_string().contains("does not unwrap"), "{e}");
        }
        let other_master = SubjectKeyWrapper::new(&master(2)).unwrap();
        assert!(other_master.unwrap(&id, &wrapped).is_err());
        let mut tampered = wrapped.clone();
        tampered[20] ^= 1;
        assert!(w.unwrap(&id, &tampered).is_err());
        assert!(w.unwrap(&id, &wrapped[..WRAPPED_LEN - 1]).is_err());
        assert!(w.unwrap(&id, &[]).is_err());
        // Neither the key nor the wrapper prints its bytes.
        assert_eq!(format!("{dek:?}"), "SubjectDek([redacted])");
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_and_forgets_erased_subjects() {
        let mut c: KeyCache<u32, String> = KeyCache::new(3);
        for k in 1..=3 {
            c.insert(k, Arc::new(format!("v{k}")));
        }
        // 1 is used again, so 2 is the oldest.
        assert_eq!(c.get(&1).as_deref().map(String::as_str), Some("v1"));
        c.insert(4, Arc::new("v4".into()));
        assert_eq!(c.len(), 3);
        assert!(c.get(&2).is_none());
        assert!(c.get(&1).is_some() && c.get(&3).is_some() && c.get(&4).is_some());
        // Replacing keeps the size and refreshes the entry.
        c.insert(3, Arc::new("v3b".into()));
        assert_eq!(c.get(&3).as_deref().map(String::as_str), Some("v3b"));
        assert!(c.remove(&3));
        assert!(!c.remove(&3));
        assert_eq!(c.remove_where(|k| *k >= 4), 1);
        assert_eq!(c.len(), 1);
        // Freed slots are reused; the bound holds over many inserts.
        for k in 10..1000 {
            c.insert(k, Arc::new(k.to_string()));
            assert!(c.len() <= 3);
        }
        assert!(c.slots.len() <= 4, "slots grow only to the capacity");
        assert_eq!(c.get(&999).as_deref().map(String::as_str), Some("999"));
        assert!(c.get(&996).is_none());
    }

    #[test]
    fn an_evicted_key_lives_until_its_last_holder_drops_it() {
        let mut c: KeyCache<u8, SubjectDek> = KeyCache::new(1);
        let w = SubjectKeyWrapper::new(&master(1)).unwrap();
        let id = SubjectKeyId {
            subject: SubjectRef([0; SUBJECT_REF_LEN]),
            key_id: 1,
            version: 1,
        };
        let (dek, _) = w.generate(&id).unwrap();
        let held = Arc::new(dek);
        c.insert(1, held.clone());
        c.insert(2, Arc::new(w.generate(&id).unwrap().0));
        assert!(c.get(&1).is_none());
        assert_eq!(Arc::strong_count(&held), 1, "the cache let go of it");
        assert_eq!(held.expose().len(), KEY_LEN);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The cache agrees with a naive model (a list ordered by last use) on every operation.
        #[test]
        fn the_cache_behaves_like_a_naive_lru(ops in proptest::collection::vec((0u8..3, 0u8..12), 0..200), cap in 1usize..6) {
            let mut c: KeyCache<u8, u8> = KeyCache::new(cap);
            let mut model: Vec<(u8, u8)> = Vec::new(); // most recent first
            for (op, k) in ops {
                match op {
                    0 => {
                        let v = k.wrapping_mul(7);
                        c.insert(k, Arc::new(v));
                        model.retain(|(mk, _)| *mk != k);
                        model.insert(0, (k, v));
                        model.truncate(cap);
                    }
                    1 => {
                        let got = c.get(&k).map(|v| *v);
                        let want = model.iter().position(|(mk, _)| *mk == k).map(|i| {
                            let e = model.remove(i);
                            model.insert(0, e);
                            e.1
                        });
                        prop_assert_eq!(got, want);
                    }
                    _ => {
                        let had = c.remove(&k);
                        let before = model.len();
                        model.retain(|(mk, _)| *mk != k);
                        prop_assert_eq!(had, before != model.len());
                    }
                }
                prop_assert_eq!(c.len(), model.len());
            }
        }
    }
}
