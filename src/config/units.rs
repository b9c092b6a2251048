//! Human units in gateway.yaml: durations (`250ms`, `5s`, `1h30m`) and byte sizes
//! (`8KiB`, `16KB`, `1048576`), parsed straight into `Duration` / `u64` during deserialisation
//! so a bad value is reported with its YAML path.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration written as a string of `<integer><unit>` parts; units `ms`, `s`, `m`, `h`, `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

/// A byte count written as a number or a string with an optional unit
/// (`B`, `KB`/`MB`/`GB`/`TB` = powers of 1000, `KiB`/`MiB`/`GiB`/`TiB` = powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Parses `250ms`, `5s`, `2m`, `1h`, `1h30m`, `1d`.
/// The longest duration a config key takes.
pub const MAX_CONFIG_DURATION: Duration = Duration::from_secs(365 * 86_400);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration (expected e.g. \"5s\", \"250ms\", \"2m\", \"1h\")".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number followed by a unit (ms, s, m, h, d)"
            ));
        }
        let (num, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (write e.g. \"{n}s\" or \"{n}ms\")"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h or d)"
                ))
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        rest = after;
    }
    Ok(total)
}

/// Parses `1048576`, `512B`, `8KiB`, `10MiB`, `1GiB`, `16KB`, `8 KiB` (unit case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size {text:?}: expected a number with an optional unit (e.g. \"8KiB\", \"10MiB\", \"1048576\")"
        ));
    }
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {:?} (use B, KB, MB, GB, KiB, MiB or GiB)",
                unit.trim()
            ))
        }
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = DurationValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"250ms\", \"5s\", \"2m\" or \"1h\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
        match parse_duration(v).map_err(E::custom)? {
            d if d > MAX_CONFIG_DURATION => Err(E::custom(format!(
                "invalid duration {v:?}: at most 365d (a timer that long is a typo, and one \
                 near u64::MAX seconds cannot be added to a clock reading)"
            ))),
            d => Ok(DurationValue(d)),
        }
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(DurationVisitor)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as 1048576, \"8KiB\" or \"10MiB\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        parse_size(v).map(ByteSize).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m500ms", Duration::from_millis(60_500)),
            ("1d", Duration::from_secs(86_400)),
            (" 0s ", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_are_rejected() {
        for text in [
            "",
            "5",
            "s",
            "5x",
            "-5s",
            "1.5s",
            "5 s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} should fail");
        }
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("missing unit"), "{err}");
    }

    #[test]
    fn sizes_parse() {
        let ok = [
            ("1048576", 1_048_576),
            ("512B", 512),
            ("8KiB", 8192),
            ("16KB", 16_000),
            ("10MiB", 10 * 1024 * 1024),
            ("1GiB", 1 << 30),
            ("2 mb", 2_000_000),
            ("1TiB", 1 << 40),
        ];
        for (text, want) in ok {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for text in [
            "",
            "KiB",
            "8K",
            "8 XB",
            "-1",
            "1.5MiB",
            "99999999999999999999999",
        ] {
            assert!(parse_size(text).is_err(), "{text:?} should fail");
        }
        assert!(parse_size("20000000TiB").is_err(), "overflow");
    }

    #[test]
    fn deserialise_from_yaml() {
        let d: DurationValue = serde_yaml::from_str("\"5s\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(5));
        let s: ByteSize = serde_yaml::from_str("4096").unwrap();
        assert_eq!(s.0, 4096);
        let s: ByteSize = serde_yaml::from_str("8KiB").unwrap();
        assert_eq!(s.0, 8192);
        assert!(serde_yaml::from_str::<ByteSize>("-3").is_err());
        let err = serde_yaml::from_str::<DurationValue>("5").unwrap_err();
        assert!(err.to_string().contains("duration"), "{err}");
    }
}
