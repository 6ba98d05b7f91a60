//! The policy column a run works on: its name split and resolved against the policy and keyring.

use super::*;

// ---- the policy column ---------------------------------------------------------------------------

/// The policy column being migrated.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// `schema.table.column` as the policy spells it (the key's name in the keyring).
    pub(super) name: String,
    pub(super) schema: String,
    pub(super) table: String,
    pub(super) column: String,
    pub(super) logical: LogicalType,
}

/// Splits `schema.table.column` into its three parts.
pub(super) fn split_column_name(name: &str) -> Result<(&str, &str, &str), MigrateError> {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [s, t, c] if !s.is_empty() && !t.is_empty() && !c.is_empty() => Ok((s, t, c)),
        _ => Err(MigrateError::BadColumnName(
            name.chars().take(200).collect(),
        )),
    }
}

pub(super) fn resolve_policy_column(config: &Config, column: &str) -> Result<Target, MigrateError> {
    split_column_name(column)?;
    let Some(policy_path) = &config.policy else {
        return Err(MigrateError::NoPolicy {
            column: column.to_string(),
            config: config.source.display().to_string(),
        });
    };
    let policy = crate::policy_file::load_policy(config)?;
    // Policy names are folded the way PostgreSQL folds unquoted identifiers (lower case).
    let cp = policy
        .columns()
        .iter()
        .find(|c| c.qualified_name() == column)
        .or_else(|| {
            policy
                .columns()
                .iter()
                .find(|c| c.qualified_name().eq_ignore_ascii_case(column))
        })
        .ok_or_else(|| MigrateError::NotInPolicy {
            column: column.to_string(),
            file: policy_path.display().to_string(),
        })?;
    let name = cp.qualified_name();
    if !cp.encrypt.is_encrypted() {
        return Err(MigrateError::NotEncrypted {
            column: name,
            location: format!("{}:{}", policy_path.display(), cp.line),
        });
    }
    if cp.key == pgcloak_policy::KeyScope::Subject {
        return Err(MigrateError::SubjectKeyed {
            column: name,
            location: format!("{}:{}", policy_path.display(), cp.line),
        });
    }
    let logical = cp.logical_type;
    Ok(Target {
        name,
        schema: cp.schema.clone(),
        table: cp.table.clone(),
        column: cp.column.clone(),
        logical,
    })
}
