//! Secret key types (master key, data keys, audit signing key) that zeroise on drop and print as `[redacted]`.

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hmac, signature};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{KeyError, Result};

/// Length of every symmetric key in the crate (AES-256, HMAC-SHA256 keys, master key).
pub const KEY_LEN: usize = 32;

/// HKDF salt shared by every derivation in the crate; the `info` labels separate the uses.
const HKDF_SALT: &[u8] = b"pgcloak-keymgr hkdf salt v1";

/// HKDF label: master key -> audit Ed25519 seed.
const INFO_AUDIT_SEED: &[u8] = b"pgcloak audit signing key v1";
/// HKDF label: master key -> HMAC key of the `hash` mask's pseudonyms.
const INFO_MASK_HASH: &[u8] = b"pgcloak mask hash key v1";
/// HKDF label: master key -> key that wraps DEKs in the keyring.
pub(crate) const INFO_WRAP: &[u8] = b"pgcloak keyring wrap key v1";
/// HKDF label: master key -> key of the keyring's master-key check value.
pub(crate) const INFO_CHECK: &[u8] = b"pgcloak keyring check key v1";
/// HKDF label: DEK -> AES-256-GCM key.
pub(crate) const INFO_DEK_ENC: &[u8] = b"pgcloak column enc key v1";
/// HKDF label: DEK -> HMAC-SHA256 key of the deterministic (synthetic) nonce.
pub(crate) const INFO_DEK_MAC: &[u8] = b"pgcloak column mac key v1";

/// HKDF-SHA256 (RFC 5869) with a 32-byte output: `PRK = HMAC(salt, ikm)`, `OKM = HMAC(PRK, info || 0x01)`.
///
/// Written out on top of `ring::hmac` (which cannot fail) rather than `ring::hkdf` so that deriving a
/// key has no error path.
pub(crate) fn hkdf32(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, HKDF_SALT), ikm);
    let prk_key = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
    let mut ctx = hmac::Context::with_key(&prk_key);
    ctx.update(info);
    ctx.update(&[1u8]);
    let okm = ctx.sign();
    #[allow(
        clippy::indexing_slicing,
        reason = "an HMAC-SHA256 tag is always 32 bytes (KEY_LEN), and deriving has no error path"
    )]
    let okm = &okm.as_ref()[..KEY_LEN];
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(okm);
    out
}

/// Fills `buf` from the OS random number generator.
pub(crate) fn fill_random(rng: &SystemRandom, buf: &mut [u8]) -> Result<()> {
    rng.fill(buf).map_err(|_| KeyError::Random)
}

/// The master key (KEK): 32 bytes that wrap every data key and seed the audit signing key.
///
/// Zeroised on drop; `Debug` prints `MasterKey([redacted])`. It has no `Display` and no `Serialize`.
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl MasterKey {
    /// A fresh random master key from the OS random number generator.
    pub fn generate() -> Result<MasterKey> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(&SystemRandom::new(), &mut bytes[..])?;
        Ok(MasterKey { bytes })
    }

    /// A master key from its raw 32 bytes (e.g. bytes a KMS returned).
    pub fn from_bytes(raw: &[u8]) -> Result<MasterKey> {
        if raw.len() != KEY_LEN {
            return Err(KeyError::InvalidMasterKey {
                reason: "it does not decode to 32 bytes",
            });
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(raw);
        Ok(MasterKey { bytes })
    }

    /// Parses the base64 text of a master key file, variable or command output.
    ///
    /// Surrounding whitespace (a trailing newline) is ignored. Standard and URL-safe alphabets, with
    /// or without padding, are accepted. The error never echoes the input.
    pub fn from_base64(text: &str) -> Result<MasterKey> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(KeyError::InvalidMasterKey {
                reason: "it is empty",
            });
        }
        let decoded = decode_base64_lenient(trimmed).ok_or(KeyError::InvalidMasterKey {
            reason: "it is not valid base64",
        })?;
        let decoded = Zeroizing::new(decoded);
        MasterKey::from_bytes(&decoded)
    }

    /// The key as standard padded base64 (44 characters, no newline), for `keys init` to write.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.bytes[..]))
    }

    /// The Ed25519 key that signs audit checkpoints, derived deterministically from this master key
    /// (HKDF-SHA256 with the label `pgcloak audit signing key v1` gives the 32-byte seed).
    pub fn audit_signing_key(&self) -> Result<AuditSigningKey> {
        let seed = hkdf32(&self.bytes[..], INFO_AUDIT_SEED);
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(&seed[..]).map_err(|_| {
            KeyError::Internal {
                what: "ed25519 key from seed",
            }
        })?;
        Ok(AuditSigningKey { pair })
    }

    /// The key of the `hash` mask (a keyed pseudonym `h:` + HMAC-SHA256 of the value): derived from
    /// this master key with the HKDF label `pgcloak mask hash key v1`, so every proxy instance sharing
    /// the master key gives the same pseudonym for the same value, and nobody without the master key
    /// can compute (or brute-force) pseudonyms. It never wraps or signs anything else.
    pub fn mask_hash_key(&self) -> Result<Zeroizing<[u8; KEY_LEN]>> {
        Ok(self.derive(INFO_MASK_HASH))
    }

    /// A key derived from the master key for one purpose (HKDF label).
    pub(crate) fn derive(&self, info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        hkdf32(&self.bytes[..], info)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

fn decode_base64_lenient(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(mut v) = engine.decode(text) {
            let out = v.clone();
            v.zeroize();
            return Some(out);
        }
    }
    None
}

