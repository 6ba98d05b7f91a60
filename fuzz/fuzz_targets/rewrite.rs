//! Fuzzes the rewrite paths that parse what a client or server sends: DataRow (ciphertext from the
//! server, valid and forged), Bind (text and binary parameters, arrays), text and binary arrays, COPY
//! FROM in text, CSV and binary format (any chunking), COPY TO rows. No input may panic, and a value
//! encrypted on the way in must decrypt to itself on the way out.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pgcloak::protocol::messages::Bind;
use pgcloak::rewrite::array::{encrypt_binary_array, encrypt_text_array};
use pgcloak::rewrite::rows::{rewrite_data_row, RowDescription, RowShape};
use pgcloak::rewrite::{
    rewrite_bind, BindParam, ColumnAction, Replaced, ColumnTarget, CopyInRewriter, CopyOutColumn,
    CopyOutRewriter, RowCtx, Storage,
};
use pgcloak_keymgr::{Keyring, KeyringDoc, LogicalType, MasterKey, Mode};
use pgcloak_policy::{
    ColumnKey, CopyColumn, CopyDirection, CopyEndpoint, CopyFormat, CopyInfo, EncryptMode,
    LogicalType as P, Mask,
};

const DET: &str = "public.t.det";
const RND: &str = "public.t.rnd";

fn keyring() -> &'static Arc<Keyring> {
    static K: OnceLock<Arc<Keyring>> = OnceLock::new();
    K.get_or_init(|| {
        let master = MasterKey::generate().unwrap();
        let mut doc = KeyringDoc::new(&master).unwrap();
        doc.ensure_column(DET, Mode::Deterministic, "2024-01-01T00:00:00Z")
            .unwrap();
        doc.ensure_column(RND, Mode::Randomized, "2024-01-01T00:00:00Z")
            .unwrap();
        doc.rotate(DET, "2024-02-01T00:00:00Z").unwrap();
        let doc = doc.to_json_bytes().unwrap();
        Arc::new(Keyring::unlock(&doc, &master).unwrap())
    })
}

const TYPES: [LogicalType; 9] = LogicalType::ALL;

