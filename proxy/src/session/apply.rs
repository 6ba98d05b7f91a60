//! Applying a statement's plan to its messages: the glue between the session pumps and the pure
//! [`crate::rewrite`] functions. Frontend side: literals, Parse parameter types, Bind parameters,
//! COPY FROM data. Backend side: ParameterDescription, RowDescription and DataRow, COPY TO data.

use bytes::Bytes;
use pgcloak_policy::{
    Access, EncryptMode, Lexed, ListElement, ParamToken, SiteRole, StatementPlan, ValueRef,
};

use super::context::{DataCtx, Refusal, StmtCtx};
use super::subject_targets::SubjectTargets;
use crate::protocol::messages::{self, Bind};
use crate::protocol::reader::Reader;
use crate::rewrite::{
    self, apply_edits, literal_edit, params::param_oid, rows::RowDescription, BindParam,
    ColumnAction, ColumnTarget, CopyOutColumn, CopyOutRewriter, Edit, ListPiece, Replaced, RowCtx,
    RowShape, Storage, SubjectTarget,
};
use crate::services::Services;

/// A failed rewrite as the refusal the client gets (its SQLSTATE and `pgcloak:` message).
pub fn refusal(e: rewrite::RewriteError) -> Refusal {
    Refusal {
        sqlstate: e.sqlstate(),
        message: e.to_string(),
    }
}

fn target<'k>(
    keyring: &'k pgcloak_keymgr::Keyring,
    data: &DataCtx,
    enc: &pgcloak_policy::Encrypt,
    subject: Option<&'k SubjectTarget>,
) -> Result<ColumnTarget<'k>, Refusal> {
    target_stored(keyring, enc, data.storage(&enc.column), subject)
}

/// [`target`] with the column's storage already looked up (`None`: it cannot hold ciphertext).
/// A subject-keyed value must come with its subject's ciphers (never sealed with the column key).
fn target_stored<'k>(
    keyring: &'k pgcloak_keymgr::Keyring,
    enc: &pgcloak_policy::Encrypt,
    storage: Option<Storage>,
    subject: Option<&'k SubjectTarget>,
) -> Result<ColumnTarget<'k>, Refusal> {
    if enc.subject.is_some() && subject.is_none() {
        return Err(Refusal {
            sqlstate: "XX000",
            message: format!(
                "pgcloak: no subject key was resolved for a value of subject-keyed column {}; this is a pgcloak bug, please report the statement's shape",
                enc.column
            ),
        });
    }
    let storage = storage.ok_or_else(|| no_storage(enc))?;
    let mut t = ColumnTarget::for_encrypt(keyring, enc, storage).map_err(refusal)?;
    t.subject = subject;
    Ok(t)
}

/// The refusal of a value for an encrypted column whose storage cannot hold ciphertext.
fn no_storage(enc: &pgcloak_policy::Encrypt) -> Refusal {
    Refusal {
        sqlstate: "42804",
        message: format!(
            "pgcloak: column {} is not stored as bytea, text or varchar (or does not exist), so it cannot hold ciphertext; run `pgcloak check`",
            enc.column
        ),
    }
}

/// Encrypts the literals the plans of `stmts` (statements of one SQL string) ask for, in `sql[..end]`.
/// Returns the rewritten text, or `None` when nothing changes.
/// `subjects`: each statement's subject ciphers ([`SubjectTargets`], in the order of `stmts`; empty
/// when none has subject-keyed values).
pub fn rewrite_literals<'a>(
    guard: &Services,
    sql: &str,
    lexed: &Lexed,
    stmts: impl IntoIterator<Item = &'a StmtCtx>,
    end: usize,
    subjects: &[SubjectTargets],
) -> Result<Option<String>, Refusal> {
    let edits = literal_edits(guard, sql, lexed, stmts, end, subjects)?;
    if edits.is_empty() {
        return Ok(None);
    }
    apply_edits(&sql[..end], edits).map(Some).map_err(refusal)
}

