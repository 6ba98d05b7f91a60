//! The encrypting data path end to end: writes are encrypted at rest, reads are decrypted, masked or
//! refused per the login user's policy role, with every client and protocol form; equality lookups keep
//! working across key rotation; no SQL trick gets plaintext of a denied column.

use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::harness::{
    assert_refused, cluster, connect, error_text, psql, Cluster, Proxy, ProxyOptions,
};

pub const POLICY: &str = r#"
[[column]]
name = "public.customers.email"
class = "confidential"
encrypt = "deterministic"
type = "text"
mask = "email"

[[column]]
name = "public.customers.phone"
class = "confidential"
encrypt = "deterministic"
type = "text"
mask = "last4"

[[column]]
name = "public.customers.ssn"
class = "confidential"
encrypt = "randomized"
type = "text"
mask = "redact"

[[column]]
name = "public.customers.salary"
class = "sensitive"
encrypt = "randomized"
type = "int4"
mask = "redact"

[[column]]
name = "public.customers.notes"
class = "internal"

[[role]]
name = "app"
read = { confidential = "plaintext", sensitive = "plaintext" }
write = ["confidential", "sensitive"]

[[role]]
name = "support"
read = { confidential = "masked", sensitive = "plaintext" }
write = ["sensitive"]
max_rows = 50
copy_out = false

[default]
read = { confidential = "deny", sensitive = "masked" }
"#;

pub struct Env {
    pub db: String,
    pub proxy: Proxy,
}

/// A fresh database with the customers table (encrypted columns on text and bytea storage) and a proxy
/// with the policy above.
pub fn env(name: &str) -> Env {
    let c = cluster();
    let db = c.fresh_db(name);
    c.psql_direct(
        &db,
        "CREATE TABLE customers (id int PRIMARY KEY, email text UNIQUE, phone varchar(200), ssn text, salary bytea, notes text); \
         CREATE TABLE other (id int, copy text); \
         GRANT ALL ON customers, other TO PUBLIC",
    );
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(POLICY.into()),
        ..Default::default()
    });
    Env { db, proxy }
}

impl Env {
    pub fn url(&self, user: &str) -> String {
        let pw = match user {
            "app_user" => "app-pw",
            "support_user" => "support-pw",
            "plain_user" => "plain-pw",
            other => panic!("no password for {other}"),
        };
        self.proxy.url(user, pw, &self.db)
    }

