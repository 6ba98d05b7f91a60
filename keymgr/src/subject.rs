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

use crate::error::{KeyError, Result};
use crate::secret::{fill_random, MasterKey, KEY_LEN};

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
        let bytes = text.as_bytes();
        if bytes.len() != SUBJECT_REF_LEN * 2 {
            return None;
        }
        let mut out = [0u8; SUBJECT_REF_LEN];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let hi = hex_digit(*pair.first()?)?;
            let lo = hex_digit(*pair.get(1)?)?;
            *o = (hi << 4) | lo;
        }
        Some(SubjectRef(out))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl std::fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn master(seed: u8) -> MasterKey {
        MasterKey::from_bytes(&[seed; KEY_LEN]).unwrap()
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
