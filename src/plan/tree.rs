//! Stage one of plan loading: YAML text to a generic tree whose every node knows
//! its `line:column`.
//!
//! Why a generic tree instead of `#[derive(Deserialize)]` structs: serde stops at
//! the first error, but a plan author wants *every* problem in one run (an unknown
//! key must not hide a bad duration three sections below). So serde-saphyr only
//! does what it is good at (YAML syntax, aliases and merges, and resource budgets
//! against hostile input) and hands back this tree; [`super::compile`] walks it
//! and collects all the errors. Each node is read through `serde_saphyr::Spanned`,
//! which is how serde-saphyr exposes a node's source location, so compile errors
//! point at the offending value, not just at parse errors.
//!
//! Hostile input is refused before it costs anything: the caller caps the file
//! size, and the [`Budget`](serde_saphyr::Budget) below caps depth, node count,
//! anchors, aliases and alias replay (a "billion laughs" document trips the replay
//! limit after a few thousand events instead of expanding to gigabytes). The depth
//! cap also bounds the recursion of [`Node`]'s `Deserialize` implementation.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter, Spanned};

/// Deepest nesting a plan may have. Real plans nest four levels
/// (`soak.checks[].http.expect_status`); the margin is for flow style and merges.
pub const MAX_DEPTH: usize = 24;
/// Most YAML nodes (scalars, sequences, mappings) a plan may contain.
pub const MAX_NODES: usize = 20_000;
/// Most events that aliases may replay in total; a few plan sections reused
/// through anchors stay far below this, a billion-laughs bomb does not.
pub const MAX_REPLAYED_EVENTS: usize = 10_000;

/// A YAML node and where it starts (1-based; 0 when serde-saphyr could not tell).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: u32,
    pub column: u32,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; duplicate keys are kept so that the compiler can
    /// report them with both positions instead of the parser stopping at the first.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// How the value reads in a "found ..." message.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A parse failure: the document is not YAML, or it exceeds a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// Parse one YAML document into a located tree.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    let budget = serde_saphyr::budget! {
        max_depth: MAX_DEPTH,
        flow_nesting_limit: MAX_DEPTH,
        max_nodes: MAX_NODES,
        max_anchors: 1_000,
        max_aliases: 1_000,
        max_documents: 1,
        max_merge_keys: 100,
        max_total_scalar_bytes: 4 * 1024 * 1024,
        max_events: 100_000,
    };
    let alias_limits = serde_saphyr::alias_limits! {
        max_total_replayed_events: MAX_REPLAYED_EVENTS,
        max_replay_stack_depth: 16,
    };
    let options = serde_saphyr::options! {
        budget: budget,
        alias_limits: alias_limits,
        // `no`, `on`, `y` stay strings (YAML 1.2): `name: no` must not become `false`.
        strict_booleans: true,
        // Duplicates are reported by the compiler with both locations, all at once.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        reject_unsupported_tags: true,
        with_snippet: false,
    };
    match serde_saphyr::from_str_with_options::<Option<Node>>(text, options) {
        Ok(Some(node)) => Ok(node),
        Ok(None) => Ok(Node {
            line: 1,
            column: 1,
            value: Value::Null,
        }),
        Err(err) => Err(to_parse_error(&err)),
    }
}

fn to_parse_error(err: &serde_saphyr::Error) -> ParseError {
    let err = err.without_snippet();
    let (line, column) = err
        .location()
        .map(|l| (saturate(l.line()), saturate(l.column())))
        .unwrap_or((0, 0));
    let text = serde_saphyr::UserMessageFormatter
        .format_message(err)
        .into_owned();
    let text = text.trim().trim_end_matches('.');
    let message = if let Some((_, detail)) = text.split_once("too large or too complex") {
        let detail = detail.trim_start_matches([':', ' ']);
        if detail.contains("Depth") {
            format!(
                "refused: the document nests more than {MAX_DEPTH} levels deep; plans need far fewer"
            )
        } else if detail.contains("replayed") || detail.contains("lias") {
            format!(
                "refused: aliases expand to too much ({detail}); a plan may reuse anchors, not multiply them \
                 (\"billion laughs\")"
            )
        } else {
            format!("refused: the document is too large or too complex for a plan ({detail})")
        }
    } else if text.contains("recursion limit") || text.contains("nesting") {
        format!("refused: the document nests more than {MAX_DEPTH} levels deep ({text})")
    } else {
        format!("invalid YAML: {text}")
    };
    ParseError {
        line,
        column,
        message,
    }
}

