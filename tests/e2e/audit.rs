//! The audit trail end to end: a scripted mix of sessions produces exactly the expected events, no
//! literal or password reaches any sink, `audit verify` catches tampering, block mode refuses statements
//! while the PostgreSQL sink is down, drop mode counts and records a gap, NATS receives every event,
//! and a restart continues the chain.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    assert_refused, cluster, connect, error_text, psql, Proxy, ProxyOptions, SUPERPASS, SUPERUSER,
};

/// Classified but unencrypted columns: reads are allowed or refused without rewriting.
pub const AUDIT_POLICY: &str = r#"
[[column]]
name = "public.customers.email"
class = "confidential"

[[column]]
name = "public.customers.ssn"
class = "confidential"

[[column]]
name = "public.customers.notes"
class = "internal"

[[role]]
name = "app"
read = { confidential = "plaintext" }
write = ["confidential"]

[[role]]
name = "support"
read = { confidential = "deny" }

[default]
read = { confidential = "deny" }
"#;

fn setup_db(name: &str) -> String {
    let c = cluster();
    let db = c.fresh_db(name);
    c.psql_direct(
        &db,
        "CREATE TABLE customers (id int primary key, email text, ssn text, notes text); \
         INSERT INTO customers VALUES (1, 'ann@example.com', '111-22-3333', 'vip'), (2, 'bob@example.com', '444-55-6666', 'new'); \
         GRANT ALL ON customers TO PUBLIC",
    );
    db
}

fn url(p: &Proxy, user: &str, pw: &str, db: &str) -> String {
    p.url(user, pw, db)
}

fn events(p: &Proxy) -> Vec<Value> {
    let text = std::fs::read_to_string(p.dir.path().join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("checkpoint").is_none())
        .collect()
}

