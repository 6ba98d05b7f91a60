//! Test harness: a throwaway PostgreSQL cluster (initdb + pg_ctl, SCRAM auth, TLS, a free port) started
//! once per test run, and the real `pgcloak` binary started per test on its own port and config.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SUPERUSER: &str = "postgres";
pub const SUPERPASS: &str = "super-secret-pw";
/// (user, password, pg_hba method)
pub const USERS: &[(&str, &str, &str)] = &[
    ("alice", "alice-pw", "scram-sha-256"),
    ("md5user", "md5-pw", "md5"),
    ("pwuser", "plain-pw", "password"),
    ("trustuser", "", "trust"),
];

pub struct Cluster {
    pub port: u16,
    /// target/e2e/pg-<pid>: data directory, log, TLS material.
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    /// A client-facing cert/key for pgcloak, signed by the same CA, valid for localhost/127.0.0.1.
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

pub fn workspace_target() -> PathBuf {
    // CARGO_MANIFEST_DIR is proxy/; the shared target dir sits at the workspace root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pg_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BIN") {
        return PathBuf::from(d);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries not found under /usr/lib/postgresql: install postgresql or set PG_BIN")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("no PostgreSQL bin directory with initdb: set PG_BIN")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// Runs a PostgreSQL server binary, as the `postgres` OS user when we are root.
fn pg_cmd(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn run_ok(mut c: Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_postgres(p: &Path) {
    if is_root() {
        run_ok(
            {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(p);
                c
            },
            "chown",
        );
    }
}

/// Stops clusters left behind by earlier runs whose test process is gone.
fn reap_stale(base: &Path, bin: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix("pg-").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let data = e.path().join("data");
        let mut c = pg_cmd(bin, "pg_ctl");
        c.args(["-D"]).arg(&data).args(["-m", "immediate", "stop"]);
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(e.path());
    }
}

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pgcloak test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let srv_key = KeyPair::generate().unwrap();
    let mut srv = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    srv.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    srv.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let srv_cert = srv.signed_by(&srv_key, &issuer).unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert: srv_cert.pem(),
        server_key: srv_key.serialize_pem(),
    }
}

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(start_cluster)
}

fn start_cluster() -> Cluster {
    let bin = pg_bin_dir();
    let base = workspace_target().join("e2e");
    std::fs::create_dir_all(&base).unwrap();
    reap_stale(&base, &bin);
    let dir = base.join(format!("pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, SUPERPASS).unwrap();

    let pki = make_pki();
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    std::fs::write(tls_dir.join("ca.crt"), &pki.ca_pem).unwrap();
    std::fs::write(tls_dir.join("server.crt"), &pki.server_cert).unwrap();
    std::fs::write(tls_dir.join("server.key"), &pki.server_key).unwrap();
    std::fs::write(tls_dir.join("proxy.crt"), &pki.server_cert).unwrap();
    std::fs::write(tls_dir.join("proxy.key"), &pki.server_key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tls_dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    chown_postgres(&dir);

    let mut init = pg_cmd(&bin, "initdb");
    init.arg("-D")
        .arg(&data)
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--pwfile",
        ])
        .arg(&pwfile)
        .stdout(Stdio::null());
    run_ok(init, "initdb");

    let port = free_port();
    let mut hba = String::new();
    for (user, _, method) in USERS {
        hba.push_str(&format!("host all {user} 127.0.0.1/32 {method}\n"));
    }
    // A member of policy role `app` that needs no password: the raw wire-protocol tests log in as
    // it (they send message sequences no driver library lets a test choose).
    hba.push_str("host all trust_app 127.0.0.1/32 trust\n");
    hba.push_str("host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n");
    std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
    let conf = format!(
        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 200\n\
         ssl = on\nssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\nfsync = off\n\
         synchronous_commit = off\nfull_page_writes = off\nshared_buffers = 128MB\nlog_min_messages = warning\n\
         password_encryption = 'scram-sha-256'\n",
        d = tls_dir.display()
    );
    let mut pgconf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    pgconf.push_str(&conf);
    std::fs::write(data.join("postgresql.conf"), pgconf).unwrap();
    chown_postgres(&dir);

    let mut start = pg_cmd(&bin, "pg_ctl");
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "-t", "60", "start"])
        .stdout(Stdio::null());
    run_ok(start, "pg_ctl start");

    let c = Cluster {
        port,
        dir: dir.clone(),
        ca_file: tls_dir.join("ca.crt"),
        proxy_cert: tls_dir.join("proxy.crt"),
        proxy_key: tls_dir.join("proxy.key"),
    };
    let mut sql = String::new();
    for (user, pw, method) in USERS {
        let enc = if *method == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        };
        sql.push_str(&format!(
            "SET password_encryption = '{enc}'; CREATE ROLE {user} LOGIN CREATEDB PASSWORD '{pw}';\n"
        ));
    }
    // Policy roles and their login users (the policy follows PostgreSQL role membership).
    sql.push_str(
        "CREATE ROLE app; CREATE ROLE support;\n\
         CREATE ROLE app_user LOGIN PASSWORD 'app-pw' IN ROLE app;\n\
         CREATE ROLE support_user LOGIN PASSWORD 'support-pw' IN ROLE support;\n\
         CREATE ROLE plain_user LOGIN PASSWORD 'plain-pw';\n\
         CREATE ROLE trust_app LOGIN IN ROLE app;\n",
    );
    c.psql_direct("postgres", &sql);
    c
}

