//! Durations as people write them in plans: `500ms`, `30s`, `15m`, `1h`, `1h30m`.

use std::time::Duration;

/// Why a duration was refused; messages quote the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write it like 30s, 15m or 1h")]
    Empty,
    #[error("invalid duration {text:?}; write it like 30s, 15m or 1h")]
    Invalid { text: String },
    #[error("duration {text:?} is too large")]
    TooLarge { text: String },
    #[error("duration {text:?} contains a space; write it without, like 15m or 1h30m")]
    Space { text: String },
    #[error("duration {text:?} has no unit; write it like 30s, 15m or 1h")]
    NoUnit { text: String },
    #[error("unknown unit {unit:?} in duration {text:?}; use ms, s, m, h or d")]
    UnknownUnit { unit: String, text: String },
    #[error(
        "duration {text:?} is longer than {} days, the longest pgshepherd accepts",
        MAX.as_secs() / 86_400
    )]
    TooLong { text: String },
    /// A plan wrote a bare YAML number (other than 0).
    #[error("{0} has no unit; write it like {0}s, {0}m or {0}h")]
    BareNumber(i64),
    /// A plan wrote something that is neither a string nor a number.
    #[error("expected a duration like 30s, 15m or 1h, found {found}")]
    NotADuration { found: String },
}

/// Parse `30s`, `15m`, `1h`, `1h30m`, `500ms`. A bare number is refused: the unit
/// is what makes a plan readable.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let text = s.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let owned = || text.to_string();
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::Invalid { text: owned() });
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLarge { text: owned() })?;
        rest = &rest[digits..];
        if rest.starts_with(char::is_whitespace) {
            return Err(DurationError::Space { text: owned() });
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(DurationError::NoUnit { text: owned() }),
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    text: owned(),
                });
            }
        };
        total = total
            .checked_add(part)
            .ok_or_else(|| DurationError::TooLarge { text: owned() })?;
    }
    if total > MAX {
        return Err(DurationError::TooLong { text: owned() });
    }
    Ok(total)
}

/// No plan needs more, and it keeps every instant computed from a duration
/// (a deadline, the next sample tick) far from overflowing.
pub const MAX: Duration = Duration::from_secs(366 * 86_400);

/// Render a duration the way `parse` reads it (`1h30m`, `45s`, `250ms`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Serialize a `Duration` as fractional seconds in events and JSON output.
pub mod serde_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// [`serde_secs`] for an optional duration (`null` when absent).
pub mod serde_secs_opt {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn refuses_bare_numbers_and_unknown_units() {
        assert!(parse("30").unwrap_err().to_string().contains("no unit"));
        assert!(parse("3 weeks").unwrap_err().to_string().contains("space"));
        assert!(
            parse("5y")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
        assert!(parse("").is_err());
        assert!(parse("m").is_err());
        assert!(parse("99999999999999999999h").is_err());
        assert!(parse("366d").is_ok());
        assert!(
            parse("200000000000000d")
                .unwrap_err()
                .to_string()
                .contains("longer than 366 days")
        );
    }

    #[test]
    fn format_round_trips() {
        for s in ["1h30m", "45s", "250ms", "2h", "0s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
