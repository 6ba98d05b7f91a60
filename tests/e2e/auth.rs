//! Authentication is relayed: the server stays the authority for SCRAM, md5, password and trust, and a
//! wrong password gives the same error as PostgreSQL gives.

use crate::harness::{cluster, connect, psql, Proxy};

#[tokio::test]
async fn every_auth_method_is_relayed() {
    let c = cluster();
    let p = Proxy::start();
    for (user, pw) in [
        ("alice", "alice-pw"),
        ("md5user", "md5-pw"),
        ("pwuser", "plain-pw"),
        ("trustuser", ""),
    ] {
        let client = connect(&p.url(user, pw, "postgres")).await;
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
    }
    let _ = c;
}

#[test]
fn wrong_password_gives_the_same_error_as_postgres() {
    let c = cluster();
    let p = Proxy::start();
    let direct = format!(
        "host=127.0.0.1 port={} user=alice password=wrong dbname=postgres sslmode=disable",
        c.port
    );
    let (ok_d, _, err_d) = psql(&direct, &["-c", "select 1"]);
    let (ok_p, _, err_p) = psql(&p.url("alice", "wrong", "postgres"), &["-c", "select 1"]);
    assert!(!ok_d && !ok_p);
    let tail = |s: &str| {
        s.split("FATAL:")
            .nth(1)
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    };
    assert!(!tail(&err_d).is_empty(), "{err_d}");
    assert_eq!(
        tail(&err_d),
        tail(&err_p),
        "direct: {err_d}\nproxy: {err_p}"
    );
    // md5 too.
    let (ok, _, err) = psql(&p.url("md5user", "wrong", "postgres"), &["-c", "select 1"]);
    assert!(
        !ok && err.contains("password authentication failed for user \"md5user\""),
        "{err}"
    );
    // Unknown database: the server's error comes through.
    let (ok, _, err) = psql(&p.alice("no_such_db"), &["-c", "select 1"]);
    assert!(
        !ok && err.contains("database \"no_such_db\" does not exist"),
        "{err}"
    );
}

#[test]
fn scram_over_tls_with_psql_defaults_passes_channel_binding_with_the_servers_certificate() {
    // psql over TLS uses SCRAM-SHA-256-PLUS by default. With pgcloak presenting PostgreSQL's own
    // certificate, tls-server-end-point binding data match and even channel_binding=require works.
    let c = cluster();
    let p = Proxy::start_with(crate::harness::ProxyOptions {
        extra: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[upstream_tls]\nmode = \"require\"\n",
            c.proxy_cert.display(),
            c.proxy_key.display()
        ),
        ..Default::default()
    });
    let url = format!(
        "host=127.0.0.1 port={} user=alice password=alice-pw dbname=postgres sslmode=require",
        p.port
    );
    let (ok, out, err) = psql(
        &url,
        &[
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t", "upstream connection should be TLS too");
    let (ok, _, err) = psql(
        &format!("{url} channel_binding=require"),
        &["-c", "select 1"],
    );
    assert!(ok, "{err}");
}

#[test]
fn scram_over_tls_with_a_different_certificate() {
    let c = cluster();
    // A certificate of pgcloak's own: -PLUS is hidden from clients.
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("own.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("own.key"), key.serialize_pem()).unwrap();
    let tls = format!(
        "[tls]\ncert = \"{0}/own.crt\"\nkey = \"{0}/own.key\"\n",
        dir.path().display()
    );
    // Plaintext upstream: the client's "binding possible" flag is accepted by the server.
    let p = Proxy::start_with(crate::harness::ProxyOptions {
        extra: format!("{tls}[upstream_tls]\nmode = \"disable\"\n"),
        ..Default::default()
    });
    let url = format!(
        "host=127.0.0.1 port={} user=alice password=alice-pw dbname=postgres sslmode=require",
        p.port
    );
    let (ok, _, err) = psql(&url, &["-c", "select 1"]);
    assert!(ok, "{err}");
    // TLS upstream: PostgreSQL would reject the client's flag as a downgrade; pgcloak says what to do.
    let p = Proxy::start_with(crate::harness::ProxyOptions {
        extra: format!("{tls}[upstream_tls]\nmode = \"require\"\n"),
        ..Default::default()
    });
    let url = format!(
        "host=127.0.0.1 port={} user=alice password=alice-pw dbname=postgres sslmode=require",
        p.port
    );
    let (ok, _, err) = psql(&url, &["-c", "select 1"]);
    assert!(!ok);
    assert!(
        err.contains("pgcloak: SCRAM channel binding cannot pass through"),
        "{err}"
    );
    let (ok, _, err) = psql(
        &format!("{url} channel_binding=disable"),
        &["-c", "select 1"],
    );
    assert!(ok, "{err}");
    let _ = c;
}
