//! The driver and ORM matrix: one scenario (write, read, equality lookup, update, masked read, refusal,
//! ten executions of a cached statement, a batch, COPY, cancel) run through pgcloak by every driver and
//! ORM an application team is likely to use. Each row is a real client library talking to the real
//! proxy in front of the SCRAM test cluster; the table is written to `target/driver-matrix.txt`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::dataplane::{env, Env};
use crate::harness::{connect, error_text, psql, venv_python, workspace_target};

const CHECKS: &[&str] = &[
    "write", "read", "lookup", "update", "masked", "refusal", "repeat10", "batch", "copy",
    "cancel", "rotated",
];

type Results = BTreeMap<String, String>;

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/drivers")
}

fn config(e: &Env, base: u32, old_base: Option<u32>) -> String {
    serde_json::json!({
        "host": "127.0.0.1",
        "port": e.proxy.port,
        "db": e.db,
        "base": base,
        "old_base": old_base,
        "users": {
            "app": ["app_user", "app-pw"],
            "support": ["support_user", "support-pw"],
            "plain": ["plain_user", "plain-pw"],
        },
    })
    .to_string()
}

/// What a driver needs that cargo cannot install, and where scripts/test puts it.
fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{} missing: run scripts/test (it installs {what})",
        path.display()
    );
}

/// One external driver run: the command line, and the JSON object its scenario prints.
struct Run {
    name: String,
    cmd: Command,
}

fn python(driver: &str, cfg: &str) -> Run {
    let py = venv_python();
    require(&py, "the Python drivers and ORMs into target/venv");
    let mut cmd = Command::new(py);
    cmd.arg(scripts().join("scenario.py")).arg(driver).arg(cfg);
    Run {
        name: format!("python {driver}"),
        cmd,
    }
}

fn node(driver: &str, cfg: &str) -> Run {
    let modules = workspace_target().join("node/node_modules");
    require(
        &modules.join(driver),
        "node-postgres and postgres.js into target/node",
    );
    let mut cmd = Command::new("node");
    cmd.arg(scripts().join("scenario.js"))
        .arg(driver)
        .arg(cfg)
        .env("NODE_PATH", modules);
    Run {
        name: format!("node {driver}"),
        cmd,
    }
}

const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

fn jdbc(mode: &str, e: &Env, base: u32, old_base: Option<u32>) -> Run {
    require(
        Path::new(JDBC_JAR),
        "pgJDBC (Debian's libpostgresql-jdbc-java)",
    );
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(JDBC_JAR)
        .arg(scripts().join("Scenario.java"))
        .arg(mode)
        .arg("127.0.0.1")
        .arg(e.proxy.port.to_string())
        .arg(&e.db)
        .arg(base.to_string())
        .args([
            "app_user:app-pw",
            "support_user:support-pw",
            "plain_user:plain-pw",
        ])
        .args(old_base.map(|b| b.to_string()));
    Run {
        name: format!("java pgJDBC {mode}"),
        cmd,
    }
}

fn finish(name: &str, child: Child) -> Results {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Option<Results> = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok());
    match parsed {
        Some(r) if out.status.success() => r,
        _ => {
            let why = format!(
                "scenario did not run ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
            CHECKS
                .iter()
                .map(|c| (c.to_string(), format!("{name}: {why}")))
                .collect()
        }
    }
}

/// The first row a scenario writes, by its base (as `expected` in tests/drivers/scenario.py).
struct FirstRow {
    id: u32,
    email: String,
    phone: String,
    ssn: String,
}

fn first_row(base: u32) -> FirstRow {
    FirstRow {
        id: base + 1,
        email: format!("w{base}@example.com"),
        phone: format!("+1 555 {base:06}"),
        ssn: format!("{base}-11-1111"),
    }
}

/// `Ok` when `ok`, else the failure `what` describes.
fn check(ok: bool, what: String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what)
    }
}

