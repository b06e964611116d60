//! What a YAML scalar is under the YAML 1.2 core schema: plain scalars resolved by their
//! text (`null`, `true`, `0x1F`, `.inf`), quoted ones as strings, and the core tags (`!!str`,
//! `!!int`, ...) checked against the text they mark.

use yaml_rust2::parser::Tag;
use yaml_rust2::scanner::TScalarStyle;

use super::tree::{LoadError, Mark};

/// What a scalar is under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ScalarKind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str,
}

fn core_tag(tag: &Tag) -> Option<&str> {
    match tag.handle.as_str() {
        "tag:yaml.org,2002:" | "!!" => Some(tag.suffix.as_str()),
        _ => None,
    }
}

fn tag_name(tag: &Tag) -> String {
    format!("{}{}", tag.handle, tag.suffix)
}

pub(super) fn check_collection_tag(
    tag: Option<&Tag>,
    expected: &str,
    mark: Mark,
) -> Result<(), LoadError> {
    match tag {
        None => Ok(()),
        Some(t) if core_tag(t) == Some(expected) => Ok(()),
        Some(t) => Err(LoadError::Tag {
            mark,
            tag: tag_name(t),
        }),
    }
}

pub(super) fn resolve_scalar(
    text: &str,
    style: TScalarStyle,
    tag: Option<&Tag>,
    mark: Mark,
) -> Result<ScalarKind, LoadError> {
    let Some(tag) = tag else {
        return Ok(if style == TScalarStyle::Plain {
            resolve_plain(text)
        } else {
            ScalarKind::Str
        });
    };
    // `!` alone marks a non-specific tag: a string.
    if tag_name(tag) == "!" {
        return Ok(ScalarKind::Str);
    }
    let tagged = |tag: &'static str, ok: bool, kind: ScalarKind| {
        if ok {
            Ok(kind)
        } else {
            Err(LoadError::Tagged {
                mark,
                tag,
                text: text.to_string(),
            })
        }
    };
    let plain = resolve_plain(text);
    match core_tag(tag) {
        Some("str") => Ok(ScalarKind::Str),
        Some("null") => tagged("!!null", plain == ScalarKind::Null, plain),
        Some("bool") => tagged("!!bool", matches!(plain, ScalarKind::Bool(_)), plain),
        Some("int") => tagged(
            "!!int",
            matches!(plain, ScalarKind::Int(_) | ScalarKind::UInt(_)),
            plain,
        ),
        Some("float") => match plain {
            ScalarKind::Int(i) => Ok(ScalarKind::Float(i as f64)),
            ScalarKind::UInt(u) => Ok(ScalarKind::Float(u as f64)),
            ScalarKind::Float(_) => Ok(plain),
            _ => tagged("!!float", false, plain),
        },
        _ => Err(LoadError::Tag {
            mark,
            tag: tag_name(tag),
        }),
    }
}

/// Resolves a plain scalar by the YAML 1.2 core schema.
fn resolve_plain(text: &str) -> ScalarKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
        "true" | "True" | "TRUE" => return ScalarKind::Bool(true),
        "false" | "False" | "FALSE" => return ScalarKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return ScalarKind::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return ScalarKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return ScalarKind::Float(f64::NAN),
        _ => {}
    }
    let radix = |prefix: &str, radix: u32| {
        text.strip_prefix(prefix)
            .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_digit(radix)))
            .map(|d| match i64::from_str_radix(d, radix) {
                Ok(i) => ScalarKind::Int(i),
                Err(_) => u64::from_str_radix(d, radix).map_or(ScalarKind::Str, ScalarKind::UInt),
            })
    };
    if let Some(kind) = radix("0o", 8).or_else(|| radix("0x", 16)) {
        return kind;
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return ScalarKind::Int(i);
        }
        if let Ok(u) = text.trim_start_matches('+').parse::<u64>() {
            return ScalarKind::UInt(u);
        }
        return text.parse().map_or(ScalarKind::Str, ScalarKind::Float);
    }
    if is_core_float(unsigned) {
        return text.parse().map_or(ScalarKind::Str, ScalarKind::Float);
    }
    ScalarKind::Str
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, without its sign.
fn is_core_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(whole)
        && digits(fraction)
        && (!whole.is_empty() || !fraction.is_empty())
        && (whole.len() + fraction.len() + usize::from(mantissa.contains('.')) == mantissa.len());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars() {
        use ScalarKind::*;
        let cases = [
            ("", Null),
            ("~", Null),
            ("null", Null),
            ("true", Bool(true)),
            ("False", Bool(false)),
            ("yes", Str),
            ("42", Int(42)),
            ("-7", Int(-7)),
            ("+7", Int(7)),
            ("0x1F", Int(31)),
            ("0o17", Int(15)),
            ("18446744073709551615", UInt(u64::MAX)),
            ("1.5", Float(1.5)),
            (".5", Float(0.5)),
            ("1e3", Float(1000.0)),
            ("-2.5E-1", Float(-0.25)),
            (".inf", Float(f64::INFINITY)),
            ("500m", Str),
            ("1_000", Str),
            ("1.2.3", Str),
            ("inf", Str),
            ("e5", Str),
            ("1e", Str),
            ("0x", Str),
            ("texu.io/v1", Str),
        ];
        for (text, want) in cases {
            assert_eq!(resolve_plain(text), want, "{text:?}");
        }
        assert!(matches!(resolve_plain(".nan"), Float(f) if f.is_nan()));
    }
}
