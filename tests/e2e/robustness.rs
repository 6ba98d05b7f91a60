//! Hostile bytes: malformed or oversized frames from a client or a server end that one session with a
//! protocol error; the proxy never panics and other sessions carry on.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{connect, Proxy, ProxyOptions};

fn startup(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Reads server frames until ReadyForQuery; returns all bytes read.
async fn read_until_ready(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before ReadyForQuery: {all:?}");
        all.extend_from_slice(&buf[..n]);
        // Walk complete frames looking for 'Z'.
        let mut i = 0;
        while i + 5 <= all.len() {
            let len = u32::from_be_bytes([all[i + 1], all[i + 2], all[i + 3], all[i + 4]]) as usize;
            if i + 1 + len > all.len() {
                break;
            }
            if all[i] == b'Z' {
                return all;
            }
            i += 1 + len;
        }
    }
}

/// Reads until the peer closes; returns what arrived.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("peer did not close");
    out
}

async fn logged_in(p: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(&startup("trustuser")).await.unwrap();
    read_until_ready(&mut s).await;
    s
}

#[tokio::test]
async fn malformed_client_frames_end_only_that_session() {
    let p = Proxy::start();
    let bystander = connect(&p.alice("postgres")).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length below 4", vec![b'Q', 0, 0, 0, 2]),
        ("unknown tag", vec![0x00, 0, 0, 0, 4]),
        ("oversized control message", vec![b'S', 0x40, 0, 0, 0]),
        ("oversized query", vec![b'Q', 0x7f, 0xff, 0xff, 0xff]),
        ("backend tag from a client", b"Z\0\0\0\x05I".to_vec()),
    ];
    for (what, bytes) in cases {
        let mut s = logged_in(&p).await;
        s.write_all(&bytes).await.unwrap();
        let reply = read_to_close(&mut s).await;
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.contains("08P01") && text.contains("pgcloak: invalid message from client"),
            "{what}: {text}"
        );
        let one: i32 = bystander.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1, "{what}");
    }
    // Broken startup packets.
    for bytes in [
        vec![0, 0, 0, 5, 1],
        vec![0, 0, 0x30, 0, 0, 3, 0, 0],
        vec![0, 0, 0, 8, 0, 2, 0, 0],
        vec![0, 0, 0, 12, 0, 3, 0, 0, b'u', 0, 0, 0],
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let _ = read_to_close(&mut s).await;
    }
    // Bytes smuggled after an SSLRequest are refused.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut pkt = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    pkt.extend_from_slice(&startup("trustuser"));
    s.write_all(&pkt).await.unwrap();
    let reply = read_to_close(&mut s).await;
    assert!(
        !reply.contains(&b'Z'),
        "smuggled startup was served: {reply:?}"
    );
    let one: i32 = bystander.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert!(!p.log_text().contains("panicked"), "{}", p.log_text());
}

/// CONTRACT.md: session lines carry the session id and client address — also under a `warn`
/// filter, where the lines that matter (a session closed for a bad frame) are the only ones left.
#[tokio::test]
async fn warn_lines_of_a_session_name_it_under_a_warn_filter() {
    let p = Proxy::start_with(ProxyOptions {
        env: vec![("RUST_LOG".into(), "warn".into())],
        ..Default::default()
    });
    let mut s = logged_in(&p).await;
    let local = s.local_addr().unwrap();
    s.write_all(&[0x00, 0, 0, 0, 4]).await.unwrap();
    let _ = read_to_close(&mut s).await;
    let log = p.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("closing session: invalid message from client"))
        .unwrap_or_else(|| panic!("no warning logged: {log}"));
    assert!(
        line.contains(" WARN session{id=") && line.contains(&format!("client={local}}}")),
        "{line}"
    );
    assert!(!log.contains(" INFO "), "{log}");
}

#[tokio::test]
async fn tiny_max_message_size_is_enforced_for_queries() {
    let p = Proxy::start_with(ProxyOptions {
        extra: "max_message_size = 2048".into(),
        ..Default::default()
    });
    let client = connect(&p.alice("postgres")).await;
    let ok: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(ok, 1);
    let long = format!("SELECT '{}'", "y".repeat(4000));
    let err = client.simple_query(&long).await.unwrap_err();
    assert!(
        crate::harness::error_text(&err).contains("max_message_size") || err.is_closed(),
        "{err}"
    );
}

