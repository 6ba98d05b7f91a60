//! Property tests across modules: typed values through both modes, tampering, wrong column/version.

use std::sync::OnceLock;

use proptest::prelude::*;

use crate::envelope::{self, Encoding, Envelope, MIN_RAW_LEN};
use crate::typed::{self, tests::any_type, tests::canonical_value};
use crate::{KeyError, Keyring, KeyringDoc, LogicalType, MasterKey, Mode};

const DET: &str = "public.t.det";
const RND: &str = "public.t.rnd";
const DET2: &str = "public.t.det2";

/// One keyring for all cases: det (3 versions), rnd (2 versions), det2 (1 version).
fn keyring() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(|| {
        let m = MasterKey::generate().unwrap();
        let mut d = KeyringDoc::new(&m).unwrap();
        d.ensure_column(DET, Mode::Deterministic, "t").unwrap();
        d.ensure_column(RND, Mode::Randomized, "t").unwrap();
        d.ensure_column(DET2, Mode::Deterministic, "t").unwrap();
        d.rotate(DET, "t").unwrap();
        d.rotate(DET, "t").unwrap();
        d.rotate(RND, "t").unwrap();
        Keyring::unlock(&d.to_json_bytes().unwrap(), &m).unwrap()
    })
}

fn typed_value() -> impl Strategy<Value = (LogicalType, Vec<u8>)> {
    any_type().prop_flat_map(|t| (Just(t), canonical_value(t)))
}

