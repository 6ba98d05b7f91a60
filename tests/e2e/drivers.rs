//! Drivers and ORMs as they really talk: cached server-side prepared statements executed with only
//! Bind and Execute (pgJDBC after `prepareThreshold`, asyncpg, Npgsql, pgx, postgres.js), the real
//! process id behind `pg_backend_pid()`, and the driver matrix.

use crate::dataplane::env;
use crate::harness::connect;
use crate::wire::{self, bind, data_rows, describe, execute, parse, query, sync, tags, Wire};

const SELECT: &str = "SELECT email, salary FROM customers WHERE id = $1";

async fn seeded(name: &str) -> crate::dataplane::Env {
    let e = env(name);
    let app = connect(&e.url("app_user")).await;
    app.batch_execute(
        "INSERT INTO customers (id, email, phone, ssn, salary) VALUES \
         (1, 'ann@example.com', '+1 555 0100', '111-22-3333', 5000)",
    )
    .await
    .unwrap();
    e
}

fn text(v: &Option<Vec<u8>>) -> &str {
    std::str::from_utf8(v.as_deref().expect("NULL")).unwrap()
}

/// pgJDBC's pattern: the first execution describes the portal, later ones send Bind + Execute only.
/// The rows of those later executions used to pass through as stored (`pgc1:...`, a raw envelope).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_prepared_statement_executed_without_describe_are_decrypted() {
    let e = seeded("drv_nodescribe").await;
    let mut w = Wire::connect(e.proxy.port, "trust_app", &e.db).await;

    // First execution: Parse, Bind, Describe portal, Execute.
    let first = w
        .roundtrip(&[
            parse("S_1", SELECT, &[23]),
            bind("", "S_1", &[Some("1")], &[]),
            describe(b'P', ""),
            execute(""),
            sync(),
        ])
        .await;
    assert_eq!(tags(&first), "12TDCZ", "{first:?}");
    let rows = data_rows(&first);
    assert_eq!(text(&rows[0][0]), "ann@example.com");
    assert_eq!(text(&rows[0][1]), "5000");

    // Later executions: Bind + Execute only, in text and in binary result format.
    for _ in 0..3 {
        let again = w
            .roundtrip(&[bind("", "S_1", &[Some("1")], &[]), execute(""), sync()])
            .await;
        assert_eq!(tags(&again), "2DCZ", "{again:?}");
        let rows = data_rows(&again);
        assert_eq!(text(&rows[0][0]), "ann@example.com");
        assert_eq!(text(&rows[0][1]), "5000");
    }
    let binary = w
        .roundtrip(&[bind("", "S_1", &[Some("1")], &[1]), execute(""), sync()])
        .await;
    let rows = data_rows(&binary);
    assert_eq!(rows[0][0].as_deref(), Some(&b"ann@example.com"[..]));
    assert_eq!(rows[0][1].as_deref(), Some(&5000i32.to_be_bytes()[..]));
}

