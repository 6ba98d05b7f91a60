//! The operations listener (`[admin] listen`): `/metrics` parsed by a real exposition-format parser
//! (Python's prometheus_client), `/healthz`, `/readyz` with a live and with a dead upstream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::harness::{cluster, connect, free_port, venv_python, Proxy, ProxyOptions};

/// `GET path` over a fresh connection: (status code, body).
pub(crate) fn get(port: u16, method: &str, path: &str) -> (u16, String) {
    // The admin listener opens once the proxy has loaded its policy and keys, a little after the
    // client listener the harness waits for.
    let mut tries = 0;
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("admin listener on {port}: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Every sample of the exposition, as prometheus_client's parser reads it:
/// `name{k="v",...}` (labels sorted) -> value.
pub(crate) fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let py = venv_python();
    assert!(
        py.exists(),
        "{} missing: run scripts/test (it installs prometheus_client into target/venv)",
        py.display()
    );
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(py)
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const POLICY: &str = r#"
[[column]]
name = "public.accounts.email"
class = "confidential"
encrypt = "deterministic"
type = "text"
mask = "email"

[[role]]
name = "app"
read = { confidential = "plaintext" }
write = ["confidential"]

[[role]]
name = "support"
read = { confidential = "masked" }

[default]
read = { confidential = "deny" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness() {
    let c = cluster();
    let db = c.fresh_db("ops_metrics");
    c.psql_direct(
        &db,
        "CREATE TABLE accounts (id int PRIMARY KEY, email text); GRANT ALL ON accounts TO PUBLIC",
    );
    let admin = free_port();
    let audit = tempfile::tempdir().unwrap();
    let audit_file = audit.path().join("audit.jsonl");
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(POLICY.into()),
        extra: format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[audit]\nfile = \"{}\"\n",
            audit_file.display()
        ),
        ..Default::default()
    });

    assert_eq!(get(admin, "GET", "/healthz"), (200, "ok\n".into()));
    let (status, body) = get(admin, "GET", "/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true, "{body}");

    // Two sessions: the app role writes and reads (extended and simple protocol), alice (the
    // default role) is refused the protected column.
    let app = connect(&proxy.url("app_user", "app-pw", &db)).await;
    for i in 0..5 {
        app.execute(
            "INSERT INTO accounts VALUES ($1, $2)",
            &[&i, &format!("u{i}@example.com")],
        )
        .await
        .unwrap();
    }
    for i in 0..7 {
        let row = app
            .query_one("SELECT email FROM accounts WHERE id = $1", &[&(i % 5)])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), format!("u{}@example.com", i % 5));
    }
    app.simple_query("SELECT count(*) FROM accounts")
        .await
        .unwrap();
    let alice = connect(&proxy.alice(&db)).await;
    let err = alice
        .simple_query("SELECT email FROM accounts")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    let _ = alice.simple_query("SELECT * FROM no_such_table").await;

    let (status, text) = get(admin, "GET", "/metrics");
    assert_eq!(status, 200);
    let m = parse_metrics(&text);
    let v = |k: &str| -> f64 {
        *m.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in\n{text}"))
    };
    assert_eq!(v("pgcloak_up"), 1.0);
    assert_eq!(v("pgcloak_client_connections"), 2.0);
    assert_eq!(v(r#"pgcloak_client_sessions{state="idle"}"#), 2.0);
    assert_eq!(v(r#"pgcloak_client_sessions{state="active"}"#), 0.0);
    assert_eq!(v("pgcloak_server_connections"), 2.0);
    assert!(v(&format!("pgcloak_catalog_age_seconds{{database=\"{db}\"}}")) >= 0.0);
    assert!(v("pgcloak_client_connections_total") >= 2.0);
    assert_eq!(
        v(r#"pgcloak_statements_total{decision="allow",kind="insert"}"#),
        5.0
    );
    // 7 extended reads, 1 simple count(*), and the failing select of a missing table.
    assert_eq!(
        v(r#"pgcloak_statements_total{decision="allow",kind="select"}"#),
        9.0
    );
    assert_eq!(
        v(r#"pgcloak_statements_total{decision="deny",kind="select"}"#),
        1.0
    );
    assert_eq!(v(r#"pgcloak_refusals_total{sqlstate="42501"}"#), 1.0);
    assert_eq!(v("pgcloak_server_errors_total"), 1.0);
    assert_eq!(
        v(r#"pgcloak_statement_duration_seconds_count{protocol="extended"}"#),
        12.0
    );
    assert_eq!(
        v(r#"pgcloak_statement_duration_seconds_bucket{le="+Inf",protocol="extended"}"#),
        12.0
    );
    assert!(v(r#"pgcloak_statement_duration_seconds_sum{protocol="extended"}"#) > 0.0);
    // The 7 reads decrypted one email each; alice's refusal presented nothing.
    let values = |class: &str, outcome: &str| {
        format!("pgcloak_values_total{{class=\"{class}\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(v(&values("confidential", "decrypted")), 7.0);
    assert_eq!(v(&values("confidential", "failed")), 0.0);
    // The 5 inserts encrypted one email each; no other class saw a value.
    assert_eq!(v(&values("confidential", "encrypted")), 5.0);
    assert_eq!(v(&values("sensitive", "encrypted")), 0.0);
    assert_eq!(v(&values("sensitive", "decrypted")), 0.0);
    assert!(v(r#"pgcloak_received_bytes_total{from="client"}"#) > 0.0);
    assert!(v(r#"pgcloak_received_bytes_total{from="server"}"#) > 0.0);
    assert_eq!(
        v(r#"pgcloak_key_active_version{column="public.accounts.email"}"#),
        1.0
    );
    assert!(v("pgcloak_keyring_generation") >= 1.0);
    assert!(v("pgcloak_catalog_loads_total{result=\"ok\"}") >= 1.0);
    // The insert and the select were analysed once each (per role) and then found in the cache.
    assert!(v(r#"pgcloak_plan_cache_lookups_total{result="miss"}"#) >= 2.0);
    assert!(v(r#"pgcloak_plan_cache_lookups_total{result="hit"}"#) >= 1.0);
    assert_eq!(v("pgcloak_audit_healthy"), 1.0);
    let sink = format!("sink=\"file {}\"", audit_file.display());
    assert_eq!(v(&format!("pgcloak_audit_sink_healthy{{{sink}}}")), 1.0);
    // Statements are audited within a few milliseconds of their end.
    let written =
        |text: &str| parse_metrics(text)[&format!("pgcloak_audit_sink_written_total{{{sink}}}")];
    let mut w = written(&text);
    for _ in 0..50 {
        if w >= 16.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        w = written(&get(admin, "GET", "/metrics").1);
    }
    assert!(w >= 16.0, "audit records written: {w}");
    // No statement text or value reaches the exposition.
    assert!(!text.contains("example.com") && !text.contains("accounts WHERE"));

    // Masked for the support role; a value that does not authenticate fails its statement.
    let support = connect(&proxy.url("support_user", "support-pw", &db)).await;
    let rows = support
        .query("SELECT email FROM accounts WHERE id < 2", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    c.psql_direct(
        &db,
        "UPDATE accounts SET email = overlay(email placing \
         CASE WHEN substr(email, 20, 1) = 'A' THEN 'B' ELSE 'A' END from 20 for 1) WHERE id = 4",
    );
    let broken = connect(&proxy.url("app_user", "app-pw", &db)).await;
    assert!(broken
        .query("SELECT email FROM accounts WHERE id = 4", &[])
        .await
        .is_err());
    let m = parse_metrics(&get(admin, "GET", "/metrics").1);
    assert_eq!(m[&values("confidential", "masked")], 2.0);
    assert_eq!(m[&values("confidential", "failed")], 1.0);
    assert_eq!(m[&values("confidential", "decrypted")], 7.0);
    drop(support);
    drop(broken);

    drop(app);
    drop(alice);
    let mut closed = 0.0;
    for _ in 0..50 {
        closed = parse_metrics(&get(admin, "GET", "/metrics").1)["pgcloak_client_connections"];
        if closed == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        closed, 0.0,
        "sessions still counted as open after the clients left"
    );

    assert_eq!(get(admin, "GET", "/nope").0, 404);
    assert_eq!(get(admin, "POST", "/metrics").0, 405);
    let (status, body) = get(admin, "HEAD", "/healthz");
    assert_eq!((status, body.as_str()), (200, ""));
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.write_all(b"garbage\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // The listener still serves after a bad request.
    assert_eq!(get(admin, "GET", "/healthz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_dead_upstream() {
    let admin = free_port();
    // Nothing listens on this port.
    let dead = free_port();
    let _proxy = Proxy::start_with(ProxyOptions {
        upstream_port: Some(dead),
        extra: format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
        ..Default::default()
    });
    assert_eq!(get(admin, "GET", "/healthz").0, 200);
    let (status, body) = get(admin, "GET", "/readyz");
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    let why = v["not_ready"]["upstream"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("127.0.0.1:{dead}")), "{body}");
}

#[test]
fn a_bad_admin_address_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (admin, key, needle) in [
        (
            "listen = \"localhost-9930\"",
            "admin.listen",
            "`localhost-9930` is not an address",
        ),
        (
            "listen = \"127.0.0.1:6432\"",
            "admin.listen",
            "same address as `listen`",
        ),
        (
            "listen = \"127.0.0.1:9930\"\ntls = true",
            "admin.tls",
            "no [tls] section",
        ),
        ("users = [\"\"]", "admin.users", "is not a user name"),
        (
            "database = \"pgcloak\"",
            "admin.database",
            "cannot be authenticated against",
        ),
    ] {
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!("listen = \"127.0.0.1:6432\"\n[admin]\n{admin}\n"),
        )
        .unwrap();
        let out = crate::harness::pgcloak(&["check", "--config", cfg.to_str().unwrap()], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(key) && err.contains(needle), "{err}");
    }
}

/// `[admin] tls = true`: the operations listener speaks HTTPS with the `[tls]` certificate (curl
/// verifies it against the test CA) and nothing in plain HTTP.
#[test]
fn the_admin_listener_serves_https_with_the_tls_certificate() {
    let c = cluster();
    let admin = free_port();
    let _proxy = Proxy::start_with(ProxyOptions {
        extra: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[upstream_tls]\nmode = \"disable\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntls = true\n",
            c.proxy_cert.display(),
            c.proxy_key.display()
        ),
        ..Default::default()
    });
    let curl = |path: &str| {
        let mut last = String::new();
        for _ in 0..100 {
            let out = Command::new("curl")
                .args(["-sS", "--fail", "--cacert"])
                .arg(&c.ca_file)
                .args([
                    "--resolve",
                    &format!("localhost:{admin}:127.0.0.1"),
                    &format!("https://localhost:{admin}{path}"),
                ])
                .output()
                .expect("curl");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).to_string();
            }
            last = String::from_utf8_lossy(&out.stderr).to_string();
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("curl https {path}: {last}");
    };
    assert_eq!(curl("/healthz"), "ok\n");
    let m = parse_metrics(&curl("/metrics"));
    assert_eq!(m["pgcloak_up"], 1.0);
    // Plain HTTP gets no answer.
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_failing_audit_sink_and_metrics_count_its_failures() {
    // Every write to /dev/full fails with ENOSPC: the file sink fails from its first record on.
    let admin = free_port();
    let proxy = Proxy::start_with(ProxyOptions {
        extra: format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n[audit]\nfile = \"/dev/full\"\n"),
        ..Default::default()
    });
    let mut body = String::new();
    for _ in 0..100 {
        let (status, b) = get(admin, "GET", "/readyz");
        body = b;
        if status == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false, "{body}");
    let why = v["not_ready"]["audit sink file /dev/full"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("No space left on device"), "{body}");
    // Block mode: nothing runs unaudited.
    let err = tokio_postgres::connect(&proxy.alice("postgres"), tokio_postgres::NoTls)
        .await
        .err()
        .map(|e| crate::harness::error_text(&e))
        .unwrap_or_default();
    assert!(err.contains("cannot be audited"), "{err}");
    let m = parse_metrics(&get(admin, "GET", "/metrics").1);
    assert_eq!(m["pgcloak_audit_healthy"], 0.0);
    assert_eq!(
        m[r#"pgcloak_audit_sink_healthy{sink="file /dev/full"}"#],
        0.0
    );
    assert!(m[r#"pgcloak_audit_sink_failures_total{sink="file /dev/full"}"#] >= 1.0);
    assert_eq!(
        m[r#"pgcloak_audit_sink_written_total{sink="file /dev/full"}"#],
        0.0
    );
}

/// `systemd-analyze verify` of `unit` (written to a temp dir): its success and everything it said.
fn systemd_verify(unit: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcloak.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is needed to check deploy/systemd");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("deploy/systemd/pgcloak.service")).unwrap();
    for directive in [
        "ExecStart=/usr/bin/pgcloak serve --config /etc/pgcloak/pgcloak.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "StateDirectory=pgcloak",
        "LoadCredential=master.key:/etc/pgcloak/master.key",
        "Environment=PGCLOAK_KEYS__MASTER_KEY_FILE=%d/master.key",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(
            unit.contains(directive),
            "deploy/systemd/pgcloak.service lacks {directive:?}"
        );
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let here = unit.replace(
        "/usr/bin/pgcloak",
        &crate::harness::pgcloak_bin().display().to_string(),
    );
    let (ok, said) = systemd_verify(&here);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // The check is not vacuous: verify reports a directive it cannot parse (with success, so the
    // output is what counts).
    let (_, said) = systemd_verify(&here.replace("ProtectSystem=strict", "ProtectSystem=bogus"));
    assert!(
        said.contains("bogus"),
        "systemd-analyze said nothing of a bad value: {said}"
    );
}

/// The README's "Guided first run", step by step, on the demo data `scripts/dev-proxy --demo`
/// applies (deploy/examples/demo.sql) and the example policy, with psql as the README uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guided_first_run_works() {
    let c = cluster();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Applied twice: dev-proxy --demo may run again on the same server.
    for _ in 0..2 {
        let out = Command::new("psql")
            .arg(c.direct_url("postgres"))
            .args(["-X", "-q", "-f"])
            .arg(repo.join("deploy/examples/demo.sql"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "demo.sql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let admin = free_port();
    let audit = tempfile::tempdir().unwrap();
    let audit_file = audit.path().join("audit.jsonl");
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(std::fs::read_to_string(repo.join("deploy/examples/policy.toml")).unwrap()),
        extra: format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\nusers = [\"postgres\"]\n[audit]\nfile = \"{}\"\n",
            audit_file.display()
        ),
        ..Default::default()
    });
    let url = |user: &str| proxy.url(user, "demo", "pgcloak_demo");
    let run = |url: &str, sql: &str| crate::harness::psql(url, &["-X", "-A", "-t", "-c", sql]);

    let (ok, _, err) = run(
        &url("demo_app"),
        "INSERT INTO customers (id, name, email, phone, ssn, salary) \
         VALUES (1, 'Ada Lovelace', 'ada@example.com', '+44 20 7946 0018', '123-45-6789', 5200)",
    );
    assert!(ok, "{err}");
    let stored = c.psql_direct(
        "pgcloak_demo",
        "SELECT email, phone, ssn, salary FROM customers",
    );
    assert!(
        !stored.contains("ada@example.com") && !stored.contains("0018"),
        "{stored}"
    );
    assert!(
        stored.starts_with("pgc1:") && stored.contains("|\\xc1"),
        "{stored}"
    );
    let (ok, out, err) = run(
        &url("demo_app"),
        "SELECT name, email, phone, ssn, salary FROM customers",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "Ada Lovelace|ada@example.com|+44 20 7946 0018|123-45-6789|5200"
    );
    let (ok, out, err) = run(
        &url("demo_support"),
        "SELECT name, email, phone, ssn FROM customers",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "Ada Lovelace|a***@example.com|****0018|****");
    let (ok, _, err) = run(&url("demo_default"), "SELECT name, email FROM customers");
    assert!(!ok);
    assert!(
        err.contains("may not read column public.customers.email"),
        "{err}"
    );

    let mut summary = String::new();
    for _ in 0..50 {
        let (_, out, _) = proxy.cli(&[
            "audit",
            "query",
            "--user",
            "demo_default",
            "--file",
            audit_file.to_str().unwrap(),
        ]);
        summary = out;
        if summary.contains("deny") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        summary.contains("public.customers.email=deny")
            && summary.contains("SELECT name, email FROM customers"),
        "{summary}"
    );
    let m = parse_metrics(&get(admin, "GET", "/metrics").1);
    let values = |class: &str, outcome: &str| {
        m[&format!("pgcloak_values_total{{class=\"{class}\",outcome=\"{outcome}\"}}")]
    };
    // email, phone, ssn (confidential) and salary (sensitive): encrypted once, decrypted once;
    // support saw the three confidential ones masked.
    assert_eq!(values("confidential", "encrypted"), 3.0);
    assert_eq!(values("sensitive", "encrypted"), 1.0);
    assert_eq!(values("confidential", "decrypted"), 3.0);
    assert_eq!(values("sensitive", "decrypted"), 1.0);
    assert_eq!(values("confidential", "masked"), 3.0);
    let (ok, out, err) = crate::harness::psql(
        &proxy.url(
            crate::harness::SUPERUSER,
            crate::harness::SUPERPASS,
            "pgcloak",
        ),
        &["-X", "-A", "-t", "-c", "SHOW SESSIONS"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("|console|"), "{out}");
}

/// `/readyz` names a database whose catalog cannot be loaded (the `[catalog]` login fails) and a
/// keyring whose reload failed, and is ready again once each is mended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_failing_catalog_login_and_a_failed_keyring_reload() {
    let c = cluster();
    let db = c.fresh_db("ops_ready_catalog");
    c.psql_direct(
        &db,
        "CREATE TABLE accounts (id int, email text); GRANT ALL ON accounts TO PUBLIC",
    );
    let admin = free_port();
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(
            "[[column]]\nname = \"public.accounts.email\"\nclass = \"confidential\"\nencrypt = \"deterministic\"\n\
             [default]\nread = { confidential = \"plaintext\" }\n"
                .into(),
        ),
        extra: format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[catalog]\nuser = \"{}\"\npassword = \"wrong\"\ndatabase = \"postgres\"\n",
            crate::harness::SUPERUSER
        ),
        ..Default::default()
    });
    assert_eq!(get(admin, "GET", "/readyz").0, 200);
    let alice = connect(&proxy.alice(&db)).await;
    let err = alice
        .simple_query("SELECT email FROM accounts")
        .await
        .unwrap_err();
    // Refused, failing closed, naming the catalog login.
    let text = crate::harness::error_text(&err);
    assert!(
        text.contains("catalog connection") && text.contains("is refused"),
        "{text}"
    );
    let (status, body) = get(admin, "GET", "/readyz");
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let why = v["not_ready"][format!("catalog {db}")]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        why.contains("password") || why.contains("authentication"),
        "{body}"
    );
    drop(alice);

    // A keyring that no longer opens: the previous one serves, /readyz says so; mended, ready.
    let keyring = proxy.dir.path().join("keyring.json");
    let good = std::fs::read(&keyring).unwrap();
    std::fs::write(&keyring, b"{ not a keyring").unwrap();
    proxy.signal("HUP");
    let mut body = String::new();
    for _ in 0..100 {
        body = get(admin, "GET", "/readyz").1;
        if body.contains("\"keyring\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.contains("the previous keyring is in force"), "{body}");
    std::fs::write(&keyring, good).unwrap();
    proxy.signal("HUP");
    for _ in 0..100 {
        body = get(admin, "GET", "/readyz").1;
        if !body.contains("\"keyring\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!body.contains("\"keyring\""), "{body}");
}

/// `pgcloak policy impact`: the statements of the audit trail replayed under a new policy, for the
/// role each user would have; exactly what would newly be refused, nulled and limited is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_impact_reports_what_a_new_policy_would_refuse_null_and_limit() {
    let c = cluster();
    let db = c.fresh_db("ops_impact");
    c.psql_direct(
        &db,
        "CREATE TABLE accounts (id int PRIMARY KEY, email text, notes text); GRANT ALL ON accounts TO PUBLIC",
    );
    let now = "[[column]]\nname = \"public.accounts.email\"\nclass = \"confidential\"\nencrypt = \"deterministic\"\nmask = \"email\"\n\
               [[role]]\nname = \"app\"\nread = { confidential = \"plaintext\" }\nwrite = [\"confidential\"]\n\
               [[role]]\nname = \"support\"\nread = { confidential = \"masked\" }\n\
               [default]\nread = { confidential = \"masked\" }\n";
    let audit = tempfile::tempdir().unwrap();
    let audit_file = audit.path().join("audit.jsonl");
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(now.into()),
        extra: format!("[audit]\nfile = \"{}\"\n", audit_file.display()),
        ..Default::default()
    });
    let app = connect(&proxy.url("app_user", "app-pw", &db)).await;
    app.execute("INSERT INTO accounts VALUES (1, 'a@example.com', 'n')", &[])
        .await
        .unwrap();
    for _ in 0..3 {
        app.query("SELECT email FROM accounts WHERE id = $1", &[&1])
            .await
            .unwrap();
    }
    let alice = connect(&proxy.alice(&db)).await;
    for _ in 0..2 {
        alice
            .simple_query("SELECT email, notes FROM accounts")
            .await
            .unwrap();
    }
    let support = connect(&proxy.url("support_user", "support-pw", &db)).await;
    support
        .simple_query("SELECT id, email FROM accounts")
        .await
        .unwrap();
    drop((app, alice, support));
    // Until every statement is in the trail.
    for _ in 0..50 {
        let n = std::fs::read_to_string(&audit_file)
            .unwrap_or_default()
            .matches("\"kind\":\"select\"")
            .count();
        if n >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let new = audit.path().join("new.toml");
    std::fs::write(
        &new,
        "[[column]]\nname = \"public.accounts.email\"\nclass = \"confidential\"\nencrypt = \"deterministic\"\nmask = \"email\"\n\
         [[role]]\nname = \"app\"\nread = { confidential = \"plaintext\" }\nwrite = [\"confidential\"]\nmax_rows = 100\n\
         [[role]]\nname = \"support\"\nread = { confidential = \"null\" }\n\
         [default]\nread = { confidential = \"deny\" }\n",
    )
    .unwrap();
    let (ok, out, err) = proxy.cli(&[
        "policy",
        "impact",
        "--policy",
        new.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(ok, "{out}{err}");
    let changes: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let got: Vec<(String, String, u64)> = changes
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_string(),
                c["user"].as_str().unwrap().to_string(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = vec![
        ("limited".to_string(), "app_user".to_string(), 3),
        ("nulled".to_string(), "support_user".to_string(), 1),
        ("refused".to_string(), "alice".to_string(), 2),
    ];
    want.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want, "{out}");
    let refused = changes.iter().find(|c| c["change"] == "refused").unwrap();
    assert_eq!(refused["statement"], "SELECT email, notes FROM accounts");
    assert!(refused["detail"]
        .as_str()
        .unwrap()
        .contains("public.accounts.email"));
    let nulled = changes.iter().find(|c| c["change"] == "nulled").unwrap();
    assert_eq!(nulled["detail"], "public.accounts.email");
    // The app's reads are newly limited (its insert is not); the table format sums it up.
    let limited = changes.iter().find(|c| c["change"] == "limited").unwrap();
    assert_eq!(limited["detail"], "max_rows 100");
    assert_eq!(
        limited["statement"],
        "SELECT email FROM accounts WHERE id = $1"
    );
    let (ok, table, err) = proxy.cli(&["policy", "impact", "--policy", new.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        table.contains("3 change(s): limited 3, nulled 1, refused 2"),
        "{table}"
    );
    // The policy in force against itself changes nothing.
    let same = proxy.dir.path().join("policy.toml");
    let (ok, out, err) = proxy.cli(&[
        "policy",
        "impact",
        "--policy",
        same.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]");
}

/// `enforce = "shadow"`: a shadow role's statements are served as stored (nothing masked or
/// refused), audited with the decision that would apply (`would_deny` and why), and its writes are
/// still encrypted; `check` warns about it; `[default]` cannot be shadow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_role_is_audited_not_enforced_and_still_encrypts() {
    let c = cluster();
    let db = c.fresh_db("ops_shadow");
    c.psql_direct(
        &db,
        "CREATE TABLE accounts (id int PRIMARY KEY, email text, notes text, ssn text); GRANT ALL ON accounts TO PUBLIC",
    );
    let policy = "[[column]]\nname = \"public.accounts.email\"\nclass = \"confidential\"\nencrypt = \"deterministic\"\nmask = \"email\"\n\
                  [[column]]\nname = \"public.accounts.notes\"\nclass = \"sensitive\"\nmask = \"redact\"\n\
                  [[column]]\nname = \"public.accounts.ssn\"\nclass = \"confidential\"\n\
                  [[role]]\nname = \"app\"\nread = { confidential = \"plaintext\", sensitive = \"plaintext\" }\nwrite = [\"confidential\", \"sensitive\"]\n\
                  [[role]]\nname = \"support\"\nenforce = \"shadow\"\nread = { confidential = \"deny\", sensitive = \"masked\" }\n\
                  [default]\nread = { confidential = \"deny\", sensitive = \"deny\" }\n";
    let audit = tempfile::tempdir().unwrap();
    let audit_file = audit.path().join("audit.jsonl");
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(policy.into()),
        extra: format!("[audit]\nfile = \"{}\"\n", audit_file.display()),
        ..Default::default()
    });
    let out = crate::harness::pgcloak(
        &["check", "--config", proxy.config_path().to_str().unwrap()],
        &[("PGCLOAK_CATALOG__DATABASE".into(), db.clone())],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: role support is in shadow mode"),
        "{err}"
    );

    let app = connect(&proxy.url("app_user", "app-pw", &db)).await;
    app.execute(
        "INSERT INTO accounts VALUES (1, 'a@example.com', 'vip', '123-45-6789')",
        &[],
    )
    .await
    .unwrap();
    let support = connect(&proxy.url("support_user", "support-pw", &db)).await;
    // Denied and masked columns come back as stored: the plaintext ones in plaintext, the
    // encrypted one as its ciphertext (never decrypted for a role that may not read it).
    let row = support
        .query_one("SELECT email, notes, ssn FROM accounts WHERE id = 1", &[])
        .await
        .expect("a shadow role is not refused");
    let email: String = row.get(0);
    assert!(email.starts_with("pgc1:"), "{email}");
    assert_eq!(row.get::<_, String>(1), "vip");
    assert_eq!(row.get::<_, String>(2), "123-45-6789");
    // A write it may not make is not refused either, and the value is still encrypted.
    support
        .execute(
            "INSERT INTO accounts (id, email) VALUES (2, $1)",
            &[&"b@example.com"],
        )
        .await
        .unwrap();
    let stored = c.psql_direct(&db, "SELECT email FROM accounts WHERE id = 2");
    assert!(stored.starts_with("pgc1:"), "{stored}");
    let back = app
        .query_one("SELECT email FROM accounts WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(back.get::<_, String>(0), "b@example.com");
    // An enforced role is refused the same statement.
    let alice = connect(&proxy.alice(&db)).await;
    let e = alice
        .query("SELECT email FROM accounts WHERE id = 1", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"));
    drop((app, support, alice));

    let mut events: Vec<serde_json::Value> = Vec::new();
    for _ in 0..50 {
        events = std::fs::read_to_string(&audit_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| {
                v["user"] == "support_user" && v["kind"] != "connect" && v["kind"] != "disconnect"
            })
            .collect();
        if events.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = events
        .iter()
        .find(|e| e["kind"] == "select")
        .expect("the read");
    assert_eq!(read["decision"], "would_deny", "{read}");
    assert!(
        read["reason"]
            .as_str()
            .unwrap()
            .contains("public.accounts.email"),
        "{read}"
    );
    assert!(read["sqlstate"].is_null());
    let write = events
        .iter()
        .find(|e| e["kind"] == "insert")
        .expect("the write");
    assert_eq!(write["decision"], "would_deny", "{write}");
    let (ok, out, err) = proxy.cli(&[
        "audit",
        "query",
        "--decision",
        "would_deny",
        "--file",
        audit_file.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("support_user"), "{out}");

    // Switched to enforce (a reload), the same read is refused.
    let enforced = policy.replace("enforce = \"shadow\"\n", "");
    std::fs::write(proxy.dir.path().join("policy.toml"), enforced).unwrap();
    proxy.signal("HUP");
    let support = connect(&proxy.url("support_user", "support-pw", &db)).await;
    let mut refused = None;
    for _ in 0..50 {
        match support
            .query("SELECT email, notes, ssn FROM accounts WHERE id = 1", &[])
            .await
        {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let e = refused.expect("refused once enforced");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");

    // [default] cannot be shadow.
    let bad = proxy.dir.path().join("bad.toml");
    std::fs::write(&bad, "[default]\nenforce = \"shadow\"\n").unwrap();
    let err = pgcloak_policy::Policy::parse(&std::fs::read_to_string(&bad).unwrap(), "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.toml:2") && err.contains("cannot be shadow"),
        "{err}"
    );
}
