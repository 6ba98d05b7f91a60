//! Tricks to read a column the role may not read (the `default` role reads confidential columns as
//! `deny`): every one must be refused, or at least yield no plaintext action for a denied column.

mod common;

use common::{plan_for, summary};
use pgcloak_policy::{Decision, OutputAction, Plan, Source, TouchAccess};

const DENIED: [&str; 3] = [
    "public.customers.email",
    "public.customers.phone",
    "public.customers.ssn",
];

/// Refused, or nothing of a denied column goes out (no decrypt, no pass-through lineage).
fn leaks(plan: &Plan) -> Option<String> {
    for sp in &plan.statements {
        if let Decision::Deny { .. } = sp.decision {
            continue;
        }
        for o in &sp.outputs {
            let names: Vec<&String> = match &o.source {
                Source::Direct(c) => vec![c],
                Source::Expression(cs) => cs.iter().collect(),
                Source::None => vec![],
            };
            if names.iter().any(|n| DENIED.contains(&n.as_str())) {
                return Some(format!(
                    "output {} carries {:?} with {:?}",
                    o.index, names, o.action
                ));
            }
            if let OutputAction::Decrypt { column, .. } = &o.action {
                if DENIED.contains(&column.as_str()) {
                    return Some(format!("decrypts {column}"));
                }
            }
        }
        for c in &sp.columns {
            if DENIED.contains(&c.name.as_str()) && c.access != TouchAccess::Deny {
                return Some(format!("touches {} as {:?}", c.name, c.access));
            }
        }
    }
    None
}

