//! Table-driven analysis tests: real ORM-style SQL with the expected plan or refusal, per role.

mod common;

use common::run_table;

/// Django 5's bulk_create: one array per column, unnested into rows.
#[test]
fn bulk_insert_from_unnest_encrypts_each_array_for_its_column() {
    run_table(&[
        (
            "app",
            r#"INSERT INTO "customers" ("id", "email", "salary") SELECT * FROM UNNEST(($1)::integer[], ($2)::varchar[], ($3)::integer[]) RETURNING "customers"."id""#,
            "allow enc=$2:email[],$3:salary[]",
        ),
        (
            "app",
            "INSERT INTO customers (id, email) SELECT * FROM unnest($1::int[], $2::text[]) AS t(a, b)",
            "allow enc=$2:email[]",
        ),
        (
            "support",
            "INSERT INTO customers (id, email) SELECT * FROM UNNEST($1::int[], $2::text[])",
            "deny~may not write column public.customers.email",
        ),
        // Anything but the plain shape is not a column-by-column source.
        (
            "app",
            "INSERT INTO customers (id, email) SELECT * FROM UNNEST($1::int[], $2::text[]) WHERE true",
            "deny~could not be analysed",
        ),
        (
            "app",
            "INSERT INTO customers (id, email) SELECT * FROM UNNEST($1::int[], ARRAY[lower($2)])",
            "deny~must be a literal or a parameter",
        ),
    ]);
}

/// Django (psycopg renders `%s` as `$n` through the extended protocol).
#[test]
fn django_style() {
    run_table(&[
        (
            "app",
            r#"SELECT "customers"."id", "customers"."email" FROM "customers" WHERE "customers"."id" = $1"#,
            "allow out=P,D:email",
        ),
        (
            "app",
            r#"SELECT "customers"."id", "customers"."email", "customers"."phone" FROM "customers" WHERE "customers"."email" = $1 LIMIT 21"#,
            "allow enc=$1:email out=P,D:email,D:phone",
        ),
        (
            "support",
            r#"SELECT "customers"."id", "customers"."email" FROM "customers" WHERE "customers"."email" = $1 LIMIT 21"#,
            "allow enc=$1:email out=P,M:email max=50",
        ),
        (
            "default",
            r#"SELECT "customers"."id", "customers"."email" FROM "customers" WHERE "customers"."id" = $1"#,
            "deny~may not read column public.customers.email",
        ),
        (
            "default",
            r#"SELECT "customers"."id", "customers"."notes" FROM "customers" WHERE "customers"."id" = $1"#,
            "allow",
        ),
        (
            "default",
            r#"SELECT "customers"."id", "customers"."salary" FROM "customers" ORDER BY "customers"."id" ASC"#,
            "allow out=P,M:salary",
        ),
        (
            "app",
            r#"INSERT INTO "customers" ("email", "phone", "ssn", "salary", "notes") VALUES ($1, $2, $3, $4, $5) RETURNING "customers"."id""#,
            "allow enc=$1:email,$2:phone,$3:ssn,$4:salary",
        ),
        (
            "support",
            r#"INSERT INTO "customers" ("email", "notes") VALUES ($1, $2) RETURNING "customers"."id""#,
            "deny~may not write column public.customers.email",
        ),
        (
            "support",
            r#"UPDATE "customers" SET "salary" = $1 WHERE "customers"."id" = $2"#,
            "allow enc=$1:salary",
        ),
        (
            "support",
            r#"UPDATE "customers" SET "phone" = $1 WHERE "customers"."id" = $2"#,
            "deny~may not write column public.customers.phone",
        ),
        (
            "app",
            r#"UPDATE "customers" SET "email" = $1, "notes" = $2 WHERE "customers"."id" = $3"#,
            "allow enc=$1:email",
        ),
        (
            "app",
            r#"DELETE FROM "customers" WHERE "customers"."id" IN ($1, $2, $3)"#,
            "allow",
        ),
        (
            "app",
            r#"DELETE FROM "customers" WHERE "customers"."email" = $1"#,
            "allow enc=$1:email",
        ),
        (
            "app",
            r#"SELECT COUNT(*) AS "__count" FROM "customers""#,
            "allow",
        ),
        (
            "app",
            r#"SELECT COUNT(*) AS "__count" FROM "customers" WHERE "customers"."email" IN ($1, $2)"#,
            "allow enc=$1:email,$2:email",
        ),
        (
            "app",
            r#"SELECT "customers"."id" FROM "customers" WHERE "customers"."email" LIKE $1"#,
            "deny~cannot work on ciphertext",
        ),
        (
            "app",
            r#"SELECT "customers"."id" FROM "customers" WHERE UPPER("customers"."email"::text) = UPPER($1)"#,
            "deny~cannot work on ciphertext",
        ),
        (
            "app",
            r#"SELECT "customers"."id", "customers"."email" FROM "customers" ORDER BY "customers"."email" ASC"#,
            "deny~ORDER BY on encrypted column public.customers.email",
        ),
        (
            "app",
            r#"SELECT (1) AS "a" FROM "customers" WHERE "customers"."email" = $1 LIMIT 1"#,
            "allow enc=$1:email",
        ),
        (
            "app",
            r#"SELECT "orders"."id", "orders"."total", "customers"."email" FROM "orders" INNER JOIN "customers" ON ("orders"."customer_id" = "customers"."id") WHERE "orders"."id" = $1"#,
            "allow out=P,P,D:email",
        ),
        (
            "app",
            r#"SELECT "customers"."id" FROM "customers" WHERE "customers"."ssn" IS NULL"#,
            "allow",
        ),
        (
            "default",
            r#"SELECT "customers"."id" FROM "customers" WHERE "customers"."ssn" IS NULL"#,
            "deny~may not read column public.customers.ssn",
        ),
        (
            "app",
            r#"SELECT "customers"."id" FROM "customers" WHERE "customers"."ssn" = $1"#,
            "deny~randomized encryption",
        ),
        (
            "app",
            r#"SELECT "customers"."salary" FROM "customers" WHERE "customers"."salary" > $1"#,
            "deny~randomized encryption",
        ),
        (
            "support",
            r#"SELECT "customers"."id", "customers"."phone" FROM "customers" WHERE "customers"."phone" = $1"#,
            "allow enc=$1:phone out=P,M:phone max=50",
        ),
        (
            "app",
            r#"UPDATE "customers" SET "notes" = $1 WHERE "customers"."email" = $2"#,
            "allow enc=$2:email",
        ),
        (
            "app",
            r#"SELECT DISTINCT "customers"."email" FROM "customers""#,
            "allow out=D:email",
        ),
        (
            "app",
            r#"SELECT DISTINCT "customers"."ssn" FROM "customers""#,
            "deny~randomized encryption",
        ),
    ]);
}

