//! `pgcloak encrypt` and `pgcloak reencrypt` against a real cluster: 100k rows of a text column and
//! an int4 column on bytea storage, a run killed with SIGKILL and resumed, writes racing the walk
//! (compare-and-set), rotation then reencrypt, a table without a primary key, and the error paths.
//! Values at rest are checked by reading PostgreSQL directly and decrypting with keymgr.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgcloak_keymgr::{decode_any, typed, Encoding, Envelope, Keyring, LogicalType, MasterKey};
use pgcloak_testkit::Rng;

use crate::harness::{cluster, connect, pgcloak, pgcloak_bin, SUPERPASS, SUPERUSER};

const POLICY: &str = r#"
[[column]]
name = "public.people.name"
class = "confidential"
encrypt = "deterministic"
type = "text"

[[column]]
name = "public.people.salary"
class = "sensitive"
encrypt = "randomized"
type = "int4"

[[column]]
name = "public.people.note"
class = "internal"

[[column]]
name = "public.nopk.secret"
class = "confidential"
encrypt = "randomized"
type = "text"

[[column]]
name = "public.wrongtype.n"
class = "sensitive"
encrypt = "randomized"
type = "int4"

[[column]]
name = "public.limited.s"
class = "sensitive"
encrypt = "randomized"
type = "text"

[[column]]
name = "public.bad.salary"
class = "sensitive"
encrypt = "randomized"
type = "int4"

[[column]]
name = "public.missing.c"
class = "sensitive"
encrypt = "randomized"
type = "text"

[[role]]
name = "app"
read = { confidential = "plaintext", sensitive = "plaintext" }
write = ["confidential", "sensitive"]
"#;

const ROWS: i32 = 100_000;

/// A config + policy + keys in a temp dir, pointing `[catalog]` at a fresh database.
struct Env {
    tmp: tempfile::TempDir,
    db: String,
}

/// What one `pgcloak` command did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The number in front of `suffix` in the summary line (e.g. " rows updated").
    fn count(&self, suffix: &str) -> u64 {
        let i = self
            .stdout
            .find(suffix)
            .unwrap_or_else(|| panic!("no {suffix:?} in {:?}", self.stdout));
        self.stdout[..i]
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn rate(&self) -> f64 {
        let i = self.stdout.find(" rows/s)").expect("rate");
        let start = self.stdout[..i].rfind('(').unwrap() + 1;
        self.stdout[start..i].parse().unwrap()
    }
}

