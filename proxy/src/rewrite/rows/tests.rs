use super::*;
use crate::rewrite::testkit::{self, ctx, Kit, Rng, EMAIL, NOTES, PHONE, SALARY, SECRET};
use crate::rewrite::values::param_value;
use pgcloak_policy::Source;

/// [`rewrite_data_row`] with a fresh buffer each time: the new frame, or `None` when unchanged.
/// (A used buffer is passed too, to show leftovers never leak into the next row.)
fn rewrite_row(body: &[u8], shape: &RowShape, ctx: &RowCtx<'_>) -> Result<Option<Bytes>> {
    let mut out = b"leftover from an earlier row".to_vec();
    Ok(rewrite_data_row(body, shape, ctx, &mut out)?.then(|| Bytes::from(out)))
}

fn field(name: &str, oid: u32, format: i16) -> Field {
    Field {
        name: name.as_bytes().to_vec(),
        table_oid: 16384,
        attnum: 3,
        type_oid: oid,
        typlen: if oid == 17 || oid == 25 { -1 } else { 4 },
        typmod: if oid == 1043 { 24 } else { -1 },
        format,
    }
}

fn rd_body(fields: &[Field]) -> Vec<u8> {
    RowDescription {
        fields: fields.to_vec(),
    }
    .to_frame()
    .unwrap()[5..]
        .to_vec()
}

fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    b
}

fn values_of(frame: &[u8]) -> Vec<Option<Vec<u8>>> {
    assert_eq!(frame[0], b'D');
    assert_eq!(
        i32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize,
        frame.len() - 1
    );
    let mut c = Reader::server(&frame[5..], "t");
    let n = c.i16().unwrap();
    let v = (0..n)
        .map(|_| {
            let l = c.i32().unwrap();
            (l >= 0).then(|| c.bytes(l as usize).unwrap().to_vec())
        })
        .collect();
    c.done().unwrap();
    v
}

fn decrypt(column: &str, ty: LogicalType) -> ColumnAction {
    ColumnAction::Decrypt {
        class: pgcloak_policy::Class::Confidential,
        column: column.to_string(),
        ty,
    }
}

#[test]
fn row_description_round_trip_and_rewrite() {
    let fields = vec![
        field("id", 23, 0),
        field("salary", 17, 1),
        field("phone", 1043, 0),
        field("email", 25, 0),
        field("ssn", 25, 1),
    ];
    let body = rd_body(&fields);
    let rd = RowDescription::parse(&body).unwrap();
    assert_eq!(rd.fields, fields);
    assert_eq!(&rd.to_frame().unwrap()[5..], &body[..]);
    let actions = vec![
        ColumnAction::PassThrough,
        decrypt(SALARY, LogicalType::Int8),
        ColumnAction::Mask {
            class: pgcloak_policy::Class::Confidential,
            column: PHONE.into(),
            ty: LogicalType::Text,
            mask: Mask::Last4,
            encrypted: true,
        },
        ColumnAction::Null {
            class: pgcloak_policy::Class::Confidential,
        },
    ];
    let (frame, shape) = rewrite_row_description(&body, &actions).unwrap();
    assert_eq!(frame[0], b'T');
    let out = RowDescription::parse(&frame[5..]).unwrap();
    assert_eq!(out.fields[0], fields[0]);
    let s = &out.fields[1];
    assert_eq!((s.type_oid, s.typlen, s.typmod, s.format), (20, 8, -1, 1));
    assert_eq!(
        (s.table_oid, s.attnum, s.name.as_slice()),
        (16384, 3, &b"salary"[..])
    );
    for f in &out.fields[2..4] {
        assert_eq!((f.type_oid, f.typlen, f.typmod), (25, -1, -1));
    }
    assert_eq!(out.fields[4], fields[4], "no action: unchanged");
    assert_eq!(shape.len(), 5);
    assert_eq!(shape.cols[1].storage, Some(Storage::Bytea));
    assert_eq!(shape.cols[2].storage, Some(Storage::Text));
    assert_eq!(shape.cols[1].format, Format::Binary);
    // More actions than fields: the plan and the server disagree.
    assert!(rewrite_row_description(&rd_body(&fields[..1]), &actions).is_err());
    for bad in [
        &body[..body.len() - 1],
        &[0xff, 0xff][..],
        &[0, 1, b'a'][..],
    ] {
        assert!(RowDescription::parse(bad).is_err());
    }
    let mut extra = body.clone();
    extra.push(0);
    assert!(RowDescription::parse(&extra).is_err());
    let mut bad_fmt = fields.clone();
    bad_fmt[0].format = 2;
    assert!(rewrite_row_description(&rd_body(&bad_fmt), &[]).is_err());
}