/// The literal replacements the plans of `stmts` ask for, in `sql[..end]`.
fn literal_edits<'a>(
    guard: &Services,
    sql: &str,
    lexed: &Lexed,
    stmts: impl IntoIterator<Item = &'a StmtCtx>,
    end: usize,
    subjects: &[SubjectTargets],
) -> Result<Vec<rewrite::Edit>, Refusal> {
    let keyring = guard.keyring();
    let mut edits = Vec::new();
    for (k, s) in stmts.into_iter().enumerate() {
        let (Some(sp), Some(data)) = (s.statement_plan(), s.data.as_deref()) else {
            continue;
        };
        let subject_of = |e: usize| {
            subjects
                .get(k)
                .and_then(|t| t.get(e))
                .and_then(Option::as_ref)
        };
        for (e, enc) in sp.encryptions.iter().enumerate() {
            let ValueRef::Literal(i) = enc.target else {
                continue;
            };
            let Some(lit) = lexed.literals.get(i) else {
                return Err(Refusal {
                    sqlstate: "42501",
                    message: format!(
                        "pgcloak: the plan names a literal the statement does not have (column {})",
                        enc.column
                    ),
                });
            };
            if lit.span.end > end {
                continue;
            }
            let t = target(&keyring, data, enc, subject_of(e))?;
            // A literal occurs once: its one site.
            let role = enc.sites.first().map_or(SiteRole::Other, |site| site.role);
            edits.push(
                literal_edit(sql, &lexed.literals, i, &t, enc.array, enc.assignment, role)
                    .map_err(refusal)?,
            );
        }
    }
    Ok(edits)
}

/// The encrypted parameters of a plan: `$n`, its encryption.
fn param_encryptions(sp: &StatementPlan) -> impl Iterator<Item = (u32, &pgcloak_policy::Encrypt)> {
    sp.encryptions.iter().filter_map(|e| match e.target {
        ValueRef::Param(n) => Some((n, e)),
        ValueRef::Literal(_) => None,
    })
}

/// The parameters sent to the server as arrays of every key version's ciphertext (`= ANY ($n)`):
/// deterministic scalars whose every site the analysis found compared (`col = $n`, `col <> $n`) or in
/// an `IN` list that can be rewritten whole (every element a literal, NULL or such a parameter). Always,
/// not only once a column was rotated, since drivers keep a prepared statement for the life of the
/// connection and the key may be rotated while it lives. A parameter also stored or used elsewhere
/// stays one scalar of the active version.
fn array_params(sp: &StatementPlan) -> Vec<u32> {
    let mut params: Vec<u32> = param_encryptions(sp)
        .filter(|(_, e)| {
            e.mode == EncryptMode::Deterministic
                && !e.array
                && !e.sites.is_empty()
                && e.sites.iter().all(|site| {
                    matches!(
                        site.role,
                        SiteRole::Compared { .. } | SiteRole::Listed { .. }
                    )
                })
        })
        .map(|(n, _)| n)
        .collect();
    // A list holding a parameter that cannot go as an array cannot be rewritten, so its other
    // parameters cannot either: repeat until nothing changes.
    loop {
        let whole = |list: u32| {
            sp.in_lists.get(list as usize).is_some_and(|l| {
                l.elements.iter().all(|el| match el {
                    ListElement::Value {
                        value: ValueRef::Param(m),
                        ..
                    } => params.contains(m),
                    ListElement::Value { .. } | ListElement::Null => true,
                    ListElement::Other => false,
                })
            })
        };
        let keep: Vec<u32> = param_encryptions(sp)
            .filter(|(n, e)| {
                params.contains(n)
                    && e.sites.iter().all(|site| match site.role {
                        SiteRole::Listed { list } => whole(list),
                        _ => true,
                    })
            })
            .map(|(n, _)| n)
            .collect();
        if keep.len() == params.len() {
            return keep;
        }
        params = keep;
    }
}

/// The `$n` tokens of the plan's statement in `lexed`.
fn statement_params<'l>(lexed: &'l Lexed, sp: &StatementPlan) -> &'l [ParamToken] {
    lexed
        .statements
        .get(sp.index)
        .and_then(|s| lexed.params.get(s.params.clone()))
        .unwrap_or(&[])
}