/// Records one check's result: "ok", or what went wrong.
fn record(out: &mut Results, name: &str, r: Result<(), String>) {
    out.insert(name.into(), r.err().unwrap_or_else(|| "ok".into()));
}

/// The same scenario with tokio-postgres, whose `prepare` gives a named statement that later queries
/// execute with Bind + Execute only.
async fn tokio_postgres_row(e: &Env, base: u32, old_base: Option<u32>) -> Results {
    let app = connect(&e.url("app_user")).await;
    let support = connect(&e.url("support_user")).await;
    let plain = connect(&e.url("plain_user")).await;
    let FirstRow {
        id,
        email,
        phone,
        ssn,
    } = first_row(base);
    let id = id as i32;
    let mut out = Results::new();
    let err = |e: tokio_postgres::Error| error_text(&e);

    record(
        &mut out,
        "write",
        app.execute(
            "INSERT INTO customers (id, email, phone, ssn, salary) VALUES ($1, $2, $3, $4, $5)",
            &[&id, &email, &phone, &ssn, &5000i32],
        )
        .await
        .map(drop)
        .map_err(err),
    );
    let read = app
        .query(
            "SELECT email, phone, ssn, salary FROM customers WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(err)
        .and_then(|rows| {
            let got: Vec<(String, String, String, i32)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect();
            let want = vec![(email.clone(), phone.clone(), ssn.clone(), 5000)];
            check(got == want, format!("{got:?}"))
        });
    record(&mut out, "read", read);
    let lookup = app
        .query("SELECT id FROM customers WHERE email = $1", &[&email])
        .await
        .map_err(err)
        .and_then(|rows| {
            let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
            check(got == [id], format!("{got:?}"))
        });
    record(&mut out, "lookup", lookup);
    let update = async {
        app.execute(
            "UPDATE customers SET salary = $1 WHERE email = $2",
            &[&6000i32, &email],
        )
        .await
        .map_err(err)?;
        let got: i32 = app
            .query_one("SELECT salary FROM customers WHERE id = $1", &[&id])
            .await
            .map_err(err)?
            .get(0);
        check(got == 6000, format!("salary after update: {got}"))
    }
    .await;
    record(&mut out, "update", update);
    let masked = support
        .query("SELECT phone FROM customers WHERE id = $1", &[&id])
        .await
        .map_err(err)
        .and_then(|rows| {
            let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let ok =
                got.len() == 1 && got[0] != phone && got[0].ends_with(&phone[phone.len() - 4..]);
            check(ok, format!("support read {got:?}"))
        });
    record(&mut out, "masked", masked);
    let refusal = match plain
        .query("SELECT email FROM customers WHERE id = $1", &[&id])
        .await
    {
        Ok(rows) => Err(format!("not refused: {} rows", rows.len())),
        Err(e) => {
            let text = error_text(&e);
            check(
                e.code().map(|c| c.code()) == Some("42501") && text.contains("pgcloak:"),
                text,
            )
        }
    };
    record(&mut out, "refusal", refusal);
    let repeat = async {
        let st = app
            .prepare("SELECT email, salary FROM customers WHERE email = $1")
            .await
            .map_err(err)?;
        for i in 0..10 {
            let rows = app.query(&st, &[&email]).await.map_err(err)?;
            let got: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            if got != [(email.clone(), 6000)] {
                return Err(format!("execution {}: {got:?}", i + 1));
            }
        }
        Ok(())
    }
    .await;
    record(&mut out, "repeat10", repeat);
    let batch = async {
        let st = app
            .prepare("INSERT INTO customers (id, email, salary) VALUES ($1, $2, $3)")
            .await
            .map_err(err)?;
        // Pipelined: all twenty executions are sent before the first answer is read.
        let rows: Vec<(i32, String, i32)> = (0..20)
            .map(|i| {
                (
                    base as i32 + 100 + i,
                    format!("b{}@example.com", base as i32 + i),
                    100 * i,
                )
            })
            .collect();
        let sends = rows.iter().map(|(i, e, s)| {
            let (app, st) = (&app, &st);
            async move { app.execute(st, &[i, e, s]).await }
        });
        for r in futures_util::future::join_all(sends).await {
            r.map_err(err)?;
        }
        let got = app
            .query(
                "SELECT id, salary FROM customers WHERE email = $1",
                &[&format!("b{}@example.com", base + 7)],
            )
            .await
            .map_err(err)?;
        let got: Vec<(i32, i32)> = got.iter().map(|r| (r.get(0), r.get(1))).collect();
        check(got == [(base as i32 + 107, 700)], format!("{got:?}"))
    }
    .await;
    record(&mut out, "batch", batch);
    let copy = async {
        use futures_util::SinkExt;
        let sink = app
            .copy_in("COPY customers (id, email, salary) FROM STDIN")
            .await
            .map_err(err)?;
        let data: String = (0..5)
            .map(|i| {
                format!(
                    "{}\tc{}@example.com\t{}\n",
                    base + 200 + i,
                    base + i,
                    10 * i
                )
            })
            .collect();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(data)).await.map_err(err)?;
        let n = sink.finish().await.map_err(err)?;
        let got = app
            .query(
                "SELECT email, salary FROM customers WHERE id = $1",
                &[&(base as i32 + 203)],
            )
            .await
            .map_err(err)?;
        let got: Vec<(String, i32)> = got.iter().map(|r| (r.get(0), r.get(1))).collect();
        check(
            n == 5 && got == [(format!("c{}@example.com", base + 3), 30)],
            format!("{n} {got:?}"),
        )
    }
    .await;
    record(&mut out, "copy", copy);
    let cancel = async {
        let token = app.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            token.cancel_query(tokio_postgres::NoTls).await
        });
        let r = app.simple_query("SELECT pg_sleep(10)").await;
        canceller.await.unwrap().map_err(err)?;
        match r {
            Ok(_) => Err("not cancelled".to_string()),
            Err(e) => check(e.code().map(|c| c.code()) == Some("57014"), error_text(&e)),
        }
    }
    .await;
    record(&mut out, "cancel", cancel);
    let rotated = async {
        let Some(ob) = old_base else {
            return Err("n/a".to_string());
        };
        let old = first_row(ob);
        let (old_id, old_email, old_phone) = (old.id as i32, old.email, old.phone);
        let st = app
            .prepare("SELECT id, email FROM customers WHERE email = $1")
            .await
            .map_err(err)?;
        for i in 0..3 {
            let rows = app.query(&st, &[&old_email]).await.map_err(err)?;
            let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            if got != [(old_id, old_email.clone())] {
                return Err(format!(
                    "lookup {} of a row of the older key version: {got:?}",
                    i + 1
                ));
            }
        }
        let rows = app
            .query("SELECT id FROM customers WHERE phone = $1", &[&old_phone])
            .await
            .map_err(err)?;
        let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        check(got == [old_id], format!("phone lookup: {got:?}"))
    }
    .await;
    record(&mut out, "rotated", rotated);
    out
}

