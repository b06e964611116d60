//! Resource quantities as Kubernetes writes them: CPU (`500m`, `2`, `0.5`) and memory (`128Mi`,
//! `1Gi`, `512M`, `1000`), converted exactly, without floating point.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;
use std::fmt;

const EXPECTED: &str = "expected a number with an optional suffix, like 500m, 2, 0.5, 128Mi or 1G";
const SUFFIXES: &str = "Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or e<exponent>";

/// A resource amount such as `500m` (CPU) or `128Mi` (memory), kept as written.
///
/// Written as a string or, for plain amounts such as `cpu: 2`, a number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;

        impl serde::de::Visitor<'_> for QuantityVisitor {
            type Value = Quantity;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as 500m, 2, 128Mi or 1G")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }

        deserializer.deserialize_any(QuantityVisitor)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A resource amount: CPU like `500m`, `2` or `0.5`; memory like `128Mi`, `1Gi`, `512M` or `1000`.",
            "type": ["string", "number"],
            "examples": ["500m", "2", "128Mi", "1Gi"]
        })
    }
}

/// Why a quantity does not parse or does not fit its use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("must not be empty: {EXPECTED}")]
    Empty,
    #[error("{value:?} is not a quantity: {EXPECTED}")]
    Invalid { value: String },
    #[error("{value:?} has an unknown suffix {suffix:?}: expected {SUFFIXES}")]
    UnknownSuffix { value: String, suffix: String },
    #[error("must not be negative, got {value}")]
    Negative { value: String },
    #[error("{value} is too large")]
    TooLarge { value: String },
    #[error("{value} is finer than 1m (a thousandth of a CPU)")]
    CpuTooFine { value: String },
    #[error("{value} is not a whole number of bytes (m means thousandths: did you mean Mi or M?)")]
    FractionalBytes { value: String },
}

impl Quantity {
    /// A quantity from its written form.
    pub fn new(s: impl Into<String>) -> Quantity {
        Quantity(s.into())
    }

    /// The written form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Thousandths of a CPU: `500m` is 500, `2` is 2000, `0.5` is 500.
    pub fn cpu_millis(&self) -> Result<u64, QuantityError> {
        let parsed = Parsed::parse(&self.0)?;
        parsed.scaled(3).map_err(|e| match e {
            Inexact::Fraction => QuantityError::CpuTooFine {
                value: self.0.clone(),
            },
            Inexact::TooLarge => QuantityError::TooLarge {
                value: self.0.clone(),
            },
        })
    }

    /// Bytes: `128Mi` is 134217728, `1G` is 1000000000, `1000` is 1000.
    pub fn bytes(&self) -> Result<u64, QuantityError> {
        let parsed = Parsed::parse(&self.0)?;
        parsed.scaled(0).map_err(|e| match e {
            Inexact::Fraction => QuantityError::FractionalBytes {
                value: self.0.clone(),
            },
            Inexact::TooLarge => QuantityError::TooLarge {
                value: self.0.clone(),
            },
        })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Self {
        Quantity(s.to_string())
    }
}

/// A quantity as `mantissa * 10^-fraction_digits * 2^binary * 10^decimal`.
struct Parsed {
    mantissa: u128,
    fraction_digits: i32,
    binary: u32,
    decimal: i32,
}

enum Inexact {
    Fraction,
    TooLarge,
}

/// More digits than this cannot be exact in a u128 anyway.
const MAX_DIGITS: usize = 30;

impl Parsed {
    fn parse(s: &str) -> Result<Parsed, QuantityError> {
        let invalid = || QuantityError::Invalid {
            value: s.to_string(),
        };
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        let (negative, rest) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid());
        }
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > MAX_DIGITS {
            return Err(QuantityError::TooLarge {
                value: s.to_string(),
            });
        }
        let mantissa = if digits.is_empty() {
            0
        } else {
            digits.parse::<u128>().map_err(|_| invalid())?
        };
        let (binary, decimal) = match suffix {
            "" => (0, 0),
            "Ki" => (10, 0),
            "Mi" => (20, 0),
            "Gi" => (30, 0),
            "Ti" => (40, 0),
            "Pi" => (50, 0),
            "Ei" => (60, 0),
            "n" => (0, -9),
            "u" => (0, -6),
            "m" => (0, -3),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            _ => match suffix.strip_prefix(['e', 'E']) {
                Some(exp) if !exp.is_empty() => {
                    let exp: i32 = exp.parse().map_err(|_| unknown_suffix(s, suffix))?;
                    if !(-40..=40).contains(&exp) {
                        return Err(QuantityError::TooLarge {
                            value: s.to_string(),
                        });
                    }
                    (0, exp)
                }
                _ if suffix.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                    return Err(unknown_suffix(s, suffix));
                }
                _ => return Err(invalid()),
            },
        };
        if negative && mantissa != 0 {
            return Err(QuantityError::Negative {
                value: s.to_string(),
            });
        }
        Ok(Parsed {
            mantissa,
            // At most MAX_DIGITS, so this fits.
            fraction_digits: fraction.len().min(MAX_DIGITS + 1) as i32,
            binary,
            decimal,
        })
    }

    /// The value times `10^scale`, when that is a whole number that fits a u64.
    fn scaled(&self, scale: i32) -> Result<u64, Inexact> {
        let mut n = self
            .mantissa
            .checked_mul(1u128 << self.binary)
            .ok_or(Inexact::TooLarge)?;
        let exp10 = self.decimal + scale - self.fraction_digits;
        if exp10 >= 0 {
            let factor = 10u128.checked_pow(exp10 as u32).ok_or(Inexact::TooLarge)?;
            n = n.checked_mul(factor).ok_or(Inexact::TooLarge)?;
        } else if n != 0 {
            let divisor = 10u128
                .checked_pow(exp10.unsigned_abs())
                .ok_or(Inexact::Fraction)?;
            if n % divisor != 0 {
                return Err(Inexact::Fraction);
            }
            n /= divisor;
        }
        u64::try_from(n).map_err(|_| Inexact::TooLarge)
    }
}