const TRICKS: &[&str] = &[
    "SELECT ssn FROM customers",
    "SELECT ssn::text FROM customers",
    "SELECT CAST(ssn AS text) FROM customers",
    "SELECT lower(ssn) FROM customers",
    "SELECT ssn || '' FROM customers",
    "SELECT format('%s', ssn) FROM customers",
    "WITH x AS (SELECT ssn FROM customers) SELECT * FROM x",
    "WITH x(a) AS (SELECT email FROM customers) SELECT a FROM x",
    "SELECT * FROM (SELECT ssn AS s FROM customers) q",
    "SELECT (SELECT ssn FROM customers LIMIT 1)",
    "VALUES ((SELECT ssn FROM customers LIMIT 1))",
    "SELECT c FROM customers c",
    "SELECT customers FROM customers",
    "SELECT row_to_json(c) FROM customers c",
    "SELECT to_jsonb(c.*) FROM customers c",
    "SELECT json_agg(c) FROM customers c",
    "SELECT (c).ssn FROM customers c",
    "SELECT jsonb_build_object('s', ssn) FROM customers",
    "SELECT (SELECT row_to_json(x) FROM (SELECT c.ssn) x) FROM customers c",
    "SELECT string_agg(ssn, ',') FROM customers",
    "SELECT array_agg(email) FROM customers",
    "SELECT max(email) FROM customers",
    "PREPARE p AS SELECT ssn FROM customers",
    "DECLARE c CURSOR FOR SELECT ssn FROM customers",
    "SET ROLE app; SELECT ssn FROM customers",
    "SET SESSION AUTHORIZATION app; SELECT email FROM customers",
    "SELECT set_config('role', 'app', false); SELECT phone FROM customers",
    "COPY customers TO STDOUT",
    "COPY customers (ssn) TO STDOUT WITH (FORMAT csv)",
    "COPY (SELECT ssn FROM customers) TO STDOUT",
    "COPY customers TO '/tmp/leak.csv'",
    "SELECT /* hi */ ssn -- there\n FROM customers",
    "SELECT \"ssn\" FROM \"customers\"",
    "SELECT SSN FROM CUSTOMERS",
    "select SsN from Public.Customers",
    "SELECT U&\"\\0073sn\" FROM customers",
    "SELECT ssn FROM U&\"\\0063ustomers\"",
    "SELECT public.customers.ssn FROM public.customers",
    "SELECT ssn FROM \"public\".\"customers\"",
    "SELECT $$x$$, ssn FROM customers",
    "SELECT $a$ ' $a$, ssn FROM customers",
    "SELECT E'\\'', ssn FROM customers",
    "SELECT 'a'';SELECT 1', ssn FROM customers",
    "SELECT id FROM customers WHERE ssn LIKE '1%'",
    "SELECT id FROM customers WHERE email = $1",
    "SELECT count(*) FROM customers WHERE email IS NOT NULL",
    "SELECT id FROM customers ORDER BY ssn",
    "SELECT id FROM customers GROUP BY phone",
    "SELECT ssn FROM customers UNION ALL SELECT 'x'",
    "SELECT 'x' UNION ALL SELECT ssn FROM customers",
    "SELECT * FROM customers",
    "SELECT customers.* FROM customers",
    "SELECT c.* FROM customers c",
    "SELECT * FROM customers JOIN orders ON orders.customer_id = customers.id",
    "SELECT * FROM customers NATURAL JOIN orders",
    "SELECT * FROM customers JOIN orders USING (id)",
    "SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM customers d WHERE d.ssn = c.ssn)",
    "SELECT CASE WHEN ssn IS NULL THEN 0 ELSE 1 END FROM customers",
    "SELECT x.ssn AS \"SSN\" FROM customers AS x",
    "SELECT t.s FROM customers, LATERAL (SELECT ssn AS s) t",
    "SELECT ssn FROM ONLY customers",
    "SELECT ssn FROM customers WHERE false",
    "SELECT 1; SELECT ssn FROM customers",
    "INSERT INTO users (email) SELECT email FROM customers",
    "UPDATE users SET email = (SELECT email FROM customers LIMIT 1)",
    "CREATE TABLE stolen AS SELECT ssn FROM customers",
    "SELECT ssn INTO stolen FROM customers",
    "CREATE VIEW v AS SELECT ssn FROM customers",
    "EXPLAIN ANALYZE SELECT ssn FROM customers",
    "DO $$ BEGIN RAISE NOTICE '%', (SELECT ssn FROM customers LIMIT 1); END $$",
    "CREATE FUNCTION leak() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM customers LIMIT 1'",
    "SELECT ssn FROM customers c1_0 WHERE c1_0.id = $1",
    "SELECT id, ssn FROM customers WHERE id = 1 FOR UPDATE",
    "SELECT ROW(c.*) FROM customers c",
    "SELECT hstore(c) FROM customers c",
    "SELECT (x).* FROM (SELECT c FROM customers c) s(x)",
    "SELECT * FROM (SELECT * FROM customers) s",
    "SELECT * FROM customers, generate_series(1, 2)",
    "SELECT ssn FROM customers WHERE id = ANY('{1,2}')",
];

