//! Typed configuration: the TOML file of CONTRACT.md plus `PGCLOAK_*` environment overrides, resolved and
//! validated once at start so the rest of the proxy never re-checks a raw value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// The default path `pgcloak` looks for when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "pgcloak.toml";

/// The file as written (after environment overrides), before resolution.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    upstream: Option<String>,
    policy: Option<String>,
    max_connections: Option<u32>,
    /// Extension: seconds a client may take from TCP accept to ReadyForQuery.
    startup_timeout: Option<u64>,
    /// Extension: seconds a client may stay idle between messages (0 = never time out).
    idle_timeout: Option<u64>,
    /// Extension: seconds to let sessions finish after SIGTERM/SIGINT before closing them.
    shutdown_timeout: Option<u64>,
    /// Extension: seconds to wait for the upstream TCP/TLS connect.
    connect_timeout: Option<u64>,
    /// Extension: the largest protocol message accepted in either direction, in bytes.
    max_message_size: Option<u64>,
    /// Extension: a name for this proxy instance (audit `instance`, cancel routing); default: host name.
    instance: Option<String>,
    /// Extension: session threads (each runs its sessions on a single-threaded event loop); 0 = half
    /// the CPUs, at least one.
    workers: Option<u32>,
    tls: Option<RawTls>,
    upstream_tls: Option<RawUpstreamTls>,
    catalog: Option<RawCatalog>,
    keys: Option<RawKeys>,
    audit: Option<RawAudit>,
    log: Option<RawLog>,
    /// Extension: this instance's number in a fleet (1-127), encoded in the cancel keys it hands out.
    peer_id: Option<u32>,
    /// Extension: the other instances of the fleet by number, `"2" = "host:port"`, so a CancelRequest
    /// that a load balancer sends to the wrong instance is passed on to the one holding the session.
    peers: Option<std::collections::BTreeMap<String, String>>,
    /// Extension: the operations listener (`/metrics`, `/healthz`, `/readyz`).
    admin: Option<RawAdmin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    users: Option<Vec<String>>,
    database: Option<String>,
    tls: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    mode: Option<String>,
    ca: Option<String>,
    /// Extension: the host name to verify for verify-full (default: the host part of `upstream`).
    server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    user: Option<String>,
    password: Option<String>,
    database: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    master_key_file: Option<String>,
    master_key_env: Option<String>,
    master_key_command: Option<String>,
    keyring: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    file: Option<String>,
    postgres: Option<bool>,
    on_failure: Option<String>,
    nats: Option<String>,
    nats_subject: Option<String>,
    /// Extension: the JetStream stream holding `nats_subject` (default: the subject upper-cased,
    /// `.` as `_`, e.g. PGCLOAK_AUDIT).
    nats_stream: Option<String>,
    /// Extension: signed checkpoint every this many events.
    checkpoint_every: Option<u64>,
    /// Extension: rotate the audit file when it grows past this many bytes (0 = never).
    max_file_bytes: Option<u64>,
    /// Extension: capacity of the in-memory event queue.
    queue_capacity: Option<usize>,
    /// Extension: events a failing sink may hold in memory while it retries.
    backlog: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    /// `text` or `json`.
    format: Option<String>,
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    level: Option<String>,
}

/// Client-facing TLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsMode {
    /// TLS when the client asks for it.
    Allow,
    /// Plaintext clients are refused.
    Require,
}

/// How the proxy connects to the upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTlsMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

/// What happens to statements when audit events cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Block,
    Drop,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub mode: ClientTlsMode,
}

#[derive(Debug, Clone)]
pub struct UpstreamTlsConfig {
    pub mode: UpstreamTlsMode,
    pub ca: Option<PathBuf>,
    pub server_name: String,
}

#[derive(Clone)]
pub struct CatalogConfig {
    pub user: String,
    pub password: String,
    pub database: String,
}

impl std::fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .field("database", &self.database)
            .finish()
    }
}

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    File(PathBuf),
    Env(String),
    Command(String),
}

