//! `pgcloak discover` on a seeded database: realistic sensitive columns (valid and invalid identity
//! numbers, cards with and without a valid Luhn digit, CN and international phones, emails) are all
//! found with the right class; decoys (order numbers, 18-digit strings failing the check character,
//! UUIDs, timestamps, free text) are not; no sampled value appears in any output; the TOML fragment
//! passes `pgcloak check`; `--diff` leaves out what the policy covers.

use crate::harness::{cluster, connect, free_port, pgcloak, SUPERPASS, SUPERUSER};

fn cn_id(body17: &str) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body17
        .bytes()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body17}{check}")
}

fn luhn_complete(prefix15: &str) -> String {
    for last in 0..10 {
        let s = format!("{prefix15}{last}");
        let mut sum = 0;
        for (i, c) in s.bytes().rev().enumerate() {
            let mut d = u32::from(c - b'0');
            if i % 2 == 1 {
                d *= 2;
                if d > 9 {
                    d -= 9;
                }
            }
            sum += d;
        }
        if sum % 10 == 0 {
            return s;
        }
    }
    unreachable!()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + (self.next() % 10) as u8))
            .collect()
    }
}

fn discover(cfg: &str, db: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["discover", "--config", cfg, "--database", db, "-q"];
    args.extend_from_slice(extra);
    // Debug logging on: no sampled value may reach the log either.
    let out = pgcloak(&args, &[("RUST_LOG".into(), "debug".into())]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_finds_sensitive_columns_and_no_decoys_and_never_prints_a_value() {
    let c = cluster();
    let db = c.fresh_db("discover_seed");
    let direct = connect(&c.direct_url(&db)).await;
    direct
        .batch_execute(
            "CREATE TABLE customers (id int PRIMARY KEY, full_name text, email text, mobile text, \
             intl_phone text, id_number text, card text, notes text, created_at timestamptz DEFAULT now(), \
             dob date, salary int, last_ip text); \
             COMMENT ON COLUMN customers.id_number IS '身份证号'; \
             CREATE TABLE orders (order_no text, ref_code text, request_uuid text, shipped_at text, card_like text, qty int)",
        )
        .await
        .unwrap();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut secrets: Vec<String> = Vec::new();
    for i in 0..400u32 {
        let birth = format!("19{:02}{:02}{:02}", 50 + i % 50, 1 + i % 12, 1 + i % 28);
        let mut id = cn_id(&format!("110105{birth}{:03}", i % 1000));
        if i % 5 == 0 {
            // One in five is a mistyped number: its check character is wrong.
            let last = id.pop().unwrap();
            id.push(if last == '1' { '2' } else { '1' });
        }
        let mut card = luhn_complete(&format!("4{}", rng.digits(14)));
        if i % 6 == 0 {
            let last = card.pop().unwrap();
            card.push(if last == '9' {
                '0'
            } else {
                char::from(last as u8 + 1)
            });
        }
        let mobile = format!("1{}{}", [3, 5, 7, 8, 9][(i % 5) as usize], rng.digits(9));
        let intl = format!("+44 20 {} {}", rng.digits(4), rng.digits(4));
        let email = format!("person{i}.{}@example.org", rng.digits(4));
        // Decoys.
        let order_no = format!("ORD-2026-{:06}", i);
        let mut ref_code = rng.digits(18);
        if ref_code == cn_id(&ref_code[..17]) {
            ref_code.replace_range(17.., if ref_code.ends_with('1') { "2" } else { "1" });
        }
        let uuid = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rng.next() as u32,
            rng.next() as u16,
            rng.next() % 4096,
            rng.next() % 4096,
            rng.next() % (1 << 48)
        );
        let shipped = format!(
            "2026-{:02}-{:02} 1{}:2{}:00+00",
            1 + i % 12,
            1 + i % 28,
            i % 10,
            i % 10
        );
        let mut card_like = rng.digits(16);
        if card_like.starts_with(['2', '3', '4', '5', '6'])
            && luhn_complete(&card_like[..15]) == card_like
        {
            card_like.replace_range(15.., if card_like.ends_with('9') { "0" } else { "9" });
        }
        if i < 5 {
            secrets.extend([
                id.clone(),
                card.clone(),
                mobile.clone(),
                email.clone(),
                intl.clone(),
            ]);
        }
        direct
            .execute(
                "INSERT INTO customers (id, full_name, email, mobile, intl_phone, id_number, card, notes, dob, salary, last_ip) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::date, $10, $11)",
                &[
                    &(i as i32),
                    &format!("Person {i}"),
                    &email,
                    &mobile,
                    &intl,
                    &id,
                    &card,
                    &format!("called on day {i}, all fine"),
                    &format!("19{:02}-{:02}-{:02}", 50 + i % 50, 1 + i % 12, 1 + i % 28),
                    &(3000 + i as i32),
                    &format!("10.{}.{}.{}", i % 256, (i * 7) % 256, (i * 13) % 256),
                ],
            )
            .await
            .unwrap();
        direct
            .execute(
                "INSERT INTO orders VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &order_no,
                    &ref_code,
                    &uuid,
                    &shipped,
                    &card_like,
                    &(i as i32 % 7),
                ],
            )
            .await
            .unwrap();
    }
    direct.batch_execute("ANALYZE").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgcloak.toml");
    let write_cfg = |policy: Option<&str>| {
        let policy_line = match policy {
            Some(p) => {
                std::fs::write(dir.path().join("policy.toml"), p).unwrap();
                "policy = \"policy.toml\"\n"
            }
            None => "",
        };
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{}\"\nupstream = \"127.0.0.1:{}\"\n{policy_line}\
                 [upstream_tls]\nmode = \"disable\"\n\
                 [catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"{db}\"\n",
                free_port(),
                c.port
            ),
        )
        .unwrap();
    };
    write_cfg(None);
    let cfg_s = cfg.to_str().unwrap().to_string();

    let (ok, json, err) = discover(&cfg_s, &db, &["--format", "json", "--sample", "300"]);
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let found: std::collections::BTreeMap<String, (String, String, f64)> = doc["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["column"].as_str().unwrap().to_string(),
                (
                    f["detector"].as_str().unwrap().to_string(),
                    f["class"].as_str().unwrap().to_string(),
                    f["confidence"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    let expect = [
        ("public.customers.email", "email", "confidential"),
        ("public.customers.mobile", "phone", "confidential"),
        ("public.customers.intl_phone", "phone", "confidential"),
        (
            "public.customers.id_number",
            "cn_resident_id",
            "confidential",
        ),
        ("public.customers.card", "bank_card", "confidential"),
        ("public.customers.dob", "date_of_birth", "sensitive"),
        ("public.customers.salary", "name:salary", "sensitive"),
        ("public.customers.last_ip", "ip_address", "internal"),
        (
            "public.customers.full_name",
            "name:person_name",
            "sensitive",
        ),
    ];
    for (col, detector, class) in expect {
        let got = found
            .get(col)
            .unwrap_or_else(|| panic!("{col} not found: {found:?}"));
        assert_eq!((got.0.as_str(), got.1.as_str()), (detector, class), "{col}");
    }
    // Mistyped identity numbers and cards lower the confidence, they do not hide the column.
    let id_conf = found["public.customers.id_number"].2;
    assert!((0.7..0.9).contains(&id_conf), "{id_conf}");
    assert!(found["public.customers.email"].2 > 0.99);
    assert_eq!(
        found.len(),
        expect.len(),
        "decoys or extras flagged: {found:?}"
    );

    // No sampled value in any output, on stdout or stderr.
    let (ok, table, err_t) = discover(&cfg_s, &db, &[]);
    assert!(ok, "{err_t}");
    assert!(table.contains("public.customers.id_number") && table.contains("cn_resident_id"));
    let (ok, toml, err_toml) = discover(&cfg_s, &db, &["--format", "toml"]);
    assert!(ok, "{err_toml}");
    for out in [&json, &err, &table, &err_t, &toml, &err_toml] {
        for s in &secrets {
            assert!(!out.contains(s.as_str()), "a sampled value was printed");
        }
        assert!(!out.contains("example.org") && !out.contains("ORD-2026"));
    }

    // The TOML fragment is a policy `pgcloak check` accepts against this database.
    write_cfg(Some(&toml));
    let out = pgcloak(&["check", "--config", &cfg_s], &[]);
    assert!(
        out.status.success(),
        "{}\n{}{}",
        toml,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(toml.contains("name = \"public.customers.email\"\nclass = \"confidential\"\nencrypt = \"deterministic\""), "{toml}");

    // Covered columns are marked, and left out with --diff.
    write_cfg(Some(
        "[[column]]\nname = \"public.customers.email\"\nclass = \"confidential\"\nencrypt = \"deterministic\"\n",
    ));
    let (_, json, _) = discover(&cfg_s, &db, &["--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let email = doc["found"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["column"] == "public.customers.email")
        .unwrap();
    assert_eq!(email["in_policy"], true);
    let (_, diff, _) = discover(&cfg_s, &db, &["--format", "json", "--diff"]);
    assert!(
        !diff.contains("public.customers.email") && diff.contains("public.customers.card"),
        "{diff}"
    );
    let (_, covered, _) = discover(&cfg_s, &db, &["--format", "toml"]);
    assert!(
        covered.contains("# public.customers.email is already in the policy"),
        "{covered}"
    );

    // A small sample of a bigger table goes through TABLESAMPLE and still finds the columns.
    let (ok, json, err) = discover(&cfg_s, &db, &["--format", "json", "--sample", "20"]);
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let card = doc["found"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["column"] == "public.customers.card")
        .expect("card found from a block sample");
    assert!(card["sampled"].as_u64().unwrap() <= 20);

    // Loaded, the fragment encrypts the columns it names: `pgcloak encrypt` seals the stored values.
    write_cfg(Some(&toml));
    let init = pgcloak(&["keys", "init", "--config", &cfg_s], &[]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for col in ["public.customers.email", "public.customers.card"] {
        let out = pgcloak(&["encrypt", col, "--config", &cfg_s, "-q"], &[]);
        assert!(
            out.status.success(),
            "{col}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored = c.psql_direct(
        &db,
        "SELECT email || ' ' || card FROM customers WHERE id = 7",
    );
    assert!(
        stored.starts_with("pgc1:") && stored.contains(" pgc1:") && !stored.contains("example.org"),
        "{stored}"
    );
    // Discovery now sees ciphertext there, not emails.
    let (_, json, _) = discover(&cfg_s, &db, &["--format", "json"]);
    assert!(!json.contains("\"detector\": \"email\""), "{json}");

    // Bad input is named.
    let (ok, _, err) = discover(&cfg_s, &db, &["--sample", "0"]);
    assert!(!ok && err.contains("--sample"), "{err}");
    let (ok, _, err) = discover(&cfg_s, "no_such_db_here", &[]);
    assert!(!ok && err.contains("no_such_db_here"), "{err}");
}
