//! `pgcloak check` support: every problem of a policy, offline and (when the database is reachable)
//! against the storage types of the columns it names.

use std::collections::HashMap;
use std::fmt;

use crate::model::{LogicalType, Policy};

/// One problem, printed by `pgcloak check` as `location: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line` where known.
    pub location: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(l) => write!(f, "{l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Storage types of the database's columns: `"schema.table.column" -> type name` as PostgreSQL prints it
/// (`format_type`: `bytea`, `text`, `character varying(255)`, `integer`...). A policy column absent from
/// the map does not exist.
pub type StorageTypes = HashMap<String, String>;

/// Parse a policy file and list every problem (parse errors included). `db` is `None` when the database
/// could not be reached: only offline checks run.
pub fn check_text(text: &str, file: &str, db: Option<&StorageTypes>) -> Vec<Problem> {
    match Policy::parse(text, file) {
        Ok(p) => check(&p, db),
        Err(e) => e
            .issues()
            .iter()
            .map(|i| Problem {
                location: Some(i.location()),
                message: i.message.clone(),
            })
            .collect(),
    }
}

/// Every problem of a parsed policy against the database's storage types (if given).
pub fn check(policy: &Policy, db: Option<&StorageTypes>) -> Vec<Problem> {
    let mut out = Vec::new();
    let Some(db) = db else { return out };
    for t in policy.tables() {
        let subject = format!("{}.{}.{}", t.schema, t.table, t.subject);
        if !db.contains_key(&subject) {
            out.push(Problem {
                location: Some(format!("{}:{}", policy.file(), t.line)),
                message: format!(
                    "subject column {subject} does not exist in the database; name the column that identifies whose row it is"
                ),
            });
        }
    }
    for c in policy.columns() {
        let name = c.qualified_name();
        let location = Some(format!("{}:{}", policy.file(), c.line));
        let Some(storage) = db.get(&name) else {
            out.push(Problem {
                location,
                message: format!(
                    "column {name} does not exist in the database; fix the name (schema.table.column) or create the column"
                ),
            });
            continue;
        };
        let st = storage.trim().to_lowercase();
        if c.encrypt.is_encrypted() {
            let fits = st == "bytea"
                || st == "text"
                || st.starts_with("character varying")
                || st.starts_with("varchar");
            if !fits {
                out.push(Problem {
                    location,
                    message: format!(
                        "encrypted column {name} is stored as {storage}; ciphertext needs bytea, text or varchar storage (ALTER TABLE ... ALTER COLUMN {} TYPE bytea, then `pgcloak encrypt {name}`)",
                        c.column
                    ),
                });
            } else if st.contains('(') {
                out.push(Problem {
                    location,
                    message: format!(
                        "encrypted column {name} is stored as {storage}; a length limit can be too short for ciphertext, use text or varchar without a limit"
                    ),
                });
            }
        } else if !storage_matches(c.logical_type, &st) {
            out.push(Problem {
                location,
                message: format!(
                    "column {name} is not encrypted but its type = \"{}\" differs from its storage type {storage}; remove `type` or make them agree",
                    c.logical_type
                ),
            });
        }
    }
    out
}

fn storage_matches(t: LogicalType, st: &str) -> bool {
    let base = st.split('(').next().unwrap_or(st).trim();
    match t {
        LogicalType::Text => matches!(
            base,
            "text"
                | "character varying"
                | "varchar"
                | "character"
                | "char"
                | "bpchar"
                | "citext"
                | "name"
        ),
        LogicalType::Int4 => matches!(base, "integer" | "int4" | "int" | "smallint" | "int2"),
        LogicalType::Int8 => matches!(base, "bigint" | "int8"),
        LogicalType::Numeric => matches!(
            base,
            "numeric" | "decimal" | "real" | "double precision" | "float4" | "float8" | "money"
        ),
        LogicalType::Date => base == "date",
        LogicalType::Timestamptz => base.starts_with("timestamp"),
        LogicalType::Bool => matches!(base, "boolean" | "bool"),
        LogicalType::Jsonb => matches!(base, "jsonb" | "json"),
        LogicalType::Bytea => base == "bytea",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"[[column]]
name = "public.customers.email"
class = "confidential"
encrypt = "deterministic"

[[column]]
name = "public.customers.salary"
class = "sensitive"
encrypt = "randomized"
type = "int4"

[[column]]
name = "public.customers.notes"
class = "internal"

[[column]]
name = "public.customers.missing"
class = "internal"

[[column]]
name = "public.customers.age"
class = "internal"
type = "int4"
"#;

    fn db(pairs: &[(&str, &str)]) -> StorageTypes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn offline_only_reports_parse_problems() {
        assert!(check_text(POLICY, "policy.toml", None).is_empty());
        let probs = check_text(
            "[[column]]\nname = \"x\"\nclass = \"secret\"\n",
            "policy.toml",
            None,
        );
        assert_eq!(probs.len(), 2, "{probs:?}");
        assert_eq!(probs[0].location.as_deref(), Some("policy.toml:2"));
        assert_eq!(probs[1].location.as_deref(), Some("policy.toml:3"));
    }

    #[test]
    fn storage_problems_each_with_a_line() {
        let storage = db(&[
            ("public.customers.email", "character varying(255)"),
            ("public.customers.salary", "integer"),
            ("public.customers.notes", "text"),
            ("public.customers.age", "text"),
        ]);
        let probs = check_text(POLICY, "policy.toml", Some(&storage));
        let text: Vec<String> = probs.iter().map(ToString::to_string).collect();
        assert_eq!(probs.len(), 4, "{text:#?}");
        assert!(text[0].starts_with("policy.toml:2: encrypted column public.customers.email is stored as character varying(255)"), "{}", text[0]);
        assert!(text[1].starts_with("policy.toml:7: encrypted column public.customers.salary is stored as integer; ciphertext needs bytea"), "{}", text[1]);
        assert!(
            text[2].starts_with("policy.toml:17: column public.customers.missing does not exist"),
            "{}",
            text[2]
        );
        assert!(
            text[3].starts_with(
                "policy.toml:21: column public.customers.age is not encrypted but its type"
            ),
            "{}",
            text[3]
        );
    }

    #[test]
    fn good_storage_has_no_problems() {
        let storage = db(&[
            ("public.customers.email", "text"),
            ("public.customers.salary", "bytea"),
            ("public.customers.notes", "text"),
            ("public.customers.missing", "character varying"),
            ("public.customers.age", "integer"),
        ]);
        assert!(check_text(POLICY, "policy.toml", Some(&storage)).is_empty());
    }
}
