//! Encrypting one value on its way in: from the client's text or binary format to the canonical
//! plaintext, to the envelope, to the form the storage type takes in a SQL literal or a Bind parameter.

use pgcloak_keymgr::{typed, ColumnCipher};

use super::error::{Result, RewriteError};
use super::{ColumnTarget, Format, Storage};

/// Encrypts a canonical plaintext (see `keymgr::typed`) under the column's active key version and
/// returns it as the storage holds it: the raw envelope for `bytea`, the armoured ASCII (`pgc1:...`)
/// for `text`.
pub fn encrypt_for_storage(
    cipher: &ColumnCipher,
    storage: Storage,
    canonical: &[u8],
) -> Result<Vec<u8>> {
    cipher
        .encrypt_as(canonical, storage.encoding())
        .map_err(|e| RewriteError::from_key(cipher.column(), e))
}

/// The storage type's text form of a stored value: `\x<hex>` for `bytea`, the armour itself for
/// `text` (what a text-format parameter or a COPY field carries, before any COPY escaping).
pub fn stored_text(storage: Storage, stored: &[u8]) -> Vec<u8> {
    match storage {
        Storage::Bytea => typed::bytea_text(stored),
        Storage::Text => stored.to_vec(),
    }
}

/// The stored value in a wire format: text → [`stored_text`]; binary → raw bytes for `bytea`, the
/// armour's bytes for `text` (text's binary form is its bytes).
pub fn stored_wire(storage: Storage, stored: &[u8], format: Format) -> Vec<u8> {
    match format {
        Format::Text => stored_text(storage, stored),
        Format::Binary => stored.to_vec(),
    }
}

/// A SQL literal of a stored value, to splice into a simple-protocol query: `E'\\x<hex>'` for `bytea`
/// (an `E''` string means the same whatever `standard_conforming_strings` is), `'pgc1:...'` for
/// `text`. Both are untyped literals, so PostgreSQL resolves them to the column's type in `col = ...`,
/// `VALUES (...)` and `SET col = ...`.
pub fn sql_literal(storage: Storage, stored: &[u8]) -> String {
    quote_sql(&String::from_utf8_lossy(&stored_text(storage, stored)))
}

