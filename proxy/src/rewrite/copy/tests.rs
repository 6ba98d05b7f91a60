use super::*;
use crate::rewrite::testkit::{ctx, Kit, Rng, EMAIL, NOTES, PHONE, SALARY};
use crate::rewrite::values::stored_text;
use pgcloak_policy::{ColumnKey, CopyColumn, CopyDirection, CopyEndpoint, EncryptMode, Mask};

fn copy_info(
    format: CopyFormat,
    cols: &[(&str, Option<(&str, pgcloak_policy::LogicalType)>)],
) -> CopyInfo {
    CopyInfo {
        subject: None,
        direction: CopyDirection::From,
        endpoint: CopyEndpoint::Stdin,
        table: Some("public.customers".into()),
        columns: cols
            .iter()
            .map(|(name, enc)| CopyColumn {
                force_null: false,
                force_not_null: false,
                name: name.to_string(),
                encrypt: enc.map(|(column, t)| ColumnKey {
                    class: pgcloak_policy::Class::Confidential,
                    column: column.to_string(),
                    mode: EncryptMode::Deterministic,
                    logical_type: t,
                }),
            })
            .collect(),
        format,
        delimiter: None,
        null: None,
        header: false,
        quote: None,
        escape: None,
    }
}

use pgcloak_policy::LogicalType as P;

fn storage_map(column: &str) -> Option<Storage> {
    match column {
        EMAIL => Some(Storage::Text),
        PHONE | SALARY => Some(Storage::Bytea),
        _ => None,
    }
}

fn customers(format: CopyFormat) -> CopyInfo {
    copy_info(
        format,
        &[
            ("id", None),
            ("email", Some((EMAIL, P::Text))),
            ("phone", Some((PHONE, P::Text))),
            ("note", None),
        ],
    )
}

fn rewriter(kit: &Kit, info: &CopyInfo) -> CopyInRewriter {
    CopyInRewriter::new(info, Arc::new(kit.keyring()), &storage_map).unwrap()
}

fn run(kit: &Kit, info: &CopyInfo, chunks: &[&[u8]]) -> Result<Vec<u8>> {
    let mut r = rewriter(kit, info);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(r.push(c)?);
    }
    out.extend(r.finish()?);
    Ok(out)
}

/// Reads the rewritten data back through COPY TO rules: decrypt everything (what the server
/// would send back for these rows is exactly what was sent in).
fn read_back(kit: &Kit, info: &CopyInfo, data: &[u8]) -> Vec<u8> {
    let kr = kit.keyring();
    let all = |_: &str| true;
    let cx = ctx(&kr, &all);
    let columns = info
        .columns
        .iter()
        .map(|c| CopyOutColumn {
            action: match &c.encrypt {
                None => ColumnAction::PassThrough,
                Some(k) => ColumnAction::Decrypt {
                    class: pgcloak_policy::Class::Confidential,
                    column: k.column.clone(),
                    ty: k.logical_type,
                },
            },
            storage: c.encrypt.as_ref().and_then(|k| storage_map(&k.column)),
        })
        .collect();
    let mut out_info = info.clone();
    out_info.direction = CopyDirection::To;
    let mut r = CopyOutRewriter::new(&out_info, columns).unwrap();
    let mut out = Vec::new();
    // Split into rows the way the server sends them (one per message); CSV rows may hold
    // quoted newlines, so split with the COPY IN scanner.
    let mut scan = CopyInRewriter::new(
        &copy_info(info.format, &[("x", None)]),
        Arc::new(kit.keyring()),
        &storage_map,
    )
    .unwrap();
    scan.opts = r.opts.clone();
    scan.buf = data.to_vec();
    let mut start = 0;
    while let Some((_, next)) = scan.next_line_end(start, true).unwrap() {
        let row = &data[start..next];
        if row.starts_with(b"\\.\r") || row.starts_with(b"\\.\n") {
            out.extend_from_slice(&data[start..]);
            return out;
        }
        match r.rewrite(row, &cx).unwrap() {
            Some(v) => out.extend(v),
            None => out.extend_from_slice(row),
        }
        start = next;
        scan.scan = next;
        scan.in_quote = false;
    }
    if start < data.len() {
        match r.rewrite(&data[start..], &cx).unwrap() {
            Some(v) => out.extend(v),
            None => out.extend_from_slice(&data[start..]),
        }
    }
    out
}

