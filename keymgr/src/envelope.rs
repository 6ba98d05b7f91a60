//! The ciphertext envelope: byte layout, raw parsing, text armour and the cheap `looks_like_envelope` scan.
//!
//! See the crate docs for the byte diagram. This module only frames bytes; [`crate::cipher`] does
//! the cryptography.

use std::borrow::Cow;

use crate::error::{KeyError, Result};
use crate::Mode;

/// First two bytes of every raw envelope. `0xC1` never occurs in UTF-8, so a raw envelope is never
/// valid text and cannot be mistaken for a plaintext `text` value.
pub const MAGIC: [u8; 2] = [0xC1, 0x0A];
/// Envelope format version written by this crate.
pub const FORMAT_VERSION: u8 = 1;
/// Header length: magic (2) + format version (1) + mode (1) + key id (4) + key version (4).
pub const HEADER_LEN: usize = 12;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Shortest possible raw envelope (empty plaintext).
pub const MIN_RAW_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// Printable prefix of the armoured (text) encoding.
pub const ARMOR_PREFIX: &[u8] = b"pgc1:";
/// Every armoured envelope starts with this: the prefix plus the base64 of magic + format version
/// (`C1 0A 01` encodes to `wQoB`).
const ARMOR_LEAD: &[u8] = b"pgc1:wQoB";
/// Shortest possible armoured envelope.
pub const MIN_ARMORED_LEN: usize = armored_len(MIN_RAW_LEN);
/// Largest plaintext the crate encrypts (PostgreSQL's own limit for one field is 1 GiB).
pub const MAX_PLAINTEXT_LEN: usize = 1 << 30;

/// The two storage encodings of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// The raw envelope bytes, for `bytea` storage columns.
    Raw,
    /// `pgc1:` + unpadded URL-safe base64 of the raw envelope, for `text`/`varchar` storage columns.
    Armored,
}

/// Cheap check whether a stored value is a pgcloak envelope in either encoding: magic, format
/// version, mode byte and minimum length for raw; prefix, lead characters and minimum length for
/// armoured. It does not authenticate anything.
pub fn looks_like_envelope(bytes: &[u8]) -> bool {
    looks_like_raw(bytes) || looks_like_armored(bytes)
}

fn looks_like_raw(b: &[u8]) -> bool {
    b.len() >= MIN_RAW_LEN
        && matches!(b.first_chunk::<4>(), Some(&[m0, m1, format, mode])
            if [m0, m1] == MAGIC && format == FORMAT_VERSION && Mode::from_byte(mode).is_some())
}

fn looks_like_armored(b: &[u8]) -> bool {
    b.len() >= MIN_ARMORED_LEN && b.starts_with(ARMOR_LEAD)
}

/// Encodes a raw envelope as armoured text (`pgc1:` + base64url without padding).
pub fn armor(raw: &[u8]) -> String {
    let len = armored_len(raw.len());
    let mut out = Vec::with_capacity(len);
    out.resize(len - raw.len(), 0);
    out.extend_from_slice(raw);
    armor_in_place(&mut out);
    // The armour is ASCII by construction (prefix and digit table), so this never loses anything.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Length of the armour of a raw envelope of `raw_len` bytes.
pub const fn armored_len(raw_len: usize) -> usize {
    ARMOR_PREFIX.len() + (raw_len * 4).div_ceil(3)
}

/// The 64 base64url digits, in value order.
const BASE64URL_DIGITS: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Armours, in place, the raw envelope that fills the end of `buf`: `buf.len()` must be
/// [`armored_len`] of the raw length, with the raw bytes in its last `raw_len` bytes. Afterwards
/// `buf` is the armour. Each group of 3 raw bytes is read before its 4 digits are written; after `g`
/// groups the writer has reached `5 + 4g` and the next unread byte is at `5 + ceil(4n/3) - n + 3g`,
/// which is never behind it (`g < ceil(n/3)`), so no byte is overwritten before it is read.
///
/// A `buf` of any other length is not the room of an armour: debug builds assert, release builds
/// leave unspecified bytes in it (and never index out of bounds).
pub fn armor_in_place(buf: &mut [u8]) {
    let p = ARMOR_PREFIX.len();
    // Solve armored_len(n) = buf.len() for n: the digits are ceil(4n/3), so n = floor(3d/4).
    let digits = buf.len().saturating_sub(p);
    let n = digits * 3 / 4;
    debug_assert_eq!(armored_len(n), buf.len(), "not the room of an armour");
    let mut r = buf.len() - n;
    let mut w = p;
    #[allow(
        clippy::indexing_slicing,
        reason = "`v & 63` is below 64, the length of the digit table"
    )]
    let d = |v: u32| BASE64URL_DIGITS[(v & 63) as usize];
    while let Some(&[a, b, c]) = buf.get(r..r + 3) {
        let v = u32::from(a) << 16 | u32::from(b) << 8 | u32::from(c);
        put(buf, w, [d(v >> 18), d(v >> 12), d(v >> 6), d(v)]);
        r += 3;
        w += 4;
    }
    match buf.get(r..) {
        Some(&[a]) => {
            let v = u32::from(a) << 16;
            put(buf, w, [d(v >> 18), d(v >> 12)]);
        }
        Some(&[a, b]) => {
            let v = u32::from(a) << 16 | u32::from(b) << 8;
            put(buf, w, [d(v >> 18), d(v >> 12), d(v >> 6)]);
        }
        _ => {}
    }
    if let Some(prefix) = buf.get_mut(..p) {
        prefix.copy_from_slice(ARMOR_PREFIX);
    }
}

