//! Policy file parsing: the contract's example parses; every error class names file:line and the fix.

mod common;

use pgcloak_policy::{Access, Class, EncryptMode, LogicalType, Mask, Policy};

const CONTRACT_EXAMPLE: &str = r#"[[column]]
name = "public.customers.phone"    # schema.table.column
class = "confidential"             # public | internal | sensitive | confidential
encrypt = "deterministic"          # none | randomized | deterministic
type = "text"                      # logical type clients see: text int4 int8 numeric date timestamptz bool jsonb bytea
mask = "last4"                     # how a `masked` reader sees it: last4 | email | redact | hash | partial(K_FRONT,K_BACK)

[[role]]
name = "app"                       # a PostgreSQL role; login users that are members get this policy (first match wins)
read = { confidential = "plaintext", sensitive = "plaintext" }
write = ["confidential", "sensitive"]

[[role]]
name = "support"
read = { confidential = "masked", sensitive = "plaintext" }
write = ["sensitive"]
max_rows = 50                      # a statement may return at most 50 rows that carry sensitive or confidential values
copy_out = false                   # COPY ... TO of classified columns refused

[default]                          # login users in no listed role
read = { confidential = "deny", sensitive = "masked" }
"#;

#[test]
fn contract_example_parses() {
    let p = Policy::parse(CONTRACT_EXAMPLE, "policy.toml").expect("parses");
    let cols = p.columns();
    assert_eq!(cols.len(), 1);
    let c = &cols[0];
    assert_eq!(
        (c.schema.as_str(), c.table.as_str(), c.column.as_str()),
        ("public", "customers", "phone")
    );
    assert_eq!(c.class, Class::Confidential);
    assert_eq!(c.encrypt, EncryptMode::Deterministic);
    assert_eq!(c.logical_type, LogicalType::Text);
    assert_eq!(c.mask, Mask::Last4);
    assert_eq!(c.line, 2);
    let app = p.role_named("app").expect("app");
    assert_eq!(app.read(Class::Confidential), Access::Plaintext);
    assert!(app.may_write(Class::Confidential) && app.may_write(Class::Sensitive));
    assert!(app.copy_out);
    let support = p.role_named("support").expect("support");
    assert_eq!(support.read(Class::Confidential), Access::Masked);
    assert_eq!(support.max_rows, Some(50));
    assert!(!support.copy_out);
    assert!(!support.may_write(Class::Confidential));
    assert!(
        support.may_write(Class::Internal),
        "internal is always writable"
    );
    let d = p.default_role();
    assert_eq!(d.read(Class::Confidential), Access::Deny);
    assert_eq!(d.read(Class::Sensitive), Access::Masked);
    assert_eq!(d.read(Class::Internal), Access::Plaintext);
    assert_eq!(d.read(Class::Public), Access::Plaintext);
    assert_ne!(p.version(), 0);
}

#[test]
fn role_resolution_first_listed_wins_else_default() {
    let p = Policy::parse(CONTRACT_EXAMPLE, "policy.toml").expect("parses");
    assert_eq!(p.role_for(&["alice", "support", "app"]).name, "app");
    assert_eq!(p.role_for(&["bob", "support"]).name, "support");
    assert_eq!(p.role_for(&["carol"]).name, "default");
    assert_eq!(p.role_for(&[]).name, "default");
}

#[test]
fn defaults_when_fields_are_absent() {
    let p = Policy::parse(
        "[[column]]\nname = \"s.t.c\"\nclass = \"sensitive\"\n[[role]]\nname = \"r\"\n",
        "p.toml",
    )
    .expect("parses");
    let c = &p.columns()[0];
    assert_eq!(c.encrypt, EncryptMode::None);
    assert_eq!(c.logical_type, LogicalType::Text);
    assert_eq!(c.mask, Mask::Redact);
    let r = p.role_named("r").expect("r");
    assert_eq!(r.read(Class::Sensitive), Access::Deny);
    assert_eq!(r.read(Class::Internal), Access::Plaintext);
    assert!(!r.may_write(Class::Sensitive));
    assert_eq!(p.default_role().read(Class::Confidential), Access::Deny);
}

