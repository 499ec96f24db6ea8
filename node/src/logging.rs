//! Logging set-up: `--log-level`, `--log-outputs` and `--log-format` applied to `tracing`,
//! in the shape of etcd's zap logger, so log pipelines written for etcd parse cairn's lines:
//! one JSON object a line with `level`, `ts` (ISO 8601 in UTC with milliseconds, as etcd
//! 3.5.1's server writes it), `caller`, `msg` and then the event's fields
//! (`--log-format console` writes zap's tab-separated text instead). `CAIRN_LOG` (a
//! `tracing` filter) overrides the level for debugging. Called once, from `main`.

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, LogOutput};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("--log-outputs {}: cannot open for appending: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
}

/// Installs the global subscriber writing at `level` to every one of `outputs`.
pub fn init(level: &str, outputs: &[LogOutput], format: LogFormat) -> Result<(), LoggingError> {
    // etcd's `panic` and `fatal` levels mean "errors only" here.
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},openraft=warn,fjall=warn,lsm_tree=warn"
        ))
    });
    let targets = outputs
        .iter()
        .map(|output| match output {
            LogOutput::Stderr => Ok(Target::Stderr),
            LogOutput::Stdout => Ok(Target::Stdout),
            LogOutput::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(|f| Target::File(Arc::new(f)))
                .map_err(|source| LoggingError::Open {
                    path: path.clone(),
                    source,
                }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Targets(targets))
        .event_format(ZapFormat(format))
        .init();
    Ok(())
}

/// zap's encoders as etcd configures them (`logutil.DefaultZapLoggerConfig`).
struct ZapFormat(LogFormat);

impl<S, N> FormatEvent<S, N> for ZapFormat
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
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = Line {
            level: level_name(*meta.level()),
            time: time::OffsetDateTime::now_utc(),
            caller: caller(meta.file(), meta.line()),
            msg: fields.message,
            fields: fields.rest,
        };
        let text = match self.0 {
            LogFormat::Json => line.json(),
            LogFormat::Console => line.console(),
        };
        writeln!(writer, "{text}")
    }
}

/// One log line's parts, in zap's order.
struct Line {
    level: &'static str,
    time: time::OffsetDateTime,
    caller: String,
    msg: String,
    fields: Vec<(String, Value)>,
}

impl Line {
    fn json(&self) -> String {
        let mut out = format!(
            "{{\"level\":{},\"ts\":{},\"caller\":{},\"msg\":{}",
            quote(self.level),
            quote(&timestamp(self.time)),
            quote(&self.caller),
            quote(&self.msg)
        );
        for (key, value) in &self.fields {
            let _ = write!(out, ",{}:{value}", quote(key));
        }
        out.push('}');
        out
    }

    /// zap's console encoder: tab-separated, the fields as one JSON object at the end.
    fn console(&self) -> String {
        let mut out = format!(
            "{}\t{}\t{}\t{}",
            timestamp(self.time),
            self.level,
            self.caller,
            self.msg
        );
        if !self.fields.is_empty() {
            let object: serde_json::Map<String, Value> = self.fields.iter().cloned().collect();
            let _ = write!(out, "\t{}", Value::Object(object));
        }
        out
    }
}

fn quote(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// A duration as Go prints it (`1h0m0s`, `2s`, `1.5ms`), as zap logs etcd's durations.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = match nanos {
            n if n < 1_000 => return format!("{n}ns"),
            n if n < 1_000_000 => ("µs", 1_000.0),
            _ => ("ms", 1_000_000.0),
        };
        return format!("{}{unit}", nanos as f64 / scale);
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, secs / 60 % 60);
    let frac = d.subsec_nanos();
    let s = if frac == 0 {
        format!("{}s", secs % 60)
    } else {
        let text = format!("{:.9}", (secs % 60) as f64 + f64::from(frac) / 1e9);
        format!("{}s", text.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// zap's lowercase level names; `tracing`'s TRACE has none and is logged as `debug`.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG | Level::TRACE => "debug",
    }
}