/// The refusal when the text does not read as the plan says.
fn mismatch(enc: &pgcloak_policy::Encrypt, detail: &'static str) -> Refusal {
    refusal(rewrite::RewriteError::PlanMismatch {
        column: enc.column.clone(),
        detail,
    })
}

/// The span of parameter `$n` at `token` (it must be `$n`).
fn param_span(
    tokens: &[ParamToken],
    token: u32,
    n: u32,
    enc: &pgcloak_policy::Encrypt,
) -> Result<std::ops::Range<usize>, Refusal> {
    match tokens.get(token as usize) {
        Some(p) if p.number == u64::from(n) => Ok(p.span.clone()),
        _ => Err(mismatch(
            enc,
            "a parameter token is not where the plan puts it",
        )),
    }
}

/// A Parse message for `stmt`: literals encrypted in its text, and declared types of encrypted
/// parameters changed to the storage type (the client keeps sending its logical type; the Bind
/// rewrite turns it into ciphertext). Each parameter is rewritten where the plan's sites put it:
/// compared ones as `ANY ($n)`, lists of them as one array comparison, casts to the logical type
/// retargeted to the storage type. `None`: forward the original.
pub fn rewrite_parse(
    guard: &Services,
    body: &[u8],
    stmt: &StmtCtx,
    sql: &str,
    lexed: &Lexed,
    subjects: &SubjectTargets,
) -> Result<Option<Bytes>, Refusal> {
    let (Some(sp), Some(data)) = (stmt.statement_plan(), stmt.data.as_deref()) else {
        return Ok(None);
    };
    let keyring = guard.keyring();
    let msg = messages::parse_message(body).map_err(|e| Refusal {
        sqlstate: "08P01",
        message: format!("pgcloak: {e}"),
    })?;
    let mut edits = literal_edits(
        guard,
        sql,
        lexed,
        [stmt],
        sql.len(),
        std::slice::from_ref(subjects),
    )?;
    let tokens = statement_params(lexed, sp);
    let arrays = array_params(sp);
    let mut types = msg.param_types.clone();
    let mut types_changed = false;
    let mut lists: Vec<(u32, Edit)> = Vec::new();
    for (n, enc) in param_encryptions(sp) {
        // Only the types and the text around the parameter matter here (its value is encrypted
        // at Bind, under its subject's key for a subject-keyed column).
        let t = ColumnTarget::for_encrypt(
            &keyring,
            enc,
            data.storage(&enc.column).ok_or_else(|| no_storage(enc))?,
        )
        .map_err(refusal)?;
        let as_array = arrays.contains(&n);
        for site in &enc.sites {
            let span = param_span(tokens, site.token, n, enc)?;
            // `$n::T`, `CAST($n AS T)`: the server gets the ciphertext, so the cast goes (T must be
            // the column's logical type).
            let range = rewrite::param_range(sql, span.clone(), t.ty, enc.array)
                .map_err(|e| cast_refusal(n, enc, e))?;
            match site.role {
                SiteRole::Compared { negated } if as_array => {
                    if !rewrite::compared_at(sql, &range, negated) {
                        return Err(mismatch(enc, "no comparison operator before the parameter"));
                    }
                    edits.push(Edit {
                        range,
                        text: rewrite::any_of(negated, &format!("${n}")),
                    });
                }
                // The whole list is rewritten once, at its first parameter.
                SiteRole::Listed { list } if as_array && !lists.iter().any(|(l, _)| *l == list) => {
                    let edit =
                        in_list_edit(sql, &lexed.literals, tokens, sp, list, &mut edits, &t, enc)?;
                    lists.push((list, edit));
                }
                SiteRole::Listed { .. } if as_array => {}
                _ if range != span => {
                    // The cast retargeted to the storage type: what the server stores (and what it
                    // needs to type `UNNEST($n)`).
                    edits.push(Edit {
                        range,
                        text: format!("${n}::{}", t.storage.sql_type(enc.array)),
                    });
                }
                _ => {}
            }
        }
        let idx = n as usize - 1;
        if let Some(declared) = types.get_mut(idx) {
            if *declared != 0 {
                *declared = param_oid(t.storage, as_array || enc.array);
                types_changed = true;
            }
        }
    }
    edits.extend(lists.into_iter().map(|(_, e)| e));
    let _ = stmt.any_params.set(arrays);
    let new_sql = if edits.is_empty() {
        None
    } else {
        Some(apply_edits(sql, edits).map_err(refusal)?)
    };
    if new_sql.is_none() && !types_changed {
        return Ok(None);
    }
    let text = new_sql.as_deref().unwrap_or(sql);
    Ok(Some(messages::encode_parse(msg.name, text, &types)))
}

