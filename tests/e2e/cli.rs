//! The command line: `keys` (init, rotate, list, audit-key) with every master key source and their error
//! paths, `check` offline and against the database, and config errors. No panics, no key material printed.

use std::path::{Path, PathBuf};

use crate::harness::{cluster, pgcloak, Proxy, SUPERPASS, SUPERUSER};

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new(config: &str, policy: Option<&str>) -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("pgcloak.toml"), config).unwrap();
        if let Some(p) = policy {
            std::fs::write(tmp.path().join("policy.toml"), p).unwrap();
        }
        Dir { tmp }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.tmp.path().join(f)
    }

    fn cfg(&self) -> String {
        self.path("pgcloak.toml").display().to_string()
    }

    /// Runs pgcloak with `--config`; returns (exit ok, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
        let cfg = self.cfg();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", &cfg]);
        let out = pgcloak(&all, env);
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(
            !se.contains("panicked") && !se.contains("RUST_BACKTRACE"),
            "panic: {se}"
        );
        (out.status.success(), so, se)
    }
}

const POLICY: &str = r#"
[[column]]
name = "public.customers.email"
class = "confidential"
encrypt = "deterministic"
type = "text"
mask = "email"

[[column]]
name = "public.customers.salary"
class = "sensitive"
encrypt = "randomized"
type = "int4"

[[column]]
name = "public.customers.notes"
class = "internal"

