//! The admin console (`dbname=pgcloak`), driven with tokio-postgres and psql: who may open it, what
//! each command answers, KILL ending another session with 57P01, RELOAD, the refusals, and the audit
//! events every command leaves.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::harness::{cluster, connect, psql, Proxy, ProxyOptions};

const POLICY: &str = r#"
[[column]]
name = "public.accounts.email"
class = "confidential"
encrypt = "deterministic"

[[role]]
name = "app"
read = { confidential = "plaintext" }
write = ["confidential"]

[[role]]
name = "support"
read = { confidential = "masked" }
max_rows = 50

[default]
read = { confidential = "deny" }
"#;

/// Each row of every result as column name -> value.
fn rows(msgs: &[SimpleQueryMessage]) -> Vec<BTreeMap<String, Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).map(str::to_string)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn get<'a>(row: &'a BTreeMap<String, Option<String>>, col: &str) -> &'a str {
    row.get(col)
        .unwrap_or_else(|| panic!("no column {col} in {row:?}"))
        .as_deref()
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_commands_kill_reload_and_refusals() {
    let c = cluster();
    let db = c.fresh_db("ops_console");
    c.psql_direct(
        &db,
        "CREATE TABLE accounts (id int PRIMARY KEY, email text); GRANT ALL ON accounts TO PUBLIC",
    );
    let audit = tempfile::tempdir().unwrap();
    let audit_file = audit.path().join("audit.jsonl");
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(POLICY.into()),
        extra: format!(
            "[admin]\nusers = [\"app_user\"]\n[audit]\nfile = \"{}\"\n",
            audit_file.display()
        ),
        ..Default::default()
    });

    // Not listed: refused before PostgreSQL is asked, whatever the password.
    for url in [
        proxy.alice("pgcloak"),
        proxy.url("support_user", "wrong", "pgcloak"),
    ] {
        let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .err()
            .expect("refused");
        let db_err = err.as_db_error().expect("a server error");
        assert_eq!(db_err.code().code(), "42501", "{db_err}");
        assert!(db_err.message().contains("[admin] users"), "{db_err}");
    }
    // Listed, but PostgreSQL decides the password.
    let err = tokio_postgres::connect(
        &proxy.url("app_user", "wrong", "pgcloak"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("wrong password refused");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("28P01"),
        "{err}"
    );

    // Two application sessions to look at and to kill.
    let app = connect(&proxy.url("app_user", "app-pw", &db)).await;
    app.execute("INSERT INTO accounts VALUES (1, 'a@example.com')", &[])
        .await
        .unwrap();
    app.query_one("SELECT email FROM accounts WHERE id = $1", &[&1])
        .await
        .unwrap();
    let victim = connect(&proxy.url("support_user", "support-pw", &db)).await;
    victim.simple_query("BEGIN").await.unwrap();

    let admin = connect(&proxy.url("app_user", "app-pw", "pgcloak")).await;
    let sessions = rows(&admin.simple_query("SHOW SESSIONS").await.unwrap());
    let by_user = |u: &str, d: &str| {
        sessions
            .iter()
            .find(|r| get(r, "user") == u && get(r, "database") == d)
            .unwrap_or_else(|| panic!("no session of {u} on {d} in {sessions:?}"))
            .clone()
    };
    let a = by_user("app_user", &db);
    assert_eq!(get(&a, "role"), "app");
    assert_eq!(get(&a, "state"), "idle");
    let done: u64 = get(&a, "statements").parse().unwrap();
    assert!(done >= 2, "{a:?}");
    let v = by_user("support_user", &db);
    assert_eq!(get(&v, "role"), "support");
    assert_eq!(get(&v, "state"), "idle in transaction");
    assert_eq!(get(&by_user("app_user", "pgcloak"), "state"), "console");
    let victim_id: u64 = get(&v, "id").parse().unwrap();

    // SHOW STATS: the /metrics samples, here without an [admin] listen.
    let stats = rows(&admin.simple_query("show stats;").await.unwrap());
    let up = stats
        .iter()
        .find(|r| get(r, "metric") == "pgcloak_up")
        .expect("pgcloak_up");
    assert_eq!(get(up, "value"), "1");
    assert!(stats
        .iter()
        .any(|r| get(r, "metric") == "pgcloak_statements_total"));
    let in_tx = stats
        .iter()
        .find(|r| {
            get(r, "metric") == "pgcloak_client_sessions"
                && get(r, "labels") == "state=\"idle_in_transaction\""
        })
        .expect("sessions by state");
    assert_eq!(get(in_tx, "value"), "1");

    let policy = rows(&admin.simple_query("SHOW POLICY").await.unwrap());
    let col = policy
        .iter()
        .find(|r| get(r, "section") == "column")
        .expect("a column row");
    assert_eq!(get(col, "name"), "public.accounts.email");
    assert_eq!(get(col, "class"), "confidential");
    assert!(get(col, "detail").contains("deterministic"), "{col:?}");
    assert!(policy.iter().any(|r| get(r, "name") == "support"
        && get(r, "class") == "confidential"
        && get(r, "detail").starts_with("read masked")));
    assert!(policy
        .iter()
        .any(|r| get(r, "name") == "support" && get(r, "detail").contains("max_rows 50")));

    let keys = rows(&admin.simple_query("SHOW KEYS").await.unwrap());
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(get(&keys[0], "column"), "public.accounts.email");
    assert_eq!(get(&keys[0], "version"), "1");
    assert_eq!(get(&keys[0], "active"), "yes");
    let key_columns: Vec<&String> = keys[0].keys().collect();
    assert_eq!(
        key_columns,
        [
            "active",
            "column",
            "created",
            "generation",
            "key_id",
            "mode",
            "version"
        ]
    );

    let audit_rows = rows(&admin.simple_query("SHOW AUDIT").await.unwrap());
    assert_eq!(get(&audit_rows[0], "name"), "queue");
    let sink = audit_rows
        .iter()
        .find(|r| get(r, "name").starts_with("sink "))
        .expect("a sink row");
    assert_eq!(get(sink, "healthy"), "yes");

    // Several commands in one Query; psql as a client too.
    let both = admin.simple_query("SHOW HELP; SHOW KEYS").await.unwrap();
    assert_eq!(
        rows(&both).len(),
        9 + 1,
        "9 commands (with SHOW GRANTS) and one key"
    );
    let (ok, out, err) = psql(
        &proxy.url("app_user", "app-pw", "pgcloak"),
        &["-X", "-A", "-t", "-c", "SHOW SESSIONS"],
    );
    assert!(ok, "psql: {err}");
    assert!(
        out.contains(&format!("|support_user|support|{db}|")),
        "{out}"
    );

    let reload = rows(&admin.simple_query("RELOAD").await.unwrap());
    let parts: Vec<(&str, &str)> = reload
        .iter()
        .map(|r| (get(r, "part"), get(r, "result")))
        .collect();
    assert_eq!(
        parts,
        [("policy", "ok"), ("keyring", "ok"), ("tls", "ok")],
        "{reload:?}"
    );

    // Refusals keep the console usable.
    let e = admin.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42601"));
    let e = admin.simple_query("KILL 999999").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42704"));
    let e = admin.query("SHOW SESSIONS", &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");

    admin
        .simple_query(&format!("KILL {victim_id}"))
        .await
        .unwrap();
    let err = victim
        .simple_query("SELECT 1")
        .await
        .expect_err("killed session");
    let text = crate::harness::error_text(&err);
    assert!(
        err.code().map(|c| c.code()) == Some("57P01") || victim.is_closed(),
        "{text}"
    );
    // The server backend of the killed session is gone as well.
    let mut gone = false;
    for _ in 0..50 {
        let n = c.psql_direct(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'support_user'",
        );
        if n.trim() == "0" {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "support_user's server session still open");
    let sessions = rows(&admin.simple_query("SHOW SESSIONS").await.unwrap());
    assert!(!sessions.iter().any(|r| get(r, "user") == "support_user"));
    // The other sessions are untouched.
    app.simple_query("SELECT 1").await.unwrap();

    // Every command and refusal is an admin event.
    drop(admin);
    let mut events = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
        events = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "admin")
            .collect();
        if events.iter().any(|e| {
            e["statement"]
                .as_str()
                .is_some_and(|s| s.starts_with("KILL "))
        }) && events.iter().any(|e| e["statement"] == "KILL 999999")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let find = |stmt: &str| {
        events
            .iter()
            .find(|e| e["statement"] == stmt)
            .unwrap_or_else(|| panic!("no admin event for {stmt}: {events:#?}"))
    };
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["statement"] == "connect" && e["sqlstate"] == "42501")
        .collect();
    assert_eq!(refused.len(), 2, "{events:#?}");
    assert!(refused.iter().any(|e| e["user"] == "alice"));
    assert_eq!(find("SHOW SESSIONS")["decision"], "allow");
    let kill = find(&format!("KILL {victim_id}"));
    assert_eq!(kill["decision"], "allow");
    assert_eq!(kill["user"], "app_user");
    assert!(kill["reason"]
        .as_str()
        .unwrap()
        .contains(&format!("killed session {victim_id} of user support_user")));
    assert_eq!(find("KILL 999999")["sqlstate"], "42704");
    assert_eq!(find("SELECT 1")["decision"], "deny");
    assert_eq!(find("RELOAD")["reason"], "reloaded");
    drop(proxy);
}
