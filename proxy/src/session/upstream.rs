//! Connecting to the upstream PostgreSQL server: TCP, then TLS per `[upstream_tls]`.

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::io::Stream;
use crate::config::UpstreamTlsMode;
use crate::error::SessionError;
use crate::event_loop::Conn;
use crate::protocol::startup::encode_ssl_request;
use crate::state::Shared;

fn upstream_err(shared: &Shared, reason: impl Into<String>) -> SessionError {
    SessionError::Upstream {
        addr: shared.config.upstream.clone(),
        reason: reason.into(),
    }
}

/// The TCP connection to the server, within `connect_timeout` (`timed_out` says why not).
async fn connect_tcp(
    shared: &Shared,
    timed_out: impl FnOnce() -> String,
) -> Result<Conn, SessionError> {
    let cfg = &shared.config;
    shared
        .services
        .timers
        .timeout(
            cfg.connect_timeout,
            TcpStream::connect((cfg.upstream_host.as_str(), cfg.upstream_port)),
        )
        .await
        .map_err(|_| upstream_err(shared, timed_out()))?
        // Connected on the main runtime (which resolves the name); served by this session's loop.
        .and_then(Conn::from_tokio)
        .map_err(|e| upstream_err(shared, e.to_string()))
}

/// Opens a connection to the server, negotiating TLS as configured.
pub async fn connect(shared: &Shared) -> Result<Stream, SessionError> {
    let cfg = &shared.config;
    let tcp = connect_tcp(shared, || {
        format!("no answer within {:?}", cfg.connect_timeout)
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    negotiate_tls(shared, tcp, cfg.upstream_tls.mode).await
}

/// A connection for relaying a CancelRequest: TLS only when the server must not be spoken to in clear.
pub async fn connect_for_cancel(shared: &Shared) -> Result<Stream, SessionError> {
    let cfg = &shared.config;
    let tcp = connect_tcp(shared, || "connect timed out".to_string()).await?;
    let mode = match cfg.upstream_tls.mode {
        UpstreamTlsMode::Prefer => UpstreamTlsMode::Disable,
        m => m,
    };
    negotiate_tls(shared, tcp, mode).await
}

async fn negotiate_tls(
    shared: &Shared,
    mut tcp: Conn,
    mode: UpstreamTlsMode,
) -> Result<Stream, SessionError> {
    let Some(connector) = shared
        .upstream_tls
        .as_ref()
        .filter(|_| mode != UpstreamTlsMode::Disable)
    else {
        return Ok(Stream::Plain(tcp));
    };
    let io = |e: std::io::Error| upstream_err(shared, e.to_string());
    tcp.write_all(&encode_ssl_request()).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {
            let name = ServerName::try_from(shared.config.upstream_tls.server_name.clone())
                .map_err(|_| upstream_err(shared, "invalid TLS server name"))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| upstream_err(shared, format!("TLS handshake failed: {e}")))?;
            Ok(Stream::ServerTls(Box::new(tls)))
        }
        b'N' if mode == UpstreamTlsMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(upstream_err(
            shared,
            "the server does not support TLS but upstream_tls.mode requires it",
        )),
        other => Err(upstream_err(
            shared,
            format!("unexpected answer 0x{other:02x} to SSLRequest"),
        )),
    }
}