/// The refusal of a parameter for an encrypted column cast to a type that is not the column's.
fn cast_refusal(n: u32, enc: &pgcloak_policy::Encrypt, e: rewrite::LiteralError) -> Refusal {
    let ty = enc.logical_type.name();
    let what = match e {
        rewrite::LiteralError::Unsupported(what) => what,
        _ => "a cast pgcloak cannot read",
    };
    let what = what.replace("a literal", "a parameter");
    Refusal {
        sqlstate: "0A000",
        message: format!(
            "pgcloak: parameter ${n} for encrypted column {} is {what}; cast it to {ty} (the column's logical type) or drop the cast",
            enc.column
        ),
    }
}

/// `[NOT] IN (e1, ..., ek)` (list `list` of the plan) with an encrypted parameter among its elements,
/// as `= ANY (x1 || ... || xk)` (`<> ALL` for NOT IN; NULL elements keep their meaning): each
/// parameter becomes an array of its ciphertexts under every key version (`$n::T[]`), each literal the
/// array of its own (its edit, taken out of `edits`, is folded in). Every element is located where the
/// plan puts it and the list must read so in the text.
#[allow(
    clippy::too_many_arguments,
    reason = "one list's whole context, each used once"
)]
fn in_list_edit(
    sql: &str,
    literals: &[pgcloak_policy::Literal],
    tokens: &[ParamToken],
    sp: &StatementPlan,
    list: u32,
    edits: &mut Vec<Edit>,
    t: &ColumnTarget<'_>,
    enc: &pgcloak_policy::Encrypt,
) -> Result<Edit, Refusal> {
    let Some(plan_list) = sp.in_lists.get(list as usize) else {
        return Err(mismatch(enc, "the plan names a list it does not have"));
    };
    let ty = t.storage.sql_type(true);
    let mut pieces = Vec::with_capacity(plan_list.elements.len());
    let mut located = Vec::with_capacity(plan_list.elements.len());
    let mut folded = Vec::new();
    for el in &plan_list.elements {
        match *el {
            ListElement::Value {
                value: ValueRef::Param(m),
                token,
            } => {
                let span = param_span(tokens, token, m, enc)?;
                let range = rewrite::param_range(sql, span, t.ty, false)
                    .map_err(|e| cast_refusal(m, enc, e))?;
                located.push(ListPiece::At(range));
                pieces.push(format!("${m}::{ty}"));
            }
            ListElement::Value {
                value: ValueRef::Literal(l),
                ..
            } => {
                // The literal's own edit (its range covers the literal, with casts and sign).
                let span = literals.get(l).map(|lit| lit.span.clone());
                let Some(i) = span.and_then(|span| {
                    edits
                        .iter()
                        .position(|e| e.range.start <= span.start && span.end <= e.range.end)
                }) else {
                    return Err(mismatch(enc, "a literal of the list has no replacement"));
                };
                let Some(edit) = edits.get(i) else {
                    return Err(mismatch(enc, "a literal of the list has no replacement"));
                };
                located.push(ListPiece::At(edit.range.clone()));
                pieces.push(format!("ARRAY[{}]::{ty}", edit.text));
                folded.push(i);
            }
            ListElement::Null => {
                located.push(ListPiece::Null);
                pieces.push(format!("ARRAY[NULL]::{ty}"));
            }
            ListElement::Other => {
                return Err(mismatch(enc, "a list element the proxy cannot rewrite"));
            }
        }
    }
    let range = rewrite::in_list_range(sql, &located, plan_list.negated)
        .ok_or_else(|| mismatch(enc, "the IN list is not where the plan puts it"))?;
    folded.sort_unstable();
    folded.dedup();
    for i in folded.into_iter().rev() {
        edits.remove(i);
    }
    let op = if plan_list.negated { "<>" } else { "=" };
    Ok(Edit {
        range,
        text: format!(
            "{op} {}",
            rewrite::any_of(plan_list.negated, &pieces.join(" || "))
        ),
    })
}