/// Where wrapped column keys are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringLocation {
    File(PathBuf),
    Postgres,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub master_key: MasterKeySource,
    pub keyring: KeyringLocation,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub file: Option<PathBuf>,
    pub postgres: bool,
    pub on_failure: OnFailure,
    pub nats: Option<String>,
    pub nats_subject: String,
    pub nats_stream: String,
    pub checkpoint_every: u64,
    pub max_file_bytes: Option<u64>,
    pub queue_capacity: usize,
    pub backlog: usize,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// The resolved configuration. Paths are absolute (relative ones are resolved against the config file's
/// directory), addresses are parsed, enums are typed.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for messages).
    pub source: PathBuf,
    pub listen: SocketAddr,
    /// The upstream as written (`host:port`), for messages and TLS server names.
    pub upstream: String,
    pub upstream_host: String,
    pub upstream_port: u16,
    pub policy: Option<PathBuf>,
    pub max_connections: u32,
    pub startup_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_message_size: usize,
    pub instance: String,
    /// Session threads (at least 1).
    pub workers: usize,
    pub tls: Option<TlsConfig>,
    pub upstream_tls: UpstreamTlsConfig,
    pub catalog: CatalogConfig,
    pub keys: KeysConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    /// This instance's fleet number (1-127), when it is part of a fleet.
    pub peer_id: Option<u8>,
    /// Other instances by fleet number: where to pass on their CancelRequests (`host:port`).
    pub peers: std::collections::BTreeMap<u8, String>,
    /// `[admin] listen`: where `/metrics`, `/healthz` and `/readyz` are served (`None`: off).
    pub admin_listen: Option<SocketAddr>,
    /// `[admin] users`: the login users who may open the admin console (`dbname=pgcloak`).
    pub admin_users: Vec<String>,
    /// `[admin] database`: the database an admin console login authenticates against.
    pub admin_database: String,
    /// `[admin] tls`: the operations listener speaks HTTPS with the `[tls]` certificate.
    pub admin_tls: bool,
}

impl Config {
    /// Loads `path` (TOML) with `PGCLOAK_*` overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Loads `path` with overrides from `vars` (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        // Parse once with toml for precise line numbers on syntax errors; `config` then merges the
        // environment on top.
        if let Err(e) = text.parse::<toml::Table>() {
            let line = e
                .span()
                .map(|s| line_of(&text, s.start))
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            return Err(ConfigError::Syntax {
                file: format!("{file}{line}"),
                reason: e.message().trim().to_string(),
            });
        }
        let env: std::collections::HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("PGCLOAK_") && k != "PGCLOAK_CONFIG")
            .collect();
        let merged = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("PGCLOAK")
                    .prefix_separator("_")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| ConfigError::Invalid {
                file: file.clone(),
                reason: e.to_string(),
            })?;
        let raw: RawConfig = merged.try_deserialize().map_err(|e| ConfigError::Invalid {
            file: file.clone(),
            reason: describe_deserialize_error(&e.to_string(), &text),
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        resolve(raw, path, &base)
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turns serde's "unknown field `x`, expected one of ..." into a sentence that points at the line.
fn describe_deserialize_error(reason: &str, text: &str) -> String {
    if let Some(rest) = reason.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            let field = &rest[..end];
            let line = text
                .lines()
                .position(|l| {
                    let l = l.trim_start();
                    l.starts_with(field)
                        && l[field.len()..].trim_start().starts_with(['=', '.', ' '])
                })
                .map(|i| format!(" (line {})", i + 1))
                .unwrap_or_default();
            return format!(
                "unknown key `{field}`{line}; remove it or check its spelling ({})",
                &rest[end + 1..].trim_start_matches(", ")
            );
        }
    }
    reason.to_string()
}

