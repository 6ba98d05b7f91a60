//! Authentication relay: the server stays the authority (trust, password, md5, SCRAM-SHA-256 pass through
//! untouched), except that SCRAM-SHA-256-PLUS is removed from the offered mechanisms and the server's
//! BackendKeyData is replaced by the proxy's own.

use tokio::io::{AsyncRead, AsyncWrite};

use super::cancel::Registration;
use super::io::{FrameReader, Outbox, ReadError, ReadReady};
use crate::error::{FrameError, SessionError};
use crate::protocol::messages::{
    self, auth_code, backend_key_data, strip_channel_binding, AUTH_OK, AUTH_SASL,
};
use crate::protocol::reader::Reader;
use crate::state::Shared;

/// What the two TLS legs allow for SCRAM channel binding.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub client_tls: bool,
    pub upstream_tls: bool,
    /// pgcloak presents the very certificate PostgreSQL presents: `-PLUS` can pass through.
    pub same_certificate: bool,
}

/// Authentication requests the client must answer with a PasswordMessage/SASL response ('p').
fn needs_response(code: i32) -> bool {
    matches!(code, 3 | 5 | 7 | 8 | 9 | 10 | 11)
}

/// The gs2 channel-binding flag (`n`, `y` or `p`) of a SASLInitialResponse body.
fn sasl_gs2_flag(body: &[u8]) -> Option<u8> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    r.cstr().ok()?;
    let len = r.i32().ok()?;
    if len <= 0 {
        return None;
    }
    r.u8().ok()
}

pub fn client_read_err(e: ReadError) -> SessionError {
    match e {
        ReadError::Eof => SessionError::ClientGone,
        ReadError::Io(e) => SessionError::ClientIo(e),
        ReadError::Frame(f) => SessionError::Client(f),
    }
}

pub fn server_read_err(e: ReadError) -> SessionError {
    match e {
        ReadError::Eof => SessionError::ServerGone,
        ReadError::Io(e) => SessionError::ServerIo(e),
        ReadError::Frame(f) => SessionError::Server(f),
    }
}

/// Relays authentication until the server's first ReadyForQuery, which is returned unforwarded (the
/// caller decides the session can go ahead first). Also returns the cancel registration that maps the
/// key handed to the client to the server's.
pub async fn relay<'a, CR, CW, SR, SW>(
    shared: &'a Shared,
    binding: Binding,
    encoding: &super::encoding::ClientEncoding,
    client: &mut FrameReader<CR>,
    client_out: &mut Outbox<CW>,
    server: &mut FrameReader<SR>,
    server_out: &mut Outbox<SW>,
) -> Result<(Option<Registration<'a>>, crate::protocol::Frame), SessionError>
where
    CR: AsyncRead + ReadReady + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + ReadReady + Unpin,
    SW: AsyncWrite + Unpin,
{
    let mut registration = None;
    loop {
        let frame = server.next().await.map_err(server_read_err)?;
        match frame.tag {
            b'R' => {
                let code = auth_code(frame.body()).map_err(SessionError::Server)?;
                let out = if code == AUTH_SASL && !binding.same_certificate {
                    strip_channel_binding(frame.body())
                        .map_err(SessionError::Server)?
                        .unwrap_or(frame.bytes)
                } else {
                    frame.bytes
                };
                client_out
                    .send(&out)
                    .await
                    .map_err(SessionError::ClientIo)?;
                if code != AUTH_OK && needs_response(code) {
                    client_out.flush().await.map_err(SessionError::ClientIo)?;
                    let answer = client.next().await.map_err(client_read_err)?;
                    if code == AUTH_SASL
                        && answer.tag == b'p'
                        && !binding.same_certificate
                        && binding.client_tls
                        && binding.upstream_tls
                        && sasl_gs2_flag(answer.body()) == Some(b'y')
                    {
                        // The client would bind if it could; PostgreSQL, on TLS itself, rejects that as a
                        // downgrade. Say why and how to fix it instead of relaying a cryptic failure.
                        let msg = "pgcloak: SCRAM channel binding cannot pass through the proxy because pgcloak's TLS certificate differs from PostgreSQL's";
                        let hint = "Give [tls] the same certificate and key as the PostgreSQL server, connect with channel_binding=disable, or set [upstream_tls] mode = \"disable\".";
                        client_out
                            .send_now(&messages::error_response(
                                messages::Severity::Fatal,
                                "28000",
                                msg,
                                Some(hint),
                            ))
                            .await
                            .map_err(SessionError::ClientIo)?;
                        return Err(SessionError::Refused {
                            code: "28000".to_string(),
                            message: msg.to_string(),
                        });
                    }
                    match answer.tag {
                        b'p' => server_out
                            .send_now(&answer.bytes)
                            .await
                            .map_err(SessionError::ServerIo)?,
                        b'X' => return Err(SessionError::ClientGone),
                        _ => {
                            return Err(SessionError::Client(FrameError::Malformed {
                                what: "authentication response",
                                detail: "expected a password or SASL message",
                            }))
                        }
                    }
                }
            }
            b'K' => {
                let mut r = Reader::new(frame.body(), "BackendKeyData");
                let pid = r.i32().map_err(|e| SessionError::Server(e.into()))? as u32;
                let secret = r.remaining().to_vec();
                if secret.is_empty() || secret.len() > 256 {
                    return Err(SessionError::Server(FrameError::Malformed {
                        what: "BackendKeyData",
                        detail: "secret key of the wrong length",
                    }));
                }
                let reg = Registration::new(shared, pid, secret);
                client_out
                    .send(&backend_key_data(reg.process_id, &reg.secret))
                    .await
                    .map_err(SessionError::ClientIo)?;
                registration = Some(reg);
            }
            b'E' => {
                client_out
                    .send_now(&frame.bytes)
                    .await
                    .map_err(SessionError::ClientIo)?;
                let f = messages::error_fields(frame.body()).unwrap_or_default();
                return Err(SessionError::ServerRefused {
                    code: f.code,
                    message: f.message,
                });
            }
            b'Z' => return Ok((registration, frame)),
            b'S' => {
                if let Ok((name, value)) = messages::parameter_status(frame.body()) {
                    encoding.reported(name, value);
                }
                client_out
                    .send(&frame.bytes)
                    .await
                    .map_err(SessionError::ClientIo)?
            }
            _ => client_out
                .send(&frame.bytes)
                .await
                .map_err(SessionError::ClientIo)?,
        }
    }
}
