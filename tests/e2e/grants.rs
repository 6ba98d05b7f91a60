//! Just-in-time grants through two proxy instances: a support user reads masked, requests
//! plaintext, cannot approve it itself, is approved by an approver, reads plaintext through both
//! instances (also through a prepared statement it keeps, sending only Bind/Execute), and loses it
//! at revocation and at expiry within 2 seconds; each step is audited exactly once in the fleet.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{cluster, connect, pgcloak, Proxy, ProxyOptions, SUPERPASS, SUPERUSER};

const POLICY: &str = r#"
[[column]]
name = "public.customers.phone"
class = "confidential"
encrypt = "deterministic"
mask = "last4"

[[column]]
name = "public.notes.body"
class = "confidential"
encrypt = "randomized"

[[role]]
name = "app"
read = { confidential = "plaintext" }
write = ["confidential"]

[[role]]
name = "support"
read = { confidential = "masked" }

[grants]
approvers = ["grants_officer"]
"#;

const PHONE: &str = "+4915112345678";

/// The approver role and its member, created once per test run (both tests use them, and
/// concurrent CREATE ROLEs of one name collide).
fn ensure_roles() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        cluster().psql_direct(
            "postgres",
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'grants_officer') THEN \
                 CREATE ROLE grants_officer; \
                 CREATE ROLE sec_user LOGIN PASSWORD 'sec-pw' IN ROLE grants_officer; \
               END IF; END $$",
        );
    });
}

/// Runs `pgcloak grant ARGS` against `proxy`'s config with PGPASSWORD = `password`.
fn grant(proxy: &Proxy, password: &str, args: &[&str]) -> (bool, String) {
    let cfg = proxy.config_path();
    let mut all = vec!["grant"];
    all.extend_from_slice(args);
    all.extend(["--config", cfg.to_str().unwrap()]);
    let out = pgcloak(&all, &[("PGPASSWORD".to_string(), password.to_string())]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `grant request` of plaintext confidential access for support_user for 1h ("ticket 4711"), with
/// `changes` (`--option value` pairs) replacing or adding options.
fn plaintext_request<'a>(changes: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "request",
        "--user",
        "support_user",
        "--class",
        "confidential",
        "--access",
        "plaintext",
        "--for",
        "1h",
        "--reason",
        "ticket 4711",
    ];
    for pair in changes.chunks(2) {
        match args.iter().position(|x| *x == pair[0]) {
            Some(i) => args[i + 1] = pair[1],
            None => args.extend_from_slice(pair),
        }
    }
    args
}

fn grant_id(out: &str) -> String {
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no grant id in {out}"))
        .to_string()
}

async fn phone(client: &tokio_postgres::Client) -> String {
    let rows = client
        .simple_query("SELECT phone FROM customers WHERE id = 1")
        .await
        .expect("support reads customers");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("one row")
}

async fn prepared_phone(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
) -> String {
    client
        .query_one(stmt, &[&1i32])
        .await
        .expect("prepared read")
        .get(0)
}