    pub fn direct(&self, sql: &str) -> String {
        cluster().psql_direct(&self.db, sql)
    }
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

fn assert_ciphertext_at_rest(e: &Env, id: i32) {
    let raw = e.direct(&format!(
        "SELECT email, phone, ssn, encode(salary, 'hex'), notes FROM customers WHERE id = {id}"
    ));
    let f: Vec<&str> = raw.split('|').collect();
    assert!(f[0].starts_with("pgc1:"), "email at rest: {raw}");
    assert!(f[1].starts_with("pgc1:"), "phone at rest: {raw}");
    assert!(f[2].starts_with("pgc1:"), "ssn at rest: {raw}");
    assert!(f[3].starts_with("c10a01"), "salary at rest: {raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_simple_protocol_write_read_and_ciphertext_at_rest() {
    let e = env("dp_psql");
    let (ok, _, err) = psql(
        &e.url("app_user"),
        &["-c", "INSERT INTO customers VALUES (1, 'ann@example.com', '+1 555 0100', '111-22-3333', 5000, 'vip'), (2, E'bob\\x40example.com', '+1 555 0199', '444-55-6666', 6100, 'new')"],
    );
    assert!(ok, "{err}");
    assert_ciphertext_at_rest(&e, 1);
    assert_ciphertext_at_rest(&e, 2);
    let (ok, out, err) = psql(
        &e.url("app_user"),
        &[
            "-c",
            "SELECT id, email, phone, ssn, salary, notes FROM customers ORDER BY id",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "1|ann@example.com|+1 555 0100|111-22-3333|5000|vip\n2|bob@example.com|+1 555 0199|444-55-6666|6100|new\n"
    );
    // Equality on a deterministic column with a literal.
    let (ok, out, err) = psql(
        &e.url("app_user"),
        &[
            "-c",
            "SELECT id FROM customers WHERE email = 'bob@example.com'",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "2");
    // UPDATE with a literal, then read back.
    let (ok, _, err) = psql(&e.url("app_user"), &["-c", "UPDATE customers SET ssn = '999-99-9999', salary = 7000 WHERE email = 'ann@example.com'"]);
    assert!(ok, "{err}");
    let (_, out, _) = psql(
        &e.url("app_user"),
        &["-c", "SELECT ssn, salary FROM customers WHERE id = 1"],
    );
    assert_eq!(out.trim(), "999-99-9999|7000");
    assert_ciphertext_at_rest(&e, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_extended_binary_params_and_typed_results() {
    let e = env("dp_tokio");
    let app = connect(&e.url("app_user")).await;
    let ins = app
        .prepare(
            "INSERT INTO customers (id, email, phone, ssn, salary) VALUES ($1, $2, $3, $4, $5)",
        )
        .await
        .unwrap();
    // ParameterDescription presents salary as int4, so the driver encodes an i32 natively.
    assert_eq!(ins.params()[4], tokio_postgres::types::Type::INT4);
    for i in 1..=20i32 {
        app.execute(
            &ins,
            &[
                &i,
                &format!("u{i}@example.com"),
                &format!("+1 555 01{i:02}"),
                &format!("{i:03}-00-0000"),
                &(1000 * i),
            ],
        )
        .await
        .unwrap();
    }
    assert_ciphertext_at_rest(&e, 7);
    let row = app
        .query_one(
            "SELECT email, salary, ssn FROM customers WHERE email = $1",
            &[&"u7@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "u7@example.com");
    assert_eq!(row.get::<_, i32>(1), 7000);
    assert_eq!(row.get::<_, String>(2), "007-00-0000");
    // IN and ANY on a deterministic column.
    let n = app
        .query(
            "SELECT id FROM customers WHERE email IN ('u1@example.com', 'u2@example.com')",
            &[],
        )
        .await
        .unwrap()
        .len();
    assert_eq!(n, 2);
    let v = vec![
        "u3@example.com".to_string(),
        "u4@example.com".to_string(),
        "nobody@example.com".to_string(),
    ];
    let n = app
        .query("SELECT id FROM customers WHERE email = ANY($1)", &[&v])
        .await
        .unwrap()
        .len();
    assert_eq!(n, 2);
    // The unique index on the deterministic column works on ciphertext.
    let dup = app
        .execute(&ins, &[&99i32, &"u1@example.com", &"x", &"y", &1i32])
        .await
        .unwrap_err();
    assert_eq!(dup.code().map(|c| c.code()), Some("23505"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equality_lookups_survive_key_rotation() {
    let e = env("dp_rotate");
    let app = connect(&e.url("app_user")).await;
    app.batch_execute("INSERT INTO customers (id, email) VALUES (1, 'old@example.com')")
        .await
        .unwrap();
    drop(app);
    let (ok, _, err) = e.proxy.cli(&["keys", "rotate", "public.customers.email"]);
    assert!(ok, "{err}");
    // The running proxy picks the new key version up by itself (keyring file change).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let app = connect(&e.url("app_user")).await;
    app.batch_execute("INSERT INTO customers (id, email) VALUES (2, 'new@example.com')")
        .await
        .unwrap();
    let version_at_rest = |id: i32| {
        use base64::Engine;
        let armored = e.direct(&format!("SELECT email FROM customers WHERE id = {id}"));
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(armored.trim_start_matches("pgc1:"))
            .unwrap();
        u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]])
    };
    assert_eq!(version_at_rest(1), 1);
    assert_eq!(
        version_at_rest(2),
        2,
        "new writes must use the rotated key without a restart"
    );
    for (email, id) in [("old@example.com", 1), ("new@example.com", 2)] {
        let r = rows(
            &app.simple_query(&format!("SELECT id FROM customers WHERE email = '{email}'"))
                .await
                .unwrap(),
        );
        assert_eq!(
            r,
            vec![vec![Some(id.to_string())]],
            "literal lookup of {email}"
        );
        let r = app
            .query("SELECT id FROM customers WHERE email = $1", &[&email])
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "parameter lookup of {email}");
        assert_eq!(r[0].get::<_, i32>(0), id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_and_refusals_by_role() {
    let e = env("dp_roles");
    let app = connect(&e.url("app_user")).await;
    app.batch_execute("INSERT INTO customers VALUES (1, 'ann@example.com', '+1 555 0100', '111-22-3333', 5000, 'vip')").await.unwrap();
    // support: confidential masked, sensitive plaintext.
    let support = connect(&e.url("support_user")).await;
    let r = rows(
        &support
            .simple_query("SELECT email, phone, ssn, salary, notes FROM customers")
            .await
            .unwrap(),
    );
    assert_eq!(
        r,
        vec![vec![
            Some("a***@example.com".into()),
            Some("****0100".into()),
            Some("****".into()),
            Some("5000".into()),
            Some("vip".into())
        ]]
    );
    // Masked values arrive as text in the extended protocol too.
    let row = support
        .query_one(
            "SELECT email, salary FROM customers WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "a***@example.com");
    assert_eq!(row.get::<_, i32>(1), 5000);
    // support may not write confidential columns.
    let err = support
        .simple_query("UPDATE customers SET email = 'x@example.com' WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("42501"),
        "{}",
        error_text(&err)
    );
    // ...but may write sensitive ones.
    support
        .simple_query("UPDATE customers SET salary = 5500 WHERE id = 1")
        .await
        .unwrap();
    // A LIKE on an encrypted column cannot work on ciphertext: refused, with the reason.
    let err = support
        .simple_query("SELECT id FROM customers WHERE email LIKE 'a%'")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    assert!(error_text(&err).contains("pgcloak:"));
    // COPY TO of classified columns without copy_out.
    let err = support
        .simple_query("COPY customers TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("42501"),
        "{}",
        error_text(&err)
    );
    // default: confidential denied, sensitive masked.
    let plain = connect(&e.url("plain_user")).await;
    let err = plain
        .simple_query("SELECT email FROM customers")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    assert!(
        error_text(&err).contains("public.customers.email"),
        "{}",
        error_text(&err)
    );
    // psql shows the refusal as PostgreSQL would show any error: no trace of how it was raised.
    let (ok, _, err) = psql(&e.url("plain_user"), &["-c", "SELECT email FROM customers"]);
    assert!(
        !ok && err.contains("pgcloak:") && !err.contains("CONTEXT") && !err.contains("PL/pgSQL"),
        "{err}"
    );
    let r = rows(
        &plain
            .simple_query("SELECT salary, notes FROM customers")
            .await
            .unwrap(),
    );
    assert_eq!(r, vec![vec![Some("****".into()), Some("vip".into())]]);
    // A refusal inside a transaction aborts it as PostgreSQL would; the session stays usable.
    plain.simple_query("BEGIN").await.unwrap();
    plain
        .simple_query("SELECT notes FROM customers")
        .await
        .unwrap();
    assert_eq!(
        plain
            .simple_query("SELECT ssn FROM customers")
            .await
            .unwrap_err()
            .code()
            .map(|c| c.code()),
        Some("42501")
    );
    assert_eq!(
        plain
            .simple_query("SELECT 1")
            .await
            .unwrap_err()
            .code()
            .map(|c| c.code()),
        Some("25P02")
    );
    plain.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(
        rows(&plain.simple_query("SELECT 1").await.unwrap()),
        vec![vec![Some("1".into())]]
    );
    // SET ROLE does not change the policy role.
    plain.simple_query("SET ROLE app").await.ok();
    let err = plain
        .simple_query("SELECT email FROM customers")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rows_delivers_the_allowed_rows_then_refuses() {
    let e = env("dp_maxrows");
    let app = connect(&e.url("app_user")).await;
    let ins = app
        .prepare("INSERT INTO customers (id, email, phone) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    for i in 1..=60i32 {
        app.execute(
            &ins,
            &[&i, &format!("m{i}@example.com"), &format!("555-{i:04}")],
        )
        .await
        .unwrap();
    }
    let support = connect(&e.url("support_user")).await;
    let msgs = support
        .simple_query("SELECT email FROM customers ORDER BY id")
        .await;
    let err = msgs.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    assert!(error_text(&err).contains("50"), "{}", error_text(&err));
    // 40 rows are fine.
    let r = support
        .query("SELECT email FROM customers WHERE id <= 40", &[])
        .await
        .unwrap();
    assert_eq!(r.len(), 40);
    // Unclassified columns are not limited.
    let r = support
        .query("SELECT id FROM customers", &[])
        .await
        .unwrap();
    assert_eq!(r.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_encrypts_and_binary_copy_out_is_refused() {
    let e = env("dp_copy");
    let url = e.url("app_user");
    let csv = e.proxy.dir.path().join("in.csv");
    std::fs::write(
        &csv,
        "1,a@example.com,555-0001,111-11-1111,100,x\n2,\"b,@example.com\",555-0002,,200,y\n",
    )
    .unwrap();
    let (ok, _, err) = psql(
        &url,
        &[
            "-c",
            &format!("\\copy customers FROM '{}' CSV", csv.display()),
        ],
    );
    assert!(ok, "{err}");
    let txt = e.proxy.dir.path().join("in.txt");
    std::fs::write(&txt, "3\tc@example.com\t555-0003\t\\N\t300\tz\n").unwrap();
    let (ok, _, err) = psql(
        &url,
        &["-c", &format!("\\copy customers FROM '{}'", txt.display())],
    );
    assert!(ok, "{err}");
    assert_ciphertext_at_rest(&e, 1);
    let (_, out, _) = psql(
        &url,
        &[
            "-c",
            "SELECT id, email, ssn, salary FROM customers ORDER BY id",
        ],
    );
    assert_eq!(
        out,
        "1|a@example.com|111-11-1111|100\n2|b,@example.com||200\n3|c@example.com||300\n"
    );
    assert_eq!(
        e.direct("SELECT count(*) FROM customers WHERE ssn IS NULL"),
        "2"
    );
    // CSV FORCE_NOT_NULL / FORCE_NULL: an unquoted empty ssn is an empty string (so encrypted), a
    // quoted empty phone is NULL — as PostgreSQL reads them.
    let forced = e.proxy.dir.path().join("forced.csv");
    std::fs::write(&forced, "4,d@example.com,\"\",,400,w\n").unwrap();
    let (ok, _, err) = psql(
        &url,
        &[
            "-c",
            &format!(
                "\\copy customers FROM '{}' WITH (FORMAT csv, FORCE_NOT_NULL (ssn), FORCE_NULL (phone))",
                forced.display()
            ),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        e.direct("SELECT phone IS NULL, ssn LIKE 'pgc1:%' FROM customers WHERE id = 4"),
        "t|t"
    );
    let (_, out, _) = psql(
        &url,
        &[
            "-P",
            "null=(null)",
            "-c",
            "SELECT phone, ssn, salary FROM customers WHERE id = 4",
        ],
    );
    assert_eq!(out, "(null)||400\n");
    e.direct("DELETE FROM customers WHERE id = 4");
    // COPY TO for app (copy_out allowed by default) decrypts.
    let (ok, out, err) = psql(
        &url,
        &[
            "-c",
            "COPY (SELECT id, email FROM customers ORDER BY id) TO STDOUT WITH CSV",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "1,a@example.com\n2,\"b,@example.com\"\n3,c@example.com\n"
    );
    // FORCE_QUOTE quotes the decrypted values as PostgreSQL quotes plaintext.
    for columns in ["(id, email)", "*"] {
        let copy = format!(
            "COPY (SELECT id, email FROM customers WHERE id = 1) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE {columns})"
        );
        let (ok, out, err) = psql(&url, &["-c", &copy]);
        assert!(ok, "{copy}: {err}");
        assert_eq!(out, "\"1\",\"a@example.com\"\n", "{copy}");
    }
    let (ok, _, err) = psql(
        &url,
        &["-c", "COPY customers TO STDOUT WITH (FORMAT binary)"],
    );
    assert!(!ok && err.contains("binary COPY TO"), "{err}");
    // COPY data in another encoding would be encrypted (or shown) as the wrong characters: refused,
    // in both directions; UTF8 under any spelling is fine.
    for copy in [
        "COPY customers (id, email) FROM STDIN WITH (FORMAT csv, ENCODING 'LATIN1')",
        "COPY (SELECT id, email FROM customers) TO STDOUT WITH (ENCODING 'LATIN1')",
    ] {
        let (ok, out, err) = psql(&url, &["-c", copy]);
        assert!(
            !ok && err.contains("ENCODING 'LATIN1' cannot carry encrypted column"),
            "{copy}: {err}"
        );
        assert!(!out.contains("@example.com"), "{copy}: {out}");
    }
    let (ok, out, err) = psql(
        &url,
        &[
            "-c",
            "COPY (SELECT email FROM customers WHERE id = 1) TO STDOUT WITH (ENCODING 'utf-8')",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "a@example.com\n");
}

/// Ways to try to read a denied column. Each must fail or return no plaintext.
const TRICKS: &[&str] = &[
    "SELECT email FROM customers",
    "SELECT EMAIL FROM customers",
    "SELECT \"email\" FROM customers",
    "SELECT U&\"emai\\006c\" FROM customers",
    "SELECT c.email FROM customers c",
    "SELECT public.customers.email FROM public.customers",
    "SELECT email AS e FROM customers",
    "SELECT email || '' FROM customers",
    "SELECT upper(email) FROM customers",
    "SELECT email::text FROM customers",
    "SELECT CAST(email AS bytea) FROM customers",
    "SELECT length(email) FROM customers",
    "SELECT max(email) FROM customers",
    "SELECT string_agg(email, ',') FROM customers",
    "SELECT array_agg(email) FROM customers",
    "SELECT row_to_json(c) FROM customers c",
    "SELECT to_jsonb(c) FROM customers c",
    "SELECT c FROM customers c",
    "SELECT (c).email FROM customers c",
    "SELECT * FROM customers",
    "SELECT c.* FROM customers c",
    "WITH x AS (SELECT email FROM customers) SELECT * FROM x",
    "SELECT * FROM (SELECT email FROM customers) s",
    "SELECT (SELECT email FROM customers LIMIT 1)",
    "SELECT email FROM customers UNION SELECT 'x'",
    "SELECT id FROM customers WHERE email = 'ann@example.com'",
    "SELECT id FROM customers WHERE email LIKE 'a%'",
    "SELECT id FROM customers ORDER BY email",
    "SELECT /* comment */ email FROM customers",
    "SELECT email FROM customers -- trailing comment",
    "SELECT $$x$$, email FROM customers",
    "SELECT email FROM ONLY customers",
    "SELECT json_agg(customers) FROM customers",
    "SELECT format('%s', email) FROM customers",
    "SELECT encode(convert_to(email, 'UTF8'), 'hex') FROM customers",
    "SELECT md5(email) FROM customers",
    "SELECT coalesce(email, '') FROM customers",
    "SELECT CASE WHEN true THEN email END FROM customers",
    "COPY customers TO STDOUT",
    "COPY (SELECT email FROM customers) TO STDOUT",
];

/// `text` with every armoured ciphertext (`pgc1:` and its base64url) cut out.
fn without_armour(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("pgc1:") {
        out.push_str(&rest[..i]);
        rest = rest[i + 5..]
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    }
    out.push_str(rest);
    out
}

#[test]
fn without_armour_cuts_ciphertext_only() {
    assert_eq!(
        without_armour("[Some(\"pgc1:wQoBann-_9\"), Some(\"anna\")] pgc1:x"),
        "[Some(\"\"), Some(\"anna\")] "
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_tricks_never_return_plaintext_of_a_denied_column() {
    let e = env("dp_tricks");
    let app = connect(&e.url("app_user")).await;
    app.batch_execute("INSERT INTO customers VALUES (1, 'ann@example.com', '+1 555 0100', '111-22-3333', 5000, 'vip')").await.unwrap();
    e.direct("CREATE VIEW customer_view AS SELECT id, email FROM customers; GRANT ALL ON customer_view TO PUBLIC");
    let plain = connect(&e.url("plain_user")).await;
    let mut tricks: Vec<String> = TRICKS.iter().map(|s| s.to_string()).collect();
    tricks.extend([
        "SELECT email FROM customer_view".to_string(),
        "SELECT * FROM customer_view".to_string(),
    ]);
    for sql in &tricks {
        match plain.simple_query(sql).await {
            Err(err) => {
                // Refused (or failed): fine, as long as the error does not carry the value.
                assert!(
                    !error_text(&err).contains("ann@example"),
                    "{sql}: {}",
                    error_text(&err)
                );
            }
            Ok(msgs) => {
                let text = format!("{:?}", rows(&msgs));
                // Not even a fragment; armoured ciphertext is left out of that check, since its
                // random base64 may spell "ann" by chance.
                assert!(
                    !text.contains("ann@example") && !without_armour(&text).contains("ann"),
                    "{sql} returned plaintext: {text}"
                );
            }
        }
    }
    // Prepared statements, cursors and SET ROLE are no way around either.
    let r = plain
        .simple_query("PREPARE p AS SELECT email FROM customers")
        .await;
    if r.is_ok() {
        let out = plain.simple_query("EXECUTE p").await;
        if let Ok(m) = out {
            assert!(!format!("{:?}", rows(&m)).contains("ann@example"));
        }
    }
    plain.simple_query("BEGIN").await.unwrap();
    let d = plain
        .simple_query("DECLARE cur CURSOR FOR SELECT email FROM customers")
        .await;
    if d.is_ok() {
        if let Ok(m) = plain.simple_query("FETCH ALL FROM cur").await {
            assert!(!format!("{:?}", rows(&m)).contains("ann@example"));
        }
    }
    let _ = plain.simple_query("ROLLBACK").await;
    let _ = plain.simple_query("SET ROLE app").await;
    if let Ok(m) = plain.simple_query("SELECT email FROM customers").await {
        assert!(!format!("{:?}", rows(&m)).contains("ann@example"));
    }
    // Extended protocol too.
    for sql in [
        "SELECT email FROM customers WHERE id = $1",
        "SELECT email FROM customer_view WHERE id = $1",
    ] {
        if let Ok(r) = plain.query(sql, &[&1i32]).await {
            for row in r {
                let v: Option<String> = row.try_get(0).ok().flatten();
                assert!(!v.unwrap_or_default().contains("ann@example"), "{sql}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_of_protected_tables_read_by_policy_and_refuse_writes() {
    let e = env("dp_viewwrite");
    // One view made on the server before pgcloak reads the catalog...
    e.direct(
        "CREATE VIEW customer_view AS SELECT id, email, notes FROM customers; \
         GRANT ALL ON customer_view TO PUBLIC; GRANT CREATE ON SCHEMA public TO PUBLIC",
    );
    let app = connect(&e.url("app_user")).await;
    app.batch_execute("INSERT INTO customers VALUES (1, 'ann@example.com', '+1 555 0100', '111-22-3333', 5000, 'vip')").await.unwrap();
    // ...and one made through pgcloak on top of it: known from the next statement on.
    app.batch_execute(
        "CREATE VIEW contact_view AS SELECT id, email FROM customer_view; \
         GRANT ALL ON contact_view TO PUBLIC",
    )
    .await
    .unwrap();
    for sql in [
        "INSERT INTO customer_view (id, email) VALUES (2, 'leak@example.com')",
        "UPDATE customer_view SET email = 'leak@example.com' WHERE id = 1",
        "INSERT INTO contact_view VALUES (3, 'leak@example.com')",
    ] {
        let simple = app.simple_query(sql).await.unwrap_err();
        let extended = app.execute(sql, &[]).await.unwrap_err();
        for err in [simple, extended] {
            assert_refused(&err, "write to the table itself");
        }
    }
    // The session stays usable; reads through the views follow the policy of the columns behind
    // them (simple and extended protocol, lookups on the deterministic column included).
    let r = rows(
        &app.simple_query("SELECT * FROM contact_view WHERE email = 'ann@example.com'")
            .await
            .unwrap(),
    );
    assert_eq!(
        r,
        vec![vec![Some("1".into()), Some("ann@example.com".into())]]
    );
    let r = app
        .query(
            "SELECT v.email, v.notes FROM customer_view v WHERE v.email = $1",
            &[&"ann@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), "ann@example.com");
    assert_eq!(r[0].get::<_, String>(1), "vip");
    let support = connect(&e.url("support_user")).await;
    let masked = rows(
        &support
            .simple_query("SELECT email FROM contact_view")
            .await
            .unwrap(),
    );
    let m = masked[0][0].clone().unwrap_or_default();
    assert!(
        !m.contains("ann@") && !m.starts_with("pgc1:") && m.contains("example.com"),
        "masked through a view: {m}"
    );
    // The default role is refused the confidential column, as on the table.
    let plain = connect(&e.url("plain_user")).await;
    let err = plain
        .simple_query("SELECT email FROM customer_view")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    app.batch_execute("DELETE FROM customer_view WHERE id = 99")
        .await
        .unwrap();
    // A materialized view holds copies of the ciphertext; read through pgcloak they decrypt for the
    // column they were copied from.
    app.batch_execute(
        "CREATE MATERIALIZED VIEW customer_mv AS SELECT id, email FROM customers; \
         REFRESH MATERIALIZED VIEW customer_mv",
    )
    .await
    .unwrap();
    assert!(e
        .direct("SELECT email FROM customer_mv")
        .starts_with("pgc1:"));
    let r = rows(
        &app.simple_query("SELECT email FROM customer_mv WHERE id = 1")
            .await
            .unwrap(),
    );
    assert_eq!(r, vec![vec![Some("ann@example.com".into())]]);
    // Nothing reached the table, and what is there is ciphertext.
    assert_eq!(e.direct("SELECT count(*) FROM customers"), "1");
    assert_ciphertext_at_rest(&e, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_and_fractional_number_literals_are_encrypted_as_values() {
    let e = env("dp_signed");
    let app = connect(&e.url("app_user")).await;
    app.batch_execute(
        "INSERT INTO customers (id, email, salary) VALUES (1, 'a@example.com', -5000)",
    )
    .await
    .unwrap();
    app.batch_execute("UPDATE customers SET salary = salary, phone = -42 WHERE id = 1")
        .await
        .unwrap();
    let r = rows(
        &app.simple_query("SELECT salary, phone FROM customers WHERE phone = -42")
            .await
            .unwrap(),
    );
    assert_eq!(r, vec![vec![Some("-5000".into()), Some("-42".into())]]);
    let at_rest = e.direct("SELECT encode(salary, 'hex'), phone FROM customers WHERE id = 1");
    assert!(
        at_rest.starts_with("c10a01") && at_rest.contains("|pgc1:"),
        "{at_rest}"
    );
    // A fraction stored into the int4 column is rounded as PostgreSQL rounds it...
    app.batch_execute("INSERT INTO customers (id, salary) VALUES (2, 4999.5), (3, -2.5)")
        .await
        .unwrap();
    let r = rows(
        &app.simple_query("SELECT salary FROM customers WHERE id IN (2, 3) ORDER BY id")
            .await
            .unwrap(),
    );
    assert_eq!(r, vec![vec![Some("5000".into())], vec![Some("-3".into())]]);
    // ...and the same statement sent straight to PostgreSQL with a plaintext int4 agrees.
    assert_eq!(
        e.direct("SELECT 4999.5::numeric::int4, (-2.5)::numeric::int4"),
        "5000|-3"
    );
    // A sign that is an operator still makes the value computed: refused, not stored in plaintext.
    let err = app
        .simple_query("UPDATE customers SET salary = 1 - 5 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_catalog_login_fails_closed_without_retrying_per_statement() {
    let c = cluster();
    let db = c.fresh_db("dp_deadcat");
    c.psql_direct(
        &db,
        "DO $$BEGIN CREATE ROLE cat_dead LOGIN PASSWORD 'cat-pw'; \
         EXCEPTION WHEN duplicate_object THEN ALTER ROLE cat_dead LOGIN; END$$; \
         CREATE TABLE customers (id int PRIMARY KEY, email text UNIQUE, phone varchar(200), ssn text, salary bytea, notes text); \
         GRANT ALL ON customers TO PUBLIC; GRANT CREATE ON SCHEMA public TO PUBLIC",
    );
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(POLICY.into()),
        extra: format!(
            "[catalog]\nuser = \"cat_dead\"\npassword = \"cat-pw\"\ndatabase = \"{db}\"\n"
        ),
        ..Default::default()
    });
    let app = connect(&proxy.url("app_user", "app-pw", &db)).await;
    app.batch_execute("INSERT INTO customers (id, email) VALUES (1, 'ann@example.com')")
        .await
        .unwrap();
    // The catalog login stops working; DDL through pgcloak makes the snapshot stale.
    c.psql_direct(
        &db,
        "ALTER ROLE cat_dead NOLOGIN; \
         SELECT count(pg_terminate_backend(pid)) >= 0 FROM pg_stat_activity WHERE usename = 'cat_dead'",
    );
    app.batch_execute("CREATE TABLE scratch (x int)")
        .await
        .unwrap();
    // Statements naming no protected table keep working (with the views last known)...
    for _ in 0..30 {
        app.simple_query("SELECT 1").await.unwrap();
    }
    // ...and one naming a protected table is refused, not passed through.
    let err = app
        .simple_query("SELECT email FROM customers")
        .await
        .unwrap_err();
    assert_refused(&err, "pgcloak:");
    // The failed load was not retried by each of the 30 statements.
    let log = proxy.log_text();
    let attempts = log.matches("retried in").count();
    assert!(
        (1..=5).contains(&attempts),
        "{attempts} catalog attempts logged:\n{log}"
    );
    c.psql_direct(&db, "ALTER ROLE cat_dead LOGIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_encoding_other_than_utf8_is_refused_on_protected_tables() {
    let e = env("dp_encoding");
    let app = connect(&e.url("app_user")).await;
    app.batch_execute("INSERT INTO customers (id, email) VALUES (1, 'ann@example.com')")
        .await
        .unwrap();
    let url = e.url("app_user");
    let latin1 = format!("{url} client_encoding=LATIN1");
    // A LATIN1 session: statements on protected tables are refused with the fix, others run.
    let (ok, _, err) = psql(&latin1, &["-c", "SELECT email FROM customers"]);
    assert!(!ok && err.contains("client_encoding UTF8"), "{err}");
    let (ok, out, err) = psql(&latin1, &["-c", "SELECT 1"]);
    assert!(ok && out == "1\n", "{err}");
    // Switching in the same string as the statement: refused too (read before the server switches).
    let (ok, _, err) = psql(
        &url,
        &[
            "-c",
            "SET client_encoding TO 'LATIN1'; INSERT INTO customers (id, email) VALUES (2, 'x@y.z')",
        ],
    );
    assert!(!ok && err.contains("client_encoding UTF8"), "{err}");
    // Back to UTF-8 (and a failed switch) leaves the session usable.
    let (ok, out, err) = psql(
        &latin1,
        &[
            "-c",
            "SET client_encoding TO 'UTF8'",
            "-c",
            "SELECT email FROM customers WHERE id = 1",
        ],
    );
    assert!(ok && out.ends_with("ann@example.com\n"), "{out} {err}");
    let (_, out, err) = psql(
        &url,
        &[
            "-c",
            "SET client_encoding TO 'NO_SUCH_ENCODING'",
            "-c",
            "SELECT email FROM customers WHERE id = 1",
        ],
    );
    assert!(
        err.contains("NO_SUCH_ENCODING") && out.ends_with("ann@example.com\n"),
        "{out} {err}"
    );
    assert_eq!(e.direct("SELECT count(*) FROM customers"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_made_by_another_session_is_seen_by_statements_already_sent() {
    let e = env("dp_lateview");
    e.direct("GRANT CREATE ON SCHEMA public TO PUBLIC");
    let app = connect(&e.url("app_user")).await;
    app.batch_execute("INSERT INTO customers (id, email) VALUES (1, 'ann@example.com')")
        .await
        .unwrap();
    // Sent (and remembered as needing no analysis) before the view exists: the server refuses it.
    let insert = "INSERT INTO later_view (id, email) VALUES ($1, $2)";
    let err = app.execute(insert, &[&2i32, &"x@y.z"]).await.unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("42P01"),
        "{}",
        error_text(&err)
    );
    // Transactions in between do not reload the catalog, nor make pgcloak forget anything.
    app.batch_execute("BEGIN; COMMIT").await.unwrap();
    // Another session makes the view through pgcloak.
    let other = connect(&e.url("app_user")).await;
    other
        .batch_execute(
            "CREATE VIEW later_view AS SELECT id, email FROM customers; \
             GRANT ALL ON later_view TO PUBLIC",
        )
        .await
        .unwrap();
    // The same statement again: now refused, and nothing reached the table.
    let err = app.execute(insert, &[&2i32, &"x@y.z"]).await.unwrap_err();
    assert_refused(&err, "write to the table itself");
    assert_eq!(e.direct("SELECT count(*) FROM customers"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertext_copied_into_another_column_does_not_decrypt() {
    let e = env("dp_copycol");
    let app = connect(&e.url("app_user")).await;
    app.batch_execute("INSERT INTO customers VALUES (1, 'ann@example.com', '+1 555 0100', '111-22-3333', 5000, 'vip')").await.unwrap();
    // A superuser moves the email ciphertext into the phone column, bypassing the proxy.
    e.direct("UPDATE customers SET phone = email WHERE id = 1");
    let r = rows(
        &app.simple_query("SELECT phone FROM customers WHERE id = 1")
            .await
            .unwrap(),
    );
    let v = r[0][0].clone().unwrap_or_default();
    assert!(
        !v.contains("ann@example"),
        "copied ciphertext decrypted in another column: {v}"
    );
    // And into an unprotected column: stays ciphertext.
    e.direct("INSERT INTO other SELECT id, email FROM customers");
    let r = rows(&app.simple_query("SELECT copy FROM other").await.unwrap());
    assert!(r[0][0].clone().unwrap_or_default().starts_with("pgc1:"));
}

/// Python drivers: psycopg (text, pipeline) and asyncpg (binary, prepared) write and read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_asyncpg_round_trip_encrypted_columns() {
    let e = env("dp_python");
    let dsn = format!(
        "postgresql://app_user:app-pw@127.0.0.1:{}/{}?sslmode=disable",
        e.proxy.port, e.db
    );
    let v = crate::clients::python("psycopg_encrypted", &e.url("app_user"));
    assert_eq!(v["email"], "p1@example.com");
    assert_eq!(v["salary"], 4200);
    assert_eq!(v["pipeline"], 10);
    let v = crate::clients::python("asyncpg_encrypted", &dsn);
    assert_eq!(v["email"], "a5@example.com");
    assert_eq!(v["salary"], 5005);
    assert_eq!(v["count"], 20);
    assert_ciphertext_at_rest(&e, 101);
    assert_ciphertext_at_rest(&e, 205);
    let _ = Duration::from_secs(0);
    let _: Option<&Cluster> = None;
}

/// Regression guard for the per-session cache of recent Parse analyses: a statement the session
/// already parsed (and that named no protected table then) is analysed again once a reloaded policy
/// protects its table — the cache never outlives the policy it was filled under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_applies_to_statements_the_session_already_parsed() {
    let e = env("dp_reparse");
    e.direct("INSERT INTO other VALUES (1, 'visible')");
    let plain = connect(&e.url("plain_user")).await;
    let sql = "SELECT copy FROM other WHERE id = $1";
    for _ in 0..3 {
        let r = plain.query(sql, &[&1i32]).await.unwrap();
        assert_eq!(r[0].get::<_, String>(0), "visible");
    }
    let policy =
        format!("{POLICY}\n[[column]]\nname = \"public.other.copy\"\nclass = \"confidential\"\n");
    std::fs::write(e.proxy.dir.path().join("policy.toml"), policy).unwrap();
    e.proxy.signal("HUP");
    let mut refused = None;
    for _ in 0..100 {
        match plain.query(sql, &[&1i32]).await {
            Ok(r) => assert_eq!(r[0].get::<_, String>(0), "visible"),
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = refused.expect("the reloaded policy never applied to the re-parsed statement");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err:?}");
    assert!(
        error_text(&err).contains("pgcloak:"),
        "{}",
        error_text(&err)
    );
    // The session stays usable.
    let n: i32 = plain.query_one("SELECT 1::int4", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

/// `max_rows` exceeded inside an explicit transaction block aborts the block, exactly as any error
/// does in PostgreSQL (it used to leave the block open: the server had run the statement and knew of
/// no error) — in the simple and the extended protocol; outside a block the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rows_exceeded_inside_a_transaction_block_aborts_it() {
    let e = env("dp_maxrows_tx");
    let app = connect(&e.url("app_user")).await;
    let ins = app
        .prepare("INSERT INTO customers (id, email) VALUES ($1, $2)")
        .await
        .unwrap();
    for i in 1..=60i32 {
        app.execute(&ins, &[&i, &format!("t{i}@example.com")])
            .await
            .unwrap();
    }
    let support = connect(&e.url("support_user")).await;
    let code = |r: Result<_, tokio_postgres::Error>| {
        r.err()
            .and_then(|e| e.code().map(|c| c.code().to_string()))
            .unwrap_or_else(|| "ok".into())
    };

    // Simple protocol.
    support.batch_execute("BEGIN").await.unwrap();
    let r = support.simple_query("SELECT email FROM customers").await;
    assert_eq!(code(r.map(|_| ())), "42501");
    let r = support.simple_query("SELECT 1").await;
    assert_eq!(code(r.map(|_| ())), "25P02", "the block must be aborted");
    support.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        code(support.simple_query("SELECT 1").await.map(|_| ())),
        "ok"
    );

    // Extended protocol (Parse/Bind/Execute/Sync in one go).
    support.batch_execute("BEGIN").await.unwrap();
    let r = support.query("SELECT email FROM customers", &[]).await;
    assert_eq!(code(r.map(|_| ())), "42501");
    let r = support.query("SELECT 1::int4", &[]).await;
    assert_eq!(code(r.map(|_| ())), "25P02", "the block must be aborted");
    support.batch_execute("ROLLBACK").await.unwrap();

    // Outside a block: refused, and the next statements run normally.
    let r = support.query("SELECT email FROM customers", &[]).await;
    assert_eq!(code(r.map(|_| ())), "42501");
    let n: i32 = support
        .query_one("SELECT 7::int4", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
    let r = support
        .query("SELECT email FROM customers WHERE id <= 10", &[])
        .await
        .unwrap();
    assert_eq!(r.len(), 10);
    // A pipelined batch behind a limited statement is not held forever.
    let (a, b) = tokio::join!(
        support.query("SELECT email FROM customers WHERE id <= 5", &[]),
        support.query("SELECT 8::int4", &[])
    );
    assert_eq!(a.unwrap().len(), 5);
    assert_eq!(b.unwrap()[0].get::<_, i32>(0), 8);
}

/// `max_rows` holds for rows read through a cursor as for a plain statement: `FETCH 1000` from a
/// cursor over a classified column returns the allowed rows, then 42501 (and aborts the block), in
/// the simple and the extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rows_limits_a_cursor_fetch_like_a_plain_statement() {
    let e = env("dp_maxrows_cursor");
    let app = connect(&e.url("app_user")).await;
    let ins = app
        .prepare("INSERT INTO customers (id, phone) VALUES ($1, $2)")
        .await
        .unwrap();
    for i in 1..=80i32 {
        app.execute(&ins, &[&i, &format!("+44 20 7946 {i:04}")])
            .await
            .unwrap();
    }
    let support = connect(&e.url("support_user")).await;
    support
        .batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT phone FROM customers")
        .await
        .unwrap();
    let msgs = support.simple_query("FETCH 1000 FROM c").await;
    let err = msgs.expect_err("a FETCH past max_rows is refused");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    assert!(crate::harness::error_text(&err).contains("50"), "{err}");
    let r = support.simple_query("SELECT 1").await;
    assert_eq!(
        r.err().and_then(|e| e.code().map(|c| c.code().to_string())),
        Some("25P02".into())
    );
    support.batch_execute("ROLLBACK").await.unwrap();
    // The same through the extended protocol.
    support
        .batch_execute("BEGIN; DECLARE e CURSOR FOR SELECT phone FROM customers")
        .await
        .unwrap();
    let err = support
        .query("FETCH 1000 FROM e", &[])
        .await
        .expect_err("refused in the extended protocol too");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    support.batch_execute("ROLLBACK").await.unwrap();
    // Within the limit a FETCH is served, masked.
    support
        .batch_execute("BEGIN; DECLARE d CURSOR FOR SELECT phone FROM customers ORDER BY id")
        .await
        .unwrap();
    let rows: Vec<String> = support
        .simple_query("FETCH 20 FROM d")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|p| p.starts_with("****")), "{rows:?}");
    support.batch_execute("COMMIT").await.unwrap();
}
