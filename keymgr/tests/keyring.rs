//! Keyring: JSON round trips, master-key check, corruption, rotation and concurrent compare-and-swap updates.

use std::sync::{Arc, Mutex};

use pgcloak_keymgr::{
    update_with_retry, Encoding, KeyError, Keyring, KeyringDoc, KeyringStore, MasterKey, Mode,
    StoreError,
};
use serde_json::Value;

const T0: &str = "2024-01-02T03:04:05Z";
const PHONE: &str = "public.customers.phone";
const NOTES: &str = "public.customers.notes";

/// In-memory store with a real compare-and-swap on the stored generation.
#[derive(Default)]
struct MemStore {
    doc: Mutex<Option<Vec<u8>>>,
    writes: Mutex<u32>,
    conflicts: Mutex<u32>,
}

impl KeyringStore for MemStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let d = self.doc.lock().unwrap().clone();
        // Widen the window between load and store so concurrent writers really interleave.
        std::thread::yield_now();
        Ok(d)
    }

    fn store(&self, expected: Option<u64>, doc: &[u8]) -> Result<(), StoreError> {
        let mut cur = self.doc.lock().unwrap();
        let current = cur
            .as_ref()
            .map(|b| KeyringDoc::peek_generation(b).unwrap());
        if current != expected {
            *self.conflicts.lock().unwrap() += 1;
            return Err(StoreError::Conflict);
        }
        assert!(
            KeyringDoc::peek_generation(doc).unwrap() > expected.unwrap_or(0) || expected.is_none()
        );
        *cur = Some(doc.to_vec());
        *self.writes.lock().unwrap() += 1;
        Ok(())
    }
}

fn master() -> MasterKey {
    MasterKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
}

fn sample_doc(m: &MasterKey) -> Vec<u8> {
    let mut doc = KeyringDoc::new(m).unwrap();
    assert!(doc.ensure_column(PHONE, Mode::Deterministic, T0).unwrap());
    assert!(doc.ensure_column(NOTES, Mode::Randomized, T0).unwrap());
    doc.to_json_bytes().unwrap()
}

#[test]
fn json_round_trip_and_unlock() {
    let m = master();
    let bytes = sample_doc(&m);
    let doc = KeyringDoc::open(&bytes, &m).unwrap();
    assert_eq!(doc.generation(), 2);
    assert!(!doc.is_modified());
    assert_eq!(doc.to_json_bytes().unwrap(), bytes);
    let kr = Keyring::unlock(&bytes, &m).unwrap();
    let phone = kr.cipher(PHONE).unwrap();
    assert_eq!(phone.key_id(), 1);
    assert_eq!(phone.mode(), Mode::Deterministic);
    assert_eq!(kr.column_for_key_id(2), Some(NOTES));
    assert_eq!(kr.column_for_key_id(3), None);
    assert!(kr.cipher("public.customers.nope").is_none());
    // The same keys come back on every unlock: deterministic ciphertexts are stable across restarts.
    let again = Keyring::unlock(&bytes, &m).unwrap();
    assert_eq!(
        phone.encrypt(b"555").unwrap(),
        again.cipher(PHONE).unwrap().encrypt(b"555").unwrap()
    );
    let ct = kr.cipher(NOTES).unwrap().encrypt_armored(b"hello").unwrap();
    let (col, pt) = again.decrypt_any(ct.as_bytes()).unwrap();
    assert_eq!((col, pt.as_slice()), (NOTES, &b"hello"[..]));
}

#[test]
fn document_holds_no_key_material_and_lists_contract_json() {
    let m = master();
    let bytes = sample_doc(&m);
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.contains("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"));
    let doc = KeyringDoc::open(&bytes, &m).unwrap();
    let list = serde_json::to_value(doc.list()).unwrap();
    assert_eq!(list[0]["column"], PHONE);
    assert_eq!(list[0]["active_version"], 1);
    assert_eq!(list[0]["versions"][0]["version"], 1);
    assert_eq!(list[0]["versions"][0]["created"], T0);
    assert!(list[0]["versions"][0].get("wrapped_key").is_none());
    let dbg = format!("{doc:?} {:?}", Keyring::unlock(&bytes, &m).unwrap());
    assert!(dbg.contains("[redacted]"));
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let wrapped = v["columns"][0]["versions"][0]["wrapped_key"]
        .as_str()
        .unwrap();
    assert!(!dbg.contains(wrapped));
}