/// Rails / ActiveRecord.
#[test]
fn rails_style() {
    run_table(&[
        (
            "app",
            r#"SELECT "customers".* FROM "customers" WHERE "customers"."email" = $1 LIMIT $2"#,
            "allow enc=$1:email out=P,D:email,D:phone,D:ssn,D:salary,P,P",
        ),
        (
            "support",
            r#"SELECT "customers".* FROM "customers" WHERE "customers"."email" = $1 LIMIT $2"#,
            "allow enc=$1:email out=P,M:email,M:phone,M:ssn,D:salary,P,P max=50",
        ),
        (
            "default",
            r#"SELECT "customers".* FROM "customers" WHERE "customers"."id" = $1 LIMIT $2"#,
            "deny~may not read column public.customers.email",
        ),
        (
            "default",
            r#"SELECT "customers"."id", "customers"."salary", "customers"."notes" FROM "customers" WHERE "customers"."id" = $1 LIMIT $2"#,
            "allow out=P,M:salary,P",
        ),
        (
            "app",
            r#"SELECT "customers".* FROM "customers" WHERE "customers"."id" = $1 LIMIT $2"#,
            "allow out=P,D:email,D:phone,D:ssn,D:salary,P,P",
        ),
        (
            "app",
            r#"SELECT 1 AS one FROM "customers" WHERE "customers"."email" = $1 LIMIT $2"#,
            "allow enc=$1:email",
        ),
        (
            "app",
            r#"INSERT INTO "customers" ("email", "phone", "created_at") VALUES ($1, $2, $3) RETURNING "id""#,
            "allow enc=$1:email,$2:phone",
        ),
        (
            "app",
            r#"UPDATE "customers" SET "phone" = $1 WHERE "customers"."id" = $2"#,
            "allow enc=$1:phone",
        ),
        (
            "app",
            r#"SELECT "customers".* FROM "customers" WHERE "customers"."email" IN ($1, $2, $3)"#,
            "allow enc=$1:email,$2:email,$3:email out=P,D:email,D:phone,D:ssn,D:salary,P,P",
        ),
        (
            "app",
            r#"SELECT "customers".* FROM "customers" ORDER BY "customers"."id" DESC LIMIT $1"#,
            "allow out=P,D:email,D:phone,D:ssn,D:salary,P,P",
        ),
        (
            "app",
            r#"SELECT COUNT(*) FROM "customers" WHERE "customers"."phone" IS NOT NULL"#,
            "allow",
        ),
        (
            "app",
            r#"SELECT "orders".* FROM "orders" INNER JOIN "customers" ON "customers"."id" = "orders"."customer_id" WHERE "customers"."email" = $1"#,
            "allow enc=$1:email",
        ),
        (
            "app",
            r#"SELECT "customers"."email" FROM "customers" WHERE "customers"."email" = 'alice@example.com' LIMIT 1"#,
            "allow enc=#0:email out=D:email",
        ),
        (
            "app",
            r#"DELETE FROM "customers" WHERE "customers"."id" = $1"#,
            "allow",
        ),
        (
            "app",
            r#"SELECT "customers"."id" FROM "customers" WHERE "customers"."email" ILIKE $1"#,
            "deny~cannot work on ciphertext",
        ),
        (
            "support",
            r#"SELECT "customers"."id" FROM "customers" WHERE "customers"."notes" ILIKE $1"#,
            "allow",
        ),
        (
            "app",
            r#"SELECT "customers"."email", COUNT(*) FROM "customers" GROUP BY "customers"."email""#,
            "allow out=D:email,P",
        ),
        (
            "app",
            r#"SELECT "customers"."salary", COUNT(*) FROM "customers" GROUP BY "customers"."salary""#,
            "deny~randomized encryption",
        ),
        (
            "app",
            r#"SELECT MAX("customers"."salary") FROM "customers""#,
            "deny~randomized encryption",
        ),
        (
            "app",
            r#"SELECT SUM("customers"."salary") FROM "customers""#,
            "deny~randomized encryption",
        ),
        (
            "app",
            r#"SELECT COUNT("customers"."salary") FROM "customers""#,
            "allow",
        ),
        (
            "default",
            r#"SELECT COUNT("customers"."salary") FROM "customers""#,
            "allow",
        ),
        (
            "default",
            r#"SELECT COUNT("customers"."email") FROM "customers""#,
            "deny~may not read column public.customers.email",
        ),
    ]);
}

