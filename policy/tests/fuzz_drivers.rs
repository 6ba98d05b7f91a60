//! Long-running random drivers equivalent to the cargo-fuzz targets in `fuzz/` (for machines without
//! nightly/libFuzzer): mutate seed inputs for a time budget and check nothing panics.
//!
//! `PGCLOAK_FUZZ_SECS=300 cargo test -p pgcloak-policy --release --test fuzz_drivers -- --ignored --nocapture`

mod common;

use std::time::{Duration, Instant};

use pgcloak_policy::{analyze, apply_mask, check, lex, names_any, Mask, Policy, StorageTypes};

use pgcloak_testkit::Rng;

const SQL_SEEDS: &[&str] = &[
    r#"SELECT "customers"."id", "customers"."email" FROM "customers" WHERE "customers"."email" = $1 LIMIT 21"#,
    r#"SELECT "customers".* FROM "customers" WHERE "customers"."email" = $1 LIMIT $2"#,
    "select c1_0.id,c1_0.phone from customers c1_0 where c1_0.phone=$1",
    "INSERT INTO customers (email, phone) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE SET phone = EXCLUDED.phone RETURNING id",
    "WITH x AS (SELECT email AS e FROM customers) SELECT e FROM x WHERE e = 'a@b' UNION SELECT email FROM customers",
    "UPDATE customers c SET phone = $1 FROM orders o WHERE o.customer_id = c.id AND o.id = $2 RETURNING c.email",
    "COPY customers (id, email) FROM STDIN WITH (FORMAT csv, DELIMITER ';')",
    "COPY (SELECT id, phone FROM customers WHERE email = 'a@b.c') TO STDOUT",
    "PREPARE p1 (text) AS SELECT id, email FROM customers WHERE phone = $1; EXECUTE p1('x')",
    "DECLARE c1 CURSOR FOR SELECT id, ssn FROM customers; FETCH 10 FROM c1",
    "SELECT row_to_json(c) FROM customers c WHERE email IN ('a', 'b') AND ssn IS NULL",
    "SELECT CASE WHEN email = $1 THEN lower(notes) ELSE E'x\\'y' END, $$a$$ FROM customers /* c */ -- d\n ORDER BY 1",
    "SELECT U&\"\\0073sn\", B'0101', X'ff', 1.5e3 FROM customers, LATERAL (SELECT ssn) t",
    "SET ROLE app; SELECT set_config('role', 'x', false); DO $$ BEGIN END $$",
    "SELECT * FROM customers JOIN orders USING (id) NATURAL JOIN order_items",
];

const POLICY_SEEDS: &[&str] = &[common::POLICY];

const FRAGMENTS: &[&str] = &[
    "'",
    "\"",
    "$$",
    "$1",
    "$a$",
    "(",
    ")",
    ",",
    ";",
    "--",
    "/*",
    "*/",
    "E'",
    "U&\"",
    "::",
    " ",
    "\n",
    "SELECT ",
    " FROM ",
    " WHERE ",
    "customers",
    "ssn",
    "email",
    " = ",
    " AND ",
    " OR ",
    "*",
    "[[column]]\n",
    "[[role]]\n",
    "name = ",
    "class = ",
    "\"confidential\"",
    "read = {",
    "}",
    "=",
    "[",
    "]",
    "é",
    "\u{0}",
    "partial(",
    "max_rows = ",
    "-1",
    "99999999999999999999",
    "\\",
    "{",
    "true",
    "#",
];

fn mutate(rng: &mut Rng, seeds: &[&str]) -> String {
    let mut s: Vec<u8> = seeds[rng.below(seeds.len())].as_bytes().to_vec();
    for _ in 0..=rng.below(8) {
        let len = s.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                let j = (i + rng.below(16)).min(len);
                s.drain(i..j);
            }
            1 => {
                let f = FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes();
                let i = rng.below(len + 1);
                s.splice(i..i, f.iter().copied());
            }
            2 if len > 0 => {
                let i = rng.below(len);
                s[i] = rng.next() as u8;
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + rng.below(32)).min(len);
                let chunk: Vec<u8> = s[i..j].to_vec();
                let k = rng.below(len + 1);
                s.splice(k..k, chunk);
            }
            4 => {
                let other = seeds[rng.below(seeds.len())].as_bytes();
                let i = rng.below(len + 1);
                let j = rng.below(other.len() + 1);
                s.truncate(i);
                s.extend_from_slice(&other[j..]);
            }
            5 => {
                let f = FRAGMENTS[rng.below(FRAGMENTS.len())];
                let n = rng.below(200);
                s.extend(f.repeat(n).bytes());
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn budget() -> Duration {
    let secs = std::env::var("PGCLOAK_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

#[test]
#[ignore = "long-running random driver; run with --ignored"]
fn fuzz_lex_and_analyze() {
    let policy = common::policy();
    let cat = common::catalog();
    let roles = [
        policy.role_named("app").expect("app"),
        policy.role_named("support").expect("support"),
        policy.default_role(),
    ];
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    let mut n: u64 = 0;
    let mut denied: u64 = 0;
    while start.elapsed() < budget() {
        let sql = mutate(&mut rng, SQL_SEEDS);
        let l = lex(&sql);
        let _ = names_any(&l, policy.protected_table_names());
        for role in roles {
            let plan = analyze(&sql, &l, &cat, &policy, role);
            assert_eq!(plan.statements.len(), l.statements.len(), "{sql}");
            for sp in &plan.statements {
                if let Some(m) = sp.deny_message() {
                    assert!(m.starts_with("pgcloak: "), "{sql}");
                    denied += 1;
                }
            }
        }
        let _ = apply_mask(Mask::Partial { front: 3, back: 2 }, &sql, b"k");
        n += 1;
    }
    println!(
        "fuzz_lex_and_analyze: {n} inputs x 3 roles in {:?}, {denied} statement refusals, 0 panics",
        start.elapsed()
    );
}

#[test]
#[ignore = "long-running random driver; run with --ignored"]
fn fuzz_policy_parse() {
    let mut rng = Rng::new(0x1234_5678_9abc_def1);
    let start = Instant::now();
    let (mut n, mut ok, mut errs) = (0u64, 0u64, 0u64);
    while start.elapsed() < budget() {
        let text = mutate(&mut rng, POLICY_SEEDS);
        match Policy::parse(&text, "fuzz.toml") {
            Ok(p) => {
                ok += 1;
                let storage: StorageTypes = p
                    .columns()
                    .iter()
                    .map(|c| (c.qualified_name(), "integer".to_string()))
                    .collect();
                let _ = check(&p, Some(&storage));
            }
            Err(e) => {
                errs += 1;
                assert!(!e.issues().is_empty());
                assert!(e
                    .issues()
                    .iter()
                    .all(|i| i.to_string().starts_with("fuzz.toml")));
            }
        }
        n += 1;
    }
    println!(
        "fuzz_policy_parse: {n} inputs ({ok} valid, {errs} rejected) in {:?}, 0 panics",
        start.elapsed()
    );
}
