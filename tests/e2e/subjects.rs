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
