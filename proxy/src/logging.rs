//! Logging set-up: tracing with `RUST_LOG`-style filtering (the `RUST_LOG` variable wins over
//! `[log] level`), text or JSON lines. Nothing logged ever contains statement literals, parameter
//! values or passwords.
//!
//! Every line logged while a session runs carries its id and client address, at every level: the
//! session task is wrapped in [`Labelled`], which names the session in a thread-local for the length
//! of each poll, and the line formatters ([`Text`], [`Json`]) read it. This replaces a tracing span
//! per session, which had two faults: an `info` span is disabled under a `warn` filter, so the lines
//! that matter most lost their session; and entering and leaving a span on every poll cost the data
//! path ~580 instructions per pgbench transaction.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt as sub_fmt, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// The session a line belongs to: its id and client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLabel {
    pub id: u64,
    pub client: SocketAddr,
}

thread_local! {
    static CURRENT: Cell<Option<SessionLabel>> = const { Cell::new(None) };
}

/// The session being polled on this thread, if any.
pub fn current_session() -> Option<SessionLabel> {
    CURRENT.with(Cell::get)
}

/// A session's future, labelled for the log lines it emits while it runs.
pub struct Labelled<F> {
    label: SessionLabel,
    inner: Pin<Box<F>>,
}

impl<F: Future> Labelled<F> {
    pub fn new(label: SessionLabel, inner: F) -> Self {
        Labelled {
            label,
            inner: Box::pin(inner),
        }
    }
}

/// Restores the previous label when a poll ends, also when it unwinds.
struct Restore(Option<SessionLabel>);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

impl<F: Future> Future for Labelled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _restore = Restore(CURRENT.with(|c| c.replace(Some(self.label))));
        self.inner.as_mut().poll(cx)
    }
}

/// Installs the global subscriber (once per process; later calls are ignored).
pub fn init(cfg: &LogConfig) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // These log statement text with its literals (sqlparser at debug) or query parameters
    // (tokio-postgres at debug): never, whatever the filter asks for.
    for quiet in ["sqlparser=off", "tokio_postgres=info"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = sub_fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match cfg.format {
        LogFormat::Text => builder.event_format(Text).try_init(),
        LogFormat::Json => builder.event_format(Json).try_init(),
    };
}

/// `2026-12-03T06:53:40.124214Z  WARN session{id=7 client=127.0.0.1:35276}: message key=value`
pub struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_text_prefix(&mut w, event, current_session())?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

fn write_text_prefix(
    w: &mut Writer<'_>,
    event: &Event<'_>,
    session: Option<SessionLabel>,
) -> fmt::Result {
    SystemTime.format_time(w)?;
    write!(w, " {:>5} ", event.metadata().level())?;
    if let Some(s) = session {
        write!(w, "session{{id={} client={}}}: ", s.id, s.client)?;
    }
    Ok(())
}

/// One JSON object per line: `timestamp`, `level`, `fields` (`message` and the event's fields) and,
/// for session lines, `span` = `{"name":"session","id":7,"client":"127.0.0.1:35276"}`.
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(w, "{}", json_line(event, current_session()))
    }
}

fn json_line(event: &Event<'_>, session: Option<SessionLabel>) -> String {
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    let mut fields = JsonFields(serde_json::Map::new());
    event.record(&mut fields);
    let mut line = serde_json::Map::new();
    line.insert("timestamp".into(), timestamp.into());
    line.insert(
        "level".into(),
        event.metadata().level().as_str().to_string().into(),
    );
    line.insert("fields".into(), fields.0.into());
    line.insert("target".into(), event.metadata().target().into());
    if let Some(s) = session {
        line.insert(
            "span".into(),
            serde_json::json!({"name": "session", "id": s.id, "client": s.client.to_string()}),
        );
    }
    serde_json::Value::Object(line).to_string()
}

/// An event's fields as JSON values.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.0.insert(field.name().into(), s.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn label() -> SessionLabel {
        SessionLabel {
            id: 42,
            client: "127.0.0.1:5000".parse().unwrap(),
        }
    }

    /// Polls a labelled future that logs inside it and once more after it.
    fn run_labelled() {
        let fut = Labelled::new(label(), async {
            tracing::warn!(rows = 3u64, "inside");
        });
        futures_util::FutureExt::now_or_never(fut).unwrap();
        tracing::warn!("outside");
    }

    #[test]
    fn text_lines_of_a_session_carry_its_id_and_client_at_warn_level() {
        let out = Captured::default();
        let sub = sub_fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_writer(out.clone())
            .with_ansi(false)
            .event_format(Text)
            .finish();
        tracing::subscriber::with_default(sub, run_labelled);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with(" WARN session{id=42 client=127.0.0.1:5000}: inside rows=3"),
            "{text}"
        );
        assert!(lines[1].ends_with(" WARN outside"), "{text}");
        assert!(!lines[1].contains("session"), "{text}");
        assert_eq!(current_session(), None);
    }

    #[test]
    fn json_lines_of_a_session_carry_its_id_and_client() {
        let out = Captured::default();
        let sub = sub_fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_writer(out.clone())
            .event_format(Json)
            .finish();
        tracing::subscriber::with_default(sub, run_labelled);
        let text = out.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["fields"]["message"], "inside");
        assert_eq!(lines[0]["fields"]["rows"], 3);
        assert_eq!(lines[0]["span"]["id"], 42);
        assert_eq!(lines[0]["span"]["client"], "127.0.0.1:5000");
        assert_eq!(lines[0]["span"]["name"], "session");
        assert!(lines[1].get("span").is_none(), "{text}");
        assert_eq!(lines[1]["fields"]["message"], "outside");
    }

    #[test]
    fn a_panicking_poll_leaves_no_label_behind() {
        let fut = Labelled::new(label(), async { panic!("boom") });
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures_util::FutureExt::now_or_never(fut)
        }));
        assert!(r.is_err());
        assert_eq!(current_session(), None);
    }
}