fn unknown_suffix(value: &str, suffix: &str) -> QuantityError {
    QuantityError::UnknownSuffix {
        value: value.to_string(),
        suffix: suffix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        let cases: &[(&str, u64)] = &[
            ("500m", 500),
            ("2", 2000),
            ("0.5", 500),
            (".5", 500),
            ("1.", 1000),
            ("1.5", 1500),
            ("0", 0),
            ("+1", 1000),
            ("1000m", 1000),
            ("250000u", 250),
            ("1e3", 1_000_000),
            ("2E-3", 2),
            ("0.001", 1),
            ("1k", 1_000_000),
            ("0007", 7000),
        ];
        for (text, want) in cases {
            assert_eq!(Quantity::from(*text).cpu_millis(), Ok(*want), "{text}");
        }
    }

    #[test]
    fn memory() {
        let cases: &[(&str, u64)] = &[
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("512M", 512_000_000),
            ("1G", 1_000_000_000),
            ("1000", 1000),
            ("1k", 1000),
            ("1Ki", 1024),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            ("1e6", 1_000_000),
            ("8Ei", 8 << 60),
            ("1000m", 1),
            ("0", 0),
        ];
        for (text, want) in cases {
            assert_eq!(Quantity::from(*text).bytes(), Ok(*want), "{text}");
        }
    }

    #[test]
    fn errors() {
        let cases: &[(&str, &str)] = &[
            ("", "must not be empty: expected a number"),
            (
                "lots",
                "\"lots\" is not a quantity: expected a number with an optional suffix",
            ),
            ("12Qi", "unknown suffix \"Qi\""),
            ("1 Gi", "not a quantity"),
            ("1.2.3", "not a quantity"),
            (".", "not a quantity"),
            ("-1", "must not be negative, got -1"),
            ("-", "not a quantity"),
            ("m", "not a quantity"),
            ("1e", "unknown suffix"),
            ("1ex", "unknown suffix"),
            ("1e99", "too large"),
            ("16Ei", "too large"),
            ("1234567890123456789012345678901", "too large"),
            ("500m", "not a whole number of bytes"),
            ("0.1", "not a whole number of bytes"),
        ];
        for (text, want) in cases {
            let err = Quantity::from(*text).bytes().expect_err(text);
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
        let err = Quantity::from("1u").cpu_millis().expect_err("1u");
        assert!(err.to_string().contains("finer than 1m"), "{err}");
        assert!(Quantity::from("0.0001m").cpu_millis().is_err());
    }

    #[test]
    fn numbers_read_as_quantities() {
        let q: Result<Quantity, _> = serde_json::from_str("2");
        assert_eq!(q.map(|q| q.cpu_millis()).ok(), Some(Ok(2000)));
        let q: Result<Quantity, _> = serde_json::from_str("0.5");
        assert_eq!(q.map(|q| q.cpu_millis()).ok(), Some(Ok(500)));
        let q: Result<Quantity, _> = serde_json::from_str("\"128Mi\"");
        assert_eq!(q.ok(), Some(Quantity::from("128Mi")));
        assert!(serde_json::from_str::<Quantity>("[1]").is_err());
    }
}
