//! TLS: clients verify the proxy with a test CA (verify-full), `mode = "require"` refuses plaintext
//! clients, and the upstream leg honours disable/require/verify-full.

use crate::harness::{cluster, psql, Proxy, ProxyOptions};

fn tls_proxy(mode: &str, upstream: &str) -> Proxy {
    let c = cluster();
    let ca = if upstream == "verify-full" {
        format!(
            "ca = \"{}\"\nserver_name = \"localhost\"\n",
            c.ca_file.display()
        )
    } else {
        String::new()
    };
    Proxy::start_with(ProxyOptions {
        extra: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nmode = \"{mode}\"\n[upstream_tls]\nmode = \"{upstream}\"\n{ca}",
            c.proxy_cert.display(),
            c.proxy_key.display()
        ),
        ..Default::default()
    })
}

#[test]
fn psql_verify_full_against_test_ca() {
    let c = cluster();
    let p = tls_proxy("allow", "verify-full");
    let url = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=alice password=alice-pw dbname=postgres sslmode=verify-full sslrootcert={}",
        p.port,
        c.ca_file.display()
    );
    let (ok, out, err) = psql(
        &url,
        &[
            "-c",
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("t|TLS"), "{out}");
    // Plaintext is still allowed in allow mode.
    let (ok, _, err) = psql(&p.alice("postgres"), &["-c", "select 1"]);
    assert!(ok, "{err}");
}

#[test]
fn require_mode_refuses_plaintext_clients() {
    let p = tls_proxy("require", "disable");
    let (ok, _, err) = psql(&p.alice("postgres"), &["-c", "select 1"]);
    assert!(!ok);
    assert!(
        err.contains("pgcloak: this proxy accepts only TLS connections"),
        "{err}"
    );
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
    assert_eq!(
        out.trim(),
        "f",
        "upstream_tls disable should give a plaintext upstream leg"
    );
}

#[test]
fn verify_full_upstream_rejects_a_wrong_server_name() {
    let c = cluster();
    let p = Proxy::start_with(ProxyOptions {
        extra: format!(
            "[upstream_tls]\nmode = \"verify-full\"\nca = \"{}\"\nserver_name = \"db.example.com\"\n",
            c.ca_file.display()
        ),
        ..Default::default()
    });
    let (ok, _, err) = psql(&p.alice("postgres"), &["-c", "select 1"]);
    assert!(!ok);
    assert!(
        err.contains("pgcloak: cannot connect to upstream") && err.contains("TLS"),
        "{err}"
    );
}
