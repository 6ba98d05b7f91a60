//! Which subject each value of a subject-keyed column belongs to, as the analysis finds it in
//! INSERT, UPDATE, ON CONFLICT, comparisons and COPY FROM; statements that do not say are refused.

use pgcloak_policy::{analyze, lex, Catalog, Decision, Plan, Policy, SubjectValue, ValueRef};

const POLICY: &str = r#"
[[table]]
name = "public.customers"
subject = "id"

[[column]]
name = "public.customers.phone"
class = "confidential"
encrypt = "deterministic"
key = "subject"

[[column]]
name = "public.customers.email"
class = "confidential"
encrypt = "randomized"

[[column]]
name = "public.accounts.iban"
class = "confidential"
encrypt = "randomized"

[[role]]
name = "app"
read = { confidential = "plaintext" }
write = ["confidential"]
"#;

fn plan(sql: &str) -> Plan {
    let p = Policy::parse(POLICY, "policy.toml").expect("policy parses");
    let c = Catalog::new()
        .with_table("public", "customers", ["id", "phone", "email"])
        .with_table("public", "accounts", ["id", "iban"]);
    analyze(sql, &lex(sql), &c, &p, p.role_named("app").unwrap())
}

/// (target, subject) of each encryption of the first statement; panics on a refusal.
fn subjects(sql: &str) -> Vec<(ValueRef, Option<SubjectValue>)> {
    let p = plan(sql);
    let sp = &p.statements[0];
    assert!(sp.decision.is_allow(), "{sql}: {:?}", sp.decision);
    sp.encryptions
        .iter()
        .map(|e| (e.target, e.subject))
        .collect()
}

fn refusal(sql: &str) -> String {
    match &plan(sql).statements[0].decision {
        Decision::Deny { sqlstate, message } => {
            assert_eq!(*sqlstate, "42501");
            message.clone()
        }
        Decision::Allow => panic!("{sql} was allowed"),
    }
}

use SubjectValue::{Elements, Value};
use ValueRef::{Literal, Param};

#[test]
fn insert_rows_give_their_own_subject() {
    assert_eq!(
        subjects("INSERT INTO customers (id, phone, email) VALUES ($1, $2, $3)"),
        [(Param(2), Some(Value(Param(1)))), (Param(3), None)],
        "the column-keyed email needs no subject"
    );
    assert_eq!(
        subjects("INSERT INTO customers (phone, id) VALUES ('+1 555', 7), ('+1 556', 8)"),
        [
            (Literal(0), Some(Value(Literal(1)))),
            (Literal(2), Some(Value(Literal(3))))
        ]
    );
    // No column list: the catalog's order.
    assert_eq!(
        subjects("INSERT INTO customers VALUES ($1, $2, $3)")[0],
        (Param(2), Some(Value(Param(1))))
    );
    assert_eq!(
        subjects("INSERT INTO customers (id, phone) SELECT * FROM UNNEST($1::int[], $2::text[])"),
        [(Param(2), Some(Elements(Param(1))))]
    );
    assert_eq!(
        subjects(
            "INSERT INTO customers (id, phone) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET phone = $3"
        ),
        [(Param(2), Some(Value(Param(1)))), (Param(3), Some(Value(Param(1))))]
    );
    assert_eq!(
        subjects(
            "INSERT INTO customers (id, phone) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET phone = EXCLUDED.phone"
        ),
        [(Param(2), Some(Value(Param(1))))]
    );
    // Column-keyed tables are unaffected.
    assert_eq!(
        subjects("INSERT INTO accounts (id, iban) VALUES ($1, $2)"),
        [(Param(2), None)]
    );
}

#[test]
fn updates_and_comparisons_take_the_subject_from_the_where() {
    assert_eq!(
        subjects("UPDATE customers SET phone = $1 WHERE id = $2"),
        [(Param(1), Some(Value(Param(2))))]
    );
    assert_eq!(
        subjects("UPDATE customers c SET phone = $1 WHERE c.email IS NOT NULL AND ($2 = c.id)"),
        [(Param(1), Some(Value(Param(2))))]
    );
    assert_eq!(
        subjects("SELECT email FROM customers WHERE id = $1 AND phone = $2"),
        [(Param(2), Some(Value(Param(1))))]
    );
    assert_eq!(
        subjects("DELETE FROM customers WHERE phone = '+1 555' AND id = 4"),
        [(Literal(0), Some(Value(Literal(1))))]
    );
}

#[test]
fn statements_that_do_not_name_the_subject_are_refused() {
    for sql in [
        "INSERT INTO customers (phone) VALUES ($1)",
        "INSERT INTO customers (id, phone) VALUES (now()::int, $1)",
        "UPDATE customers SET phone = $1",
        "UPDATE customers SET phone = $1 WHERE id = $2 OR id = $3",
        "UPDATE customers SET phone = $1 WHERE id > $2",
        "SELECT id FROM customers WHERE phone = $1",
        "INSERT INTO customers (id, phone) VALUES ($1, $2), ($3, $4) ON CONFLICT (id) DO UPDATE SET phone = $5",
    ] {
        let m = refusal(sql);
        assert!(
            m.contains("public.customers.phone") && m.contains("public.customers.id"),
            "{sql}: {m}"
        );
    }
    let m = refusal("INSERT INTO customers (id, phone) VALUES ($1, $2), ($3, $2)");
    assert!(m.contains("for two subjects"), "{m}");
    let m = refusal("UPDATE customers SET id = $1, phone = $2 WHERE id = $3");
    assert!(m.contains("another subject"), "{m}");
}

#[test]
fn copy_from_names_the_subject_field() {
    let p = plan("COPY customers (phone, id) FROM STDIN");
    let copy = p.statements[0].copy.as_ref().expect("a copy");
    assert_eq!(copy.subject, Some(1));
    let m = refusal("COPY customers (phone, email) FROM STDIN");
    assert!(
        m.contains("list the subject column public.customers.id"),
        "{m}"
    );
    let p = plan("COPY accounts (id, iban) FROM STDIN");
    assert_eq!(p.statements[0].copy.as_ref().unwrap().subject, None);
}
