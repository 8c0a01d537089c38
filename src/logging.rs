//! Log output: the daemon's (`log` in its config) and the other commands'.
//!
//! Logs go to stderr: under systemd that is the journal, and for `run --json` it
//! keeps stdout for the event stream alone. A log line that cannot be written
//! (stderr closed: `2>&1 | head`) is dropped: tracing-subscriber's fallback would
//! report it with `eprintln!` on the same closed stderr, which panics, and a
//! panic in a run must never be the price of a lost log line. `RUST_LOG`, when set and valid, wins
//! over the configured level so an operator can turn on debug output for one
//! restart without editing the config.
//!
//! The daemon's JSON format writes one object per line with the event's fields
//! *and every field of every enclosing span* at the top level, so that `run_id`,
//! `target` and `step` (recorded once on a run's span, see STYLE.md §12) are on
//! every line and `jq 'select(.run_id == "…")'` or a log pipeline's field filter
//! finds all of a run. tracing's own `target` (the Rust module path) would collide
//! with pgshepherd's `target` (the database), so it is written as `module`.
//! A field named `detail` holding a JSON object (a run event's own fields, see
//! [`DETAIL`]) is written as that object, not as a string of JSON, so a log
//! pipeline can filter on `detail.value` as it filters on `run_id`.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, LogSettings};

/// Keys the JSON format writes itself; a field of the same name is written as
/// `field.<name>` rather than lost or duplicated.
const RESERVED: &[&str] = &["ts", "level", "message", "module", "span"];

/// The field whose value, JSON text of an object, the JSON format embeds as an
/// object (the pretty format shows the text).
pub const DETAIL: &str = "detail";

/// Install the daemon's global subscriber per its config. Returns `false` (and
/// changes nothing) when a subscriber is already installed, so calling it twice,
/// or after [`init_cli`], is harmless.
pub fn init(settings: &LogSettings) -> bool {
    let (filter, problem) = filter(&settings.level);
    let installed = match settings.format {
        LogFormat::Json => {
            tracing::subscriber::set_global_default(json_subscriber(filter, std::io::stderr))
                .is_ok()
        }
        LogFormat::Pretty => tracing_subscriber::fmt()
            .compact()
            .log_internal_errors(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
            .is_ok(),
    };
    if installed && let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    installed
}

/// Install the subscriber for the short-lived commands (`check`, `run`, `submit`,
/// ...): warnings and errors only, compact, on stderr next to their human output.
/// Harmless when a subscriber is already installed.
pub fn init_cli() -> bool {
    let (filter, problem) = filter("warn");
    let installed = tracing_subscriber::fmt()
        .compact()
        .log_internal_errors(false)
        .without_time()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .is_ok();
    if installed && let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    installed
}

/// `RUST_LOG` if set and valid, else `configured`, else `info`; plus what was
/// wrong, to be logged once a subscriber exists.
fn filter(configured: &str) -> (EnvFilter, Option<String>) {
    let mut problem = None;
    if let Ok(env) = std::env::var(EnvFilter::DEFAULT_ENV)
        && !env.trim().is_empty()
    {
        match EnvFilter::try_new(&env) {
            Ok(f) => return (f, None),
            Err(e) => {
                problem = Some(format!(
                    "RUST_LOG={env:?} is not a valid filter ({e}); using log.level {configured:?}"
                ))
            }
        }
    }
    match EnvFilter::try_new(configured) {
        Ok(f) => (f, problem),
        Err(e) => (
            EnvFilter::new("info"),
            Some(format!(
                "log.level {configured:?} is not a valid filter ({e}); using \"info\""
            )),
        ),
    }
}

/// The JSON-lines subscriber, writing to `writer` (stderr, or a buffer in tests).
fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Span fields are kept as JSON text, which `JsonLines` parses and flattens.
        .fmt_fields(JsonFields::new())
        .log_internal_errors(false)
        .event_format(JsonLines)
        .finish()
}

