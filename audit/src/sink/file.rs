//! JSON-lines file sink: group-committed appends, fsync at least once a second, size rotation
//! after a checkpoint, and chain continuation from the file's tail on start.
//!
//! Restart: on open, the sink reads the end of the active file (or, if it holds no event, of the
//! newest rotated file) and reports its last event's `seq` and `hash`; the writer continues the
//! chain from there. An incomplete last line (a crash in the middle of a write) is cut off with
//! a warning; a last complete line that is not a record stops the start (`AuditError::Corrupt`).
//!
//! Rotation: when the file has reached `max_file_bytes`, the sink rotates right after the next
//! checkpoint line: the file is fsynced and renamed to `<name>.<checkpoint seq>` (e.g.
//! `audit.jsonl.120000`) and a fresh `<name>` is created. Its first event's `prev_hash` is the
//! last hash of the rotated file, so [`chain_files`] in order form one chain.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::{Entry, Sink, SinkFailure, SinkState, Tail};
use crate::canonical::{parse_line, Record};
use crate::error::AuditError;

const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Rotated siblings of `path` (`<name>.<seq>`), oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!("{name}.");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let fname = e.file_name();
            let n = fname.to_str()?.strip_prefix(&prefix)?.parse::<u64>().ok()?;
            Some((n, path.with_file_name(fname)))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Every file of the chain written at `path`, in order: rotated files, then the active file (if
/// it exists).
pub fn chain_files(path: &Path) -> Vec<PathBuf> {
    let mut files = rotated_files(path);
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

fn io_err(path: &Path, action: &'static str, source: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Finds the last event of `file` and the length of its complete lines.
fn read_tail(file: &mut File, path: &Path) -> Result<(Option<Tail>, u64), AuditError> {
    let len = file
        .metadata()
        .map_err(|e| io_err(path, "reading metadata", e))?
        .len();
    let mut window: u64 = 64 * 1024;
    let mut valid_len: Option<u64> = None;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0u8; (len - start) as usize];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| io_err(path, "reading the tail", e))?;
        let complete = match buf.iter().rposition(|&b| b == b'\n') {
            Some(p) => p + 1,
            None if start == 0 => 0,
            None => {
                window *= 4;
                continue;
            }
        };
        let vlen = *valid_len.get_or_insert(start + complete as u64);
        // Lines fully inside the window (the first one may be cut when start > 0).
        let text = &buf[..complete];
        let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        lines.pop(); // empty piece after the final newline
        let first_is_whole = start == 0;
        let usable = if first_is_whole {
            &lines[..]
        } else {
            lines.get(1..).unwrap_or(&[])
        };
        for (i, raw) in usable.iter().enumerate().rev() {
            let is_last = i + 1 == usable.len();
            let line = std::str::from_utf8(raw).map_err(|_| AuditError::Corrupt {
                path: path.to_path_buf(),
                reason: "its last line is not UTF-8".into(),
            });
            let parsed = line.and_then(|l| {
                parse_line(l).map_err(|reason| AuditError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("its last record cannot be continued: {reason}"),
                })
            });
            match parsed {
                Ok(Record::Event(ev)) => {
                    return Ok((
                        Some(Tail {
                            seq: ev.seq,
                            hash: ev.hash,
                        }),
                        vlen,
                    ))
                }
                Ok(Record::Checkpoint(_)) => continue,
                // Only the last complete line decides whether the file can be continued;
                // earlier damage is for `verify` to report.
                Err(e) if is_last => return Err(e),
                Err(_) => continue,
            }
        }
        if start == 0 {
            return Ok((None, vlen));
        }
        window *= 4;
    }
}