#[test]
fn wrong_master_key_is_one_clear_error() {
    let bytes = sample_doc(&master());
    let other = MasterKey::generate().unwrap();
    let err = Keyring::unlock(&bytes, &other).unwrap_err();
    assert_eq!(err, KeyError::WrongMasterKey);
    assert!(err
        .to_string()
        .contains("use the master key the keyring was created with"));
    assert!(matches!(
        KeyringDoc::open(&bytes, &other),
        Err(KeyError::WrongMasterKey)
    ));
}

fn corrupt_with(f: impl FnOnce(&mut Value)) -> KeyError {
    let m = master();
    let mut v: Value = serde_json::from_slice(&sample_doc(&m)).unwrap();
    f(&mut v);
    let bytes = serde_json::to_vec(&v).unwrap();
    Keyring::unlock(&bytes, &m).unwrap_err()
}

fn is_corrupt(e: &KeyError) -> bool {
    matches!(e, KeyError::CorruptKeyring { .. })
}

#[test]
fn corrupt_keyrings_are_reported_not_garbage() {
    let m = master();
    let bytes = sample_doc(&m);
    // Truncated JSON at every length (the last byte is the trailing newline).
    assert_eq!(bytes.last(), Some(&b'\n'));
    for n in 0..bytes.len() - 1 {
        let e = Keyring::unlock(&bytes[..n], &m).unwrap_err();
        assert!(is_corrupt(&e), "len {n}: {e:?}");
    }
    // Missing fields.
    for field in [
        "format",
        "generation",
        "master_check",
        "next_key_id",
        "columns",
    ] {
        let e = corrupt_with(|v| {
            v.as_object_mut().unwrap().remove(field);
        });
        assert!(is_corrupt(&e), "{field}: {e:?}");
        assert!(e.to_string().contains(field), "{e}");
    }
    let e = corrupt_with(|v| {
        v["columns"][0]["versions"][0]
            .as_object_mut()
            .unwrap()
            .remove("wrapped_key");
    });
    assert!(is_corrupt(&e));
    // Unknown field, wrong format, newer version.
    assert!(is_corrupt(
        &corrupt_with(|v| v["extra"] = Value::Bool(true))
    ));
    assert!(is_corrupt(&corrupt_with(|v| v["format"] = "x".into())));
    assert!(matches!(
        corrupt_with(|v| v["format_version"] = 2.into()),
        KeyError::UnsupportedKeyringVersion {
            found: 2,
            supported: 1
        }
    ));
    // Broken invariants.
    assert!(is_corrupt(&corrupt_with(
        |v| v["columns"][1]["key_id"] = 1.into()
    )));
    assert!(is_corrupt(&corrupt_with(
        |v| v["columns"][1]["column"] = PHONE.into()
    )));
    assert!(is_corrupt(&corrupt_with(|v| v["columns"][0]
        ["active_version"] =
        2.into())));
    assert!(is_corrupt(&corrupt_with(|v| v["next_key_id"] = 2.into())));
    assert!(is_corrupt(&corrupt_with(
        |v| v["columns"][0]["versions"] = Value::Array(vec![])
    )));
    assert!(is_corrupt(&corrupt_with(
        |v| v["columns"][0]["column"] = "nodots".into()
    )));
    assert!(is_corrupt(&corrupt_with(
        |v| v["master_check"] = "zz".into()
    )));
    // Edited metadata that the wrapped key's associated data binds.
    assert!(is_corrupt(&corrupt_with(
        |v| v["columns"][0]["mode"] = "randomized".into()
    )));
    assert!(is_corrupt(&corrupt_with(
        |v| v["columns"][0]["column"] = "public.other.col".into()
    )));
    assert!(is_corrupt(&corrupt_with(
        |v| v["columns"][0]["versions"][0]["version"] = 5.into()
    )));
    assert!(is_corrupt(&corrupt_with(|v| {
        let w = v["columns"][1]["versions"][0]["wrapped_key"].clone();
        v["columns"][0]["versions"][0]["wrapped_key"] = w;
    })));
}

