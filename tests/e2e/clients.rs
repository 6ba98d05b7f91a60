//! Real clients through the proxy behave as if connected directly: simple and extended protocol,
//! binary types, pipelining, COPY, cancel, cursors, large rows, notifications, psql and pgbench.

use std::time::Duration;

use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::types::Type;

use crate::harness::{cluster, connect, psql, Proxy, ProxyOptions};

#[tokio::test]
async fn tokio_postgres_simple_and_extended_queries() {
    let c = cluster();
    let db = c.fresh_db("tp_basic");
    let p = Proxy::start();
    let client = connect(&p.alice(&db)).await;
    client
        .batch_execute("CREATE TABLE t (id int primary key, name text, score float8, born date, data jsonb, raw bytea); INSERT INTO t VALUES (1, 'one', 1.5, '2000-01-02', '{\"a\":1}', '\\x0102')")
        .await
        .unwrap();
    // Simple protocol, multi-statement.
    let msgs = client
        .simple_query("SELECT 1; SELECT name FROM t")
        .await
        .unwrap();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec!["1", "one"]);
    // Extended protocol with binary parameters and results.
    let row = client
        .query_one(
            "SELECT id, name, score, born, data, raw FROM t WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), "one");
    assert_eq!(row.get::<_, f64>(2), 1.5);
    assert_eq!(
        row.get::<_, serde_json::Value>(4),
        serde_json::json!({"a": 1})
    );
    assert_eq!(row.get::<_, Vec<u8>>(5), vec![1u8, 2]);
    // Prepared statement reused with new parameters.
    let stmt = client
        .prepare_typed(
            "INSERT INTO t (id, name) VALUES ($1, $2)",
            &[Type::INT4, Type::TEXT],
        )
        .await
        .unwrap();
    for i in 2..20i32 {
        client
            .execute(&stmt, &[&i, &format!("n{i}")])
            .await
            .unwrap();
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 19);
    // Errors then recovery in the same session.
    let err = client
        .query("SELECT * FROM missing_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn tokio_postgres_pipelining_many_statements_before_sync() {
    let c = cluster();
    let db = c.fresh_db("tp_pipeline");
    let p = Proxy::start();
    let client = connect(&p.alice(&db)).await;
    client
        .batch_execute("CREATE TABLE p (id int)")
        .await
        .unwrap();
    let stmt = client
        .prepare("INSERT INTO p VALUES ($1) RETURNING id")
        .await
        .unwrap();
    // tokio-postgres pipelines concurrently issued queries on one connection.
    let futs: Vec<_> = (0..200i32)
        .map(|i| {
            let client = &client;
            let stmt = &stmt;
            async move {
                client
                    .query_one(stmt, &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            }
        })
        .collect();
    let results = futures_util::future::join_all(futs).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i32);
    }
    // A failing statement in the middle of a pipeline fails alone.
    let a = client.query_one("SELECT 1::int", &[]);
    let b = client.query_one("SELECT 1/0", &[]);
    let d = client.query_one("SELECT 3::int", &[]);
    let (a, b, d) = tokio::join!(a, b, d);
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap_err().code().unwrap().code(), "22012");
    assert_eq!(d.unwrap().get::<_, i32>(0), 3);
}

#[tokio::test]
async fn tokio_postgres_copy_in_and_out() {
    let c = cluster();
    let db = c.fresh_db("tp_copy");
    let p = Proxy::start();
    let client = connect(&p.alice(&db)).await;
    client
        .batch_execute("CREATE TABLE c (id int, v text)")
        .await
        .unwrap();
    let sink = client
        .copy_in("COPY c FROM STDIN (FORMAT csv)")
        .await
        .unwrap();
    pin_mut!(sink);
    let mut data = String::new();
    for i in 0..10_000 {
        data.push_str(&format!("{i},value {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 10_000);
    let out = client
        .copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT (FORMAT csv)")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = out.try_collect().await.unwrap();
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).to_string())
        .collect();
    assert_eq!(text, data);
    // A COPY that fails mid-stream leaves the session usable.
    let sink = client
        .copy_in("COPY c FROM STDIN (FORMAT csv)")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number,x\n"))
        .await
        .unwrap();
    assert!(sink.finish().await.is_err());
    let n: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10_000);
}

