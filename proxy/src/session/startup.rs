//! Startup phase, client side: SSLRequest (TLS termination), GSSENCRequest, direct TLS, CancelRequest
//! dispatch, and the StartupMessage. Ends with a (possibly TLS) client stream and the message to relay.

use crate::event_loop::Conn;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::io::Stream;
use crate::config::ClientTlsMode;
use crate::error::{FrameError, SessionError};
use crate::protocol::messages::{error_response, Severity};
use crate::protocol::startup::{self, StartupMessage, StartupPacket};
use std::sync::Arc;

use crate::state::{Shared, TlsPair};

/// What the first packets asked for.
pub enum Opening {
    /// A CancelRequest (handled by the caller; the connection carries nothing else).
    Cancel {
        process_id: u32,
        secret: bytes::Bytes,
    },
    /// A client to relay: its stream, bytes already read past the StartupMessage, and the message.
    Session {
        client: Stream,
        leftover: BytesMut,
        startup: StartupMessage,
        /// The TLS pair the client's handshake used (`None`: plaintext).
        presented: Option<Arc<TlsPair>>,
    },
}

/// TLS records start with this byte (handshake); PostgreSQL 17 clients may open with TLS directly.
const TLS_HANDSHAKE: u8 = 0x16;

async fn read_packet(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<StartupPacket, SessionError> {
    loop {
        if let Some(p) = startup::split(buf).map_err(SessionError::Client)? {
            return Ok(p);
        }
        buf.reserve(1024);
        match stream.read_buf(buf).await {
            Ok(0) => return Err(SessionError::ClientGone),
            Ok(_) => {}
            Err(e) => return Err(SessionError::ClientIo(e)),
        }
    }
}

/// Sends a FATAL error to a client still in startup and returns the matching session error.
pub async fn refuse(
    stream: &mut Stream,
    code: &str,
    message: &str,
    hint: Option<&str>,
) -> SessionError {
    let frame = error_response(Severity::Fatal, code, message, hint);
    let _ = stream.write_all(&frame).await;
    let _ = stream.flush().await;
    SessionError::Refused {
        code: code.to_string(),
        message: message.to_string(),
    }
}

/// Runs the startup negotiation on a freshly accepted connection.
pub async fn negotiate(tcp: Conn, shared: &Shared) -> Result<Opening, SessionError> {
    let mut stream = Stream::Plain(tcp);
    let mut buf = BytesMut::with_capacity(1024);
    // One certificate for this whole negotiation, even if a reload swaps it meanwhile.
    let tls_pair = shared.client_tls.current();
    let mut presented: Option<Arc<TlsPair>> = None;

    // Direct TLS (sslnegotiation=direct): the first byte is a TLS handshake record.
    if let (Stream::Plain(tcp), Some(pair)) = (&stream, &tls_pair) {
        let mut first = [0u8; 1];
        let n = tcp.peek(&mut first).await.map_err(SessionError::ClientIo)?;
        if n == 0 {
            return Err(SessionError::ClientGone);
        }
        if first[0] == TLS_HANDSHAKE {
            let Stream::Plain(tcp) = stream else {
                unreachable!()
            };
            let tls = pair
                .acceptor
                .accept(tcp)
                .await
                .map_err(SessionError::ClientTls)?;
            stream = Stream::ClientTls(Box::new(tls));
            presented = Some(pair.clone());
        }
    }

    loop {
        let packet = read_packet(&mut stream, &mut buf).await?;
        match packet {
            StartupPacket::SslRequest => {
                if !buf.is_empty() {
                    // Bytes sent after SSLRequest before our answer would be accepted as if they came
                    // through TLS (CVE-2021-23214): refuse.
                    return Err(SessionError::Client(FrameError::Malformed {
                        what: "SSLRequest",
                        detail: "data sent before the TLS handshake",
                    }));
                }
                match (&tls_pair, stream) {
                    (Some(pair), Stream::Plain(mut tcp)) => {
                        tcp.write_all(b"S").await.map_err(SessionError::ClientIo)?;
                        let tls = pair
                            .acceptor
                            .accept(tcp)
                            .await
                            .map_err(SessionError::ClientTls)?;
                        stream = Stream::ClientTls(Box::new(tls));
                        presented = Some(pair.clone());
                    }
                    (_, mut s) => {
                        s.write_all(b"N").await.map_err(SessionError::ClientIo)?;
                        stream = s;
                    }
                }
            }
            StartupPacket::GssEncRequest => {
                if !buf.is_empty() {
                    return Err(SessionError::Client(FrameError::Malformed {
                        what: "GSSENCRequest",
                        detail: "data sent before the answer",
                    }));
                }
                stream
                    .write_all(b"N")
                    .await
                    .map_err(SessionError::ClientIo)?;
            }
            StartupPacket::Cancel { process_id, secret } => {
                return Ok(Opening::Cancel { process_id, secret });
            }
            StartupPacket::Startup(startup) => {
                let tls_required = shared
                    .config
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.mode == ClientTlsMode::Require);
                if tls_required && !stream.is_tls() {
                    return Err(refuse(
                        &mut stream,
                        "28000",
                        "pgcloak: this proxy accepts only TLS connections",
                        Some("Connect with sslmode=require (or verify-full)."),
                    )
                    .await);
                }
                if let Some(r) = startup.param("replication").filter(|r| {
                    !r.eq_ignore_ascii_case("false")
                        && *r != "0"
                        && !r.eq_ignore_ascii_case("off")
                        && !r.eq_ignore_ascii_case("no")
                }) {
                    let _ = r;
                    return Err(refuse(
                        &mut stream,
                        "0A000",
                        "pgcloak: replication connections are not supported through the proxy",
                        Some("Connect replication clients to PostgreSQL directly; their data bypasses column policies."),
                    )
                    .await);
                }
                return Ok(Opening::Session {
                    client: stream,
                    leftover: buf,
                    startup,
                    presented,
                });
            }
        }
    }
}