/// Hibernate 6 (JDBC `?` becomes `$n` on the wire).
#[test]
fn hibernate_style() {
    run_table(&[
        ("app", "select c1_0.id,c1_0.phone from customers c1_0 where c1_0.phone=$1", "allow enc=$1:phone out=P,D:phone"),
        ("support", "select c1_0.id,c1_0.phone from customers c1_0 where c1_0.phone=$1", "allow enc=$1:phone out=P,M:phone max=50"),
        ("default", "select c1_0.id,c1_0.phone from customers c1_0 where c1_0.phone=$1", "deny~may not read column public.customers.phone"),
        ("app", "select c1_0.id,c1_0.email,c1_0.notes,c1_0.phone,c1_0.salary,c1_0.ssn from customers c1_0 where c1_0.id=$1", "allow out=P,D:email,P,D:phone,D:salary,D:ssn"),
        ("app", "insert into customers (email,notes,phone,salary,ssn) values ($1,$2,$3,$4,$5) returning id", "allow enc=$1:email,$3:phone,$4:salary,$5:ssn"),
        ("app", "update customers set email=$1,notes=$2,phone=$3,salary=$4,ssn=$5 where id=$6", "allow enc=$1:email,$3:phone,$4:salary,$5:ssn"),
        ("support", "update customers set email=$1,notes=$2,phone=$3,salary=$4,ssn=$5 where id=$6", "deny~may not write column public.customers.email"),
        ("app", "delete from customers where id=$1", "allow"),
        ("app", "select o1_0.id,o1_0.total,c1_0.email from orders o1_0 join customers c1_0 on c1_0.id=o1_0.customer_id where c1_0.email=$1", "allow enc=$1:email out=P,P,D:email"),
        ("app", "select c1_0.id from customers c1_0 where c1_0.email in ($1,$2)", "allow enc=$1:email,$2:email"),
        ("app", "select count(c1_0.id) from customers c1_0 where c1_0.phone=$1", "allow enc=$1:phone"),
        ("app", "select c1_0.id,c1_0.email from customers c1_0 order by c1_0.id offset $1 rows fetch first $2 rows only", "allow out=P,D:email"),
        ("app", "select c1_0.id from customers c1_0 where lower(c1_0.email) like lower($1) escape '\\'", "deny~cannot work on ciphertext"),
        ("app", "select c1_0.id,c1_0.email from customers c1_0 where c1_0.id in (select o1_0.customer_id from orders o1_0 where o1_0.total>$1)", "allow out=P,D:email"),
        ("default", "select c1_0.id,c1_0.notes from customers c1_0 where exists(select 1 from orders o1_0 where o1_0.customer_id=c1_0.id)", "allow"),
        ("app", "select c1_0.id from customers c1_0 where c1_0.email=c1_0.phone", "deny~cannot be compared"),
        ("app", "select c1_0.id from customers c1_0 join customers c2_0 on c1_0.email=c2_0.email", "allow"),
        ("app", "select c1_0.id from customers c1_0 join users u1_0 on c1_0.email=u1_0.email", "deny~can only be compared with a literal, a parameter or itself"),
    ]);
}

/// SQLAlchemy (psycopg 3 sends `$n`).
#[test]
fn sqlalchemy_style() {
    run_table(&[
        ("app", "SELECT customers.id, customers.email, customers.phone \nFROM customers \nWHERE customers.email = $1", "allow enc=$1:email out=P,D:email,D:phone"),
        ("app", "SELECT customers.id AS customers_id, customers.email AS customers_email \nFROM customers \nWHERE customers.id = $1::INTEGER", "allow out=P,D:email"),
        ("app", "INSERT INTO customers (email, phone, ssn) VALUES ($1::VARCHAR, $2::VARCHAR, $3::VARCHAR) RETURNING customers.id", "allow enc=$1:email,$2:phone,$3:ssn"),
        ("app", "INSERT INTO customers (email, phone) VALUES ($1, $2), ($3, $4), ($5, $6)", "allow enc=$1:email,$2:phone,$3:email,$4:phone,$5:email,$6:phone"),
        ("app", "UPDATE customers SET phone=$1::VARCHAR WHERE customers.id = $2::INTEGER", "allow enc=$1:phone"),
        ("app", "SELECT count(*) AS count_1 \nFROM (SELECT customers.id AS customers_id, customers.email AS customers_email \nFROM customers) AS anon_1", "allow"),
        ("app", "SELECT anon_1.customers_email \nFROM (SELECT customers.id AS customers_id, customers.email AS customers_email \nFROM customers \nWHERE customers.phone = $1) AS anon_1", "allow enc=$1:phone out=D:email"),
        ("support", "SELECT anon_1.customers_email \nFROM (SELECT customers.email AS customers_email FROM customers) AS anon_1", "allow out=M:email max=50"),
        ("default", "SELECT anon_1.e FROM (SELECT customers.ssn AS e FROM customers) AS anon_1", "deny~may not read column public.customers.ssn"),
        ("app", "SELECT customers.id FROM customers WHERE customers.email = ANY ($1::VARCHAR[])", "allow enc=$1:email[]"),
        ("app", "SELECT customers.id FROM customers WHERE customers.email IN (__[POSTCOMPILE_email_1])", "deny~"),
        ("app", "SELECT customers.id, customers.salary FROM customers WHERE customers.salary IS NOT NULL", "allow out=P,D:salary"),
        ("app", "SELECT lower(customers.notes) AS lower_1 FROM customers", "allow"),
        ("default", "SELECT lower(customers.salary::text) AS x FROM customers", "deny~sees column public.customers.salary masked"),
        ("app", "DELETE FROM customers WHERE customers.phone = $1 RETURNING customers.id, customers.email", "allow enc=$1:phone out=P,D:email"),
    ]);
}

