//! The plan names every place a value to encrypt occurs and what the statement does with it there
//! (stored, compared, listed, anything else). The proxy rewrites by these sites alone, so each case
//! below is a rewrite the proxy will or will not make.

mod common;

use common::plan_for;
use pgcloak_policy::{lex, InList, ListElement, SiteRole, StatementPlan, ValueRef};

fn one(role: &str, sql: &str) -> StatementPlan {
    let mut plan = plan_for(role, sql);
    assert_eq!(plan.statements.len(), 1, "{sql}");
    plan.statements.remove(0)
}

/// `(target, column, [(token, role)])`.
type Sites = (String, String, Vec<(u32, SiteRole)>);

/// Each encryption's sites, in plan order.
fn sites(sp: &StatementPlan) -> Vec<Sites> {
    sp.encryptions
        .iter()
        .map(|e| {
            let t = match e.target {
                ValueRef::Param(n) => format!("${n}"),
                ValueRef::Literal(i) => format!("#{i}"),
            };
            let col = e.column.rsplit('.').next().unwrap_or(&e.column).to_string();
            (t, col, e.sites.iter().map(|s| (s.token, s.role)).collect())
        })
        .collect()
}

fn s(t: &str, col: &str, list: &[(u32, SiteRole)]) -> Sites {
    (t.to_string(), col.to_string(), list.to_vec())
}

const EQ: SiteRole = SiteRole::Compared { negated: false };
const NE: SiteRole = SiteRole::Compared { negated: true };

#[test]
fn an_equality_with_a_bare_right_value_is_a_comparison() {
    for sql in [
        "SELECT id FROM customers WHERE email = $1",
        "SELECT id FROM customers WHERE email = $1::text",
        "SELECT id FROM customers WHERE email = CAST($1 AS text)",
        "SELECT id FROM customers WHERE customers.email = $1",
    ] {
        assert_eq!(
            sites(&one("app", sql)),
            vec![s("$1", "email", &[(0, EQ)])],
            "{sql}"
        );
    }
    let sp = one("app", "SELECT id FROM customers WHERE email = 'a@b.c'");
    assert_eq!(sites(&sp), vec![s("#0", "email", &[(0, EQ)])]);
}

#[test]
fn inequality_is_a_negated_comparison() {
    for sql in [
        "SELECT id FROM customers WHERE email <> $1",
        "SELECT id FROM customers WHERE email != $1",
    ] {
        assert_eq!(
            sites(&one("app", sql)),
            vec![s("$1", "email", &[(0, NE)])],
            "{sql}"
        );
    }
}

#[test]
fn anything_but_a_bare_right_operand_is_other() {
    for sql in [
        // The value on the left: the proxy does not turn `'x' = col` around.
        "SELECT id FROM customers WHERE $1 = email",
        // Parenthesised: not the plain shape the proxy splices.
        "SELECT id FROM customers WHERE email = ($1)",
        "SELECT id FROM customers WHERE email IS DISTINCT FROM $1",
        "SELECT id FROM customers WHERE CASE email WHEN $1 THEN true ELSE false END",
    ] {
        let got = sites(&one("app", sql));
        assert_eq!(got.len(), 1, "{sql}: {got:?}");
        assert_eq!(got[0].2, vec![(0, SiteRole::Other)], "{sql}");
    }
}

#[test]
fn stored_values_are_stored() {
    let sp = one(
        "app",
        "INSERT INTO customers (email, phone) VALUES ($1, $2)",
    );
    assert_eq!(
        sites(&sp),
        vec![
            s("$1", "email", &[(0, SiteRole::Stored)]),
            s("$2", "phone", &[(1, SiteRole::Stored)]),
        ]
    );
    let sp = one("app", "UPDATE customers SET email = 'x@y.z' WHERE id = 1");
    assert_eq!(sites(&sp), vec![s("#0", "email", &[(0, SiteRole::Stored)])]);
}