/// Writes `bytes` at `buf[at..]` if they fit, as they always do in the room of an armour (see
/// [`armor_in_place`]).
fn put<const N: usize>(buf: &mut [u8], at: usize, bytes: [u8; N]) {
    if let Some(dst) = buf.get_mut(at..).and_then(<[u8]>::first_chunk_mut::<N>) {
        *dst = bytes;
    }
}

/// Decodes an armoured envelope back to raw bytes (checking the raw framing too).
pub fn dearmor(text: &[u8]) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    dearmor_into(text, &mut raw)?;
    Ok(raw)
}

/// [`dearmor`], appending the raw envelope to `out` (a row being rewritten decodes each value onto
/// its own end and decrypts it there, with no buffer per value). On error `out` is as it was.
pub fn dearmor_into(text: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let body = text
        .strip_prefix(ARMOR_PREFIX)
        .ok_or(KeyError::NotAnEnvelope)?;
    let start = out.len();
    if !decode_base64url_into(body, out) {
        return Err(KeyError::MalformedEnvelope {
            reason: "the armoured text is not valid base64",
        });
    }
    // `out` only grew, so the slice is there; an empty one would not parse.
    let parsed = Envelope::parse(out.get(start..).unwrap_or_default()).map(|_| ());
    if parsed.is_err() {
        out.truncate(start);
    }
    parsed
}

/// Value of each base64url digit; 0xff (high bit set) for every other byte.
#[allow(
    clippy::indexing_slicing,
    reason = "evaluated at compile time, where an out-of-bounds index is a build error; \
              `i < 64` and every `u8` is below 256, the two tables' lengths"
)]
const BASE64URL_VALUE: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 64 {
        let c = BASE64URL_DIGITS[i];
        t[c as usize] = i as u8;
        i += 1;
    }
    t
};

/// [`BASE64URL_VALUE`] shifted into place for each position of a group of four digits, so that a
/// group's 24 bits are four lookups ORed together; a byte that is no digit sets bit 31.
#[allow(
    clippy::indexing_slicing,
    reason = "evaluated at compile time, where an out-of-bounds index is a build error; \
              `pos < 4` and `c < 256`, the tables' dimensions"
)]
const BASE64URL_SHIFTED: [[u32; 256]; 4] = {
    let mut t = [[0u32; 256]; 4];
    let mut pos = 0;
    while pos < 4 {
        let mut c = 0;
        while c < 256 {
            let v = BASE64URL_VALUE[c];
            t[pos][c] = if v == 0xff {
                1 << 31
            } else {
                (v as u32) << (18 - 6 * pos)
            };
            c += 1;
        }
        pos += 1;
    }
    t
};

