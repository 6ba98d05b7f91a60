//! Test helpers: a keyring built with keymgr's public API, sample values, a small deterministic PRNG
//! for property-style loops (the proxy crate has no proptest dependency), and a RowCtx.

use pgcloak_keymgr::{Keyring, KeyringDoc, LogicalType, MasterKey, Mode};

use super::rows::RowCtx;
use super::{ColumnTarget, Storage};

pub(crate) const EMAIL: &str = "public.customers.email"; // deterministic
pub(crate) const PHONE: &str = "public.customers.phone"; // deterministic
pub(crate) const NOTES: &str = "public.customers.notes"; // randomized
pub(crate) const SALARY: &str = "public.customers.salary"; // randomized
pub(crate) const SECRET: &str = "public.other.secret"; // randomized, another table

/// Values in PostgreSQL's canonical text output (DateStyle ISO, TimeZone UTC), per logical type.
pub(crate) const SAMPLES: &[(LogicalType, &str)] = &[
    (LogicalType::Text, "héllo, wörld \"q\" \\ {x}"),
    (LogicalType::Text, ""),
    (LogicalType::Int4, "-2147483648"),
    (LogicalType::Int4, "42"),
    (LogicalType::Int8, "9223372036854775807"),
    (LogicalType::Numeric, "-123.4500"),
    (LogicalType::Numeric, "NaN"),
    (LogicalType::Date, "2024-02-29"),
    (LogicalType::Date, "infinity"),
    (LogicalType::Timestamptz, "2024-01-02 03:04:05.123456+00"),
    (LogicalType::Bool, "t"),
    (LogicalType::Bool, "f"),
    (LogicalType::Jsonb, "{\"a\": [1, 2], \"b\": null}"),
    (LogicalType::Bytea, "\\x00ff10"),
    (LogicalType::Bytea, "\\x"),
];

pub(crate) struct Kit {
    master: MasterKey,
    doc: Vec<u8>,
}

impl Kit {
    pub(crate) fn new() -> Kit {
        let master = MasterKey::generate().unwrap();
        let mut doc = KeyringDoc::new(&master).unwrap();
        let now = "2024-01-02T03:04:05Z";
        doc.ensure_column(EMAIL, Mode::Deterministic, now).unwrap();
        doc.ensure_column(PHONE, Mode::Deterministic, now).unwrap();
        doc.ensure_column(NOTES, Mode::Randomized, now).unwrap();
        doc.ensure_column(SALARY, Mode::Randomized, now).unwrap();
        doc.ensure_column(SECRET, Mode::Randomized, now).unwrap();
        let doc = doc.to_json_bytes().unwrap();
        Kit { master, doc }
    }

    pub(crate) fn keyring(&self) -> Keyring {
        Keyring::unlock(&self.doc, &self.master).unwrap()
    }

    /// The same keyring with `column` rotated to version 2 (version 1 still decrypts).
    pub(crate) fn rotated_keyring(&self, column: &str) -> Keyring {
        let mut doc = KeyringDoc::open(&self.doc, &self.master).unwrap();
        doc.rotate(column, "2024-02-01T00:00:00Z").unwrap();
        doc.unlock().unwrap()
    }

    pub(crate) fn target<'k>(
        &self,
        keyring: &'k Keyring,
        column: &str,
        ty: LogicalType,
        storage: Storage,
    ) -> ColumnTarget<'k> {
        ColumnTarget::new(
            keyring,
            column,
            ty,
            storage,
            pgcloak_policy::Class::Confidential,
        )
        .unwrap()
    }
}

pub(crate) const HASH_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A RowCtx whose role may read `readable` in plaintext.
pub(crate) fn ctx<'a>(
    keyring: &'a Keyring,
    readable: &'a (dyn Fn(&str) -> bool + Sync),
) -> RowCtx<'a> {
    RowCtx {
        keyring,
        may_read_plaintext: readable,
        mask_hash_key: HASH_KEY,
        subjects: &super::NoSubjects,
    }
}

pub(crate) use pgcloak_testkit::Rng;
