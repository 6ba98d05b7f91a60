//! Views that read protected tables: the catalog marks them, statements naming them are analysed, and
//! writes through them are refused (the server would store the values unencrypted).

mod common;

use common::{catalog, policy, summary_of};
use pgcloak_policy::{analyze, lex, Catalog, Decision};

fn with_views() -> Catalog {
    let mut c = catalog()
        .with_table("public", "customer_view", ["id", "email"])
        .with_table("reports", "contacts", ["id", "phone"])
        .with_table("public", "order_view", ["id", "total"]);
    c.add_protected_view("public", "customer_view");
    c.add_protected_view("reports", "contacts");
    c
}

fn plan(c: &Catalog, sql: &str) -> String {
    let p = policy();
    let role = p.role_named("app").expect("role exists");
    let l = lex(sql);
    let plan = analyze(sql, &l, c, &p, role);
    plan.statements
        .iter()
        .map(summary_of)
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn catalog_records_protected_views() {
    let c = with_views();
    assert!(c.is_protected_view("public", "customer_view"));
    assert!(c.is_protected_view("reports", "contacts"));
    assert!(!c.is_protected_view("public", "contacts"));
    assert!(!c.is_protected_view("public", "order_view"));
    assert_eq!(c.protected_view_names(), ["customer_view", "contacts"]);
    // Adding one twice keeps one name.
    let mut c = c;
    c.add_protected_view("public", "customer_view");
    c.add_protected_view("public", "contacts");
    assert_eq!(c.protected_view_names(), ["customer_view", "contacts"]);
    assert!(c.is_protected_view("public", "contacts"));
}

#[test]
fn writes_through_protected_views_are_refused() {
    let c = with_views();
    for sql in [
        "INSERT INTO customer_view (id, email) VALUES (1, 'ann@example.com')",
        "INSERT INTO public.customer_view VALUES ($1, $2)",
        "insert into CUSTOMER_VIEW select 1, 'x'",
        "UPDATE customer_view SET email = 'x' WHERE id = 1",
        "UPDATE customer_view v SET id = 2",
        "INSERT INTO reports.contacts (id, phone) VALUES (1, '555')",
        "COPY customer_view FROM STDIN",
        "COPY customer_view (email) FROM STDIN WITH (FORMAT csv)",
    ] {
        let s = plan(&c, sql);
        assert!(
            s.starts_with("deny: pgcloak: view ") && s.contains("write to the table itself"),
            "{sql}: {s}"
        );
    }
    // MERGE is not analysed: naming a protected view refuses it too (fail closed).
    let s = plan(
        &c,
        "MERGE INTO customer_view v USING (SELECT 1 AS id) s ON v.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'x')",
    );
    assert!(s.starts_with("deny: "), "{s}");
}

#[test]
fn reads_deletes_and_other_views_pass() {
    let c = with_views();
    assert_eq!(plan(&c, "SELECT * FROM customer_view"), "allow");
    assert_eq!(plan(&c, "DELETE FROM customer_view WHERE id = 1"), "allow");
    assert_eq!(plan(&c, "INSERT INTO order_view VALUES (1, 2)"), "allow");
    // A schema where the name is not a protected view.
    assert_eq!(
        plan(&c, "INSERT INTO public.contacts VALUES (1, '555')"),
        "allow"
    );
    // Without the catalog's knowledge the same write is not recognised (the proxy loads it).
    let bare = catalog().with_table("public", "customer_view", ["id", "email"]);
    let p = policy();
    let sql = "INSERT INTO customer_view VALUES (1, 'x')";
    let l = lex(sql);
    let plan = analyze(sql, &l, &bare, &p, p.role_named("app").unwrap());
    assert!(matches!(plan.statements[0].decision, Decision::Allow));
}
