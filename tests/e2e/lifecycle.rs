//! Lifecycle: connection limit, startup and idle timeouts, graceful shutdown under load, and a dead or
//! dying upstream.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{cluster, connect, free_port, psql, Proxy, ProxyOptions};

fn opts(extra: &str) -> ProxyOptions {
    ProxyOptions {
        extra: extra.to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn connection_limit_refuses_with_53300() {
    let p = Proxy::start_with(opts("max_connections = 2"));
    let a = connect(&p.alice("postgres")).await;
    let b = connect(&p.alice("postgres")).await;
    let err = tokio_postgres::connect(&p.alice("postgres"), tokio_postgres::NoTls)
        .await
        .err()
        .expect("third connection must be refused");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = connect(&p.alice("postgres")).await;
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let one: i32 = b.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn client_that_never_finishes_startup_is_dropped() {
    let p = Proxy::start_with(opts("startup_timeout = 1"));
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("proxy kept a silent client");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Half a startup packet is no better.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("proxy kept a stalled client");
    assert_eq!(n.unwrap_or(0), 0);
}

#[tokio::test]
async fn idle_client_is_disconnected_with_57p05() {
    let p = Proxy::start_with(opts("idle_timeout = 1"));
    let client = connect(&p.alice("postgres")).await;
    // A statement longer than the idle timeout is not idleness.
    client.simple_query("SELECT pg_sleep(1.5)").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.is_closed() || err.code().map(|c| c.code()) == Some("57P05"),
        "{err}"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_running_statements_finish() {
    let mut p = Proxy::start_with(opts("shutdown_timeout = 10"));
    let client = connect(&p.alice("postgres")).await;
    let running = tokio::spawn(async move {
        let r = client
            .simple_query("SELECT pg_sleep(1.5)")
            .await
            .map(|_| ());
        drop(client);
        r
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new clients once shutdown started.
    assert!(
        tokio_postgres::connect(&p.alice("postgres"), tokio_postgres::NoTls)
            .await
            .is_err()
    );
    running
        .await
        .unwrap()
        .expect("in-flight statement must complete during shutdown");
    let status = p
        .wait_exit(Duration::from_secs(8))
        .expect("proxy did not exit after its sessions ended");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn shutdown_timeout_closes_remaining_sessions_with_57p01() {
    let mut p = Proxy::start_with(opts("shutdown_timeout = 1"));
    let client = connect(&p.alice("postgres")).await;
    let started = Instant::now();
    p.signal("INT");
    let status = p
        .wait_exit(Duration::from_secs(8))
        .expect("proxy did not exit after shutdown_timeout");
    assert!(status.success());
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(client.simple_query("SELECT 1").await.is_err());
}

#[tokio::test]
async fn shutdown_under_pgbench_load_fails_no_transaction_in_flight() {
    let c = cluster();
    let db = c.fresh_db("shutdown_load");
    let direct = std::process::Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            "alice",
            &db,
        ])
        .env("PGPASSWORD", "alice-pw")
        .output()
        .unwrap();
    assert!(direct.status.success());
    let mut p = Proxy::start_with(opts("shutdown_timeout = 20"));
    let bench = std::process::Command::new("pgbench")
        .args([
            "-S",
            "-c",
            "4",
            "-j",
            "2",
            "-t",
            "2000",
            "-h",
            "127.0.0.1",
            "-p",
            &p.port.to_string(),
            "-U",
            "alice",
            &db,
        ])
        .env("PGPASSWORD", "alice-pw")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    p.signal("TERM");
    let out = bench.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    assert!(text.contains("8000/8000"), "{text}");
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn upstream_down_gives_08001_and_the_proxy_stays_up() {
    let dead = free_port();
    let p = Proxy::start_with(ProxyOptions {
        upstream_port: Some(dead),
        ..Default::default()
    });
    for _ in 0..2 {
        let (ok, _, err) = psql(&p.alice("postgres"), &["-c", "select 1"]);
        assert!(!ok);
        assert!(
            err.contains("pgcloak: cannot connect to upstream PostgreSQL"),
            "{err}"
        );
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", p.port)).is_ok());
}

/// A TCP relay between the proxy and PostgreSQL that the test can cut.
async fn cuttable_relay(target: u16) -> (u16, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let mut cut = cut_rx.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.wait_for(|c| *c) => {}
                }
            });
        }
    });
    (port, cut_tx)
}

#[tokio::test]
async fn upstream_killed_mid_query_gives_08006_and_the_proxy_stays_up() {
    let c = cluster();
    let (relay, cut) = cuttable_relay(c.port).await;
    let p = Proxy::start_with(ProxyOptions {
        upstream_port: Some(relay),
        extra: "[upstream_tls]\nmode = \"disable\"\n".into(),
        ..Default::default()
    });
    let url = format!("{} sslmode=disable", p.alice("postgres"));
    let client = connect(&url).await;
    let q = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(5)").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    cut.send(true).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), q)
        .await
        .expect("client hung after upstream loss")
        .unwrap()
        .unwrap_err();
    let code = err.code().map(|c| c.code().to_string());
    assert!(code.as_deref() == Some("08006") || err.is_closed(), "{err}");
    if code.is_some() {
        assert!(
            crate::harness::error_text(&err).contains("lost connection to upstream"),
            "{err}"
        );
    }
    // The proxy still serves new clients once the upstream is reachable again.
    cut.send(false).unwrap();
    let client = connect(&url).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
