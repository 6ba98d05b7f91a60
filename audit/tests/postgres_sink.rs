//! PostgreSQL sink, verify_postgres and query_postgres against the real local server
//! (127.0.0.1:5432, user postgres, trust auth), in a throwaway database.

use std::sync::Arc;
use std::time::Duration;

use pgcloak_audit::query::{self, Filter};
use pgcloak_audit::verify::{self, VerifyOptions};
use pgcloak_audit::*;
use tokio_postgres::{Client, NoTls};

async fn admin() -> Client {
    let (c, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5",
        NoTls,
    )
    .await
    .expect("PostgreSQL must run at 127.0.0.1:5432 with trust auth for user postgres");
    tokio::spawn(conn);
    c
}

async fn db_client(db: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    c
}

fn pg(db: &str) -> PgSinkConfig {
    PgSinkConfig {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "postgres".into(),
        password: String::new(),
        dbname: db.into(),
    }
}

fn ev(i: u64) -> NewEvent {
    let user = ["alice", "bob", "carol"][i as usize % 3];
    NewEvent {
        who: EventSource::new(Who {
            session: format!("s{}", i % 4),
            client: "10.0.0.7:51234".into(),
            user: user.into(),
            role: Some(if user == "carol" { "support" } else { "app" }.into()),
            database: "shop".into(),
            application: "psql \"quoted\", with comma".into(),
        }),
        what: EventStatement::new(What {
            kind: Kind::Select,
            statement: Some(format!(
                "SELECT name, phone FROM customers WHERE id = $1 -- ünïcode {i}"
            )),
            fingerprint: Some("fp1".into()),
            tables: vec!["public.customers".into()],
            columns: vec![ColumnAccess {
                name: "public.customers.phone".into(),
                class: "confidential".into(),
                access: if user == "carol" {
                    "masked"
                } else {
                    "plaintext"
                }
                .into(),
            }],
        }),
        decision: if matches!(i % 5, 0) {
            Decision::Deny
        } else {
            Decision::Allow
        },
        rows: Some(i),
        duration_us: Some(100 + i),
        sqlstate: Some(if matches!(i % 5, 0) { "42501" } else { "00000" }.into()),
        ..NewEvent::new(Kind::Select)
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

struct Db {
    name: String,
    role: String,
}

impl Db {
    async fn create() -> Db {
        let pid = std::process::id();
        let db = Db {
            name: format!("pgcloak_audit_test_{pid}"),
            role: format!("pgcloak_audit_test_app_{pid}"),
        };
        let a = admin().await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name),
            format!("CREATE DATABASE {}", db.name),
            format!("DROP ROLE IF EXISTS {}", db.role),
            format!("CREATE ROLE {} NOLOGIN", db.role),
        ] {
            a.batch_execute(&sql).await.unwrap();
        }
        db
    }

    async fn drop(self) {
        let a = admin().await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            format!("DROP ROLE IF EXISTS {}", self.role),
        ] {
            a.batch_execute(&sql).await.unwrap();
        }
    }
}