fn invalid(file: &Path, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        file: file.display().to_string(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn resolve(raw: RawConfig, path: &Path, base: &Path) -> Result<Config, ConfigError> {
    let rel = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:6432".into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            path,
            "listen",
            format!(
                "`{listen_text}` is not an address; write it as ip:port, e.g. \"127.0.0.1:6432\""
            ),
        )
    })?;
    let upstream = raw.upstream.unwrap_or_else(|| "127.0.0.1:5432".into());
    let (upstream_host, upstream_port) = split_host_port(&upstream).ok_or_else(|| {
        invalid(
            path,
            "upstream",
            format!("`{upstream}` is not host:port; write it like \"127.0.0.1:5432\" or \"db.internal:5432\""),
        )
    })?;

    let policy = raw.policy.as_deref().filter(|p| !p.is_empty()).map(rel);
    if let Some(p) = &policy {
        if !p.is_file() {
            return Err(invalid(
                path,
                "policy",
                format!(
                    "file {} does not exist; create it or fix the path",
                    p.display()
                ),
            ));
        }
    }
    let max_connections = raw.max_connections.unwrap_or(1000);
    if max_connections == 0 {
        return Err(invalid(path, "max_connections", "must be at least 1"));
    }
    let workers = match raw.workers.unwrap_or(0) {
        // Half the CPUs: measured on a 2-core machine shared with PostgreSQL and the clients, one
        // session thread beat two by ~30 % CPU per transaction (deploy/bench/RESULTS.md). A proxy
        // with a host of its own does best with `workers` = CPUs.
        0 => (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1),
        n if n > 1024 => {
            return Err(invalid(
                path,
                "workers",
                "must be between 0 (one per CPU) and 1024",
            ))
        }
        n => n as usize,
    };
    let peer_id = match raw.peer_id {
        None | Some(0) => None,
        Some(n @ 1..=127) => Some(n as u8),
        Some(_) => {
            return Err(invalid(
                path,
                "peer_id",
                "must be between 1 and 127 (0 or absent: not part of a fleet)",
            ))
        }
    };
    let raw_admin = raw.admin.unwrap_or(RawAdmin {
        listen: None,
        users: None,
        database: None,
        tls: None,
    });
    let admin_tls = raw_admin.tls.unwrap_or(false);
    let admin_users = raw_admin.users.unwrap_or_default();
    if let Some(bad) = admin_users
        .iter()
        .find(|u| u.is_empty() || u.contains('\0'))
    {
        return Err(invalid(
            path,
            "admin.users",
            format!(
                "`{bad}` is not a user name; list PostgreSQL login names, e.g. users = [\"dba\"]"
            ),
        ));
    }
    let admin_database = match raw_admin.database {
        None => "postgres".to_string(),
        Some(d) if d.is_empty() || d == crate::console::DATABASE || d.contains('\0') => {
            return Err(invalid(
                path,
                "admin.database",
                format!("`{d}` cannot be authenticated against; name a database that exists in PostgreSQL (default \"postgres\")"),
            ))
        }
        Some(d) => d,
    };
    let admin_listen = match raw_admin.listen.filter(|l| !l.is_empty()) {
        None => None,
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                path,
                "admin.listen",
                format!("`{text}` is not an address; write it as ip:port, e.g. \"127.0.0.1:9930\""),
            )
        })?),
    };
    if admin_listen == Some(listen) {
        return Err(invalid(
            path,
            "admin.listen",
            "is the same address as `listen`; give the admin listener a port of its own",
        ));
    }
    let mut peers = std::collections::BTreeMap::new();
    for (k, v) in raw.peers.unwrap_or_default() {
        let key = format!("peers.{k}");
        let n: u8 = match k.parse() {
            Ok(n @ 1..=127) => n,
            _ => {
                return Err(invalid(
                    path,
                    &key,
                    "peer numbers are 1 to 127, as the peer's own `peer_id`",
                ))
            }
        };
        if split_host_port(&v).is_none() {
            return Err(invalid(
                path,
                &key,
                format!("`{v}` is not host:port (the peer's `listen` address)"),
            ));
        }
        if Some(n) != peer_id {
            peers.insert(n, v);
        }
    }
    if !peers.is_empty() && peer_id.is_none() {
        return Err(invalid(
            path,
            "peers",
            "set `peer_id` (this instance's number) too, or cancel keys cannot name their instance",
        ));
    }
    let max_message_size = raw.max_message_size.unwrap_or(1 << 30);
    if !(1024..=(1u64 << 30)).contains(&max_message_size) {
        return Err(invalid(
            path,
            "max_message_size",
            "must be between 1024 and 1073741824 bytes (PostgreSQL's own limit is 1 GiB)",
        ));
    }

    let tls = match raw.tls {
        None => None,
        Some(t) => {
            let mode = match t.mode.as_deref().unwrap_or("allow") {
                "allow" => ClientTlsMode::Allow,
                "require" => ClientTlsMode::Require,
                other => {
                    return Err(invalid(
                        path,
                        "tls.mode",
                        format!("`{other}` is not a mode; use \"allow\" or \"require\""),
                    ))
                }
            };
            let cert = t.cert.map(|c| rel(&c)).ok_or_else(|| {
                invalid(
                    path,
                    "tls.cert",
                    "is missing; give the PEM certificate chain file",
                )
            })?;
            let key = t.key.map(|c| rel(&c)).ok_or_else(|| {
                invalid(path, "tls.key", "is missing; give the PEM private key file")
            })?;
            for (k, p) in [("tls.cert", &cert), ("tls.key", &key)] {
                if !p.is_file() {
                    return Err(invalid(
                        path,
                        k,
                        format!("file {} does not exist; fix the path", p.display()),
                    ));
                }
            }
            Some(TlsConfig { cert, key, mode })
        }
    };

    let upstream_tls = {
        let t = raw.upstream_tls.unwrap_or(RawUpstreamTls {
            mode: None,
            ca: None,
            server_name: None,
        });
        let mode = match t.mode.as_deref().unwrap_or("prefer") {
            "disable" => UpstreamTlsMode::Disable,
            "prefer" => UpstreamTlsMode::Prefer,
            "require" => UpstreamTlsMode::Require,
            "verify-full" => UpstreamTlsMode::VerifyFull,
            other => {
                return Err(invalid(
                    path,
                    "upstream_tls.mode",
                    format!("`{other}` is not a mode; use disable, prefer, require or verify-full"),
                ))
            }
        };
        let ca = t.ca.as_deref().filter(|c| !c.is_empty()).map(rel);
        if mode == UpstreamTlsMode::VerifyFull && ca.is_none() {
            return Err(invalid(
                path,
                "upstream_tls.ca",
                "is required with mode = \"verify-full\"; give the CA certificate (PEM) that signed the server's certificate",
            ));
        }
        if let Some(ca) = &ca {
            if !ca.is_file() {
                return Err(invalid(
                    path,
                    "upstream_tls.ca",
                    format!("file {} does not exist; fix the path", ca.display()),
                ));
            }
        }
        UpstreamTlsConfig {
            mode,
            ca,
            server_name: t.server_name.unwrap_or_else(|| upstream_host.clone()),
        }
    };

    let catalog = {
        let c = raw.catalog.unwrap_or(RawCatalog {
            user: None,
            password: None,
            database: None,
        });
        CatalogConfig {
            user: c.user.unwrap_or_else(|| "pgcloak".into()),
            password: c.password.unwrap_or_default(),
            database: c.database.unwrap_or_else(|| "postgres".into()),
        }
    };

    let keys = {
        let k = raw.keys.unwrap_or(RawKeys {
            master_key_file: None,
            master_key_env: None,
            master_key_command: None,
            keyring: None,
        });
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let sources = [
            nonempty(k.master_key_file).map(|f| MasterKeySource::File(rel(&f))),
            nonempty(k.master_key_env).map(MasterKeySource::Env),
            nonempty(k.master_key_command).map(MasterKeySource::Command),
        ];
        let mut given: Vec<MasterKeySource> = sources.into_iter().flatten().collect();
        if given.len() > 1 {
            return Err(invalid(
                path,
                "keys",
                "sets more than one of master_key_file, master_key_env, master_key_command; keep exactly one",
            ));
        }
        let master_key = given
            .pop()
            .unwrap_or_else(|| MasterKeySource::File(rel("master.key")));
        let keyring = match k.keyring.as_deref().unwrap_or("keyring.json") {
            "postgres" => KeyringLocation::Postgres,
            "" => {
                return Err(invalid(
                    path,
                    "keys.keyring",
                    "is empty; give a file path or \"postgres\"",
                ))
            }
            f => KeyringLocation::File(rel(f)),
        };
        KeysConfig {
            master_key,
            keyring,
        }
    };

    let audit = {
        let a = raw.audit.unwrap_or(RawAudit {
            file: None,
            postgres: None,
            on_failure: None,
            nats: None,
            nats_subject: None,
            nats_stream: None,
            checkpoint_every: None,
            max_file_bytes: None,
            queue_capacity: None,
            backlog: None,
        });
        let on_failure = match a.on_failure.as_deref().unwrap_or("block") {
            "block" => OnFailure::Block,
            "drop" => OnFailure::Drop,
            other => {
                return Err(invalid(
                    path,
                    "audit.on_failure",
                    format!("`{other}` is not allowed; use \"block\" or \"drop\""),
                ))
            }
        };
        let nats = a.nats.filter(|n| !n.is_empty());
        if let Some(n) = &nats {
            if !n.starts_with("nats://") && !n.starts_with("tls://") {
                return Err(invalid(
                    path,
                    "audit.nats",
                    format!("`{n}` is not a NATS URL; write it like \"nats://127.0.0.1:4222\""),
                ));
            }
        }
        let checkpoint_every = a.checkpoint_every.unwrap_or(1000);
        if checkpoint_every == 0 {
            return Err(invalid(
                path,
                "audit.checkpoint_every",
                "must be at least 1",
            ));
        }
        AuditConfig {
            file: match a.file.as_deref() {
                None => Some(rel("audit.jsonl")),
                Some("") => None,
                Some(f) => Some(rel(f)),
            },
            postgres: a.postgres.unwrap_or(false),
            on_failure,
            nats,
            nats_stream: a.nats_stream.filter(|s| !s.is_empty()).unwrap_or_else(|| {
                a.nats_subject
                    .as_deref()
                    .unwrap_or("pgcloak.audit")
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect()
            }),
            nats_subject: a.nats_subject.unwrap_or_else(|| "pgcloak.audit".into()),
            checkpoint_every,
            max_file_bytes: a.max_file_bytes.filter(|&b| b > 0),
            queue_capacity: a.queue_capacity.unwrap_or(65536).max(16),
            backlog: a.backlog.unwrap_or(100_000).max(1),
        }
    };

    let log = {
        let l = raw.log.unwrap_or(RawLog {
            format: None,
            level: None,
        });
        LogConfig {
            format: match l.format.as_deref().unwrap_or("text") {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        path,
                        "log.format",
                        format!("`{other}` is not a format; use \"text\" or \"json\""),
                    ))
                }
            },
            level: l.level.unwrap_or_else(|| "info".into()),
        }
    };

    let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
    if admin_tls && tls.is_none() {
        return Err(invalid(
            path,
            "admin.tls",
            "is true but there is no [tls] section; the operations listener serves the [tls] certificate, so configure [tls] cert and key (or set admin.tls = false)",
        ));
    }
    Ok(Config {
        source: path.to_path_buf(),
        listen,
        upstream: upstream.clone(),
        upstream_host,
        upstream_port,
        policy,
        max_connections,
        startup_timeout: secs(raw.startup_timeout, 30).max(Duration::from_secs(1)),
        idle_timeout: raw.idle_timeout.filter(|&s| s > 0).map(Duration::from_secs),
        shutdown_timeout: secs(raw.shutdown_timeout, 30),
        connect_timeout: secs(raw.connect_timeout, 10).max(Duration::from_secs(1)),
        max_message_size: max_message_size as usize,
        instance: raw
            .instance
            .filter(|i| !i.is_empty())
            .unwrap_or_else(default_instance),
        workers,
        tls,
        upstream_tls,
        catalog,
        keys,
        audit,
        log,
        peer_id,
        peers,
        admin_listen,
        admin_users,
        admin_database,
        admin_tls,
    })
}