fn saturate(n: impl TryInto<u32>) -> u32 {
    n.try_into().unwrap_or(u32::MAX)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned: Spanned<Value> = Spanned::deserialize(d)?;
        Ok(Node {
            line: saturate(spanned.referenced.line()),
            column: saturate(spanned.referenced.column()),
            value: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_char<E>(self, v: char) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not supported in plans"))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(m) => m,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    #[test]
    fn nodes_carry_their_positions() {
        let doc =
            parse("name: x\nsoak:\n  duration: 1h\n  checks:\n    - name: a\n      max: 0.5\n")
                .unwrap();
        let top = map(&doc);
        assert_eq!((top[0].0.line, top[0].0.column), (1, 1));
        assert_eq!((top[0].1.line, top[0].1.column), (1, 7));
        assert_eq!(top[1].0.value, Value::Str("soak".into()));
        let soak = map(&top[1].1);
        assert_eq!((soak[0].1.line, soak[0].1.column), (3, 13));
        let Value::Seq(checks) = &soak[1].1.value else {
            panic!()
        };
        let check = map(&checks[0]);
        assert_eq!((check[1].0.line, check[1].0.column), (6, 7));
        assert_eq!(check[1].1.value, Value::Float(0.5));
    }

    #[test]
    fn scalars_are_typed_yaml_1_2() {
        let doc = parse("a: 5\nb: no\nc: true\nd: '5'\ne: ~\nf: 20%\n").unwrap();
        let vals: Vec<_> = map(&doc).iter().map(|(_, v)| v.value.clone()).collect();
        assert_eq!(
            vals,
            vec![
                Value::Int(5),
                Value::Str("no".into()),
                Value::Bool(true),
                Value::Str("5".into()),
                Value::Null,
                Value::Str("20%".into())
            ]
        );
    }

    #[test]
    fn duplicate_keys_are_kept_for_the_compiler() {
        let doc = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(map(&doc).len(), 2);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("name: x\nsoak: [1, 2\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        assert!(err.message.starts_with("invalid YAML"), "{err:?}");
    }

    #[test]
    fn byte_order_mark_and_crlf_are_fine() {
        let doc = parse("\u{feff}name: x\r\ntarget: y\r\n").unwrap();
        let top = map(&doc);
        assert_eq!(top[1].1.value, Value::Str("y".into()));
        assert_eq!((top[1].1.line, top[1].1.column), (2, 9));
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse("").unwrap().value, Value::Null);
        assert_eq!(parse("# just a comment\n").unwrap().value, Value::Null);
    }

    #[test]
    fn billion_laughs_is_refused_quickly() {
        let mut doc = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut prev = "a";
        for n in names {
            doc.push_str(&format!("{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
            prev = n;
        }
        let start = Instant::now();
        let err = parse(&doc).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(
            err.message
                .starts_with("refused: aliases expand to too much"),
            "{err:?}"
        );
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let flow = format!("a: {}1{}\n", "[".repeat(10_000), "]".repeat(10_000));
        let start = Instant::now();
        let err = parse(&flow).unwrap_err();
        assert!(
            err.message
                .starts_with("refused: the document nests more than 24 levels"),
            "{err:?}"
        );
        let block = format!("{}1\n", "- ".repeat(10_000));
        let err = parse(&block).unwrap_err();
        assert!(err.message.starts_with("refused"), "{err:?}");
        let mut indented = String::new();
        for depth in 0..100 {
            indented.push_str(&format!("{}k{depth}:\n", " ".repeat(depth)));
        }
        assert!(parse(&indented).unwrap_err().message.starts_with("refused"));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
