//! Pipeline tests: the writer with the file sink and a sink that fails on command.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::sink::testing::{Control, TestSink};
use crate::verify::{verify_file, verify_lines, verify_path, VerifyOptions};
use crate::*;

fn signer() -> Arc<RingSigner> {
    Arc::new(RingSigner::from_seed(&[9; 32]))
}

fn ev(i: u64) -> NewEvent {
    NewEvent {
        who: EventSource::new(Who {
            session: "s1".into(),
            client: "127.0.0.1:5555".into(),
            user: "alice".into(),
            role: Some("app".into()),
            database: "shop".into(),
            application: "test".into(),
        }),
        what: EventStatement::new(What {
            kind: Kind::Select,
            statement: Some(format!(
                "SELECT phone FROM customers WHERE id = $1 /* {i} */"
            )),
            fingerprint: Some("fp".into()),
            tables: vec!["public.customers".into()],
            columns: vec![ColumnAccess {
                name: "public.customers.phone".into(),
                class: "confidential".into(),
                access: "masked".into(),
            }],
        }),
        rows: Some(i),
        duration_us: Some(5),
        sqlstate: Some("00000".into()),
        ..NewEvent::new(Kind::Select)
    }
}

fn file_config(path: &Path) -> AuditConfig {
    AuditConfig {
        file: Some(path.to_path_buf()),
        ..AuditConfig::default()
    }
}

fn records(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| parse_line(l).unwrap())
        .collect()
}

fn events(path: &Path) -> Vec<AuditEvent> {
    records(path)
        .into_iter()
        .filter_map(|r| match r {
            Record::Event(e) => Some(e),
            Record::Checkpoint(_) => None,
        })
        .collect()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn events_are_chained_checkpointed_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let s = signer();
    let cfg = AuditConfig {
        checkpoint_every: 10,
        ..file_config(&path)
    };
    let (h, task) = Auditor::start(cfg, s.clone(), "node-1").await.unwrap();
    assert_eq!(h.status().checkpoint_age, None, "no checkpoint yet");
    for i in 0..25 {
        h.record(ev(i)).unwrap();
    }
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let age = h.status().checkpoint_age.expect("checkpoints were made");
    assert!(age < std::time::Duration::from_secs(10), "{age:?}");

    let recs = records(&path);
    let evs = events(&path);
    // start + 25 + shutdown, seq 1.. without gaps.
    assert_eq!(evs.len(), 27);
    assert!(evs.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    assert_eq!(evs[0].kind, Kind::Start);
    assert_eq!(evs[0].prev_hash, GENESIS);
    assert_eq!(evs[26].kind, Kind::Shutdown);
    assert!(evs.iter().all(|e| e.instance == "node-1"));
    assert_eq!(evs[5].rows, Some(4));
    // Checkpoints after every 10 events and at shutdown, the last covering everything.
    let cps: Vec<u64> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Checkpoint(c) => Some(c.seq),
            _ => None,
        })
        .collect();
    assert_eq!(cps, [10, 20, 27]);
    assert!(matches!(recs.last(), Some(Record::Checkpoint(c)) if c.seq == 27));

    let r = verify_path(&path, &s.public_key(), &VerifyOptions::default()).unwrap();
    assert_eq!((r.events, r.checkpoints, r.unsigned_tail), (27, 3, 0));
    // Another key does not verify.
    let other = RingSigner::from_seed(&[1; 32]).public_key();
    assert!(verify_path(&path, &other, &VerifyOptions::default()).is_err());
    // Recording after shutdown is refused and counted.
    assert!(h.record(ev(0)).is_err());
    assert!(!h.is_healthy());
}

