//! The operations listener, `[admin] listen`: a small HTTP/1.1 server on the main runtime (never on
//! the session threads) answering
//! - `GET /metrics`: the Prometheus text exposition of [`crate::metrics`] and of the services'
//!   state (policy, keyring, catalog loads, audit pipeline);
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 when the upstream accepts TCP connections, the policy and keyring are
//!   loaded and every audit sink is writing; else 503 with a JSON body naming what is not.
//!
//! One request per connection (`Connection: close`), heads up to 8 KiB read within 5 seconds: a
//! probe or a scraper, not a browser. Labels carry no statement text or values: only statement
//! kinds, SQLSTATEs, protocol names, column names and audit sink names.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Gauges;
use crate::state::Shared;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/readyz` waits for the upstream's TCP handshake.
const UPSTREAM_PROBE: Duration = Duration::from_secs(1);

/// Serves the admin listener until `shutdown` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let scheme = if shared.config.admin_tls {
        "https"
    } else {
        "http"
    };
    info!(listen = ?listener.local_addr().ok(), scheme, "admin listener serving /metrics, /healthz, /readyz");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = accept(stream, &shared).await {
                        debug!(client = %peer, error = %e, "admin request failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A response: status line, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Serves one connection: over TLS with the `[tls]` pair in force when `[admin] tls` is on (a
/// SIGHUP reload applies to the next connection), else plain.
async fn accept(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    if !shared.config.admin_tls {
        return handle(stream, shared).await;
    }
    let Some(pair) = shared.client_tls.current() else {
        return Err(std::io::Error::other(
            "[admin] tls is on but no [tls] pair is loaded",
        ));
    };
    match tokio::time::timeout(READ_TIMEOUT, pair.http_acceptor.accept(stream)).await {
        Ok(Ok(tls)) => handle(tls, shared).await,
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake not finished within 5 s",
        )),
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok::<bool, std::io::Error>(true);
            }
            if head.len() >= MAX_HEAD {
                return Ok(false);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    })
    .await;
    let complete = match read {
        Ok(r) => r?,
        Err(_) => false,
    };
    let (response, head_only) = if complete {
        match parse_request_line(&head) {
            Some((method, path)) => {
                let head_only = method == "HEAD";
                (route(method, path, shared).await, head_only)
            }
            None => (
                Response::text("400 Bad Request", "malformed request line\n"),
                false,
            ),
        }
    } else {
        (
            Response::text("400 Bad Request", "incomplete or oversized request head\n"),
            false,
        )
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// `GET /path?query HTTP/1.1` -> (`GET`, `/path`).
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(head.get(..end)?).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

async fn route(method: &str, path: &str, shared: &Shared) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text("405 Method Not Allowed", "only GET and HEAD\n");
    }
    match path {
        "/healthz" => Response::text("200 OK", "ok\n"),
        "/readyz" => readiness(shared).await,
        "/metrics" => Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: shared.metrics.render(&gauges(shared)),
        },
        _ => Response::text(
            "404 Not Found",
            "not found; this listener serves /metrics, /healthz and /readyz\n",
        ),
    }
}

/// What `/metrics` reads from outside the counters.
/// The scrape-time state of `shared` (also what the console's `SHOW STATS` lists).
pub fn gauges(shared: &Shared) -> Gauges {
    use std::sync::atomic::Ordering::Relaxed;
    let services = &shared.services;
    let policy = services.policy();
    let keyring = services.keyring();
    let stats = &services.stats;
    let audit = services.audit.as_ref().map(|a| a.status());
    let sessions = shared.sessions.list();
    let sessions_by_state = crate::registry::Live::METRIC_STATES
        .iter()
        .map(|&s| {
            let n = sessions.iter().filter(|l| l.metric_state() == s).count();
            (s, n as u64)
        })
        .collect();
    Gauges {
        catalog_ages: services
            .catalog_ages()
            .into_iter()
            .map(|(db, age)| (db, age.as_secs_f64()))
            .collect(),
        sessions_by_state,
        server_connections: sessions.iter().filter(|l| !l.is_console()).count() as u64,
        grants_active: services.grants.all().len() as u64,
        max_connections: u64::from(shared.config.max_connections),
        policy_generation: services.policy_generation(),
        policy_version: policy.version_hex().to_string(),
        policy_reloads: stats.policy_reloads.load(Relaxed),
        policy_reload_failures: stats.policy_reload_failures.load(Relaxed),
        last_policy_reload_ok: stats.last_policy_reload_ok.load(Relaxed),
        keyring_generation: keyring.generation(),
        keyring_reload_failures: stats.keyring_reload_failures.load(Relaxed),
        key_versions: keyring
            .list()
            .into_iter()
            .map(|c| (c.column, c.active_version))
            .collect(),
        catalog_loads: stats.catalog_loads.load(Relaxed),
        catalog_load_failures: stats.catalog_load_failures.load(Relaxed),
        plan_cache_entries: services.plans.len() as u64,
        audit,
        uptime_seconds: shared.started.elapsed().as_secs_f64(),
    }
}

/// `/readyz`: every dependency a statement needs, each named with its state.
async fn readiness(shared: &Shared) -> Response {
    let mut problems: Vec<(String, String)> = Vec::new();
    let upstream = (
        shared.config.upstream_host.as_str(),
        shared.config.upstream_port,
    );
    match tokio::time::timeout(UPSTREAM_PROBE, TcpStream::connect(upstream)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.push((
            "upstream".into(),
            format!("cannot connect to {}: {e}", shared.config.upstream),
        )),
        Err(_) => problems.push((
            "upstream".into(),
            format!(
                "no TCP handshake with {} within {UPSTREAM_PROBE:?}",
                shared.config.upstream
            ),
        )),
    }
    let stats = &shared.services.stats;
    let mut catalogs: Vec<(String, String)> = stats
        .catalog_errors
        .iter()
        .map(|e| (format!("catalog {}", e.key()), e.value().clone()))
        .collect();
    catalogs.sort();
    problems.extend(catalogs);
    if let Some(e) = stats.keyring_error.lock().ok().and_then(|e| e.clone()) {
        problems.push((
            "keyring".into(),
            format!("the last reload failed ({e}); the previous keyring is in force"),
        ));
    }
    if let Some(audit) = &shared.services.audit {
        let status = audit.status();
        for s in status.sinks.iter().filter(|s| !s.healthy) {
            problems.push((
                format!("audit sink {}", s.name),
                s.last_error.clone().unwrap_or_else(|| "failing".into()),
            ));
        }
        if let Some(reason) = audit.unavailable_reason() {
            if status.sinks.iter().all(|s| s.healthy) {
                problems.push(("audit".into(), reason.to_string()));
            }
        }
    }
    let mut body = String::from("{\"ready\":");
    body.push_str(if problems.is_empty() { "true" } else { "false" });
    body.push_str(",\"not_ready\":{");
    for (i, (what, why)) in problems.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&serde_json::Value::String(what.clone()).to_string());
        body.push(':');
        body.push_str(&serde_json::Value::String(why.clone()).to_string());
    }
    body.push_str("}}\n");
    Response {
        status: if problems.is_empty() {
            "200 OK"
        } else {
            "503 Service Unavailable"
        },
        content_type: "application/json",
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_parsed_strictly() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n"),
            Some(("GET", "/readyz"))
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2 extra\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n\r\n",
            b"no line end",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }
}