/// A statement nobody ever described: pgcloak asks the server itself, and the client sees only the
/// answers to what it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_statement_never_described_are_decrypted_and_the_injected_describe_is_invisible()
{
    let e = seeded("drv_neverdescribed").await;
    let mut w = Wire::connect(e.proxy.port, "trust_app", &e.db).await;
    for round in 0..3 {
        let msgs = w
            .roundtrip(&[
                parse("", SELECT, &[23]),
                bind("", "", &[Some("1")], &[0, 1]),
                execute(""),
                sync(),
            ])
            .await;
        assert_eq!(tags(&msgs), "12DCZ", "round {round}: {msgs:?}");
        let rows = data_rows(&msgs);
        assert_eq!(text(&rows[0][0]), "ann@example.com");
        assert_eq!(rows[0][1].as_deref(), Some(&5000i32.to_be_bytes()[..]));
    }
    // Named, pipelined with writes that return no rows (NoData is swallowed too).
    let msgs = w
        .roundtrip(&[
            parse(
                "ins",
                "INSERT INTO customers (id, email, salary) VALUES ($1, $2, $3)",
                &[],
            ),
            bind(
                "",
                "ins",
                &[Some("2"), Some("bo@example.com"), Some("6100")],
                &[],
            ),
            execute(""),
            bind(
                "",
                "ins",
                &[Some("3"), Some("cy@example.com"), Some("7200")],
                &[],
            ),
            execute(""),
            parse(
                "sel",
                "SELECT id, email, salary FROM customers ORDER BY id",
                &[],
            ),
            bind("", "sel", &[], &[]),
            execute(""),
            sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "12C2C12DDDCZ", "{msgs:?}");
    let rows = data_rows(&msgs);
    let got: Vec<(&str, &str)> = rows.iter().map(|r| (text(&r[1]), text(&r[2]))).collect();
    assert_eq!(
        got,
        [
            ("ann@example.com", "5000"),
            ("bo@example.com", "6100"),
            ("cy@example.com", "7200")
        ]
    );
    let at_rest = e.direct("SELECT email FROM customers WHERE id = 3");
    assert!(at_rest.starts_with("pgc1:"), "{at_rest}");
}

/// A Describe the server skips (an earlier message failed) sets no row shape; the next execution
/// asks again instead of passing rows through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_skipped_after_an_error_is_asked_for_again() {
    let e = seeded("drv_skipped").await;
    let mut w = Wire::connect(e.proxy.port, "trust_app", &e.db).await;
    let prep = w.roundtrip(&[parse("s", SELECT, &[23]), sync()]).await;
    assert_eq!(tags(&prep), "1Z");
    // The Bind fails (not an integer): Describe and Execute are skipped by the server.
    let failed = w
        .roundtrip(&[
            bind("", "s", &[Some("not a number")], &[]),
            describe(b'P', ""),
            execute(""),
            sync(),
        ])
        .await;
    assert_eq!(tags(&failed), "EZ", "{failed:?}");
    let ok = w
        .roundtrip(&[bind("", "s", &[Some("1")], &[]), execute(""), sync()])
        .await;
    assert_eq!(tags(&ok), "2DCZ", "{ok:?}");
    assert_eq!(text(&data_rows(&ok)[0][0]), "ann@example.com");
    assert!(
        wire::error(&failed).is_some_and(|m| m.contains("integer")),
        "{failed:?}"
    );
}