impl Env {
    fn new(name: &str) -> Env {
        let c = cluster();
        let db = c.fresh_db(name);
        let tmp = tempfile::tempdir().unwrap();
        let cfg = format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{}\"\npolicy = \"policy.toml\"\n\n\
             [upstream_tls]\nmode = \"disable\"\n\n\
             [catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"{db}\"\n",
            c.port
        );
        std::fs::write(tmp.path().join("pgcloak.toml"), cfg).unwrap();
        std::fs::write(tmp.path().join("policy.toml"), POLICY).unwrap();
        let env = Env { tmp, db };
        let init = env.run(&["keys", "init"]);
        assert!(init.ok(), "keys init: {}", init.stderr);
        env
    }

    fn path(&self, f: &str) -> PathBuf {
        self.tmp.path().join(f)
    }

    fn args<'a>(&'a self, cfg: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--config", cfg]);
        all
    }

    /// Runs pgcloak to completion; never a panic or a backtrace.
    fn run(&self, args: &[&str]) -> Run {
        let cfg = self.path("pgcloak.toml").display().to_string();
        let out = pgcloak(&self.args(&cfg, args), &[]);
        let run = Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        };
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
            "panic: {}",
            run.stderr
        );
        run
    }

    /// Starts pgcloak in the background.
    fn spawn(&self, args: &[&str]) -> Child {
        let cfg = self.path("pgcloak.toml").display().to_string();
        Command::new(pgcloak_bin())
            .args(self.args(&cfg, args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn sql(&self, sql: &str) -> String {
        cluster().psql_direct(&self.db, sql)
    }

    fn count(&self, sql: &str) -> i64 {
        self.sql(sql).parse().unwrap()
    }

    fn url(&self) -> String {
        cluster().direct_url(&self.db)
    }

    /// The keyring as the test's own copy of the master key opens it.
    fn keyring(&self) -> Keyring {
        let master =
            MasterKey::from_base64(&std::fs::read_to_string(self.path("master.key")).unwrap())
                .unwrap();
        Keyring::unlock(&std::fs::read(self.path("keyring.json")).unwrap(), &master).unwrap()
    }

    /// Every row of a query, over tokio-postgres.
    fn rows(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let url = self.url();
        rt().block_on(async {
            let c = connect(&url).await;
            c.query(sql, &[]).await.unwrap()
        })
    }

    /// `people(id int primary key, name text, salary bytea, note text)` with `n` plaintext rows:
    /// name = 'name-<id>' (NULL for every 1000th), salary = UTF-8 text of 7*id - 350000.
    fn people(&self, n: i32) {
        self.sql(&format!(
            "CREATE TABLE people (id int PRIMARY KEY, name text, salary bytea, note text); \
             INSERT INTO people SELECT g, CASE WHEN g % 1000 = 0 THEN NULL ELSE 'name-' || g END, \
             convert_to((7 * g - 350000)::text, 'UTF8'), 'n' FROM generate_series(1, {n}) g; \
             ANALYZE people"
        ));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn salary_of(id: i32) -> i32 {
    7 * id - 350_000
}

/// The key version named in a stored value's envelope header.
fn version_of(stored: &[u8]) -> u32 {
    Envelope::parse(&decode_any(stored).unwrap())
        .unwrap()
        .version()
}

/// Decrypts every name and salary of `people` once and checks them against what was written:
/// a value encrypted twice would decrypt to an envelope, not to the expected plaintext.
fn check_people(
    env: &Env,
    expect_name: impl Fn(i32) -> Option<String>,
    version: u32,
    salaries: bool,
) {
    let keyring = env.keyring();
    let name = keyring.cipher("public.people.name").unwrap();
    let salary = keyring.cipher("public.people.salary").unwrap();
    let rows = env.rows("SELECT id, name, salary FROM people ORDER BY id");
    assert!(!rows.is_empty());
    for r in rows {
        let id: i32 = r.get(0);
        match (r.get::<_, Option<String>>(1), expect_name(id)) {
            (None, None) => {}
            (Some(stored), Some(want)) => {
                assert!(
                    stored.starts_with("pgc1:wQoB"),
                    "row {id}: name not armoured"
                );
                assert_eq!(version_of(stored.as_bytes()), version, "row {id}");
                let plain = name.decrypt(stored.as_bytes()).unwrap();
                assert_eq!(String::from_utf8(plain).unwrap(), want, "row {id}");
            }
            (got, want) => panic!(
                "row {id}: name is {:?}, expected {want:?}",
                got.map(|_| "a value")
            ),
        }
        if let Some(stored) = r.get::<_, Option<Vec<u8>>>(2).filter(|_| salaries) {
            assert_eq!(
                &stored[..3],
                &[0xC1, 0x0A, 0x01],
                "row {id}: salary at rest"
            );
            assert_eq!(version_of(&stored), version, "row {id}");
            let plain = salary.decrypt(&stored).unwrap();
            let text = typed::to_text(LogicalType::Int4, &plain).unwrap();
            if id <= ROWS {
                assert_eq!(
                    String::from_utf8(text).unwrap(),
                    salary_of(id).to_string(),
                    "row {id}"
                );
            }
        }
    }
}

#[test]
fn encrypt_then_reencrypt_100k_rows_text_and_int4_on_bytea() {
    let env = Env::new("mig_100k");
    env.people(ROWS);

    let name = env.run(&["encrypt", "public.people.name", "--batch", "5000"]);
    assert!(name.ok(), "{}\n{}", name.stdout, name.stderr);
    assert_eq!(name.count(" rows updated"), 99_900, "{}", name.stdout);
    assert_eq!(name.count(" skipped"), 100, "{}", name.stdout);
    let salary = env.run(&["encrypt", "public.people.salary", "--batch", "5000"]);
    assert!(salary.ok(), "{}\n{}", salary.stdout, salary.stderr);
    assert_eq!(salary.count(" rows updated"), 100_000);
    eprintln!("measured: {}", name.stdout.trim());
    eprintln!("measured: {}", salary.stdout.trim());
    // Non-terminal stderr: one-line progress reports, never a value.
    assert!(!name.stderr.contains("name-"), "{}", name.stderr);

    // At rest, read directly: text values armoured, bytea values raw envelopes, NULLs untouched.
    assert_eq!(
        env.count("SELECT count(*) FROM people WHERE name IS NOT NULL AND name NOT LIKE 'pgc1:%'"),
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM people WHERE encode(substring(salary from 1 for 3), 'hex') <> 'c10a01'"),
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM people WHERE name IS NULL"),
        100
    );
    assert_eq!(
        env.count("SELECT count(*) FROM people WHERE note = 'n'"),
        100_000
    );
    let expect = |id: i32| (id % 1000 != 0).then(|| format!("name-{id}"));
    check_people(&env, expect, 1, true);
    // Deterministic: the stored value is what the proxy would compute for an equality lookup.
    let keyring = env.keyring();
    let want = keyring
        .cipher("public.people.name")
        .unwrap()
        .encrypt_as(b"name-4242", Encoding::Armored)
        .unwrap();
    assert_eq!(
        env.sql("SELECT name FROM people WHERE id = 4242")
            .as_bytes(),
        &want[..]
    );

    // Idempotent: a second run changes nothing.
    let again = env.run(&["encrypt", "public.people.name", "--batch", "5000"]);
    assert!(again.ok(), "{}", again.stderr);
    assert_eq!(again.count(" rows updated"), 0);
    assert_eq!(again.count(" skipped"), 100_000);

    // Rotation, then reencrypt: everything moves to version 2, read at rest from the headers.
    for col in ["public.people.name", "public.people.salary"] {
        let r = env.run(&["keys", "rotate", col]);
        assert!(r.ok(), "{}", r.stderr);
    }
    for col in ["public.people.name", "public.people.salary"] {
        let r = env.run(&["reencrypt", col, "--batch", "5000"]);
        assert!(r.ok(), "{}\n{}", r.stdout, r.stderr);
        eprintln!("measured: {}", r.stdout.trim());
        assert_eq!(
            r.count(" rows updated"),
            if col.ends_with("name") {
                99_900
            } else {
                100_000
            }
        );
        assert!(r.rate() > 0.0);
    }
    assert_eq!(
        env.count("SELECT count(*) FROM people WHERE encode(substring(salary from 9 for 4), 'hex') <> '00000002'"),
        0
    );
    check_people(&env, expect, 2, true);
    // Re-run: nothing left to move.
    let again = env.run(&["reencrypt", "public.people.salary", "--batch", "5000"]);
    assert!(again.ok(), "{}", again.stderr);
    assert_eq!(again.count(" rows updated"), 0);
    assert_eq!(again.count(" skipped"), 100_000);
}

/// Polls `sql` (a count) until it reaches `at_least`; panics after `within`.
fn wait_count(env: &Env, sql: &str, at_least: i64, within: Duration, child: &mut Child) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let n = env.count(sql);
        if n >= at_least {
            return n;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pgcloak exited early with {status}");
        }
        assert!(Instant::now() < deadline, "count stayed at {n}: {sql}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn encrypt_killed_mid_run_resumes_and_encrypts_every_row_exactly_once() {
    let env = Env::new("mig_kill");
    env.people(ROWS);
    const DONE: &str = "SELECT count(*) FROM people WHERE encode(substring(salary from 1 for 3), 'hex') = 'c10a01'";
    // Throttled so that it is surely still running when killed.
    let mut child = env.spawn(&[
        "encrypt",
        "public.people.salary",
        "--batch",
        "1000",
        "--max-rate",
        "20000",
    ]);
    wait_count(&env, DONE, 10_000, Duration::from_secs(30), &mut child);
    child.kill().unwrap(); // SIGKILL: no chance to clean up, the open batch is rolled back
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = env.count(DONE);
    assert!(
        before > 0 && before < ROWS as i64,
        "encrypted before kill: {before}"
    );
    // Batches commit whole, together with the saved position.
    assert_eq!(before % 1000, 0, "{before}");
    assert_eq!(
        env.count(
            "SELECT count(*) FROM pgcloak.migrations WHERE column_name = 'public.people.salary'"
        ),
        1
    );

    let resumed = env.run(&["encrypt", "public.people.salary", "--batch", "1000"]);
    assert!(resumed.ok(), "{}\n{}", resumed.stdout, resumed.stderr);
    assert!(resumed.stdout.contains("resumed"), "{}", resumed.stdout);
    assert!(
        resumed.stderr.contains("resuming after"),
        "{}",
        resumed.stderr
    );
    // Exactly once: the second run encrypted precisely the rows the first did not.
    assert_eq!(resumed.count(" rows updated") as i64, ROWS as i64 - before);
    assert_eq!(env.count(DONE), ROWS as i64);
    assert_eq!(
        env.count("SELECT count(*) FROM pgcloak.migrations"),
        0,
        "position kept after completion"
    );
    check_people_salaries(&env);
}

fn check_people_salaries(env: &Env) {
    let keyring = env.keyring();
    let salary = keyring.cipher("public.people.salary").unwrap();
    let rows = env.rows("SELECT id, salary FROM people ORDER BY id");
    assert_eq!(rows.len(), ROWS as usize);
    for r in rows {
        let id: i32 = r.get(0);
        let stored: Vec<u8> = r.get(1);
        // Encrypted twice would decrypt to an envelope (40+ bytes), not to 4 bytes.
        let plain = salary.decrypt(&stored).unwrap();
        assert_eq!(plain, salary_of(id).to_be_bytes(), "row {id}");
    }
}

#[test]
fn write_between_read_and_update_is_never_overwritten() {
    let env = Env::new("mig_cas");
    env.people(20);
    let keyring = env.keyring();
    let name = keyring.cipher("public.people.name").unwrap();
    let written_by_proxy = name.encrypt_as(b"changed", Encoding::Armored).unwrap();
    let written_by_proxy = String::from_utf8(written_by_proxy).unwrap();
    let url = env.url();
    let rt = rt();
    // Two writers hold row locks: row 3 gets a ciphertext (as through the proxy), row 7 a new
    // plaintext (as straight to PostgreSQL). The walk reads the old values, its UPDATE waits.
    let (a, b) = rt.block_on(async {
        let a = connect(&url).await;
        let b = connect(&url).await;
        a.batch_execute("BEGIN").await.unwrap();
        a.execute(
            "UPDATE people SET name = $1 WHERE id = 3",
            &[&written_by_proxy],
        )
        .await
        .unwrap();
        b.batch_execute("BEGIN; UPDATE people SET name = 'fresh' WHERE id = 7")
            .await
            .unwrap();
        (a, b)
    });
    let mut child = env.spawn(&["encrypt", "public.people.name", "--batch", "100"]);
    wait_count(
        &env,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgcloak encrypt' AND wait_event_type = 'Lock'",
        1,
        Duration::from_secs(30),
        &mut child,
    );
    rt.block_on(async {
        a.batch_execute("COMMIT").await.unwrap();
        b.batch_execute("COMMIT").await.unwrap();
    });
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 conflicts retried"), "{stdout}");
    // 18 rows encrypted by the batch's UPDATE, row 7 after the re-read; row 3 kept exactly as the
    // concurrent writer left it.
    assert!(stdout.contains("19 rows updated"), "{stdout}");
    assert_eq!(
        env.sql("SELECT name FROM people WHERE id = 3"),
        written_by_proxy,
        "the concurrent ciphertext was overwritten"
    );
    let seven = env.sql("SELECT name FROM people WHERE id = 7");
    assert_eq!(name.decrypt(seven.as_bytes()).unwrap(), b"fresh");
    check_people(
        &env,
        |id| {
            Some(match id {
                3 => "changed".to_string(),
                7 => "fresh".to_string(),
                _ => format!("name-{id}"),
            })
        },
        1,
        false,
    );
}

#[test]
fn encrypt_while_writes_continue_loses_no_write() {
    let env = Env::new("mig_live");
    env.people(ROWS);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = env.url();
        let keyring = env.keyring();
        std::thread::spawn(move || {
            let name = keyring.cipher("public.people.name").unwrap();
            let mut last: HashMap<i32, String> = HashMap::new();
            let mut inserted: Vec<i32> = Vec::new();
            rt().block_on(async {
                let c = connect(&url).await;
                let mut rng = Rng::new(1);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if n % 10 == 0 {
                        // A new plaintext row, as a client writing straight to PostgreSQL would.
                        let id = ROWS + n;
                        c.execute(
                            "INSERT INTO people (id, name, salary) VALUES ($1, $2, NULL)",
                            &[&id, &format!("ins-{id}")],
                        )
                        .await
                        .unwrap();
                        inserted.push(id);
                    } else {
                        // A ciphertext, as the proxy writes it.
                        let id = rng.below(ROWS as usize) as i32 + 1;
                        let plain = format!("w-{id}-{n}");
                        let env = name
                            .encrypt_as(plain.as_bytes(), Encoding::Armored)
                            .unwrap();
                        c.execute(
                            "UPDATE people SET name = $1 WHERE id = $2",
                            &[&String::from_utf8(env).unwrap(), &id],
                        )
                        .await
                        .unwrap();
                        last.insert(id, plain);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            (last, inserted)
        })
    };
    let first = env.run(&[
        "encrypt",
        "public.people.name",
        "--batch",
        "2000",
        "--max-rate",
        "25000",
    ]);
    stop.store(true, Ordering::Relaxed);
    let (last, inserted) = writer.join().unwrap();
    eprintln!(
        "concurrent writer: {} updates, {} inserts; first run: {}",
        last.len(),
        inserted.len(),
        first.stdout.trim()
    );
    assert!(!last.is_empty() && !inserted.is_empty());
    // Rows inserted in plaintext after the walk passed the end are what the final check is for:
    // the run either completed or said to run it again.
    assert!(
        first.ok()
            || (first.code == Some(1) && first.stdout.contains("run the same command again")),
        "{}\n{}",
        first.stdout,
        first.stderr
    );
    let second = env.run(&["encrypt", "public.people.name", "--batch", "2000"]);
    assert!(second.ok(), "{}\n{}", second.stdout, second.stderr);
    let inserted: std::collections::HashSet<i32> = inserted.into_iter().collect();
    check_people(
        &env,
        |id| {
            if let Some(p) = last.get(&id) {
                Some(p.clone())
            } else if inserted.contains(&id) {
                Some(format!("ins-{id}"))
            } else {
                (id % 1000 != 0).then(|| format!("name-{id}"))
            }
        },
        1,
        false,
    );
}

#[test]
fn table_without_primary_key_is_walked_by_ctid_ranges() {
    let env = Env::new("mig_nopk");
    env.sql(
        "CREATE TABLE nopk (secret text, other int); \
         INSERT INTO nopk SELECT 's-' || g, g FROM generate_series(1, 20000) g",
    );
    let r = env.run(&["encrypt", "public.nopk.secret", "--batch", "1000"]);
    assert!(r.ok(), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ctid ranges"), "{}", r.stdout);
    assert_eq!(r.count(" rows updated"), 20_000);
    let keyring = env.keyring();
    let c = keyring.cipher("public.nopk.secret").unwrap();
    let rows = env.rows("SELECT secret, other FROM nopk");
    assert_eq!(rows.len(), 20_000);
    for row in rows {
        let stored: String = row.get(0);
        let other: i32 = row.get(1);
        assert_eq!(
            c.decrypt(stored.as_bytes()).unwrap(),
            format!("s-{other}").as_bytes()
        );
    }
    let again = env.run(&["encrypt", "public.nopk.secret"]);
    assert!(again.ok(), "{}", again.stderr);
    assert_eq!(again.count(" rows updated"), 0);
    // reencrypt with nothing to move, and plaintext reported rather than touched.
    env.sql("INSERT INTO nopk VALUES ('left-plain', 0)");
    let re = env.run(&["reencrypt", "public.nopk.secret"]);
    assert!(re.ok(), "{}\n{}", re.stdout, re.stderr);
    assert!(
        re.stdout.contains("1 values are not encrypted at all"),
        "{}",
        re.stdout
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM nopk WHERE secret = 'left-plain'"),
        "1"
    );
}

#[test]
fn invalid_value_stops_with_the_row_key_not_the_value() {
    let env = Env::new("mig_invalid");
    env.sql(
        "CREATE TABLE bad (id int PRIMARY KEY, salary bytea); \
         INSERT INTO bad SELECT g, convert_to(g::text, 'UTF8') FROM generate_series(1, 100) g; \
         UPDATE bad SET salary = convert_to('top-secret-42', 'UTF8') WHERE id = 42",
    );
    let r = env.run(&["encrypt", "public.bad.salary", "--batch", "10"]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let line = r.stderr.lines().last().unwrap();
    assert!(line.starts_with("pgcloak: "), "{}", r.stderr);
    assert!(line.contains("row with primary key (id)=(42)"), "{line}");
    assert!(line.contains("int4"), "{line}");
    assert!(!r.stderr.contains("top-secret"), "{}", r.stderr);
    // Batches before the bad row are committed; fixing the value and re-running completes.
    assert_eq!(
        env.count("SELECT count(*) FROM bad WHERE encode(substring(salary from 1 for 3), 'hex') = 'c10a01'"),
        40
    );
    env.sql("UPDATE bad SET salary = convert_to('42', 'UTF8') WHERE id = 42");
    let r = env.run(&["encrypt", "public.bad.salary", "--batch", "10"]);
    assert!(r.ok(), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.count(" rows updated"), 60);
}

/// Runs a command that must fail with one clear `pgcloak:` sentence containing `want`.
fn fails(env: &Env, args: &[&str], want: &str) -> String {
    let r = env.run(args);
    assert_eq!(r.code, Some(1), "{args:?}: {}\n{}", r.stdout, r.stderr);
    let err = r.stderr.trim();
    assert!(err.starts_with("pgcloak: "), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    err.to_string()
}

#[test]
fn error_paths_are_one_clear_sentence() {
    let env = Env::new("mig_errors");
    env.people(10);
    env.sql(
        "CREATE TABLE wrongtype (id int PRIMARY KEY, n integer); INSERT INTO wrongtype VALUES (1, 5), (2, -6); \
         CREATE TABLE limited (id int PRIMARY KEY, s varchar(20)); INSERT INTO limited VALUES (1, 'x')",
    );
    fails(&env, &["encrypt", "people.name"], "schema.table.column");
    fails(
        &env,
        &["encrypt", "public.people.nope"],
        "is not in the policy",
    );
    fails(
        &env,
        &["encrypt", "public.people.note"],
        "is not encrypted in the policy",
    );
    fails(
        &env,
        &["reencrypt", "public.missing.c"],
        "table public.missing does not exist in database t_mig_errors",
    );
    fails(
        &env,
        &["encrypt", "public.people.name", "--database", "postgres"],
        "table public.people does not exist in database postgres",
    );
    fails(
        &env,
        &["encrypt", "public.people.name", "--batch", "0"],
        "--batch 0",
    );
    fails(
        &env,
        &["encrypt", "public.limited.s"],
        "ALTER TABLE public.limited ALTER COLUMN s TYPE text",
    );
    // The fix the message gives works: after it, encrypt succeeds and the int4 values decrypt.
    let err = fails(
        &env,
        &["encrypt", "public.wrongtype.n"],
        "is stored as integer",
    );
    let fix =
        "ALTER TABLE public.wrongtype ALTER COLUMN n TYPE bytea USING convert_to(n::text, 'UTF8')";
    assert!(err.contains(fix), "{err}");
    env.sql(fix);
    let r = env.run(&["encrypt", "public.wrongtype.n"]);
    assert!(r.ok(), "{}\n{}", r.stdout, r.stderr);
    let keyring = env.keyring();
    let c = keyring.cipher("public.wrongtype.n").unwrap();
    let stored = env.rows("SELECT n FROM wrongtype WHERE id = 2");
    assert_eq!(
        c.decrypt(&stored[0].get::<_, Vec<u8>>(0)).unwrap(),
        (-6i32).to_be_bytes()
    );

    // Another run on the same column holds the lock.
    let url = env.url();
    let rt = rt();
    let holder = rt.block_on(async {
        let c = connect(&url).await;
        c.batch_execute(
            "SELECT pg_advisory_lock(hashtextextended('pgcloak migrate public.people.name', 0))",
        )
        .await
        .unwrap();
        c
    });
    fails(
        &env,
        &["encrypt", "public.people.name"],
        "is running in database",
    );
    drop(holder);

    // A master key that does not match the keyring.
    let good = std::fs::read(env.path("master.key")).unwrap();
    std::fs::write(
        env.path("master.key"),
        MasterKey::generate().unwrap().to_base64(),
    )
    .unwrap();
    fails(&env, &["encrypt", "public.people.name"], "does not match");
    std::fs::write(env.path("master.key"), good).unwrap();
    // Nothing was touched by any failed run.
    assert_eq!(
        env.count("SELECT count(*) FROM people WHERE name LIKE 'pgc1:%'"),
        0
    );
}

#[test]
fn interrupt_commits_the_batch_and_says_how_to_continue() {
    let env = Env::new("mig_sigint");
    env.people(20_000);
    const DONE: &str = "SELECT count(*) FROM people WHERE encode(substring(salary from 1 for 3), 'hex') = 'c10a01'";
    let mut child = env.spawn(&[
        "encrypt",
        "public.people.salary",
        "--batch",
        "500",
        "--max-rate",
        "4000",
    ]);
    wait_count(&env, DONE, 1000, Duration::from_secs(30), &mut child);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(
        stderr.contains("the last batch was committed")
            && stderr.contains("Run the same command again to continue: pgcloak encrypt public.people.salary --config"),
        "{stderr}"
    );
    let before = env.count(DONE);
    assert!(before < 20_000 && before % 500 == 0, "{before}");
    let rest = env.run(&["encrypt", "public.people.salary", "--batch", "500"]);
    assert!(rest.ok(), "{}\n{}", rest.stdout, rest.stderr);
    assert_eq!(rest.count(" rows updated") as i64, 20_000 - before);
    assert_eq!(env.count(DONE), 20_000);
}
