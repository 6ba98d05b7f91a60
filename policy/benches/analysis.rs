//! Criterion benches of the hot path: cached plan lookup, lexer normalisation, full analysis of a join.

use std::hint::black_box;

use criterion::measurement::Measurement;
use criterion::{criterion_group, criterion_main, Criterion};
use pgcloak_policy::{analyze, lex, Catalog, PlanCache, PlanKey, Policy};

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

[[role]]
name = "app"
read = { confidential = "plaintext", sensitive = "plaintext" }
write = ["confidential", "sensitive"]
"#;

/// About 200 bytes, Hibernate style, with literals.
const STMT_200: &str = "select c1_0.id,c1_0.email,c1_0.phone,c1_0.notes from customers c1_0 where c1_0.email='alice@example.com' and c1_0.created_at>'2024-01-01' and c1_0.id in (17,42,99) order by c1_0.id desc limit 50 offset 0";

const JOIN_3: &str = "SELECT c.id, c.email, o.id, o.total, i.qty FROM customers c JOIN orders o ON o.customer_id = c.id JOIN order_items i ON i.order_id = o.id WHERE c.phone = $1 AND o.total > $2 ORDER BY o.id LIMIT 100";

fn catalog() -> Catalog {
    Catalog::new()
        .with_table(
            "public",
            "customers",
            ["id", "email", "phone", "ssn", "notes", "created_at"],
        )
        .with_table(
            "public",
            "orders",
            ["id", "customer_id", "total", "created_at"],
        )
        .with_table("public", "order_items", ["order_id", "product_id", "qty"])
}

fn benches(c: &mut Criterion) {
    run(c, "");
}

fn run<M: Measurement + 'static>(c: &mut Criterion<M>, prefix: &str) {
    let policy = Policy::parse(POLICY, "policy.toml").expect("policy");
    let cat = catalog();
    let role = policy.role_named("app").expect("role");

    let lexed = lex(STMT_200);
    assert!((190..=210).contains(&STMT_200.len()), "{}", STMT_200.len());
    let cache = PlanCache::new(10_000);
    // Fill the cache with other plans too, so the lookup is not into an empty map.
    for i in 0..2000 {
        let sql = format!("SELECT id FROM customers WHERE id = $1 AND c{i} = 1");
        let l = lex(&sql);
        let k = PlanKey::of(&l, &role.name, &policy, &cat);
        cache.get_or_insert_with(&k, l.fingerprint, || analyze(&sql, &l, &cat, &policy, role));
    }
    let key = PlanKey::of(&lexed, &role.name, &policy, &cat);
    cache.get_or_insert_with(&key, lexed.fingerprint, || {
        analyze(STMT_200, &lexed, &cat, &policy, role)
    });
    assert!(cache.get(&key, lexed.fingerprint).is_some());

    c.bench_function(&format!("{prefix}cached_plan_lookup"), |b| {
        b.iter(|| {
            let k = PlanKey::of(black_box(&lexed), &role.name, &policy, &cat);
            black_box(cache.get(&k, lexed.fingerprint))
        })
    });

    c.bench_function(&format!("{prefix}lex_normalise_200_bytes"), |b| {
        b.iter(|| black_box(lex(black_box(STMT_200))))
    });

    let jl = lex(JOIN_3);
    c.bench_function(&format!("{prefix}analyze_3_table_join"), |b| {
        b.iter(|| black_box(analyze(black_box(JOIN_3), &jl, &cat, &policy, role)))
    });

    // Baseline: the sqlparser parse alone (the floor of full analysis).
    c.bench_function(&format!("{prefix}sqlparser_parse_3_table_join"), |b| {
        b.iter(|| {
            let d = sqlparser::dialect::PostgreSqlDialect {};
            black_box(sqlparser::parser::Parser::parse_sql(&d, black_box(JOIN_3)).ok())
        })
    });

    c.bench_function(&format!("{prefix}lex_and_analyze_200_bytes"), |b| {
        b.iter(|| {
            let l = lex(black_box(STMT_200));
            black_box(analyze(STMT_200, &l, &cat, &policy, role))
        })
    });
}

criterion_group!(analysis, benches);
criterion_main!(analysis);
