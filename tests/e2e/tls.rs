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

/// psql over TLS to `p`: verify-full against the test CA when `ca` is given, else `require`.
fn tls_select(p: &Proxy, ca: Option<&std::path::Path>) -> (bool, String) {
    let mode = match ca {
        Some(ca) => format!("sslmode=verify-full sslrootcert={}", ca.display()),
        None => "sslmode=require".into(),
    };
    let url = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=alice password=alice-pw dbname=postgres {mode}",
        p.port
    );
    let (ok, out, err) = psql(&url, &["-c", "SELECT 1"]);
    (ok, format!("{out}{err}"))
}

/// Polls `f` for up to 10 s (a reload happens a moment after its signal).
fn eventually(what: &str, mut f: impl FnMut() -> (bool, String)) {
    let mut last = String::new();
    for _ in 0..100 {
        let (ok, text) = f();
        if ok {
            return;
        }
        last = text;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{what}: {last}");
}

#[test]
fn sighup_reloads_the_client_certificate() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("proxy.crt"), dir.path().join("proxy.key"));
    std::fs::copy(&c.proxy_cert, &cert).unwrap();
    std::fs::copy(&c.proxy_key, &key).unwrap();
    let p = Proxy::start_with(ProxyOptions {
        extra: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[upstream_tls]\nmode = \"disable\"\n",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    });
    let (ok, text) = tls_select(&p, Some(&c.ca_file));
    assert!(ok, "{text}");

    // A self-signed pair the test CA did not sign: after SIGHUP, verify-full against the CA fails
    // and plain `require` still works, so the new certificate is the one presented.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&other_key)
        .unwrap();
    std::fs::write(&cert, other.pem()).unwrap();
    std::fs::write(&key, other_key.serialize_pem()).unwrap();
    p.signal("HUP");
    eventually("the new certificate was not presented after SIGHUP", || {
        let (ok, text) = tls_select(&p, Some(&c.ca_file));
        (!ok && text.contains("certificate verify failed"), text)
    });
    let (ok, text) = tls_select(&p, None);
    assert!(ok, "{text}");

    // A pair that does not load is reported; the one in force stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    p.signal("HUP");
    eventually("no log line for the failed reload", || {
        let log = p.log_text();
        (log.contains("TLS certificate reload failed"), log)
    });
    let (ok, text) = tls_select(&p, None);
    assert!(ok, "{text}");
    assert!(p.log_text().contains(&cert.display().to_string()));

    // Back to the CA-signed pair.
    std::fs::copy(&c.proxy_cert, &cert).unwrap();
    std::fs::copy(&c.proxy_key, &key).unwrap();
    p.signal("HUP");
    eventually("the CA-signed certificate did not come back", || {
        tls_select(&p, Some(&c.ca_file))
    });
}