#[tokio::test]
async fn restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let s = signer();
    for round in 0..3 {
        let (h, task) = Auditor::start(file_config(&path), s.clone(), "node-1")
            .await
            .unwrap();
        for i in 0..(10 + round) {
            h.record(ev(i)).unwrap();
        }
        h.shutdown().await.unwrap();
        task.await.unwrap().unwrap();
    }
    let evs = events(&path);
    assert_eq!(evs.len(), 3 * 2 + 10 + 11 + 12);
    assert!(evs.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    let starts: Vec<&AuditEvent> = evs.iter().filter(|e| e.kind == Kind::Start).collect();
    assert_eq!(starts.len(), 3);
    assert!(starts[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("continuing the chain after seq 12"));
    let r = verify_path(&path, &s.public_key(), &VerifyOptions::default()).unwrap();
    assert_eq!(r.events, evs.len() as u64);
    assert_eq!(r.unsigned_tail, 0);
}

#[tokio::test]
async fn restart_after_crash_with_torn_line_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let s = signer();
    let (h, task) = Auditor::start(file_config(&path), s.clone(), "n")
        .await
        .unwrap();
    for i in 0..5 {
        h.record(ev(i)).unwrap();
    }
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    // Simulate a crash in the middle of writing a line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\":8,\"ts\":\"20").unwrap();
    drop(f);
    let (h, task) = Auditor::start(file_config(&path), s.clone(), "n")
        .await
        .unwrap();
    h.record(ev(9)).unwrap();
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let r = verify_path(&path, &s.public_key(), &VerifyOptions::default()).unwrap();
    assert_eq!(r.events, 7 + 3);
}

#[tokio::test]
async fn rotation_by_size_keeps_one_verifiable_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let s = signer();
    let cfg = AuditConfig {
        checkpoint_every: 20,
        max_file_bytes: Some(8 * 1024),
        ..file_config(&path)
    };
    let (h, task) = Auditor::start(cfg.clone(), s.clone(), "node-1")
        .await
        .unwrap();
    for i in 0..300 {
        h.record(ev(i)).unwrap();
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    let files = chain_files(&path);
    assert!(files.len() >= 3, "expected rotation, got {files:?}");
    let mut all = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let recs = records(f);
        // Every rotated file ends with a checkpoint; names carry its seq.
        if i + 1 < files.len() {
            let Some(Record::Checkpoint(cp)) = recs.last() else {
                panic!("{f:?} does not end with a checkpoint")
            };
            assert!(f.to_string_lossy().ends_with(&format!(".{}", cp.seq)));
        }
        all.extend(events(f));
    }
    assert_eq!(all.len(), 302);
    assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    let r = verify_path(&path, &s.public_key(), &VerifyOptions::default()).unwrap();
    assert_eq!((r.events, r.files.len()), (302, files.len()));
    // One later file on its own verifies as a segment.
    let seg = verify_file(
        &files[1],
        &s.public_key(),
        &VerifyOptions {
            require_genesis: false,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(seg.first_seq.unwrap() > 1);
    // Deleting a whole rotated file in the middle is a deletion.
    std::fs::remove_file(&files[1]).unwrap();
    let e = verify_path(&path, &s.public_key(), &VerifyOptions::default()).unwrap_err();
    assert!(e.reason.contains("deleted"), "{e}");

    // A restart continues after the rotated chain.
    let (h, task) = Auditor::start(cfg, s.clone(), "node-1").await.unwrap();
    h.record(ev(1)).unwrap();
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let last = events(&path).last().unwrap().seq;
    assert_eq!(last, 302 + 3);
}

fn start_with_test_sink(
    cfg: AuditConfig,
    control: &Control,
) -> impl std::future::Future<
    Output = Result<(AuditHandle, tokio::task::JoinHandle<Result<(), AuditError>>), AuditError>,
> {
    let sink = Box::new(TestSink {
        control: control.clone(),
    });
    crate::writer::start_with_sinks(cfg, signer(), "node-1".into(), vec![sink])
}

#[tokio::test]
async fn a_burst_of_statements_reaches_the_sinks_in_few_writes() {
    // Regression: the writer woke (and wrote to each sink) once per event, which cost a busy proxy a
    // cross-thread wake-up per statement. Events arriving one by one, each giving the writer a
    // chance to run, now reach the sink in a handful of batches.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let control = Control::default();
    let (h, task) = start_with_test_sink(file_config(&path), &control)
        .await
        .unwrap();
    for i in 0..200 {
        h.record(ev(i)).unwrap();
        tokio::task::yield_now().await;
    }
    wait_until("all 200 events in the sink", || {
        control.lines.lock().unwrap().len() >= 201
    })
    .await;
    let writes = control.writes.load(Ordering::SeqCst);
    assert!(writes < 20, "200 events took {writes} sink writes");
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(events(&path).len(), 202, "start, 200 statements, shutdown");
}

#[tokio::test]
async fn block_mode_reports_unhealthy_while_a_sink_fails_and_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let control = Control::default();
    let (h, task) = start_with_test_sink(file_config(&path), &control)
        .await
        .unwrap();
    h.record(ev(1)).unwrap();
    assert!(h.is_healthy());

    control.fail.store(true, Ordering::SeqCst);
    // The next write fails and marks the sink failing.
    let _ = h.record(ev(2));
    wait_until("unhealthy", || !h.is_healthy()).await;
    let err = h.record(ev(3)).unwrap_err();
    assert!(
        matches!(err.reason, UnavailableReason::SinkFailing { ref sink, .. } if sink == "test")
    );
    assert!(err.event_kept, "an event that fits in the buffer is kept");
    assert!(err.to_string().contains("statements are refused"));
    assert!(h.unavailable_reason().is_some());
    assert!(!h.status().sinks[1].healthy);

    control.fail.store(false, Ordering::SeqCst);
    wait_until("healthy again", || h.is_healthy()).await;
    h.record(ev(4)).unwrap();
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    // Nothing was lost in the failing sink: its lines form the same complete chain.
    let mut text = control.lines.lock().unwrap().join("\n");
    text.push('\n');
    let pk = signer().public_key();
    let r = verify_lines(text.as_bytes(), &pk, &VerifyOptions::default()).unwrap();
    assert_eq!(r.events, 6);
    assert_eq!(h.dropped(), 0);
    assert_eq!(
        verify_path(&path, &pk, &VerifyOptions::default())
            .unwrap()
            .events,
        6
    );
}