/// Decodes unpadded base64url onto the end of `out`, accepting exactly what the base64 crate's `URL_SAFE_NO_PAD` engine accepts (no
/// padding, no whitespace, unused bits of the last digit zero). `false`, with `out` as it was, for
/// anything else.
///
/// Its own code rather than the base64 crate's decoder: that one is built for long inputs and spends
/// about 700 instructions on the ~60 characters of an armoured value, read for every protected value
/// of every row; this loop spends about a third of that.
pub(crate) fn decode_base64url_into(text: &[u8], out: &mut Vec<u8>) -> bool {
    let tail = text.len() % 4;
    if tail == 1 {
        return false;
    }
    let start = out.len();
    let (quads, last) = text.as_chunks::<4>();
    out.resize(start + quads.len() * 3 + tail.saturating_sub(1), 0);
    let Some(dst) = out.get_mut(start..) else {
        // Never: `out` was just grown past `start`.
        out.truncate(start);
        return false;
    };
    // Every `u8` indexes the 256-entry tables; the fallbacks are the tables' "not a digit".
    let v = |c: u8| BASE64URL_VALUE.get(usize::from(c)).copied().unwrap_or(0xff);
    let s = |t: &[u32; 256], c: u8| t.get(usize::from(c)).copied().unwrap_or(1 << 31);
    // OR of every group: bit 31 says a byte was not a digit.
    let mut groups = 0u32;
    let (triples, rest) = dst.as_chunks_mut::<3>();
    let [t0, t1, t2, t3] = &BASE64URL_SHIFTED;
    for (&[a, b, c, d], o) in quads.iter().zip(triples.iter_mut()) {
        let w = s(t0, a) | s(t1, b) | s(t2, c) | s(t3, d);
        groups |= w;
        *o = [(w >> 16) as u8, (w >> 8) as u8, w as u8];
    }
    let mut seen = u8::from(groups >> 31 != 0) << 7;
    // The last two or three digits hold one or two bytes; the bits they leave over must be zero.
    let mut ok = true;
    match (last, rest) {
        (&[a, b], [o]) => {
            let (a, b) = (v(a), v(b));
            seen |= a | b;
            ok = b & 0x0f == 0;
            *o = a << 2 | b >> 4;
        }
        (&[a, b, c], [o0, o1]) => {
            let (a, b, c) = (v(a), v(b), v(c));
            seen |= a | b | c;
            ok = c & 0x03 == 0;
            *o0 = a << 2 | b >> 4;
            *o1 = b << 4 | c >> 2;
        }
        _ => {}
    }
    if seen & 0x80 != 0 || !ok {
        out.truncate(start);
        return false;
    }
    true
}

/// Returns the raw envelope of a stored value in either encoding (borrowed when it already is raw).
pub fn decode_any(bytes: &[u8]) -> Result<Cow<'_, [u8]>> {
    if bytes.starts_with(ARMOR_PREFIX) {
        dearmor(bytes).map(Cow::Owned)
    } else {
        Envelope::parse(bytes)?;
        Ok(Cow::Borrowed(bytes))
    }
}

/// A parsed (not decrypted) raw envelope, borrowing the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    mode: Mode,
    key_id: u32,
    version: u32,
    /// At least [`MIN_RAW_LEN`] bytes ([`Envelope::parse`] is the only constructor).
    raw: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parses the header of a raw envelope. Fails on anything shorter than [`MIN_RAW_LEN`], a wrong
    /// magic, an unknown format version or mode.
    pub fn parse(raw: &'a [u8]) -> Result<Envelope<'a>> {
        if raw.first_chunk::<2>() != Some(&MAGIC) {
            return Err(KeyError::NotAnEnvelope);
        }
        let header = match raw.first_chunk::<HEADER_LEN>() {
            Some(header) if raw.len() >= MIN_RAW_LEN => header,
            _ => {
                return Err(KeyError::MalformedEnvelope {
                    reason: "it is shorter than an envelope header, nonce and tag",
                })
            }
        };
        let &[_, _, format, mode, k0, k1, k2, k3, v0, v1, v2, v3] = header;
        if format != FORMAT_VERSION {
            return Err(KeyError::MalformedEnvelope {
                reason: "unknown envelope format version",
            });
        }
        let mode = Mode::from_byte(mode).ok_or(KeyError::MalformedEnvelope {
            reason: "unknown encryption mode byte",
        })?;
        Ok(Envelope {
            mode,
            key_id: u32::from_be_bytes([k0, k1, k2, k3]),
            version: u32::from_be_bytes([v0, v1, v2, v3]),
            raw,
        })
    }

    /// Column key id (identifies the column's key in the keyring).
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Key version the value was encrypted with.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Encryption mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    // `raw` is at least MIN_RAW_LEN bytes long, so the fallbacks of the next three accessors are never
    // taken (and would fail authentication if they were).

    /// The header bytes (first [`HEADER_LEN`] bytes).
    pub fn header(&self) -> &'a [u8] {
        self.raw.get(..HEADER_LEN).unwrap_or_default()
    }

    /// The nonce.
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        self.raw
            .get(HEADER_LEN..)
            .and_then(<[u8]>::first_chunk::<NONCE_LEN>)
            .copied()
            .unwrap_or_default()
    }

    /// Ciphertext followed by the 16-byte tag.
    pub fn sealed(&self) -> &'a [u8] {
        self.raw.get(HEADER_LEN + NONCE_LEN..).unwrap_or_default()
    }

    /// Length of the plaintext inside.
    pub fn plaintext_len(&self) -> usize {
        self.raw.len() - MIN_RAW_LEN
    }

    /// The whole raw envelope.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
}