/// One flat JSON object per event: `ts`, `level`, `message`, the fields of the
/// enclosing spans (outermost first, inner ones win), the event's own fields (win
/// over spans), `module` and `span` (the innermost span's name).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        let mut span_name = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(formatted) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) =
                        serde_json::from_str::<Value>(formatted.fields.as_str())
                {
                    fields.extend(map);
                }
                span_name = Some(span.name());
            }
        }
        let mut visitor = FieldVisitor {
            fields: &mut fields,
            message: None,
        };
        event.record(&mut visitor);
        let message = visitor.message.take();

        let meta = event.metadata();
        // `ts`, `level` and `message` first for the human skimming the journal; the
        // rest in key order (log tools do not care about order).
        let mut line = String::with_capacity(256);
        line.push('{');
        let mut put = |key: &str, value: &Value| -> fmt::Result {
            if line.len() > 1 {
                line.push(',');
            }
            line.push_str(&serde_json::to_string(key).map_err(|_| fmt::Error)?);
            line.push(':');
            line.push_str(&serde_json::to_string(value).map_err(|_| fmt::Error)?);
            Ok(())
        };
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        put("ts", &Value::String(ts))?;
        put("level", &Value::String(meta.level().to_string()))?;
        if let Some(m) = message {
            put("message", &Value::String(m))?;
        }
        for (k, v) in &fields {
            if RESERVED.contains(&k.as_str()) {
                put(&format!("field.{k}"), v)?;
            } else {
                put(k, v)?;
            }
        }
        put("module", &Value::String(meta.target().to_string()))?;
        if let Some(name) = span_name {
            put("span", &Value::String(name.to_string()))?;
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

struct FieldVisitor<'a> {
    fields: &'a mut Map<String, Value>,
    message: Option<String>,
}

impl FieldVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let value = match value {
            Value::String(text) if field.name() == DETAIL => match serde_json::from_str(&text) {
                Ok(object @ Value::Object(_)) => object,
                _ => Value::String(text),
            },
            other => other,
        };
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; write them as strings rather than drop them.
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.put(field, v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn capture_text(level: &str, f: impl FnOnce()) -> String {
        let buf = Buffer::default();
        let subscriber = json_subscriber(EnvFilter::new(level), buf.clone());
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn capture(level: &str, f: impl FnOnce()) -> Vec<Value> {
        capture_text(level, f)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_carry_the_fields_of_every_enclosing_span() {
        let raw = capture_text("info", || {
            let run = tracing::info_span!("run", run_id = "r-42", target = "jobs");
            let _run = run.enter();
            let step = tracing::info_span!("step", step = "soak");
            let _step = step.enter();
            tracing::info!(
                check = "share",
                value = 0.61,
                breaching = true,
                "sample taken"
            );
        });
        let lines: Vec<Value> = raw
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{raw}");
        let l = &lines[0];
        assert_eq!(l["run_id"], "r-42");
        assert_eq!(l["target"], "jobs", "the database target, not the module");
        assert_eq!(l["step"], "soak");
        assert_eq!(l["check"], "share");
        assert_eq!(l["value"], 0.61);
        assert_eq!(l["breaching"], true);
        assert_eq!(l["message"], "sample taken");
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["module"], "pgshepherd::logging::tests");
        assert_eq!(l["span"], "step");
        let ts = l["ts"].as_str().unwrap();
        assert!(raw.starts_with(r#"{"ts":""#), "ts comes first: {raw}");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    }

    #[test]
    fn fields_recorded_later_and_inner_spans_win() {
        let lines = capture("info", || {
            let run = tracing::info_span!("run", run_id = "r-1", step = tracing::field::Empty);
            let _run = run.enter();
            run.record("step", "backup");
            tracing::info!("in backup");
            let inner = tracing::info_span!("retry", step = "migrate");
            let _inner = inner.enter();
            tracing::info!(step = "rollback", "event field wins");
        });
        assert_eq!(lines[0]["step"], "backup");
        assert_eq!(lines[0]["run_id"], "r-1");
        assert_eq!(lines[1]["step"], "rollback");
    }

    #[test]
    fn reserved_names_and_odd_values_are_kept() {
        let lines = capture("info", || {
            tracing::info!(level = 3, ratio = f64::NAN, "odd");
        });
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["field.level"], 3);
        assert_eq!(lines[0]["ratio"], "NaN");
    }

    #[test]
    fn a_detail_object_is_embedded_and_anything_else_kept_as_text() {
        let lines = capture("info", || {
            tracing::info!(detail = r#"{"value":0.5,"check":"c"}"#, "object");
            tracing::info!(detail = "not json", "text");
        });
        assert_eq!(lines[0]["detail"]["value"], 0.5);
        assert_eq!(lines[0]["detail"]["check"], "c");
        assert_eq!(lines[1]["detail"], "not json");
    }

    #[test]
    fn the_filter_applies() {
        let lines = capture("warn", || {
            tracing::info!("hidden");
            tracing::warn!("shown");
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["message"], "shown");
    }

    #[test]
    fn a_bad_level_falls_back_to_info_and_says_so() {
        let (_, problem) = filter("pgshepherd=loud");
        // Only when RUST_LOG does not override it (the test runner may set it).
        if !std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty()) {
            assert!(problem.unwrap().contains("pgshepherd=loud"));
        }
    }

    #[test]
    fn init_twice_never_panics() {
        let quiet = LogSettings {
            format: LogFormat::Json,
            level: "off".into(),
        };
        init(&quiet);
        assert!(!init(&quiet), "a second init changes nothing");
        assert!(!init_cli());
    }
}