#[test]
fn tricks_are_refused_or_yield_no_plaintext() {
    assert!(TRICKS.len() >= 30);
    let mut failures = Vec::new();
    for sql in TRICKS {
        let plan = plan_for("default", sql);
        if let Some(why) = leaks(&plan) {
            failures.push(format!("{sql}\n    {why}\n    {}", summary("default", sql)));
        }
        // The plain SELECT forms must be refused outright (not merely harmless).
        if sql.starts_with("SELECT ssn FROM") && plan.denied().is_none() {
            failures.push(format!("{sql}\n    not refused"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} leaks:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn most_tricks_are_refused_outright() {
    let refused = TRICKS
        .iter()
        .filter(|sql| plan_for("default", sql).denied().is_some())
        .count();
    // A few are harmless without refusal (e.g. `SELECT 1; ...` is refused in its second statement).
    assert!(
        refused + 2 >= TRICKS.len(),
        "only {refused} of {} refused",
        TRICKS.len()
    );
}

/// Masked readers (support) cannot unmask with expressions, ordering or patterns either.
#[test]
fn masked_reader_cannot_unmask() {
    for sql in [
        "SELECT lower(email) FROM customers",
        "SELECT substring(phone, 1, 3) FROM customers",
        "SELECT email FROM customers ORDER BY email",
        "SELECT id FROM customers WHERE phone LIKE '555%'",
        "SELECT id FROM customers WHERE ssn > $1",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT email::text FROM customers",
        "COPY customers (email) TO STDOUT",
    ] {
        let plan = plan_for("support", sql);
        assert!(
            plan.denied().is_some(),
            "{sql}: {}",
            summary("support", sql)
        );
    }
    // What support may do: masked output, equality lookups.
    let plan = plan_for("support", "SELECT email FROM customers WHERE phone = $1");
    assert!(plan.denied().is_none());
    assert!(matches!(
        plan.statements[0].outputs[0].action,
        OutputAction::Mask { .. }
    ));
}

/// A role reading `null` may get NULLs but cannot filter on the column (an oracle).
#[test]
fn null_reader_cannot_filter() {
    let policy = pgcloak_policy::Policy::parse(
        "[[column]]\nname = \"public.customers.ssn\"\nclass = \"confidential\"\nencrypt = \"randomized\"\n[default]\nread = { confidential = \"null\" }\n",
        "p.toml",
    )
    .expect("policy");
    let cat = common::catalog();
    let run = |sql: &str| {
        let l = pgcloak_policy::lex(sql);
        pgcloak_policy::analyze(sql, &l, &cat, &policy, policy.default_role())
    };
    let p = run("SELECT id, ssn FROM customers");
    assert!(p.denied().is_none());
    assert!(matches!(
        p.statements[0].outputs[1].action,
        OutputAction::Null { .. }
    ));
    assert!(run("SELECT id FROM customers WHERE ssn IS NULL")
        .denied()
        .is_some());
    assert!(run("SELECT count(ssn) FROM customers").denied().is_some());
}

/// Plans whose decision depends on a literal's content are never cached.
#[test]
fn literal_dependent_plans_are_not_cacheable() {
    for sql in [
        "SELECT id, ssn FROM customers ORDER BY 1",
        "SELECT id FROM customers GROUP BY 1",
        "DO $$ BEGIN END $$",
        "SELECT set_config('search_path', 'x', false)",
        "COPY customers (id) FROM STDIN WITH (DELIMITER ';')",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ] {
        assert!(
            !plan_for("app", sql).cacheable,
            "{sql} must not be cacheable"
        );
    }
    assert!(plan_for("app", "SELECT email FROM customers WHERE id = 5").cacheable);
}

/// A view or function over protected data is not visible to the analysis (documented limitation): the
/// statement passes through, and the proxy's per-ciphertext key check keeps encrypted values encrypted.
#[test]
fn views_pass_through_as_documented() {
    let plan = plan_for("default", "SELECT ssn FROM customer_view");
    assert!(plan.denied().is_none());
    assert!(plan.statements[0]
        .outputs
        .iter()
        .all(|o| o.action == OutputAction::PassThrough));
}

/// When the catalog does not know a protected table, `*` over it cannot be placed: refuse.
#[test]
fn star_over_protected_table_missing_from_catalog_is_refused() {
    let policy = common::policy();
    let cat = pgcloak_policy::Catalog::new();
    for (sql, refused) in [
        ("SELECT * FROM customers", true),
        ("SELECT c.* FROM customers c", true),
        ("SELECT * FROM (SELECT * FROM customers) s", true),
        ("INSERT INTO customers VALUES ($1, $2)", true),
        ("DELETE FROM customers WHERE id = $1 RETURNING *", true),
        ("SELECT id, email FROM customers WHERE email = $1", false),
    ] {
        let l = pgcloak_policy::lex(sql);
        let plan = pgcloak_policy::analyze(
            sql,
            &l,
            &cat,
            &policy,
            policy.role_named("app").expect("app"),
        );
        assert_eq!(plan.denied().is_some(), refused, "{sql}: {plan:?}");
    }
}