/// Runs `pg_sleep(30)` on `client` and cancels it with the client's cancel token 300 ms later: the
/// query must fail with 57014 well before it would have finished.
async fn cancel_a_running_sleep(client: &tokio_postgres::Client) {
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let err = client
        .simple_query("SELECT pg_sleep(30)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014", "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap().unwrap();
}

#[tokio::test]
async fn tokio_postgres_cancel_reaches_the_server() {
    let c = cluster();
    let db = c.fresh_db("tp_cancel");
    let p = Proxy::start();
    let client = connect(&p.alice(&db)).await;
    cancel_a_running_sleep(&client).await;
    // The session survives the cancel.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// A fleet behind a load balancer: the cancel connection lands on another instance than the session,
/// which passes it on to the instance named in the key (`peer_id`, `[peers]`).
#[tokio::test]
async fn cancel_reaches_the_session_through_another_fleet_instance() {
    let c = cluster();
    let db = c.fresh_db("tp_cancel_fleet");
    let a = Proxy::start_with(ProxyOptions {
        extra: "peer_id = 1\n".into(),
        ..Default::default()
    });
    let b = Proxy::start_with(ProxyOptions {
        extra: format!("peer_id = 2\n[peers]\n1 = \"127.0.0.1:{}\"\n", a.port),
        ..Default::default()
    });
    // A round-robin "load balancer": the first connection goes to a, the next to b.
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb_port = lb.local_addr().unwrap().port();
    let targets = [a.port, b.port];
    tokio::spawn(async move {
        for i in 0.. {
            let Ok((mut inbound, _)) = lb.accept().await else {
                return;
            };
            let port = targets[i % 2];
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let url = a
        .alice(&db)
        .replace(&format!("port={}", a.port), &format!("port={lb_port}"));
    let client = connect(&url).await;
    cancel_a_running_sleep(&client).await;
    assert!(
        b.log_text()
            .contains("passed on to the instance that issued its key"),
        "instance b did not pass the cancel on"
    );
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn cancel_with_a_wrong_key_is_ignored() {
    let p = Proxy::start();
    let db = cluster().fresh_db("tp_cancel_wrong");
    let client = connect(&p.alice(&db)).await;
    // Forge a cancel request with a random key: the running query must not be cancelled.
    let port = p.port;
    let forged = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        use tokio::io::AsyncWriteExt;
        let mut pkt = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        pkt.extend_from_slice(&12345u32.to_be_bytes());
        pkt.extend_from_slice(&[9, 9, 9, 9]);
        s.write_all(&pkt).await.unwrap();
    });
    let rows = client.simple_query("SELECT pg_sleep(1)").await;
    assert!(
        rows.is_ok(),
        "query was cancelled by a forged key: {rows:?}"
    );
    forged.await.unwrap();
}

#[tokio::test]
async fn cursors_notifications_and_large_rows() {
    let c = cluster();
    let db = c.fresh_db("tp_misc");
    let p = Proxy::start();
    let client = connect(&p.alice(&db)).await;
    // Server-side cursor in a transaction.
    client
        .batch_execute("BEGIN; DECLARE cur CURSOR FOR SELECT g FROM generate_series(1, 100) g")
        .await
        .unwrap();
    let rows = client.query("FETCH 10 FROM cur", &[]).await.unwrap();
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[9].get::<_, i32>(0), 10);
    client.batch_execute("CLOSE cur; COMMIT").await.unwrap();
    // Portal with a row limit (PortalSuspended) through a transaction.
    let mut tx_client = connect(&p.alice(&db)).await;
    let tx = tx_client.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT g FROM generate_series(1, 25) g")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut total = 0;
    loop {
        let chunk = tx.query_portal(&portal, 10).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        total += chunk.len();
    }
    assert_eq!(total, 25);
    tx.commit().await.unwrap();
    // NOTICE and NOTIFY.
    let (nclient, mut conn) = tokio_postgres::connect(&p.alice(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx_msgs, mut rx_msgs) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(stream.for_each(move |m| {
        if let Ok(m) = m {
            let _ = tx_msgs.send(format!("{m:?}"));
        }
        futures_util::future::ready(())
    }));
    nclient
        .batch_execute("LISTEN chan; NOTIFY chan, 'hello'; DO $$BEGIN RAISE NOTICE 'note-1'; END$$")
        .await
        .unwrap();
    let mut seen = String::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), rx_msgs.recv()).await {
        seen.push_str(&m);
        if seen.contains("hello") && seen.contains("note-1") {
            break;
        }
    }
    assert!(seen.contains("hello") && seen.contains("note-1"), "{seen}");
    // A 120 MB row in both directions.
    let big: String = "x".repeat(120 * 1024 * 1024);
    client
        .batch_execute("CREATE TABLE big (v text)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO big VALUES ($1)", &[&big])
        .await
        .unwrap();
    let row = client
        .query_one("SELECT v, length(v) FROM big", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1), 120 * 1024 * 1024);
    assert_eq!(row.get::<_, String>(0).len(), big.len());
}

#[test]
fn psql_commands_copy_multi_statement_and_error_recovery() {
    let c = cluster();
    let db = c.fresh_db("psql_basic");
    let p = Proxy::start();
    let url = p.alice(&db);
    let (ok, out, err) = psql(
        &url,
        &[
            "-c",
            "CREATE TABLE x (a int, b text)",
            "-c",
            "INSERT INTO x VALUES (1,'a'),(2,'b')",
            "-c",
            "SELECT count(*) FROM x",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.trim().ends_with('2'), "{out}");
    // \copy in and out.
    let csv = p.dir.path().join("in.csv");
    std::fs::write(&csv, "3,c\n4,d\n").unwrap();
    let (ok, _, err) = psql(
        &url,
        &["-c", &format!("\\copy x FROM '{}' CSV", csv.display())],
    );
    assert!(ok, "{err}");
    let outcsv = p.dir.path().join("out.csv");
    let (ok, _, err) = psql(
        &url,
        &[
            "-c",
            &format!(
                "\\copy (SELECT * FROM x ORDER BY a) TO '{}' CSV",
                outcsv.display()
            ),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(&outcsv).unwrap(),
        "1,a\n2,b\n3,c\n4,d\n"
    );
    // Multi-statement string: one implicit transaction; an error rolls back the whole string.
    let (ok, _, err) = psql(
        &url,
        &[
            "-c",
            "INSERT INTO x VALUES (5,'e'); SELECT 1/0; INSERT INTO x VALUES (6,'f')",
        ],
    );
    assert!(!ok);
    assert!(err.contains("division by zero"), "{err}");
    let (_, out, _) = psql(&url, &["-c", "SELECT count(*) FROM x"]);
    assert_eq!(out.trim(), "4");
    // Errors inside a script, then recovery in the same session.
    let script = "BEGIN;\nSELECT * FROM nope;\nROLLBACK;\nSELECT 'recovered';\n";
    let (_, out, err) = psql(&url, &["-c", script]);
    let _ = (out, err);
    let f = p.dir.path().join("s.sql");
    std::fs::write(&f, script).unwrap();
    let (ok, out, err) = psql(&url, &["-f", f.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(out.contains("recovered"), "{out}");
}

fn pgbench(url_args: &[String], args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("pgbench")
        .args(url_args)
        .args(args)
        .output()
        .expect("pgbench not found");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn pgbench_init_select_only_all_modes_and_tpcb() {
    let c = cluster();
    let db = c.fresh_db("pgbench");
    let p = Proxy::start();
    let conn = vec![
        "-h".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        p.port.to_string(),
        "-U".into(),
        "alice".into(),
    ];
    let env_pw = [("PGPASSWORD", "alice-pw")];
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new("pgbench");
        cmd.args(&conn).args(args).arg(&db);
        for (k, v) in env_pw {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("pgbench not found");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let _ = pgbench;
    let (ok, text) = run(&["-i", "-s", "1", "-q"]);
    assert!(ok, "{text}");
    for mode in ["simple", "extended", "prepared"] {
        let (ok, text) = run(&["-S", "-M", mode, "-c", "4", "-j", "2", "-t", "300"]);
        assert!(ok, "{mode}: {text}");
        assert!(
            text.contains("number of failed transactions: 0"),
            "{mode}: {text}"
        );
        assert!(
            text.contains("number of transactions actually processed: 1200/1200"),
            "{mode}: {text}"
        );
    }
    let (ok, text) = run(&["-c", "4", "-j", "2", "-t", "100"]);
    assert!(ok, "{text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    assert!(text.contains("400/400"), "{text}");
}

pub fn python(scenario: &str, dsn: &str) -> serde_json::Value {
    let py = crate::harness::venv_python();
    assert!(
        py.exists(),
        "{} missing: run scripts/test (it creates the venv with psycopg and asyncpg)",
        py.display()
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/clients.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .arg(scenario)
        .arg(dsn)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{scenario} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn psycopg_text_binary_pipeline_copy() {
    let c = cluster();
    let db = c.fresh_db("psycopg");
    let p = Proxy::start();
    let v = python("psycopg_basic", &p.alice(&db));
    assert_eq!(v["name"], "name 7");
    assert_eq!(v["amount"], "10.5");
    assert_eq!(v["binary"], serde_json::json!([9, "name 9"]));
    assert_eq!(v["pipeline"], (0..100).map(|i| i * 2).sum::<i64>());
    assert_eq!(v["error"], "22012");
    assert_eq!(v["after"], 50);
    assert_eq!(v["copy"], serde_json::json!((100..110).collect::<Vec<_>>()));
}

#[test]
fn asyncpg_binary_prepared_cursor_copy() {
    let c = cluster();
    let db = c.fresh_db("asyncpg");
    let p = Proxy::start();
    let dsn = format!(
        "postgresql://alice:alice-pw@127.0.0.1:{}/{db}?sslmode=disable",
        p.port
    );
    let v = python("asyncpg_basic", &dsn);
    assert_eq!(
        v["row"],
        serde_json::json!([5, "n5", 2.5, "2000-01-06", ["a", "5"]])
    );
    assert_eq!(v["sum"], (0..20).map(|i| 100.0 + i as f64).sum::<f64>());
    assert_eq!(v["cursor"], serde_json::json!((0..20).collect::<Vec<_>>()));
    assert_eq!(v["error"], "42P01");
    assert_eq!(v["after"], 42);
    assert_eq!(v["count"], 21);
}
