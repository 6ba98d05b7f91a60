//! Side connections to PostgreSQL as the `[catalog]` user (tokio-postgres): used for the keyring
//! table, storage-type checks, and (later) table/column ids and role membership. TLS follows
//! `[upstream_tls]`.

use std::sync::Arc;

use tokio_postgres::types::ToSql;

use crate::config::{Config, UpstreamTlsMode};
use crate::error::ConfigError;

/// The libpq-style connection parameters of a side connection.
pub fn pg_config(cfg: &Config) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&cfg.upstream_host)
        .port(cfg.upstream_port)
        .user(&cfg.catalog.user)
        .dbname(&cfg.catalog.database)
        .application_name("pgcloak")
        .connect_timeout(cfg.connect_timeout);
    if !cfg.catalog.password.is_empty() {
        c.password(&cfg.catalog.password);
    }
    c.ssl_mode(match cfg.upstream_tls.mode {
        UpstreamTlsMode::Disable => tokio_postgres::config::SslMode::Disable,
        UpstreamTlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        UpstreamTlsMode::Require | UpstreamTlsMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    c
}

/// A side connection to PostgreSQL (the `[catalog]` user) that could not be opened or used. The
/// cause is kept (and shown with the server's message, detail, hint and SQLSTATE); cloneable so
/// a failure can stand for a while for every session that asks (see `services.rs`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    /// `[upstream_tls]` cannot be used for the side connection.
    #[error("{who}: {cause}")]
    Tls {
        who: String,
        #[source]
        cause: Arc<ConfigError>,
    },
    #[error("{who} failed: {}; check [catalog] in the config", describe(.cause))]
    Connect {
        who: String,
        #[source]
        cause: Arc<tokio_postgres::Error>,
    },
    /// A query the proxy runs itself failed; `what` names what it reads.
    #[error("cannot read {what}: {}", describe(.cause))]
    Read {
        what: String,
        #[source]
        cause: Arc<tokio_postgres::Error>,
    },
    /// A statement of a CLI command failed.
    #[error("{}", describe(.0))]
    Statement(#[source] Arc<tokio_postgres::Error>),
    #[error("cannot start a runtime for the catalog connection: {0}")]
    Runtime(#[source] Arc<std::io::Error>),
    #[error("the proxy is shutting down")]
    ShuttingDown,
}

impl CatalogError {
    /// The server's SQLSTATE, when the server answered with an error.
    pub fn sqlstate(&self) -> Option<&str> {
        let cause = match self {
            CatalogError::Connect { cause, .. }
            | CatalogError::Read { cause, .. }
            | CatalogError::Statement(cause) => cause,
            _ => return None,
        };
        cause.code().map(|c| c.code())
    }

    /// A failed statement of a CLI command.
    pub fn statement(e: tokio_postgres::Error) -> CatalogError {
        CatalogError::Statement(Arc::new(e))
    }

    /// A failed read of `what` by the proxy.
    pub fn read(what: impl Into<String>, e: tokio_postgres::Error) -> CatalogError {
        CatalogError::Read {
            what: what.into(),
            cause: Arc::new(e),
        }
    }
}

/// Opens a side connection and drives it on a spawned task.
pub async fn connect(cfg: &Config) -> Result<tokio_postgres::Client, CatalogError> {
    let who = format!(
        "catalog connection to {} as user {} (database {})",
        cfg.upstream, cfg.catalog.user, cfg.catalog.database
    );
    connect_with(cfg, pg_config(cfg), who).await
}

/// Opens a connection with parameters `pg` (e.g. [`pg_config`] as another user), with the TLS of
/// `[upstream_tls]`, and drives it on a spawned task; `who` names it in errors.
pub async fn connect_with(
    cfg: &Config,
    pg: tokio_postgres::Config,
    who: String,
) -> Result<tokio_postgres::Client, CatalogError> {
    let tls = crate::tls::upstream_config(cfg).map_err(|e| CatalogError::Tls {
        who: who.clone(),
        cause: Arc::new(e),
    })?;
    let failed = |e| CatalogError::Connect {
        who: who.clone(),
        cause: Arc::new(e),
    };
    let client = match tls {
        Some(tls_cfg) => {
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls_cfg).clone());
            let (client, conn) = pg.connect(connector).await.map_err(failed)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        }
        None => {
            let (client, conn) = pg.connect(tokio_postgres::NoTls).await.map_err(failed)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        }
    };
    Ok(client)
}

/// Opens a side connection to the `[catalog]` database for one of the proxy's own tables and
/// creates them (`ddl`, idempotent); `what` names them in the error.
pub async fn connect_for_tables(
    cfg: &Config,
    ddl: &str,
    what: &str,
) -> Result<tokio_postgres::Client, CatalogError> {
    let client = connect(cfg).await?;
    client
        .batch_execute(ddl)
        .await
        .map_err(|e| CatalogError::read(what, e))?;
    Ok(client)
}

/// A readable description of a tokio-postgres error (its Display hides the server message).
pub use pgcloak_audit::describe_pg_error as describe;

/// A side connection usable from synchronous code (CLI commands): it owns a small runtime.
pub struct CatalogConn {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl CatalogConn {
    /// Connects; must not be called from inside an async runtime.
    pub fn connect_blocking(cfg: &Config) -> Result<CatalogConn, CatalogError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CatalogError::Runtime(Arc::new(e)))?;
        let client = rt.block_on(connect(cfg))?;
        Ok(CatalogConn { rt, client })
    }

    /// Runs `fut` (which may use [`CatalogConn::client`]) to completion on this connection's runtime.
    pub fn block_on<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(fut)
    }

    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    pub fn batch(&self, sql: &str) -> Result<(), CatalogError> {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .map_err(CatalogError::statement)
    }

    pub fn query_opt_text(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<String>, CatalogError> {
        self.rt
            .block_on(self.client.query_opt(sql, params))
            .map(|r| r.map(|row| row.get::<_, String>(0)))
            .map_err(CatalogError::statement)
    }

    pub fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, CatalogError> {
        self.rt
            .block_on(self.client.execute(sql, params))
            .map_err(CatalogError::statement)
    }

    pub fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, CatalogError> {
        self.rt
            .block_on(self.client.query(sql, params))
            .map_err(CatalogError::statement)
    }
}
