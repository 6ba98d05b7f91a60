//! Checkpoint signing and verification. The signing key comes from outside (the proxy derives it
//! from the master key through keymgr); this crate only sees the [`CheckpointSigner`] trait.

use base64::Engine;
use ring::signature::{self, KeyPair};

use crate::error::AuditError;

/// Signs checkpoint messages with an Ed25519 key.
pub trait CheckpointSigner: Send + Sync {
    /// The 64-byte Ed25519 signature of `msg`.
    fn sign(&self, msg: &[u8]) -> Vec<u8>;
    /// The 32-byte Ed25519 public key auditors verify with.
    fn public_key(&self) -> [u8; 32];
}

/// A [`CheckpointSigner`] over ring's Ed25519 key pair (used by tests and benches; the proxy can
/// use it too with a seed derived from its master key).
pub struct RingSigner {
    pair: signature::Ed25519KeyPair,
}

impl RingSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> RingSigner {
        // A 32-byte seed is always a valid Ed25519 private key.
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .expect("a 32-byte seed is a valid Ed25519 key");
        RingSigner { pair }
    }

    /// A signer with a fresh random key.
    pub fn generate() -> RingSigner {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .expect("the system random generator works");
        RingSigner::from_seed(&seed)
    }
}

impl std::fmt::Debug for RingSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingSigner")
            .field("public_key", &hex::encode(self.public_key()))
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl CheckpointSigner for RingSigner {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    fn public_key(&self) -> [u8; 32] {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        pk
    }
}

/// Parses an Ed25519 public key given as text: 64 hex digits, or base64 (standard or URL-safe,
/// padded or not) of the 32 raw bytes. Surrounding whitespace is ignored.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], AuditError> {
    let t = text.trim();
    let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).ok()
    } else {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(t).ok())
    };
    match bytes {
        Some(b) if b.len() == 32 => {
            let mut pk = [0u8; 32];
            pk.copy_from_slice(&b);
            Ok(pk)
        }
        _ => Err(AuditError::Config(format!(
            "the audit public key {t:?} is not 32 bytes in hex (64 digits) or base64; \
             print the right one with `pgcloak keys audit-key`"
        ))),
    }
}

/// Formats a public key the way `pgcloak keys audit-key` should print it (base64).
pub fn format_public_key(pk: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(pk)
}

/// Encodes a signature for a checkpoint line.
pub(crate) fn encode_signature(sig: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sig)
}

/// True if `signature_b64` is a valid Ed25519 signature of `msg` under `public_key`.
pub fn verify_signature(public_key: &[u8; 32], msg: &[u8], signature_b64: &str) -> bool {
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature_b64) else {
        return false;
    };
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(msg, &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let s = RingSigner::from_seed(&[7u8; 32]);
        let sig = encode_signature(&s.sign(b"hello"));
        assert!(verify_signature(&s.public_key(), b"hello", &sig));
        assert!(!verify_signature(&s.public_key(), b"hellO", &sig));
        let other = RingSigner::from_seed(&[8u8; 32]);
        assert!(!verify_signature(&other.public_key(), b"hello", &sig));
        assert!(!verify_signature(&s.public_key(), b"hello", "not base64!"));
        assert!(!format!("{s:?}").contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn public_key_accepts_hex_and_base64() {
        let pk = RingSigner::from_seed(&[1u8; 32]).public_key();
        assert_eq!(parse_public_key(&hex::encode(pk)).unwrap(), pk);
        assert_eq!(parse_public_key(&hex::encode_upper(pk)).unwrap(), pk);
        assert_eq!(
            parse_public_key(&format!(" {}\n", format_public_key(&pk))).unwrap(),
            pk
        );
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pk);
        assert_eq!(parse_public_key(&url).unwrap(), pk);
        let err = parse_public_key("abcd").unwrap_err().to_string();
        assert!(err.contains("keys audit-key"), "{err}");
    }
}