/// Prisma.
#[test]
fn prisma_style() {
    run_table(&[
        (
            "app",
            r#"SELECT "public"."customers"."id", "public"."customers"."email" FROM "public"."customers" WHERE "public"."customers"."email" = $1 LIMIT $2 OFFSET $3"#,
            "allow enc=$1:email out=P,D:email",
        ),
        (
            "support",
            r#"SELECT "public"."customers"."id", "public"."customers"."email", "public"."customers"."salary" FROM "public"."customers" WHERE 1=1 LIMIT $1 OFFSET $2"#,
            "allow out=P,M:email,D:salary max=50",
        ),
        (
            "default",
            r#"SELECT "public"."customers"."id", "public"."customers"."phone" FROM "public"."customers" WHERE 1=1 OFFSET $1"#,
            "deny~may not read column public.customers.phone",
        ),
        (
            "app",
            r#"INSERT INTO "public"."customers" ("email","phone") VALUES ($1,$2) RETURNING "public"."customers"."id", "public"."customers"."email""#,
            "allow enc=$1:email,$2:phone out=P,D:email",
        ),
        (
            "app",
            r#"UPDATE "public"."customers" SET "email" = $1 WHERE ("public"."customers"."id" = $2 AND 1=1) RETURNING "public"."customers"."id""#,
            "allow enc=$1:email",
        ),
        (
            "app",
            r#"SELECT "public"."customers"."id" FROM "public"."customers" WHERE ("public"."customers"."email" = $1 OR "public"."customers"."phone" = $2) LIMIT $3 OFFSET $4"#,
            "allow enc=$1:email,$2:phone",
        ),
        (
            "app",
            r#"SELECT "public"."customers"."id" FROM "public"."customers" WHERE "public"."customers"."email" IN ($1,$2,$3) OFFSET $4"#,
            "allow enc=$1:email,$2:email,$3:email",
        ),
        (
            "app",
            r#"SELECT COUNT(*) FROM (SELECT "public"."customers"."id" FROM "public"."customers" WHERE "public"."customers"."phone" = $1 OFFSET $2) AS "sub""#,
            "allow enc=$1:phone",
        ),
        (
            "app",
            r#"SELECT "public"."customers"."id" FROM "public"."customers" WHERE "public"."customers"."email"::text LIKE $1 OFFSET $2"#,
            "deny~cannot work on ciphertext",
        ),
        (
            "app",
            r#"SELECT "public"."customers"."id" FROM "public"."customers" WHERE "public"."customers"."email" NOT IN ($1) OFFSET $2"#,
            "allow enc=$1:email",
        ),
        (
            "app",
            r#"DELETE FROM "public"."customers" WHERE ("public"."customers"."id" = $1 AND 1=1)"#,
            "allow",
        ),
        (
            "app",
            r#"SELECT "t0"."id", "t1"."total" FROM "public"."customers" AS "t0" LEFT JOIN "public"."orders" AS "t1" ON ("t0"."id") = ("t1"."customer_id") WHERE "t0"."email" = $1"#,
            "allow enc=$1:email",
        ),
    ]);
}

