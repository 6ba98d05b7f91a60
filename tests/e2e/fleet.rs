//! A fleet: three pgcloak instances sharing one keyring in PostgreSQL, auditing to NATS JetStream
//! and the PostgreSQL table, behind HAProxy (round robin, TCP). Through the balancer: sessions
//! spread over the three, a cancel that lands on another instance still cancels, a key rotated on
//! one instance is used by the others within their reload interval (old rows still decrypt),
//! killing one instance ends only its sessions, every instance's chain verifies, and NATS holds
//! every event of the three.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{cluster, connect, free_port, Proxy, ProxyOptions, SUPERPASS, SUPERUSER};
use crate::operations::{get, parse_metrics};

const POLICY: &str = r#"
[[column]]
name = "public.t.v"
class = "confidential"
encrypt = "randomized"

[[role]]
name = "app"
read = { confidential = "plaintext" }
write = ["confidential"]

[default]
read = { confidential = "deny" }
"#;

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy(dir: &std::path::Path, port: u16, backends: &[u16]) -> Haproxy {
    let mut cfg = format!(
        "global\n  maxconn 500\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 120s\n  \
         timeout server 120s\n  retries 3\n  option redispatch\nfrontend pg\n  bind 127.0.0.1:{port}\n  \
         default_backend pgcloak\nbackend pgcloak\n  balance roundrobin\n"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!(
            "  server p{} 127.0.0.1:{b} check inter 300 fall 1 rise 2\n",
            i + 1
        ));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (Debian's haproxy package; scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Haproxy(child)
}

fn metrics(admin: u16) -> BTreeMap<String, f64> {
    parse_metrics(&get(admin, "GET", "/metrics").1)
}

fn file_events(p: &Proxy) -> Vec<Value> {
    std::fs::read_to_string(p.dir.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("checkpoint").is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_behind_haproxy() {
    let c = cluster();
    let db = c.fresh_db("fleet_app");
    c.psql_direct(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, v text); GRANT ALL ON t TO PUBLIC",
    );
    let catalog = c.fresh_db("fleet_catalog");
    let shared = tempfile::tempdir().unwrap();
    let subject = format!("pgcloak.fleet.e2e{}", std::process::id());
    let stream_name = subject.to_uppercase().replace('.', "_");
    let nats = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS with JetStream must run on 127.0.0.1:4222 (scripts/test starts it)");
    let js = async_nats::jetstream::new(nats);
    let _ = js.delete_stream(&stream_name).await;

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let admins: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} = \"127.0.0.1:{p}\"\n", i + 1))
        .collect();
    let mut proxies: Vec<Option<Proxy>> = (0..3)
        .map(|i| {
            Some(Proxy::start_with(ProxyOptions {
                policy: Some(POLICY.into()),
                port: Some(ports[i]),
                extra: format!(
                    "instance = \"fleet-{n}\"\npeer_id = {n}\n\
                     [catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"{catalog}\"\n\
                     [keys]\nmaster_key_file = \"{key}\"\nkeyring = \"postgres\"\n\
                     [audit]\nfile = \"audit.jsonl\"\npostgres = true\nnats = \"nats://127.0.0.1:4222\"\n\
                     nats_subject = \"{subject}\"\n\
                     [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                     [peers]\n{peers}",
                    n = i + 1,
                    key = shared.path().join("master.key").display(),
                    admin = admins[i],
                ),
                ..Default::default()
            }))
        })
        .collect();
    let lb = free_port();
    let _haproxy = haproxy(shared.path(), lb, &ports);
    let lb_url = |user: &str, pw: &str| {
        format!("host=127.0.0.1 port={lb} user={user} password={pw} dbname={db} sslmode=disable")
    };
    let p = |i: usize, proxies: &[Option<Proxy>]| -> String {
        proxies[i].as_ref().unwrap().url("app_user", "app-pw", &db)
    };

    // Sessions spread over the three.
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&lb_url("app_user", "app-pw")).await);
    }
    let open: Vec<f64> = admins
        .iter()
        .map(|a| metrics(*a)["pgcloak_client_connections"])
        .collect();
    assert!(
        open.iter().all(|&n| n >= 1.0),
        "sessions per instance: {open:?}"
    );
    assert_eq!(open.iter().sum::<f64>(), 6.0);
    for (i, cl) in clients.iter().enumerate() {
        cl.execute(
            "INSERT INTO t VALUES ($1, $2)",
            &[&(i as i32), &format!("value {i}")],
        )
        .await
        .unwrap();
    }
    for cl in &clients {
        let rows = cl
            .query("SELECT id, v FROM t ORDER BY id", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 6);
        for r in rows {
            assert_eq!(
                r.get::<_, String>(1),
                format!("value {}", r.get::<_, i32>(0))
            );
        }
    }
    let stored = c.psql_direct(&db, "SELECT v FROM t WHERE id = 0");
    assert!(!stored.contains("value"), "{stored}");

    // A cancel sent through the balancer lands on the next instance in the rotation, not the one
    // serving the session: it is passed on to the issuing instance.
    for _ in 0..3 {
        let victim = connect(&lb_url("app_user", "app-pw")).await;
        let token = victim.cancel_token();
        let sleeper =
            tokio::spawn(
                async move { victim.simple_query("SELECT pg_sleep(20)").await.map(|_| ()) },
            );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("the cancel took effect")
            .unwrap()
            .expect_err("cancelled");
        assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let forwarded = proxies
        .iter()
        .flatten()
        .map(|p| {
            p.log_text()
                .matches("cancel request passed on to the instance that issued its key")
                .count()
        })
        .sum::<usize>();
    assert!(forwarded >= 1, "no cancel crossed instances");

    // Rotation on instance 1 reaches the others within their reload interval (10 s for a keyring
    // in PostgreSQL).
    let (ok, out, err) = proxies[0]
        .as_ref()
        .unwrap()
        .cli(&["keys", "rotate", "public.t.v"]);
    assert!(ok, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let versions: Vec<f64> = admins
            .iter()
            .map(|a| metrics(*a)["pgcloak_key_active_version{column=\"public.t.v\"}"])
            .collect();
        if versions.iter().all(|&v| v == 2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "active versions after 25 s: {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for i in 0..3 {
        let direct = connect(&p(i, &proxies)).await;
        direct
            .execute(
                "INSERT INTO t VALUES ($1, $2)",
                &[&(10 + i as i32), &format!("value {}", 10 + i)],
            )
            .await
            .unwrap();
    }
    for i in 0..3 {
        let direct = connect(&p(i, &proxies)).await;
        let rows = direct
            .query("SELECT id, v FROM t ORDER BY id", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 9, "instance {}", i + 1);
        for r in rows {
            assert_eq!(
                r.get::<_, String>(1),
                format!("value {}", r.get::<_, i32>(0))
            );
        }
    }

    // Killing instance 2 ends its sessions only; new sessions go to the other two. (First a quiet
    // moment: closed sessions are counted out and its audit sinks have caught up.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let on_two = metrics(admins[1])["pgcloak_client_connections"] as usize;
    assert!(on_two >= 1);
    proxies[1].as_ref().unwrap().signal("KILL");
    proxies[1]
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(5));
    let mut failed = 0;
    for cl in &clients {
        if cl.simple_query("SELECT 1").await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, on_two, "only instance 2's sessions end");
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..6 {
        let cl = connect(&lb_url("app_user", "app-pw")).await;
        assert_eq!(cl.query("SELECT id FROM t", &[]).await.unwrap().len(), 9);
    }
    drop(clients);

    // The survivors stop cleanly (final checkpoints); every chain verifies, the killed one's up to
    // its last record.
    for i in [0, 2] {
        let px = proxies[i].as_mut().unwrap();
        px.signal("TERM");
        assert!(px.wait_exit(Duration::from_secs(20)).is_some());
    }
    let mut all_events: Vec<Value> = Vec::new();
    for px in proxies.iter().flatten() {
        let file = px.dir.path().join("audit.jsonl");
        let (ok, out, err) = px.cli(&["audit", "verify", "--file", file.to_str().unwrap()]);
        assert!(ok, "{out}{err}");
        all_events.extend(file_events(px));
    }
    let (ok, out, err) = proxies[0]
        .as_ref()
        .unwrap()
        .cli(&["audit", "verify", "--postgres"]);
    assert!(ok, "{out}{err}");
    let instances: std::collections::BTreeSet<&str> = all_events
        .iter()
        .filter_map(|e| e["instance"].as_str())
        .collect();
    assert_eq!(instances.len(), 3, "{instances:?}");

    // NATS holds every event of the three.
    let stream = js
        .get_stream(&stream_name)
        .await
        .expect("the fleet's stream");
    let info = stream.get_info().await.unwrap();
    let mut in_nats = std::collections::HashSet::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        if v.get("checkpoint").is_none() {
            in_nats.insert((
                v["instance"].to_string(),
                v["seq"].to_string(),
                v["hash"].to_string(),
            ));
        }
    }
    for ev in &all_events {
        assert!(
            in_nats.contains(&(
                ev["instance"].to_string(),
                ev["seq"].to_string(),
                ev["hash"].to_string()
            )),
            "event {} of {} missing from NATS",
            ev["seq"],
            ev["instance"]
        );
    }
    let _ = js.delete_stream(&stream_name).await;
}