#[test]
fn every_bit_flip_in_a_wrapped_key_is_detected() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let m = master();
    let v: Value = serde_json::from_slice(&sample_doc(&m)).unwrap();
    let wrapped = b64
        .decode(
            v["columns"][0]["versions"][0]["wrapped_key"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    for bit in 0..wrapped.len() * 8 {
        let mut w = wrapped.clone();
        w[bit / 8] ^= 1 << (bit % 8);
        let mut v2 = v.clone();
        v2["columns"][0]["versions"][0]["wrapped_key"] = b64.encode(&w).into();
        let e = Keyring::unlock(&serde_json::to_vec(&v2).unwrap(), &m).unwrap_err();
        assert!(is_corrupt(&e), "bit {bit}: {e:?}");
    }
    // Flipping raw bytes of the document never panics and never unlocks to something else.
    let bytes = sample_doc(&m);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        match Keyring::unlock(&b, &m) {
            Ok(kr) => {
                // Only whitespace-insensitive or `created` text changes may still parse.
                assert_eq!(kr.list().len(), 2);
            }
            Err(e) => assert!(
                is_corrupt(&e)
                    || e == KeyError::WrongMasterKey
                    || matches!(e, KeyError::UnsupportedKeyringVersion { .. }),
                "{e:?}"
            ),
        }
    }
}

#[test]
fn ensure_column_is_idempotent_and_checks_mode() {
    let m = master();
    let mut doc = KeyringDoc::open(&sample_doc(&m), &m).unwrap();
    let before = doc.to_json_bytes().unwrap();
    assert!(!doc
        .ensure_column(PHONE, Mode::Deterministic, "later")
        .unwrap());
    assert!(!doc.is_modified());
    assert_eq!(doc.to_json_bytes().unwrap(), before);
    assert!(matches!(
        doc.ensure_column(PHONE, Mode::Randomized, T0),
        Err(KeyError::ModeMismatch { .. })
    ));
    assert!(matches!(
        doc.ensure_column("customers.phone", Mode::Randomized, T0),
        Err(KeyError::InvalidColumnName { .. })
    ));
    assert!(matches!(
        doc.rotate("public.x.y", T0),
        Err(KeyError::UnknownColumn { .. })
    ));
}

#[test]
fn rotation_keeps_old_versions_decrypting() {
    let m = master();
    let mut doc = KeyringDoc::open(&sample_doc(&m), &m).unwrap();
    let kr1 = doc.unlock().unwrap();
    let old_det = kr1.cipher(PHONE).unwrap().encrypt(b"555-0100").unwrap();
    let old_rnd = kr1.cipher(NOTES).unwrap().encrypt_armored(b"note").unwrap();
    assert_eq!(doc.rotate(PHONE, "2024-02-01T00:00:00Z").unwrap(), 2);
    assert_eq!(doc.rotate(PHONE, "2024-03-01T00:00:00Z").unwrap(), 3);
    assert_eq!(doc.rotate(NOTES, "2024-03-01T00:00:00Z").unwrap(), 2);
    assert_eq!(doc.generation(), 5);
    let bytes = doc.to_json_bytes().unwrap();
    let kr = Keyring::unlock(&bytes, &m).unwrap();
    let phone = kr.cipher(PHONE).unwrap();
    assert_eq!(phone.active_version(), 3);
    assert_eq!(phone.versions(), vec![1, 2, 3]);
    assert_eq!(phone.decrypt(&old_det).unwrap(), b"555-0100");
    assert_eq!(
        kr.cipher(NOTES)
            .unwrap()
            .decrypt(old_rnd.as_bytes())
            .unwrap(),
        b"note"
    );
    let new = phone.encrypt(b"555-0100").unwrap();
    assert_ne!(new, old_det);
    assert_eq!(pgcloak_keymgr::Envelope::parse(&new).unwrap().version(), 3);
    let variants = phone.equality_variants(b"555-0100", Encoding::Raw).unwrap();
    assert_eq!(variants.len(), 3);
    assert_eq!(variants[0], new);
    assert_eq!(variants[2], old_det);
    let info = &kr.list()[0];
    assert_eq!(info.active_version, 3);
    assert_eq!(info.versions[1].created, "2024-02-01T00:00:00Z");
}