const TEXT_DATA: &[u8] = b"1\talice@example.com\t555-0100\tplain\n\
2\t\\N\tx\\ty\\\\z\\nw\t\\N\n\
3\t\t\\101\\x42C\\.\tend\\\n next\n\
4\tb@c\t\xc3\xa9\tdone\n\
\\.\n\
5\tafter the end marker is dropped\n";

#[test]
fn text_format_encrypts_only_encrypted_fields() {
    let kit = Kit::new();
    let info = customers(CopyFormat::Text);
    let out = run(&kit, &info, &[TEXT_DATA]).unwrap();
    let s = String::from_utf8(out.clone()).unwrap();
    let lines: Vec<&str> = s.split('\n').collect();
    assert!(
        lines[0].starts_with("1\tpgc1:") && lines[0].ends_with("\tplain"),
        "{}",
        lines[0]
    );
    let f: Vec<&str> = lines[0].split('\t').collect();
    assert!(f[2].starts_with("\\\\x"), "bytea in COPY text: {}", f[2]);
    assert!(lines[1].starts_with("2\t\\N\t\\\\x") && lines[1].ends_with("\t\\N"));
    assert!(!s.contains("alice") && !s.contains("555-0100") && !s.contains("after"));
    assert!(s.ends_with("\\.\n"));
    // Decrypting gives the values back, in COPY text form.
    let back = read_back(&kit, &info, &out);
    let expect = b"1\talice@example.com\t555-0100\tplain\n\
2\t\\N\tx\\ty\\\\z\\nw\t\\N\n\
3\t\tABC.\tend\\\n next\n\
4\tb@c\t\xc3\xa9\tdone\n\
\\.\n";
    assert_eq!(
        String::from_utf8_lossy(&back),
        String::from_utf8_lossy(expect)
    );
}

#[test]
fn csv_quotes_header_nulls_and_empty_strings() {
    let kit = Kit::new();
    let mut info = customers(CopyFormat::Csv);
    info.header = true;
    let data = b"id,email,phone,note\r\n\
1,\"a,b@c\",\"line1\r\nline2\",\"x\"\"y\"\r\n\
2,,\"\",\r\n\
3,\"q\"\"uote\",plain,\"multi\nline\"\r\n";
    let out = run(&kit, &info, &[data]).unwrap();
    let s = String::from_utf8_lossy(&out).into_owned();
    assert!(s.starts_with("id,email,phone,note\r\n1,pgc1:"), "{s}");
    assert!(!s.contains("line1") && !s.contains("b@c") && !s.contains("uote"));
    // Row 2: NULL email stays NULL (unquoted empty); the quoted empty phone is encrypted.
    let row2 = s.split("\r\n").nth(2).unwrap();
    assert!(row2.starts_with("2,,\\x") && row2.ends_with(','), "{row2}");
    let back = read_back(&kit, &info, &out);
    let expect = b"id,email,phone,note\r\n\
1,\"a,b@c\",\"line1\r\nline2\",\"x\"\"y\"\r\n\
2,,\"\",\r\n\
3,\"q\"\"uote\",plain,\"multi\nline\"\r\n";
    assert_eq!(
        String::from_utf8_lossy(&back),
        String::from_utf8_lossy(expect)
    );
}

#[test]
fn csv_force_null_and_force_not_null() {
    let kit = Kit::new();
    let mut info = customers(CopyFormat::Csv);
    info.columns[1].force_null = true; // email
    info.columns[2].force_not_null = true; // phone
    let data = b"1,\"\",,n\r\n2,,\"\",n\r\n3,\"\"\"\",x,n\r\n";
    let out = run(&kit, &info, &[data]).unwrap();
    let s = String::from_utf8_lossy(&out).into_owned();
    let rows: Vec<&str> = s.split("\r\n").collect();
    // Quoted empty email under FORCE_NULL: NULL, forwarded as written (the server reads it so).
    // Unquoted empty phone under FORCE_NOT_NULL: an empty string, so encrypted.
    assert!(rows[0].starts_with("1,\"\",\\x"), "{}", rows[0]);
    // Without FORCE_NULL the unquoted empty email is NULL as always; a quoted empty phone is a value.
    assert!(rows[1].starts_with("2,,\\x"), "{}", rows[1]);
    // A quoted field that is not the null string is a value under FORCE_NULL.
    assert!(rows[2].starts_with("3,pgc1:"), "{}", rows[2]);
    let back = String::from_utf8_lossy(&read_back(&kit, &info, &out)).into_owned();
    let back: Vec<&str> = back.split("\r\n").collect();
    assert_eq!(back[1], "2,,\"\",n");
    assert_eq!(back[2], "3,\"\"\"\",x,n");
    assert!(back[0].ends_with(",\"\",n"), "{}", back[0]);
}