/// Opens (creating if needed) the active file, repairs a torn last line, and returns the chain
/// tail found in it or in the newest rotated file.
fn open_active(path: &Path) -> Result<(File, u64, Option<Tail>), AuditError> {
    let mut file = open_append(path).map_err(|e| io_err(path, "opening", e))?;
    let len = file
        .metadata()
        .map_err(|e| io_err(path, "reading metadata", e))?
        .len();
    let (mut tail, valid) = read_tail(&mut file, path)?;
    if valid < len {
        tracing::warn!(
            file = %path.display(),
            bytes = len - valid,
            "audit file ends with an incomplete line (interrupted write); cutting it off"
        );
        file.set_len(valid)
            .and_then(|_| file.sync_all())
            .map_err(|e| io_err(path, "cutting off an incomplete last line", e))?;
    }
    if tail.is_none() {
        if let Some(prev) = rotated_files(path).last() {
            let mut f = File::open(prev).map_err(|e| io_err(prev, "opening", e))?;
            tail = read_tail(&mut f, prev)?.0;
        }
    }
    Ok((file, valid, tail))
}

struct FileInner {
    file: Option<File>,
    path: PathBuf,
    size: u64,
    dirty: bool,
    last_sync: Instant,
    max: Option<u64>,
    state: Arc<SinkState>,
}

impl FileInner {
    fn file(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let f = open_append(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }

    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let size = self.size;
        let f = self.file()?;
        if let Err(e) = f.write_all(buf) {
            // Take back a partial write so the retry does not duplicate lines.
            let _ = f.set_len(size);
            return Err(e);
        }
        self.size += buf.len() as u64;
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file()?.sync_data()?;
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    fn rotate(&mut self, seq: u64) -> std::io::Result<()> {
        self.sync()?;
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("audit.jsonl");
        let target = self.path.with_file_name(format!("{name}.{seq}"));
        if target.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("rotation target {} already exists", target.display()),
            ));
        }
        std::fs::rename(&self.path, &target)?;
        self.file = None;
        self.size = 0;
        self.file()?;
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        tracing::info!(file = %target.display(), "audit file rotated");
        Ok(())
    }

    fn write_entries(&mut self, entries: &[Arc<Entry>]) -> Result<(), SinkFailure> {
        let fail = |written: usize, path: &Path, e: std::io::Error| SinkFailure {
            written,
            error: format!("writing {}: {e}", path.display()),
        };
        let mut buf: Vec<u8> = Vec::with_capacity(entries.len() * 640);
        let mut written = 0;
        for (i, e) in entries.iter().enumerate() {
            buf.extend_from_slice(e.line().as_bytes());
            buf.push(b'\n');
            if let (Entry::Checkpoint { cp, .. }, Some(max)) = (&**e, self.max) {
                if self.size + buf.len() as u64 >= max {
                    self.append(&buf)
                        .map_err(|err| fail(written, &self.path, err))?;
                    written = i + 1;
                    buf.clear();
                    self.rotate(cp.seq)
                        .map_err(|err| fail(written, &self.path, err))?;
                }
            }
        }
        if !buf.is_empty() {
            self.append(&buf)
                .map_err(|err| fail(written, &self.path, err))?;
        }
        if self.max.is_some_and(|m| self.size >= m) {
            self.state.want_checkpoint.store(true, Ordering::Release);
        }
        if self.last_sync.elapsed() >= SYNC_EVERY {
            self.sync()
                .map_err(|err| fail(entries.len(), &self.path, err))?;
        }
        Ok(())
    }
}

/// The file sink (see the module docs).
pub(crate) struct FileSink {
    inner: Option<FileInner>,
    path: PathBuf,
    max: Option<u64>,
    state: Arc<SinkState>,
}

impl FileSink {
    pub(crate) fn open(
        path: &Path,
        max: Option<u64>,
        state: Arc<SinkState>,
    ) -> Result<(FileSink, Option<Tail>), AuditError> {
        let (file, size, tail) = open_active(path)?;
        let inner = FileInner {
            file: Some(file),
            path: path.to_path_buf(),
            size,
            dirty: false,
            last_sync: Instant::now(),
            max,
            state: state.clone(),
        };
        Ok((
            FileSink {
                inner: Some(inner),
                path: path.to_path_buf(),
                max,
                state,
            },
            tail,
        ))
    }