/// The process id a client gets is the server's: `pg_backend_pid()`, `pg_stat_activity` and a
/// notification's sender match the connection, and `pg_terminate_backend` of it ends that session.
/// The secret stays pgcloak's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_the_servers_process_id_with_a_secret_of_pgcloaks_own() {
    let e = seeded("drv_pid").await;
    let mut w = Wire::connect(e.proxy.port, "trust_app", &e.db).await;
    let (pid, secret) = w.key.clone();
    let msgs = w.roundtrip(&[query("SELECT pg_backend_pid()")]).await;
    assert_eq!(text(&data_rows(&msgs)[0][0]), pid.to_string());
    let activity = e.direct(&format!(
        "SELECT usename FROM pg_stat_activity WHERE pid = {pid}"
    ));
    assert_eq!(activity.trim(), "trust_app");

    // A notification names the sending backend: the listener recognises its own.
    let msgs = w
        .roundtrip(&[query("LISTEN chan; NOTIFY chan, 'hi'")])
        .await;
    let (_, note) = msgs.iter().find(|m| m.0 == b'A').expect("no notification");
    assert_eq!(u32::from_be_bytes(note[..4].try_into().unwrap()), pid);

    // The server's secret is never handed out: a cancel with pgcloak's secret straight to the
    // server is ignored, the same key through pgcloak cancels.
    assert_eq!(secret.len(), 4);
    let cancel = |port: u16| {
        let secret = secret.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let mut pkt = 16u32.to_be_bytes().to_vec();
            pkt.extend_from_slice(&80877102u32.to_be_bytes());
            pkt.extend_from_slice(&pid.to_be_bytes());
            pkt.extend_from_slice(&secret);
            s.write_all(&pkt).await.unwrap();
        }
    };
    w.send(&[query("SELECT pg_sleep(2)")]).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cancel(crate::harness::cluster().port).await;
    let slept = w.until_ready().await;
    assert!(
        wire::error(&slept).is_none(),
        "the server took pgcloak's secret: {slept:?}"
    );
    w.send(&[query("SELECT pg_sleep(30)")]).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cancel(e.proxy.port).await;
    let cancelled = w.until_ready().await;
    assert!(
        wire::error(&cancelled).is_some_and(|m| m.contains("cancel")),
        "{cancelled:?}"
    );

    // pg_terminate_backend(<the pid the client saw>) ends that session.
    let killed = e.direct(&format!("SELECT pg_terminate_backend({pid})"));
    assert_eq!(killed.trim(), "t");
    let (tag, body) = w.recv().await;
    assert_eq!(tag, b'E');
    assert!(
        String::from_utf8_lossy(&body).contains("57P01"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// Every equality form a driver or ORM sends keeps matching rows written under an older key version
/// after `keys rotate`, including statements prepared before the rotation and executed after it
/// (drivers cache them for the life of the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_equality_form_matches_rows_of_older_key_versions_after_rotation() {
    let e = env("drv_rotation");
    let app = connect(&e.url("app_user")).await;
    app.batch_execute(
        "INSERT INTO customers (id, email, phone) VALUES \
         (1, 'a@example.com', '+1 555 0001'), (2, 'b@example.com', '+1 555 0002')",
    )
    .await
    .unwrap();
    // Prepared (and executed once) before the rotation, executed again after it.
    let cached_eq = app
        .prepare("SELECT count(*) FROM customers WHERE phone = $1")
        .await
        .unwrap();
    let cached_in = app
        .prepare("SELECT count(*) FROM customers WHERE phone IN ($1, $2)")
        .await
        .unwrap();
    let count = |r: tokio_postgres::Row| r.get::<_, i64>(0);
    assert_eq!(
        count(app.query_one(&cached_eq, &[&"+1 555 0001"]).await.unwrap()),
        1
    );
    assert_eq!(
        count(
            app.query_one(&cached_in, &[&"+1 555 0001", &"+1 555 0002"])
                .await
                .unwrap()
        ),
        2
    );

    let (ok, _, err) = e.proxy.cli(&["keys", "rotate", "public.customers.phone"]);
    assert!(ok, "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    app.batch_execute(
        "INSERT INTO customers (id, email, phone) VALUES (3, 'c@example.com', '+1 555 0003')",
    )
    .await
    .unwrap();

    let (old1, old2, new3) = ("+1 555 0001", "+1 555 0002", "+1 555 0003");
    let checks: Vec<(&str, i64)> = vec![
        (
            "cached `= $1`",
            count(app.query_one(&cached_eq, &[&old1]).await.unwrap()),
        ),
        (
            "cached `IN ($1, $2)`",
            count(app.query_one(&cached_in, &[&old1, &new3]).await.unwrap()),
        ),
        (
            "`= $1`",
            count(
                app.query_one("SELECT count(*) FROM customers WHERE phone = $1", &[&old2])
                    .await
                    .unwrap(),
            ),
        ),
        (
            "`IN ($1, $2)`",
            count(
                app.query_one(
                    "SELECT count(*) FROM customers WHERE phone IN ($1, $2)",
                    &[&old1, &old2],
                )
                .await
                .unwrap(),
            ),
        ),
        (
            "`IN ($1, 'literal', $2)`",
            count(
                app.query_one(
                    &format!("SELECT count(*) FROM customers WHERE phone IN ($1, '{old2}', $2)"),
                    &[&old1, &new3],
                )
                .await
                .unwrap(),
            ),
        ),
        (
            "`NOT IN ($1, $2)`",
            count(
                app.query_one(
                    "SELECT count(*) FROM customers WHERE phone NOT IN ($1, $2)",
                    &[&old1, &old2],
                )
                .await
                .unwrap(),
            ),
        ),
        (
            "`= ANY($1)` with an array",
            count(
                app.query_one(
                    "SELECT count(*) FROM customers WHERE phone = ANY($1)",
                    &[&vec![old1, old2, new3]],
                )
                .await
                .unwrap(),
            ),
        ),
        (
            "literal `IN`",
            count(
                app.query_one(
                    &format!("SELECT count(*) FROM customers WHERE phone IN ('{old1}', '{old2}')"),
                    &[],
                )
                .await
                .unwrap(),
            ),
        ),
        (
            "`<> $1`",
            count(
                app.query_one("SELECT count(*) FROM customers WHERE phone <> $1", &[&old1])
                    .await
                    .unwrap(),
            ),
        ),
    ];
    let expected = [1, 2, 1, 2, 3, 1, 3, 2, 2];
    let got: Vec<i64> = checks.iter().map(|c| c.1).collect();
    assert_eq!(got, expected, "{checks:?}");

    // Writes that find their row by an old-version value.
    let n = app
        .execute(
            "UPDATE customers SET email = $2 WHERE phone = $1",
            &[&old1, &"a2@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "UPDATE ... WHERE col = $1");
    let n = app
        .execute("DELETE FROM customers WHERE phone = $1", &[&old2])
        .await
        .unwrap();
    assert_eq!(n, 1, "DELETE ... WHERE col = $1");

    // Comparisons the server makes between two stored values (joins, `IN (subquery)`, unique
    // indexes) see each key version's ciphertext as another value, until `pgcloak reencrypt`
    // moves the old rows to the active version (README: Equality).
    app.execute(
        "INSERT INTO customers (id, email, phone) VALUES (5, 'e@example.com', $1)",
        &[&old1],
    )
    .await
    .unwrap();
    let self_join =
        "SELECT count(*) FROM customers a JOIN customers b ON a.phone = b.phone WHERE a.id < b.id";
    let in_subquery = "SELECT count(*) FROM customers WHERE id = 1 AND phone IN (SELECT phone FROM customers WHERE id = 5)";
    for sql in [self_join, in_subquery] {
        let n = count(app.query_one(sql, &[]).await.unwrap());
        assert_eq!(n, 0, "across key versions before reencrypt: {sql}");
    }
    // (reencrypt refuses a length-limited column, naming this fix.)
    e.direct("ALTER TABLE customers ALTER COLUMN phone TYPE text");
    let (ok, out, err) = e.proxy.cli(&[
        "reencrypt",
        "public.customers.phone",
        "--database",
        &e.db,
        "-q",
    ]);
    assert!(ok, "{out}{err}");
    for sql in [self_join, in_subquery] {
        let n = count(app.query_one(sql, &[]).await.unwrap());
        assert_eq!(n, 1, "after reencrypt: {sql}");
    }
}

/// ORMs cast every parameter (SQLAlchemy 2: `%(salary)s::INTEGER`): a cast to the column's logical
/// type on a value bound for an encrypted column is understood — the value is encrypted and the cast
/// removed, so the server stores the ciphertext — in INSERT, UPDATE SET and WHERE, as `$n::T` and
/// `CAST($n AS T)`, with literals too. A cast to another type is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_on_values_bound_for_encrypted_columns_are_understood() {
    let e = env("drv_casts");
    let app = connect(&e.url("app_user")).await;
    app.execute(
        "INSERT INTO customers (id, email, phone, salary) VALUES ($1::INTEGER, $2::VARCHAR, CAST($3 AS TEXT), $4::INTEGER)",
        &[&1i32, &"ann@example.com", &"+1 555 0100", &5000i32],
    )
    .await
    .unwrap();
    app.batch_execute(
        "INSERT INTO customers (id, email, salary) VALUES (2::INTEGER, 'bo@example.com'::VARCHAR, 6100::INTEGER)",
    )
    .await
    .unwrap();
    let n = app
        .execute(
            "UPDATE customers SET salary=$1::INTEGER WHERE customers.id = $2::INTEGER",
            &[&7000i32, &1i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let at_rest = e.direct("SELECT email, encode(salary, 'hex') FROM customers WHERE id = 1");
    assert!(at_rest.starts_with("pgc1:"), "{at_rest}");
    let rows = app
        .query(
            "SELECT customers.id, customers.salary FROM customers WHERE customers.email = $1::VARCHAR ORDER BY customers.id",
            &[&"ann@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(1), 7000);
    let n: i64 = app
        .query_one(
            "SELECT count(*) FROM customers WHERE email = CAST($1 AS TEXT) OR email = 'bo@example.com'::text",
            &[&"ann@example.com"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // SQLAlchemy's expanding IN with a cast per element.
    let n: i64 = app
        .query_one(
            "SELECT count(*) FROM customers WHERE customers.email IN ($1::VARCHAR, $2::VARCHAR)",
            &[&"ann@example.com", &"bo@example.com"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let err = app
        .execute(
            "UPDATE customers SET salary = $1::TEXT WHERE id = 1",
            &[&"7000"],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err:?}");
    let text = crate::harness::error_text(&err);
    assert!(
        text.contains("parameter $1") && text.contains("public.customers.salary"),
        "{text}"
    );
}

/// The bulk shapes drivers and ORMs use: Django 5's `bulk_create` (`INSERT ... SELECT * FROM
/// UNNEST($1::integer[], ...)`, arrays in binary and in text format, also after a rotation), a
/// 1,000-row multi-row VALUES with 5 parameters a row, and a pipelined `executemany`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_inserts_from_unnest_long_values_and_pipelines_are_encrypted() {
    let e = env("drv_bulk");
    let app = connect(&e.url("app_user")).await;
    let (ok, _, err) = e.proxy.cli(&["keys", "rotate", "public.customers.email"]);
    assert!(ok, "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    // Binary arrays (tokio-postgres), Django's parenthesised casts.
    let ids: Vec<i32> = (1..=50).collect();
    let emails: Vec<String> = ids.iter().map(|i| format!("u{i}@example.com")).collect();
    let salaries: Vec<i32> = ids.iter().map(|i| i * 100).collect();
    let n = app
        .execute(
            r#"INSERT INTO "customers" ("id", "email", "salary") SELECT * FROM UNNEST(($1)::integer[], ($2)::varchar[], ($3)::integer[])"#,
            &[&ids, &emails, &salaries],
        )
        .await
        .unwrap();
    assert_eq!(n, 50, "one row per element, not one per key version");
    // Text-format arrays (psycopg sends lists as text), through the raw protocol.
    let mut w = Wire::connect(e.proxy.port, "trust_app", &e.db).await;
    let msgs = w
        .roundtrip(&[
            parse(
                "",
                "INSERT INTO customers (id, email, salary) SELECT * FROM UNNEST($1::int[], $2::text[], $3::int[])",
                &[],
            ),
            bind(
                "",
                "",
                &[
                    Some("{51,52}"),
                    Some(r#"{"x@example.com","y \"q\"@example.com"}"#),
                    Some("{5100,NULL}"),
                ],
                &[],
            ),
            execute(""),
            sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "12CZ", "{msgs:?}");
    let at_rest = e.direct("SELECT count(*) FROM customers WHERE email LIKE 'pgc1:%' AND id <= 52");
    assert_eq!(at_rest.trim(), "52");
    let rows = app
        .query(
            "SELECT id, email, salary FROM customers WHERE email = ANY($1) ORDER BY id",
            &[&vec!["u7@example.com", "y \"q\"@example.com"]],
        )
        .await
        .unwrap();
    let got: Vec<(i32, String, Option<i32>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        [
            (7, "u7@example.com".to_string(), Some(700)),
            (52, "y \"q\"@example.com".to_string(), None)
        ]
    );

    // 1,000 rows x 5 parameters in one statement.
    let mut sql = String::from("INSERT INTO customers (id, email, phone, ssn, salary) VALUES ");
    let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = Vec::new();
    for r in 0..1000i32 {
        let b = r * 5;
        if r > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5
        ));
        let id = 1000 + r;
        params.push(Box::new(id));
        params.push(Box::new(format!("m{id}@example.com")));
        params.push(Box::new(format!("+1 555 {id}")));
        params.push(Box::new(format!("{id}-00-0000")));
        params.push(Box::new(id));
    }
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p.as_ref() as _).collect();
    assert_eq!(app.execute(sql.as_str(), &refs).await.unwrap(), 1000);

    // executemany as a pipeline: many Bind/Execute of one statement in flight at once.
    let ins = app
        .prepare("INSERT INTO customers (id, email, salary) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    let batch = (3000..3200).map(|i: i32| {
        let app = &app;
        let ins = &ins;
        async move {
            app.execute(ins, &[&i, &format!("p{i}@example.com"), &i])
                .await
        }
    });
    for r in futures_util::future::join_all(batch).await {
        assert_eq!(r.unwrap(), 1);
    }
    let total =
        e.direct("SELECT count(*), count(*) FILTER (WHERE email LIKE 'pgc1:%') FROM customers");
    assert_eq!(total.trim(), "1252|1252");
    let s: i64 = app
        .query_one(
            "SELECT count(*) FROM customers WHERE email IN ($1, $2, $3)",
            &[
                &"m1500@example.com",
                &"p3100@example.com",
                &"u1@example.com",
            ],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(s, 3);
}