#[test]
fn csv_with_other_delimiter_quote_escape_and_null() {
    let kit = Kit::new();
    let mut info = customers(CopyFormat::Csv);
    info.delimiter = Some(':');
    info.quote = Some('\'');
    info.escape = Some('\\');
    info.null = Some("NULL".into());
    let data = b"1:'it\\'s:here':NULL:'a''b'\n2:NULL:'NULL':x\n";
    let out = run(&kit, &info, &[data]).unwrap();
    let s = String::from_utf8_lossy(&out).into_owned();
    // Armour contains `:`, the delimiter here: the field is quoted.
    assert!(s.starts_with("1:'pgc1:"), "{s}");
    let back = read_back(&kit, &info, &out);
    assert_eq!(
        String::from_utf8_lossy(&back),
        "1:'it\\'s:here':NULL:'a''b'\n2:NULL:'NULL':x\n"
    );
}

#[test]
fn text_with_colon_delimiter_escapes_armour() {
    let kit = Kit::new();
    let mut info = customers(CopyFormat::Text);
    info.delimiter = Some(':');
    let out = run(&kit, &info, &[b"1:a@b:c:d\n"]).unwrap();
    let s = String::from_utf8(out.clone()).unwrap();
    assert!(s.starts_with("1:pgc1\\:"), "{s}");
    assert_eq!(read_back(&kit, &info, &out), b"1:a@b:c:d\n");
}

#[test]
fn last_line_without_newline_and_crlf_and_cr() {
    let kit = Kit::new();
    let info = customers(CopyFormat::Text);
    for data in [
        &b"1\ta\tb\tc"[..],
        b"1\ta\tb\tc\r\n2\td\te\tf",
        b"1\ta\tb\tc\r2\td\te\tf\r",
    ] {
        let out = run(&kit, &info, &[data]).unwrap();
        assert_eq!(read_back(&kit, &info, &out), data);
    }
    // Mixed line endings are refused like PostgreSQL does.
    assert!(run(&kit, &info, &[b"1\ta\tb\tc\r\n2\td\te\tf\n"]).is_err());
    let csv = customers(CopyFormat::Csv);
    let e = run(&kit, &csv, &[b"1,\"open,b,c"]).unwrap_err();
    assert_eq!(e.sqlstate(), "22P04");
}

#[test]
fn wrong_field_counts_and_values_are_errors_naming_the_line() {
    let kit = Kit::new();
    let info = customers(CopyFormat::Text);
    let e = run(&kit, &info, &[b"1\ta\tb\tc\n2\ta\tb\n"]).unwrap_err();
    assert_eq!(
        e,
        RewriteError::MalformedCopy {
            table: "public.customers".into(),
            line: 2,
            detail: "it has fewer fields than the COPY has columns"
        }
    );
    assert!(run(&kit, &info, &[b"1\ta\tb\tc\td\n"]).is_err());
    let sal = copy_info(CopyFormat::Text, &[("salary", Some((SALARY, P::Int4)))]);
    let e = run(&kit, &sal, &[b"12\nlots\n"]).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains(SALARY) && m.contains("COPY") && !m.contains("lots"),
        "{m}"
    );
}

fn binary_copy(tuples: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
    let mut d = b"PGCOPY\n\xff\r\n\0".to_vec();
    d.extend_from_slice(&0i32.to_be_bytes());
    d.extend_from_slice(&3i32.to_be_bytes());
    d.extend_from_slice(b"ext");
    for t in tuples {
        d.extend_from_slice(&(t.len() as i16).to_be_bytes());
        for f in t {
            match f {
                None => d.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    d.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    d.extend_from_slice(v);
                }
            }
        }
    }
    d.extend_from_slice(&(-1i16).to_be_bytes());
    d
}

