//! Framing: `tag (1) | length (4, includes itself) | body`. Two steps, as in mini-redis: [`check`] tells
//! whether a whole frame is buffered (incomplete is `Ok(None)`, normal flow), then [`split`] detaches it
//! without copying.

use bytes::{Bytes, BytesMut};

use crate::error::FrameError;

/// Which peer sent the bytes; decides which tags are legal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server, after startup.
    Frontend,
    /// Server to client.
    Backend,
}

/// Message types a client may send after the startup packet.
const FRONTEND_TAGS: &[u8] = b"QPBDECSHFdcfXp";
/// Message types a server may send.
const BACKEND_TAGS: &[u8] = b"RSKZTDCIENAt123nsGHWdcVv";

/// Messages that never carry bulk data are held to this size whatever `max_message_size` says, so a
/// hostile peer cannot make the proxy buffer a gigabyte of "Sync".
const SMALL_MESSAGE_MAX: usize = 64 * 1024;

/// One complete frame; `bytes` holds the whole frame including its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    /// The message body after tag and length.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(5..).unwrap_or_default()
    }
}

/// One complete frame borrowed from a read buffer (the pumps' hot path: no reference counting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub tag: u8,
    /// The whole frame including its header.
    pub bytes: &'a [u8],
}

impl FrameRef<'_> {
    /// The message body after tag and length.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(5..).unwrap_or_default()
    }
}

/// A 256-entry membership table for `tags` (one lookup per frame instead of a scan).
const fn tag_table(tags: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < tags.len() {
        #[allow(
            clippy::indexing_slicing,
            reason = "const fn (no get in const); i < tags.len() and a u8 indexes [bool; 256]"
        )]
        {
            t[tags[i] as usize] = true;
        }
        i += 1;
    }
    t
}

const FRONTEND_TABLE: [bool; 256] = tag_table(FRONTEND_TAGS);
const BACKEND_TABLE: [bool; 256] = tag_table(BACKEND_TAGS);

fn tag_allowed(direction: Direction, tag: u8) -> bool {
    let table = match direction {
        Direction::Frontend => &FRONTEND_TABLE,
        Direction::Backend => &BACKEND_TABLE,
    };
    table.get(usize::from(tag)).copied().unwrap_or(false)
}

/// The size limit for a message type: data-bearing messages get `max`, control messages a small cap.
fn limit_for(direction: Direction, tag: u8, max: usize) -> usize {
    let bulk = match direction {
        // Query, Parse, Bind, FunctionCall, CopyData, password/SASL response.
        Direction::Frontend => matches!(tag, b'Q' | b'P' | b'B' | b'F' | b'd' | b'p' | b'f'),
        // DataRow, CopyData, RowDescription, errors and notices (may quote long statements),
        // FunctionCallResponse, ParameterDescription, NotificationResponse, auth (SASL data).
        Direction::Backend => {
            matches!(
                tag,
                b'D' | b'd' | b'T' | b'E' | b'N' | b'V' | b't' | b'A' | b'R'
            )
        }
    };
    if bulk {
        max
    } else {
        SMALL_MESSAGE_MAX.min(max)
    }
}

/// Checks whether `buf` starts with a complete, valid frame. Returns its total length, `Ok(None)` when
/// more bytes are needed, or the reason the frame can never be valid.
pub fn check(buf: &[u8], direction: Direction, max: usize) -> Result<Option<usize>, FrameError> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    if !tag_allowed(direction, tag) {
        return Err(FrameError::UnknownTag { tag });
    }
    let Some(len) = declared_u32(buf) else {
        return Ok(None);
    };
    if len < 4 {
        return Err(FrameError::LengthTooSmall {
            tag: tag as char,
            len,
        });
    }
    // Most frames are small: the per-type limit is looked up only for those that could exceed it.
    if len as usize > SMALL_MESSAGE_MAX.min(max) {
        let limit = limit_for(direction, tag, max);
        if len as usize > limit {
            return Err(FrameError::TooLarge {
                tag: tag as char,
                len: u64::from(len),
                max: limit,
            });
        }
    }
    let total = len as usize + 1;
    if buf.len() < total {
        Ok(None)
    } else {
        Ok(Some(total))
    }
}

/// The total length the first frame in `buf` declares, once its header is buffered; used to reserve
/// capacity for large frames in one allocation.
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    Some(declared_u32(buf)? as usize + 1)
}

/// The length field of the frame at the start of `buf`, once its header is buffered.
fn declared_u32(buf: &[u8]) -> Option<u32> {
    let header: &[u8; 4] = buf.get(1..5)?.try_into().ok()?;
    Some(u32::from_be_bytes(*header))
}

/// Detaches the first frame from `buf` if it is complete.
pub fn split(
    buf: &mut BytesMut,
    direction: Direction,
    max: usize,
) -> Result<Option<Frame>, FrameError> {
    match check(buf, direction, max)? {
        None => Ok(None),
        Some(n) => {
            let bytes = buf.split_to(n).freeze();
            Ok(Some(Frame {
                tag: bytes.first().copied().unwrap_or_default(),
                bytes,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn incomplete_is_not_an_error() {
        let f = frame(b'Q', b"select 1\0");
        for cut in 0..f.len() {
            assert_eq!(
                check(&f[..cut], Direction::Frontend, 1 << 20),
                Ok(None),
                "cut {cut}"
            );
        }
        assert_eq!(check(&f, Direction::Frontend, 1 << 20), Ok(Some(f.len())));
    }

    #[test]
    fn split_takes_exactly_one_frame() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(b'P', b"\0select $1\0\0\0"));
        buf.extend_from_slice(&frame(b'S', b""));
        buf.extend_from_slice(&frame(b'S', b"")[..3]);
        let a = split(&mut buf, Direction::Frontend, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(a.tag, b'P');
        assert_eq!(a.body(), b"\0select $1\0\0\0");
        let b = split(&mut buf, Direction::Frontend, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(b.tag, b'S');
        assert!(b.body().is_empty());
        assert_eq!(split(&mut buf, Direction::Frontend, 1 << 20), Ok(None));
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn length_below_four_is_rejected() {
        let bytes = [b'Q', 0, 0, 0, 3];
        assert!(matches!(
            check(&bytes, Direction::Frontend, 1 << 20),
            Err(FrameError::LengthTooSmall { .. })
        ));
    }

    #[test]
    fn unknown_tags_are_rejected_per_direction() {
        assert!(matches!(
            check(b"Z\0\0\0\x05I", Direction::Frontend, 1 << 20),
            Err(FrameError::UnknownTag { tag: b'Z' })
        ));
        assert_eq!(
            check(b"Z\0\0\0\x05I", Direction::Backend, 1 << 20),
            Ok(Some(6))
        );
        assert!(check(b"\0", Direction::Backend, 1 << 20).is_err());
    }

    #[test]
    fn oversized_frames_are_rejected_before_buffering() {
        let header = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            check(&header, Direction::Frontend, 1 << 30),
            Err(FrameError::TooLarge { .. })
        ));
        // Control messages are held to the small cap even when the limit is large.
        let sync = [b'S', 0, 2, 0, 0];
        assert!(matches!(
            check(&sync, Direction::Frontend, 1 << 30),
            Err(FrameError::TooLarge { .. })
        ));
        let row = [b'D', 0, 1, 0, 0];
        assert_eq!(check(&row, Direction::Backend, 1 << 30), Ok(None));
    }
}