/// sqlx (runtime `query`/`query_as`, no macros): every query is prepared once per connection and then
/// executed as Bind + Execute; bulk inserts through `QueryBuilder::push_values`.
async fn sqlx_row(e: &Env, base: u32, old_base: Option<u32>) -> Results {
    use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
    use sqlx::Connection;
    let connect = |user: &'static str, pw: &'static str| {
        let opts = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(e.proxy.port)
            .username(user)
            .password(pw)
            .database(&e.db)
            .ssl_mode(PgSslMode::Disable);
        async move { PgConnection::connect_with(&opts).await }
    };
    let err = |e: sqlx::Error| match e.as_database_error() {
        Some(db) => format!("{}: {}", db.code().unwrap_or_default(), db.message()),
        None => e.to_string(),
    };
    let mut out = Results::new();
    let (mut app, mut support, mut plain) = match (
        connect("app_user", "app-pw").await,
        connect("support_user", "support-pw").await,
        connect("plain_user", "plain-pw").await,
    ) {
        (Ok(a), Ok(s), Ok(p)) => (a, s, p),
        (a, s, p) => {
            let why = [a.err(), s.err(), p.err()]
                .into_iter()
                .flatten()
                .map(err)
                .collect::<Vec<_>>()
                .join("; ");
            return CHECKS
                .iter()
                .map(|c| (c.to_string(), why.clone()))
                .collect();
        }
    };
    let FirstRow {
        id,
        email,
        phone,
        ssn,
    } = first_row(base);
    let id = id as i32;
    let write = sqlx::query(
        "INSERT INTO customers (id, email, phone, ssn, salary) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(&email)
    .bind(&phone)
    .bind(&ssn)
    .bind(5000i32)
    .execute(&mut app)
    .await;
    record(&mut out, "write", write.map(drop).map_err(err));
    let read: Result<Vec<(String, String, String, i32)>, _> =
        sqlx::query_as("SELECT email, phone, ssn, salary FROM customers WHERE id = $1")
            .bind(id)
            .fetch_all(&mut app)
            .await;
    record(
        &mut out,
        "read",
        read.map_err(err).and_then(|got| {
            let want = vec![(email.clone(), phone.clone(), ssn.clone(), 5000)];
            check(got == want, format!("{got:?}"))
        }),
    );
    let lookup: Result<Vec<(i32,)>, _> =
        sqlx::query_as("SELECT id FROM customers WHERE email = $1")
            .bind(&email)
            .fetch_all(&mut app)
            .await;
    record(
        &mut out,
        "lookup",
        lookup
            .map_err(err)
            .and_then(|got| check(got == [(id,)], format!("{got:?}"))),
    );
    let update = async {
        sqlx::query("UPDATE customers SET salary = $1 WHERE email = $2")
            .bind(6000i32)
            .bind(&email)
            .execute(&mut app)
            .await
            .map_err(err)?;
        let (got,): (i32,) = sqlx::query_as("SELECT salary FROM customers WHERE id = $1")
            .bind(id)
            .fetch_one(&mut app)
            .await
            .map_err(err)?;
        check(got == 6000, format!("salary after update: {got}"))
    }
    .await;
    record(&mut out, "update", update);
    let masked: Result<Vec<(String,)>, _> =
        sqlx::query_as("SELECT phone FROM customers WHERE id = $1")
            .bind(id)
            .fetch_all(&mut support)
            .await;
    record(
        &mut out,
        "masked",
        masked.map_err(err).and_then(|got| {
            let ok = got.len() == 1
                && got[0].0 != phone
                && got[0].0.ends_with(&phone[phone.len() - 4..]);
            check(ok, format!("support read {got:?}"))
        }),
    );
    let refusal = sqlx::query("SELECT email FROM customers WHERE id = $1")
        .bind(id)
        .fetch_all(&mut plain)
        .await;
    record(
        &mut out,
        "refusal",
        match refusal {
            Ok(rows) => Err(format!("not refused: {} rows", rows.len())),
            Err(e) => {
                let text = err(e);
                check(text.starts_with("42501") && text.contains("pgcloak:"), text)
            }
        },
    );
    let repeat = async {
        for i in 0..10 {
            let got: Vec<(String, i32)> =
                sqlx::query_as("SELECT email, salary FROM customers WHERE email = $1")
                    .bind(&email)
                    .fetch_all(&mut app)
                    .await
                    .map_err(err)?;
            if got != [(email.clone(), 6000)] {
                return Err(format!("execution {}: {got:?}", i + 1));
            }
        }
        Ok(())
    }
    .await;
    record(&mut out, "repeat10", repeat);
    let batch = async {
        let mut qb = sqlx::QueryBuilder::new("INSERT INTO customers (id, email, salary) ");
        qb.push_values(0..20i32, |mut b, i| {
            b.push_bind(base as i32 + 100 + i)
                .push_bind(format!("b{}@example.com", base as i32 + i))
                .push_bind(100 * i);
        });
        qb.build().execute(&mut app).await.map_err(err)?;
        let got: Vec<(i32, i32)> =
            sqlx::query_as("SELECT id, salary FROM customers WHERE email = $1")
                .bind(format!("b{}@example.com", base + 7))
                .fetch_all(&mut app)
                .await
                .map_err(err)?;
        check(got == [(base as i32 + 107, 700)], format!("{got:?}"))
    }
    .await;
    record(&mut out, "batch", batch);
    let copy = async {
        let mut cp = app
            .copy_in_raw("COPY customers (id, email, salary) FROM STDIN")
            .await
            .map_err(err)?;
        let data: String = (0..5)
            .map(|i| {
                format!(
                    "{}\tc{}@example.com\t{}\n",
                    base + 200 + i,
                    base + i,
                    10 * i
                )
            })
            .collect();
        cp.send(data.as_bytes()).await.map_err(err)?;
        let n = cp.finish().await.map_err(err)?;
        let got: Vec<(String, i32)> =
            sqlx::query_as("SELECT email, salary FROM customers WHERE id = $1")
                .bind(base as i32 + 203)
                .fetch_all(&mut app)
                .await
                .map_err(err)?;
        check(
            n == 5 && got == [(format!("c{}@example.com", base + 3), 30)],
            format!("{n} {got:?}"),
        )
    }
    .await;
    record(&mut out, "copy", copy);
    // sqlx has no API to cancel a running query.
    record(&mut out, "cancel", Err("n/a".into()));
    let rotated = async {
        let Some(ob) = old_base else {
            return Err("n/a".to_string());
        };
        let old = first_row(ob);
        let (old_id, old_email) = (old.id as i32, old.email);
        for i in 0..3 {
            let got: Vec<(i32, String)> =
                sqlx::query_as("SELECT id, email FROM customers WHERE email = $1")
                    .bind(&old_email)
                    .fetch_all(&mut app)
                    .await
                    .map_err(err)?;
            if got != [(old_id, old_email.clone())] {
                return Err(format!(
                    "lookup {} of a row of the older key version: {got:?}",
                    i + 1
                ));
            }
        }
        let got: Vec<(i32,)> = sqlx::query_as("SELECT id FROM customers WHERE phone = $1")
            .bind(old.phone)
            .fetch_all(&mut app)
            .await
            .map_err(err)?;
        check(got == [(old_id,)], format!("phone lookup: {got:?}"))
    }
    .await;
    record(&mut out, "rotated", rotated);
    out
}

/// libpq through its two everyday tools: psql (simple protocol, literals, `\copy`, cancel on SIGINT)
/// and pgbench (`-M prepared`: Parse once, then Bind + Describe + Execute per execution).
fn libpq_row(e: &Env, base: u32, old_base: Option<u32>) -> Results {
    let FirstRow {
        id,
        email,
        phone,
        ssn,
    } = first_row(base);
    let sql = |user: &str, sql: &str| -> Result<String, String> {
        let (ok, out, err) = psql(&e.url(user), &["-v", "VERBOSITY=verbose", "-c", sql]);
        if ok {
            Ok(out.trim_end().to_string())
        } else {
            Err(err.trim().to_string())
        }
    };
    let expect = |got: Result<String, String>, want: &str| match got {
        Ok(g) if g == want => Ok(()),
        Ok(g) => Err(format!("got {g:?}, want {want:?}")),
        Err(e) => Err(e),
    };
    let mut out = Results::new();
    record(
        &mut out,
        "write",
        sql(
            "app_user",
            &format!(
                "INSERT INTO customers (id, email, phone, ssn, salary) \
                 VALUES ({id}, '{email}', '{phone}', '{ssn}', 5000)"
            ),
        )
        .map(drop),
    );
    record(
        &mut out,
        "read",
        expect(
            sql(
                "app_user",
                &format!("SELECT email, phone, ssn, salary FROM customers WHERE id = {id}"),
            ),
            &format!("{email}|{phone}|{ssn}|5000"),
        ),
    );
    let lookup = format!("SELECT id FROM customers WHERE email = '{email}'");
    record(
        &mut out,
        "lookup",
        expect(sql("app_user", &lookup), &id.to_string()),
    );
    let update = sql(
        "app_user",
        &format!("UPDATE customers SET salary = 6000 WHERE email = '{email}'"),
    )
    .and_then(|_| {
        expect(
            sql(
                "app_user",
                &format!("SELECT salary FROM customers WHERE id = {id}"),
            ),
            "6000",
        )
    });
    record(&mut out, "update", update);
    let masked = sql(
        "support_user",
        &format!("SELECT phone FROM customers WHERE id = {id}"),
    )
    .and_then(|v| {
        if v != phone && v.ends_with(&phone[phone.len() - 4..]) {
            Ok(())
        } else {
            Err(format!("support read {v:?}"))
        }
    });
    record(&mut out, "masked", masked);
    let refusal = match sql(
        "plain_user",
        &format!("SELECT email FROM customers WHERE id = {id}"),
    ) {
        Ok(v) => Err(format!("not refused: {v:?}")),
        Err(e) if e.contains("42501") && e.contains("pgcloak:") => Ok(()),
        Err(e) => Err(e),
    };
    record(&mut out, "refusal", refusal);

    // pgbench -M prepared: ten executions of one prepared statement, each checked by the script.
    let script = e.proxy.dir.path().join(format!("repeat-{base}.sql"));
    std::fs::write(
        &script,
        "SELECT salary AS s FROM customers WHERE email = :email \\gset\n\
         \\if :s != 6000\nSELECT 1/0;\n\\endif\n",
    )
    .unwrap();
    let pgbench = |email: &str| -> Result<(), String> {
        let out = Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &e.proxy.port.to_string()])
            .args(["-U", "app_user", "-n", "-M", "prepared", "-t", "10", "-D"])
            .arg(format!("email={email}"))
            .arg("-f")
            .arg(&script)
            .arg(&e.db)
            .env("PGPASSWORD", "app-pw")
            .output()
            .map_err(|e| format!("pgbench: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() && text.contains("actually processed: 10/10") {
            Ok(())
        } else {
            Err(text
                .lines()
                .filter(|l| !l.is_empty())
                .take(6)
                .collect::<Vec<_>>()
                .join(" / "))
        }
    };
    record(&mut out, "repeat10", pgbench(&email));
    let values: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "({}, 'b{}@example.com', {})",
                base + 100 + i,
                base + i,
                100 * i
            )
        })
        .collect();
    let batch = sql(
        "app_user",
        &format!(
            "INSERT INTO customers (id, email, salary) VALUES {}",
            values.join(", ")
        ),
    )
    .and_then(|_| {
        expect(
            sql(
                "app_user",
                &format!(
                    "SELECT id, salary FROM customers WHERE email = 'b{}@example.com'",
                    base + 7
                ),
            ),
            &format!("{}|700", base + 107),
        )
    });
    record(&mut out, "batch", batch);
    let copy = (|| {
        let mut child = Command::new("psql")
            .arg(e.url("app_user"))
            .args([
                "-X",
                "-c",
                "\\copy customers (id, email, salary) FROM STDIN",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let data: String = (0..5)
            .map(|i| {
                format!(
                    "{}\tc{}@example.com\t{}\n",
                    base + 200 + i,
                    base + i,
                    10 * i
                )
            })
            .collect();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), data.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        expect(
            sql(
                "app_user",
                &format!(
                    "SELECT email, salary FROM customers WHERE id = {}",
                    base + 203
                ),
            ),
            &format!("c{}@example.com|30", base + 3),
        )
    })();
    record(&mut out, "copy", copy);
    // psql sends a CancelRequest on SIGINT.
    let cancel = (|| {
        let child = Command::new("psql")
            .arg(e.url("app_user"))
            .args(["-X", "-v", "VERBOSITY=verbose", "-c", "SELECT pg_sleep(10)"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        std::thread::sleep(std::time::Duration::from_secs(1));
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if err.contains("57014") {
            Ok(())
        } else {
            Err(format!("not cancelled: {err}"))
        }
    })();
    record(&mut out, "cancel", cancel);
    let rotated = match old_base {
        None => Err("n/a".to_string()),
        Some(ob) => {
            let FirstRow {
                email: old_email,
                phone: old_phone,
                ..
            } = first_row(ob);
            expect(
                sql(
                    "app_user",
                    &format!("SELECT id FROM customers WHERE email = '{old_email}'"),
                ),
                &(ob + 1).to_string(),
            )
            .and_then(|_| {
                expect(
                    sql(
                        "app_user",
                        &format!("SELECT id FROM customers WHERE phone IN ('{old_phone}', 'x')"),
                    ),
                    &(ob + 1).to_string(),
                )
            })
            .and_then(|_| pgbench(&old_email).map_err(|e| format!("old row, prepared: {e}")))
        }
    };
    record(&mut out, "rotated", rotated);
    out
}

fn table(rows: &[(String, Results)]) -> String {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(6).max(6);
    let mut s = format!("{:width$}", "driver");
    for c in CHECKS {
        s.push_str(&format!("  {c:>8}"));
    }
    s.push('\n');
    let mut failures = String::new();
    for (name, r) in rows {
        s.push_str(&format!("{name:width$}"));
        for c in CHECKS {
            let v = r.get(*c).map(String::as_str).unwrap_or("missing");
            let cell = match v {
                "ok" | "n/a" => v,
                _ => {
                    failures.push_str(&format!("\n{name} {c}: {v}"));
                    "FAIL"
                }
            };
            s.push_str(&format!("  {cell:>8}"));
        }
        s.push('\n');
    }
    s + &failures
}

const PYTHON: &[&str] = &[
    "psycopg-text",
    "psycopg-binary",
    "psycopg-pipeline",
    "psycopg2",
    "pg8000",
    "asyncpg",
    "sqlalchemy-core",
    "sqlalchemy-orm",
    "django",
];
const NODE: &[&str] = &["pg", "postgres"];
const JDBC: &[&str] = &["default", "threshold1", "binary", "rewrite"];
/// The external drivers above, then libpq, tokio-postgres and sqlx, which run in this process.
const DRIVERS: usize = PYTHON.len() + NODE.len() + JDBC.len() + 3;

/// The base of driver `i`'s rows in pass `pass` (each driver writes ids in [base, base + 1000)).
fn base(pass: u32, i: usize) -> u32 {
    10_000 * (1 + i as u32) + 500 * pass
}

/// One run of the scenario by every driver; `old`: the bases of the pass before `keys rotate`.
async fn pass(e: &Env, pass_no: u32) -> Vec<(String, Results)> {
    let old = pass_no.checked_sub(1);
    let mut bases = (0..DRIVERS).map(|i| (base(pass_no, i), old.map(|p| base(p, i))));
    let mut runs = Vec::new();
    for driver in PYTHON {
        let (b, o) = bases.next().unwrap();
        runs.push(python(driver, &config(e, b, o)));
    }
    for driver in NODE {
        let (b, o) = bases.next().unwrap();
        runs.push(node(driver, &config(e, b, o)));
    }
    for mode in JDBC {
        let (b, o) = bases.next().unwrap();
        runs.push(jdbc(mode, e, b, o));
    }
    let (libpq_base, libpq_old) = bases.next().unwrap();
    let (rust_base, rust_old) = bases.next().unwrap();
    let (sqlx_base, sqlx_old) = bases.next().unwrap();

    // Three scenarios at a time: the cancel checks need the query to have reached the server before
    // the cancel request does (one second later), which a machine of two cores keeps true at this load.
    let mut rows: Vec<(String, Results)> = Vec::new();
    for chunk in runs.chunks_mut(3) {
        let children: Vec<(String, Child)> = chunk
            .iter_mut()
            .map(|r| {
                let child = r
                    .cmd
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|err| panic!("{}: {err}", r.name));
                (r.name.clone(), child)
            })
            .collect();
        let done = tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(|(n, c)| {
                    let r = finish(&n, c);
                    (n, r)
                })
                .collect::<Vec<_>>()
        });
        rows.extend(done.await.unwrap());
    }
    rows.push((
        "libpq psql+pgbench".into(),
        tokio::task::block_in_place(|| libpq_row(e, libpq_base, libpq_old)),
    ));
    rows.push((
        "rust tokio-postgres".into(),
        tokio_postgres_row(e, rust_base, rust_old).await,
    ));
    rows.push(("rust sqlx".into(), sqlx_row(e, sqlx_base, sqlx_old).await));
    rows
}