/// The tuples of binary COPY data (after a header without extension bytes beyond `ext`).
fn binary_fields(data: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
    let mut at = 22;
    let mut out = Vec::new();
    loop {
        let n = i16::from_be_bytes([data[at], data[at + 1]]);
        at += 2;
        if n == -1 {
            assert_eq!(at, data.len());
            return out;
        }
        let mut t = Vec::new();
        for _ in 0..n {
            let len = i32::from_be_bytes(data[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                t.push(None);
            } else {
                t.push(Some(data[at..at + len as usize].to_vec()));
                at += len as usize;
            }
        }
        out.push(t);
    }
}

/// asyncpg's `copy_records_to_table` writes binary COPY: each encrypted field is replaced by its
/// storage's binary form, whatever the chunking; malformed data is an error naming the tuple.
#[test]
fn binary_copy_in_encrypts_fields_of_encrypted_columns() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let info = copy_info(
        CopyFormat::Binary,
        &[
            ("id", None),
            ("email", Some((EMAIL, P::Text))),
            ("salary", Some((SALARY, P::Int4))),
        ],
    );
    let data = binary_copy(&[
        vec![
            Some(&7i32.to_be_bytes()),
            Some(b"a@example.com"),
            Some(&5000i32.to_be_bytes()),
        ],
        vec![
            Some(&8i32.to_be_bytes()),
            None,
            Some(&(-1i32).to_be_bytes()),
        ],
    ]);
    let out = run(&kit, &info, &[&data]).unwrap();
    assert_eq!(&out[..22], &data[..22], "the header passes through");
    let t = binary_fields(&out);
    assert_eq!(t.len(), 2);
    assert_eq!(t[0][0].as_deref(), Some(&7i32.to_be_bytes()[..]));
    let email = t[0][1].as_deref().unwrap();
    assert!(
        email.starts_with(b"pgc1:"),
        "text storage holds the armoured envelope"
    );
    assert_eq!(
        kr.cipher(EMAIL).unwrap().decrypt(email).unwrap(),
        b"a@example.com"
    );
    let salary = t[0][2].as_deref().unwrap();
    assert_eq!(
        kr.cipher(SALARY).unwrap().decrypt(salary).unwrap(),
        5000i32.to_be_bytes(),
        "bytea storage holds the raw envelope"
    );
    assert_eq!(t[1][1], None, "NULL stays NULL");
    assert_eq!(
        kr.cipher(SALARY)
            .unwrap()
            .decrypt(t[1][2].as_deref().unwrap())
            .unwrap(),
        (-1i32).to_be_bytes()
    );
    // salary is randomized in the test keyring: compare what the fields decrypt to.
    let plain = |out: &[u8]| -> Vec<Vec<Option<Vec<u8>>>> {
        binary_fields(out)
            .into_iter()
            .map(|t| {
                t.into_iter()
                    .zip([None, Some(EMAIL), Some(SALARY)])
                    .map(|(f, col)| match (f, col) {
                        (Some(v), Some(c)) => Some(kr.cipher(c).unwrap().decrypt(&v).unwrap()),
                        (f, _) => f,
                    })
                    .collect()
            })
            .collect()
    };
    let whole = plain(&out);
    for k in 0..=data.len() {
        let (a, b) = data.split_at(k);
        assert_eq!(
            plain(&run(&kit, &info, &[a, b]).unwrap()),
            whole,
            "split at {k}"
        );
    }
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(plain(&run(&kit, &info, &bytes).unwrap()), whole);

    let err = |d: &[u8]| run(&kit, &info, &[d]).unwrap_err().to_string();
    let two = |a: Option<&[u8]>| binary_copy(&[vec![Some(&1i32.to_be_bytes()), a]]);
    assert!(err(&two(Some(b"x"))).contains("fewer fields"));
    let short_int = binary_copy(&[vec![Some(&1i32.to_be_bytes()), Some(b"x"), Some(b"12")]]);
    let m = err(&short_int);
    assert!(m.contains(SALARY) && !m.contains("12"), "{m}");
    let bad_utf8 = binary_copy(&[vec![None, Some(b"\xff\xfe"), None]]);
    assert!(err(&bad_utf8).contains("UTF-8"), "{}", err(&bad_utf8));
    assert!(err(b"PGCOPX\n\xff\r\n\0\0\0\0\0\0\0\0\0").contains("signature"));
    let mut oids = data.clone();
    oids[12] = 1; // flag bit 16
    assert!(err(&oids).contains("OIDS"));
    let mut negative = data.clone();
    negative[24..28].copy_from_slice(&(-5i32).to_be_bytes());
    assert!(err(&negative).contains("negative length"));
    assert!(err(&data[..data.len() - 3]).contains("ends inside a tuple"));
    // Without encrypted columns the data is not parsed at all.
    let plain = copy_info(CopyFormat::Binary, &[("id", None)]);
    let mut r = CopyInRewriter::new(&plain, Arc::new(kit.keyring()), &storage_map).unwrap();
    assert_eq!(r.push(b"anything").unwrap(), b"anything");
}