[[role]]
name = "app"
read = { confidential = "plaintext", sensitive = "plaintext" }
write = ["confidential", "sensitive"]
"#;

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_init_list_rotate_audit_key() {
    let d = Dir::new("policy = \"policy.toml\"\n", Some(POLICY));
    let (ok, out, err) = d.run(&["keys", "init"]);
    assert!(ok, "{err}");
    assert!(out.contains("created master key file"), "{out}");
    assert!(
        out.contains("created key for public.customers.email"),
        "{out}"
    );
    assert!(
        out.contains("created key for public.customers.salary"),
        "{out}"
    );
    assert_eq!(mode_of(&d.path("master.key")), 0o600);
    let master = std::fs::read_to_string(d.path("master.key")).unwrap();
    let keyring = std::fs::read_to_string(d.path("keyring.json")).unwrap();

    // Idempotent: nothing replaced.
    let (ok, out, _) = d.run(&["keys", "init"]);
    assert!(ok);
    assert!(!out.contains("created"), "{out}");
    assert_eq!(
        std::fs::read_to_string(d.path("master.key")).unwrap(),
        master
    );
    assert_eq!(
        std::fs::read_to_string(d.path("keyring.json")).unwrap(),
        keyring
    );

    let (ok, out, err) = d.run(&["keys", "rotate", "public.customers.email"]);
    assert!(ok, "{err}");
    assert!(out.contains("version 2"), "{out}");

    let (ok, out, err) = d.run(&["keys", "list", "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let email = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["column"] == "public.customers.email")
        .unwrap();
    assert_eq!(email["active_version"], 2);
    assert_eq!(email["versions"].as_array().unwrap().len(), 2);
    assert!(email["versions"][0]["created"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let (ok, table, _) = d.run(&["keys", "list"]);
    assert!(ok && table.contains("public.customers.salary"), "{table}");
    // Never key material.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path("keyring.json")).unwrap()).unwrap();
    for col in doc["columns"].as_array().unwrap() {
        for ver in col["versions"].as_array().unwrap() {
            let wrapped = ver["wrapped_key"].as_str().unwrap();
            assert!(!out.contains(wrapped) && !table.contains(wrapped));
        }
    }
    assert!(!out.contains(master.trim()) && !table.contains(master.trim()));

    let (ok, k1, _) = d.run(&["keys", "audit-key"]);
    let (_, k2, _) = d.run(&["keys", "audit-key"]);
    assert!(ok);
    assert_eq!(k1, k2);
    assert_eq!(base64_len(k1.trim()), 32, "{k1}");
    assert!(!k1.contains(master.trim()));
}

fn base64_len(s: &str) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .map(|b| b.len())
        .unwrap_or(0)
}

#[test]
fn keys_error_paths() {
    let d = Dir::new("policy = \"policy.toml\"\n", Some(POLICY));
    // Before init: every command says to run keys init.
    for args in [
        &["keys", "list"][..],
        &["keys", "rotate", "public.customers.email"],
        &["keys", "audit-key"],
    ] {
        let (ok, _, err) = d.run(args);
        assert!(!ok);
        assert!(err.contains("keys init"), "{args:?}: {err}");
    }
    assert!(d.run(&["keys", "init"]).0);
    // Unknown column.
    let (ok, _, err) = d.run(&["keys", "rotate", "public.customers.nope"]);
    assert!(!ok && err.contains("public.customers.nope"), "{err}");
    // Group-readable key file.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path("master.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = d.run(&["keys", "list"]);
    assert!(!ok && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(d.path("master.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // Wrong master key.
    let good = std::fs::read(d.path("master.key")).unwrap();
    std::fs::write(
        d.path("master.key"),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    )
    .unwrap();
    let (ok, _, err) = d.run(&["keys", "list"]);
    assert!(!ok && err.contains("does not match"), "{err}");
    let (ok, _, err) = d.run(&["serve"]);
    assert!(!ok && err.contains("does not match"), "{err}");
    // Not a key at all.
    std::fs::write(d.path("master.key"), "not base64 !!\n").unwrap();
    let (ok, _, err) = d.run(&["keys", "list"]);
    assert!(!ok && err.contains("master key"), "{err}");
    assert!(
        !err.contains("not base64 !!"),
        "key file content echoed: {err}"
    );
    std::fs::write(d.path("master.key"), &good).unwrap();
    // Corrupt keyring.
    let kr = std::fs::read_to_string(d.path("keyring.json")).unwrap();
    std::fs::write(d.path("keyring.json"), &kr[..kr.len() / 2]).unwrap();
    let (ok, _, err) = d.run(&["keys", "list"]);
    assert!(!ok && err.contains("keyring"), "{err}");
    std::fs::write(d.path("keyring.json"), &kr).unwrap();
    assert!(d.run(&["keys", "list"]).0);
}

#[test]
fn serve_refuses_to_start_without_its_master_key() {
    let d = Dir::new("listen = \"127.0.0.1:0\"\n", None);
    let (ok, _, err) = d.run(&["serve"]);
    assert!(!ok);
    assert!(
        err.contains("master key") && err.contains("keys init"),
        "{err}"
    );
}

#[test]
fn master_key_from_env_and_command() {
    let env_cfg = "policy = \"policy.toml\"\n[keys]\nmaster_key_env = \"TEST_PGCLOAK_MK\"\n";
    let d = Dir::new(env_cfg, Some(POLICY));
    let (ok, _, err) = d.run(&["keys", "init"]);
    assert!(!ok && err.contains("TEST_PGCLOAK_MK"), "{err}");
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string();
    let env = [("TEST_PGCLOAK_MK".to_string(), key.clone())];
    let (ok, _, err) = d.run_env(&["keys", "init"], &env);
    assert!(ok, "{err}");
    let (_, from_env, _) = d.run_env(&["keys", "audit-key"], &env);

    let cmd_cfg = format!(
        "policy = \"policy.toml\"\n[keys]\nmaster_key_command = \"echo {key}\"\nkeyring = \"{}\"\n",
        d.path("keyring.json").display()
    );
    let c = Dir::new(&cmd_cfg, Some(POLICY));
    let (ok, from_cmd, err) = c.run(&["keys", "audit-key"]);
    assert!(ok, "{err}");
    assert_eq!(from_env, from_cmd, "same master key, same audit key");
    let (ok, out, err) = c.run(&["keys", "list", "--format", "json"]);
    assert!(ok && out.contains("public.customers.email"), "{err}");

    let bad = Dir::new(
        "[keys]\nmaster_key_command = \"echo nope >&2; exit 3\"\n",
        None,
    );
    let (ok, _, err) = bad.run(&["keys", "audit-key"]);
    assert!(
        !ok && err.contains("master_key_command") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn concurrent_rotations_are_not_lost() {
    let d = Dir::new("policy = \"policy.toml\"\n", Some(POLICY));
    assert!(d.run(&["keys", "init"]).0);
    let cfg = d.cfg();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(crate::harness::pgcloak_bin())
                .args([
                    "keys",
                    "rotate",
                    "public.customers.salary",
                    "--config",
                    &cfg,
                ])
                .output()
        })
        .collect::<Vec<_>>();
    // Spawned sequentially above; run a truly concurrent batch too.
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(crate::harness::pgcloak_bin())
                .args([
                    "keys",
                    "rotate",
                    "public.customers.salary",
                    "--config",
                    &cfg,
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for h in handles {
        assert!(h.unwrap().status.success());
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, out, _) = d.run(&["keys", "list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let salary = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["column"] == "public.customers.salary")
        .unwrap();
    assert_eq!(salary["active_version"], 17);
    assert_eq!(salary["versions"].as_array().unwrap().len(), 17);
}

#[test]
fn keyring_in_postgres() {
    let c = cluster();
    let db = c.fresh_db("keyring_pg");
    let cfg = format!(
        "upstream = \"127.0.0.1:{}\"\npolicy = \"policy.toml\"\n[upstream_tls]\nmode = \"disable\"\n[catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"{db}\"\n[keys]\nkeyring = \"postgres\"\n",
        c.port
    );
    let d = Dir::new(&cfg, Some(POLICY));
    let (ok, out, err) = d.run(&["keys", "init"]);
    assert!(ok, "{err}");
    assert!(out.contains("table pgcloak.keyring"), "{out}");
    let (ok, _, err) = d.run(&["keys", "rotate", "public.customers.email"]);
    assert!(ok, "{err}");
    let (ok, out, _) = d.run(&["keys", "list", "--format", "json"]);
    assert!(ok && out.contains("\"active_version\": 2"), "{out}");
    assert_eq!(
        c.psql_direct(&db, "SELECT count(*) FROM pgcloak.keyring"),
        "1"
    );
    // Application roles get nothing on it.
    assert_eq!(
        c.psql_direct(
            &db,
            "SELECT has_table_privilege('alice', 'pgcloak.keyring', 'SELECT')"
        ),
        "f"
    );
}

#[test]
fn check_reports_policy_and_database_problems() {
    let c = cluster();
    let db = c.fresh_db("check_cli");
    c.psql_direct(
        &db,
        "CREATE TABLE customers (id int, email text, salary int4, notes text)",
    );
    let cfg = format!(
        "upstream = \"127.0.0.1:{}\"\npolicy = \"policy.toml\"\n[upstream_tls]\nmode = \"disable\"\n[catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"{db}\"\n",
        c.port
    );
    let d = Dir::new(&cfg, Some(POLICY));
    // salary is encrypted but stored as int4: cannot hold ciphertext.
    let (ok, _, err) = d.run(&["check"]);
    assert!(!ok);
    assert!(
        err.contains("public.customers.salary") && err.contains("policy.toml:"),
        "{err}"
    );
    c.psql_direct(
        &db,
        "ALTER TABLE customers ALTER COLUMN salary TYPE bytea USING NULL",
    );
    let (ok, out, err) = d.run(&["check"]);
    assert!(ok, "{err}");
    assert!(out.contains("ok"));
    c.psql_direct(&db, "ALTER TABLE customers DROP COLUMN notes");
    let (ok, _, err) = d.run(&["check"]);
    assert!(
        !ok && err.contains("public.customers.notes") && err.contains("does not exist"),
        "{err}"
    );
    // Offline problems carry file:line.
    std::fs::write(
        d.path("policy.toml"),
        "[[column]]\nname = \"customers.email\"\nclass = \"secret\"\n",
    )
    .unwrap();
    let (ok, _, err) = d.run(&["check"]);
    assert!(
        !ok && err.contains("policy.toml:2") && err.contains("policy.toml:3"),
        "{err}"
    );
}

#[test]
fn config_errors_are_one_clear_sentence() {
    for (cfg, needle) in [
        ("listen = \"nowhere\"\n", "listen"),
        ("bogus_key = 1\n", "bogus_key"),
        ("[audit]\non_failure = \"maybe\"\n", "audit.on_failure"),
        ("listen = \n", "not valid TOML"),
    ] {
        let d = Dir::new(cfg, None);
        for cmd in [&["check"][..], &["serve"]] {
            let (ok, _, err) = d.run(cmd);
            assert!(!ok, "{cfg}");
            assert!(err.contains(needle), "{cfg}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
    let out = pgcloak(&["check", "--config", "/nonexistent/pgcloak.toml"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pgcloak.toml"));
    let _ = Proxy::start;
}