/// Encrypts the Bind parameters the statement's plan asks for. The Bind is read once, as `bind`:
/// integer widening and scalar-to-array wrapping put their values in [`Replaced`], and encryption
/// writes the one new frame.
pub fn rewrite_bind(
    guard: &Services,
    bind: &Bind<'_>,
    stmt: &StmtCtx,
    subjects: &SubjectTargets,
) -> Result<Option<Bytes>, Refusal> {
    let (Some(sp), Some(data)) = (stmt.statement_plan(), stmt.data.as_deref()) else {
        return Ok(None);
    };
    let any = stmt.any_params.get().map(Vec::as_slice).unwrap_or(&[]);
    let keyring = guard.keyring();
    let storage = stmt.param_storage.get_or_init(|| {
        param_encryptions(sp)
            .map(|(_, enc)| data.storage(&enc.column))
            .collect()
    });
    let mut params = Vec::with_capacity(storage.len());
    let subject_of = |enc: &pgcloak_policy::Encrypt| {
        if subjects.is_empty() {
            return None;
        }
        let e = sp.encryptions.iter().position(|x| std::ptr::eq(x, enc))?;
        subjects.get(e)?.as_ref()
    };
    for ((n, enc), &storage) in param_encryptions(sp).zip(storage) {
        params.push(BindParam {
            index: n,
            target: target_stored(&keyring, enc, storage, subject_of(enc))?,
            array: enc.array,
            assignment: enc.assignment,
        });
    }
    if params.is_empty() {
        return Ok(None);
    }
    let mut replaced = Replaced::default();
    widen_integers(bind, stmt, &params, &mut replaced)?;
    if !any.is_empty() {
        // `col = ANY($n)`: the client's scalar becomes a one-element array, encrypted under every
        // version.
        wrap_scalars(bind, &params, any, &mut replaced);
        for p in params.iter_mut() {
            if any.contains(&p.index) {
                p.array = true;
            }
        }
    }
    rewrite::rewrite_bind(bind, &params, &replaced).map_err(refusal)
}

/// Turns the scalar values of parameters `any` into one-element arrays of the logical type, in the
/// parameter's own format (after any widening).
fn wrap_scalars(bind: &Bind<'_>, params: &[BindParam<'_>], any: &[u32], replaced: &mut Replaced) {
    for p in params.iter().filter(|p| any.contains(&p.index)) {
        let Some(i) = (p.index as usize).checked_sub(1) else {
            continue;
        };
        let Some(v) = replaced.value(bind, i) else {
            continue;
        };
        let format = if bind.param_format(i) == 1 {
            rewrite::Format::Binary
        } else {
            rewrite::Format::Text
        };
        let wrapped = rewrite::array::one_element_array(v, p.target.ty.oid(), format);
        replaced.set(i, wrapped);
    }
}