#[test]
fn copy_in_needs_storage_and_key_and_binary_copy_out_is_refused() {
    let kit = Kit::new();
    // Unknown storage / missing key are refused up front.
    let odd = copy_info(CopyFormat::Text, &[("n", Some((NOTES, P::Text)))]);
    assert!(matches!(
        CopyInRewriter::new(&odd, Arc::new(kit.keyring()), &storage_map).unwrap_err(),
        RewriteError::UnknownStorage { .. }
    ));
    let nokey = copy_info(CopyFormat::Text, &[("n", Some(("public.x.y", P::Text)))]);
    assert!(matches!(
        CopyInRewriter::new(&nokey, Arc::new(kit.keyring()), &|_: &str| Some(
            Storage::Text
        ))
        .unwrap_err(),
        RewriteError::NoKey { .. }
    ));
    let mut out_info = customers(CopyFormat::Binary);
    out_info.direction = CopyDirection::To;
    let cols = vec![CopyOutColumn {
        action: ColumnAction::Null {
            class: pgcloak_policy::Class::Confidential,
        },
        storage: None,
    }];
    assert!(CopyOutRewriter::new(&out_info, cols).is_err());
}

/// Any chunking of the input across CopyData messages gives the same output (deterministic columns
/// make the ciphertexts reproducible).
#[test]
fn any_chunking_gives_identical_output() {
    let kit = Kit::new();
    let mut csv = customers(CopyFormat::Csv);
    csv.header = true;
    let csv_data: &[u8] = b"id,email,phone,note\r\n1,\"a,b\",\"l1\r\nl2\",\"x\"\"y\"\r\n2,,\"\",\r\n3,e,f,g\r\n\\.\r\nignored";
    let cases: Vec<(CopyInfo, &[u8])> =
        vec![(customers(CopyFormat::Text), TEXT_DATA), (csv, csv_data)];
    let mut rng = Rng::new(42);
    for (info, data) in cases {
        let whole = run(&kit, &info, &[data]).unwrap();
        for k in 0..=data.len() {
            let (a, b) = data.split_at(k);
            assert_eq!(run(&kit, &info, &[a, b]).unwrap(), whole, "split at {k}");
        }
        for _ in 0..300 {
            let mut chunks = Vec::new();
            let mut rest = data;
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(7));
                let (c, r) = rest.split_at(n);
                chunks.push(c);
                rest = r;
            }
            assert_eq!(run(&kit, &info, &chunks).unwrap(), whole);
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(run(&kit, &info, &bytes).unwrap(), whole);
    }
}

#[test]
fn copy_out_masks_nulls_and_decrypts() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let none = |_: &str| false;
    let cx = ctx(&kr, &none);
    let email = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
    let phone = kit.target(&kr, PHONE, LogicalType::Text, Storage::Bytea);
    let e = String::from_utf8(email.encrypt(b"alice@example.com").unwrap()).unwrap();
    let p = String::from_utf8(stored_text(
        Storage::Bytea,
        &phone.encrypt(b"555-123-4567").unwrap(),
    ))
    .unwrap();
    let mut out_info = customers(CopyFormat::Text);
    out_info.direction = CopyDirection::To;
    out_info.header = true;
    let cols = vec![
        CopyOutColumn {
            action: ColumnAction::PassThrough,
            storage: None,
        },
        CopyOutColumn {
            action: ColumnAction::Decrypt {
                class: pgcloak_policy::Class::Confidential,
                column: EMAIL.into(),
                ty: LogicalType::Text,
            },
            storage: Some(Storage::Text),
        },
        CopyOutColumn {
            action: ColumnAction::Mask {
                class: pgcloak_policy::Class::Confidential,
                column: PHONE.into(),
                ty: LogicalType::Text,
                mask: Mask::Last4,
                encrypted: true,
            },
            storage: Some(Storage::Bytea),
        },
        CopyOutColumn {
            action: ColumnAction::Null {
                class: pgcloak_policy::Class::Confidential,
            },
            storage: None,
        },
    ];
    let mut r = CopyOutRewriter::new(&out_info, cols).unwrap();
    assert_eq!(
        r.rewrite(b"id\temail\tphone\tnote\n", &cx).unwrap(),
        None,
        "header"
    );
    let row = format!("7\t{e}\t{}\tsecret note\n", p.replace('\\', "\\\\"));
    let got = r.rewrite(row.as_bytes(), &cx).unwrap().unwrap();
    assert_eq!(got, b"7\talice@example.com\t****4567\t\\N\n");
    let got = r.rewrite(b"8\t\\N\t\\N\t\\N\n", &cx).unwrap();
    assert_eq!(got, None);
    // A ciphertext of another column in the email field is not decrypted.
    let other = kit.target(&kr, NOTES, LogicalType::Text, Storage::Text);
    let o = String::from_utf8(other.encrypt(b"x").unwrap()).unwrap();
    let got = r
        .rewrite(format!("9\t{o}\t\\N\t\\N\n").as_bytes(), &cx)
        .unwrap()
        .unwrap();
    assert_eq!(got, b"9\t\\N\t\\N\t\\N\n");
    assert_eq!(r.rows(), 3);
    assert!(r.rewrite(b"1\t2\n", &cx).is_err());
}