/// Rotates `column`'s key and waits until the running proxy has loaded the new keyring.
async fn rotate(e: &Env, column: &str) {
    let reloads = || e.proxy.log_text().matches("keyring reloaded").count();
    let before = reloads();
    let (ok, _, err) = e.proxy.cli(&["keys", "rotate", column]);
    assert!(ok, "{err}");
    for _ in 0..100 {
        if reloads() > before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the proxy did not reload the keyring after rotating {column}");
}

/// Every driver and ORM of the matrix passes every check that applies to it ("n/a" only where the
/// driver has no API for it: COPY in node-postgres without pg-copy-streams, cancel in pg8000), also
/// after `keys rotate` (a second pass, whose result is the "rotated" column: every check again, and
/// rows of the older key version found by equality), and nothing any of them wrote is plaintext at
/// rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_and_orm_works_unchanged_on_encrypted_columns() {
    let e = env("matrix");
    let mut rows = pass(&e, 0).await;
    rotate(&e, "public.customers.email").await;
    rotate(&e, "public.customers.phone").await;
    let after = pass(&e, 1).await;
    for ((name, r), (name2, r2)) in rows.iter_mut().zip(after) {
        assert_eq!(*name, name2);
        let failed = CHECKS
            .iter()
            .find(|c| !matches!(r2.get(**c).map(String::as_str), Some("ok" | "n/a")));
        let verdict = match failed {
            None => r2.get("rotated").cloned().unwrap_or_default(),
            Some(c) => format!(
                "after rotation, {c}: {}",
                r2.get(*c).map(String::as_str).unwrap_or("missing")
            ),
        };
        r.insert("rotated".into(), verdict);
    }

    // Every value a driver wrote is ciphertext at rest, whatever path it took (text, binary, COPY,
    // UNNEST, pipelines).
    assert_eq!(
        e.direct(
            "SELECT count(*) FROM customers WHERE email NOT LIKE 'pgc1:%' \
             OR phone NOT LIKE 'pgc1:%' OR ssn NOT LIKE 'pgc1:%' \
             OR length(salary) < 40 OR get_byte(salary, 0) <> 193"
        ),
        "0",
        "plaintext at rest"
    );
    // 26 rows per driver and pass (1 + 20 batch + 5 COPY), node-postgres without COPY.
    let written = e.direct("SELECT count(*) FROM customers WHERE email IS NOT NULL");
    assert_eq!(
        written,
        (2 * (DRIVERS * 26 - 5)).to_string(),
        "rows written"
    );

    let text = table(&rows);
    std::fs::write(workspace_target().join("driver-matrix.txt"), &text).unwrap();
    println!("{text}");
    assert!(!text.contains("FAIL"), "driver matrix:\n{text}");
}