#[tokio::test]
async fn block_mode_refuses_when_the_queue_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let cfg = AuditConfig {
        queue_capacity: 2,
        ..file_config(&path)
    };
    let (h, task) = Auditor::start(cfg, signer(), "n").await.unwrap();
    // The current-thread runtime does not run the writer until we await: the queue fills.
    h.record(ev(1)).unwrap();
    h.record(ev(2)).unwrap();
    assert!(!h.is_healthy());
    let err = h.record(ev(3)).unwrap_err();
    assert_eq!(err.reason, UnavailableReason::QueueFull);
    assert!(!err.event_kept);
    assert_eq!(h.dropped(), 1);
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    // The loss is on record.
    let gap: Vec<AuditEvent> = events(&path)
        .into_iter()
        .filter(|e| e.kind == Kind::Gap)
        .collect();
    assert_eq!(gap.len(), 1);
    assert_eq!(gap[0].reason.as_deref(), Some("1 events dropped"));
}

#[tokio::test]
async fn drop_mode_counts_and_records_a_gap_event_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let control = Control::default();
    let cfg = AuditConfig {
        on_failure: OnFailure::Drop,
        sink_backlog: 5,
        ..file_config(&path)
    };
    let (h, task) = start_with_test_sink(cfg, &control).await.unwrap();
    wait_until("start event written", || {
        h.status().sinks.iter().all(|s| s.backlog == 0)
    })
    .await;
    control.fail.store(true, Ordering::SeqCst);
    let _ = h.record(ev(1));
    wait_until("unhealthy", || !h.is_healthy()).await;
    // Keep recording: drop mode never refuses, the backlog fills to 5, then events drop.
    for i in 0..40 {
        h.record(ev(i)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let dropped = h.dropped();
    assert!(dropped > 0 && dropped < 41, "dropped {dropped}");

    control.fail.store(false, Ordering::SeqCst);
    wait_until("healthy again", || h.is_healthy()).await;
    h.record(ev(99)).unwrap();
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    let evs = events(&path);
    let gaps: Vec<&AuditEvent> = evs.iter().filter(|e| e.kind == Kind::Gap).collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        gaps[0].reason.clone().unwrap(),
        format!("{dropped} events dropped")
    );
    // Every event that was kept is in the chain, and the chain is intact in both sinks.
    assert_eq!(evs.len() as u64, 1 + 41 - dropped + 1 + 1 + 1);
    let pk = signer().public_key();
    verify_path(&path, &pk, &VerifyOptions::default()).unwrap();
    let mut text = control.lines.lock().unwrap().join("\n");
    text.push('\n');
    verify_lines(text.as_bytes(), &pk, &VerifyOptions::default()).unwrap();
}