fn ok_report(results: &[verify::InstanceVerify]) -> &verify::VerifyReport {
    assert_eq!(results.len(), 1, "{results:?}");
    match &results[0].result {
        Ok(r) => r,
        Err(e) => panic!("verify failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_verify_query_outage_and_restart() {
    let db = Db::create().await;
    let name = db.name.clone();
    // Run in a task so a failed assertion still drops the throwaway database.
    let result = tokio::spawn(async move { run(&name).await }).await;
    db.drop().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn run(db_name: &str) {
    let db = Db {
        name: db_name.to_string(),
        role: db_name.replace("pgcloak_audit_test_", "pgcloak_audit_test_app_"),
    };
    let db = &db;
    let signer = Arc::new(RingSigner::from_seed(&[3; 32]));
    let pk = signer.public_key();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let cfg = AuditConfig {
        file: Some(file.clone()),
        postgres: Some(pg(&db.name)),
        checkpoint_every: 10,
        ..AuditConfig::default()
    };

    // 1. Events reach both sinks; the table verifies; the schema is locked down.
    let (h, task) = Auditor::start(cfg.clone(), signer.clone(), "node-a")
        .await
        .unwrap();
    for i in 1..=25 {
        h.record(ev(i)).unwrap();
    }
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    let opts = VerifyOptions::default();
    let results = verify::verify_postgres(&pg(&db.name), &pk, &opts)
        .await
        .unwrap();
    let r = ok_report(&results);
    assert_eq!((r.events, r.checkpoints, r.unsigned_tail), (27, 3, 0));
    assert_eq!(results[0].instance, "node-a");

    let c = db_client(&db.name).await;
    let privs = c
        .query_one(
            &format!(
                "SELECT has_schema_privilege('{0}', 'pgcloak_audit', 'USAGE'),
                        has_table_privilege('{0}', 'pgcloak_audit.statements', 'SELECT'),
                        has_table_privilege('{0}', 'pgcloak_audit.statements', 'INSERT'),
                        has_table_privilege('{0}', 'pgcloak_audit.checkpoints', 'SELECT')",
                db.role
            ),
            &[],
        )
        .await
        .unwrap();
    for i in 0..4 {
        assert!(
            !privs.get::<_, bool>(i),
            "app role has privilege #{i} on the audit schema"
        );
    }
    let idx: Vec<String> = c
        .query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgcloak_audit' AND tablename = 'statements'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(idx.iter().any(|d| d.contains("(ts)")), "{idx:?}");
    assert!(idx.iter().any(|d| d.contains("(\"user\", ts)")), "{idx:?}");
    assert!(
        idx.iter().any(|d| d.contains("USING gin (columns)")),
        "{idx:?}"
    );

    // The table holds exactly what the file holds, byte for byte once re-serialised.
    let all_pg = query::query_postgres(&pg(&db.name), &Filter::default())
        .await
        .unwrap();
    let all_file = query::query_path(&file, &Filter::default()).unwrap();
    assert_eq!(all_pg, all_file);

    // 2. query_postgres applies the same filters as the file query.
    let filters = [
        Filter {
            user: Some("carol".into()),
            ..Filter::default()
        },
        Filter {
            decision: Some(Decision::Deny),
            ..Filter::default()
        },
        Filter {
            column: Some("customers.phone".into()),
            role: Some("app".into()),
            ..Filter::default()
        },
        Filter {
            table: Some("customers".into()),
            ..Filter::default()
        },
        Filter {
            column: Some("phone".into()),
            kind: Some(Kind::Select),
            ..Filter::default()
        },
        Filter {
            user: Some("nobody".into()),
            ..Filter::default()
        },
        Filter {
            since: parse_time(&all_file[5].ts),
            until: parse_time(&all_file[9].ts),
            ..Filter::default()
        },
    ];
    for f in &filters {
        let from_pg = query::query_postgres(&pg(&db.name), f).await.unwrap();
        let from_file = query::query_path(&file, f).unwrap();
        assert_eq!(from_pg, from_file, "filter {f:?}");
    }
    let carol = query::query_postgres(&pg(&db.name), &filters[0])
        .await
        .unwrap();
    assert_eq!(carol.len(), 8);
    assert!(carol.iter().all(|e| e.user == "carol"));

    // 3. Tampering with the table is detected.
    c.execute(
        "UPDATE pgcloak_audit.statements SET rows = 999 WHERE seq = 5",
        &[],
    )
    .await
    .unwrap();
    let res = verify::verify_postgres(&pg(&db.name), &pk, &opts)
        .await
        .unwrap();
    let e = res[0].result.clone().unwrap_err();
    assert_eq!(e.seq, Some(5));
    assert!(e.reason.contains("hash mismatch"), "{e}");
    c.execute(
        "UPDATE pgcloak_audit.statements SET rows = 4 WHERE seq = 5",
        &[],
    )
    .await
    .unwrap();
    ok_report(
        &verify::verify_postgres(&pg(&db.name), &pk, &opts)
            .await
            .unwrap(),
    );

    c.batch_execute(
        "CREATE TABLE keep AS SELECT * FROM pgcloak_audit.statements;
         DELETE FROM pgcloak_audit.statements WHERE seq = 12;",
    )
    .await
    .unwrap();
    let e = verify::verify_postgres(&pg(&db.name), &pk, &opts)
        .await
        .unwrap()[0]
        .result
        .clone()
        .unwrap_err();
    assert!(
        e.reason.contains("seq 13 follows 11 (record 12 deleted)"),
        "{e}"
    );
    // Deleting the newest events while their checkpoint stays is truncation, detected.
    let backup = c
        .query(
            "SELECT seq FROM pgcloak_audit.statements WHERE seq >= 26",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(backup.len(), 2);
    c.batch_execute(
        "INSERT INTO pgcloak_audit.statements SELECT * FROM keep WHERE seq = 12;
         DELETE FROM pgcloak_audit.statements WHERE seq >= 26;",
    )
    .await
    .unwrap();
    let e = verify::verify_postgres(&pg(&db.name), &pk, &opts)
        .await
        .unwrap()[0]
        .result
        .clone()
        .unwrap_err();
    assert!(
        e.reason
            .contains("checkpoint for seq 27 but the chain is only at seq 25"),
        "{e}"
    );
    c.batch_execute(
        "INSERT INTO pgcloak_audit.statements SELECT * FROM keep WHERE seq >= 26; DROP TABLE keep;",
    )
    .await
    .unwrap();
    ok_report(
        &verify::verify_postgres(&pg(&db.name), &pk, &opts)
            .await
            .unwrap(),
    );

    // 4. Block mode: while the database refuses connections the handle is unhealthy and
    //    record() says so; after recovery every event is in the table.
    let admin = admin().await;
    let (h, task) = Auditor::start(
        AuditConfig {
            postgres: Some(pg(&db.name)),
            ..AuditConfig::default()
        },
        signer.clone(),
        "node-a",
    )
    .await
    .unwrap();
    wait_until("start event stored", || h.status().sinks[0].backlog == 0).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {0} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = '{0}' AND application_name = 'pgcloak-audit';",
            db.name
        ))
        .await
        .unwrap();
    let _ = h.record(ev(100));
    wait_until("unhealthy while the database is down", || !h.is_healthy()).await;
    let err = h.record(ev(101)).unwrap_err();
    assert!(
        matches!(err.reason, UnavailableReason::SinkFailing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("pgcloak: "));
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .await
        .unwrap();
    wait_until("healthy after the database is back", || h.is_healthy()).await;
    h.record(ev(102)).unwrap();
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    // 5. That second run continued the instance's chain in the table (restart), lost nothing.
    let r = verify::verify_postgres(&pg(&db.name), &pk, &opts)
        .await
        .unwrap();
    let r = ok_report(&r);
    assert_eq!(r.events, 27 + 5);
    assert_eq!(r.last_checkpoint_seq, Some(32));

    // 6. A second instance gets its own chain in the same table.
    let (h, task) = Auditor::start(
        AuditConfig {
            postgres: Some(pg(&db.name)),
            ..AuditConfig::default()
        },
        signer.clone(),
        "node-b",
    )
    .await
    .unwrap();
    h.record(ev(7)).unwrap();
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let res = verify::verify_postgres(&pg(&db.name), &pk, &opts)
        .await
        .unwrap();
    assert_eq!(res.len(), 2);
    let b = res.iter().find(|r| r.instance == "node-b").unwrap();
    assert_eq!(b.result.as_ref().unwrap().events, 3);
}