fn wait_for(p: &Proxy, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let ev = events(p);
        if pred(&ev) {
            return ev;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    events(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mix_produces_the_expected_events() {
    let db = setup_db("audit_mix");
    let p = Proxy::start_with(ProxyOptions {
        policy: Some(AUDIT_POLICY.into()),
        ..Default::default()
    });
    // app reads a classified column with a literal that must never be stored.
    let app = connect(&url(&p, "app_user", "app-pw", &db)).await;
    let rows = app
        .simple_query("SELECT email FROM customers WHERE email = 'ann@example.com'")
        .await
        .unwrap();
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    let n = app
        .execute(
            "UPDATE customers SET notes = $1 WHERE id = $2",
            &[&"secret-note-777", &2i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    drop(app);
    // support is denied a confidential column: the client gets 42501 and the session stays usable.
    let support = connect(&url(&p, "support_user", "support-pw", &db)).await;
    let err = support
        .simple_query("SELECT ssn FROM customers WHERE id = 1")
        .await
        .unwrap_err();
    assert_refused(&err, "pgcloak:");
    let ok = support
        .simple_query("SELECT notes FROM customers WHERE id = 1")
        .await
        .unwrap();
    assert!(ok
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    // Extended protocol refusal too.
    let err = support
        .query("SELECT ssn FROM customers WHERE id = $1", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    let one: i32 = support.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(support);
    // A wrong password.
    let (ok, _, _) = psql(
        &url(&p, "plain_user", "wrong-password-999", &db),
        &["-c", "select 1"],
    );
    assert!(!ok);

    let ev = wait_for(&p, |e| {
        e.iter().filter(|v| v["kind"] == "disconnect").count() >= 2
            && e.iter().any(|v| v["kind"] == "auth_failed")
    });
    let find = |pred: &dyn Fn(&Value) -> bool| ev.iter().find(|v| pred(v)).cloned();
    let connect_app =
        find(&|v| v["kind"] == "connect" && v["user"] == "app_user").expect("connect event");
    assert_eq!(connect_app["role"], "app");
    assert_eq!(connect_app["database"], db.as_str());
    let select = find(&|v| v["kind"] == "select" && v["user"] == "app_user").expect("select event");
    assert_eq!(select["decision"], "allow");
    assert_eq!(select["rows"], 1);
    assert_eq!(
        select["statement"],
        "SELECT email FROM customers WHERE email = $1"
    );
    assert_eq!(select["tables"], serde_json::json!(["public.customers"]));
    assert!(select["columns"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "public.customers.email" && c["class"] == "confidential"));
    assert!(select["duration_us"].as_u64().is_some());
    let update = find(&|v| v["kind"] == "update").expect("update event");
    assert_eq!(update["rows"], 1);
    let deny =
        find(&|v| v["decision"] == "deny" && v["user"] == "support_user").expect("deny event");
    assert_eq!(deny["sqlstate"], "42501");
    assert!(deny["reason"].as_str().unwrap().starts_with("pgcloak:"));
    assert!(deny["columns"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "public.customers.ssn" && c["access"] == "deny"));
    let failed = find(&|v| v["kind"] == "auth_failed").expect("auth_failed event");
    assert_eq!(failed["user"], "plain_user");
    assert_eq!(failed["sqlstate"], "28P01");
    // seq from 1 without gaps.
    let seqs: Vec<u64> = ev.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // No literal, parameter value or password anywhere in the file or the proxy's log.
    let raw = std::fs::read_to_string(p.dir.path().join("audit.jsonl")).unwrap();
    for secret in [
        "ann@example.com",
        "secret-note-777",
        "wrong-password-999",
        "app-pw",
        "support-pw",
        "111-22-3333",
    ] {
        assert!(!raw.contains(secret), "{secret} leaked into the audit file");
        let log = p.log_text();
        let line = log.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "{secret} leaked into the log: {line:?}");
    }
    // verify with the public key only.
    let (ok, key, _) = p.cli(&["keys", "audit-key"]);
    assert!(ok);
    let file = p.dir.path().join("audit.jsonl");
    let out = crate::harness::pgcloak(
        &[
            "audit",
            "verify",
            "--file",
            file.to_str().unwrap(),
            "--public-key",
            key.trim(),
            "--config",
            "/nonexistent.toml",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // query filters and formats.
    let (ok, out, err) = p.cli(&[
        "audit",
        "query",
        "--user",
        "support_user",
        "--decision",
        "deny",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.lines().count() >= 2 && out.lines().all(|l| l.contains("\"support_user\"")),
        "{out}"
    );
    let (ok, out, _) = p.cli(&[
        "audit",
        "query",
        "--column",
        "customers.email",
        "--format",
        "csv",
    ]);
    assert!(ok && out.lines().count() >= 2, "{out}");
    let (ok, out, _) = p.cli(&["audit", "query", "--summary", "--since", "2000-01-01"]);
    assert!(
        ok && out.contains("app_user") && out.contains("public.customers.email"),
        "{out}"
    );
}

/// Rewrites the audit file through `f` and runs verify.
fn verify_after(
    p: &Proxy,
    f: impl Fn(Vec<String>) -> Vec<String>,
    extra: &[&str],
) -> (bool, String) {
    let path = p.dir.path().join("audit.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let tampered = p.dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, f(lines).join("\n") + "\n").unwrap();
    let mut args = vec!["audit", "verify", "--file", tampered.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, out, err) = p.cli(&args);
    (ok, out + &err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_every_kind_of_tampering() {
    let db = setup_db("audit_tamper");
    let mut p = Proxy::start_with(ProxyOptions {
        policy: Some(AUDIT_POLICY.into()),
        extra: "[audit]\ncheckpoint_every = 5\n".into(),
        ..Default::default()
    });
    let app = connect(&url(&p, "app_user", "app-pw", &db)).await;
    for i in 0..12 {
        app.simple_query(&format!("SELECT notes FROM customers WHERE id = {i}"))
            .await
            .unwrap();
    }
    drop(app);
    // Stop cleanly: the final checkpoint covers everything.
    p.restart();
    let (ok, out) = verify_after(&p, |l| l, &[]);
    assert!(ok, "{out}");
    let event_idx = |lines: &[String], n: usize| {
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.contains("\"checkpoint\""))
            .nth(n)
            .unwrap()
            .0
    };
    // Edit a field.
    let (ok, out) = verify_after(
        &p,
        |mut l| {
            let i = event_idx(&l, 3);
            l[i] = l[i].replace("\"app_user\"", "\"mallory\"");
            l
        },
        &[],
    );
    assert!(!ok && out.contains("seq 4"), "{out}");
    // Delete a line.
    let (ok, out) = verify_after(
        &p,
        |mut l| {
            let i = event_idx(&l, 5);
            l.remove(i);
            l
        },
        &[],
    );
    assert!(!ok && out.contains("seq"), "{out}");
    // Swap two lines.
    let (ok, out) = verify_after(
        &p,
        |mut l| {
            let (a, b) = (event_idx(&l, 6), event_idx(&l, 7));
            l.swap(a, b);
            l
        },
        &[],
    );
    assert!(!ok, "{out}");
    // Insert a forged line (copy of another).
    let (ok, out) = verify_after(
        &p,
        |mut l| {
            let i = event_idx(&l, 2);
            let copy = l[i].clone();
            l.insert(i + 1, copy);
            l
        },
        &[],
    );
    assert!(!ok, "{out}");
    // Truncate before the last checkpoint: caught when the auditor names the checkpoint they saw.
    let last_cp: u64 = std::fs::read_to_string(p.dir.path().join("audit.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["checkpoint"]["seq"].as_u64())
        .max()
        .unwrap();
    let (ok, out) = verify_after(
        &p,
        |l| l[..l.len() / 2].to_vec(),
        &["--expect-checkpoint", &last_cp.to_string()],
    );
    assert!(!ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_continues_the_chain() {
    let db = setup_db("audit_restart");
    let mut p = Proxy::start_with(ProxyOptions {
        policy: Some(AUDIT_POLICY.into()),
        ..Default::default()
    });
    for _ in 0..2 {
        let app = connect(&url(&p, "app_user", "app-pw", &db)).await;
        app.simple_query("SELECT notes FROM customers")
            .await
            .unwrap();
        drop(app);
        p.restart();
    }
    let ev = events(&p);
    let seqs: Vec<u64> = ev.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(ev.iter().filter(|v| v["kind"] == "select").count() >= 2);
    let (ok, out, err) = p.cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
}

fn pg_audit_options(db: &str, mode: &str) -> ProxyOptions {
    let c = cluster();
    ProxyOptions {
        policy: Some(AUDIT_POLICY.into()),
        extra: format!(
            "[upstream_tls]\nmode = \"disable\"\n[catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"{db}\"\n[audit]\nfile = \"\"\npostgres = true\non_failure = \"{mode}\"\n"
        ),
        upstream_port: Some(c.port),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_mode_refuses_statements_while_the_postgres_sink_is_down() {
    let c = cluster();
    let db = setup_db("audit_block");
    let p = Proxy::start_with(pg_audit_options(&db, "block"));
    let app = connect(&url(&p, "app_user", "app-pw", &db)).await;
    app.simple_query("SELECT notes FROM customers")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Break the sink: inserts into the audit table now fail.
    c.psql_direct(
        &db,
        "ALTER TABLE pgcloak_audit.statements ADD CONSTRAINT broken CHECK (false) NOT VALID",
    );
    // The next event (this statement) exposes the failure; from then on statements are refused.
    let _ = app.simple_query("SELECT 1").await;
    let mut refused = None;
    for _ in 0..50 {
        match app
            .simple_query("INSERT INTO customers VALUES (99, 'x', 'y', 'z')")
            .await
        {
            Err(e) if e.code().map(|c| c.code()) == Some("58000") => {
                refused = Some(e);
                break;
            }
            Err(e) => panic!("unexpected error {}", error_text(&e)),
            Ok(_) => {
                c.psql_direct(&db, "DELETE FROM customers WHERE id = 99");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let e = refused.expect("statements were not refused while the audit sink was down");
    assert!(error_text(&e).contains("pgcloak:"), "{}", error_text(&e));
    assert_eq!(
        c.psql_direct(&db, "SELECT count(*) FROM customers WHERE id = 99"),
        "0",
        "an unaudited statement reached the database"
    );
    // Repair: statements run again and nothing queued was lost.
    c.psql_direct(
        &db,
        "ALTER TABLE pgcloak_audit.statements DROP CONSTRAINT broken",
    );
    let mut recovered = false;
    for _ in 0..100 {
        if app
            .simple_query("SELECT notes FROM customers")
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "block mode did not recover");
    drop(app);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, out, err) = p.cli(&["audit", "verify", "--postgres"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = p.cli(&[
        "audit",
        "query",
        "--postgres",
        "--user",
        "app_user",
        "--format",
        "json",
    ]);
    assert!(ok && out.lines().count() >= 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mode_keeps_serving_and_records_a_gap() {
    let c = cluster();
    let db = setup_db("audit_drop");
    let p = Proxy::start_with(ProxyOptions {
        extra: {
            let mut o = pg_audit_options(&db, "drop").extra;
            o.push_str("queue_capacity = 16\nbacklog = 20\n");
            o
        },
        ..pg_audit_options(&db, "drop")
    });
    let app = connect(&url(&p, "app_user", "app-pw", &db)).await;
    app.simple_query("SELECT notes FROM customers")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.psql_direct(
        &db,
        "ALTER TABLE pgcloak_audit.statements ADD CONSTRAINT broken CHECK (false) NOT VALID",
    );
    for _ in 0..300 {
        app.simple_query("SELECT notes FROM customers")
            .await
            .expect("drop mode must keep serving");
    }
    c.psql_direct(
        &db,
        "ALTER TABLE pgcloak_audit.statements DROP CONSTRAINT broken",
    );
    let mut gap = String::new();
    for _ in 0..100 {
        app.simple_query("SELECT 1").await.unwrap();
        gap = c.psql_direct(&db, "SELECT coalesce(string_agg(reason, ','), '') FROM pgcloak_audit.statements WHERE kind = 'gap'");
        if !gap.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gap.contains("dropped"), "no gap event: {gap:?}");
    drop(app);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, out, err) = p.cli(&["audit", "verify", "--postgres"]);
    assert!(ok, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sink_receives_every_event() {
    let db = setup_db("audit_nats");
    let subject = format!("pgcloak.audit.e2e{}", std::process::id());
    let stream_name = subject.to_uppercase().replace('.', "_");
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS with JetStream must run on 127.0.0.1:4222 (scripts/test starts it)");
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(&stream_name).await;
    let mut p = Proxy::start_with(ProxyOptions {
        policy: Some(AUDIT_POLICY.into()),
        extra: format!("[audit]\nnats = \"nats://127.0.0.1:4222\"\nnats_subject = \"{subject}\"\n"),
        ..Default::default()
    });
    let app = connect(&url(&p, "app_user", "app-pw", &db)).await;
    for i in 0..20 {
        app.simple_query(&format!("SELECT notes FROM customers WHERE id = {i}"))
            .await
            .unwrap();
    }
    drop(app);
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.restart();
    let file_events = events(&p);
    let stream = js.get_stream(&stream_name).await.unwrap_or_else(|e| {
        panic!(
            "stream not created: {e}\n{}",
            p.log_text()
                .lines()
                .filter(|l| l.contains("audit") || l.contains("nats") || l.contains("NATS"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let info = stream.get_info().await.unwrap();
    let mut nats_events = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        if v.get("checkpoint").is_none() {
            nats_events.push(v);
        }
    }
    // Every event of the first run is in NATS, identical to the file (same seq, same hash).
    let first_run: Vec<&Value> = file_events
        .iter()
        .take_while(|v| v["kind"] != "start" || v["seq"] == 1)
        .collect();
    assert!(first_run.len() >= 22, "{}", first_run.len());
    for ev in &first_run {
        assert!(
            nats_events
                .iter()
                .any(|n| n["seq"] == ev["seq"] && n["hash"] == ev["hash"]),
            "event {} missing from NATS",
            ev["seq"]
        );
    }
    let _ = js.delete_stream(&stream_name).await;
}
