//! Reading the located YAML tree: typed accessors that record an error and carry
//! on instead of stopping, so that [`super::compile`] can report everything.
//!
//! Conventions every accessor follows:
//! - an absent key returns `None` silently (the caller applies the default or
//!   reports a missing required key with [`Section::require`]);
//! - a key written with no value (`interval:`) is an error, never "use the
//!   default": an empty `window:` must not quietly mean "any time";
//! - a value of the wrong type or out of range records one error at the value's
//!   position and returns `None`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diagnostic::Diagnostic;
use super::duration::{self, DurationError};
use super::suggest;
use super::tree::{Node, Value};

/// Collects diagnostics for one file.
pub struct Sink {
    file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl Sink {
    pub fn new(file: &Path) -> Sink {
        Sink {
            file: file.to_path_buf(),
            diagnostics: Vec::new(),
        }
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::new(&self.file, pos.line, pos.column, message));
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// A `line:column` in the plan file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub fn of(node: &Node) -> Pos {
        Pos {
            line: node.line,
            column: node.column,
        }
    }
}

/// A value with the position it was written at.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub pos: Pos,
}

/// One mapping of the plan with the keys it allows.
pub struct Section<'a> {
    /// Dotted path for messages: empty at the top, `soak`, `soak.checks[1]`.
    path: String,
    /// Where the section is written: its key, or the document start.
    pub pos: Pos,
    entries: Vec<(&'a str, &'a Node, &'a Node)>,
}