#[test]
fn actions_from_plan_outputs() {
    let out = |index, action| Output {
        index,
        name: "c".into(),
        source: Source::None,
        action,
    };
    let outputs = vec![
        out(0, OutputAction::PassThrough),
        out(
            2,
            OutputAction::Decrypt {
                class: pgcloak_policy::Class::Confidential,
                column: EMAIL.into(),
                logical_type: pgcloak_policy::LogicalType::Text,
            },
        ),
        out(9, OutputAction::PassThrough),
    ];
    let a = actions_for(&outputs, 3).unwrap();
    assert_eq!(a[0], ColumnAction::PassThrough);
    assert_eq!(a[2], decrypt(EMAIL, LogicalType::Text));
    assert!(actions_for(&outputs, 2).is_err());
    assert_eq!(actions_for(&[], 2).unwrap().len(), 2);
}

/// Encrypt through a Bind parameter (text and binary), decrypt through a DataRow in text and
/// binary result format: the client gets PostgreSQL's canonical text/binary form back.
#[test]
fn round_trip_every_type_storage_and_format() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let all = |_: &str| false;
    let cx = ctx(&kr, &all);
    for (ty, text) in testkit::SAMPLES {
        let canonical = typed::canonical_from_text(*ty, text.as_bytes()).unwrap();
        let binary = typed::to_binary(*ty, &canonical).unwrap();
        for storage in [Storage::Bytea, Storage::Text] {
            for column in [EMAIL, NOTES] {
                let t = kit.target(&kr, column, *ty, storage);
                for in_format in [Format::Text, Format::Binary] {
                    let input: &[u8] = match in_format {
                        Format::Text => text.as_bytes(),
                        Format::Binary => &binary,
                    };
                    // What the server stores and sends back, in its own text/binary format.
                    let sent = param_value(&t, input, in_format).unwrap();
                    let stored = match (in_format, storage) {
                        (Format::Text, Storage::Bytea) => {
                            typed::canonical_from_text(LogicalType::Bytea, &sent).unwrap()
                        }
                        _ => sent,
                    };
                    for out_format in [Format::Text, Format::Binary] {
                        let server_value = match (out_format, storage) {
                            (Format::Text, Storage::Bytea) => {
                                typed::to_text(LogicalType::Bytea, &stored).unwrap()
                            }
                            _ => stored.clone(),
                        };
                        let fields = [field("v", storage.oid(), out_format.code())];
                        let (_, shape) =
                            rewrite_row_description(&rd_body(&fields), &[decrypt(column, *ty)])
                                .unwrap();
                        let row = data_row(&[Some(&server_value)]);
                        let out = rewrite_row(&row, &shape, &cx).unwrap().unwrap();
                        let got = values_of(&out).remove(0).unwrap();
                        let want = match out_format {
                            Format::Text => text.as_bytes().to_vec(),
                            Format::Binary => binary.clone(),
                        };
                        assert_eq!(got, want, "{ty} {storage:?} {in_format:?}→{out_format:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn data_row_nulls_mixed_actions_and_backstop() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let enc = |column: &str, ty, storage, v: &[u8]| {
        let t = kit.target(&kr, column, ty, storage);
        t.encrypt(&typed::canonical_from_text(ty, v).unwrap())
            .unwrap()
    };
    let salary = enc(SALARY, LogicalType::Int4, Storage::Bytea, b"5000");
    let email = enc(
        EMAIL,
        LogicalType::Text,
        Storage::Text,
        b"alice@example.com",
    );
    let phone = enc(PHONE, LogicalType::Text, Storage::Text, b"555-123-4567");
    let foreign = enc(SECRET, LogicalType::Text, Storage::Text, b"top secret");
    let readable_foreign = enc(NOTES, LogicalType::Text, Storage::Text, b"note");
    let fields = vec![
        field("id", 23, 0),
        field("salary", 17, 0),
        field("email", 25, 0),
        field("phone", 25, 0),
        field("ssn", 25, 0),
        field("x", 25, 0),
        field("y", 25, 0),
        field("nul", 17, 0),
    ];
    let actions = vec![
        ColumnAction::PassThrough,
        decrypt(SALARY, LogicalType::Int4),
        decrypt(EMAIL, LogicalType::Text),
        ColumnAction::Mask {
            class: pgcloak_policy::Class::Confidential,
            column: PHONE.into(),
            ty: LogicalType::Text,
            mask: Mask::Last4,
            encrypted: true,
        },
        ColumnAction::Null {
            class: pgcloak_policy::Class::Confidential,
        },
        // A value encrypted for SECRET where EMAIL is expected: NULL, never decrypted.
        decrypt(EMAIL, LogicalType::Text),
        // NOTES' value where EMAIL is expected, but the role may read NOTES: decrypted.
        decrypt(EMAIL, LogicalType::Text),
        decrypt(SALARY, LogicalType::Int4),
    ];
    let (_, shape) = rewrite_row_description(&rd_body(&fields), &actions).unwrap();
    let salary_text = typed::to_text(LogicalType::Bytea, &salary).unwrap();
    let row = data_row(&[
        Some(b"7"),
        Some(&salary_text),
        Some(&email),
        Some(&phone),
        Some(b"123-45-6789"),
        Some(&foreign),
        Some(&readable_foreign),
        None,
    ]);
    let readable = |c: &str| c == NOTES;
    let cx = ctx(&kr, &readable);
    let out = rewrite_row(&row, &shape, &cx).unwrap().unwrap();
    let v = values_of(&out);
    assert_eq!(v[0].as_deref(), Some(&b"7"[..]));
    assert_eq!(v[1].as_deref(), Some(&b"5000"[..]));
    assert_eq!(v[2].as_deref(), Some(&b"alice@example.com"[..]));
    assert_eq!(v[3].as_deref(), Some(&b"****4567"[..]));
    assert_eq!(v[4], None);
    assert_eq!(v[5], None, "another column's ciphertext is not decrypted");
    assert_eq!(v[6].as_deref(), Some(&b"note"[..]));
    assert_eq!(v[7], None);
    // Without the backstop permission the readable one is NULL too.
    let none = |_: &str| false;
    let out = rewrite_row(&row, &shape, &ctx(&kr, &none))
        .unwrap()
        .unwrap();
    assert_eq!(values_of(&out)[6], None);
    // Only NULLs in protected columns: nothing changes.
    let row = data_row(&[Some(b"7"), None, None, None, None, None, None, None]);
    let mut only_decrypt = actions.clone();
    only_decrypt[4] = ColumnAction::PassThrough;
    let (_, shape2) = rewrite_row_description(&rd_body(&fields), &only_decrypt).unwrap();
    assert_eq!(rewrite_row(&row, &shape2, &cx).unwrap(), None);
    // All pass through: never parsed.
    let (_, pass) = rewrite_row_description(&rd_body(&fields), &[]).unwrap();
    assert!(pass.is_passthrough());
    assert_eq!(rewrite_row(b"garbage", &pass, &cx).unwrap(), None);
}

#[test]
fn legacy_plaintext_and_damaged_values() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let none = |_: &str| false;
    let cx = ctx(&kr, &none);
    let shape_for = |oid, format, ty| {
        rewrite_row_description(&rd_body(&[field("v", oid, format)]), &[decrypt(SALARY, ty)])
            .unwrap()
            .1
    };
    let one = |shape: &RowShape, v: &[u8]| {
        rewrite_row(&data_row(&[Some(v)]), shape, &cx).map(|o| o.map(|f| values_of(&f).remove(0)))
    };
    // Text storage, plaintext not yet encrypted: shown when it is a value of the type.
    let s = shape_for(25, 0, LogicalType::Int4);
    assert_eq!(
        one(&s, b" 42").unwrap().unwrap().as_deref(),
        Some(&b"42"[..])
    );
    assert_eq!(one(&s, b"forty-two").unwrap().unwrap(), None);
    let s = shape_for(1043, 1, LogicalType::Int4);
    assert_eq!(
        one(&s, b"42").unwrap().unwrap().as_deref(),
        Some(&42i32.to_be_bytes()[..])
    );
    // Bytea storage: a non-envelope is NULL.
    let s = shape_for(17, 0, LogicalType::Int4);
    assert_eq!(one(&s, b"\\x0000002a").unwrap().unwrap(), None);
    assert_eq!(one(&s, b"\\xzz").unwrap().unwrap(), None);
    let s = shape_for(17, 1, LogicalType::Int4);
    assert_eq!(one(&s, &[0, 0, 0, 42]).unwrap().unwrap(), None);
    // Unknown storage (e.g. a view's column typed otherwise): NULL.
    let s = shape_for(23, 0, LogicalType::Int4);
    assert_eq!(one(&s, b"42").unwrap().unwrap(), None);
    // Damaged ciphertexts are errors naming the column, not silent NULLs.
    let t = kit.target(&kr, SALARY, LogicalType::Int4, Storage::Bytea);
    let mut ct = t.encrypt(&42i32.to_be_bytes()).unwrap();
    let last = ct.len() - 1;
    ct[last] ^= 1;
    let s = shape_for(17, 1, LogicalType::Int4);
    let e = one(&s, &ct).unwrap_err();
    assert_eq!(
        e,
        RewriteError::DecryptFailed {
            column: SALARY.into()
        }
    );
    assert_eq!(e.sqlstate(), "XX001");
    let s = shape_for(25, 0, LogicalType::Int4);
    let armored = pgcloak_keymgr::armor(&ct);
    assert!(one(&s, armored.as_bytes()).is_err());
    let mut bad_b64 = armored.clone().into_bytes();
    bad_b64[20] = b'!';
    assert!(one(&s, &bad_b64).is_err());
    // A key version this keyring does not have: a stale keyring, said so.
    let rotated = kit.rotated_keyring(SALARY);
    let newer = kit
        .target(&rotated, SALARY, LogicalType::Int4, Storage::Bytea)
        .encrypt(&42i32.to_be_bytes())
        .unwrap();
    let s = shape_for(17, 1, LogicalType::Int4);
    assert!(matches!(
        one(&s, &newer).unwrap_err(),
        RewriteError::StaleKeyring { version: 2, .. }
    ));
    // An envelope whose key id is in no keyring: NULL.
    let mut unknown = t.encrypt(&42i32.to_be_bytes()).unwrap();
    unknown[4..8].copy_from_slice(&999u32.to_be_bytes());
    assert_eq!(one(&s, &unknown).unwrap().unwrap(), None);
}

#[test]
fn masks_per_type_and_format() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let none = |_: &str| false;
    let cx = ctx(&kr, &none);
    let cases: &[(LogicalType, &str, Mask, &str)] = &[
        (LogicalType::Text, "555-123-4567", Mask::Last4, "****4567"),
        (
            LogicalType::Text,
            "alice@example.com",
            Mask::Email,
            "a***@example.com",
        ),
        (LogicalType::Int4, "123456789", Mask::Last4, "****6789"),
        (
            LogicalType::Int8,
            "-9000",
            Mask::Partial { front: 1, back: 1 },
            "-****0",
        ),
        (
            LogicalType::Date,
            "2024-02-29",
            Mask::Partial { front: 4, back: 0 },
            "2024****",
        ),
        (LogicalType::Bool, "t", Mask::Redact, "****"),
        (LogicalType::Numeric, "1234.50", Mask::Last4, "****4.50"),
        (LogicalType::Bytea, "\\x00ff10", Mask::Last4, "****ff10"),
        (
            LogicalType::Timestamptz,
            "2024-01-02 03:04:05+00",
            Mask::Partial { front: 10, back: 0 },
            "2024-01-02****",
        ),
        (LogicalType::Jsonb, "{\"a\": 1}", Mask::Redact, "****"),
    ];
    for (ty, text, mask, want) in cases {
        let canonical = typed::canonical_from_text(*ty, text.as_bytes()).unwrap();
        for storage in [Storage::Bytea, Storage::Text] {
            let stored = kit
                .target(&kr, NOTES, *ty, storage)
                .encrypt(&canonical)
                .unwrap();
            for format in [Format::Text, Format::Binary] {
                let server_value = match (format, storage) {
                    (Format::Text, Storage::Bytea) => {
                        typed::to_text(LogicalType::Bytea, &stored).unwrap()
                    }
                    _ => stored.clone(),
                };
                let action = ColumnAction::Mask {
                    class: pgcloak_policy::Class::Confidential,
                    column: NOTES.into(),
                    ty: *ty,
                    mask: *mask,
                    encrypted: true,
                };
                let (rd, shape) = rewrite_row_description(
                    &rd_body(&[field("v", storage.oid(), format.code())]),
                    &[action],
                )
                .unwrap();
                assert_eq!(
                    RowDescription::parse(&rd[5..]).unwrap().fields[0].type_oid,
                    25
                );
                let out = rewrite_row(&data_row(&[Some(&server_value)]), &shape, &cx)
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    values_of(&out)[0].as_deref(),
                    Some(want.as_bytes()),
                    "{ty} {mask} {storage:?} {format:?}"
                );
            }
        }
        // An unencrypted masked column, binary format of its own type.
        let bin = typed::to_binary(*ty, &canonical).unwrap();
        let action = ColumnAction::Mask {
            class: pgcloak_policy::Class::Confidential,
            column: "public.customers.plain".into(),
            ty: *ty,
            mask: *mask,
            encrypted: false,
        };
        let (_, shape) =
            rewrite_row_description(&rd_body(&[field("v", ty.oid(), 1)]), &[action]).unwrap();
        let out = rewrite_row(&data_row(&[Some(&bin)]), &shape, &cx)
            .unwrap()
            .unwrap();
        assert_eq!(
            values_of(&out)[0].as_deref(),
            Some(want.as_bytes()),
            "plain {ty}"
        );
    }
    // The hash mask is keyed: same value, same pseudonym; no plaintext in it.
    let action = ColumnAction::Mask {
        class: pgcloak_policy::Class::Confidential,
        column: EMAIL.into(),
        ty: LogicalType::Text,
        mask: Mask::Hash,
        encrypted: true,
    };
    let (_, shape) = rewrite_row_description(&rd_body(&[field("v", 25, 0)]), &[action]).unwrap();
    let t = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
    let a = t.encrypt(b"alice").unwrap();
    let out = rewrite_row(&data_row(&[Some(&a)]), &shape, &cx)
        .unwrap()
        .unwrap();
    let h = values_of(&out).remove(0).unwrap();
    assert!(h.starts_with(b"h:") && h.len() == 18);
    let out2 = rewrite_row(&data_row(&[Some(&a)]), &shape, &cx)
        .unwrap()
        .unwrap();
    assert_eq!(values_of(&out2)[0].as_deref(), Some(&h[..]));
}

#[test]
fn result_formats_from_bind() {
    let fields = [field("a", 17, 0), field("b", 17, 0)];
    let (_, mut shape) = rewrite_row_description(&rd_body(&fields), &[]).unwrap();
    shape.set_result_formats(&[1]).unwrap();
    assert!(shape.cols.iter().all(|c| c.format == Format::Binary));
    shape.set_result_formats(&[0, 1]).unwrap();
    assert_eq!(shape.cols[1].format, Format::Binary);
    shape.set_result_formats(&[]).unwrap();
    assert!(shape.cols.iter().all(|c| c.format == Format::Text));
    assert!(shape.set_result_formats(&[0, 1, 1]).is_err());
    assert!(shape.set_result_formats(&[3]).is_err());
}

#[test]
fn large_row_is_linear() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let none = |_: &str| false;
    let cx = ctx(&kr, &none);
    let t = kit.target(&kr, NOTES, LogicalType::Bytea, Storage::Bytea);
    let big = vec![0x5au8; 8 << 20];
    let stored = t.encrypt(&big).unwrap();
    let (_, shape) = rewrite_row_description(
        &rd_body(&[field("id", 23, 1), field("blob", 17, 1)]),
        &[
            ColumnAction::PassThrough,
            decrypt(NOTES, LogicalType::Bytea),
        ],
    )
    .unwrap();
    let row = data_row(&[Some(&[0, 0, 0, 1]), Some(&stored)]);
    let start = std::time::Instant::now();
    let out = rewrite_row(&row, &shape, &cx).unwrap().unwrap();
    let v = values_of(&out);
    assert_eq!(v[1].as_deref(), Some(&big[..]));
    // Generous bound for a debug build on a shared machine; quadratic copying would take minutes.
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
}

