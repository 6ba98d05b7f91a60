//! The `pgcloak` command line: parses arguments and calls the library. Errors are printed as one
//! sentence on stderr with a non-zero exit; never a panic or a backtrace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use pgcloak::config::{Config, DEFAULT_CONFIG_FILE};

/// mimalloc instead of glibc's allocator: audit events are built on the session threads and freed
/// by the audit writer and its sinks on others, a cross-thread free per field that glibc's arenas
/// make expensive (deploy/bench/RESULTS.md, issue 19).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pgcloak",
    version,
    about = "Transparent encrypting proxy for PostgreSQL"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, value_name = "FILE", env = "PGCLOAK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Validate the config and the policy (and, with the database reachable, every policy column).
    Check,
    /// Manage the master key and column keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify and query the audit trail.
    #[command(subcommand)]
    Audit(Box<AuditCommand>),
    /// Encrypt the existing plaintext values of COLUMN in place: online, in batches, resumable.
    Encrypt {
        /// schema.table.column
        column: String,
        #[command(flatten)]
        opts: pgcloak::migrate::Options,
    },
    /// Work with policies before enforcing them.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Find sensitive columns: sample each text-like column and classify it by content, structure
    /// and name (no sampled value is ever printed).
    Discover(pgcloak::discover::Options),
    /// Just-in-time access: request, approve, revoke and list grants (pgcloak.grants in the
    /// [catalog] database).
    #[command(subcommand)]
    Grant(GrantCommand),
    /// Move the existing ciphertexts of COLUMN to its active key version: online, in batches, resumable.
    Reencrypt {
        /// schema.table.column
        column: String,
        #[command(flatten)]
        opts: pgcloak::migrate::Options,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Replay the audit trail's statements under NEW and list what it would newly refuse, mask,
    /// null or limit, per user, role and statement (nothing is changed).
    Impact {
        /// The policy to assess.
        #[arg(long, value_name = "NEW.toml")]
        policy: PathBuf,
        #[command(flatten)]
        source: AuditSource,
        /// Only statements from this time on (2026-01-31 or RFC 3339).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        #[arg(long, value_name = "T")]
        until: Option<String>,
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
}

#[derive(Subcommand)]
enum GrantCommand {
    /// Ask for USER's access to a class (of one table, or all) to be raised for a while; pending
    /// until someone else approves it. Logs in to PostgreSQL as --by (PGPASSWORD) to confirm who asks.
    Request {
        /// The login user that gets the access.
        #[arg(long)]
        user: String,
        /// public, internal, sensitive or confidential
        #[arg(long)]
        class: String,
        #[arg(long, value_parser = ["plaintext", "masked"])]
        access: String,
        /// How long it lasts once approved: 30m, 1h, 1h30m (at most 7d).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Only this table's columns (schema.table).
        #[arg(long)]
        table: Option<String>,
        /// Why (goes to the audit trail).
        #[arg(long)]
        reason: String,
        /// Who asks (default: --user).
        #[arg(long)]
        by: Option<String>,
    },
    /// Approve a pending request as APPROVER: a member of a [grants] approvers role of the policy,
    /// neither its requester nor its user; logs in to PostgreSQL as APPROVER (PGPASSWORD).
    Approve {
        id: i64,
        #[arg(long, value_name = "APPROVER")]
        by: String,
    },
    /// End a pending or active grant now (on every running proxy within 2 seconds).
    Revoke {
        id: i64,
        /// Who revokes (confirmed by logging in as them, PGPASSWORD); default: the [catalog] user.
        #[arg(long)]
        by: Option<String>,
    },
    /// List grants, newest first.
    List {
        /// Only grants in force now.
        #[arg(long)]
        active: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

#[derive(clap::Args)]
struct AuditSource {
    /// An audit JSON-lines file (default: [audit] file of the config); rotated siblings are included.
    #[arg(long, value_name = "F", conflicts_with = "postgres")]
    file: Option<PathBuf>,
    /// Read table pgcloak_audit.statements in the [catalog] database instead of a file.
    #[arg(long)]
    postgres: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and its signed checkpoints: exit 0 intact, 1 with the first bad record.
    Verify {
        #[command(flatten)]
        source: AuditSource,
        /// The audit public key (base64 or hex, from `pgcloak keys audit-key`); default: derived
        /// from the master key through the config.
        #[arg(long, value_name = "K")]
        public_key: Option<String>,
        /// Fail unless a signed checkpoint at or after this seq is present (detects truncation).
        #[arg(long, value_name = "SEQ")]
        expect_checkpoint: Option<u64>,
    },
    /// Print audit records matching every filter given.
    Query {
        #[command(flatten)]
        source: AuditSource,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        role: Option<String>,
        /// schema.table or table
        #[arg(long)]
        table: Option<String>,
        /// schema.table.column, table.column or column
        #[arg(long)]
        column: Option<String>,
        #[arg(long, value_parser = ["allow", "deny", "would_deny"])]
        decision: Option<String>,
        /// connect, disconnect, auth_failed, select, insert, update, delete, copy, ddl, other, gap, start,
        /// shutdown, error, admin, grant
        #[arg(long)]
        kind: Option<String>,
        /// RFC 3339 time or date (inclusive)
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time or date (exclusive)
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_parser = ["table", "json", "csv"], default_value = "table")]
        format: String,
        /// Count reads per user and classified column instead of listing records (breach scope).
        #[arg(long)]
        summary: bool,
        /// Only the steps of just-in-time grant ID and the statements served under it.
        #[arg(long, value_name = "ID")]
        grant: Option<i64>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create the master key file (if configured as a file and absent) and a key for every encrypted
    /// column in the policy. Never replaces existing keys.
    Init,
    /// Add a new key version for COLUMN (schema.table.column); new writes use it, old versions still decrypt.
    Rotate {
        /// schema.table.column
        column: String,
    },
    /// List columns, key versions, the active version and creation times (never key material).
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Print the audit public key auditors verify the audit trail with.
    AuditKey,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    let result = match cli.command {
        Command::Serve => serve(&config_path),
        Command::Check => check(&config_path),
        Command::Discover(opts) => discover(&config_path, &opts),
        Command::Policy(PolicyCommand::Impact {
            policy,
            source,
            since,
            until,
            format,
        }) => policy_impact(&config_path, &policy, source, since, until, &format),
        Command::Keys(k) => keys(&config_path, k),
        Command::Grant(g) => grant(&config_path, g),
        Command::Audit(a) => audit(&config_path, *a),
        Command::Encrypt { column, opts } => {
            migrate(&config_path, &column, pgcloak::migrate::Op::Encrypt, &opts)
        }
        Command::Reencrypt { column, opts } => migrate(
            &config_path,
            &column,
            pgcloak::migrate::Op::Reencrypt,
            &opts,
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgcloak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn discover(path: &std::path::Path, opts: &pgcloak::discover::Options) -> Result<ExitCode> {
    let config = load(path)?;
    let policy = pgcloak::policy_file::load_policy(&config)?;
    let report = pgcloak::discover::run(&config, opts, &policy)?;
    print!("{}", pgcloak::discover::render(&report, opts.format));
    for (table, why) in &report.skipped {
        eprintln!("pgcloak discover: skipped {table}: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

fn grant(path: &std::path::Path, cmd: GrantCommand) -> Result<ExitCode> {
    use pgcloak::grants::cli;
    let config = load(path)?;
    match cmd {
        GrantCommand::Request {
            user,
            class,
            access,
            duration,
            table,
            reason,
            by,
        } => {
            let by = by.as_deref().unwrap_or(&user);
            let id = cli::request(
                &config,
                &cli::Request {
                    user: &user,
                    class: &class,
                    access: &access,
                    duration: &duration,
                    table: table.as_deref(),
                    reason: &reason,
                    by,
                },
            )?;
            println!("grant {id} requested: {access} {class} for {user} for {duration}; pending until another approver runs `pgcloak grant approve {id} --by <approver>`");
        }
        GrantCommand::Approve { id, by } => {
            let until = cli::approve(&config, id, &by)?;
            println!("grant {id} approved by {by}; in force until {until} (on every running proxy within 2 seconds)");
        }
        GrantCommand::Revoke { id, by } => {
            cli::revoke(&config, id, by.as_deref())?;
            println!("grant {id} revoked; every running proxy stops applying it within 2 seconds");
        }
        GrantCommand::List { active, format } => {
            let rows = cli::list(&config, active)?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                ListFormat::Table => {
                    println!(
                        "{:<6} {:<16} {:<13} {:<10} {:<24} {:<9} {:<14} {:<14} {:<21} reason",
                        "id",
                        "user",
                        "class",
                        "access",
                        "table",
                        "state",
                        "requested_by",
                        "approved_by",
                        "expires_at"
                    );
                    for g in rows {
                        println!(
                            "{:<6} {:<16} {:<13} {:<10} {:<24} {:<9} {:<14} {:<14} {:<21} {}",
                            g.id,
                            g.user,
                            g.class,
                            g.access,
                            g.table.as_deref().unwrap_or("(any)"),
                            g.state,
                            g.requested_by,
                            g.approved_by.as_deref().unwrap_or("-"),
                            g.expires_at.as_deref().unwrap_or("-"),
                            g.reason
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_impact(
    path: &std::path::Path,
    new_path: &std::path::Path,
    source: AuditSource,
    since: Option<String>,
    until: Option<String>,
    format: &str,
) -> Result<ExitCode> {
    let config = load(path)?;
    let now = pgcloak::policy_file::load_policy(&config)?;
    let text = std::fs::read_to_string(new_path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", new_path.display()))?;
    let new = pgcloak_policy::Policy::parse(&text, &new_path.display().to_string())?;
    let filter = pgcloak_audit::query::Filter {
        since: time_arg(&since, "since")?,
        until: time_arg(&until, "until")?,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let events = audit_events(&rt, source, &filter, || Ok(config.clone()))?;
    let changes = pgcloak::impact::impact(&config, &now, &new, &events)?;
    print!("{}", pgcloak::impact::render(&changes, format == "json"));
    Ok(ExitCode::SUCCESS)
}

fn load(path: &std::path::Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn migrate(
    path: &std::path::Path,
    column: &str,
    op: pgcloak::migrate::Op,
    opts: &pgcloak::migrate::Options,
) -> Result<ExitCode> {
    let config = load(path)?;
    let summary = pgcloak::migrate::run(&config, column, op, opts)?;
    println!("{summary}");
    Ok(ExitCode::from(summary.exit_code()))
}

fn serve(path: &std::path::Path) -> Result<ExitCode> {
    let config = Arc::new(load(path)?);
    pgcloak::logging::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = pgcloak::server::bind(&config)
            .await
            .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))?;
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            signal.cancel();
        });
        pgcloak::server::serve(config, listener, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn check(path: &std::path::Path) -> Result<ExitCode> {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut problems: Vec<String> = Vec::new();
    if let Some(policy_path) = &config.policy {
        let file = policy_path.display().to_string();
        match std::fs::read_to_string(policy_path) {
            Err(e) => problems.push(format!("{file}: cannot read: {e}")),
            Ok(text) => {
                if let Ok(p) = pgcloak_policy::Policy::parse(&text, &file) {
                    for r in p.roles().iter().filter(|r| r.shadow) {
                        eprintln!(
                            "{file}:{}: warning: role {} is in shadow mode (enforce = \"shadow\"): its statements are audited with the decision that would apply (would_deny) but nothing it reads is masked or refused; writes are still encrypted. Set enforce = \"enforce\" when the audit shows what it would break.",
                            r.line, r.name
                        );
                    }
                }
                let offline = pgcloak_policy::check_text(&text, &file, None);
                if !offline.is_empty() {
                    problems.extend(offline.iter().map(|p| p.to_string()));
                } else {
                    match pgcloak::catalog::CatalogConn::connect_blocking(&config).and_then(|conn| {
                        let types = storage_types(&conn)?;
                        Ok((conn, types))
                    }) {
                        Ok((conn, types)) => {
                            problems.extend(
                                pgcloak_policy::check_text(&text, &file, Some(&types))
                                    .iter()
                                    .map(|p| p.to_string()),
                            );
                            if let Ok(p) = pgcloak_policy::Policy::parse(&text, &file) {
                                warn_missing_approvers(&conn, &p, &file);
                            }
                        }
                        Err(e) => eprintln!(
                            "pgcloak: note: database not reachable ({e}); checked the policy offline only"
                        ),
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        println!("{}: ok", config.source.display());
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("pgcloak check: {} problem(s)", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

/// Warns about `[grants] approvers` roles the database does not have (nobody could approve
/// through them).
fn warn_missing_approvers(
    conn: &pgcloak::catalog::CatalogConn,
    policy: &pgcloak_policy::Policy,
    file: &str,
) {
    let g = policy.grants();
    if g.approvers.is_empty() {
        return;
    }
    let Ok(rows) = conn.query(
        "SELECT r FROM unnest($1::text[]) r WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)",
        &[&g.approvers],
    ) else {
        return;
    };
    for r in rows {
        let role: String = r.get(0);
        eprintln!(
            "{file}:{}: warning: [grants] approvers names role {role}, which does not exist in the database; create it (CREATE ROLE {role}; GRANT {role} TO <approver>) or fix the name",
            g.line
        );
    }
}

/// `schema.table.column -> format_type(...)` of every user column.
fn storage_types(
    conn: &pgcloak::catalog::CatalogConn,
) -> Result<pgcloak_policy::StorageTypes, pgcloak::catalog::CatalogError> {
    let rows = conn.query(
        "SELECT n.nspname || '.' || c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

fn keys(path: &std::path::Path, cmd: KeysCommand) -> Result<ExitCode> {
    let config = load(path)?;
    match cmd {
        KeysCommand::Init => {
            let (master, created) = pgcloak::keys::init_master_key(&config)?;
            if created {
                if let pgcloak::config::MasterKeySource::File(p) = &config.keys.master_key {
                    println!("created master key file {} (mode 0600); back it up: without it no data can be decrypted", p.display());
                }
            }
            let (store, location) = pgcloak::keys::open_store(&config)?;
            let columns = pgcloak::keys::policy_encrypted_columns(&config)?;
            let (made, doc) =
                pgcloak::keys::ensure_policy_keys(store.as_ref(), &location, &master, &columns)?;
            for c in &made {
                println!("created key for {c}");
            }
            println!(
                "keyring {location}: {} column key(s), {} new",
                doc.list().len(),
                made.len()
            );
        }
        KeysCommand::Rotate { column } => {
            let v = pgcloak::keys::rotate(&config, &column)?;
            println!("{column}: key version {v} is now active; older versions still decrypt");
        }
        KeysCommand::List { format } => {
            let cols = pgcloak::keys::list(&config)?;
            match format {
                ListFormat::Json => {
                    let out: Vec<serde_json::Value> = cols
                        .iter()
                        .map(|c| {
                            serde_json::json!({
                                "column": c.column,
                                "active_version": c.active_version,
                                "mode": c.mode.name(),
                                "key_id": c.key_id,
                                "versions": c.versions.iter().map(|v| serde_json::json!({"version": v.version, "created": v.created})).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&out)?);
                }
                ListFormat::Table => {
                    let w = cols
                        .iter()
                        .map(|c| c.column.len())
                        .max()
                        .unwrap_or(6)
                        .max(6);
                    println!(
                        "{:<w$}  {:<13}  {:>6}  {:>7}  created",
                        "column", "mode", "active", "version"
                    );
                    for c in &cols {
                        for v in &c.versions {
                            let active = if v.version == c.active_version {
                                "*"
                            } else {
                                ""
                            };
                            println!(
                                "{:<w$}  {:<13}  {:>6}  {:>7}  {}",
                                c.column,
                                c.mode.name(),
                                active,
                                v.version,
                                v.created
                            );
                        }
                    }
                }
            }
        }
        KeysCommand::AuditKey => {
            let master = pgcloak::keys::load_master_key(&config)?;
            let key = master.audit_signing_key()?;
            println!("{}", key.public_key_base64());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn pg_sink(config: &Config) -> pgcloak_audit::PgSinkConfig {
    pgcloak_audit::PgSinkConfig {
        host: config.upstream_host.clone(),
        port: config.upstream_port,
        user: config.catalog.user.clone(),
        password: config.catalog.password.clone(),
        dbname: config.catalog.database.clone(),
    }
}

/// A `--since`/`--until` argument as a time.
fn time_arg(s: &Option<String>, what: &str) -> Result<Option<time::OffsetDateTime>> {
    match s {
        None => Ok(None),
        Some(t) => pgcloak_audit::parse_time(t).map(Some).ok_or_else(|| {
            anyhow::anyhow!(
                "--{what} {t:?} is not a time; write 2026-01-31 or 2026-01-31T12:00:00Z"
            )
        }),
    }
}

/// The audit events matching `filter` from `source` (the config, loaded only when needed: for the
/// PostgreSQL table or the default file).
fn audit_events(
    rt: &tokio::runtime::Runtime,
    source: AuditSource,
    filter: &pgcloak_audit::query::Filter,
    config: impl Fn() -> Result<Config>,
) -> Result<Vec<pgcloak_audit::AuditEvent>> {
    if source.postgres {
        return Ok(rt.block_on(pgcloak_audit::query::query_postgres(
            &pg_sink(&config()?),
            filter,
        ))?);
    }
    let file = match source.file {
        Some(f) => f,
        None => audit_file(&config()?, None)?,
    };
    Ok(pgcloak_audit::query::query_path(&file, filter)?)
}

fn audit_file(config: &Config, file: Option<PathBuf>) -> Result<PathBuf> {
    file.or_else(|| config.audit.file.clone()).ok_or_else(|| {
        anyhow::anyhow!(
            "no audit file: [audit] file is \"\" in {}; pass --file F or --postgres",
            config.source.display()
        )
    })
}

fn audit(path: &std::path::Path, cmd: AuditCommand) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cmd {
        AuditCommand::Verify {
            source,
            public_key,
            expect_checkpoint,
        } => {
            // Only the public key is needed; the config is read only for what was not given.
            let config = if public_key.is_none() || source.file.is_none() || source.postgres {
                Some(load(path)?)
            } else {
                None
            };
            let pk: [u8; 32] = match &public_key {
                Some(k) => pgcloak_audit::parse_public_key(k)?,
                None => {
                    let cfg = config.as_ref().expect("loaded above");
                    pgcloak::keys::load_master_key(cfg)?
                        .audit_signing_key()?
                        .public_key_bytes()
                }
            };
            let opts = pgcloak_audit::verify::VerifyOptions {
                expect_checkpoint,
                ..Default::default()
            };
            let report = |r: &pgcloak_audit::verify::VerifyReport| {
                println!("{}", r.summary());
                for w in r.warnings() {
                    println!("note: {w}");
                }
            };
            if source.postgres {
                let cfg = config.as_ref().expect("loaded above");
                let results = rt.block_on(pgcloak_audit::verify::verify_postgres(
                    &pg_sink(cfg),
                    &pk,
                    &opts,
                ))?;
                let mut ok = true;
                if results.is_empty() {
                    println!("no audit records in pgcloak_audit.statements");
                }
                for r in results {
                    match r.result {
                        Ok(rep) => {
                            print!("instance {}: ", r.instance);
                            report(&rep);
                        }
                        Err(e) => {
                            eprintln!("instance {}: {e}", r.instance);
                            ok = false;
                        }
                    }
                }
                Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            } else {
                let file = match source.file {
                    Some(f) => f,
                    None => audit_file(config.as_ref().expect("loaded above"), None)?,
                };
                match pgcloak_audit::verify::verify_path(&file, &pk, &opts) {
                    Ok(r) => {
                        report(&r);
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
        }
        AuditCommand::Query {
            source,
            user,
            role,
            table,
            column,
            decision,
            kind,
            since,
            until,
            format,
            summary,
            grant,
        } => {
            let filter = pgcloak_audit::query::Filter {
                user,
                role,
                table,
                column,
                decision: decision.as_deref().and_then(pgcloak_audit::Decision::parse),
                kind: match kind.as_deref() {
                    None => None,
                    Some(k) => Some(
                        pgcloak_audit::Kind::parse(k)
                            .ok_or_else(|| anyhow::anyhow!("--kind {k:?} is not an event kind"))?,
                    ),
                },
                since: time_arg(&since, "since")?,
                until: time_arg(&until, "until")?,
                grant,
            };
            let format: pgcloak_audit::query::Format = format.parse()?;
            let events = audit_events(&rt, source, &filter, || load(path))?;
            let mut out = std::io::stdout().lock();
            if summary {
                pgcloak_audit::query::write_summary(
                    &mut out,
                    &pgcloak_audit::query::summarize(&events),
                    format,
                )?;
            } else {
                pgcloak_audit::query::write_events(&mut out, &events, format)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