fn column() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(DET), Just(RND)]
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Raw), Just(Encoding::Armored)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Text and binary wire values of every type encrypt to the same plaintext, decrypt back, and
    /// (deterministic) to the same ciphertext.
    #[test]
    fn decrypt_encrypt_is_identity((ty, c) in typed_value(), col in column(), enc in encoding()) {
        let kr = keyring();
        let cipher = kr.cipher(col).unwrap();
        let from_text = typed::canonical_from_text(ty, &typed::to_text(ty, &c).unwrap()).unwrap();
        let from_bin = typed::canonical_from_binary(ty, &typed::to_binary(ty, &c).unwrap()).unwrap();
        prop_assert_eq!(&from_text, &from_bin);
        let a = cipher.encrypt_as(&from_text, enc).unwrap();
        let b = cipher.encrypt_as(&from_bin, enc).unwrap();
        prop_assert!(envelope::looks_like_envelope(&a));
        if cipher.mode() == Mode::Deterministic {
            prop_assert_eq!(&a, &b);
        } else {
            prop_assert_ne!(&a, &b);
        }
        prop_assert_eq!(&cipher.decrypt(&a).unwrap(), &c);
        let (name, pt) = kr.decrypt_any(&b).unwrap();
        prop_assert_eq!(name, col);
        prop_assert_eq!(typed::to_text(ty, &pt).unwrap(), typed::to_text(ty, &c).unwrap());
    }

    /// Deterministic: equal plaintexts give equal envelopes, different ones different envelopes.
    #[test]
    fn deterministic_equality(a in proptest::collection::vec(any::<u8>(), 0..48), b in proptest::collection::vec(any::<u8>(), 0..48)) {
        let c = keyring().cipher(DET).unwrap();
        prop_assert_eq!(c.encrypt(&a).unwrap(), c.encrypt(&a).unwrap());
        prop_assert_eq!(a == b, c.encrypt(&a).unwrap() == c.encrypt(&b).unwrap());
        // Another deterministic column never produces the same envelope for the same value.
        prop_assert_ne!(c.encrypt(&a).unwrap(), keyring().cipher(DET2).unwrap().encrypt(&a).unwrap());
        // Every live version's variant decrypts, newest first.
        let v = c.equality_variants(&a, Encoding::Armored).unwrap();
        prop_assert_eq!(v.len(), 3);
        for (i, e) in v.iter().enumerate() {
            let raw = envelope::dearmor(e).unwrap();
            prop_assert_eq!(Envelope::parse(&raw).unwrap().version(), 3 - i as u32);
            prop_assert_eq!(&c.decrypt(e).unwrap(), &a);
        }
    }

    /// Randomized: the same plaintext never gives the same envelope twice.
    #[test]
    fn randomized_non_equality(a in proptest::collection::vec(any::<u8>(), 0..48)) {
        let c = keyring().cipher(RND).unwrap();
        let x = c.encrypt(&a).unwrap();
        let y = c.encrypt(&a).unwrap();
        prop_assert_ne!(&x, &y);
        prop_assert_ne!(Envelope::parse(&x).unwrap().nonce(), Envelope::parse(&y).unwrap().nonce());
    }

    /// Any single-bit flip anywhere in a raw or armoured envelope is rejected.
    #[test]
    fn any_bit_flip_is_rejected(pt in proptest::collection::vec(any::<u8>(), 0..40), col in column(), enc in encoding(), bit in any::<prop::sample::Index>()) {
        let kr = keyring();
        let c = kr.cipher(col).unwrap();
        let e = c.encrypt_as(&pt, enc).unwrap();
        let i = bit.index(e.len() * 8);
        let mut f = e.clone();
        f[i / 8] ^= 1 << (i % 8);
        prop_assert!(c.decrypt(&f).is_err());
        prop_assert!(kr.decrypt_any(&f).is_err());
    }

    /// Any truncation or extension of an envelope is rejected.
    #[test]
    fn truncation_is_rejected(pt in proptest::collection::vec(any::<u8>(), 0..40), col in column(), enc in encoding(), cut in any::<prop::sample::Index>(), extra in any::<u8>()) {
        let kr = keyring();
        let c = kr.cipher(col).unwrap();
        let e = c.encrypt_as(&pt, enc).unwrap();
        let n = cut.index(e.len());
        prop_assert!(c.decrypt(&e[..n]).is_err());
        prop_assert!(kr.decrypt_any(&e[..n]).is_err());
        let mut longer = e.clone();
        longer.push(if enc == Encoding::Armored { b'A' } else { extra });
        prop_assert!(c.decrypt(&longer).is_err());
    }

    /// A ciphertext of one column does not decrypt as another, nor relabelled with another version.
    #[test]
    fn wrong_column_or_version_is_rejected(pt in proptest::collection::vec(any::<u8>(), 0..40), v in 1u32..5) {
        let kr = keyring();
        let det = kr.cipher(DET).unwrap();
        let ct = det.encrypt(&pt).unwrap();
        let wrong_col = |r: Result<Vec<u8>, KeyError>| matches!(r, Err(KeyError::WrongColumnKey { .. }));
        prop_assert!(wrong_col(kr.cipher(DET2).unwrap().decrypt(&ct)));
        prop_assert!(wrong_col(kr.cipher(RND).unwrap().decrypt(&ct)));
        // Relabel the key id to another column: authentication (associated data) fails.
        let mut moved = ct.clone();
        moved[4..8].copy_from_slice(&kr.cipher(DET2).unwrap().key_id().to_be_bytes());
        prop_assert!(kr.decrypt_any(&moved).is_err());
        // Relabel the version.
        let mut relabeled = ct.clone();
        relabeled[8..12].copy_from_slice(&v.to_be_bytes());
        if v == det.active_version() {
            prop_assert_eq!(det.decrypt(&relabeled).unwrap(), pt);
        } else {
            prop_assert!(det.decrypt(&relabeled).is_err());
        }
    }

    /// Arbitrary bytes never panic the parsers or decryption.
    #[test]
    fn arbitrary_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..120), armor_it in any::<bool>(), keep_header in any::<bool>()) {
        let kr = keyring();
        if keep_header && b.len() >= MIN_RAW_LEN {
            b[..12].copy_from_slice(&crate::envelope::header(Mode::Deterministic, 1, 1));
        }
        let input = if armor_it { envelope::armor(&b).into_bytes() } else { b };
        let _ = envelope::looks_like_envelope(&input);
        let _ = envelope::decode_any(&input);
        prop_assert!(kr.decrypt_any(&input).is_err());
    }
}