/// Hand-written SQL: joins, CTEs, set operations, literals, INSERT ... SELECT, ON CONFLICT, COPY, etc.
#[test]
fn general_sql() {
    run_table(&[
        ("app", "SELECT email FROM customers WHERE email = 'a@example.com'", "allow enc=#0:email out=D:email"),
        ("app", "SELECT email FROM customers WHERE 'a@example.com' = email", "allow enc=#0:email out=D:email"),
        ("app", "SELECT email FROM customers WHERE email <> $1", "allow enc=$1:email out=D:email"),
        ("app", "SELECT email FROM customers WHERE email IS DISTINCT FROM $1", "allow enc=$1:email out=D:email"),
        ("app", "SELECT id FROM customers WHERE email IN ('a@x.org', 'b@x.org') AND id > 10", "allow enc=#0:email,#1:email"),
        ("app", "SELECT id FROM customers WHERE email = ANY($1)", "allow enc=$1:email[]"),
        ("app", "SELECT id FROM customers WHERE email = ANY(ARRAY[$1, $2])", "allow enc=$1:email,$2:email"),
        ("app", "SELECT id FROM customers WHERE email = ANY('{a@x.org,b@x.org}')", "allow enc=#0:email[]"),
        ("app", "SELECT id FROM customers WHERE phone BETWEEN $1 AND $2", "deny~cannot work on ciphertext"),
        ("app", "SELECT id FROM customers WHERE phone < '555'", "deny~cannot work on ciphertext"),
        ("app", "SELECT id FROM customers WHERE email ~ '^a'", "deny~cannot work on ciphertext"),
        ("app", "SELECT id FROM customers WHERE email SIMILAR TO 'a%'", "deny~cannot work on ciphertext"),
        ("app", "SELECT id FROM customers WHERE email = lower($1)", "deny~can only be compared with a literal, a parameter or itself"),
        ("app", "SELECT id FROM customers WHERE email = $1 AND phone = $1", "deny~two encrypted columns"),
        ("app", "SELECT id FROM customers WHERE (email, phone) = ($1, $2)", "allow enc=$1:email,$2:phone"),
        ("app", "SELECT id FROM customers WHERE email = NULL", "allow"),
        ("app", "SELECT id, email FROM customers ORDER BY 2", "deny~ORDER BY on encrypted column"),
        ("app", "SELECT id, notes FROM customers ORDER BY 2", "allow"),
        ("app", "SELECT id, email AS e FROM customers ORDER BY e", "deny~ORDER BY on encrypted column"),
        ("app", "SELECT email, count(*) FROM customers GROUP BY 1", "allow out=D:email,P"),
        ("app", "SELECT ssn, count(*) FROM customers GROUP BY 1", "deny~randomized encryption"),
        ("app", "SELECT c.email, o.total FROM customers c JOIN orders o ON o.customer_id = c.id JOIN order_items i ON i.order_id = o.id WHERE c.phone = $1 AND i.qty > 2", "allow enc=$1:phone out=D:email,P"),
        ("app", "SELECT c.id FROM customers c LEFT JOIN customers d USING (email)", "allow"),
        ("app", "SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.id = $1", "allow out=P,D:email,D:phone,D:ssn,D:salary,P,P,P,P,P,P"),
        ("support", "SELECT o.*, c.phone FROM orders o JOIN customers c ON c.id = o.customer_id", "allow out=P,P,P,P,M:phone max=50"),
        ("app", "WITH recent AS (SELECT id, email FROM customers WHERE created_at > now() - interval '1 day') SELECT email FROM recent", "allow out=D:email"),
        ("support", "WITH x AS (SELECT email AS e FROM customers) SELECT e FROM x WHERE e = $1", "allow enc=$1:email out=M:email max=50"),
        ("app", "WITH x AS (SELECT email AS e FROM customers) SELECT upper(e) FROM x", "deny~cannot work on ciphertext"),
        ("app", "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 10) SELECT n FROM t", "allow"),
        ("app", "SELECT email FROM customers UNION ALL SELECT email FROM customers", "allow out=D:email"),
        ("app", "SELECT email FROM customers UNION SELECT email FROM customers", "allow out=D:email"),
        ("app", "SELECT email FROM customers UNION ALL SELECT phone FROM customers", "deny~combines"),
        ("app", "SELECT ssn FROM customers UNION SELECT ssn FROM customers", "deny~randomized encryption"),
        ("app", "SELECT email FROM customers UNION ALL SELECT email FROM users", "allow out=D:email"),
        ("app", "SELECT (SELECT email FROM customers WHERE id = $1) AS e", "allow out=D:email"),
        ("default", "SELECT (SELECT ssn FROM customers WHERE id = $1) AS s", "deny~may not read column public.customers.ssn"),
        ("app", "SELECT id FROM customers WHERE email = (SELECT email FROM customers WHERE id = 1)", "allow"),
        ("app", "SELECT id FROM customers WHERE email IN (SELECT email FROM customers WHERE phone = $1)", "allow enc=$1:phone"),
        ("app", "SELECT id FROM customers WHERE email IN (SELECT email FROM users)", "deny~can only be compared"),
        ("app", "INSERT INTO customers (email, phone) VALUES ('a@x.org', '555-1234')", "allow enc=#0:email,#1:phone"),
        ("app", "INSERT INTO customers VALUES (1, 'a@x.org', '555', '123-45-6789', 5000, 'n', now())", "allow enc=#1:email,#2:phone,#3:ssn,#4:salary"),
        ("app", "INSERT INTO customers (email, salary) VALUES ($1, -5)", "allow enc=$1:email,#0:salary"),
        ("app", "UPDATE customers SET salary = + 5 WHERE id = 1", "allow enc=#0:salary"),
        ("app", "INSERT INTO customers (email, salary) VALUES ($1, - -5)", "deny~must be a literal or a parameter"),
        ("app", "INSERT INTO customers (email, salary) VALUES ($1, -(5))", "deny~must be a literal or a parameter"),
        ("app", "INSERT INTO customers (email, salary) VALUES ($1, -/* c */5)", "deny~could not be parsed"),
        ("app", "INSERT INTO customers (email, salary) VALUES ($1, 1 -5)", "deny~must be a literal or a parameter"),
        ("app", "INSERT INTO customers (email, salary) VALUES ($1, -'5')", "deny~must be a literal or a parameter"),
        ("app", "SELECT id FROM customers WHERE phone = -5", "allow enc=#0:phone"),
        ("app", "INSERT INTO customers (email, salary) VALUES ($1, '-5')", "allow enc=$1:email,#0:salary"),
        ("app", "INSERT INTO customers (email, phone) VALUES (NULL, DEFAULT)", "allow"),
        ("app", "INSERT INTO customers (email) VALUES (lower($1))", "deny~must be a literal or a parameter"),
        ("app", "INSERT INTO customers (email) SELECT email FROM customers WHERE id = $1", "allow"),
        ("app", "INSERT INTO customers (phone) SELECT email FROM customers", "deny~cannot be stored in public.customers.phone"),
        ("app", "INSERT INTO customers (email) SELECT email FROM users", "deny~must be a literal or a parameter"),
        ("app", "INSERT INTO customers (email) SELECT $1", "allow enc=$1:email"),
        ("app", "INSERT INTO users (email) SELECT email FROM customers", "allow"),
        ("default", "INSERT INTO users (email) SELECT ssn FROM customers", "deny~may not read column public.customers.ssn"),
        ("app", "INSERT INTO customers (email, phone) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE SET phone = EXCLUDED.phone", "allow enc=$1:email,$2:phone"),
        ("app", "INSERT INTO customers (email, phone) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE SET phone = $3", "allow enc=$1:email,$2:phone,$3:phone"),
        ("app", "INSERT INTO customers (email, notes) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE SET notes = EXCLUDED.email", "deny~cannot be stored in public.customers.notes"),
        ("app", "INSERT INTO customers (email) VALUES ($1) ON CONFLICT DO NOTHING", "allow enc=$1:email"),
        ("app", "UPDATE customers SET email = email WHERE id = 1", "allow"),
        ("app", "UPDATE customers SET salary = salary + 1", "deny~randomized encryption"),
        ("app", "UPDATE customers SET notes = phone", "deny~cannot be stored in public.customers.notes"),
        ("app", "UPDATE customers c SET phone = $1 FROM orders o WHERE o.customer_id = c.id AND o.id = $2 RETURNING c.email", "allow enc=$1:phone out=D:email"),
        ("app", "UPDATE customers SET (email, phone) = ($1, $2) WHERE id = $3", "allow enc=$1:email,$2:phone"),
        ("app", "DELETE FROM customers USING orders WHERE orders.customer_id = customers.id AND customers.email = $1", "allow enc=$1:email"),
        ("default", "DELETE FROM customers WHERE email = $1", "deny~may not read column public.customers.email"),
        ("default", "DELETE FROM customers WHERE id = $1 RETURNING id", "allow"),
        ("app", "SELECT id FROM orders WHERE total > 100", "allow"),
        ("default", "SELECT * FROM orders o JOIN products p ON p.id = o.id", "allow"),
        ("app", "SELECT email IS NULL AS missing FROM customers", "allow"),
        ("app", "SELECT count(DISTINCT email) FROM customers", "allow"),
        ("app", "SELECT email || '' FROM customers", "deny~cannot work on ciphertext"),
        ("app", "SELECT CASE WHEN email = $1 THEN 'me' ELSE 'other' END FROM customers", "allow enc=$1:email"),
        ("app", "SELECT CASE WHEN id > 1 THEN email END FROM customers", "deny~cannot work on ciphertext"),
        ("app", "SELECT coalesce(phone, email) FROM customers", "deny~cannot work on ciphertext"),
        ("app", "SELECT row_number() OVER (PARTITION BY email ORDER BY id) FROM customers", "allow"),
        ("app", "SELECT row_number() OVER (ORDER BY email) FROM customers", "deny~ORDER BY on encrypted column"),
        ("app", "SELECT c.email, t.n FROM customers c, LATERAL (SELECT count(*) AS n FROM orders o WHERE o.customer_id = c.id) t", "allow out=D:email,P"),
        ("app", "SELECT x.e FROM (VALUES ($1)) AS x(e)", "allow"),
        ("app", "SELECT * FROM generate_series(1, 3)", "allow"),
        ("app", "SELECT * FROM customers, generate_series(1, 3)", "allow out=P,D:email,D:phone,D:ssn,D:salary,P,P"),
        ("app", "SELECT g.*, c.email FROM generate_series(1, 3) g, customers c", "deny~position of result column"),
        // Function arguments in FROM are checked whether positional or named.
        ("app", "SELECT 1 FROM customers c, LATERAL f(lower(c.email))", "deny~cannot work on ciphertext"),
        ("app", "SELECT 1 FROM customers c, LATERAL f(x => lower(c.email))", "deny~cannot work on ciphertext"),
        ("app", "SELECT 1 FROM customers c, f(x => lower(c.email))", "deny~cannot work on ciphertext"),
        ("app", "SELECT 1 FROM customers c, LATERAL f(x := lower(c.email))", "deny~cannot work on ciphertext"),
        ("default", "SELECT 1 FROM customers c, f(x => c.email)", "deny~may not read column public.customers.email"),
        ("app", "TABLE customers", "deny~could not be analysed"),
        ("app", "SELECT 1; SELECT email FROM customers WHERE phone = '1'", "allow | allow enc=#1:phone out=D:email"),
        ("app", "BEGIN; UPDATE customers SET phone = '5' WHERE id = 2; COMMIT", "allow | allow enc=#0:phone | allow"),
        ("app", "SELECT email FROM public.customers WHERE public.customers.email = $1", "allow enc=$1:email out=D:email"),
        ("app", "SELECT email FROM other.customers", "allow"),
        ("app", "SELECT * FROM archive.customers", "allow"),
        ("app", "SELECT now(), current_user, version()", "allow"),
        ("app", "SET search_path = public", "allow"),
        ("app", "SHOW search_path", "allow"),
        ("app", "CREATE TABLE t2 (id int)", "allow"),
        ("app", "CREATE TABLE t3 AS SELECT email FROM customers", "allow"),
        ("default", "CREATE TABLE t3 AS SELECT email FROM customers", "deny~may not read column public.customers.email"),
        ("app", "CREATE VIEW v AS SELECT id, phone FROM customers", "allow"),
        ("app", "SELECT id INTO TEMP t4 FROM customers WHERE email = $1", "allow enc=$1:email"),
        ("app", "ALTER TABLE customers ADD COLUMN extra text", "allow"),
        ("app", "TRUNCATE customers", "allow"),
        ("app", "EXPLAIN SELECT id FROM customers WHERE email = 'x@y.z'", "allow enc=#0:email"),
        ("app", "EXPLAIN ANALYZE SELECT id FROM customers WHERE ssn LIKE '1%'", "deny~randomized encryption"),
        ("app", "MERGE INTO customers c USING users u ON c.id = u.id WHEN MATCHED THEN UPDATE SET email = u.email", "deny~could not be analysed"),
        ("app", "SELECT email FROM customers FOR UPDATE", "allow out=D:email"),
        ("app", "SELECT id FROM customers WHERE email = $1::text", "allow enc=$1:email"),
        ("app", "SELECT id FROM customers WHERE email = CAST('a@b.c' AS text)", "allow enc=#0:email"),
        ("app", "SELECT id FROM customers WHERE email = $70000", "deny~could not be analysed"),
        ("app", "SELECT id FROM customers WHERE NOT (email = $1 OR phone = $2)", "allow enc=$1:email,$2:phone"),
    ]);
}

