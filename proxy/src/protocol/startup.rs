//! The untagged packets a client sends first: SSLRequest, GSSENCRequest, CancelRequest and the
//! StartupMessage (`length (4) | code or version (4) | body`).

use bytes::{Bytes, BytesMut};

use crate::error::FrameError;

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// PostgreSQL's own cap on a startup packet.
pub const MAX_STARTUP_PACKET: u32 = 10_000;

/// A decoded first packet. `raw` is what arrived, forwarded unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { process_id: u32, secret: Bytes },
    Startup(StartupMessage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Major in the high 16 bits, minor in the low 16 bits.
    pub version: u32,
    /// Parameters in the order sent (decoded lossily: they are only recorded, never re-encoded).
    pub params: Vec<(String, String)>,
    pub raw: Bytes,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The login user (required by PostgreSQL).
    pub fn user(&self) -> &str {
        self.param("user").unwrap_or("")
    }

    /// The database; PostgreSQL defaults it to the user name.
    pub fn database(&self) -> &str {
        self.param("database")
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| self.user())
    }
}

/// Whether `buf` holds a complete startup packet; returns its length.
pub fn check(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some((len, _)) = buf.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*len);
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(FrameError::BadStartupLength { len });
    }
    if buf.len() < len as usize {
        Ok(None)
    } else {
        Ok(Some(len as usize))
    }
}

/// Splits and decodes the first packet of `buf` if complete.
pub fn split(buf: &mut BytesMut) -> Result<Option<StartupPacket>, FrameError> {
    match check(buf)? {
        None => Ok(None),
        Some(n) => decode(buf.split_to(n).freeze()).map(Some),
    }
}

/// The NUL-terminated string at the start of `b` (without the NUL) and what follows it.
fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, b)?;
    Some((b.get(..end)?, b.get(end + 1..)?))
}

/// Decodes one complete startup packet.
pub fn decode(raw: Bytes) -> Result<StartupPacket, FrameError> {
    let malformed = |detail| FrameError::Malformed {
        what: "startup",
        detail,
    };
    let Some((_, code)) = raw.split_first_chunk::<4>() else {
        return Err(malformed("shorter than 8 bytes"));
    };
    let Some((code, body)) = code.split_first_chunk::<4>() else {
        return Err(malformed("shorter than 8 bytes"));
    };
    let code = u32::from_be_bytes(*code);
    match code {
        SSL_REQUEST if raw.len() == 8 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if raw.len() == 8 => Ok(StartupPacket::GssEncRequest),
        SSL_REQUEST | GSSENC_REQUEST => Err(malformed("encryption request with a body")),
        CANCEL_REQUEST => {
            // 3.0 keys are 4 bytes; protocol 3.2 allows up to 256.
            let process_id = match body.split_first_chunk::<4>() {
                Some((pid, secret)) if (4..=256).contains(&secret.len()) => *pid,
                _ => return Err(malformed("cancel request of the wrong length")),
            };
            Ok(StartupPacket::Cancel {
                process_id: u32::from_be_bytes(process_id),
                secret: raw.slice(12..),
            })
        }
        v if v >> 16 == 3 => {
            let mut params = Vec::new();
            let mut rest = body;
            loop {
                let Some((name, after)) = split_cstr(rest) else {
                    return Err(malformed("parameter list not terminated"));
                };
                if name.is_empty() {
                    if !after.is_empty() {
                        return Err(malformed("bytes after the parameter list"));
                    }
                    break;
                }
                let Some((value, after)) = split_cstr(after) else {
                    return Err(malformed("parameter value not terminated"));
                };
                params.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
                rest = after;
            }
            if !params.iter().any(|(k, _)| k == "user") {
                return Err(malformed("no user parameter"));
            }
            Ok(StartupPacket::Startup(StartupMessage {
                version: v,
                params,
                raw,
            }))
        }
        _ => Err(malformed(
            "unsupported protocol version (pgcloak speaks protocol 3)",
        )),
    }
}

/// Builds a StartupMessage (used by tests and side tools).
pub fn encode_startup(params: &[(&str, &str)]) -> Bytes {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Builds a CancelRequest.
pub fn encode_cancel(process_id: u32, secret: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(12 + secret.len());
    out.extend_from_slice(&((12 + secret.len()) as u32).to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&process_id.to_be_bytes());
    out.extend_from_slice(secret);
    Bytes::from(out)
}

/// The 8-byte SSLRequest.
pub fn encode_ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let raw = encode_startup(&[
            ("user", "alice"),
            ("database", "shop"),
            ("application_name", "psql"),
        ]);
        let StartupPacket::Startup(m) = decode(raw.clone()).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(m.user(), "alice");
        assert_eq!(m.database(), "shop");
        assert_eq!(m.param("application_name"), Some("psql"));
        assert_eq!(m.raw, raw);
    }

    #[test]
    fn database_defaults_to_user() {
        let StartupPacket::Startup(m) = decode(encode_startup(&[("user", "bob")])).unwrap() else {
            panic!()
        };
        assert_eq!(m.database(), "bob");
    }

    #[test]
    fn special_requests() {
        assert_eq!(
            decode(Bytes::copy_from_slice(&encode_ssl_request())).unwrap(),
            StartupPacket::SslRequest
        );
        let c = encode_cancel(7, &[1, 2, 3, 4]);
        assert_eq!(
            decode(c).unwrap(),
            StartupPacket::Cancel {
                process_id: 7,
                secret: Bytes::from_static(&[1, 2, 3, 4])
            }
        );
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        for bad in [
            &b"\0\0\0\x08\0\x03\0\0"[..],               // no user
            &b"\0\0\0\x0c\0\x03\0\0user"[..],           // unterminated
            &b"\0\0\0\x0e\0\x03\0\0user\0al"[..],       // value unterminated
            &b"\0\0\0\x08\0\x02\0\0"[..],               // protocol 2
            &b"\0\0\0\x0c\x04\xd2\x16\x2f\0\0\0\0"[..], // SSLRequest with a body
            &b"\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\0"[..], // short cancel
        ] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
        assert!(check(&[0, 0, 0, 4]).is_err());
        assert!(check(&[0, 1, 0, 0]).is_err());
        assert_eq!(check(&[0, 0, 0, 9, 0]), Ok(None));
    }
}