/// A column data key (DEK): 32 random bytes, zeroised on drop, `Debug` prints `Dek([redacted])`.
pub(crate) struct Dek {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl Dek {
    pub(crate) fn generate(rng: &SystemRandom) -> Result<Dek> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(rng, &mut bytes[..])?;
        Ok(Dek { bytes })
    }

    #[cfg(test)]
    pub(crate) fn from_array(raw: [u8; KEY_LEN]) -> Dek {
        let bytes = Zeroizing::new(raw);
        Dek { bytes }
    }

    pub(crate) fn from_slice(raw: &[u8]) -> Option<Dek> {
        if raw.len() != KEY_LEN {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(raw);
        Some(Dek { bytes })
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.bytes[..]
    }
}

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dek([redacted])")
    }
}

/// The Ed25519 key pair that signs audit checkpoints.
///
/// `Debug` shows only the public key. The private half lives inside `ring`'s key pair, which does not
/// expose or zeroise it; the seed it was made from is zeroised right after use.
pub struct AuditSigningKey {
    pair: signature::Ed25519KeyPair,
}

impl AuditSigningKey {
    /// The 32-byte Ed25519 public key.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        use signature::KeyPair as _;
        let mut out = [0u8; 32];
        let pk = self.pair.public_key().as_ref();
        for (o, &b) in out.iter_mut().zip(pk) {
            *o = b;
        }
        out
    }

    /// The public key as standard padded base64 (what `pgcloak keys audit-key` prints).
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.public_key_bytes())
    }

    /// An Ed25519 signature (64 bytes) over `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

impl std::fmt::Debug for AuditSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigningKey")
            .field("public_key", &self.public_key_base64())
            .field("private_key", &"[redacted]")
            .finish()
    }
}

