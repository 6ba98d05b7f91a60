//! Fuzz the lexer and the full analysis with arbitrary SQL: never panic, refusals always say `pgcloak:`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgcloak_policy::{analyze, apply_mask, lex, names_any, Catalog, Mask, Policy};

const POLICY: &str = r#"
[[column]]
name = "public.customers.email"
class = "confidential"
encrypt = "deterministic"
mask = "email"
[[column]]
name = "public.customers.phone"
class = "confidential"
encrypt = "deterministic"
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
mask = "partial(1,1)"
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
read = { confidential = "deny", sensitive = "null" }
"#;

fn fixture() -> &'static (Policy, Catalog) {
    static F: OnceLock<(Policy, Catalog)> = OnceLock::new();
    F.get_or_init(|| {
        let p = Policy::parse(POLICY, "policy.toml").expect("fixture policy");
        let c = Catalog::new()
            .with_table(
                "public",
                "customers",
                ["id", "email", "phone", "ssn", "salary", "notes"],
            )
            .with_table("public", "orders", ["id", "customer_id", "total"]);
        (p, c)
    })
}

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let (policy, catalog) = fixture();
    let lexed = lex(&sql);
    let _ = names_any(&lexed, policy.protected_table_names());
    for role in [
        policy.role_named("app"),
        policy.role_named("support"),
        Some(policy.default_role()),
    ]
    .into_iter()
    .flatten()
    {
        let plan = analyze(&sql, &lexed, catalog, policy, role);
        assert_eq!(plan.statements.len(), lexed.statements.len());
        for sp in &plan.statements {
            if let Some(m) = sp.deny_message() {
                assert!(m.starts_with("pgcloak: "));
            }
        }
    }
    for mask in [
        Mask::Last4,
        Mask::Email,
        Mask::Redact,
        Mask::Hash,
        Mask::Partial { front: 2, back: 3 },
    ] {
        let _ = apply_mask(mask, &sql, b"k");
    }
});
