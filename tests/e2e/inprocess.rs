//! The proxy started in-process with `pgcloak::server::serve` (no binary): what tests of session
//! behaviour and embeddings use. Serves an encrypted column, shuts down on its token, and reports a
//! broken setup as a typed `ServeError` naming the thing to fix.

use std::sync::Arc;
use std::time::Duration;

use pgcloak::config::Config;
use pgcloak::policy_file::PolicyLoadError;
use pgcloak::server::{serve, ServeError};
use tokio_util::sync::CancellationToken;

use crate::harness::{cluster, connect, pgcloak, SUPERPASS, SUPERUSER};

const POLICY: &str = r#"
[[column]]
name = "public.notes.body"
class = "confidential"
encrypt = "randomized"
type = "text"

[default]
read = { confidential = "plaintext" }
write = ["confidential"]
"#;

/// A config (and its development master key and keyring) for a proxy in front of the test cluster.
fn setup(dir: &std::path::Path, policy: &str) -> Arc<Config> {
    let c = cluster();
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let cfg_path = dir.join("pgcloak.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{}\"\npolicy = \"policy.toml\"\nshutdown_timeout = 2\n\
             [catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"postgres\"\n",
            c.port
        ),
    )
    .unwrap();
    let init = pgcloak(
        &["keys", "init", "--config", cfg_path.to_str().unwrap()],
        &[],
    );
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    Arc::new(Config::load(&cfg_path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_in_process_and_stops_on_its_token() {
    let c = cluster();
    let db = c.fresh_db("inprocess");
    c.psql_direct(&db, "CREATE TABLE notes (id int PRIMARY KEY, body text)");
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), POLICY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(config, listener, shutdown.clone()));
    let url = format!("postgres://{SUPERUSER}:{SUPERPASS}@127.0.0.1:{port}/{db}?sslmode=disable");
    let client = connect(&url).await;
    client
        .execute(
            "INSERT INTO notes (id, body) VALUES ($1, $2)",
            &[&1i32, &"call back on Monday"],
        )
        .await
        .unwrap();
    let row = client
        .query_one("SELECT body FROM notes WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "call back on Monday");
    // At rest it is ciphertext.
    let stored = c.psql_direct(&db, "SELECT body FROM notes WHERE id = 1");
    assert!(stored.contains("pgc1:"), "{stored}");
    assert!(!stored.contains("Monday"), "{stored}");
    // The token ends the server: the open session is closed after shutdown_timeout, serve
    // returns Ok.
    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve did not stop on its shutdown token")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert!(client.simple_query("SELECT 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reports_a_broken_setup_as_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), POLICY);
    std::fs::remove_file(dir.path().join("policy.toml")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve(config, listener, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServeError::Policy(PolicyLoadError::Read { .. })),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("cannot read policy file") && msg.contains("policy.toml"),
        "{msg}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
}