/// PREPARE / EXECUTE, cursors, COPY, role changes.
#[test]
fn session_statements() {
    run_table(&[
        ("app", "PREPARE p1 (text) AS SELECT id, email FROM customers WHERE phone = $1", "allow enc=$1:phone out=P,D:email"),
        ("default", "PREPARE p1 (text) AS SELECT id, email FROM customers WHERE phone = $1", "deny~may not read column public.customers.phone"),
        ("app", "EXECUTE p1('555-1234')", "allow"),
        ("app", "DECLARE c1 CURSOR FOR SELECT id, ssn FROM customers", "allow out=P,D:ssn"),
        ("support", "DECLARE c1 CURSOR FOR SELECT id, ssn FROM customers", "allow out=P,M:ssn max=50"),
        ("default", "DECLARE c1 CURSOR FOR SELECT id, ssn FROM customers", "deny~may not read column public.customers.ssn"),
        ("app", "FETCH 10 FROM c1", "allow"),
        ("app", "CLOSE c1", "allow"),
        ("app", "SET ROLE admin", "allow"),
        ("app", "SET SESSION AUTHORIZATION postgres", "allow"),
        ("app", "RESET ROLE", "allow"),
        ("app", "SELECT set_config('role', 'admin', false)", "allow"),
        ("app", "SELECT set_config($1, $2, false)", "deny~set_config"),
        ("app", "SET standard_conforming_strings = off", "deny~standard_conforming_strings"),
        ("app", "SET standard_conforming_strings = on", "allow"),
        ("app", "COPY customers (id, email, phone) FROM STDIN WITH (FORMAT csv)", "allow"),
        ("support", "COPY customers (id, email) FROM STDIN", "deny~may not write column public.customers.email"),
        ("app", "COPY customers FROM STDIN WITH (FORMAT binary)", "allow"),
        ("app", "COPY customers TO STDOUT WITH (FORMAT binary)", "deny~binary COPY TO of protected columns"),
        ("app", "COPY customers (email) FROM '/tmp/x.csv'", "deny~server file"),
        ("app", "COPY customers (id, email) FROM STDIN WITH (FORMAT csv, ENCODING 'LATIN1')", "deny~ENCODING 'LATIN1' cannot carry encrypted column public.customers.email"),
        ("app", "COPY customers (id, email) FROM STDIN WITH (ENCODING 'utf-8')", "allow"),
        ("app", "COPY customers (id, notes) FROM STDIN WITH (ENCODING 'LATIN1')", "allow"),
        ("app", "COPY customers (id, email) TO STDOUT WITH (ENCODING 'WIN1252')", "deny~ENCODING 'WIN1252' cannot carry encrypted column"),
        ("app", "COPY customers (id, notes) TO STDOUT WITH (FORMAT csv, ENCODING 'LATIN1')", "allow"),
        ("app", "COPY customers (id, email) TO STDOUT WITH (FORMAT csv, HEADER true)", "allow out=P,D:email"),
        ("support", "COPY customers (id, email) TO STDOUT", "deny~copy_out = false"),
        ("support", "COPY customers (id, notes) TO STDOUT", "allow"),
        ("default", "COPY customers TO STDOUT", "deny~may not read column public.customers.email"),
        ("app", "COPY (SELECT id, phone FROM customers WHERE email = 'a@b.c') TO STDOUT", "allow enc=#0:email out=P,D:phone"),
        ("app", "COPY customers TO '/tmp/all.csv'", "deny~server file"),
        ("app", "COPY orders TO STDOUT", "allow"),
        ("app", "DEALLOCATE p1", "allow"),
        ("app", "LISTEN ch; NOTIFY ch, 'x'", "allow | allow"),
        ("app", "DO $$ BEGIN PERFORM 1; END $$", "allow"),
        ("app", "DO $$ BEGIN RAISE NOTICE '%', (SELECT ssn FROM customers LIMIT 1); END $$", "deny~could not be analysed"),
        ("app", "CREATE FUNCTION f() RETURNS text AS $$ SELECT ssn FROM customers LIMIT 1 $$ LANGUAGE sql", "deny~function body"),
        ("app", "CREATE FUNCTION g() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", "allow"),
    ]);
}