#[test]
fn version_changes_with_the_text() {
    let a = Policy::parse(CONTRACT_EXAMPLE, "p").expect("a");
    let b = Policy::parse(&format!("{CONTRACT_EXAMPLE}\n# edited\n"), "p").expect("b");
    assert_ne!(a.version(), b.version());
    assert_eq!(
        a.version(),
        Policy::parse(CONTRACT_EXAMPLE, "p").expect("a2").version()
    );
}

/// (policy text, expected `file:line: ` prefix, substring of the message) for every error class.
#[test]
fn every_error_names_file_line_and_fix() {
    let cases: &[(&str, &str, &str)] = &[
        ("[[column]]\nname = \"public.t.c\"\nclass = \"top-secret\"\n", "policy.toml:3: ", "unknown class `top-secret`; use one of public"),
        ("[[column]]\nname = \"public.t.c\"\nclass = \"confidential\"\nencrypt = \"aes\"\n", "policy.toml:4: ", "unknown encrypt mode `aes`; use one of none, randomized, deterministic"),
        ("[[column]]\nname = \"public.t.c\"\nclass = \"confidential\"\ntype = \"varchar\"\n", "policy.toml:4: ", "unknown type `varchar`; use one of text"),
        ("[[column]]\nname = \"public.t.c\"\nclass = \"confidential\"\nmask = \"stars\"\n", "policy.toml:4: ", "unknown mask `stars`; use one of last4"),
        ("[[column]]\nname = \"public.t.c\"\nclass = \"confidential\"\nmask = \"partial(2)\"\n", "policy.toml:4: ", "malformed mask `partial(2)`"),
        ("[[column]]\nname = \"public.t.c\"\nclass = \"confidential\"\nmask = \"partial(a,b)\"\n", "policy.toml:4: ", "write partial(K_FRONT,K_BACK)"),
        ("[[column]]\nname = \"customers.email\"\nclass = \"confidential\"\n", "policy.toml:2: ", "is not schema.table.column"),
        ("[[column]]\nname = \"public.Customers.email\"\nclass = \"confidential\"\n", "policy.toml:2: ", "lower-case unquoted identifiers"),
        ("[[column]]\nname = \"public.t.c\"\nclass = \"internal\"\n\n[[column]]\nname = \"public.t.c\"\nclass = \"internal\"\n", "policy.toml:6: ", "duplicate column `public.t.c` (first defined at line 1)"),
        ("[[role]]\nname = \"app\"\n\n[[role]]\nname = \"app\"\n", "policy.toml:5: ", "duplicate role `app` (first defined at line 2)"),
        ("[[role]]\nname = \"app\"\nread = { secret = \"plaintext\" }\n", "policy.toml:3: ", "unknown class `secret` in `read`"),
        ("[[role]]\nname = \"app\"\nread = { confidential = \"maybe\" }\n", "policy.toml:3: ", "unknown access `maybe` for class confidential; use one of plaintext, masked, null, deny"),
        ("[[role]]\nname = \"app\"\nwrite = [\"public\", \"topsecret\"]\n", "policy.toml:3: ", "unknown class `topsecret` in `write`"),
        ("[[role]]\nname = \"app\"\nmax_rows = -1\n", "policy.toml:3: ", "max_rows = -1 is negative"),
        ("[[role]]\nname = \"default\"\n", "policy.toml:2: ", "put those rules in the [default] section"),
        ("[[role]]\nname = \"app\"\nreed = { confidential = \"plaintext\" }\n", "policy.toml:", "unknown field `reed`"),
        ("[[column]]\nname = \"public.t.c\"\nclass = \"internal\"\nencrypted = \"deterministic\"\n", "policy.toml:", "unknown field `encrypted`"),
        ("[[column]]\nclass = \"internal\"\n", "policy.toml:1: ", "has no `name`"),
        ("[[column]]\nname = \"public.t.c\"\n", "policy.toml:1: ", "has no `class`"),
        ("[default]\nread = { sensitive = \"hidden\" }\n", "policy.toml:2: ", "unknown access `hidden`"),
        ("[[column]]\nname = \"public.t.c\"\nclass = confidential\n", "policy.toml:3: ", "fix the TOML syntax"),
        ("[[role]]\nname = \"app\"\nmax_rows = \"fifty\"\n", "policy.toml:3: ", "fix the TOML syntax or the value's type"),
        ("[columns]\nname = \"x\"\n", "policy.toml:1: ", "unknown field `columns`"),
    ];
    let mut failures = Vec::new();
    for (text, prefix, sub) in cases {
        match Policy::parse(text, "policy.toml") {
            Ok(_) => failures.push(format!("accepted:\n{text}")),
            Err(e) => {
                let first = e
                    .issues()
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                if !(first.starts_with(prefix) && first.contains(sub)) {
                    failures.push(format!("{text}\n  want {prefix}...{sub}\n  got  {first}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_problems_are_collected() {
    let text = "[[column]]\nname = \"bad\"\nclass = \"nope\"\nencrypt = \"maybe\"\n\n[[role]]\nname = \"r\"\nread = { confidential = \"sometimes\" }\n";
    let e = Policy::parse(text, "policy.toml").expect_err("invalid");
    let lines: Vec<Option<usize>> = e.issues().iter().map(|i| i.line).collect();
    assert_eq!(lines, vec![Some(2), Some(3), Some(4), Some(8)], "{e}");
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), 4);
    assert!(shown.lines().all(|l| l.starts_with("policy.toml:")));
}

const SUBJECTS: &str = r#"
[[table]]
name = "public.customers"
subject = "id"

[[table]]
name = "public.orders"
subject = "customer_id"

[[column]]
name = "public.customers.email"
class = "confidential"
encrypt = "deterministic"
key = "subject"
erased = "marker"

[[column]]
name = "public.orders.address"
class = "confidential"
encrypt = "randomized"
key = "subject"

[[column]]
name = "public.customers.phone"
class = "confidential"
encrypt = "deterministic"
"#;

#[test]
fn tables_name_their_subject_and_columns_choose_subject_keys() {
    use pgcloak_policy::{Erased, KeyScope};
    let p = Policy::parse(SUBJECTS, "policy.toml").expect("parses");
    let t: Vec<(&str, &str)> = p
        .tables()
        .iter()
        .map(|t| (t.table.as_str(), t.subject.as_str()))
        .collect();
    assert_eq!(t, [("customers", "id"), ("orders", "customer_id")]);
    assert_eq!(p.table_policy("public", "orders").unwrap().line, 7);
    assert!(p.table_policy("public", "other").is_none());
    let email = p.column("public", "customers", "email").unwrap();
    assert_eq!(
        (email.key, email.erased),
        (KeyScope::Subject, Erased::Marker)
    );
    let address = p.column("public", "orders", "address").unwrap();
    assert_eq!(
        (address.key, address.erased),
        (KeyScope::Subject, Erased::Null)
    );
    let phone = p.column("public", "customers", "phone").unwrap();
    assert_eq!(phone.key, KeyScope::Column, "column keys stay the default");
}

#[test]
fn subject_mistakes_name_the_line_and_the_fix() {
    let cases: [(&str, &str); 8] = [
        (
            "[[column]]\nname = \"public.c.email\"\nclass = \"confidential\"\nencrypt = \"randomized\"\nkey = \"subject\"\n",
            "table public.c names no subject",
        ),
        (
            "[[column]]\nname = \"public.c.email\"\nclass = \"confidential\"\nkey = \"subject\"\n[[table]]\nname = \"public.c\"\nsubject = \"id\"\n",
            "is not encrypted",
        ),
        (
            "[[column]]\nname = \"public.c.email\"\nclass = \"confidential\"\nencrypt = \"randomized\"\nkey = \"person\"\n",
            "unknown key `person`",
        ),
        (
            "[[column]]\nname = \"public.c.n\"\nclass = \"confidential\"\nencrypt = \"randomized\"\ntype = \"int4\"\nkey = \"subject\"\nerased = \"marker\"\n[[table]]\nname = \"public.c\"\nsubject = \"id\"\n",
            "needs a text column",
        ),
        (
            "[[column]]\nname = \"public.c.email\"\nclass = \"confidential\"\nencrypt = \"randomized\"\nerased = \"null\"\n",
            "is not subject-keyed",
        ),
        (
            "[[column]]\nname = \"public.c.id\"\nclass = \"confidential\"\nencrypt = \"deterministic\"\n[[table]]\nname = \"public.c\"\nsubject = \"id\"\n",
            "subject column public.c.id is encrypted",
        ),
        ("[[table]]\nname = \"customers\"\nsubject = \"id\"\n", "is not schema.table"),
        (
            "[[table]]\nname = \"public.c\"\nsubject = \"id\"\n[[table]]\nname = \"public.c\"\nsubject = \"uid\"\n",
            "duplicate table `public.c` (first defined at line 2)",
        ),
    ];
    for (text, needle) in cases {
        let err = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(err.contains("p.toml:"), "{err}");
    }
    let err = Policy::parse("[[table]]\nname = \"public.c\"\n", "p.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no `subject`"), "{err}");
}

#[test]
fn roles_may_be_shadowed_but_not_the_default() {
    let p = Policy::parse(
        "[[role]]\nname = \"support\"\nenforce = \"shadow\"\n[[role]]\nname = \"app\"\nenforce = \"enforce\"\n",
        "p.toml",
    )
    .unwrap();
    assert!(p.role_named("support").unwrap().shadow);
    assert!(!p.role_named("app").unwrap().shadow);
    assert!(!p.default_role().shadow);
    let serving = p.role_named("support").unwrap().shadow_serving();
    assert!(!serving.shadow && serving.name.contains('\0'));
    assert_eq!(serving.read(Class::Confidential), Access::Plaintext);
    assert!(serving.may_write(Class::Confidential) && serving.max_rows.is_none());
    let err = Policy::parse("[[role]]\nname = \"x\"\nenforce = \"maybe\"\n", "p.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("p.toml:3") && err.contains("unknown enforce `maybe`"),
        "{err}"
    );
    let err = Policy::parse("[default]\nenforce = \"shadow\"\n", "p.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be shadow"), "{err}");
}

#[test]
fn grants_section_names_approvers_and_rejects_nonsense() {
    let ok = format!(
        "{CONTRACT_EXAMPLE}\n[grants]\napprovers = [\"security\", \"dba\", \"security\"]\n"
    );
    let p = Policy::parse(&ok, "policy.toml").expect("parses");
    assert_eq!(p.grants().approvers, ["security", "dba"]);
    assert!(Policy::parse(CONTRACT_EXAMPLE, "policy.toml")
        .expect("parses")
        .grants()
        .approvers
        .is_empty());
    for (bad, says) in [
        ("[grants]\n", "has no `approvers`"),
        (
            "[grants]\napprovers = []\n",
            "no grant could ever be approved",
        ),
        (
            "[grants]\napprovers = [\"\"]\n",
            "approver role name is empty",
        ),
        ("[grants]\napprovers = [\"a\"]\nttl = 3\n", "unknown field"),
    ] {
        let text = format!("{CONTRACT_EXAMPLE}\n{bad}");
        let err = Policy::parse(&text, "policy.toml")
            .expect_err(bad)
            .to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

mod raises {
    use super::*;
    use pgcloak_policy::{analyze, lex, GrantRaise, OutputAction};

    use crate::common;

    fn output_actions(role: &pgcloak_policy::RolePolicy, sql: &str) -> Vec<String> {
        let p = common::policy();
        let plan = analyze(sql, &lex(sql), &common::catalog(), &p, role);
        let sp = &plan.statements[0];
        assert!(sp.decision.is_allow(), "{sql}: {:?}", sp.decision);
        sp.outputs
            .iter()
            .map(|o| match &o.action {
                OutputAction::Decrypt { .. } => "D",
                OutputAction::Mask { .. } => "M",
                OutputAction::Null { .. } => "N",
                OutputAction::PassThrough => "P",
            })
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_grant_raises_a_class_or_one_table_and_never_lowers() {
        let p = common::policy();
        let support = p.role_named("support").expect("support");
        let sql = "SELECT phone, salary FROM customers";
        assert_eq!(output_actions(support, sql), ["M", "D"]);
        let class_wide = support.raised_by(
            &[GrantRaise {
                class: Class::Confidential,
                access: Access::Plaintext,
                table: None,
            }],
            "1",
        );
        assert_eq!(output_actions(&class_wide, sql), ["D", "D"]);
        assert_ne!(class_wide.name, support.name, "plans are cached per name");
        let other_table = support.raised_by(
            &[GrantRaise {
                class: Class::Confidential,
                access: Access::Plaintext,
                table: Some(("public".into(), "orders".into())),
            }],
            "2",
        );
        assert_eq!(output_actions(&other_table, sql), ["M", "D"]);
        let this_table = support.raised_by(
            &[GrantRaise {
                class: Class::Confidential,
                access: Access::Plaintext,
                table: Some(("public".into(), "customers".into())),
            }],
            "3",
        );
        assert_eq!(output_actions(&this_table, sql), ["D", "D"]);
        // A masked grant to a role that reads plaintext changes nothing.
        let lower = support.raised_by(
            &[GrantRaise {
                class: Class::Sensitive,
                access: Access::Masked,
                table: None,
            }],
            "4",
        );
        assert_eq!(output_actions(&lower, sql), ["M", "D"]);
        // The default role denies confidential: a masked grant makes it readable, masked.
        let d = p.default_role();
        let denied = analyze(
            "SELECT phone FROM customers",
            &lex("SELECT phone FROM customers"),
            &common::catalog(),
            &p,
            d,
        );
        assert!(!denied.statements[0].decision.is_allow());
        let masked = d.raised_by(
            &[GrantRaise {
                class: Class::Confidential,
                access: Access::Masked,
                table: Some(("public".into(), "customers".into())),
            }],
            "5",
        );
        assert_eq!(
            output_actions(&masked, "SELECT phone FROM customers"),
            ["M"]
        );
    }
}

#[test]
fn export_budgets_parse_with_a_window() {
    let text = CONTRACT_EXAMPLE.replace(
        "max_rows = 50 ",
        "max_rows = 50\nmax_rows_per_window = 500\nwindow = \"30m\" ",
    );
    let p = Policy::parse(&text, "policy.toml").expect("parses");
    let b = p.role_named("support").unwrap().budget.expect("budget");
    assert_eq!((b.rows, b.window_secs), (500, 1800));
    let hourly = CONTRACT_EXAMPLE.replace("max_rows = 50 ", "max_rows_per_window = 7 ");
    let b = Policy::parse(&hourly, "policy.toml").unwrap();
    assert_eq!(
        b.role_named("support")
            .unwrap()
            .budget
            .map(|b| b.window_secs),
        Some(3600),
        "window defaults to 1h"
    );
    assert_eq!(b.role_named("app").unwrap().budget, None);
    for (bad, says) in [
        ("max_rows_per_window = -1 ", "is negative"),
        (
            "max_rows_per_window = 5\nwindow = \"soon\" ",
            "is not a duration",
        ),
        ("window = \"1h\" ", "limits nothing"),
    ] {
        let text = CONTRACT_EXAMPLE.replace("max_rows = 50 ", bad);
        let err = Policy::parse(&text, "policy.toml")
            .expect_err(bad)
            .to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}
