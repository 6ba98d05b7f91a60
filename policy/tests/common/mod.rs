//! Shared fixture: the customers policy and catalog from the issue, and a compact plan summary.
#![allow(dead_code)]

use pgcloak_policy::{
    analyze, lex, Catalog, Decision, OutputAction, Plan, Policy, StatementPlan, ValueRef,
};

pub const POLICY: &str = r#"
[[column]]
name = "public.customers.email"
class = "confidential"
encrypt = "deterministic"
type = "text"
mask = "email"

[[column]]
name = "public.customers.phone"
class = "confidential"
encrypt = "deterministic"
type = "text"
mask = "last4"

[[column]]
name = "public.customers.ssn"
class = "confidential"
encrypt = "randomized"

[[column]]
name = "public.customers.salary"
class = "sensitive"
encrypt = "randomized"
type = "int4"

[[column]]
name = "public.customers.notes"
class = "internal"

[[role]]
name = "app"
read = { confidential = "plaintext", sensitive = "plaintext" }
write = ["confidential", "sensitive"]

[[role]]
name = "support"
read = { confidential = "masked", sensitive = "plaintext" }
write = ["sensitive"]
max_rows = 50
copy_out = false

[default]
read = { confidential = "deny", sensitive = "masked" }
"#;

pub fn policy() -> Policy {
    Policy::parse(POLICY, "policy.toml").expect("fixture policy parses")
}

pub fn catalog() -> Catalog {
    Catalog::new()
        .with_table(
            "public",
            "customers",
            [
                "id",
                "email",
                "phone",
                "ssn",
                "salary",
                "notes",
                "created_at",
            ],
        )
        .with_table(
            "public",
            "orders",
            ["id", "customer_id", "total", "created_at"],
        )
        .with_table("public", "order_items", ["order_id", "product_id", "qty"])
        .with_table("public", "products", ["id", "name", "price"])
        .with_table("public", "users", ["id", "email", "name"])
}

pub fn plan_for(role: &str, sql: &str) -> Plan {
    let p = policy();
    let c = catalog();
    let r = match role {
        "default" => p.default_role(),
        other => p.role_named(other).expect("role exists"),
    };
    let l = lex(sql);
    analyze(sql, &l, &c, &p, r)
}

fn short_col(c: &str) -> &str {
    c.rsplit('.').next().unwrap_or(c)
}

/// `allow enc=$1:email,#0:phone out=P,D:email,M:phone,N max=50` or `deny: <message>`, per statement,
/// joined with ` | `.
pub fn summary_of(sp: &StatementPlan) -> String {
    if let Decision::Deny { sqlstate, message } = &sp.decision {
        assert_eq!(*sqlstate, "42501");
        assert!(message.starts_with("pgcloak: "), "{message}");
        return format!("deny: {message}");
    }
    let mut s = String::from("allow");
    if !sp.encryptions.is_empty() {
        let parts: Vec<String> = sp
            .encryptions
            .iter()
            .map(|e| {
                let t = match e.target {
                    ValueRef::Param(n) => format!("${n}"),
                    ValueRef::Literal(i) => format!("#{i}"),
                };
                format!(
                    "{t}:{}{}",
                    short_col(&e.column),
                    if e.array { "[]" } else { "" }
                )
            })
            .collect();
        s.push_str(&format!(" enc={}", parts.join(",")));
    }
    if sp
        .outputs
        .iter()
        .any(|o| o.action != OutputAction::PassThrough)
    {
        let parts: Vec<String> = sp
            .outputs
            .iter()
            .map(|o| match &o.action {
                OutputAction::PassThrough => "P".to_string(),
                OutputAction::Decrypt { column, .. } => format!("D:{}", short_col(column)),
                OutputAction::Mask { column, .. } => format!("M:{}", short_col(column)),
                OutputAction::Null { .. } => "N".to_string(),
            })
            .collect();
        s.push_str(&format!(" out={}", parts.join(",")));
    }
    if let Some(m) = sp.max_rows {
        s.push_str(&format!(" max={m}"));
    }
    s
}

pub fn summary(role: &str, sql: &str) -> String {
    let plan = plan_for(role, sql);
    plan.statements
        .iter()
        .map(summary_of)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Check a table of `(role, sql, expected)`. `expected` is an exact summary, or `deny~substring`.
pub fn run_table(cases: &[(&str, &str, &str)]) {
    let mut failures = Vec::new();
    for (role, sql, want) in cases {
        let got = summary(role, sql);
        let ok = match want.strip_prefix("deny~") {
            Some(sub) => got.starts_with("deny: ") && got.contains(sub),
            None => got == *want,
        };
        if !ok {
            failures.push(format!("[{role}] {sql}\n   want: {want}\n    got: {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