#[test]
fn copy_out_csv_keeps_the_servers_quoting() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let none = |_: &str| false;
    let cx = ctx(&kr, &none);
    let email = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
    let e = String::from_utf8(email.encrypt(b"alice@example.com").unwrap()).unwrap();
    let mut out_info = customers(CopyFormat::Csv);
    out_info.direction = CopyDirection::To;
    out_info.columns.truncate(2);
    let cols = vec![
        CopyOutColumn {
            action: ColumnAction::PassThrough,
            storage: None,
        },
        CopyOutColumn {
            action: ColumnAction::Decrypt {
                class: pgcloak_policy::Class::Confidential,
                column: EMAIL.into(),
                ty: LogicalType::Text,
            },
            storage: Some(Storage::Text),
        },
    ];
    let mut r = CopyOutRewriter::new(&out_info, cols).unwrap();
    // FORCE_QUOTE: the server quoted the ciphertext, so the plaintext is quoted too.
    let got = r
        .rewrite(format!("\"7\",\"{e}\"\n").as_bytes(), &cx)
        .unwrap()
        .unwrap();
    assert_eq!(got, b"\"7\",\"alice@example.com\"\n");
    let got = r
        .rewrite(format!("7,{e}\n").as_bytes(), &cx)
        .unwrap()
        .unwrap();
    assert_eq!(got, b"7,alice@example.com\n");
}

#[test]
fn copy_parsers_never_panic_on_random_bytes() {
    let kit = Kit::new();
    let kr = kit.keyring();
    let all = |_: &str| true;
    let cx = ctx(&kr, &all);
    let mut rng = Rng::new(99);
    let alphabet = b"\t,\"\\\r\nN.pgc1:x0a";
    for round in 0..1500 {
        let mut i = customers(if round % 2 == 0 {
            CopyFormat::Text
        } else {
            CopyFormat::Csv
        });
        i.header = rng.below(3) == 0;
        if rng.below(4) == 0 {
            i.escape = Some('\\');
        }
        let mut r = rewriter(&kit, &i);
        for _ in 0..rng.below(4) {
            let chunk = rng.bytes_from(alphabet, 40);
            if r.push(&chunk).is_err() {
                break;
            }
        }
        let _ = r.finish();
        let mut o = i.clone();
        o.direction = CopyDirection::To;
        let cols = (0..4)
            .map(|k| CopyOutColumn {
                action: if k == 1 {
                    ColumnAction::Decrypt {
                        class: pgcloak_policy::Class::Confidential,
                        column: EMAIL.into(),
                        ty: LogicalType::Int4,
                    }
                } else {
                    ColumnAction::Mask {
                        class: pgcloak_policy::Class::Confidential,
                        column: PHONE.into(),
                        ty: LogicalType::Date,
                        mask: Mask::Email,
                        encrypted: k == 2,
                    }
                },
                storage: if k == 2 { Some(Storage::Bytea) } else { None },
            })
            .collect();
        let mut w = CopyOutRewriter::new(&o, cols).unwrap();
        let _ = w.rewrite(&rng.bytes_from(alphabet, 60), &cx);
    }
    // Binary: a valid header, then random tuples.
    let header = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
    for _ in 0..1500 {
        let mut r = rewriter(&kit, &customers(CopyFormat::Binary));
        let mut data = header.to_vec();
        data.extend(rng.bytes_from(b"\0\x04\xff\x01x", 60));
        let cut = rng.below(data.len());
        if r.push(&data[..cut]).is_ok() && r.push(&data[cut..]).is_ok() {
            let _ = r.finish();
        }
    }
}
