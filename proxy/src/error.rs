//! Errors of the proxy crate, split by who is at fault: configuration, the client, the server, the
//! local system. Every message names the thing, the place and the fix.

use thiserror::Error;

use crate::protocol::reader::Malformed;

/// A configuration file or value that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {reason}; pass --config FILE or create pgcloak.toml")]
    Read { file: String, reason: String },
    #[error("config file {file} is not valid TOML: {reason}")]
    Syntax { file: String, reason: String },
    #[error("config file {file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error("config file {file}: key `{key}` {reason}")]
    Key {
        file: String,
        key: String,
        reason: String,
    },
    #[error("TLS setup from {file}: {reason}")]
    Tls { file: String, reason: String },
}

/// Why a protocol frame was rejected. The session that sent it is ended; nothing else is affected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("message '{tag}' declares length {len}, less than the 4 bytes of the length itself")]
    LengthTooSmall { tag: char, len: u32 },
    #[error("message '{tag}' of {len} bytes exceeds the limit of {max} bytes (max_message_size)")]
    TooLarge { tag: char, len: u64, max: usize },
    #[error("unknown message type byte 0x{tag:02x}")]
    UnknownTag { tag: u8 },
    #[error("startup packet length {len} is outside 8..=10000 bytes")]
    BadStartupLength { len: u32 },
    #[error("malformed {what} message: {detail}")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
}

/// Errors that end one session.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error("client protocol error: {0}")]
    Client(FrameError),
    #[error("server protocol error: {0}")]
    Server(FrameError),
    #[error("client closed the connection")]
    ClientGone,
    #[error("server closed the connection")]
    ServerGone,
    #[error("I/O error with the client: {0}")]
    ClientIo(std::io::Error),
    #[error("I/O error with the server: {0}")]
    ServerIo(std::io::Error),
    #[error("TLS handshake with the client failed: {0}")]
    ClientTls(std::io::Error),
    #[error("cannot connect to upstream PostgreSQL at {addr}: {reason}")]
    Upstream { addr: String, reason: String },
    #[error("client did not finish startup within {0:?}")]
    StartupTimeout(std::time::Duration),
    #[error("client idle for longer than {0:?}")]
    IdleTimeout(std::time::Duration),
    #[error("session ended by proxy shutdown")]
    Shutdown,
    #[error("session ended by KILL from the admin console (user {by})")]
    Killed { by: String },
    /// The proxy refused the session during startup or authentication (the client was told why).
    #[error("{code}: {message}")]
    Refused {
        /// The SQLSTATE the client got.
        code: String,
        message: String,
    },
    /// A server message could not be rewritten safely; the session ends rather than leak or corrupt.
    #[error("{0}")]
    Rewrite(#[from] crate::rewrite::RewriteError),
    #[error("server refused the session: {code} {message}")]
    ServerRefused { code: String, message: String },
}

impl From<Malformed> for FrameError {
    fn from(m: Malformed) -> Self {
        FrameError::Malformed {
            what: m.what,
            detail: m.detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::reader::Reader;

    #[test]
    fn a_malformed_body_becomes_a_frame_error_naming_it() {
        let f: FrameError = Reader::new(b"", "x").err("bad").into();
        assert_eq!(
            f,
            FrameError::Malformed {
                what: "x",
                detail: "bad"
            }
        );
    }
}