impl Cluster {
    /// A libpq connection string straight to the cluster as the superuser.
    pub fn direct_url(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={SUPERUSER} password={SUPERPASS} dbname={db} sslmode=disable", self.port)
    }

    /// Runs SQL as the superuser directly against the cluster (bypassing pgcloak).
    pub fn psql_direct(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .arg(self.direct_url(db))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql not found: install the postgresql client");
        assert!(
            out.status.success(),
            "psql direct failed: {}\nserver log tail: {}",
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a fresh database owned by alice; returns its name.
    pub fn fresh_db(&self, name: &str) -> String {
        let db = format!("t_{name}");
        self.psql_direct(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
        self.psql_direct("postgres", &format!("CREATE DATABASE {db} OWNER alice"));
        db
    }

    /// The server log of the throwaway cluster (for failure messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// A running `pgcloak serve` child process; killed on drop.
pub struct Proxy {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

/// Extra TOML appended to the generated config.
#[derive(Default, Clone)]
pub struct ProxyOptions {
    pub extra: String,
    pub upstream_port: Option<u16>,
    pub env: Vec<(String, String)>,
    /// Policy file content (written next to the config and referenced from it).
    pub policy: Option<String>,
    /// The port to listen on (default: a free one).
    pub port: Option<u16>,
}

pub fn pgcloak_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgcloak"))
}

/// Runs a `pgcloak` command to completion.
pub fn pgcloak(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let mut c = Command::new(pgcloak_bin());
    c.args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("cannot run pgcloak")
}

impl Proxy {
    pub fn start() -> Proxy {
        Self::start_with(ProxyOptions::default())
    }

    pub fn start_with(opts: ProxyOptions) -> Proxy {
        let c = cluster();
        let dir = tempfile::tempdir().unwrap();
        let port = opts.port.unwrap_or_else(free_port);
        let upstream = opts.upstream_port.unwrap_or(c.port);
        let catalog = if opts.extra.contains("[catalog]") {
            String::new()
        } else {
            format!("\n[catalog]\nuser = \"{SUPERUSER}\"\npassword = \"{SUPERPASS}\"\ndatabase = \"postgres\"\n")
        };
        let policy = match &opts.policy {
            Some(p) => {
                std::fs::write(dir.path().join("policy.toml"), p).unwrap();
                "policy = \"policy.toml\"\n"
            }
            None => "",
        };
        let cfg = format!(
            "listen = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{upstream}\"\n{policy}{}\n{catalog}",
            opts.extra
        );
        let cfg_path = dir.path().join("pgcloak.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = dir.path().join("pgcloak.log");
        let init = pgcloak(
            &["keys", "init", "--config", cfg_path.to_str().unwrap()],
            &opts.env,
        );
        assert!(
            init.status.success(),
            "keys init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut p = Proxy {
            port,
            dir,
            child: None,
            log,
            env: opts.env.clone(),
        };
        p.spawn();
        p
    }

    /// The config file of this proxy.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pgcloak.toml")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(pgcloak_bin());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("cannot start pgcloak"));
        self.wait_listening();
    }

    /// Stops the proxy gracefully (SIGTERM) and starts it again on the same port, config and files.
    pub fn restart(&mut self) {
        self.signal("TERM");
        assert!(
            self.wait_exit(Duration::from_secs(15)).is_some(),
            "pgcloak did not stop"
        );
        self.child = None;
        self.spawn();
    }

    /// Runs a pgcloak command against this proxy's config.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let cfg = self.config_path();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", cfg.to_str().unwrap()]);
        let out = pgcloak(&all, &self.env);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pgcloak exited with {status}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "pgcloak did not listen on {} within 20s: {}",
            self.port,
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        let pw = if password.is_empty() {
            String::new()
        } else {
            format!(" password={password}")
        };
        format!(
            "host=127.0.0.1 port={} user={user}{pw} dbname={db} sslmode=disable",
            self.port
        )
    }

    pub fn alice(&self, db: &str) -> String {
        self.url("alice", "alice-pw", db)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal to the proxy process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// Waits for the process to exit; returns its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs psql against `url` with extra args; returns (success, stdout, stderr).
pub fn psql(url: &str, args: &[&str]) -> (bool, String, String) {
    psql_env(url, args, &[])
}

pub fn psql_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new("psql");
    c.arg(url).args(["-X", "-At"]).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("psql not found");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Connects with tokio-postgres (no TLS) and drives the connection on a task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {}", error_text(&e)));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The python interpreter of the test venv (created by scripts/test).
pub fn venv_python() -> PathBuf {
    workspace_target().join("venv/bin/python")
}

/// Asserts a pgcloak refusal: SQLSTATE 42501 and a message containing `needle`.
#[track_caller]
pub fn assert_refused(err: &tokio_postgres::Error, needle: &str) {
    let text = error_text(err);
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{text}");
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
}

/// The full text of a client error: the server's (or proxy's) message when there is one.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("{e}"),
    }
}