#[test]
fn malformed_rows_never_panic() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let all = |_: &str| true;
    let cx = ctx(&kr, &all);
    let t = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
    let ct = t.encrypt(b"x").unwrap();
    let fields = [field("a", 25, 0), field("b", 17, 1), field("c", 25, 1)];
    let actions = [
        decrypt(EMAIL, LogicalType::Text),
        decrypt(SALARY, LogicalType::Int4),
        ColumnAction::Mask {
            class: pgcloak_policy::Class::Confidential,
            column: PHONE.into(),
            ty: LogicalType::Date,
            mask: Mask::Hash,
            encrypted: true,
        },
    ];
    let (_, shape) = rewrite_row_description(&rd_body(&fields), &actions).unwrap();
    let good = data_row(&[Some(&ct), Some(&ct), None]);
    let rd_good = rd_body(&fields);
    let mut rng = Rng::new(5);
    for _ in 0..5000 {
        let base = match rng.below(3) {
            0 => good.clone(),
            1 => rd_good.clone(),
            _ => rng.bytes(64),
        };
        let mut b = base;
        for _ in 0..rng.below(4) {
            if !b.is_empty() {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
        }
        b.truncate(rng.below(b.len() + 1));
        let _ = rewrite_row(&b, &shape, &cx);
        let _ = RowDescription::parse(&b);
        let _ = rewrite_row_description(&b, &actions);
        // Random values in well-formed rows.
        let v1 = rng.bytes_from(b"pgc1:wQoB\\x0123456789abcdef", 80);
        let row = data_row(&[Some(&v1), Some(&v1), Some(&v1)]);
        let _ = rewrite_row(&row, &shape, &cx);
    }
}
