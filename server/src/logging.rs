//! Logging as etcd's `--logger`, `--log-outputs` and `--log-level` configure it.
//!
//! - `capnslog` (etcd 3.4's default): text lines.
//! - `zap` (etcd 3.5's default): one JSON object per line with zap's keys as etcd's encoder
//!   config sets them (pkg/logutil/zap.go): `level` (lower case), `ts` (ISO 8601, UTC,
//!   milliseconds), `caller` (`file:line`), `msg`, then the event's own fields. Tools that
//!   wait for etcd's start-up lines (`"msg":"ready to serve client requests"`) read these.
//!
//! Outputs: `default` and `stderr` write to stderr, `stdout` to stdout, anything else is a
//! file path opened for appending (created if missing). Several outputs get every line.

use detcd_core::config::Logger;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Starts logging. Errors: a log file that cannot be opened (named).
pub fn init(logger: Logger, outputs: &[String], level: &str) -> Result<(), String> {
    let level = match level {
        "debug" => Level::DEBUG,
        "info" => Level::INFO,
        "warn" => Level::WARN,
        // panic and fatal log errors only.
        _ => Level::ERROR,
    };
    let mut writer: Option<BoxMakeWriter> = None;
    let mut all_terminals = true;
    for output in outputs {
        let next = match output.as_str() {
            "default" | "stderr" => {
                all_terminals &= std::io::IsTerminal::is_terminal(&std::io::stderr());
                BoxMakeWriter::new(std::io::stderr)
            }
            "stdout" => {
                all_terminals &= std::io::IsTerminal::is_terminal(&std::io::stdout());
                BoxMakeWriter::new(std::io::stdout)
            }
            path => {
                all_terminals = false;
                let file = open_log_file(path)?;
                BoxMakeWriter::new(Mutex::new(file))
            }
        };
        writer = Some(match writer {
            None => next,
            Some(w) => BoxMakeWriter::new(w.and(next)),
        });
    }
    let writer = writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr));
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level);
    let result = match logger {
        Logger::Text => builder.with_ansi(all_terminals).try_init(),
        Logger::Zap => builder.event_format(ZapJson).try_init(),
    };
    // Already set (tests start several members in one process): keep the first.
    let _ = result;
    Ok(())
}

fn open_log_file(path: &str) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open log output {path:?}: {e}"))
}

/// zap's JSON encoding of an event, with etcd's key names.
pub struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(
            writer,
            "{}",
            zap_line(event, time::OffsetDateTime::now_utc())
        )
    }
}

/// One event as zap's JSON object, stamped `now`.
fn zap_line(event: &Event<'_>, now: time::OffsetDateTime) -> String {
    let meta = event.metadata();
    let mut fields = FieldMap::default();
    event.record(&mut fields);
    let level = match *meta.level() {
        Level::TRACE | Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    };
    let ts = now
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default();
    // Written key by key: zap's order (level, ts, caller, msg, fields), which a JSON map
    // would sort.
    let mut line = String::from("{");
    let mut put = |key: &str, value: &serde_json::Value| {
        if line.len() > 1 {
            line.push(',');
        }
        line.push_str(&serde_json::Value::from(key).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    };
    put("level", &level.into());
    put("ts", &ts.into());
    if let (Some(file), Some(l)) = (meta.file(), meta.line()) {
        put("caller", &format!("{file}:{l}").into());
    }
    put("msg", &fields.message.unwrap_or_default().into());
    // etcd's zap fields are kebab-case (`local-member-id`, `cluster-id`); tracing's are
    // snake_case identifiers.
    for (k, v) in &fields.rest {
        put(&k.replace('_', "-"), v);
    }
    line.push('}');
    line
}

/// An event's fields as JSON values; `message` apart.
#[derive(Default)]
struct FieldMap {
    message: Option<String>,
    rest: Vec<(String, serde_json::Value)>,
}

impl FieldMap {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.rest.push((field.name().to_string(), value));
        }
    }
}

impl Visit for FieldMap {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Captures what a zap subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn zap_lines_carry_etcds_keys() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(ZapJson)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                local_member_id = "8e9e05c52164694d",
                count = 3u64,
                "ready to serve client requests"
            );
            tracing::warn!("serving client traffic insecurely; this is strongly discouraged!");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["msg"], "ready to serve client requests");
        assert_eq!(lines[0]["local-member-id"], "8e9e05c52164694d");
        assert_eq!(lines[0]["count"], 3);
        assert!(lines[0]["caller"]
            .as_str()
            .unwrap()
            .starts_with("server/src/logging.rs:"));
        let ts = lines[0]["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-30T12:00:00.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert_eq!(lines[1]["level"], "warn");
        // The keys come in zap's order.
        let first = text.lines().next().unwrap();
        let order: Vec<usize> = ["\"level\"", "\"ts\"", "\"caller\"", "\"msg\""]
            .iter()
            .map(|k| first.find(k).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{first}");
    }
}