    fn take_inner(&mut self) -> FileInner {
        self.inner.take().unwrap_or_else(|| FileInner {
            file: None,
            path: self.path.clone(),
            size: 0,
            dirty: true,
            last_sync: Instant::now(),
            max: self.max,
            state: self.state.clone(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut FileInner) -> T + Send + 'static,
    ) -> Option<T> {
        let mut inner = self.take_inner();
        match tokio::task::spawn_blocking(move || {
            let r = f(&mut inner);
            (inner, r)
        })
        .await
        {
            Ok((inner, r)) => {
                self.inner = Some(inner);
                Some(r)
            }
            Err(_) => None,
        }
    }
}

impl Sink for FileSink {
    fn name(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn write(&mut self, entries: Vec<Arc<Entry>>) -> BoxFuture<'_, Result<(), SinkFailure>> {
        Box::pin(async move {
            self.blocking(move |inner| inner.write_entries(&entries))
                .await
                .unwrap_or_else(|| Err(SinkFailure::none_written("file writer task panicked")))
        })
    }

    fn tick(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let path = self.path.clone();
            self.blocking(|inner| inner.sync())
                .await
                .unwrap_or_else(|| Err(std::io::Error::other("file sync task panicked")))
                .map_err(|e| format!("syncing {}: {e}", path.display()))
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), String>> {
        self.tick()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, hash: &str) -> String {
        let mut ev = crate::event::AuditEvent {
            seq,
            ts: "2026-01-01T00:00:00.000000Z".into(),
            instance: "i".into(),
            session: String::new(),
            client: String::new(),
            user: String::new(),
            role: None,
            database: String::new(),
            application: String::new(),
            kind: crate::Kind::Other,
            statement: None,
            fingerprint: None,
            tables: vec![],
            columns: vec![],
            decision: crate::Decision::Allow,
            reason: None,
            rows: None,
            duration_us: None,
            sqlstate: None,
            prev_hash: hash.into(),
            hash: String::new(),
        };
        crate::canonical::seal(&mut ev)
    }

    #[test]
    fn torn_last_line_is_cut_and_tail_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let l1 = line(1, crate::GENESIS);
        let l2 = line(2, "ab");
        std::fs::write(&p, format!("{l1}\n{l2}\n{{\"checkpoint\":{{\"se")).unwrap();
        let (_, size, tail) = open_active(&p).unwrap();
        assert_eq!(tail.unwrap().seq, 2);
        assert_eq!(size, (l1.len() + l2.len() + 2) as u64);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), size);
    }

    #[test]
    fn tail_beyond_first_window_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let mut ev_line = line(9, "cd");
        // A huge statement-sized line forces the window to grow.
        ev_line = ev_line.replace(
            "\"statement\":null",
            &format!("\"statement\":\"{}\"", "x".repeat(300_000)),
        );
        std::fs::write(&p, format!("{ev_line}\n")).unwrap();
        // The edited line no longer hashes, but the tail reader only needs seq and hash.
        let (_, _, tail) = open_active(&p).unwrap();
        assert_eq!(tail.unwrap().seq, 9);
    }

    #[test]
    fn garbage_last_line_refuses_to_continue() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        std::fs::write(&p, "not json\n").unwrap();
        let err = match open_active(&p) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("garbage accepted"),
        };
        assert!(err.contains("cannot be continued"), "{err}");
    }

    #[test]
    fn rotated_files_sort_numerically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        for n in [
            "audit.jsonl.100",
            "audit.jsonl.20",
            "audit.jsonl.x",
            "other.1",
        ] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        std::fs::write(&p, "").unwrap();
        let names: Vec<String> = chain_files(&p)
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["audit.jsonl.20", "audit.jsonl.100", "audit.jsonl"]);
    }
}