/// Every literal form, after multi-byte text, tabs and newlines, maps to the lexer's literal index.
#[test]
fn literal_positions_map_for_every_form() {
    run_table(&[
        (
            "app",
            "INSERT INTO customers (email) VALUES ('plain')",
            "allow enc=#0:email",
        ),
        (
            "app",
            "INSERT INTO customers (email) VALUES (E'esc\\'aped')",
            "allow enc=#0:email",
        ),
        (
            "app",
            "INSERT INTO customers (email) VALUES (e'lower')",
            "allow enc=#0:email",
        ),
        (
            "app",
            "INSERT INTO customers (email) VALUES ($$dollar ' \" $$)",
            "allow enc=#0:email",
        ),
        (
            "app",
            "INSERT INTO customers (email) VALUES ($tag$tagged$tag$)",
            "allow enc=#0:email",
        ),
        (
            "app",
            "INSERT INTO customers (email) VALUES (U&'\\0061')",
            "allow enc=#0:email",
        ),
        (
            "app",
            "INSERT INTO customers (email) VALUES (N'national')",
            "allow enc=#0:email",
        ),
        (
            "app",
            "INSERT INTO customers (salary) VALUES (1.5e3)",
            "allow enc=#0:salary",
        ),
        (
            "app",
            "INSERT INTO customers (salary) VALUES (.5)",
            "allow enc=#0:salary",
        ),
        (
            "app",
            "INSERT INTO customers (salary) VALUES (42)",
            "allow enc=#0:salary",
        ),
        (
            "app",
            "INSERT INTO customers (notes, email) VALUES ('ünïcödé 日本語', 'x@y')",
            "allow enc=#1:email",
        ),
        (
            "app",
            "INSERT INTO customers\n\t(notes,\n email)\r\n VALUES ('a\nb',\n\t'x@y')",
            "allow enc=#1:email",
        ),
        (
            "app",
            "/* 'not a literal' */ INSERT INTO customers (email) -- 'nor this'\n VALUES ('x@y')",
            "allow enc=#0:email",
        ),
        (
            "app",
            "SELECT 1; SELECT 'é'; INSERT INTO customers (email) VALUES ('x@y')",
            "allow | allow | allow enc=#2:email",
        ),
        (
            "app",
            "UPDATE customers SET email = 'x@y' WHERE notes = 'ñ' AND phone = '555'",
            "allow enc=#0:email,#2:phone",
        ),
        (
            "app",
            "SELECT id FROM customers WHERE email = DATE '2020-01-01'",
            "allow enc=#0:email",
        ),
    ]);
}

/// The proxy keeps PREPARE/DECLARE plans per session and applies them to EXECUTE/FETCH.
#[test]
fn execute_and_fetch_use_the_stored_plans() {
    use pgcloak_policy::{CursorUse, OutputAction, ValueRef};
    let prep = common::plan_for(
        "app",
        "PREPARE ins (text, text) AS INSERT INTO customers (email, notes) VALUES ($1, $2)",
    );
    let prepared = &prep.statements[0];
    assert_eq!(prepared.prepare.as_deref(), Some("ins"));
    let exec = common::plan_for("app", "EXECUTE ins('a@b.c', 'note')");
    let bound = exec.statements[0].bind_execute(Some(prepared));
    assert!(bound.decision.is_allow());
    assert_eq!(bound.encryptions.len(), 1);
    assert_eq!(bound.encryptions[0].target, ValueRef::Literal(0));
    assert_eq!(bound.encryptions[0].column, "public.customers.email");

    let exec = common::plan_for("app", "EXECUTE ins($3, 'note')");
    let bound = exec.statements[0].bind_execute(Some(prepared));
    assert_eq!(bound.encryptions[0].target, ValueRef::Param(3));

    let exec = common::plan_for("app", "EXECUTE ins(lower('A@B.C'), 'note')");
    let bound = exec.statements[0].bind_execute(Some(prepared));
    assert!(bound
        .deny_message()
        .is_some_and(|m| m.contains("must be a literal or a parameter")));

    let decl = common::plan_for(
        "support",
        "DECLARE cur CURSOR FOR SELECT id, phone FROM customers",
    );
    assert_eq!(
        decl.statements[0].cursor,
        Some(CursorUse::Declare("cur".into()))
    );
    let fetch = common::plan_for("support", "FETCH 10 FROM cur");
    assert_eq!(
        fetch.statements[0].cursor,
        Some(CursorUse::Fetch("cur".into()))
    );
    let f = fetch.statements[0].for_fetch(Some(&decl.statements[0]));
    assert!(matches!(f.outputs[1].action, OutputAction::Mask { .. }));
    assert_eq!(f.max_rows, Some(50));
    assert!(!f.is_trivial());
}