/// The header for a mode, key id and version.
pub(crate) fn header(mode: Mode, key_id: u32, version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&MAGIC);
    h[2] = FORMAT_VERSION;
    h[3] = mode.byte();
    h[4..8].copy_from_slice(&key_id.to_be_bytes());
    h[8..12].copy_from_slice(&version.to_be_bytes());
    h
}

/// Associated data: header || u32 BE length of the column name || column name (UTF-8).
///
/// The length prefix keeps `AD || plaintext` (the deterministic nonce's HMAC input) unambiguous.
pub(crate) fn associated_data(header: &[u8; HEADER_LEN], column: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(HEADER_LEN + 4 + column.len());
    ad.extend_from_slice(header);
    ad.extend_from_slice(&(column.len() as u32).to_be_bytes());
    ad.extend_from_slice(column.as_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// The reference base64url engine the hand-written coder is checked against.
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn sample(len: usize) -> Vec<u8> {
        let mut v = header(Mode::Deterministic, 7, 3).to_vec();
        v.resize(len, 0xAB);
        v
    }

    #[test]
    fn header_layout() {
        let h = header(Mode::Randomized, 0x01020304, 0x0A0B0C0D);
        assert_eq!(
            h,
            [0xC1, 0x0A, 0x01, 0x01, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D]
        );
        let ad = associated_data(&h, "s.t.c");
        assert_eq!(&ad[12..16], &[0, 0, 0, 5]);
        assert_eq!(&ad[16..], b"s.t.c");
    }

    #[test]
    fn parse_accessors() {
        let raw = sample(MIN_RAW_LEN + 5);
        let e = Envelope::parse(&raw).unwrap();
        assert_eq!(e.key_id(), 7);
        assert_eq!(e.version(), 3);
        assert_eq!(e.mode(), Mode::Deterministic);
        assert_eq!(e.plaintext_len(), 5);
        assert_eq!(e.sealed().len(), 5 + TAG_LEN);
        assert!(looks_like_envelope(&raw));
        let a = armor(&raw);
        assert!(a.starts_with("pgc1:wQoB"));
        assert!(looks_like_envelope(a.as_bytes()));
        assert_eq!(dearmor(a.as_bytes()).unwrap(), raw);
        assert_eq!(decode_any(a.as_bytes()).unwrap().as_ref(), &raw[..]);
        assert_eq!(decode_any(&raw).unwrap().as_ref(), &raw[..]);
    }

    #[test]
    fn dearmor_into_appends_and_leaves_the_buffer_as_it_was_on_error() {
        let raw = sample(MIN_RAW_LEN + 7);
        let a = armor(&raw);
        let mut buf = b"row so far".to_vec();
        dearmor_into(a.as_bytes(), &mut buf).unwrap();
        assert_eq!(&buf[..10], b"row so far");
        assert_eq!(&buf[10..], &raw[..]);
        let bad_base64 = format!("{}!", &a[..a.len() - 1]);
        let not_an_envelope = armor(b"just some text that is long enough to pass a length check");
        for bad in [&bad_base64[..], &not_an_envelope, "pgc1:", "plain"] {
            let mut buf = b"kept".to_vec();
            assert!(dearmor_into(bad.as_bytes(), &mut buf).is_err(), "{bad}");
            assert_eq!(buf, b"kept", "{bad}");
        }
    }

    #[test]
    fn base64url_decoder_edge_cases() {
        let cases: [(&[u8], Option<&[u8]>); 9] = [
            (b"", Some(b"")),
            (b"QQ", Some(b"A")),
            (b"QUI", Some(b"AB")),
            (b"QUJD", Some(b"ABC")),
            (b"_-8", Some(&[0xff, 0xef])),
            (b"QQ==", None),
            (b"QR", None),
            (b"QUJ", None),
            (b"QUJDR", None),
        ];
        for (text, want) in cases {
            let mut out = Vec::new();
            let ok = decode_base64url_into(text, &mut out);
            assert_eq!(ok.then_some(&out[..]), want, "{text:?}");
            assert_eq!(B64.decode(text).ok().as_deref(), want, "{text:?}");
        }
    }

    proptest::proptest! {
        /// The hand-written in-place encoder writes exactly the base64 crate's unpadded URL-safe
        /// text, for every length (each remainder of 3).
        #[test]
        fn armour_agrees_with_the_base64_crate(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            proptest::prop_assert_eq!(armor(&bytes), format!("pgc1:{}", B64.encode(&bytes)));
            proptest::prop_assert_eq!(armored_len(bytes.len()), armor(&bytes).len());
        }

        /// The hand-written decoder accepts and decodes exactly what the base64 crate's unpadded
        /// URL-safe engine does: valid text, bad digits, padding, stray bits, every length.
        #[test]
        fn base64url_decoder_agrees_with_the_base64_crate(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            damage in proptest::option::of((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>())),
            cut in 0usize..3,
        ) {
            let mut text = B64.encode(&bytes).into_bytes();
            if let Some((at, c)) = damage {
                if !text.is_empty() {
                    let at = at % text.len();
                    text[at] = c;
                }
            }
            text.truncate(text.len().saturating_sub(cut));
            let mut mine = b"before".to_vec();
            let ok = decode_base64url_into(&text, &mut mine);
            match B64.decode(&text) {
                Ok(theirs) => {
                    proptest::prop_assert!(ok);
                    proptest::prop_assert_eq!(&mine[..6], b"before");
                    proptest::prop_assert_eq!(&mine[6..], &theirs[..]);
                }
                Err(_) => {
                    proptest::prop_assert!(!ok);
                    proptest::prop_assert_eq!(&mine[..], b"before");
                }
            }
        }
    }

    #[test]
    fn min_lengths_are_exact() {
        let raw = sample(MIN_RAW_LEN);
        assert!(Envelope::parse(&raw).is_ok());
        assert!(Envelope::parse(&raw[..MIN_RAW_LEN - 1]).is_err());
        assert!(!looks_like_envelope(&raw[..MIN_RAW_LEN - 1]));
        let a = armor(&raw);
        assert_eq!(a.len(), MIN_ARMORED_LEN);
        assert!(looks_like_envelope(a.as_bytes()));
        assert!(!looks_like_envelope(&a.as_bytes()[..MIN_ARMORED_LEN - 1]));
    }

    #[test]
    fn rejects_non_envelopes() {
        for v in [&b""[..], b"hello world", b"pgc1:", b"\xC1", b"pgc1:!!!!"] {
            assert!(!looks_like_envelope(v));
            assert!(decode_any(v).is_err());
        }
        let mut raw = sample(MIN_RAW_LEN);
        raw[2] = 2;
        assert!(matches!(
            Envelope::parse(&raw),
            Err(KeyError::MalformedEnvelope { .. })
        ));
        raw[2] = 1;
        raw[3] = 9;
        assert!(!looks_like_envelope(&raw));
        assert!(Envelope::parse(&raw).is_err());
        // padded or non-canonical base64 is refused
        let a = armor(&sample(MIN_RAW_LEN + 1)) + "=";
        assert!(dearmor(a.as_bytes()).is_err());
    }
}
