//! Logging set-up: tracing with `RUST_LOG`-style filtering (the `RUST_LOG` variable wins over
//! `[log] level`), text or JSON lines. Every session line carries the session id through its span.
//! Nothing logged ever contains statement literals, parameter values or passwords.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber (once per process; later calls are ignored).
pub fn init(cfg: &LogConfig) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // These log statement text with its literals (sqlparser at debug) or query parameters
    // (tokio-postgres at debug): never, whatever the filter asks for.
    for quiet in ["sqlparser=off", "tokio_postgres=info"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
