//! The subject keys a statement's values are encrypted under (`key = "subject"` columns): found
//! before the statement is rewritten, since that needs the key table (the rewrite itself never
//! waits).
//!
//! For each such value the plan says where the statement gives its subject (a literal or a Bind
//! parameter, [`pgcloak_policy::SubjectValue`]). The subject id is read there, put in canonical form
//! for the subject column's type ([`crate::subjects::canonical_id`]), turned into its reference,
//! and the keys are resolved: created on first write for stored values; for comparisons only read,
//! and a subject without a key (never written, or erased) gets a throwaway key, so its comparison
//! matches nothing, as no row of it can hold the value.

use pgcloak_keymgr::{Mode, SubjectCipher, SubjectKeyId};
use pgcloak_policy::{Lexed, SiteRole, StatementPlan, SubjectValue, ValueRef};

use super::context::{DataCtx, Refusal, StmtCtx};
use crate::protocol::messages::Bind;
use crate::rewrite::{decode_literal, Format, SubjectTarget};
use crate::services::Services;

/// The subject ciphers of a statement's encryptions, in the plan's order (`None`: the column is
/// keyed by column). Empty when the plan has no subject-keyed value.
pub type SubjectTargets = Vec<Option<SubjectTarget>>;

/// Whether any value of the plan is encrypted under a subject's key.
pub fn has_subject_values(sp: &StatementPlan) -> bool {
    sp.encryptions.iter().any(|e| e.subject.is_some())
}

/// Whether `stmt`'s Bind carries values encrypted under a subject's key.
pub fn binds_subject_values(stmt: &StmtCtx) -> bool {
    stmt.statement_plan().is_some_and(|sp| {
        sp.encryptions
            .iter()
            .any(|e| e.subject.is_some() && matches!(e.target, ValueRef::Param(_)))
    })
}

/// Where the subject ids of a statement can be read: its SQL text (for literals) and its Bind (for
/// parameters).
pub struct SubjectSources<'a> {
    pub sql: Option<(&'a str, &'a Lexed)>,
    pub bind: Option<&'a Bind<'a>>,
}

fn refusal(sqlstate: &'static str, message: String) -> Refusal {
    Refusal { sqlstate, message }
}

/// The subject id a value's subject is given as, in canonical form.
fn subject_id(
    data: &DataCtx,
    column: &str,
    given: SubjectValue,
    from: &SubjectSources<'_>,
) -> Result<Vec<u8>, Refusal> {
    let mut parts = column.splitn(3, '.');
    let (schema, table) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let subject_col = data
        .policy
        .table_policy(schema, table)
        .map(|t| format!("{schema}.{table}.{}", t.subject))
        .ok_or_else(|| {
            refusal(
                "42501",
                format!("pgcloak: column {column} is subject-keyed but its table names no subject"),
            )
        })?;
    let ty = data
        .catalog
        .storage
        .get(&subject_col)
        .map(String::as_str)
        .unwrap_or("text");
    let bad = |why: String| {
        refusal(
            "22023",
            format!(
                "pgcloak: the subject of a value of {column} ({subject_col}) cannot be read: {why}"
            ),
        )
    };
    let value = match given {
        SubjectValue::Elements(_) => {
            return Err(refusal(
                "0A000",
                format!(
                    "pgcloak: bulk inserts of subject-keyed column {column} through arrays (UNNEST) are not supported yet; insert with VALUES rows (each naming {subject_col})"
                ),
            ))
        }
        SubjectValue::Value(ValueRef::Literal(i)) => {
            let (sql, lexed) = from.sql.ok_or_else(|| bad("the statement text is not at hand".into()))?;
            let lit = lexed
                .literals
                .get(i)
                .ok_or_else(|| bad("the plan names a literal the statement does not have".into()))?;
            let text = decode_literal(sql, lit).map_err(|e| bad(e.to_string()))?;
            return crate::subjects::canonical_id(ty, text.as_bytes(), Format::Text).map_err(bad);
        }
        SubjectValue::Value(ValueRef::Param(n)) => {
            let bind = from.bind.ok_or_else(|| {
                refusal(
                    "0A000",
                    format!(
                        "pgcloak: a literal value of subject-keyed column {column} in a prepared statement whose subject ({subject_col}) is parameter ${n}; pass the value as a parameter too"
                    ),
                )
            })?;
            let i = (n as usize).saturating_sub(1);
            let format = match bind.param_format(i) {
                1 => Format::Binary,
                _ => Format::Text,
            };
            let value = bind
                .value(i)
                .ok_or_else(|| bad(format!("parameter ${n} is NULL")))?;
            (value, format)
        }
    };
    crate::subjects::canonical_id(ty, value.0, value.1).map_err(bad)
}

