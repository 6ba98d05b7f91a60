//! Fuzz target: envelope scanning, parsing, dearmouring and decryption with a fixed master key.
//!
//! Any input must be rejected or decrypted without panicking; an input used as plaintext must round
//! trip through both modes and both encodings, and one flipped bit of its envelope must be refused.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgcloak_keymgr::{
    dearmor, decode_any, looks_like_envelope, Encoding, Envelope, Keyring, KeyringDoc, MasterKey,
    Mode,
};

fn keyring() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(|| {
        let master =
            MasterKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let mut doc = KeyringDoc::new(&master).unwrap();
        doc.ensure_column("public.t.rnd", Mode::Randomized, "fuzz")
            .unwrap();
        doc.ensure_column("public.t.det", Mode::Deterministic, "fuzz")
            .unwrap();
        doc.rotate("public.t.det", "fuzz").unwrap();
        Keyring::unlock(&doc.to_json_bytes().unwrap(), &master).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let kr = keyring();
    // 1. Untrusted stored value: every entry point must return, never panic, never authenticate.
    let _ = looks_like_envelope(data);
    let _ = dearmor(data);
    if let Ok(env) = Envelope::parse(data) {
        let _ = (
            env.key_id(),
            env.version(),
            env.mode(),
            env.nonce(),
            env.plaintext_len(),
        );
    }
    if let Ok(raw) = decode_any(data) {
        assert!(Envelope::parse(&raw).is_ok());
    }
    assert!(kr.decrypt_any(data).is_err(), "forged input decrypted");
    for c in kr.ciphers() {
        assert!(c.decrypt(data).is_err());
    }

    // 2. The input as plaintext: round trip, and a bit flip chosen by the input is refused.
    let flip = data.first().copied().unwrap_or(0) as usize;
    for c in kr.ciphers() {
        for enc in [Encoding::Raw, Encoding::Armored] {
            let ct = c.encrypt_as(data, enc).unwrap();
            assert!(looks_like_envelope(&ct));
            assert_eq!(kr.decrypt_any(&ct).unwrap().1, data);
            let mut bad = ct.clone();
            let bit = (flip * 131 + data.len()) % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(kr.decrypt_any(&bad).is_err(), "bit flip accepted");
            assert!(
                kr.decrypt_any(&ct[..ct.len() - 1]).is_err(),
                "truncation accepted"
            );
        }
    }
});
