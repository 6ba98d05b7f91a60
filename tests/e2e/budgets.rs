//! Export budgets (`max_rows_per_window`) counted across statements, sessions, protocols and two
//! proxy instances: a loop of single-row queries, a prepared statement sending only
//! Bind/Execute, a cursor FETCH loop, portal row limits and COPY TO all stop at the budget.

use std::time::Duration;

use futures_util::{pin_mut, StreamExt};
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{cluster, connect, error_text, Proxy, ProxyOptions, SUPERPASS, SUPERUSER};

const POLICY: &str = r#"
[[column]]
name = "public.customers.phone"
class = "confidential"
encrypt = "deterministic"
mask = "last4"

[[role]]
name = "app"
read = { confidential = "plaintext" }
write = ["confidential"]

[[role]]
name = "budgeted"
read = { confidential = "masked" }
max_rows_per_window = 120
window = "7d"
"#;

fn spent(e: &tokio_postgres::Error) -> bool {
    let t = error_text(e);
    e.code().map(|c| c.code()) == Some("42501")
        && t.contains(
            "export budget of policy role budgeted (120 rows with classified values per 7d)",
        )
        && t.contains("resets at")
}

async fn one_row(c: &tokio_postgres::Client, id: i32) -> Result<(), tokio_postgres::Error> {
    let msgs = c
        .simple_query(&format!("SELECT phone FROM customers WHERE id = {id}"))
        .await?;
    let rows = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 1);
    Ok(())
}

/// The policy role and its login users, created once per test run (both tests use them).
fn ensure_roles() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut sql = String::from(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'budgeted') THEN \
               CREATE ROLE budgeted; END IF; END $$;\n",
        );
        for u in [
            "budget_a", "budget_b", "budget_c", "budget_d", "budget_e", "budget_z",
        ] {
            sql.push_str(&format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{u}') THEN \
                   CREATE ROLE {u} LOGIN PASSWORD 'budget-pw' IN ROLE budgeted; END IF; END $$;\n"
            ));
        }
        cluster().psql_direct("postgres", &sql);
    });
}