/// Waits until every reader sees `plaintext` (or, with false, a masked value); returns how long.
async fn until_all(
    readers: &[&tokio_postgres::Client],
    prepared: (&tokio_postgres::Client, &tokio_postgres::Statement),
    plaintext: bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut seen = Vec::new();
        for r in readers {
            seen.push(phone(r).await);
        }
        seen.push(prepared_phone(prepared.0, prepared.1).await);
        if seen.iter().all(|p| (p == PHONE) == plaintext) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "readers still see {seen:?} (want plaintext: {plaintext})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn audit_events(proxies: &[&Proxy]) -> Vec<Value> {
    proxies
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p.config_path().with_file_name("audit.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v.get("checkpoint").is_none())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_raise_access_fleet_wide_and_end_on_time() {
    let c = cluster();
    let db = c.fresh_db("grants_app");
    c.psql_direct(
        &db,
        "CREATE TABLE customers (id int PRIMARY KEY, phone text); \
         CREATE TABLE notes (id int PRIMARY KEY, body text); \
         GRANT ALL ON customers, notes TO PUBLIC",
    );
    let catalog = c.fresh_db("grants_catalog");
    ensure_roles();
    let shared = tempfile::tempdir().unwrap();
    let start = |n: u32| {
        Proxy::start_with(ProxyOptions {
            policy: Some(POLICY.into()),
            extra: format!(
                "instance = \"grants-{n}\"\n\
                 [catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"{catalog}\"\n\
                 [keys]\nmaster_key_file = \"{key}\"\nkeyring = \"postgres\"\n\
                 [audit]\nfile = \"audit.jsonl\"\npostgres = true\n\
                 [admin]\nusers = [\"app_user\"]\n",
                key = shared.path().join("master.key").display(),
            ),
            ..Default::default()
        })
    };
    let a = start(1);
    let b = start(2);

    let app = connect(&a.url("app_user", "app-pw", &db)).await;
    app.execute("INSERT INTO customers VALUES ($1, $2)", &[&1i32, &PHONE])
        .await
        .unwrap();
    app.execute("INSERT INTO notes VALUES (1, 'private note')", &[])
        .await
        .unwrap();
    let on_a = connect(&a.url("support_user", "support-pw", &db)).await;
    let on_b = connect(&b.url("support_user", "support-pw", &db)).await;
    // A driver that prepares once and then sends only Bind/Execute (pgJDBC, asyncpg do this).
    let kept = connect(&b.url("support_user", "support-pw", &db)).await;
    let stmt = kept
        .prepare("SELECT phone FROM customers WHERE id = $1")
        .await
        .unwrap();
    let masked = phone(&on_a).await;
    assert_ne!(masked, PHONE);
    assert!(masked.ends_with("5678"), "{masked}");
    assert_eq!(prepared_phone(&kept, &stmt).await, masked);

    // Bad requests are named.
    for (args, says) in [
        (vec!["--class", "secret"], "is not a class"),
        (vec!["--for", "30d"], "longer than the 7 days"),
        (vec!["--for", "soon"], "is not a duration"),
        (
            vec!["--table", "public.orders"],
            "no confidential column in public.orders",
        ),
    ] {
        let (ok, out) = grant(&a, "support-pw", &plaintext_request(&args));
        assert!(!ok && out.contains(says), "{args:?}: {out}");
    }
    let (ok, out) = grant(&a, "wrong-pw", &plaintext_request(&[]));
    assert!(!ok && out.contains("PGPASSWORD"), "{out}");

    // Request, refused approvals, approval.
    let (ok, out) = grant(
        &a,
        "support-pw",
        &plaintext_request(&[
            "--table",
            "public.customers",
            "--reason",
            "ticket 4711: caller verification",
        ]),
    );
    assert!(ok, "{out}");
    let first = grant_id(&out);
    let (ok, out) = grant(
        &a,
        "support-pw",
        &["approve", &first, "--by", "support_user"],
    );
    assert!(!ok && out.contains("cannot approve it"), "{out}");
    let (ok, out) = grant(&a, "alice-pw", &["approve", &first, "--by", "alice"]);
    assert!(
        !ok && out.contains("not a member of an approver role"),
        "{out}"
    );
    assert_eq!(phone(&on_a).await, masked, "pending changes nothing");
    let (ok, out) = grant(&a, "sec-pw", &["approve", &first, "--by", "sec_user"]);
    assert!(ok, "{out}");
    let took = until_all(&[&on_a, &on_b], (&kept, &stmt), true).await;
    assert!(took <= Duration::from_secs(2), "approval took {took:?}");
    // Only the table granted: notes stay masked; the console lists the grant.
    let notes = on_a
        .simple_query("SELECT body FROM notes WHERE id = 1")
        .await
        .unwrap();
    let body = notes.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert!(
        body.is_some_and(|b| b != "private note"),
        "notes are not granted"
    );
    let console = connect(&a.url("app_user", "app-pw", "pgcloak")).await;
    let listed = console.simple_query("SHOW GRANTS").await.unwrap();
    let row = listed
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("one grant");
    assert_eq!(row.get("id"), Some(first.as_str()));
    assert_eq!(row.get("user"), Some("support_user"));
    assert_eq!(row.get("table"), Some("public.customers"));

    // A cursor declared under the grant is not read once the grant is gone.
    on_a.batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT phone FROM customers")
        .await
        .unwrap();
    let (ok, out) = grant(&a, "sec-pw", &["revoke", &first, "--by", "sec_user"]);
    assert!(ok, "{out}");
    let revoked_at = Instant::now();
    let err = loop {
        match on_a.simple_query("FETCH 1 FROM c").await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    revoked_at.elapsed() < Duration::from_secs(3),
                    "FETCH still served"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        crate::harness::error_text(&err).contains("declared under other grants"),
        "{}",
        crate::harness::error_text(&err)
    );
    on_a.batch_execute("ROLLBACK").await.unwrap();
    let took = until_all(&[&on_a, &on_b], (&kept, &stmt), false).await;
    assert!(
        revoked_at.elapsed() <= Duration::from_secs(2),
        "revocation took {:?} (the last check {took:?})",
        revoked_at.elapsed()
    );
    let (ok, out) = grant(&a, "sec-pw", &["revoke", &first]);
    assert!(!ok && out.contains("already revoked"), "{out}");

    // A short grant for the whole class ends at its expiry.
    let (ok, out) = grant(
        &b,
        "support-pw",
        &plaintext_request(&["--for", "3s", "--reason", "ticket 4712"]),
    );
    assert!(ok, "{out}");
    let second = grant_id(&out);
    let (ok, out) = grant(&b, "sec-pw", &["approve", &second, "--by", "sec_user"]);
    assert!(ok, "{out}");
    let approved_at = Instant::now();
    until_all(&[&on_a, &on_b], (&kept, &stmt), true).await;
    until_all(&[&on_a, &on_b], (&kept, &stmt), false).await;
    let lasted = approved_at.elapsed();
    assert!(
        lasted >= Duration::from_secs(2) && lasted <= Duration::from_secs(5),
        "a 3 s grant lasted {lasted:?}"
    );

    // Listing, then the audit trail of the whole fleet (expiry is audited by the next poll).
    let (ok, out) = grant(&a, "", &["list", "--format", "json"]);
    assert!(ok, "{out}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let states: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["reason"].as_str().unwrap(), g["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("ticket 4712", "expired"),
            ("ticket 4711: caller verification", "revoked")
        ]
    );
    let (ok, out) = grant(&a, "", &["list", "--active"]);
    assert!(ok && out.lines().count() == 1, "{out}");

    let deadline = Instant::now() + Duration::from_secs(5);
    let steps = loop {
        let events = audit_events(&[&a, &b]);
        let steps: Vec<String> = events
            .iter()
            .filter(|e| e["kind"] == "grant")
            .map(|e| {
                let s = e["statement"].as_str().unwrap();
                s.split(':').next().unwrap().to_string()
            })
            .collect();
        if steps.len() >= 6 || Instant::now() > deadline {
            break (events, steps);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (events, mut steps) = steps;
    steps.sort();
    let mut want = vec![
        format!("grant {first} requested"),
        format!("grant {first} approved"),
        format!("grant {first} revoked"),
        format!("grant {second} requested"),
        format!("grant {second} approved"),
        format!("grant {second} expired"),
    ];
    want.sort();
    assert_eq!(steps, want, "each step exactly once across the fleet");
    let approval = events
        .iter()
        .find(|e| {
            e["statement"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("grant {first} approved")))
        })
        .unwrap();
    assert_eq!(approval["user"], "sec_user");
    assert_eq!(approval["reason"], "ticket 4711: caller verification");
    let used = events
        .iter()
        .filter(|e| e["kind"] == "select" && e["reason"] == format!("served under grant {first}"))
        .count();
    assert!(used >= 2, "statements served under grant {first} name it");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "select" && e["reason"] == format!("served under grant {second}")),
        "the class-wide grant too"
    );
    for p in [&a, &b] {
        let (ok, out, err) = p.cli(&["audit", "verify"]);
        assert!(ok, "{out}{err}");
    }
    // An auditor's question: everything about grant <first>, on either instance.
    let mut about = 0;
    let mut reads = 0;
    for p in [&a, &b] {
        let (ok, out, err) = p.cli(&["audit", "query", "--grant", &first, "--format", "json"]);
        assert!(ok, "{err}");
        for line in out.lines() {
            let e: Value = serde_json::from_str(line).unwrap();
            let step = e["fingerprint"] == format!("grant:{first}");
            let read = e["reason"] == format!("served under grant {first}");
            assert!(step || read, "{line}");
            about += 1;
            reads += usize::from(read);
        }
    }
    assert_eq!(about - reads, 3, "requested, approved, revoked");
    assert_eq!(reads, used, "every statement served under it");
    // The same answer from the PostgreSQL table both instances write.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, out, err) = a.cli(&[
            "audit",
            "query",
            "--postgres",
            "--grant",
            &first,
            "--format",
            "json",
        ]);
        assert!(ok, "{err}");
        let n = out.lines().count();
        if n == about {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} events in the table, {about} in the files"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Grants turned on by a policy reload apply within the usual 2 seconds (the poll sleeps while the
