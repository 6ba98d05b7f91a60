//! The subject key table (issue 21) against the test cluster, in-process: keys are created once
//! however many creators race, read back by reference, erased in one transaction with a record,
//! refused when moved between rows, and unreadable to PUBLIC.

use pgcloak::subjects::{erase, SubjectKeyStore};
use pgcloak_keymgr::{MasterKey, SubjectKeyId, SubjectKeyWrapper, SubjectRefKey};

use crate::harness::{cluster, connect, error_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_keys_are_created_once_and_erased_together() {
    let c = cluster();
    let db = c.fresh_db("subject_keys");
    let url = c.direct_url(&db);
    let mut client = connect(&url).await;
    let master = MasterKey::generate().unwrap();
    let wrapper = SubjectKeyWrapper::new(&master).unwrap();
    let refs = SubjectRefKey::new(&master);
    let alice = refs.reference(b"42");
    let bob = refs.reference(b"43");
    let id = |subject, key_id, version| SubjectKeyId {
        subject,
        key_id,
        version,
    };
    {
        let store = SubjectKeyStore {
            client: &client,
            wrapper: &wrapper,
        };
        store.ensure_schema().await.unwrap();
        store.ensure_schema().await.unwrap();
        assert!(store.key(&id(alice, 1, 1), false).await.unwrap().is_none());
    }

    // Eight creators on eight connections race for one subject's first key: one key results.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        let wrapper = SubjectKeyWrapper::new(&master).unwrap();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let store = SubjectKeyStore {
                client: &client,
                wrapper: &wrapper,
            };
            store
                .key(&id(alice, 1, 1), true)
                .await
                .unwrap()
                .expect("created")
                .expose()
                .to_vec()
        }));
    }
    let mut keys = Vec::new();
    for t in tasks {
        keys.push(t.await.unwrap());
    }
    keys.dedup();
    assert_eq!(keys.len(), 1, "every creator got the key stored first");
    let store = SubjectKeyStore {
        client: &client,
        wrapper: &wrapper,
    };
    let again = store.key(&id(alice, 1, 1), false).await.unwrap().unwrap();
    assert_eq!(again.expose(), &keys[0][..]);
    store.key(&id(alice, 2, 1), true).await.unwrap().unwrap();
    store.key(&id(alice, 1, 2), true).await.unwrap().unwrap();
    let bobs = store.key(&id(bob, 1, 1), true).await.unwrap().unwrap();
    assert_ne!(bobs.expose(), again.expose(), "one key per subject");

    // A wrapped key moved to another row does not unwrap.
    c.psql_direct(
        &db,
        &format!(
            "UPDATE pgcloak.subject_keys SET wrapped = (SELECT wrapped FROM pgcloak.subject_keys WHERE subject_ref = '\\x{bob}') \
             WHERE subject_ref = '\\x{alice}' AND key_id = 2"
        ),
    );
    let err = store.key(&id(alice, 2, 1), false).await.expect_err("moved");
    assert!(err.to_string().contains("does not unwrap"), "{err}");
    // Nothing is readable without the proxy's login.
    let public = connect(&format!(
        "host=127.0.0.1 port={} user=plain_user password=plain-pw dbname={db} sslmode=disable",
        c.port
    ))
    .await;
    let denied = public
        .simple_query("SELECT * FROM pgcloak.subject_keys")
        .await
        .expect_err("PUBLIC has no rights");
    assert!(
        error_text(&denied).contains("permission denied"),
        "{}",
        error_text(&denied)
    );

    // Erasure: every key of the subject, one transaction, recorded; others untouched.
    let e = erase(&mut client, &alice, "GDPR art. 17 request 991", "dpo")
        .await
        .unwrap();
    assert_eq!(e.keys, [(1, 1), (1, 2), (2, 1)]);
    assert!(e.at.ends_with('Z'));
    let store = SubjectKeyStore {
        client: &client,
        wrapper: &wrapper,
    };
    for (k, v) in [(1, 1), (1, 2), (2, 1)] {
        assert!(store.key(&id(alice, k, v), false).await.unwrap().is_none());
    }
    assert_eq!(
        store
            .key(&id(bob, 1, 1), false)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        bobs.expose()
    );
    let recorded = c.psql_direct(
        &db,
        "SELECT reason || ' by ' || erased_by || ': ' || keys::text FROM pgcloak.subject_erasures",
    );
    assert!(
        recorded.contains(r#"GDPR art. 17 request 991 by dpo: [{"key_id": 1, "version": 1}, {"key_id": 1, "version": 2}, {"key_id": 2, "version": 1}]"#),
        "{recorded}"
    );
    let again = erase(&mut client, &alice, "repeat", "dpo").await.unwrap();
    assert!(
        again.keys.is_empty(),
        "a second erasure destroys nothing more"
    );
}

const SERVED_POLICY: &str = r#"
[[table]]
name = "public.people"
subject = "id"

[[column]]
name = "public.people.email"
class = "confidential"
encrypt = "deterministic"
key = "subject"

[[column]]
name = "public.people.note"
class = "confidential"
encrypt = "randomized"
key = "subject"
erased = "marker"

[[role]]
name = "app"
read = { confidential = "plaintext" }
write = ["confidential"]
"#;