/// A SQL string literal of `text`: `'...'` with `''`, or `E'...'` with `\\` when it holds a backslash.
pub fn quote_sql(text: &str) -> String {
    let backslash = text.contains('\\');
    let mut out = String::with_capacity(text.len() + 4);
    if backslash {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// For equality lookups on a deterministic column after a rotation: the SQL literal of the value under
/// every live key version, newest first (one element when the column has a single version or is
/// randomized — then it is the ordinary [`sql_literal`] of the active version).
///
/// How the session uses it (see [`super::literal_edit`], which does all of this, by the plan's site
/// role):
/// - `col = 'x'` (compared) → `col = ANY (ARRAY['c2', 'c1'])`;
/// - `col IN ('x', 'y')` (listed) → `'x'` is replaced with `'c2', 'c1'`;
/// - anywhere else (INSERT values, `SET col = 'x'`, `'x' = col`) only the first (active) one is used.
pub fn sql_literal_variants(target: &ColumnTarget<'_>, canonical: &[u8]) -> Result<Vec<String>> {
    Ok(target
        .encrypt_variants(canonical)?
        .iter()
        .map(|s| sql_literal(target.storage, s))
        .collect())
}

/// A Bind parameter value for an encrypted column: `value` as the client sent it (in `format`, of
/// the logical type) becomes the stored value in the same format — text: `\x<hex>` (bytea) or the
/// armour; binary: the raw envelope (bytea) or the armour's bytes (text). The Bind's format code for
/// the parameter therefore stays as it is.
pub fn param_value(target: &ColumnTarget<'_>, value: &[u8], format: Format) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    param_value_into(target, value, format, &mut out)?;
    Ok(out)
}

/// [`param_value`], appending the new value to `out` (the Bind being rewritten): the envelope is
/// sealed, armoured or hex-encoded in place there, with no buffer of its own. On error `out` is as it
/// was.
pub fn param_value_into(
    target: &ColumnTarget<'_>,
    value: &[u8],
    format: Format,
    out: &mut Vec<u8>,
) -> Result<()> {
    let canonical = target.canonical_from_wire(value, format)?;
    match target.subject {
        None => encrypt_wire_into(target.cipher, target.storage, &canonical, format, out)?,
        Some(_) => {
            let stored = target.seal(&canonical)?;
            out.extend_from_slice(&stored_wire(target.storage, &stored, format));
        }
    }
    target.count();
    Ok(())
}

/// Encrypts a canonical plaintext under the column's active key version and appends the stored
/// value in a wire format ([`stored_wire`]) to `out`, sealed and encoded in place there. On error
/// `out` is as it was.
pub fn encrypt_wire_into(
    cipher: &ColumnCipher,
    storage: Storage,
    canonical: &[u8],
    format: Format,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    cipher
        .encrypt_into(canonical, storage.encoding(), out)
        .map_err(|e| RewriteError::from_key(cipher.column(), e))?;
    if (storage, format) == (Storage::Bytea, Format::Text) {
        typed::bytea_text_in_place(out, start);
    }
    Ok(())
}

impl ColumnTarget<'_> {
    /// Canonical plaintext of a text-format value of the logical type.
    pub fn canonical_from_text(&self, text: &[u8]) -> Result<Vec<u8>> {
        typed::canonical_from_text(self.ty, text)
            .map_err(|e| RewriteError::from_key(self.column(), e))
    }

    /// Canonical plaintext of a binary-format value of the logical type.
    pub fn canonical_from_binary(&self, bin: &[u8]) -> Result<Vec<u8>> {
        typed::canonical_from_binary(self.ty, bin)
            .map_err(|e| RewriteError::from_key(self.column(), e))
    }

    /// Canonical plaintext of a value in either wire format.
    pub fn canonical_from_wire(&self, value: &[u8], format: Format) -> Result<Vec<u8>> {
        match format {
            Format::Text => self.canonical_from_text(value),
            Format::Binary => self.canonical_from_binary(value),
        }
    }

    /// Encrypts a canonical plaintext under the active version, in the storage's form
    /// ([`encrypt_for_storage`]).
    pub fn encrypt(&self, canonical: &[u8]) -> Result<Vec<u8>> {
        let stored = self.seal(canonical)?;
        self.count();
        Ok(stored)
    }

    /// The stored form of a canonical plaintext under the active version: the column's key, or
    /// the subject's for a subject-keyed column.
    fn seal(&self, canonical: &[u8]) -> Result<Vec<u8>> {
        match self.subject.and_then(|s| s.ciphers.first()) {
            Some(c) => c
                .encrypt(canonical, self.storage.encoding())
                .map_err(|e| RewriteError::from_key(self.column(), e)),
            None if self.subject.is_some() => Err(RewriteError::Internal {
                column: self.column().to_string(),
                detail: "no subject key was resolved for the value".into(),
            }),
            None => encrypt_for_storage(self.cipher, self.storage, canonical),
        }
    }

    /// Counts one value encrypted on its way in.
    #[inline]
    fn count(&self) {
        crate::metrics::with(|c| c.value(self.class, crate::metrics::ValueOutcome::Encrypted));
    }

    /// The stored forms an equality lookup must match, newest key version first: every live version
    /// for a deterministic column with several versions, else just the active one.
    pub fn encrypt_variants(&self, canonical: &[u8]) -> Result<Vec<Vec<u8>>> {
        if let (true, Some(s)) = (self.has_variants(), self.subject) {
            let variants = s
                .ciphers
                .iter()
                .map(|c| c.encrypt(canonical, self.storage.encoding()))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| RewriteError::from_key(self.column(), e))?;
            self.count();
            Ok(variants)
        } else if self.has_variants() {
            let variants = self
                .cipher
                .equality_variants(canonical, self.storage.encoding())
                .map_err(|e| RewriteError::from_key(self.column(), e))?;
            self.count();
            Ok(variants)
        } else {
            Ok(vec![self.encrypt(canonical)?])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::testkit::{self, Kit};
    use pgcloak_keymgr::{typed, LogicalType};

    #[test]
    fn quote_sql_escapes() {
        assert_eq!(quote_sql("abc"), "'abc'");
        assert_eq!(quote_sql("it's"), "'it''s'");
        assert_eq!(quote_sql("\\x00ff"), "E'\\\\x00ff'");
        assert_eq!(quote_sql("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn literal_and_param_forms_per_storage() {
        let kit = Kit::new();
        let kr = kit.keyring();
        for storage in [Storage::Bytea, Storage::Text] {
            let t = kit.target(&kr, "public.customers.salary", LogicalType::Int4, storage);
            let canonical = t.canonical_from_text(b"5000").unwrap();
            let stored = t.encrypt(&canonical).unwrap();
            let lit = sql_literal(storage, &stored);
            match storage {
                Storage::Bytea => {
                    assert!(lit.starts_with("E'\\\\x") && lit.ends_with('\''), "{lit}");
                    assert_eq!(lit.len(), 6 + stored.len() * 2);
                }
                Storage::Text => {
                    assert!(lit.starts_with("'pgc1:") && lit.ends_with('\''), "{lit}");
                }
            }
            // Text-format parameter: the storage type's text form, which decrypts to the value.
            let p = param_value(&t, b" 5000 ", Format::Text).unwrap();
            let raw = match storage {
                Storage::Bytea => {
                    assert!(p.starts_with(b"\\x"));
                    typed::canonical_from_text(LogicalType::Bytea, &p).unwrap()
                }
                Storage::Text => {
                    assert!(p.starts_with(b"pgc1:"));
                    p.clone()
                }
            };
            assert_eq!(t.cipher.decrypt(&raw).unwrap(), 5000i32.to_be_bytes());
            // Binary-format parameter of the logical type (int4 = 4 bytes BE).
            let p = param_value(&t, &5000i32.to_be_bytes(), Format::Binary).unwrap();
            match storage {
                Storage::Bytea => assert_eq!(&p[..2], &[0xC1, 0x0A]),
                Storage::Text => assert!(p.starts_with(b"pgc1:wQoB")),
            }
            assert_eq!(t.cipher.decrypt(&p).unwrap(), 5000i32.to_be_bytes());
            // Invalid values name the column and type, never the value.
            let e = param_value(&t, b"12x45", Format::Text).unwrap_err();
            let m = e.to_string();
            assert!(
                m.contains("public.customers.salary") && m.contains("int4"),
                "{m}"
            );
            assert!(!m.contains("12x45"));
            assert_eq!(e.sqlstate(), "22P02");
            assert!(param_value(&t, &[0, 1], Format::Binary).is_err());
        }
    }

    #[test]
    fn param_value_into_appends_what_the_allocating_forms_give() {
        let kit = Kit::new();
        let kr = kit.keyring();
        // A deterministic column gives the same ciphertext each time, so the in-place form can be
        // compared byte for byte with encrypt + stored_wire (text: `\x` hex or armour; binary: raw
        // envelope or armour).
        for storage in [Storage::Bytea, Storage::Text] {
            let t = kit.target(&kr, testkit::EMAIL, LogicalType::Text, storage);
            for value in [&b""[..], b"a", b"ab", b"abc", b"a@b.c", &[b'x'; 300]] {
                for format in [Format::Text, Format::Binary] {
                    let want = stored_wire(storage, &t.encrypt(value).unwrap(), format);
                    let mut buf = b"before".to_vec();
                    param_value_into(&t, value, format, &mut buf).unwrap();
                    assert_eq!(&buf[..6], b"before");
                    assert_eq!(
                        &buf[6..],
                        &want[..],
                        "{storage:?} {format:?} {}",
                        value.len()
                    );
                    if (storage, format) == (Storage::Bytea, Format::Text) {
                        // `\x` hex, read back the way PostgreSQL reads it.
                        let raw = typed::canonical_from_text(LogicalType::Bytea, &buf[6..]);
                        assert_eq!(raw.unwrap(), t.encrypt(value).unwrap());
                    }
                }
            }
        }
        // On error the buffer is as it was.
        let t = kit.target(&kr, testkit::SALARY, LogicalType::Int4, Storage::Bytea);
        let mut buf = b"before".to_vec();
        assert!(param_value_into(&t, b"12x45", Format::Text, &mut buf).is_err());
        assert_eq!(buf, b"before");
    }

    #[test]
    fn variants_only_for_rotated_deterministic_columns() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let t = kit.target(
            &kr,
            "public.customers.email",
            LogicalType::Text,
            Storage::Text,
        );
        assert!(!t.has_variants());
        assert_eq!(sql_literal_variants(&t, b"a@b").unwrap().len(), 1);
        let kr2 = kit.rotated_keyring("public.customers.email");
        let t2 = kit.target(
            &kr2,
            "public.customers.email",
            LogicalType::Text,
            Storage::Text,
        );
        assert!(t2.has_variants());
        let v = sql_literal_variants(&t2, b"a@b").unwrap();
        assert_eq!(v.len(), 2);
        // Newest first; the older one equals what the unrotated keyring wrote.
        assert_eq!(
            v[1],
            sql_literal(Storage::Text, &t.encrypt(b"a@b").unwrap())
        );
        assert_eq!(
            v[0],
            sql_literal(Storage::Text, &t2.encrypt(b"a@b").unwrap())
        );
        // Randomized columns never have variants, even when rotated.
        let kr3 = kit.rotated_keyring("public.customers.notes");
        let r = kit.target(
            &kr3,
            "public.customers.notes",
            LogicalType::Text,
            Storage::Bytea,
        );
        assert!(!r.has_variants());
        assert_eq!(sql_literal_variants(&r, b"x").unwrap().len(), 1);
    }

    #[test]
    fn every_type_encrypts_from_text_and_binary_alike() {
        let kit = Kit::new();
        let kr = kit.keyring();
        for (ty, text) in testkit::SAMPLES {
            // Deterministic column: the same value gives the same ciphertext whichever wire format it
            // came in, so `'42'` in one statement finds the row a binary 42 wrote in another.
            let t = kit.target(&kr, testkit::EMAIL, *ty, Storage::Bytea);
            let canonical = typed::canonical_from_text(*ty, text.as_bytes()).unwrap();
            let bin = typed::to_binary(*ty, &canonical).unwrap();
            let from_bin = param_value(&t, &bin, Format::Binary).unwrap();
            let from_text = param_value(&t, text.as_bytes(), Format::Text).unwrap();
            assert!(from_text.starts_with(b"\\x"), "{ty}");
            let from_text_raw = typed::canonical_from_text(LogicalType::Bytea, &from_text).unwrap();
            assert_eq!(from_text_raw, from_bin, "{ty} {text}");
            assert_eq!(t.cipher.decrypt(&from_bin).unwrap(), canonical);
        }
    }
}
