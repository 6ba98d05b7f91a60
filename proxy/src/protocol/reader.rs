//! The one bounds-checked reader for the binary bodies the proxy decodes: the messages it reads
//! (`messages.rs`), the ones it rewrites (Bind, Parse, RowDescription, DataRow, ParameterDescription in
//! `rewrite/`) and binary arrays. Every read checks its bounds; a short or inconsistent body is a
//! [`Malformed`] naming the message, what is wrong and who sent it, which converts into the error of
//! the layer that reads (`FrameError` in `error.rs`, `RewriteError` in `rewrite/`).

/// Who sent the bytes being read: decides which side a fault is blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// A body that does not hold the fields it declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    pub sender: Sender,
    /// The message (or value) type, e.g. `Bind`.
    pub what: &'static str,
    /// What is wrong with it.
    pub detail: &'static str,
}

/// What a read past the end reports.
pub const SHORT: &str = "it is shorter than its fields declare";

/// A bounds-checked reader over one body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
    sender: Sender,
}

impl<'a> Reader<'a> {
    /// A reader of a body the client sent.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            what,
            sender: Sender::Client,
        }
    }

    /// A reader of a body the server sent.
    pub fn server(buf: &'a [u8], what: &'static str) -> Self {
        Reader {
            sender: Sender::Server,
            ..Reader::new(buf, what)
        }
    }

    /// The fault `detail` in this body.
    pub fn err(&self, detail: &'static str) -> Malformed {
        Malformed {
            sender: self.sender,
            what: self.what,
            detail,
        }
    }

    /// How many bytes have been read.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The bytes read since position `start`.
    pub fn since(&self, start: usize) -> &'a [u8] {
        self.buf.get(start..self.pos).unwrap_or_default()
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| self.err(SHORT))?;
        self.pos += n;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let (a, _) = self
            .remaining()
            .split_first_chunk::<N>()
            .ok_or_else(|| self.err(SHORT))?;
        self.pos += N;
        Ok(*a)
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub fn i16(&mut self) -> Result<i16, Malformed> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, Malformed> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// A 16-bit count that must not be negative.
    pub fn count(&mut self) -> Result<usize, Malformed> {
        usize::try_from(self.i16()?).map_err(|_| self.err("a count is negative"))
    }

    /// A NUL-terminated string (without the NUL).
    pub fn cstr(&mut self) -> Result<&'a [u8], Malformed> {
        let rest = self.remaining();
        // Most names on the hot path are empty (the unnamed statement and portal): no search then.
        let end = match rest.first() {
            Some(0) => 0,
            _ => {
                memchr::memchr(0, rest).ok_or_else(|| self.err("a string is not NUL-terminated"))?
            }
        };
        let s = rest.get(..end).ok_or_else(|| self.err(SHORT))?;
        self.pos += end + 1;
        Ok(s)
    }

    /// Checks that the whole body has been read.
    pub fn done(&self) -> Result<(), Malformed> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.err("it has bytes after its last field"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_is_bounds_checked() {
        let mut r = Reader::new(&[0, 0, 0], "x");
        assert_eq!(r.i32(), Err(r.err(SHORT)));
        assert_eq!(r.pos(), 0, "a failed read consumes nothing");
        assert_eq!(r.i16(), Ok(0));
        assert_eq!(r.u8(), Ok(0));
        assert!(r.u8().is_err());
        r.done().unwrap();
        let mut r = Reader::new(&[0xff; 8], "x");
        assert!(r.bytes(usize::MAX).is_err());
        assert!(r.bytes(9).is_err());
        assert_eq!(r.bytes(8).map(<[u8]>::len), Ok(8));
        let mut r = Reader::server(&[0xff, 0xff, b'a', 0, b'b'], "x");
        assert_eq!(r.count().unwrap_err().detail, "a count is negative");
        assert_eq!(r.cstr(), Ok(&b"a"[..]));
        assert_eq!(r.since(2), b"a\0");
        assert_eq!(r.done().unwrap_err().sender, Sender::Server);
        assert!(r.cstr().is_err(), "unterminated");
        assert_eq!(r.remaining(), b"b");
    }
}
