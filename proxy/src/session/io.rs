//! Socket plumbing for a session: a stream that is plain TCP or TLS on either side, split into halves,
//! a frame reader with its buffer, and a batching writer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::event_loop::{Conn, ConnRead, ConnWrite};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::FrameError;
use crate::protocol::frame::{self, Direction, Frame, FrameRef};

/// A connection to the client or the server, before it is split.
pub enum Stream {
    Plain(Conn),
    ClientTls(Box<tokio_rustls::server::TlsStream<Conn>>),
    ServerTls(Box<tokio_rustls::client::TlsStream<Conn>>),
}

/// The reading half of a [`Stream`]. An enum rather than a boxed trait object: the plain-TCP read
/// path, taken for every message, is then a direct call the compiler can inline.
pub enum ReadHalf {
    Plain(ConnRead),
    ClientTls(tokio::io::ReadHalf<tokio_rustls::server::TlsStream<Conn>>),
    ServerTls(tokio::io::ReadHalf<tokio_rustls::client::TlsStream<Conn>>),
}

/// The writing half of a [`Stream`] (see [`ReadHalf`]).
pub enum WriteHalf {
    Plain(ConnWrite),
    ClientTls(tokio::io::WriteHalf<tokio_rustls::server::TlsStream<Conn>>),
    ServerTls(tokio::io::WriteHalf<tokio_rustls::client::TlsStream<Conn>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// DER of the certificate the peer presented, for a TLS connection to the server.
    pub fn server_cert(&self) -> Option<Vec<u8>> {
        match self {
            Stream::ServerTls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
            _ => None,
        }
    }

    /// Splits into owned halves; plain TCP splits without a lock.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::ClientTls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::ClientTls(r), WriteHalf::ClientTls(w))
            }
            Stream::ServerTls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::ServerTls(r), WriteHalf::ServerTls(w))
            }
        }
    }
}

/// Implements `AsyncRead` for an enum whose variants `Plain`, `ClientTls` and `ServerTls` each hold
/// a reader, by passing the call to the one it holds.
macro_rules! dispatch_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            #[inline]
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::ClientTls(s) => Pin::new(s).poll_read(cx, buf),
                    Self::ServerTls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// `AsyncWrite` as [`dispatch_read`] does `AsyncRead`.
macro_rules! dispatch_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            #[inline]
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    Self::ClientTls(s) => Pin::new(s).poll_write(cx, buf),
                    Self::ServerTls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            #[inline]
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::ClientTls(s) => Pin::new(s).poll_flush(cx),
                    Self::ServerTls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::ClientTls(s) => Pin::new(s).poll_shutdown(cx),
                    Self::ServerTls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

dispatch_read!(Stream);
dispatch_write!(Stream);
dispatch_read!(ReadHalf);
dispatch_write!(WriteHalf);

/// Whether a read could return anything, asked before a read is set up.
pub trait ReadReady {
    /// `Pending`, with the task registered for a wake-up, when a read would certainly find nothing;
    /// `Ready` when it may return data (or an error, or end of file).
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

impl ReadReady for ReadHalf {
    #[inline]
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            ReadHalf::Plain(r) => r.poll_read_ready(cx),
            // TLS may hold decrypted bytes the socket's readiness does not show.
            ReadHalf::ClientTls(_) | ReadHalf::ServerTls(_) => Poll::Ready(()),
        }
    }
}

/// Why reading a frame failed.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection.
    Eof,
    Io(io::Error),
    Frame(FrameError),
}

/// Bytes asked of the socket per read. Small enough that an idle session holds little memory.
const READ_CHUNK: usize = 8 * 1024;
/// A read buffer that grew past this (a large row) is released once empty instead of kept.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Reads tagged frames from one side, one complete frame at a time.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    direction: Direction,
    max: usize,
}

impl<R: AsyncRead + ReadReady + Unpin> FrameReader<R> {
    pub fn new(inner: R, buf: BytesMut, direction: Direction, max: usize) -> Self {
        FrameReader {
            inner,
            buf,
            direction,
            max,
        }
    }