#[tokio::test]
async fn checkpoint_every_second_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (h, task) = Auditor::start(file_config(&path), signer(), "n")
        .await
        .unwrap();
    for i in 0..3 {
        h.record(ev(i)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // Written and signed without shutdown (the sink fsyncs on the same beat).
    let recs = records(&path);
    assert!(
        matches!(recs.last(), Some(Record::Checkpoint(c)) if c.seq == 4),
        "{recs:?}"
    );
    // No traffic, no new checkpoint.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(records(&path).len(), recs.len());
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn nul_characters_are_replaced_so_every_sink_stores_the_same_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (h, task) = Auditor::start(file_config(&path), signer(), "n")
        .await
        .unwrap();
    h.record(NewEvent {
        what: EventStatement::new(What {
            kind: Kind::Select,
            statement: Some("SELECT '\0'".into()),
            ..What::default()
        }),
        who: EventSource::new(Who {
            user: "a\0b".into(),
            ..Who::default()
        }),
        reason: Some("r\0".into()),
        ..NewEvent::new(Kind::Select)
    })
    .unwrap();
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let e = &events(&path)[1];
    assert_eq!(e.user, "a\u{FFFD}b");
    assert_eq!(e.statement.as_deref(), Some("SELECT '\u{FFFD}'"));
    assert_eq!(e.reason.as_deref(), Some("r\u{FFFD}"));
}

#[tokio::test]
async fn caller_timestamp_is_kept_in_microseconds_utc() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (h, task) = Auditor::start(file_config(&path), signer(), "n")
        .await
        .unwrap();
    h.record(NewEvent {
        ts: Some(time::macros::datetime!(2026-03-04 05:06:07.123456789 +01:00)),
        ..NewEvent::new(Kind::Connect)
    })
    .unwrap();
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(events(&path)[1].ts, "2026-03-04T04:06:07.123456Z");
}

#[tokio::test]
async fn start_fails_clearly_without_a_sink_or_with_an_unreachable_database() {
    let err = Auditor::start(AuditConfig::default(), signer(), "n")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no audit sink"), "{err}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = AuditConfig {
        postgres: Some(PgSinkConfig {
            host: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            password: "secret".into(),
            dbname: "postgres".into(),
        }),
        ..AuditConfig::default()
    };
    let err = Auditor::start(cfg, signer(), "n")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("secret"));

    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(&dir.path().join("missing-dir").join("audit.jsonl"));
    let err = Auditor::start(cfg, signer(), "n")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing-dir") && err.contains("opening"),
        "{err}"
    );
}

#[tokio::test]
async fn huge_statements_are_cut_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (h, task) = Auditor::start(file_config(&path), signer(), "n")
        .await
        .unwrap();
    let long = "é".repeat(MAX_STATEMENT_BYTES); // 2 bytes each
    h.record(NewEvent {
        what: EventStatement::new(What {
            kind: Kind::Insert,
            statement: Some(long),
            ..What::default()
        }),
        ..NewEvent::new(Kind::Insert)
    })
    .unwrap();
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let st = events(&path)[1].statement.clone().unwrap();
    assert!(st.len() < MAX_STATEMENT_BYTES + 32);
    assert!(st.ends_with(&format!("…[{} bytes cut]", MAX_STATEMENT_BYTES)));
}
