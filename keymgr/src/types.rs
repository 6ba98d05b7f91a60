//! Small shared enums: the logical types clients see and the two encryption modes.

use std::fmt;
use std::str::FromStr;

/// The logical type of a protected column as clients see it (policy `type = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogicalType {
    /// `text` (oid 25)
    Text,
    /// `int4` (oid 23)
    Int4,
    /// `int8` (oid 20)
    Int8,
    /// `numeric` (oid 1700)
    Numeric,
    /// `date` (oid 1082)
    Date,
    /// `timestamptz` (oid 1184)
    Timestamptz,
    /// `bool` (oid 16)
    Bool,
    /// `jsonb` (oid 3802)
    Jsonb,
    /// `bytea` (oid 17)
    Bytea,
}

impl LogicalType {
    /// Every logical type, in policy documentation order.
    pub const ALL: [LogicalType; 9] = [
        LogicalType::Text,
        LogicalType::Int4,
        LogicalType::Int8,
        LogicalType::Numeric,
        LogicalType::Date,
        LogicalType::Timestamptz,
        LogicalType::Bool,
        LogicalType::Jsonb,
        LogicalType::Bytea,
    ];

    /// The PostgreSQL type oid (what a RowDescription / ParameterDescription carries).
    pub fn oid(self) -> u32 {
        match self {
            LogicalType::Text => 25,
            LogicalType::Int4 => 23,
            LogicalType::Int8 => 20,
            LogicalType::Numeric => 1700,
            LogicalType::Date => 1082,
            LogicalType::Timestamptz => 1184,
            LogicalType::Bool => 16,
            LogicalType::Jsonb => 3802,
            LogicalType::Bytea => 17,
        }
    }

    /// The type for a PostgreSQL oid, if it is one of the logical types.
    pub fn from_oid(oid: u32) -> Option<LogicalType> {
        LogicalType::ALL.into_iter().find(|t| t.oid() == oid)
    }

    /// The policy spelling (`"text"`, `"int4"`, ...), also PostgreSQL's type name.
    pub fn name(self) -> &'static str {
        match self {
            LogicalType::Text => "text",
            LogicalType::Int4 => "int4",
            LogicalType::Int8 => "int8",
            LogicalType::Numeric => "numeric",
            LogicalType::Date => "date",
            LogicalType::Timestamptz => "timestamptz",
            LogicalType::Bool => "bool",
            LogicalType::Jsonb => "jsonb",
            LogicalType::Bytea => "bytea",
        }
    }
}

impl fmt::Display for LogicalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error of [`LogicalType::from_str`] / [`Mode::from_str`]: names the accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a known {what}; use one of: {accepted}")]
pub struct ParseEnumError {
    given: String,
    what: &'static str,
    accepted: &'static str,
}

impl FromStr for LogicalType {
    type Err = ParseEnumError;

    /// Policy spellings, case-insensitive: `text int4 int8 numeric date timestamptz bool jsonb bytea`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        LogicalType::ALL
            .into_iter()
            .find(|t| t.name() == lower)
            .ok_or_else(|| ParseEnumError {
                given: s.to_string(),
                what: "column type",
                accepted: "text, int4, int8, numeric, date, timestamptz, bool, jsonb, bytea",
            })
    }
}

/// How a column is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Fresh nonce per value: equal plaintexts give different ciphertexts (envelope mode byte 1).
    Randomized,
    /// Synthetic nonce from an HMAC of the value: equal plaintexts give equal ciphertexts within one
    /// column and key version, so equality filters, joins and unique indexes work; it leaks equality
    /// (envelope mode byte 2).
    Deterministic,
}

impl Mode {
    /// The envelope's mode byte.
    pub fn byte(self) -> u8 {
        match self {
            Mode::Randomized => 1,
            Mode::Deterministic => 2,
        }
    }

    /// The mode for an envelope mode byte.
    pub fn from_byte(b: u8) -> Option<Mode> {
        match b {
            1 => Some(Mode::Randomized),
            2 => Some(Mode::Deterministic),
            _ => None,
        }
    }

    /// Policy spelling.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Randomized => "randomized",
            Mode::Deterministic => "deterministic",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = ParseEnumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "randomized" => Ok(Mode::Randomized),
            "deterministic" => Ok(Mode::Deterministic),
            _ => Err(ParseEnumError {
                given: s.to_string(),
                what: "encryption mode",
                accepted: "randomized, deterministic",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_type_names_and_oids() {
        let expect = [
            ("text", 25),
            ("int4", 23),
            ("int8", 20),
            ("numeric", 1700),
            ("date", 1082),
            ("timestamptz", 1184),
            ("bool", 16),
            ("jsonb", 3802),
            ("bytea", 17),
        ];
        for (name, oid) in expect {
            let t: LogicalType = name.parse().unwrap();
            assert_eq!(t.oid(), oid);
            assert_eq!(t.name(), name);
            assert_eq!(LogicalType::from_oid(oid), Some(t));
        }
        assert_eq!("INT4".parse::<LogicalType>().unwrap(), LogicalType::Int4);
        let err = "varchar".parse::<LogicalType>().unwrap_err().to_string();
        assert!(
            err.contains("varchar") && err.contains("timestamptz"),
            "{err}"
        );
    }

    #[test]
    fn mode_bytes_and_names() {
        for m in [Mode::Randomized, Mode::Deterministic] {
            assert_eq!(Mode::from_byte(m.byte()), Some(m));
            assert_eq!(m.name().parse::<Mode>().unwrap(), m);
        }
        assert_eq!(Mode::from_byte(0), None);
        assert_eq!(Mode::from_byte(3), None);
        assert!("none".parse::<Mode>().is_err());
    }
}
