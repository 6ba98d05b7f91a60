//! Events per second through the audit writer (sequencing, hashing, checkpoint signing every
//! 1000 events, group-committed file writes) on a single-threaded runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgcloak_audit::{
    AuditConfig, Auditor, ColumnAccess, EventSource, EventStatement, Kind, NewEvent, RingSigner,
    What, Who,
};

const PER_ITER: u64 = 50_000;

/// Who and what, as the proxy builds them: once per session and once per prepared statement.
fn parts() -> (Arc<EventSource>, Arc<EventStatement>) {
    let who = EventSource::new(Who {
        session: "7f3a9c".into(),
        client: "10.1.2.3:54321".into(),
        user: "app_user".into(),
        role: Some("app".into()),
        database: "shop".into(),
        application: "checkout-service".into(),
    });
    let what = EventStatement::new(What {
        kind: Kind::Select,
        statement: Some(
            "SELECT c.id, c.name, c.phone, c.email FROM public.customers c JOIN public.orders o ON o.customer_id = c.id WHERE o.id = $1"
                .into(),
        ),
        fingerprint: Some("a1b2c3d4e5f60718".into()),
        tables: vec!["public.customers".into(), "public.orders".into()],
        columns: vec![
            ColumnAccess {
                name: "public.customers.phone".into(),
                class: "confidential".into(),
                access: "plaintext".into(),
            },
            ColumnAccess {
                name: "public.customers.email".into(),
                class: "sensitive".into(),
                access: "masked".into(),
            },
        ],
    });
    (who, what)
}

/// One execution's event, as the proxy records it after each statement.
fn event(parts: &(Arc<EventSource>, Arc<EventStatement>), i: u64) -> NewEvent {
    NewEvent {
        ts: Some(time::OffsetDateTime::now_utc()),
        who: parts.0.clone(),
        what: parts.1.clone(),
        rows: Some(i % 10),
        duration_us: Some(180),
        ..NewEvent::new(Kind::Select)
    }
}

fn writer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        file: Some(dir.path().join("audit.jsonl")),
        ..AuditConfig::default()
    };
    let signer = Arc::new(RingSigner::from_seed(&[1; 32]));
    let (h, task) = rt.block_on(Auditor::start(cfg, signer, "bench")).unwrap();
    let parts = parts();

    // CPU seconds and events of the measured loops only (not criterion's analysis).
    let cpu_total = std::cell::Cell::new(0.0f64);
    let events_total = std::cell::Cell::new(0u64);
    let mut g = c.benchmark_group("audit_writer");
    g.throughput(Throughput::Elements(PER_ITER));
    g.sample_size(10);
    g.bench_function("file_sink_events", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let cpu0 = process_cpu_seconds();
                let start = Instant::now();
                for _ in 0..iters {
                    let target = h.status().last_seq + PER_ITER;
                    let mut i = 0;
                    while i < PER_ITER {
                        // Stay under the queue capacity, letting the writer run in between.
                        for _ in 0..4096.min(PER_ITER - i) {
                            h.record(event(&parts, i)).expect("queue has room");
                            i += 1;
                        }
                        while h.status().queued > 16_384 {
                            tokio::task::yield_now().await;
                        }
                    }
                    // Done when everything is sequenced and written to the file.
                    loop {
                        let s = h.status();
                        if s.last_seq >= target && s.sinks.iter().all(|k| k.backlog == 0) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
                let elapsed = start.elapsed();
                cpu_total.set(cpu_total.get() + process_cpu_seconds() - cpu0);
                events_total.set(events_total.get() + iters * PER_ITER);
                elapsed
            })
        })
    });
    g.finish();
    // Wall-clock throughput depends on what else the machine runs; CPU time per event does not
    // (much): report both. Includes building the events (the proxy's share) and the file writes.
    let cpu = cpu_total.get();
    let events = events_total.get();
    if cpu > 0.0 {
        println!(
            "audit_writer/file_sink_events: {events} events in {cpu:.2} CPU-seconds = {:.0} events per CPU-second ({:.2} µs CPU per event)",
            events as f64 / cpu,
            cpu * 1e6 / events as f64
        );
    }
    rt.block_on(async {
        h.shutdown().await.unwrap();
        task.await.unwrap().unwrap();
    });
    assert_eq!(h.dropped(), 0);
}

/// The CPU part alone, the way a verifier re-creates a line: build the stored record, serialise it
/// canonically and chain its hash.
fn seal_only(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit_writer");
    g.throughput(Throughput::Elements(1));
    let mut prev = pgcloak_audit::GENESIS.to_string();
    let mut seq = 0;
    let parts = parts();
    g.bench_function("seal_one_event", |b| {
        b.iter(|| {
            let ne = event(&parts, seq);
            seq += 1;
            let (who, what) = (ne.who.who(), ne.what.what());
            let mut ev = pgcloak_audit::AuditEvent {
                seq,
                ts: pgcloak_audit::format_ts(time::OffsetDateTime::now_utc()),
                instance: "bench".into(),
                session: who.session.clone(),
                client: who.client.clone(),
                user: who.user.clone(),
                role: who.role.clone(),
                database: who.database.clone(),
                application: who.application.clone(),
                kind: what.kind,
                statement: what.statement.clone(),
                fingerprint: what.fingerprint.clone(),
                tables: what.tables.clone(),
                columns: what.columns.clone(),
                decision: ne.decision,
                reason: ne.reason,
                rows: ne.rows,
                duration_us: ne.duration_us,
                sqlstate: ne.sqlstate,
                prev_hash: std::mem::take(&mut prev),
                hash: String::new(),
            };
            let line = pgcloak_audit::canonical(&ev);
            ev.hash = pgcloak_audit::chain_hash(&ev.prev_hash, &line);
            prev = ev.hash.clone();
            std::hint::black_box(line)
        })
    });
    // The parts, to see where the time goes.
    g.bench_function("part_build_new_event", |b| {
        b.iter(|| std::hint::black_box(event(&parts, 7)))
    });
    g.bench_function("part_now_and_format_ts", |b| {
        b.iter(|| std::hint::black_box(pgcloak_audit::format_ts(time::OffsetDateTime::now_utc())))
    });
    let line = {
        let mut s = String::new();
        for _ in 0..12 {
            s.push_str("SELECT c.id, c.name, c.phone, c.email FROM public.customers c ");
        }
        s
    };
    g.bench_function("part_sha256_700_bytes", |b| {
        b.iter(|| {
            std::hint::black_box(pgcloak_audit::chain_hash(
                pgcloak_audit::GENESIS,
                &line[..700],
            ))
        })
    });
    g.finish();
}

/// User + system CPU time of this process (all threads), from /proc/self/stat.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Field 14 is index 11 after the state field (field 3 is index 0). Linux reports in USER_HZ = 100.
    (ticks(11) + ticks(12)) / 100.0
}

criterion_group!(benches, writer, seal_only);
criterion_main!(benches);
