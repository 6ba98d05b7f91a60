//! NATS JetStream sink against the real local server (127.0.0.1:4222, JetStream enabled).

use std::sync::Arc;
use std::time::Duration;

use pgcloak_audit::verify::{verify_lines, VerifyOptions};
use pgcloak_audit::*;

const URL: &str = "nats://127.0.0.1:4222";

fn require_nats() {
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:4222".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!("NATS with JetStream must run at 127.0.0.1:4222 for this test (start it with `nats-server -js`)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sink_receives_every_record_in_order() {
    require_nats();
    let pid = std::process::id();
    let nats = NatsConfig {
        url: URL.into(),
        subject: format!("pgcloak.audit.test{pid}"),
        stream: format!("PGCLOAK_AUDIT_TEST_{pid}"),
    };
    let client = async_nats::connect(URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(&nats.stream).await;

    let signer = Arc::new(RingSigner::from_seed(&[5; 32]));
    let cfg = AuditConfig {
        nats: Some(nats.clone()),
        checkpoint_every: 10,
        ..AuditConfig::default()
    };
    let (h, task) = Auditor::start(cfg, signer.clone(), "node-n").await.unwrap();
    for i in 0..30u64 {
        h.record(NewEvent {
            who: EventSource::new(Who {
                user: format!("user{}", i % 3),
                ..Who::default()
            }),
            what: EventStatement::new(What {
                kind: Kind::Select,
                statement: Some(format!("SELECT $1 /* {i} */")),
                ..What::default()
            }),
            rows: Some(i),
            ..NewEvent::new(Kind::Select)
        })
        .unwrap();
    }
    h.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    let stream = js.get_stream(&nats.stream).await.unwrap();
    let info = stream.get_info().await.unwrap();
    // start + 30 + shutdown events, checkpoints at 10, 20, 30, 32 (one more if a second passed).
    assert!(info.state.messages >= 32 + 4, "{:?}", info.state);
    let mut lines = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(m.subject.as_str(), nats.subject);
        let id = m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .unwrap()
            .as_str()
            .to_string();
        assert!(id.starts_with("node-n:"), "{id}");
        lines.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    let seqs: Vec<u64> = lines
        .iter()
        .filter_map(|l| match parse_line(l).unwrap() {
            Record::Event(e) => Some(e.seq),
            Record::Checkpoint(_) => None,
        })
        .collect();
    assert_eq!(seqs, (1..=32).collect::<Vec<_>>());
    let mut text = lines.join("\n");
    text.push('\n');
    let r = verify_lines(
        text.as_bytes(),
        &signer.public_key(),
        &VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(
        (r.events, r.unsigned_tail, r.last_checkpoint_seq),
        (32, 0, Some(32))
    );
    assert_eq!(r.checkpoints + 32, info.state.messages);

    js.delete_stream(&nats.stream).await.unwrap();
}