/// Subject-keyed columns served end to end: values written through the simple and the extended
/// protocol (a kept prepared statement sending only Bind/Execute) are stored in format 2 under
/// their subject's key, read back in plaintext, found by equality within their subject only, and
/// after the subject's keys are destroyed read as NULL / the marker while other subjects are
/// unaffected (the proxy applies the erasure record within 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_keyed_columns_are_served_and_erasure_applies() {
    use std::time::{Duration, Instant};
    let c = cluster();
    let db = c.fresh_db("subject_served");
    c.psql_direct(
        &db,
        "CREATE TABLE people (id bigint PRIMARY KEY, email bytea, note text); \
         GRANT ALL ON people TO app;",
    );
    let proxy = crate::harness::Proxy::start_with(crate::harness::ProxyOptions {
        policy: Some(SERVED_POLICY.into()),
        extra: format!(
            "[catalog]\nuser = \"{}\"\npassword = \"{}\"\ndatabase = \"{db}\"\n",
            crate::harness::SUPERUSER,
            crate::harness::SUPERPASS
        ),
        ..Default::default()
    });
    let app = connect(&proxy.url("app_user", "app-pw", &db)).await;
    // Simple protocol, literal subject.
    app.simple_query("INSERT INTO people (id, email, note) VALUES (1, 'ada@example.com', 'first')")
        .await
        .unwrap();
    // Extended protocol, parameter subject, one prepared statement kept and bound twice.
    let ins = app
        .prepare("INSERT INTO people (id, email, note) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    app.execute(&ins, &[&2i64, &"bob@example.com", &"second"])
        .await
        .unwrap();
    app.execute(&ins, &[&3i64, &"ada@example.com", &"third"])
        .await
        .unwrap();
    // Stored in format 2 (magic C1 0A, format byte 02), naming the subject.
    let direct = connect(&c.direct_url(&db)).await;
    let rows = direct
        .query("SELECT id, email FROM people ORDER BY id", &[])
        .await
        .unwrap();
    for r in &rows {
        let raw: &[u8] = r.get(1);
        assert_eq!(&raw[..3], &[0xC1, 0x0A, 0x02], "row {}", r.get::<_, i64>(0));
    }
    // The same address of two subjects encrypts differently (keys per subject).
    assert_ne!(rows[0].get::<_, &[u8]>(1), rows[2].get::<_, &[u8]>(1));
    // Reads decrypt with each row's subject key.
    let got = app
        .query("SELECT id, email, note FROM people ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i64, String, String)> =
        got.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        vec![
            (1, "ada@example.com".into(), "first".into()),
            (2, "bob@example.com".into(), "second".into()),
            (3, "ada@example.com".into(), "third".into()),
        ]
    );
    // Equality within a subject, both protocols.
    let n = app
        .query(
            "SELECT id FROM people WHERE id = $1 AND email = $2",
            &[&3i64, &"ada@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(n.len(), 1);
    let msgs = app
        .simple_query("SELECT id FROM people WHERE email = 'ada@example.com' AND id = 1")
        .await
        .unwrap();
    let count = msgs
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(count, 1);
    // A subject that has no key matches nothing (and gets none created).
    let none = app
        .query(
            "SELECT id FROM people WHERE id = $1 AND email = $2",
            &[&9i64, &"ada@example.com"],
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    // A comparison that does not name the subject is refused with the column to name.
    let e = app
        .query(
            "SELECT id FROM people WHERE email = $1",
            &[&"ada@example.com"],
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.code().map(|c| c.code()),
        Some("42501"),
        "{}",
        error_text(&e)
    );
    // Subject-keyed COPY FROM is refused with the reason (not written under column keys).
    let e = app
        .simple_query("COPY people (id, email) FROM STDIN")
        .await
        .unwrap_err();
    assert!(
        error_text(&e).contains("not supported yet"),
        "{}",
        error_text(&e)
    );

    // Erase subject 1: its keys destroyed and the erasure recorded, as `erase` does.
    let kept = direct
        .query_one("SELECT count(*) FROM pgcloak.subject_keys", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    // One key per subject and column: three subjects, two columns.
    assert_eq!(kept, 6);
    let email1: Vec<u8> = rows[0].get::<_, &[u8]>(1).to_vec();
    let subject1 = pgcloak_keymgr::SubjectHeader::of_stored(&email1)
        .unwrap()
        .key
        .subject;
    let mut eraser = connect(&c.direct_url(&db)).await;
    let erasure = erase(&mut eraser, &subject1, "test", "tester")
        .await
        .unwrap();
    assert_eq!(erasure.keys.len(), 2, "email and note keys of subject 1");
    let deadline = Instant::now() + Duration::from_secs(2) + Duration::from_millis(500);
    loop {
        let r = app
            .query_one("SELECT email, note FROM people WHERE id = 1", &[])
            .await
            .unwrap();
        let (email, note): (Option<String>, Option<String>) = (r.get(0), r.get(1));
        if email.is_none() {
            assert_eq!(note.as_deref(), Some("[erased]"));
            break;
        }
        assert!(Instant::now() < deadline, "erasure not applied within 2 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Other subjects are unaffected, in both protocols.
    let r = app
        .query_one("SELECT email FROM people WHERE id = 3", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "ada@example.com");
    let msgs = app
        .simple_query("SELECT note FROM people WHERE id = 2")
        .await
        .unwrap();
    let note = msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(note.as_deref(), Some("second"));
    // A fresh session (cold cache) too.
    let app2 = connect(&proxy.url("app_user", "app-pw", &db)).await;
    let all = app2
        .query("SELECT id, email FROM people ORDER BY id", &[])
        .await
        .unwrap();
    let emails: Vec<Option<String>> = all.iter().map(|r| r.get(1)).collect();
    assert_eq!(
        emails,
        vec![
            None,
            Some("bob@example.com".into()),
            Some("ada@example.com".into())
        ]
    );
}