#[test]
fn a_parameter_written_twice_has_a_site_per_token() {
    let sp = one("app", "UPDATE customers SET email = $1 WHERE email = $1");
    let got = sites(&sp);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "$1");
    let mut roles = got[0].2.clone();
    roles.sort_by_key(|(t, _)| *t);
    assert_eq!(roles, vec![(0, SiteRole::Stored), (1, EQ)]);
    assert!(sp.encryptions[0].assignment, "stored somewhere: assignment");
}

#[test]
fn in_lists_carry_their_elements() {
    let sp = one(
        "app",
        "SELECT id FROM customers WHERE email IN ($1, 'x@y.z', NULL)",
    );
    assert_eq!(
        sp.in_lists,
        vec![InList {
            negated: false,
            elements: vec![
                ListElement::Value {
                    value: ValueRef::Param(1),
                    token: 0
                },
                ListElement::Value {
                    value: ValueRef::Literal(0),
                    token: 0
                },
                ListElement::Null,
            ],
        }]
    );
    let got = sites(&sp);
    let listed = SiteRole::Listed { list: 0 };
    assert!(got.contains(&s("$1", "email", &[(0, listed)])), "{got:?}");
    assert!(got.contains(&s("#0", "email", &[(0, listed)])), "{got:?}");

    let sp = one(
        "app",
        "SELECT id FROM customers WHERE phone NOT IN ($2, ($1))",
    );
    assert_eq!(sp.in_lists.len(), 1, "{:?}", sp.decision);
    assert!(sp.in_lists[0].negated);
    assert_eq!(
        sp.in_lists[0].elements[0],
        ListElement::Value {
            value: ValueRef::Param(2),
            token: 0
        }
    );
    // Parenthesised: encrypted, but the list is not one the proxy rewrites as a whole.
    assert_eq!(sp.in_lists[0].elements[1], ListElement::Other);
    assert!(sites(&sp).contains(&s("$1", "phone", &[(1, SiteRole::Other)])));
}

#[test]
fn two_lists_are_numbered_in_order() {
    let sp = one(
        "app",
        "SELECT id FROM customers WHERE email IN ($1) OR phone IN ($2, $3)",
    );
    assert_eq!(sp.in_lists.len(), 2);
    let got = sites(&sp);
    assert!(got.contains(&s("$1", "email", &[(0, SiteRole::Listed { list: 0 })])));
    assert!(got.contains(&s("$3", "phone", &[(2, SiteRole::Listed { list: 1 })])));
}

#[test]
fn array_comparisons_are_other() {
    let sp = one("app", "SELECT id FROM customers WHERE email = ANY($1)");
    let got = sites(&sp);
    assert_eq!(got, vec![s("$1", "email", &[(0, SiteRole::Other)])]);
    assert!(sp.encryptions[0].array);
}

#[test]
fn execute_arguments_are_other_and_lists_are_dropped() {
    let plan = plan_for(
        "app",
        "PREPARE q(text) AS SELECT id FROM customers WHERE email IN ($1); EXECUTE q('a@b.c')",
    );
    assert_eq!(plan.statements.len(), 2);
    let exec = plan.statements[1].bind_execute(Some(&plan.statements[0]));
    assert_eq!(exec.encryptions.len(), 1, "{:?}", exec.encryptions);
    assert_eq!(
        exec.encryptions[0]
            .sites
            .iter()
            .map(|s| s.role)
            .collect::<Vec<_>>(),
        vec![SiteRole::Other]
    );
    assert!(exec.in_lists.is_empty());
}

#[test]
fn the_lexer_lists_every_parameter_token_per_statement() {
    let sql = "SELECT $1, '$2', $3 -- $4\n; SELECT $1";
    let l = lex(sql);
    let numbers: Vec<u64> = l.params.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![1, 3, 1]);
    assert_eq!(&sql[l.params[1].span.clone()], "$3");
    assert_eq!(l.statements.len(), 2);
    assert_eq!(l.statements[0].params, 0..2);
    assert_eq!(l.statements[1].params, 2..3);
}