/// A fake PostgreSQL server that authenticates anyone and then answers queries with `reply`.
async fn fake_server(reply: Vec<u8>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await; // startup
                let mut hello = b"R\0\0\0\x08\0\0\0\0".to_vec();
                hello.extend_from_slice(b"K\0\0\0\x0c\0\0\0\x2a\x01\x02\x03\x04");
                hello.extend_from_slice(b"Z\0\0\0\x05I");
                let _ = s.write_all(&hello).await;
                let _ = s.read(&mut buf).await; // query
                let _ = s.write_all(&reply).await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn malformed_server_frames_end_the_session_with_an_error() {
    for (what, reply) in [
        ("length below 4", vec![b'D', 0, 0, 0, 1]),
        ("unknown tag", vec![b'!', 0, 0, 0, 4]),
        ("oversized", vec![b'C', 0x7f, 0, 0, 0]),
    ] {
        let port = fake_server(reply).await;
        let p = Proxy::start_with(ProxyOptions {
            upstream_port: Some(port),
            extra: "[upstream_tls]\nmode = \"disable\"\n".into(),
            ..Default::default()
        });
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
        s.write_all(&startup("anyone")).await.unwrap();
        let hello = read_until_ready(&mut s).await;
        // The server's key is never shown to the client.
        assert!(
            !hello.windows(4).any(|w| w == [1, 2, 3, 4]),
            "{what}: server cancel key leaked"
        );
        s.write_all(b"Q\0\0\0\x0dselect 1\0").await.unwrap();
        let reply = read_to_close(&mut s).await;
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.contains("08P01") && text.contains("invalid message from upstream"),
            "{what}: {text}"
        );
        assert!(!p.log_text().contains("panicked"));
    }
}

/// A panic in one session's task (made on purpose by the debug build's test hook) ends that session
/// alone: its client gets `XX000` and a closed socket, the log and the audit trail record it, another
/// session on the same session thread (`workers = 1`) carries on mid-transaction, and new clients
/// are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_ends_alone_and_the_thread_keeps_serving() {
    const BOOM: &str = "SELECT 'pgcloak test hook: panic'";
    let c = crate::harness::cluster();
    let db = c.fresh_db("panic_isolation");
    c.psql_direct(&db, "CREATE TABLE t (n int); GRANT ALL ON t TO PUBLIC");
    let p = Proxy::start_with(ProxyOptions {
        extra: "workers = 1\n".into(),
        env: vec![("CLOAK_TEST_PANIC_ON".into(), BOOM.into())],
        ..Default::default()
    });
    let bystander = connect(&p.alice(&db)).await;
    bystander
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // The victim: psql, which shows the FATAL error it receives before the socket closes.
    let (ok, out, err) = crate::harness::psql(
        &p.alice(&db),
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "SELECT pg_backend_pid()",
            "-c",
            BOOM,
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("FATAL:  XX000: pgcloak: internal error; this session was ended"),
        "{err}\n{}",
        p.log_text()
    );
    let victim_pid: i32 = out.trim().parse().unwrap();
    // tokio-postgres too. (Had it still been waiting for an earlier answer — it closes dropped
    // statements in the background — the FATAL would answer that request, as PostgreSQL's would.)
    let victim = connect(&p.alice(&db)).await;
    let err = victim.simple_query(BOOM).await.unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("XX000"),
        "{}",
        crate::harness::error_text(&err)
    );
    assert!(victim.simple_query("SELECT 1").await.is_err(), "closed");
    // The bystander's transaction is intact and goes on.
    bystander
        .batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap();
    let n: i64 = bystander
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // New clients, on the same (only) session thread, are served.
    for _ in 0..3 {
        let fresh = connect(&p.alice(&db)).await;
        let one: i32 = fresh.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    // The victim's server process ended with it.
    let mut gone = false;
    for _ in 0..50 {
        let left = c.psql_direct(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {victim_pid}"),
        );
        if left == "0" {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "server process {victim_pid} still there");
    let log = p.log_text();
    assert!(
        log.contains("session ended by an internal error") && log.contains("panics on purpose"),
        "{log}"
    );
    let audit = std::fs::read_to_string(p.dir.path().join("audit.jsonl")).unwrap_or_default();
    let event = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "error")
        .unwrap_or_else(|| panic!("no audit error event in:\n{audit}"));
    assert_eq!(event["sqlstate"], "XX000");
    assert_eq!(event["user"], "alice");
    assert!(event["reason"].as_str().unwrap().contains("internal error"));
}