/// Checks an Ed25519 signature made by [`AuditSigningKey::sign`]; `false` for any malformed input.
pub fn verify_audit_signature(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(msg, sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn master_key_base64_round_trip_and_trim() {
        let k = MasterKey::from_base64(&format!("  {KEY_B64}\n")).unwrap();
        assert_eq!(k.to_base64().as_str(), KEY_B64);
        let k2 = MasterKey::generate().unwrap();
        let again = MasterKey::from_base64(&k2.to_base64()).unwrap();
        assert_eq!(k2.bytes[..], again.bytes[..]);
        assert_ne!(k.bytes[..], k2.bytes[..]);
    }

    #[test]
    fn master_key_errors_do_not_echo_input() {
        for bad in [
            "",
            "   \n",
            "not base64 at all!!",
            "c2VjcmV0LXNob3J0",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gIQ==",
        ] {
            let err = MasterKey::from_base64(bad).unwrap_err();
            assert!(matches!(err, KeyError::InvalidMasterKey { .. }), "{err:?}");
            let msg = err.to_string();
            if !bad.trim().is_empty() {
                assert!(!msg.contains(bad.trim()), "{msg}");
            }
            assert!(!msg.contains("secret"), "{msg}");
        }
    }

    #[test]
    fn debug_of_secrets_is_redacted() {
        let k = MasterKey::from_base64(KEY_B64).unwrap();
        let dbg = format!("{k:?} {:#?}", k);
        assert_eq!(format!("{k:?}"), "MasterKey([redacted])");
        assert!(!dbg.contains(KEY_B64));
        assert!(!dbg.contains("0, 1, 2"));
        let d = Dek::from_array([7u8; 32]);
        assert_eq!(format!("{d:?}"), "Dek([redacted])");
        let s = k.audit_signing_key().unwrap();
        let dbg = format!("{s:?}");
        assert!(dbg.contains("[redacted]"));
        let seed = hkdf32(&k.bytes[..], INFO_AUDIT_SEED);
        assert!(!dbg.contains(&hex::encode(&seed[..])));
        assert!(!dbg.contains(&base64::engine::general_purpose::STANDARD.encode(&seed[..])));
    }

    #[test]
    fn hkdf32_matches_rfc5869_via_ring() {
        // Cross-check the hand-written single-block HKDF against ring's implementation.
        struct L;
        impl ring::hkdf::KeyType for L {
            fn len(&self) -> usize {
                32
            }
        }
        let ikm = b"input keying material";
        let mut expect = [0u8; 32];
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, HKDF_SALT)
            .extract(ikm)
            .expand(&[b"label"], L)
            .unwrap()
            .fill(&mut expect)
            .unwrap();
        assert_eq!(&hkdf32(ikm, b"label")[..], &expect[..]);
    }

    #[test]
    fn mask_hash_key_is_deterministic_and_separate() {
        let k = MasterKey::from_base64(KEY_B64).unwrap();
        let a = k.mask_hash_key().unwrap();
        assert_eq!(a[..], k.mask_hash_key().unwrap()[..]);
        // Known answer computed independently (Python hmac/hashlib, HKDF-SHA256 single block with the
        // crate salt, info "pgcloak mask hash key v1", master = 00 01 .. 1f): pseudonyms stay stable
        // across releases.
        assert_eq!(
            hex::encode(&a[..]),
            "e10c4ed2306f23ee4288bea3e21006291431e967f132b055c5deb953425a41e1"
        );
        // Separated from every other use of the master key.
        for other in [INFO_WRAP, INFO_CHECK, INFO_AUDIT_SEED] {
            assert_ne!(a[..], k.derive(other)[..]);
        }
        let other = MasterKey::generate().unwrap();
        assert_ne!(a[..], other.mask_hash_key().unwrap()[..]);
    }

    #[test]
    fn audit_key_is_deterministic_and_verifies() {
        let k = MasterKey::from_base64(KEY_B64).unwrap();
        let a = k.audit_signing_key().unwrap();
        let b = k.audit_signing_key().unwrap();
        assert_eq!(a.public_key_bytes(), b.public_key_bytes());
        let sig = a.sign(b"checkpoint 42");
        assert_eq!(sig.len(), 64);
        assert!(verify_audit_signature(
            &a.public_key_bytes(),
            b"checkpoint 42",
            &sig
        ));
        assert!(!verify_audit_signature(
            &a.public_key_bytes(),
            b"checkpoint 43",
            &sig
        ));
        assert!(!verify_audit_signature(&[0u8; 5], b"checkpoint 42", &sig));
        assert!(!verify_audit_signature(
            &a.public_key_bytes(),
            b"checkpoint 42",
            &sig[..63]
        ));
        let other = MasterKey::generate().unwrap().audit_signing_key().unwrap();
        assert_ne!(other.public_key_bytes(), a.public_key_bytes());
        assert!(!verify_audit_signature(
            &other.public_key_bytes(),
            b"checkpoint 42",
            &sig
        ));
        assert_eq!(a.public_key_base64().len(), 44);
    }
}
