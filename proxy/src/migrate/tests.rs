//! Tests of the pure parts of a run: storage classification, value transformation, SQL text.

use super::*;
use pgcloak_keymgr::{Keyring, KeyringDoc, MasterKey, Mode};

fn keyring(mode: Mode) -> Keyring {
    let master = MasterKey::generate().unwrap();
    let mut doc = KeyringDoc::new(&master).unwrap();
    doc.ensure_column("public.t.c", mode, "2024-01-01T00:00:00Z")
        .unwrap();
    doc.unlock().unwrap()
}

fn target(logical: LogicalType) -> Target {
    Target {
        name: "public.t.c".into(),
        schema: "public".into(),
        table: "t".into(),
        column: "c".into(),
        logical,
    }
}

#[test]
fn column_names_need_three_parts() {
    assert!(split_column_name("public.t.c").is_ok());
    for bad in ["t.c", "c", "a.b.c.d", "public..c", ".t.c", ""] {
        let e = split_column_name(bad).unwrap_err().to_string();
        assert!(e.contains("schema.table.column"), "{e}");
    }
}

#[test]
fn storage_types_and_fixes() {
    let t = target(LogicalType::Int4);
    assert_eq!(classify_storage(&t, "bytea", "bytea"), Ok(Storage::Bytea));
    assert_eq!(classify_storage(&t, "text", "text"), Ok(Storage::Text));
    assert_eq!(
        classify_storage(&t, "varchar", "character varying"),
        Ok(Storage::Text)
    );
    assert_eq!(
        classify_storage(&t, "varchar", "character varying(20)"),
        Err(StorageProblem::LengthLimit(
            "ALTER TABLE public.t ALTER COLUMN c TYPE text".into()
        ))
    );
    assert_eq!(
        classify_storage(&t, "int4", "integer"),
        Err(StorageProblem::WrongType(
            "ALTER TABLE public.t ALTER COLUMN c TYPE bytea USING convert_to(c::text, 'UTF8')"
                .into()
        ))
    );
    let mut odd = target(LogicalType::Bytea);
    odd.table = "Odd Name".into();
    match classify_storage(&odd, "oid", "oid") {
        Err(StorageProblem::WrongType(fix)) => {
            assert_eq!(
                fix,
                "ALTER TABLE public.\"Odd Name\" ALTER COLUMN c TYPE text USING c::text"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn quoting() {
    assert_eq!(ident("abc_1"), "abc_1");
    assert_eq!(ident("Abc"), "\"Abc\"");
    assert_eq!(quote("a\"b"), "\"a\"\"b\"");
}

#[test]
fn encrypt_text_and_bytea_storage_forms() {
    let k = keyring(Mode::Randomized);
    let c = k.cipher("public.t.c").unwrap();
    // text storage of an int4: the text form
    let Outcome::Write(v) =
        transform(Op::Encrypt, c, Storage::Text, LogicalType::Int4, b" 42").unwrap()
    else {
        panic!()
    };
    assert!(v.starts_with(b"pgc1:wQoB"));
    assert_eq!(c.decrypt(&v).unwrap(), 42i32.to_be_bytes());
    // bytea storage of an int4: UTF-8 bytes of the text form, raw envelope
    let Outcome::Write(v) =
        transform(Op::Encrypt, c, Storage::Bytea, LogicalType::Int4, b"-7").unwrap()
    else {
        panic!()
    };
    assert_eq!(&v[..3], &[0xC1, 0x0A, 0x01]);
    assert_eq!(c.decrypt(&v).unwrap(), (-7i32).to_be_bytes());
    // bytea storage of a bytea value: the bytes themselves
    let Outcome::Write(v) = transform(
        Op::Encrypt,
        c,
        Storage::Bytea,
        LogicalType::Bytea,
        &[0, 255, 1],
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(c.decrypt(&v).unwrap(), [0, 255, 1]);
    // already encrypted: skipped
    assert_eq!(
        transform(Op::Encrypt, c, Storage::Bytea, LogicalType::Int4, &v).unwrap(),
        Outcome::Skip
    );
}

#[test]
fn invalid_values_never_echo_the_value() {
    let k = keyring(Mode::Deterministic);
    let c = k.cipher("public.t.c").unwrap();
    match transform(
        Op::Encrypt,
        c,
        Storage::Text,
        LogicalType::Int4,
        b"secret-123",
    ) {
        Err(ValueProblem::Invalid { what, reason }) => {
            assert!(what.contains("int4"));
            assert!(!reason.contains("secret"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        transform(
            Op::Encrypt,
            c,
            Storage::Bytea,
            LogicalType::Text,
            &[0xff, 0xfe]
        ),
        Err(ValueProblem::Invalid { .. })
    ));
    // Another column's ciphertext is not "already encrypted".
    let other = keyring(Mode::Deterministic);
    let foreign = other
        .cipher("public.t.c")
        .unwrap()
        .encrypt_as(b"x", Encoding::Armored)
        .unwrap();
    assert!(matches!(
        transform(Op::Encrypt, c, Storage::Text, LogicalType::Text, &foreign),
        Err(ValueProblem::Cipher(_))
    ));
}

#[test]
fn reencrypt_outcomes() {
    let master = MasterKey::generate().unwrap();
    let mut doc = KeyringDoc::new(&master).unwrap();
    doc.ensure_column("public.t.c", Mode::Randomized, "2024-01-01T00:00:00Z")
        .unwrap();
    let v1 = doc.unlock().unwrap();
    let old = v1
        .cipher("public.t.c")
        .unwrap()
        .encrypt_as(b"v", Encoding::Armored)
        .unwrap();
    doc.rotate("public.t.c", "2024-02-01T00:00:00Z").unwrap();
    let v2 = doc.unlock().unwrap();
    let c = v2.cipher("public.t.c").unwrap();
    let Outcome::Write(new) =
        transform(Op::Reencrypt, c, Storage::Text, LogicalType::Text, &old).unwrap()
    else {
        panic!()
    };
    assert_eq!(c.decrypt(&new).unwrap(), b"v");
    assert_eq!(
        transform(Op::Reencrypt, c, Storage::Text, LogicalType::Text, &new).unwrap(),
        Outcome::Skip
    );
    assert_eq!(
        transform(Op::Reencrypt, c, Storage::Text, LogicalType::Text, b"plain").unwrap(),
        Outcome::Plaintext
    );
    // The armoured header prefix used by the final check matches real ciphertexts.
    let header = &c.encrypt(b"").unwrap()[..12];
    let prefix = pgcloak_keymgr::armor(header);
    assert_eq!(prefix.len(), 21);
    assert!(new.starts_with(prefix.as_bytes()));
    assert!(!old.starts_with(prefix.as_bytes()));
}

#[test]
fn positions_round_trip() {
    for p in [
        Position::Start,
        Position::After(vec!["1".into(), "a,\"b".into()]),
        Position::Page(42),
    ] {
        assert_eq!(Position::from_json(&p.to_json()), Some(p));
    }
    assert_eq!(Position::from_json("nonsense"), None);
}

#[test]
fn sql_for_composite_keys() {
    let table = TableInfo {
        sql: "\"s\".\"t\"".into(),
        display: "s.t".into(),
        storage: Storage::Text,
        walk: Walk::Key(vec![
            KeyCol {
                name: "a".into(),
                ty: "pg_catalog.int4".into(),
            },
            KeyCol {
                name: "b".into(),
                ty: "pg_catalog.text".into(),
            },
        ]),
        reltuples: 0.0,
        relpages: 0,
    };
    let s = build_sql(&table, "\"c\"");
    let next = s.next.unwrap();
    assert!(
        next.starts_with("SELECT t.\"a\"::text AS k0, t.\"b\"::text AS k1, t.\"c\"::text AS v"),
        "{next}"
    );
    assert!(next.contains(
        "WHERE (t.\"a\", t.\"b\") > ($1::text::pg_catalog.int4, $2::text::pg_catalog.text) ORDER BY t.\"a\", t.\"b\" LIMIT $3"
    ), "{next}");
    assert!(s
        .update
        .contains("unnest($1::text[], $2::text[], $3::text[], $4::text[])"));
    assert!(s
        .update
        .contains("t.\"c\"::text COLLATE \"C\" = v.old_value"));
    assert!(s.update.ends_with("RETURNING v.k0, v.k1"));
}

#[test]
fn summary_line_and_exit_codes() {
    let mut s = Summary {
        column: "public.t.c".into(),
        op: Op::Encrypt,
        database: "db".into(),
        walk: "primary key (id)".into(),
        resumed: false,
        scanned: 10,
        updated: 8,
        skipped: 2,
        not_encrypted: 0,
        conflicts: 1,
        unresolved: 0,
        remaining: Some(0),
        plaintext_left: Some(0),
        interrupted: false,
        duration: Duration::from_secs(2),
    };
    assert_eq!(s.exit_code(), 0);
    let line = s.to_string();
    assert!(line.contains("8 rows updated, 2 skipped"), "{line}");
    assert!(line.contains("1 conflicts retried"), "{line}");
    s.remaining = Some(3);
    assert_eq!(s.exit_code(), 1);
    assert!(s.to_string().contains("3 values still need it"));
    s.interrupted = true;
    assert_eq!(s.exit_code(), 130);
}