#[test]
fn update_with_retry_creates_then_updates() {
    let store = MemStore::default();
    let m = master();
    let (created, doc) = update_with_retry(&store, &m, |d| {
        Ok((
            d.ensure_column(PHONE, Mode::Deterministic, T0)?,
            d.ensure_column(NOTES, Mode::Randomized, T0)?,
        ))
    })
    .unwrap();
    assert_eq!(created, (true, true));
    assert_eq!(doc.generation(), 2);
    assert!(!doc.is_modified());
    // Idempotent init: no write.
    let (created, _) = update_with_retry(&store, &m, |d| {
        d.ensure_column(PHONE, Mode::Deterministic, T0)
    })
    .unwrap();
    assert!(!created);
    assert_eq!(*store.writes.lock().unwrap(), 1);
    // An empty init still records the master check.
    let empty = MemStore::default();
    update_with_retry(&empty, &m, |_| Ok(())).unwrap();
    assert!(empty.doc.lock().unwrap().is_some());
    // Wrong master key through the helper.
    assert_eq!(
        update_with_retry(&store, &MasterKey::generate().unwrap(), |d| d
            .rotate(PHONE, T0))
        .unwrap_err(),
        KeyError::WrongMasterKey
    );
}

/// A store whose first write always loses a race against an injected concurrent rotation.
struct RacyStore {
    inner: MemStore,
    injected: Mutex<bool>,
    master: MasterKey,
}

impl KeyringStore for RacyStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.load()
    }
    fn store(&self, expected: Option<u64>, doc: &[u8]) -> Result<(), StoreError> {
        let mut injected = self.injected.lock().unwrap();
        if !*injected {
            *injected = true;
            let cur = self.inner.load()?.unwrap();
            let mut other = KeyringDoc::open(&cur, &self.master).unwrap();
            other.rotate(PHONE, "racer").unwrap();
            self.inner
                .store(other.base_generation(), &other.to_json_bytes().unwrap())
                .unwrap();
        }
        self.inner.store(expected, doc)
    }
}

#[test]
fn a_lost_race_is_retried_not_lost() {
    let m = master();
    let store = RacyStore {
        inner: MemStore::default(),
        injected: Mutex::new(true),
        master: master(),
    };
    update_with_retry(&store, &m, |d| d.ensure_column(PHONE, Mode::Randomized, T0)).unwrap();
    *store.injected.lock().unwrap() = false;
    let mut calls = 0;
    let (v, doc) = update_with_retry(&store, &m, |d| {
        calls += 1;
        d.rotate(PHONE, "mine")
    })
    .unwrap();
    assert_eq!(calls, 2);
    assert_eq!(v, 3);
    let info = &doc.list()[0];
    assert_eq!(info.versions.len(), 3);
    assert_eq!(info.versions[1].created, "racer");
    assert_eq!(info.versions[2].created, "mine");
    assert_eq!(*store.inner.conflicts.lock().unwrap(), 1);
}

#[test]
fn concurrent_rotations_never_lose_a_version() {
    const THREADS: usize = 6;
    const ROTATIONS: usize = 15;
    let store = Arc::new(MemStore::default());
    let m = Arc::new(master());
    update_with_retry(&*store, &m, |d| {
        d.ensure_column(PHONE, Mode::Deterministic, T0)
    })
    .unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for r in 0..ROTATIONS {
                    let (v, _) = update_with_retry(&*store, &m, |d| {
                        d.rotate(PHONE, &format!("thread {t} rotation {r}"))
                    })
                    .unwrap();
                    got.push(v);
                }
                got
            })
        })
        .collect();
    let mut all: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    let expect: Vec<u32> = (2..=(1 + THREADS * ROTATIONS) as u32).collect();
    assert_eq!(all, expect, "each rotation got a distinct version");
    let bytes = store.doc.lock().unwrap().clone().unwrap();
    let kr = Keyring::unlock(&bytes, &m).unwrap();
    let info = &kr.list()[0];
    assert_eq!(info.versions.len(), 1 + THREADS * ROTATIONS);
    assert_eq!(info.active_version, (1 + THREADS * ROTATIONS) as u32);
    for t in 0..THREADS {
        for r in 0..ROTATIONS {
            let label = format!("thread {t} rotation {r}");
            assert!(
                info.versions.iter().any(|v| v.created == label),
                "{label} lost"
            );
        }
    }
    println!("conflicts retried: {}", store.conflicts.lock().unwrap());
}