/// policy has no [grants], and wakes at the reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_turned_on_by_a_reload_apply() {
    let c = cluster();
    let db = c.fresh_db("grants_reload");
    c.psql_direct(
        &db,
        "CREATE TABLE customers (id int PRIMARY KEY, phone text); GRANT ALL ON customers TO PUBLIC",
    );
    let catalog = c.fresh_db("grants_reload_catalog");
    ensure_roles();
    let off = POLICY.replace("[grants]\napprovers = [\"grants_officer\"]\n", "");
    assert!(!off.contains("[grants]"));
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(off),
        extra: format!(
            "[catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"{catalog}\"\n"
        ),
        ..Default::default()
    });
    let app = connect(&proxy.url("app_user", "app-pw", &db)).await;
    app.execute("INSERT INTO customers VALUES ($1, $2)", &[&1i32, &PHONE])
        .await
        .unwrap();
    let support = connect(&proxy.url("support_user", "support-pw", &db)).await;
    assert_ne!(phone(&support).await, PHONE);
    let request = plaintext_request(&["--reason", "ticket 4713"]);
    let (ok, out) = grant(&proxy, "support-pw", &request);
    assert!(!ok && out.contains("grants are off"), "{out}");

    let on = POLICY.replace(
        "approvers = [\"grants_officer\"]",
        "approvers = [\"grants_officer\", \"no_such_approver\"]",
    );
    std::fs::write(proxy.config_path().with_file_name("policy.toml"), on).unwrap();
    // (check looks at the [catalog] database, which has no application tables here.)
    let (_, _, err) = proxy.cli(&["check"]);
    assert!(
        err.contains("approvers names role no_such_approver, which does not exist")
            && !err.contains("role grants_officer,"),
        "{err}"
    );
    proxy.signal("HUP");
    let (ok, out) = grant(&proxy, "support-pw", &request);
    assert!(ok, "{out}");
    let id = grant_id(&out);
    let (ok, out) = grant(&proxy, "sec-pw", &["approve", &id, "--by", "sec_user"]);
    assert!(ok, "{out}");
    let approved = Instant::now();
    while phone(&support).await != PHONE {
        assert!(
            approved.elapsed() < Duration::from_secs(2),
            "the grant did not apply within 2 s of its approval"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