/// zap's `ISO8601TimeEncoder` (etcd 3.5.1's server logger), `2006-01-02T15:04:05.000Z0700`,
/// in UTC.
fn timestamp(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// zap's short caller: the file's directory and name, and the line (`raft/mod.rs:42`).
fn caller(file: Option<&str>, line: Option<u32>) -> String {
    let file = file.unwrap_or("?");
    let mut parts = file.rsplit('/');
    let name = parts.next().unwrap_or(file);
    let short = match parts.next() {
        Some(dir) => format!("{dir}/{name}"),
        None => name.to_string(),
    };
    format!("{short}:{}", line.unwrap_or(0))
}

/// An event's message and its other fields, in the order they were given. Field names
/// take etcd's dashes (`member_id` becomes `member-id`); numbers and booleans stay JSON
/// numbers and booleans.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, Value)>,
}

impl Fields {
    fn add(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            return;
        }
        self.rest.push((field.name().replace('_', "-"), value));
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.add(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, Value::String(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.add(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.add(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.add(field, Value::String(value.to_string()));
    }
}

#[derive(Clone)]
enum Target {
    Stderr,
    Stdout,
    File(Arc<File>),
}

/// Every configured output; each log line is written to all of them.
struct Targets(Vec<Target>);

impl<'a> MakeWriter<'a> for Targets {
    type Writer = Tee<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Tee(&self.0)
    }
}

/// One log line's writer, fanning out to every target.
struct Tee<'a>(&'a [Target]);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A failing output (a full disk, a closed pipe) must not silence the others, and
        // logging has nowhere to report its own failure: errors are dropped per target.
        for target in self.0 {
            let _ = match target {
                Target::Stderr => io::stderr().write_all(buf),
                Target::Stdout => io::stdout().write_all(buf),
                Target::File(file) => (&**file).write_all(buf),
            };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        for target in self.0 {
            let _ = match target {
                Target::Stderr => io::stderr().flush(),
                Target::Stdout => io::stdout().flush(),
                Target::File(file) => (&**file).flush(),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line {
        Line {
            level: "info",
            time: time::OffsetDateTime::from_unix_timestamp_nanos(1_796_000_000_500_000_000)
                .expect("valid time"),
            caller: "raft/mod.rs:42".into(),
            msg: "say \"hi\"".into(),
            fields: vec![
                ("member-id".into(), Value::from("8e9e05c52164694d")),
                ("took".into(), Value::from(3)),
            ],
        }
    }

    #[test]
    fn json_lines_have_zaps_keys_in_zaps_order() {
        let text = line().json();
        assert_eq!(
            text,
            r#"{"level":"info","ts":"2026-11-30T00:53:20.500Z","caller":"raft/mod.rs:42","msg":"say \"hi\"","member-id":"8e9e05c52164694d","took":3}"#
        );
        let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed["took"], 3);
    }

    #[test]
    fn console_lines_are_tab_separated() {
        assert_eq!(
            line().console(),
            "2026-11-30T00:53:20.500Z\tinfo\traft/mod.rs:42\tsay \"hi\"\t{\"member-id\":\"8e9e05c52164694d\",\"took\":3}"
        );
    }

    #[test]
    fn timestamps_and_callers_look_like_etcds() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_796_000_000_123_456_789)
            .expect("valid time");
        assert_eq!(timestamp(t), "2026-11-30T00:53:20.123Z");
        assert_eq!(
            caller(Some("node/src/raft/mod.rs"), Some(7)),
            "raft/mod.rs:7"
        );
        assert_eq!(caller(Some("main.rs"), Some(1)), "main.rs:1");
    }

    #[test]
    fn durations_print_as_go_does() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(200), "200ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(12), "12ns"),
        ];
        for (d, text) in cases {
            assert_eq!(go_duration(d), text);
        }
    }
}