/// Which values of a statement are encrypted now: its literals (Query, Parse) or its parameters
/// (Bind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    Literals,
    Params,
}

/// Resolves the subject ciphers of the subject-keyed `values` of `stmt` (reading the key table for
/// keys not cached, creating the keys of stored values on first write).
pub async fn resolve(
    services: &Services,
    stmt: &StmtCtx,
    values: Values,
    from: SubjectSources<'_>,
) -> Result<SubjectTargets, Refusal> {
    let (Some(sp), Some(data)) = (stmt.statement_plan(), stmt.data.as_deref()) else {
        return Ok(Vec::new());
    };
    if !has_subject_values(sp) {
        return Ok(Vec::new());
    }
    let keyring = services.keyring();
    // Per value: its column's cipher, the key ids it needs (active version first), and whether
    // it is stored (keys created) or compared.
    let mut wanted: Vec<Option<(usize, Vec<SubjectKeyId>, bool)>> = Vec::new();
    let mut ids = Vec::new();
    let mut create = Vec::new();
    for enc in &sp.encryptions {
        let now = match enc.target {
            ValueRef::Literal(_) => values == Values::Literals,
            ValueRef::Param(_) => values == Values::Params,
        };
        let Some(given) = enc.subject.filter(|_| now) else {
            wanted.push(None);
            continue;
        };
        let cipher = keyring.cipher(&enc.column).ok_or_else(|| {
            refusal(
                "55000",
                format!("pgcloak: column {} is encrypted by the policy but has no key in the keyring; run `pgcloak keys init`", enc.column),
            )
        })?;
        let subject =
            services
                .subject_keys
                .reference(&subject_id(data, &enc.column, given, &from)?);
        let stored = enc.sites.iter().any(|s| s.role == SiteRole::Stored);
        let versions = match (stored, cipher.mode()) {
            (false, Mode::Deterministic) => cipher.versions(),
            _ => vec![cipher.active_version()],
        };
        let keys: Vec<SubjectKeyId> = versions
            .into_iter()
            .map(|version| SubjectKeyId {
                subject,
                key_id: cipher.key_id(),
                version,
            })
            .collect();
        wanted.push(Some((ids.len(), keys.clone(), stored)));
        create.extend(keys.iter().map(|_| stored));
        ids.extend(keys);
    }
    // Two lookups at most: the keys to create, the keys only read.
    let failed = |e: String| {
        refusal(
            "58000",
            format!("pgcloak: values of subject-keyed columns cannot be encrypted now: {e}"),
        )
    };
    let (to_create, to_read): (Vec<usize>, Vec<usize>) = (0..ids.len()).partition(|&i| create[i]);
    let mut found = vec![None; ids.len()];
    for (which, make) in [(to_create, true), (to_read, false)] {
        if which.is_empty() {
            continue;
        }
        let these: Vec<SubjectKeyId> = which.iter().map(|&i| ids[i]).collect();
        let got = services
            .subject_keys
            .resolve(&these, make)
            .await
            .map_err(failed)?;
        for (i, k) in which.into_iter().zip(got) {
            found[i] = k;
        }
    }
    let mut out = Vec::with_capacity(wanted.len());
    for (enc, w) in sp.encryptions.iter().zip(wanted) {
        let Some((at, keys, stored)) = w else {
            out.push(None);
            continue;
        };
        let mode = keyring
            .cipher(&enc.column)
            .map_or(Mode::Randomized, |c| c.mode());
        let mut ciphers = Vec::with_capacity(keys.len());
        for (j, id) in keys.iter().enumerate() {
            let dek = match found.get(at + j).cloned().flatten() {
                Some(k) => k,
                None if stored => {
                    return Err(refusal(
                        "55000",
                        format!("pgcloak: the data subject of a value of {} was erased while the statement was being written; run it again", enc.column),
                    ))
                }
                // No key: nothing of the subject is stored under it, so nothing may match.
                None => std::sync::Arc::new(services.subject_keys.throwaway(id).map_err(|e| failed(e.to_string()))?),
            };
            ciphers.push(
                SubjectCipher::new(&enc.column, mode, *id, &dek)
                    .map_err(|e| failed(e.to_string()))?,
            );
        }
        out.push(Some(SubjectTarget { ciphers }));
    }
    Ok(out)
}