/// Drivers encode an integer in the type they declared (psycopg: the smallest of int2/int4/int8 that
/// fits); an encrypted integer column's logical type may be another width. Binary values of a declared
/// integer type are converted to the logical width (range-checked), so `42` encrypts identically
/// whatever width it was sent in.
fn widen_integers(
    bind: &Bind<'_>,
    stmt: &StmtCtx,
    params: &[BindParam<'_>],
    replaced: &mut Replaced,
) -> Result<(), Refusal> {
    use pgcloak_keymgr::LogicalType as T;
    let declared = stmt.param_types.get().map(Vec::as_slice).unwrap_or(&[]);
    if declared.is_empty() {
        return Ok(());
    }
    let width = |oid: u32| match oid {
        21 => Some(2usize),
        23 => Some(4),
        20 => Some(8),
        _ => None,
    };
    for p in params.iter().filter(|p| !p.array) {
        let Some(i) = (p.index as usize).checked_sub(1) else {
            continue;
        };
        let Some(from) = declared.get(i).copied().and_then(width) else {
            continue;
        };
        let to = match p.target.ty {
            T::Int4 => 4,
            T::Int8 => 8,
            _ => continue,
        };
        if from == to || bind.param_format(i) != 1 {
            continue;
        }
        let Some(v) = bind.value(i) else {
            continue;
        };
        let bad = || Refusal {
            sqlstate: "22003",
            message: format!(
                "pgcloak: parameter ${} for encrypted column {} is out of range for its type",
                i + 1,
                p.target.column()
            ),
        };
        if v.len() != from {
            return Err(bad());
        }
        let n: i64 = match *v {
            [a, b] => i64::from(i16::from_be_bytes([a, b])),
            [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
            _ => return Err(bad()),
        };
        let out = if to == 4 {
            i32::try_from(n).map_err(|_| bad())?.to_be_bytes().to_vec()
        } else {
            n.to_be_bytes().to_vec()
        };
        replaced.set(i, out);
    }
    Ok(())
}

/// ParameterDescription: encrypted parameters are presented with their logical types.
pub fn rewrite_parameter_description(
    body: &[u8],
    stmt: &StmtCtx,
) -> Result<Option<Bytes>, rewrite::RewriteError> {
    let Some(sp) = stmt.statement_plan() else {
        return Ok(None);
    };
    // Parameters rewritten to `= ANY($n)` are arrays to the server and scalars to the client.
    // Array parameters (`= ANY($n)`, `UNNEST($n)`) are presented as arrays of the logical type.
    let params: Vec<(u32, pgcloak_keymgr::LogicalType)> = param_encryptions(sp)
        .map(|(n, e)| (n, e.logical_type))
        .collect();
    if params.is_empty() {
        return Ok(None);
    }
    let any = stmt.any_params.get().map(Vec::as_slice).unwrap_or(&[]);
    let (scalars_as_arrays, rest): (Vec<_>, Vec<_>) =
        params.into_iter().partition(|(n, _)| any.contains(n));
    let mut oids = rewrite::parse_parameter_description(body)?;
    rewrite::present_parameter_types(&mut oids, &rest);
    for (n, ty) in scalars_as_arrays {
        if let Some(slot) = oids.get_mut(n as usize - 1) {
            *slot = ty.oid();
        }
    }
    // As PostgreSQL does, a parameter whose type the client declared in Parse is described with that
    // type (pgJDBC declares varchar for strings and refuses a description that changes it).
    let declared = stmt.param_types.get().map(Vec::as_slice).unwrap_or(&[]);
    for (slot, &t) in oids.iter_mut().zip(declared) {
        if t != 0 {
            *slot = t;
        }
    }
    rewrite::encode_parameter_description(&oids).map(Some)
}

/// The action for each result column: what the plan says, overridden by what the server says the
/// column is (table oid + attnum of a direct column reference) — so a protected column is handled
/// by its own policy wherever it appears, even where the analysis could not place it.
pub fn row_actions(
    stmt: &StmtCtx,
    rd: &RowDescription,
) -> Result<Vec<ColumnAction>, rewrite::RewriteError> {
    let outputs = stmt
        .statement_plan()
        .map(|p| p.outputs.as_slice())
        .unwrap_or(&[]);
    let mut actions = rewrite::rows::actions_for(outputs, rd.fields.len())?;
    let Some(data) = stmt.data.as_deref() else {
        return Ok(actions);
    };
    for (i, f) in rd.fields.iter().enumerate() {
        if f.table_oid == 0 {
            continue;
        }
        let Some(t) = data.catalog.by_oid.get(&f.table_oid) else {
            continue;
        };
        let Some(c) = t.columns.get(&f.attnum) else {
            continue;
        };
        if let Some(a) = column_action(data, &t.schema, &t.name, c) {
            actions[i] = a;
        }
    }
    Ok(actions)
}

/// What the role gets for a value of a policy column, `None` for a column the policy does not name.
fn column_action(data: &DataCtx, schema: &str, table: &str, column: &str) -> Option<ColumnAction> {
    let col = data.policy.column(schema, table, column)?;
    let encrypted = col.encrypt.is_encrypted();
    let name = col.qualified_name();
    let ty = col.logical_type;
    let access = data.role().read_column(col);
    if data.shadow.is_some() && access != Access::Plaintext {
        // A shadow role gets what the server returns (see DataCtx::shadow).
        return Some(ColumnAction::PassThrough);
    }
    Some(match access {
        Access::Plaintext if encrypted => ColumnAction::Decrypt {
            column: name,
            ty,
            class: col.class,
        },
        Access::Plaintext => ColumnAction::PassThrough,
        Access::Masked => ColumnAction::Mask {
            column: name,
            ty,
            mask: col.mask,
            encrypted,
            class: col.class,
        },
        Access::Null | Access::Deny => ColumnAction::Null { class: col.class },
    })
}

/// The rewriter for `COPY ... TO STDOUT` data of `stmt` (given the CopyOutResponse body), or `None`
/// when every field passes through.
pub fn copy_out_rewriter(
    stmt: &StmtCtx,
    body: &[u8],
) -> Result<Option<CopyOutRewriter>, rewrite::RewriteError> {
    let (Some(sp), Some(data)) = (stmt.statement_plan(), stmt.data.as_deref()) else {
        return Ok(None);
    };
    let Some(copy) = &sp.copy else {
        return Ok(None);
    };
    if copy.direction != pgcloak_policy::CopyDirection::To {
        return Ok(None);
    }
    let mut r = Reader::server(body, "CopyOutResponse");
    let n = r.u8().and_then(|_| r.i16())?.max(0) as usize;
    let actions: Vec<ColumnAction> = match &copy.table {
        Some(table) => {
            let (schema, name) = table.split_once('.').unwrap_or(("public", table));
            copy.columns
                .iter()
                .map(|c| {
                    column_action(data, schema, name, &c.name).unwrap_or(ColumnAction::PassThrough)
                })
                .collect()
        }
        None => rewrite::rows::actions_for(&sp.outputs, n)?,
    };
    if actions.iter().all(|a| *a == ColumnAction::PassThrough) {
        return Ok(None);
    }
    let columns = actions
        .into_iter()
        .map(|action| {
            let storage = match &action {
                ColumnAction::Decrypt { column, .. } | ColumnAction::Mask { column, .. } => {
                    data.storage(column)
                }
                _ => None,
            };
            CopyOutColumn { action, storage }
        })
        .collect();
    CopyOutRewriter::new(copy, columns).map(Some)
}

/// [`describe_rows`] remembered per statement: the analysis of a RowDescription depends only on its
/// bytes and the statement's plan, policy, role and catalog, which are fixed for a statement context.
pub fn describe_rows_cached(
    stmt: &StmtCtx,
    body: &[u8],
) -> Result<(Option<Bytes>, RowShape), rewrite::RewriteError> {
    let mut last = stmt
        .last_description
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(d) = last.as_ref().filter(|d| d.server_body == body) {
        return Ok((d.frame.clone(), d.shape.clone()));
    }
    let (frame, shape) = describe_rows(stmt, body)?;
    *last = Some(super::context::Described {
        server_body: body.to_vec(),
        frame: frame.clone(),
        shape: shape.clone(),
    });
    Ok((frame, shape))
}

/// RowDescription: the actions for its columns and the frame to forward (`None`: unchanged).
pub fn describe_rows(
    stmt: &StmtCtx,
    body: &[u8],
) -> Result<(Option<Bytes>, RowShape), rewrite::RewriteError> {
    let rd = RowDescription::parse(body)?;
    let actions = row_actions(stmt, &rd)?;
    if actions.iter().all(|a| *a == ColumnAction::PassThrough) {
        return Ok((None, RowShape::new(&rd, &actions)?));
    }
    let (frame, shape) = rewrite::rewrite_row_description(body, &actions)?;
    Ok((Some(frame), shape))
}

/// The row context for rewriting rows, over a keyring the caller took once for a whole result or
/// COPY (a reload applies from the next one).
///
/// A value is only ever decrypted with the key of the column it is read from: a ciphertext found in
/// another column (copied there around the proxy) stays closed even for a role that could read its
/// own column, as its associated data binds it to that column. Columns the analysis cannot place
/// (views, expressions) keep their ciphertext.
pub fn row_ctx<'a>(
    guard: &'a Services,
    keyring: &'a pgcloak_keymgr::Keyring,
    subjects: &'a Subjects<'a>,
) -> RowCtx<'a> {
    fn never(_: &str) -> bool {
        false
    }
    RowCtx {
        keyring,
        may_read_plaintext: &never,
        mask_hash_key: guard.mask_key(),
        subjects,
    }
}