/// A RowDescription body of four text/bytea columns.
fn row_description(oids: [u32; 4]) -> Vec<u8> {
    let mut b = 4i16.to_be_bytes().to_vec();
    for (i, oid) in oids.iter().enumerate() {
        b.extend_from_slice(format!("c{i}\0").as_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    }
    b
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

fn ctx() -> RowCtx<'static> {
    static ALL: fn(&str) -> bool = |_| true;
    RowCtx {
        keyring: keyring(),
        may_read_plaintext: &ALL,
        mask_hash_key: b"k",
        subjects: &pgcloak::rewrite::NoSubjects,
    }
}

fn shape(ty: LogicalType, formats: &[i16]) -> Option<RowShape> {
    let rd = RowDescription::parse(&row_description([25, 17, 25, 25])).ok()?;
    let actions = [
        ColumnAction::Decrypt {
            class: pgcloak_policy::Class::Confidential,
            column: DET.into(),
            ty,
        },
        ColumnAction::Decrypt {
            class: pgcloak_policy::Class::Confidential,
            column: RND.into(),
            ty,
        },
        ColumnAction::Mask {
            class: pgcloak_policy::Class::Confidential,
            column: DET.into(),
            ty,
            mask: Mask::Last4,
            encrypted: true,
        },
        ColumnAction::Null { class: pgcloak_policy::Class::Confidential },
    ];
    let mut s = RowShape::new(&rd, &actions).ok()?;
    s.set_result_formats(formats).ok()?;
    Some(s)
}

fn copy_info(format: CopyFormat, ty: P, selector: u8) -> CopyInfo {
    let key = |column: &str| ColumnKey {
        class: pgcloak_policy::Class::Confidential,
        column: column.into(),
        mode: EncryptMode::Deterministic,
        logical_type: ty,
    };
    CopyInfo {
        subject: None,
        direction: CopyDirection::From,
        endpoint: CopyEndpoint::Stdin,
        table: Some("public.t".into()),
        columns: vec![
            CopyColumn {
                name: "id".into(),
                encrypt: None,
                force_null: false,
                force_not_null: false,
            },
            CopyColumn {
                name: "det".into(),
                encrypt: Some(key(DET)),
                force_null: selector & 1 != 0,
                force_not_null: selector & 2 != 0,
            },
            CopyColumn {
                name: "rnd".into(),
                encrypt: Some(key(RND)),
                force_null: false,
                force_not_null: false,
            },
        ],
        format,
        delimiter: (selector & 4 != 0).then_some('|'),
        null: (selector & 8 != 0).then(|| "NULL".to_string()),
        header: selector & 16 != 0,
        quote: (selector & 32 != 0).then_some('\''),
        escape: (selector & 64 != 0).then_some('\\'),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let ty = TYPES[usize::from(selector >> 4) % TYPES.len()];
    let kr = keyring();
    let storage = if selector & 8 != 0 {
        Storage::Bytea
    } else {
        Storage::Text
    };
    match selector & 7 {
        // A DataRow of arbitrary bytes.
        0 => {
            if let Some(s) = shape(ty, &[(selector >> 3 & 1) as i16]) {
                let mut out = Vec::new();
                let _ = rewrite_data_row(rest, &s, &ctx(), &mut out);
            }
        }
        // A text value encrypted on the way in decrypts to itself on the way out.
        1 => {
            // Column 0 of the row description is `text`: the server sends the armoured envelope.
            let target = ColumnTarget::new(kr, DET, LogicalType::Text, Storage::Text, pgcloak_policy::Class::Confidential).unwrap();
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(canonical) = target.canonical_from_text(text.as_bytes()) else {
                return;
            };
            let stored = target.encrypt(&canonical).unwrap();
            let row = data_row(&[Some(&stored), None, Some(&stored), Some(b"x")]);
            let s = shape(LogicalType::Text, &[0]).unwrap();
            let mut out = Vec::new();
            assert!(rewrite_data_row(&row, &s, &ctx(), &mut out).unwrap());
            let n = i32::from_be_bytes(out[7..11].try_into().unwrap());
            let n = usize::try_from(n).expect("the decrypted value is not NULL");
            assert_eq!(&out[11..11 + n], text.as_bytes());
        }
        // A Bind of arbitrary bytes with encrypted parameters, scalar and array.
        2 => {
            let t = ColumnTarget::new(kr, DET, ty, storage, pgcloak_policy::Class::Confidential).unwrap();
            let params = [
                BindParam {
                    index: 1,
                    target: t.clone(),
                    array: false,
                    assignment: false,
                },
                BindParam {
                    index: 2,
                    target: t,
                    array: true,
                    assignment: selector & 16 != 0,
                },
            ];
            if let Ok(bind) = Bind::decode(rest) {
                let _ = rewrite_bind(&bind, &params, &Replaced::default());
                // With the first value replaced (as integer widening and ANY wrapping do).
                let mut replaced = Replaced::default();
                replaced.set(0, rest.get(..rest.len() / 2).unwrap_or_default().to_vec());
                let _ = rewrite_bind(&bind, &params, &replaced);
            }
        }
        // Arrays in text and binary format.
        3 => {
            let t = ColumnTarget::new(kr, DET, ty, storage, pgcloak_policy::Class::Confidential).unwrap();
            let _ = encrypt_text_array(&t, rest, selector & 16 != 0);
            let _ = encrypt_binary_array(&t, rest, selector & 16 != 0);
        }
        // COPY FROM, text / CSV / binary, cut into chunks at bytes of the input.
        4 | 5 | 6 => {
            let format = match selector & 7 {
                4 => CopyFormat::Text,
                5 => CopyFormat::Csv,
                _ => CopyFormat::Binary,
            };
            let info = copy_info(format, ty, rest.first().copied().unwrap_or(0));
            let Ok(mut r) = CopyInRewriter::new(&info, kr.clone(), &|_| Some(storage)) else {
                return;
            };
            for chunk in rest.split(|&b| b == 0xfe) {
                if r.push(chunk).is_err() {
                    return;
                }
            }
            let _ = r.finish();
        }
        // A COPY TO row.
        _ => {
            let mut info = copy_info(CopyFormat::Csv, ty, selector);
            info.direction = CopyDirection::To;
            let columns = vec![
                CopyOutColumn {
                    action: ColumnAction::PassThrough,
                    storage: None,
                },
                CopyOutColumn {
                    action: ColumnAction::Decrypt {
                        class: pgcloak_policy::Class::Confidential,
                        column: DET.into(),
                        ty,
                    },
                    storage: Some(storage),
                },
                CopyOutColumn {
                    action: ColumnAction::Mask {
                        class: pgcloak_policy::Class::Confidential,
                        column: RND.into(),
                        ty,
                        mask: Mask::Email,
                        encrypted: true,
                    },
                    storage: Some(storage),
                },
            ];
            if let Ok(mut w) = CopyOutRewriter::new(&info, columns) {
                let _ = w.rewrite(rest, &ctx());
            }
        }
    }
});