#[test]
fn trivial_plans_and_copy_info() {
    use pgcloak_policy::{CopyDirection, CopyFormat, SessionEffect};
    assert!(common::plan_for("app", "SELECT id, total FROM orders WHERE id = 5").is_trivial());
    assert!(common::plan_for("app", "SELECT id, notes FROM customers").is_trivial());
    assert!(!common::plan_for("app", "SELECT id, email FROM customers").is_trivial());
    assert!(!common::plan_for("app", "SELECT id FROM customers WHERE email = $1").is_trivial());

    let p = common::plan_for("app", "COPY customers (id, email, notes) FROM STDIN WITH (FORMAT csv, DELIMITER ';', HEADER true)");
    let c = p.statements[0].copy.as_ref().expect("copy info");
    assert_eq!(c.direction, CopyDirection::From);
    assert_eq!(c.format, CopyFormat::Csv);
    assert_eq!(c.delimiter, Some(';'));
    assert!(c.header);
    let enc: Vec<bool> = c.columns.iter().map(|x| x.encrypt.is_some()).collect();
    assert_eq!(enc, vec![false, true, false]);
    assert_eq!(c.table.as_deref(), Some("public.customers"));

    for sql in [
        "COPY customers (id, email, phone) FROM STDIN WITH (FORMAT csv, FORCE_NULL (email), FORCE_NOT_NULL (phone, id))",
        "COPY customers (id, email, phone) FROM STDIN WITH (FORMAT csv, FORCE_NULL (\"email\"), FORCE_NOT_NULL (PHONE, id))",
    ] {
        let p = common::plan_for("app", sql);
        let c = p.statements[0].copy.as_ref().expect("copy info");
        let flags: Vec<(bool, bool)> = c
            .columns
            .iter()
            .map(|x| (x.force_null, x.force_not_null))
            .collect();
        assert_eq!(flags, vec![(false, true), (true, false), (false, true)], "{sql}");
    }
    let p = common::plan_for(
        "app",
        "COPY customers (id, email) FROM STDIN WITH CSV FORCE NOT NULL email",
    );
    let c = p.statements[0].copy.as_ref().expect("copy info");
    assert!(c.columns[1].force_not_null && !c.columns[1].force_null);

    // Stored values are assignments (integer columns round fractions), compared ones are not.
    let p = common::plan_for(
        "app",
        "UPDATE customers SET salary = 2.5 WHERE email = 'a@b.c'",
    );
    let assign: Vec<(String, bool)> = p.statements[0]
        .encryptions
        .iter()
        .map(|e| (e.column.clone(), e.assignment))
        .collect();
    assert_eq!(
        assign,
        vec![
            ("public.customers.salary".to_string(), true),
            ("public.customers.email".to_string(), false)
        ]
    );
    let p = common::plan_for("app", "INSERT INTO customers (salary) VALUES (1.5)");
    assert!(p.statements[0].encryptions[0].assignment);

    let p = common::plan_for("app", "COPY customers FROM STDIN");
    let c = p.statements[0].copy.as_ref().expect("copy info");
    assert_eq!(c.columns.len(), 7, "implicit column list from the catalog");
    assert_eq!(c.format, CopyFormat::Text);

    let p = common::plan_for("app", "SET ROLE admin; SET search_path = x, public");
    assert_eq!(
        p.statements[0].effects,
        vec![SessionEffect::RoleChangeIgnored]
    );
    assert_eq!(
        p.statements[1].effects,
        vec![SessionEffect::SearchPathChanged]
    );

    let p = common::plan_for(
        "support",
        "SELECT id, email, ssn FROM customers WHERE phone = $1",
    );
    let sp = &p.statements[0];
    let cols: Vec<(String, &str)> = sp
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.access.as_str()))
        .collect();
    assert_eq!(
        cols,
        vec![
            ("public.customers.email".to_string(), "masked"),
            ("public.customers.phone".to_string(), "filter"),
            ("public.customers.ssn".to_string(), "masked"),
        ]
    );
    assert_eq!(sp.tables, vec!["public.customers".to_string()]);
}

#[test]
fn copy_force_quote_star_is_read() {
    for sql in [
        "COPY (SELECT id, email FROM customers) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)",
        "COPY (SELECT id, email FROM customers) TO STDOUT WITH (FORMAT csv, force_quote   *, HEADER)",
        "COPY (SELECT id, email FROM customers) TO STDOUT CSV FORCE QUOTE *",
    ] {
        let s = common::summary("app", sql);
        assert_eq!(s, "allow out=P,D:email", "{sql}");
    }
    // A `*` inside a literal is the literal's: the NULL string stays "*".
    let p = common::plan_for(
        "app",
        "COPY (SELECT id, email FROM customers) TO STDOUT WITH (FORMAT csv, NULL '*', FORCE_QUOTE *)",
    );
    let c = p.statements[0].copy.as_ref().expect("copy info");
    assert_eq!(c.null.as_deref(), Some("*"));
}