impl<'a> Section<'a> {
    /// Check that `node` is a mapping whose keys are all in `known`; report
    /// duplicate and unknown keys (with a suggestion) and keep the rest.
    pub fn open(
        sink: &mut Sink,
        node: &'a Node,
        path: &str,
        pos: Pos,
        known: &[&str],
    ) -> Option<Section<'a>> {
        let Value::Map(map) = &node.value else {
            let what = if path.is_empty() {
                "a plan".to_string()
            } else {
                format!("`{path}`")
            };
            sink.error(
                Pos::of(node),
                format!(
                    "{what} must be a mapping of keys to values, found {}",
                    node.value.kind()
                ),
            );
            return None;
        };
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        let mut entries = Vec::new();
        for (key, value) in map {
            let Value::Str(name) = &key.value else {
                sink.error(
                    Pos::of(key),
                    format!("keys must be names, found {}", key.value.kind()),
                );
                continue;
            };
            if let Some(first) = seen.get(name.as_str()) {
                sink.error(
                    Pos::of(key),
                    format!(
                        "duplicate key `{}` (first written at {}:{})",
                        join(path, name),
                        first.line,
                        first.column
                    ),
                );
                continue;
            }
            seen.insert(name, Pos::of(key));
            if !known.contains(&name.as_str()) {
                sink.error(Pos::of(key), unknown_key(path, name, known));
                continue;
            }
            entries.push((name.as_str(), key, value));
        }
        Some(Section {
            path: path.to_string(),
            pos,
            entries,
        })
    }

    /// `soak.interval` for key `interval` of section `soak`.
    pub fn name(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, ..)| *k == key)
    }

    /// Where `key` is written, or where the section is when it is absent.
    pub fn key_pos(&self, key: &str) -> Pos {
        self.entries
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, k, _)| Pos::of(k))
            .unwrap_or(self.pos)
    }

    /// The value of `key`, if present with a value. A null value is reported.
    pub fn get(&self, sink: &mut Sink, key: &str) -> Option<&'a Node> {
        let (_, k, v) = self.entries.iter().find(|(k, ..)| *k == key)?;
        if v.value == Value::Null {
            sink.error(
                Pos::of(k),
                format!(
                    "`{}` has no value; give it one, or remove the key to use the default",
                    self.name(key)
                ),
            );
            return None;
        }
        Some(v)
    }

    /// Report `key` as missing when it is absent. True when present.
    pub fn require(&self, sink: &mut Sink, key: &str) -> bool {
        if self.has(key) {
            return true;
        }
        let message = if self.path.is_empty() {
            format!("missing required key `{key}`")
        } else {
            format!("missing required key `{key}` in `{}`", self.path)
        };
        sink.error(self.pos, message);
        false
    }

    /// A nested mapping, with its own allowed keys.
    pub fn section(&self, sink: &mut Sink, key: &str, known: &[&str]) -> Option<Section<'a>> {
        let node = self.get(sink, key)?;
        Section::open(sink, node, &self.name(key), self.key_pos(key), known)
    }

    pub fn string(&self, sink: &mut Sink, key: &str) -> Option<At<String>> {
        let node = self.get(sink, key)?;
        match &node.value {
            Value::Str(s) if s.trim().is_empty() => {
                sink.error(
                    Pos::of(node),
                    format!("`{}` must not be empty", self.name(key)),
                );
                None
            }
            Value::Str(s) => Some(At {
                value: s.clone(),
                pos: Pos::of(node),
            }),
            other => {
                let hint = if matches!(other, Value::Int(_) | Value::Float(_) | Value::Bool(_)) {
                    "; quote it if you mean the text"
                } else {
                    ""
                };
                sink.error(
                    Pos::of(node),
                    format!(
                        "`{}` must be a string, found {}{hint}",
                        self.name(key),
                        other.kind()
                    ),
                );
                None
            }
        }
    }

    pub fn bool(&self, sink: &mut Sink, key: &str) -> Option<At<bool>> {
        let node = self.get(sink, key)?;
        match &node.value {
            Value::Bool(b) => Some(At {
                value: *b,
                pos: Pos::of(node),
            }),
            other => {
                sink.error(
                    Pos::of(node),
                    format!(
                        "`{}` must be true or false, found {}",
                        self.name(key),
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    /// A duration such as `30s`; `min_nonzero` refuses `0s`.
    pub fn duration(&self, sink: &mut Sink, key: &str, min_nonzero: bool) -> Option<At<Duration>> {
        let node = self.get(sink, key)?;
        let parsed = match &node.value {
            Value::Str(s) => duration::parse(s),
            Value::Int(0) => Ok(Duration::ZERO),
            Value::Int(n) => Err(DurationError::BareNumber(*n)),
            other => Err(DurationError::NotADuration {
                found: describe(other),
            }),
        };
        match parsed {
            Ok(d) if min_nonzero && d.is_zero() => {
                sink.error(
                    Pos::of(node),
                    format!("`{}` must be greater than 0", self.name(key)),
                );
                None
            }
            Ok(d) => Some(At {
                value: d,
                pos: Pos::of(node),
            }),
            Err(e) => {
                sink.error(Pos::of(node), format!("`{}`: {e}", self.name(key)));
                None
            }
        }
    }

    /// A whole number within `min..=max`.
    pub fn uint(&self, sink: &mut Sink, key: &str, min: u32, max: u32) -> Option<At<u32>> {
        let node = self.get(sink, key)?;
        let n = match &node.value {
            Value::Int(n) => *n,
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => *f as i64,
            other => {
                sink.error(
                    Pos::of(node),
                    format!(
                        "`{}` must be a whole number, found {}",
                        self.name(key),
                        describe(other)
                    ),
                );
                return None;
            }
        };
        if n < i64::from(min) || n > i64::from(max) {
            let range = if max == u32::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            sink.error(
                Pos::of(node),
                format!("`{}` must be {range}, found {n}", self.name(key)),
            );
            return None;
        }
        Some(At {
            value: n as u32,
            pos: Pos::of(node),
        })
    }

    /// Any finite number.
    pub fn number(&self, sink: &mut Sink, key: &str) -> Option<At<f64>> {
        let node = self.get(sink, key)?;
        match &node.value {
            Value::Int(n) => Some(At {
                value: *n as f64,
                pos: Pos::of(node),
            }),
            Value::Float(f) if f.is_finite() => Some(At {
                value: *f,
                pos: Pos::of(node),
            }),
            other => {
                sink.error(
                    Pos::of(node),
                    format!(
                        "`{}` must be a number, found {}",
                        self.name(key),
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    /// One of `options`, with a suggestion when it is a near miss.
    pub fn choice(
        &self,
        sink: &mut Sink,
        key: &str,
        options: &[&'static str],
    ) -> Option<At<&'static str>> {
        let node = self.get(sink, key)?;
        let Value::Str(s) = &node.value else {
            sink.error(
                Pos::of(node),
                format!(
                    "`{}` must be one of {}, found {}",
                    self.name(key),
                    options.join(", "),
                    describe(&node.value)
                ),
            );
            return None;
        };
        if let Some(o) = options.iter().find(|o| **o == s.as_str()) {
            return Some(At {
                value: o,
                pos: Pos::of(node),
            });
        }
        let hint = match suggest::closest(s, options.iter().copied()) {
            Some(c) => format!("; did you mean `{c}`?"),
            None => String::new(),
        };
        sink.error(
            Pos::of(node),
            format!(
                "`{}` must be one of {}, found `{s}`{hint}",
                self.name(key),
                options.join(", ")
            ),
        );
        None
    }

    /// A list of non-empty strings (a single string is not accepted: lists stay lists).
    pub fn string_list(&self, sink: &mut Sink, key: &str) -> Option<At<Vec<At<String>>>> {
        let node = self.get(sink, key)?;
        let Value::Seq(items) = &node.value else {
            sink.error(
                Pos::of(node),
                format!(
                    "`{}` must be a list like [a, b], found {}",
                    self.name(key),
                    node.value.kind()
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match &item.value {
                Value::Str(s) if !s.trim().is_empty() => out.push(At {
                    value: s.clone(),
                    pos: Pos::of(item),
                }),
                other => {
                    ok = false;
                    sink.error(
                        Pos::of(item),
                        format!(
                            "`{}[{i}]` must be a non-empty string, found {}",
                            self.name(key),
                            describe(other)
                        ),
                    );
                }
            }
        }
        ok.then(|| At {
            value: out,
            pos: Pos::of(node),
        })
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A value as it reads in "found ..." messages: the scalar itself when short.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Str(s) if s.chars().count() <= 40 => format!("{s:?}"),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.kind().to_string(),
    }
}

/// Keys of every section, so that a key written at the wrong level can say where it belongs.
const HOMES: &[(&str, &[&str])] = &[
    ("", super::compile::TOP_KEYS),
    ("lock", super::compile::LOCK_KEYS),
    ("window", super::compile::WINDOW_KEYS),
    ("backup", super::compile::BACKUP_KEYS),
    ("soak", super::compile::SOAK_KEYS),
    ("soak.checks[]", super::compile::CHECK_KEYS),
    ("soak.checks[].http", super::compile::HTTP_KEYS),
    ("rollback", super::compile::ROLLBACK_KEYS),
    ("notify", super::compile::NOTIFY_KEYS),
    ("approval", super::compile::APPROVAL_KEYS),
    ("gate", super::compile::GATE_KEYS),
    ("gate.check", super::compile::CHECK_KEYS),
    ("gate.check.http", super::compile::HTTP_KEYS),
    ("explain[]", super::explain::EXPLAIN_KEYS),
];

fn unknown_key(path: &str, key: &str, known: &[&str]) -> String {
    let place = if path.is_empty() {
        String::new()
    } else {
        format!(" in `{path}`")
    };
    let mut message = format!("unknown key `{key}`{place}");
    if let Some(close) = suggest::closest(key, known.iter().copied()) {
        message.push_str(&format!("; did you mean `{close}`?"));
        return message;
    }
    let generic = path.replace(|c: char| c.is_ascii_digit(), "");
    let homes: Vec<String> = HOMES
        .iter()
        .filter(|(home, keys)| *home != generic && keys.contains(&key))
        .map(|(home, _)| {
            if home.is_empty() {
                "the top level".to_string()
            } else {
                format!("`{home}`")
            }
        })
        .collect();
    if !homes.is_empty() {
        message.push_str(&format!("; `{key}` belongs in {}", homes.join(" or ")));
    } else {
        message.push_str(&format!("; expected one of {}", known.join(", ")));
    }
    message
}