/// Runs a COPY TO: the rows received, and the error it ended with (also a refused start).
async fn copy_rows(
    c: &tokio_postgres::Client,
    sql: &str,
) -> (usize, Option<tokio_postgres::Error>) {
    let stream = match c.copy_out(sql).await {
        Ok(s) => s,
        Err(e) => return (0, Some(e)),
    };
    pin_mut!(stream);
    let mut copied = 0;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => copied += bytes.iter().filter(|b| **b == b'\n').count(),
            Err(e) => return (copied, Some(e)),
        }
    }
    (copied, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_budgets_hold_across_statements_cursors_copy_and_instances() {
    let c = cluster();
    let db = c.fresh_db("budgets_app");
    c.psql_direct(
        &db,
        "CREATE TABLE customers (id int PRIMARY KEY, phone text, city text); \
         GRANT ALL ON customers TO PUBLIC",
    );
    let catalog = c.fresh_db("budgets_catalog");
    ensure_roles();
    let shared = tempfile::tempdir().unwrap();
    let start = |n: u32| {
        Proxy::start_with(ProxyOptions {
            policy: Some(POLICY.into()),
            extra: format!(
                "instance = \"budgets-{n}\"\n\
                 [catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"{catalog}\"\n\
                 [keys]\nmaster_key_file = \"{key}\"\nkeyring = \"postgres\"\n",
                key = shared.path().join("master.key").display(),
            ),
            ..Default::default()
        })
    };
    let a = start(1);
    let b = start(2);
    let app = connect(&a.url("app_user", "app-pw", &db)).await;
    let ins = app
        .prepare("INSERT INTO customers VALUES ($1, $2, 'Berlin')")
        .await
        .unwrap();
    for i in 1..=200i32 {
        app.execute(&ins, &[&i, &format!("+49 30 {i:07}")])
            .await
            .unwrap();
    }

    // A loop of 200 single-row queries: 100 through one instance, the rest through the other.
    let on_a = connect(&a.url("budget_a", "budget-pw", &db)).await;
    for id in 1..=100 {
        one_row(&on_a, id)
            .await
            .unwrap_or_else(|e| panic!("row {id}: {}", error_text(&e)));
    }
    // Unclassified reads are not counted nor limited.
    on_a.simple_query("SELECT city FROM customers")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // one flush
    let on_b = connect(&b.url("budget_a", "budget-pw", &db)).await;
    let stmt = on_b
        .prepare("SELECT phone FROM customers WHERE id = $1")
        .await
        .unwrap();
    let mut served = 100;
    let err = loop {
        match on_b.query(&stmt, &[&(served + 1)]).await {
            Ok(rows) => {
                assert_eq!(rows.len(), 1);
                served += 1;
                assert!(served <= 120, "served past the budget");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(served, 120, "B knew what A delivered");
    assert!(spent(&err), "{}", error_text(&err));
    // Refused again on A once it has read the total (and in a new session).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = connect(&a.url("budget_a", "budget-pw", &db)).await;
    let err = one_row(&again, 1).await.expect_err("spent on A too");
    assert!(spent(&err), "{}", error_text(&err));
    // A statement larger than what is left is cut at it, in both protocols.
    let on_c = connect(&a.url("budget_b", "budget-pw", &db)).await;
    let msgs = on_c
        .simple_query("SELECT phone FROM customers WHERE id <= 100")
        .await
        .unwrap();
    assert_eq!(
        msgs.iter()
            .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
            .count(),
        100
    );

    // A cursor FETCH loop (20 left for budget_b).
    on_c.batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT phone FROM customers ORDER BY id")
        .await
        .unwrap();
    let mut fetched = 0;
    let err = loop {
        match on_c.simple_query("FETCH 7 FROM c").await {
            Ok(msgs) => {
                fetched += msgs
                    .iter()
                    .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                    .count();
                assert!(fetched <= 20, "fetched past the budget");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(
        fetched, 14,
        "two whole FETCHes; the third would pass the budget"
    );
    let t = error_text(&err);
    assert!(
        t.contains("first 6 rows were delivered") && t.contains("export budget"),
        "{t}"
    );
    on_c.batch_execute("ROLLBACK").await.unwrap();
    let err = on_c
        .simple_query("SELECT phone FROM customers WHERE id = 1")
        .await
        .expect_err("spent");
    assert!(spent(&err), "{}", error_text(&err));

    // Portal row limits (Execute with a row count) and COPY TO, for a third user.
    let mut on_d = connect(&b.url("budget_c", "budget-pw", &db)).await;
    let tx = on_d.transaction().await.unwrap();
    let st = tx
        .prepare("SELECT phone FROM customers ORDER BY id")
        .await
        .unwrap();
    let portal = tx.bind(&st, &[]).await.unwrap();
    let mut got = 0;
    let err = loop {
        match tx.query_portal(&portal, 25).await {
            Ok(rows) => {
                got += rows.len();
                assert!(!rows.is_empty() && got <= 120, "{got}");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(got, 100, "four Executes of 25, the fifth cut at the budget");
    assert!(
        error_text(&err).contains("export budget"),
        "{}",
        error_text(&err)
    );
    drop(tx);
    let (copied, e) = copy_rows(
        &on_d,
        "COPY (SELECT phone FROM customers ORDER BY id) TO STDOUT",
    )
    .await;
    assert_eq!(
        copied, 0,
        "the cut Execute delivered the budget's last rows"
    );
    let e = e.expect("COPY TO refused once the budget is spent");
    assert!(spent(&e), "{}", error_text(&e));
    drop(on_d);

    // COPY TO with some budget left is cut at it (the app role has no budget).
    let fresh = connect(&a.url("budget_d", "budget-pw", &db)).await;
    let (copied, copy_err) = copy_rows(
        &fresh,
        "COPY (SELECT phone FROM customers ORDER BY id) TO STDOUT",
    )
    .await;
    assert_eq!(copied, 120, "COPY TO is cut at the budget");
    let e = copy_err.expect("the cut COPY ends with an error");
    assert!(
        error_text(&e).contains("first 120 rows were delivered"),
        "{}",
        error_text(&e)
    );
    // psql (the simple protocol): the COPY is cut, psql reports the error and fails.
    let (ok, out, err) = crate::harness::psql(
        &b.url("budget_e", "budget-pw", &db),
        &[
            "-c",
            "COPY (SELECT phone FROM customers ORDER BY id) TO STDOUT",
        ],
    );
    assert!(!ok, "{out}");
    assert_eq!(out.lines().count(), 120, "{err}");
    assert!(err.contains("first 120 rows were delivered"), "{err}");
    assert!(
        !out.contains("COPY 200") && !err.contains("COPY 200"),
        "no completion after the error"
    );
    // The counts are in the catalog database, per user.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counts = c.psql_direct(
        &catalog,
        "SELECT usr || '=' || rows FROM pgcloak.budgets ORDER BY usr",
    );
    let counts: Vec<&str> = counts
        .lines()
        .map(str::trim)
        .filter(|l| l.contains('='))
        .collect();
    assert_eq!(
        counts,
        [
            "budget_a=120",
            "budget_b=120",
            "budget_c=120",
            "budget_d=120",
            "budget_e=120"
        ]
    );
    let _ = app;
}

/// A budget whose table cannot be reached fails closed: classified reads of a budgeted role are
/// refused with the reason, everything else keeps working; grants cannot be requested and say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_budget_table_refuses_budgeted_reads_with_the_reason() {
    let c = cluster();
    let db = c.fresh_db("budgets_dead");
    c.psql_direct(
        &db,
        "CREATE TABLE customers (id int PRIMARY KEY, phone text, city text); \
         GRANT ALL ON customers TO PUBLIC",
    );
    ensure_roles();
    let policy = format!("{POLICY}\n[grants]\napprovers = [\"budgeted\"]\n");
    let proxy = Proxy::start_with(ProxyOptions {
        policy: Some(policy),
        // The [catalog] login works for the application database (memberships, catalog), but its
        // own database, where the budget and grant tables live, does not exist.
        extra: format!(
            "[catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"no_such_catalog_db\"\n"
        ),
        ..Default::default()
    });
    let app = connect(&proxy.url("app_user", "app-pw", &db)).await;
    app.execute(
        "INSERT INTO customers VALUES (1, $1, 'Berlin')",
        &[&"+49 30 1"],
    )
    .await
    .unwrap();
    let user = connect(&proxy.url("budget_z", "budget-pw", &db)).await;
    let err = one_row(&user, 1).await.expect_err("fails closed");
    let t = error_text(&err);
    assert!(
        t.contains("42501")
            && t.contains("pgcloak.budgets")
            && t.contains("export budget of policy role budgeted"),
        "{t}"
    );
    let rows = user
        .simple_query("SELECT city FROM customers")
        .await
        .expect("unclassified reads still work");
    assert_eq!(
        rows.iter()
            .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
            .count(),
        1
    );
    let (ok, out, err) = proxy.cli(&[
        "grant",
        "request",
        "--user",
        "budget_z",
        "--class",
        "confidential",
        "--access",
        "plaintext",
        "--for",
        "1h",
        "--reason",
        "x",
    ]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("no_such_catalog_db") && !err.contains("panicked"),
        "{err}"
    );
    let log = proxy.log_text();
    assert!(
        log.contains("no_such_catalog_db")
            && log.contains("export budget counts are kept in memory"),
        "the log says what fails and what that means"
    );
}