    /// The next frame already buffered, if any.
    pub fn buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        let f = frame::split(&mut self.buf, self.direction, self.max)?;
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
        Ok(f)
    }

    /// The complete frame starting `at` bytes into the buffer (after frames already peeked), borrowed;
    /// [`FrameReader::consume`] the peeked bytes when done with them.
    pub fn peek_at(&self, at: usize) -> Result<Option<FrameRef<'_>>, FrameError> {
        let buf = self.buf.get(at..).unwrap_or(&[]);
        Ok(
            frame::check(buf, self.direction, self.max)?.map(|n| FrameRef {
                tag: buf[0],
                bytes: &buf[..n],
            }),
        )
    }

    /// Buffered bytes `range` (frames already peeked), to forward as they arrived.
    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Drops the first `n` buffered bytes (frames returned by [`FrameReader::peek_at`]).
    pub fn consume(&mut self, n: usize) {
        if n >= self.buf.len() {
            // The usual case (the last frame of a read): reuse the buffer from its start.
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = BytesMut::new();
            } else {
                self.buf.clear();
            }
        } else {
            self.buf.advance(n);
        }
    }

    /// Whether unprocessed bytes remain buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads more bytes from the socket. Reserves the whole declared frame at once for large frames.
    pub async fn fill(&mut self) -> Result<(), ReadError> {
        // Most calls come right after the socket was drained: wait for it before reserving
        // buffer space and setting up a read.
        std::future::poll_fn(|cx| self.inner.poll_read_ready(cx)).await;
        let want = frame::declared_len(&self.buf)
            .map(|n| n.saturating_sub(self.buf.len()))
            .unwrap_or(0)
            .min(self.max.saturating_add(5))
            .max(READ_CHUNK);
        self.buf.reserve(want);
        match self.inner.read_buf(&mut self.buf).await {
            Ok(0) => Err(ReadError::Eof),
            Ok(n) => {
                let direction = self.direction;
                crate::metrics::with(|c| match direction {
                    Direction::Frontend => c.client_bytes.add(n as u64),
                    Direction::Backend => c.server_bytes.add(n as u64),
                });
                Ok(())
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Reads until one frame is complete.
    pub async fn next(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some(f) = self.buffered().map_err(ReadError::Frame)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }
}

/// Collects outgoing frames and writes them in batches.
pub struct Outbox<W> {
    inner: W,
    buf: BytesMut,
}

/// Frames at least this large are written straight from their buffer instead of being copied.
const DIRECT_WRITE: usize = 64 * 1024;

impl<W: AsyncWrite + Unpin> Outbox<W> {
    pub fn new(inner: W) -> Self {
        Outbox {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// Queues `bytes`; large frames flush what is queued and go out directly.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() >= DIRECT_WRITE {
            self.flush().await?;
            return self.inner.write_all(bytes).await;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= DIRECT_WRITE {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes `bytes` after what is queued and flushes; bytes nothing queued precedes go out
    /// straight from the caller's buffer (an unchanged batch of frames is never copied).
    pub async fn send_and_flush(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buf.is_empty() {
            return write_and_flush(&mut self.inner, bytes).await;
        }
        self.send(bytes).await?;
        self.flush().await
    }

    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        write_and_flush(&mut self.inner, &self.buf).await?;
        self.buf.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Writes `bytes` and flushes (for one-off messages such as errors).
    pub async fn send_now(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send(bytes).await?;
        self.flush().await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.inner.shutdown().await;
    }
}

/// Writes all of `bytes` to `w`, then flushes it: one future for both (the pumps do this once per
/// batch of messages; `write_all` and `flush` would be two nested ones).
async fn write_and_flush<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    let mut at = 0;
    std::future::poll_fn(|cx| {
        while at < bytes.len() {
            match Pin::new(&mut *w).poll_write(cx, &bytes[at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut *w).poll_flush(cx)
    })
    .await
}