fn default_instance() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgcloak".into())
}

/// Splits `host:port`, accepting `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        s.rsplit_once(':')?
    };
    if host.is_empty() {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    if port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgcloak.toml");
        std::fs::write(&p, text).unwrap();
        Config::load_with_env(&p, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6432");
        assert_eq!(c.upstream_port, 5432);
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.max_message_size, 1 << 30);
        assert_eq!(c.audit.on_failure, OnFailure::Block);
        assert!(c.audit.file.as_ref().unwrap().ends_with("audit.jsonl"));
        assert!(c.tls.is_none());
        assert_eq!(c.upstream_tls.mode, UpstreamTlsMode::Prefer);
        assert!(c.workers >= 1);
    }

    #[test]
    fn peers_are_validated() {
        let c = load(
            "peer_id = 1\n[peers]\n1 = \"127.0.0.1:6432\"\n2 = \"10.0.0.2:6432\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.peer_id, Some(1));
        assert_eq!(c.peers.len(), 1, "its own entry is dropped");
        assert_eq!(c.peers[&2], "10.0.0.2:6432");
        let e = load("[peers]\n2 = \"10.0.0.2:6432\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer_id"), "{e}");
        let e = load("peer_id = 200\n", &[]).unwrap_err().to_string();
        assert!(e.contains("127"), "{e}");
        let e = load("peer_id = 1\n[peers]\nx = \"h:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("peers.x"), "{e}");
        let e = load("peer_id = 1\n[peers]\n2 = \"nohostport\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("host:port"), "{e}");
        assert_eq!(load("", &[]).unwrap().peer_id, None);
    }

    #[test]
    fn workers_are_validated() {
        assert_eq!(load("workers = 3\n", &[]).unwrap().workers, 3);
        assert_eq!(load("", &[("PGCLOAK_WORKERS", "2")]).unwrap().workers, 2);
        let e = load("workers = 5000\n", &[]).unwrap_err().to_string();
        assert!(e.contains("workers") && e.contains("1024"), "{e}");
    }

    #[test]
    fn environment_overrides_file_values() {
        let c = load(
            "listen = \"127.0.0.1:7000\"\n[catalog]\npassword = \"file\"\n[audit]\nfile = \"a.jsonl\"\n",
            &[
                ("PGCLOAK_LISTEN", "127.0.0.1:7001"),
                ("PGCLOAK_CATALOG__PASSWORD", "secret"),
                ("PGCLOAK_MAX_CONNECTIONS", "7"),
                ("PGCLOAK_AUDIT__FILE", ""),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7001);
        assert_eq!(c.catalog.password, "secret");
        assert_eq!(c.max_connections, 7);
        assert!(c.audit.file.is_none());
        assert!(!format!("{:?}", c.catalog).contains("secret"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = load("listen = \"127.0.0.1:1\"\nlisten_port = 5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_port"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn unknown_key_in_a_section_is_refused() {
        let e = load("[tls]\ncrt = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("crt"), "{e}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = load("listen = \"a\"\n\nupstream = \n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(":3"), "{e}");
    }

    #[test]
    fn bad_address_names_key_and_fix() {
        let e = load("listen = \"localhost\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") && e.contains("ip:port"), "{e}");
        let e = load("upstream = \"db\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("upstream") && e.contains("host:port"), "{e}");
    }

    #[test]
    fn missing_files_are_reported() {
        let e = load("policy = \"nope.toml\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy") && e.contains("nope.toml"), "{e}");
        let e = load("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.cert"), "{e}");
        let e = load("[upstream_tls]\nmode = \"verify-full\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream_tls.ca"), "{e}");
    }

    #[test]
    fn bad_enums_are_refused() {
        for (text, key) in [
            (
                "[tls]\nmode = \"maybe\"\ncert=\"a\"\nkey=\"b\"\n",
                "tls.mode",
            ),
            (
                "[upstream_tls]\nmode = \"sometimes\"\n",
                "upstream_tls.mode",
            ),
            ("[audit]\non_failure = \"ignore\"\n", "audit.on_failure"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
        ] {
            let e = load(text, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn wrong_value_type_is_refused() {
        let e = load("max_connections = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_connections"), "{e}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("db:5432"), Some(("db".into(), 5432)));
        assert_eq!(split_host_port("[::1]:5433"), Some(("::1".into(), 5433)));
        assert_eq!(split_host_port("db"), None);
        assert_eq!(split_host_port(":5432"), None);
        assert_eq!(split_host_port("db:0"), None);
    }
}
