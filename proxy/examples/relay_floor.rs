//! The cost floor of a PostgreSQL relay on each event-loop design, for `deploy/bench/relay-floor.sh`:
//! a byte pump with no framing, no policy and no tracking, either on a single-threaded tokio runtime
//! with one task per session (how pgcloak's session threads run) or on a bare mio event loop (how
//! PgBouncer runs, on libevent). Whatever pgcloak adds is measured on top of the first; the gap
//! between the two is what the async runtime itself costs per message.
//!
//! Usage: `cargo run --release --example relay_floor -- tokio|mio LISTEN UPSTREAM`

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: relay_floor tokio|mio LISTEN UPSTREAM (addresses as host:port)",
        )
    };
    let (Some(mode), Some(listen), Some(upstream)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err(usage());
    };
    let listen: SocketAddr = listen.parse().map_err(|_| usage())?;
    let upstream: SocketAddr = upstream.parse().map_err(|_| usage())?;
    match mode.as_str() {
        "tokio" => tokio_relay(listen, upstream),
        "mio" => mio_relay(listen, upstream),
        _ => Err(usage()),
    }
}

/// One current-thread runtime with I/O only; per session one task polling both directions.
fn tokio_relay(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::select! {
                    biased;
                    _ = pump(&mut cr, &mut sw) => {}
                    _ = pump(&mut sr, &mut cw) => {}
                }
            });
        }
    })
}

/// Copies from `r` to `w` until `r` ends: one read, one write.
async fn pump(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 8192];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
    }
}

/// One side of a mio session: its socket and what could not be written to it yet.
struct Side {
    sock: mio::net::TcpStream,
    unsent: Vec<u8>,
}

struct Pair {
    client: Side,
    server: Side,
}

/// Edge-triggered mio loop: on a readable event, read until WouldBlock and write to the peer;
/// bytes the peer cannot take wait for its writable event.
fn mio_relay(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    use mio::{Events, Interest, Poll, Token};
    const LISTENER: Token = Token(0);
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut listener = mio::net::TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut pairs: HashMap<usize, Pair> = HashMap::new();
    let mut next = 1usize;
    let mut buf = vec![0u8; 8192];
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((client, _)) = listener.accept() {
                    // A blocking connect keeps the sketch short; connections are made once per run.
                    let Ok(server) = std::net::TcpStream::connect(upstream) else {
                        continue;
                    };
                    server.set_nonblocking(true)?;
                    let mut server = mio::net::TcpStream::from_std(server);
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let id = next;
                    next += 1;
                    let rw = Interest::READABLE | Interest::WRITABLE;
                    poll.registry().register(&mut client, Token(id * 2), rw)?;
                    poll.registry()
                        .register(&mut server, Token(id * 2 + 1), rw)?;
                    pairs.insert(
                        id,
                        Pair {
                            client: Side {
                                sock: client,
                                unsent: Vec::new(),
                            },
                            server: Side {
                                sock: server,
                                unsent: Vec::new(),
                            },
                        },
                    );
                }
                continue;
            }
            let id = ev.token().0 / 2;
            let from_client = ev.token().0 % 2 == 0;
            let Some(pair) = pairs.get_mut(&id) else {
                continue;
            };
            let (from, to) = if from_client {
                (&mut pair.client, &mut pair.server)
            } else {
                (&mut pair.server, &mut pair.client)
            };
            let mut alive = true;
            if ev.is_writable() && !from.unsent.is_empty() {
                alive &= flush(from);
            }
            if ev.is_readable() || ev.is_read_closed() {
                loop {
                    match from.sock.read(&mut buf) {
                        Ok(0) => {
                            alive = false;
                            break;
                        }
                        Ok(n) => {
                            alive &= send(to, &buf[..n]);
                            // A short read drained the socket (as tokio assumes on Linux): no
                            // extra read just to see WouldBlock.
                            if n < buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            alive = false;
                            break;
                        }
                    }
                }
            }
            if !alive {
                if let Some(mut p) = pairs.remove(&id) {
                    let _ = poll.registry().deregister(&mut p.client.sock);
                    let _ = poll.registry().deregister(&mut p.server.sock);
                }
            }
        }
    }
}

/// Writes `bytes` to `side` (straight from the read buffer when nothing is queued); false when the
/// connection failed.
fn send(side: &mut Side, bytes: &[u8]) -> bool {
    if !side.unsent.is_empty() {
        side.unsent.extend_from_slice(bytes);
        return flush(side);
    }
    let mut at = 0;
    while at < bytes.len() {
        match side.sock.write(&bytes[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                side.unsent.extend_from_slice(&bytes[at..]);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Writes what is queued for `side`; false when the connection failed.
fn flush(side: &mut Side) -> bool {
    while !side.unsent.is_empty() {
        match side.sock.write(&side.unsent) {
            Ok(n) => {
                side.unsent.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