/// The subject keys as a result's rows see them: the proxy's cache, and why the key table cannot
/// be read when the last fetch failed (then a key not cached fails the row instead of being
/// fetched again).
pub struct Subjects<'a> {
    pub services: &'a Services,
    pub unavailable: Option<&'a str>,
    /// Keys fetched for this session's current results.
    pub fetched: &'a std::collections::HashMap<
        pgcloak_keymgr::SubjectKeyId,
        Option<std::sync::Arc<pgcloak_keymgr::SubjectDek>>,
    >,
}

impl rewrite::SubjectSource for Subjects<'_> {
    fn key(&self, id: &pgcloak_keymgr::SubjectKeyId) -> rewrite::SubjectLookup {
        match self.services.subject_keys.cached(id) {
            crate::subjects::Lookup::Key(k) => rewrite::SubjectLookup::Key(k),
            crate::subjects::Lookup::Absent => rewrite::SubjectLookup::Absent,
            crate::subjects::Lookup::Unknown => match (self.fetched.get(id), self.unavailable) {
                (Some(Some(k)), _) => rewrite::SubjectLookup::Key(k.clone()),
                (Some(None), _) => rewrite::SubjectLookup::Absent,
                (None, Some(r)) => rewrite::SubjectLookup::Unavailable(r.to_string()),
                (None, None) => rewrite::SubjectLookup::Unknown,
            },
        }
    }

    fn erased(&self, column: &str) -> pgcloak_policy::Erased {
        let mut parts = column.splitn(3, '.');
        let (Some(schema), Some(table), Some(col)) = (parts.next(), parts.next(), parts.next())
        else {
            return pgcloak_policy::Erased::Null;
        };
        self.services
            .policy()
            .column(schema, table, col)
            .map_or(pgcloak_policy::Erased::Null, |c| c.erased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::rows::{Field, RowDescription};
    use pgcloak_policy::StatementKind;

    fn rd_body(names: &[&str]) -> Vec<u8> {
        let fields = names
            .iter()
            .map(|n| Field {
                name: n.as_bytes().to_vec(),
                table_oid: 0,
                attnum: 0,
                type_oid: 25,
                typlen: -1,
                typmod: -1,
                format: 0,
            })
            .collect();
        RowDescription { fields }.to_frame().unwrap()[5..].to_vec()
    }

    #[test]
    fn a_repeated_row_description_is_served_from_the_statement_cache() {
        let stmt = StmtCtx::plain(StatementKind::Select, "SELECT a, b".into(), 1);
        let first = rd_body(&["a", "b"]);
        let (frame, shape) = describe_rows_cached(&stmt, &first).unwrap();
        assert!(
            frame.is_none(),
            "nothing to rewrite for unprotected columns"
        );
        assert_eq!(shape, describe_rows(&stmt, &first).unwrap().1);
        let cached = stmt.last_description.lock().unwrap().clone().unwrap();
        assert_eq!(cached.server_body, first);

        // Same bytes again: the remembered answer comes back, not a fresh rewrite (a marker frame
        // planted in the cache proves which one was used).
        let marker = Bytes::from_static(b"T-marker");
        stmt.last_description
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .frame = Some(marker.clone());
        let (again, _) = describe_rows_cached(&stmt, &first).unwrap();
        assert_eq!(again, Some(marker));

        // Different bytes (the statement was re-described after DDL): recomputed and remembered.
        let second = rd_body(&["a", "b", "c"]);
        let (frame, shape) = describe_rows_cached(&stmt, &second).unwrap();
        assert!(frame.is_none());
        assert_eq!(shape, describe_rows(&stmt, &second).unwrap().1);
        let cached = stmt.last_description.lock().unwrap().clone().unwrap();
        assert_eq!(cached.server_body, second);
        assert!(cached.frame.is_none());
    }
}
