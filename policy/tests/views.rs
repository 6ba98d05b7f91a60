//! Views that read protected tables: the catalog marks them, statements naming them are analysed (as
//! the view's query when the catalog has it), and writes through them are refused (the server would
//! store the values unencrypted).

mod common;

use common::{catalog, policy, summary_of};
use pgcloak_policy::{analyze, lex, Catalog, Decision};

fn with_views() -> Catalog {
    let mut c = catalog()
        .with_table("public", "customer_view", ["id", "email"])
        .with_table("reports", "contacts", ["id", "phone"])
        .with_table("public", "order_view", ["id", "total"]);
    c.add_protected_view("public", "customer_view", None);
    c.add_protected_view("reports", "contacts", None);
    c
}

fn plan(c: &Catalog, sql: &str) -> String {
    plan_as(c, "app", sql)
}

fn plan_as(c: &Catalog, role: &str, sql: &str) -> String {
    let p = policy();
    let role = match role {
        "default" => p.default_role(),
        other => p.role_named(other).expect("role exists"),
    };
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
    c.add_protected_view("public", "customer_view", None);
    c.add_protected_view("public", "contacts", None);
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

/// Views with their queries as `pg_get_viewdef` prints them under `search_path = pg_catalog`.
fn with_definitions() -> Catalog {
    let mut c = catalog()
        .with_table("public", "customer_view", ["id", "email", "note"])
        .with_table("public", "contact_view", ["id", "mail"])
        .with_table("public", "filtered", ["id", "email"])
        .with_table("public", "odd", ["x"]);
    c.add_protected_view(
        "public",
        "customer_view",
        Some(" SELECT customers.id,\n    customers.email,\n    customers.notes AS note\n   FROM public.customers;"),
    );
    c.add_protected_view(
        "public",
        "contact_view",
        Some(" SELECT customer_view.id,\n    customer_view.email AS mail\n   FROM public.customer_view\n  WHERE (customer_view.id > 0);"),
    );
    c.add_protected_view(
        "public",
        "filtered",
        Some(" SELECT customers.id,\n    customers.email\n   FROM public.customers\n  WHERE (customers.email = 'x'::text);"),
    );
    c.add_protected_view("public", "odd", Some("DELETE FROM public.customers"));
    c
}

#[test]
fn reads_through_views_follow_the_policy_of_the_columns_behind_them() {
    let c = with_definitions();
    assert_eq!(
        plan(&c, "SELECT * FROM customer_view"),
        "allow out=P,D:email,P"
    );
    assert_eq!(
        plan(&c, "SELECT v.email, v.note FROM public.customer_view v"),
        "allow out=D:email,P"
    );
    // Views of views.
    assert_eq!(
        plan(&c, "SELECT mail FROM contact_view"),
        "allow out=D:email"
    );
    // The audit trail sees the columns behind the view.
    let p = policy();
    let sql = "SELECT mail FROM contact_view";
    let l = lex(sql);
    let read = analyze(sql, &l, &c, &p, p.role_named("app").unwrap());
    let cols: Vec<&str> = read.statements[0]
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["public.customers.email"]);
    assert!(read.statements[0]
        .tables
        .contains(&"public.customers".to_string()));
    // A literal of the statement compared with a view column is encrypted for the column behind it.
    assert_eq!(
        plan(
            &c,
            "SELECT id FROM customer_view WHERE email = 'ann@example.com'"
        ),
        "allow enc=#0:email"
    );
    assert_eq!(
        plan(&c, "SELECT mail FROM contact_view WHERE mail = $1"),
        "allow enc=$1:email out=D:email"
    );
    // The role's access applies as for the table itself.
    assert_eq!(
        plan_as(&c, "support", "SELECT email FROM customer_view"),
        "allow out=M:email max=50"
    );
    let denied = plan_as(&c, "default", "SELECT mail FROM contact_view");
    assert!(denied.starts_with("deny: "), "{denied}");
    assert_eq!(
        plan_as(&c, "default", "SELECT id, note FROM customer_view"),
        "allow"
    );
    // A CTE of the statement does not replace the table inside the view.
    assert_eq!(
        plan(
            &c,
            "WITH customers AS (SELECT 1 AS id, 'x' AS email) SELECT email FROM customer_view"
        ),
        "allow out=D:email"
    );
}

#[test]
fn views_that_cannot_be_read_are_refused() {
    let c = with_definitions();
    // The view compares an encrypted column with its own literal, which pgcloak cannot rewrite.
    let s = plan(&c, "SELECT * FROM filtered");
    assert!(s.starts_with("deny: "), "{s}");
    let s = plan(&c, "SELECT * FROM odd");
    assert!(
        s.starts_with("deny: ") && s.contains("is not a single query"),
        "{s}"
    );
    // A view's query is held to the limits of a statement.
    let mut deep = with_definitions().with_table("public", "deep", ["email"]);
    deep.add_protected_view(
        "public",
        "deep",
        Some(" SELECT ((((((((((customers.email)))))))))) AS email\n   FROM public.customers;"),
    );
    let s = plan(&deep, "SELECT * FROM deep");
    assert!(s.starts_with("deny: ") && s.contains("nests"), "{s}");
    // Writes stay refused when the view's query is known.
    let s = plan(&c, "UPDATE customer_view SET note = 'x'");
    assert!(s.contains("write to the table itself"), "{s}");
}
