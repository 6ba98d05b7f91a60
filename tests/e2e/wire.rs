//! A raw wire-protocol client for tests that must choose the exact message sequence (what drivers
//! with cached prepared statements send, and what no driver library lets a test ask for). Logs in
//! as a trust-auth user, sends frames, and reads the answers up to ReadyForQuery as (tag, body).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
    /// BackendKeyData's process id and secret.
    pub key: (u32, Vec<u8>),
}

/// One message: tag and body.
pub type Msg = (u8, Vec<u8>);

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    frame(b'P', &b)
}

/// A Bind of text-format parameters (`None`: NULL) with `result_formats`.
pub fn bind(portal: &str, stmt: &str, params: &[Option<&str>], result_formats: &[i16]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
        }
    }
    b.extend_from_slice(&(result_formats.len() as i16).to_be_bytes());
    for f in result_formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    frame(b'B', &b)
}

pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    frame(b'D', &b)
}

pub fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    frame(b'E', &b)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    frame(b'Q', &b)
}

impl Wire {
    /// Connects to `port` as `user` (trust auth) to database `db`, through startup.
    pub async fn connect(port: u16, user: &str, db: &str) -> Wire {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", db)] {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        let mut w = Wire {
            s,
            buf: Vec::new(),
            key: (0, Vec::new()),
        };
        w.s.write_all(&startup).await.unwrap();
        for (tag, body) in w.until_ready().await {
            match tag {
                b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
                b'K' => {
                    w.key = (
                        u32::from_be_bytes(body[..4].try_into().unwrap()),
                        body[4..].to_vec(),
                    )
                }
                _ => {}
            }
        }
        w
    }

    /// Sends the concatenated frames in one write.
    pub async fn send(&mut self, frames: &[Vec<u8>]) {
        self.s.write_all(&frames.concat()).await.unwrap();
    }

    /// Reads one message.
    pub async fn recv(&mut self) -> Msg {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return (tag, body);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk))
                .await
                .expect("no answer within 10 s")
                .unwrap();
            assert!(n > 0, "connection closed; had {:?}", self.buf);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await;
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Sends `frames` and reads the answers up to ReadyForQuery.
    pub async fn roundtrip(&mut self, frames: &[Vec<u8>]) -> Vec<Msg> {
        self.send(frames).await;
        self.until_ready().await
    }
}

/// The tags of `msgs`, as a string (`"12DCZ"`).
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.0 as char).collect()
}

/// The values of the DataRows in `msgs` (`None`: NULL).
pub fn data_rows(msgs: &[Msg]) -> Vec<Vec<Option<Vec<u8>>>> {
    msgs.iter()
        .filter(|m| m.0 == b'D')
        .map(|(_, b)| {
            let n = i16::from_be_bytes([b[0], b[1]]) as usize;
            let mut at = 2;
            (0..n)
                .map(|_| {
                    let len = i32::from_be_bytes(b[at..at + 4].try_into().unwrap());
                    at += 4;
                    (len >= 0).then(|| {
                        let v = b[at..at + len as usize].to_vec();
                        at += len as usize;
                        v
                    })
                })
                .collect()
        })
        .collect()
}

/// The message of the first ErrorResponse in `msgs`, if any.
pub fn error(msgs: &[Msg]) -> Option<String> {
    let (_, body) = msgs.iter().find(|m| m.0 == b'E')?;
    let mut fields = body.split(|&b| b == 0);
    fields
        .find(|f| f.first() == Some(&b'M'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}
