"""Drives pgcloak with Python clients for the end-to-end tests.

Usage: clients.py SCENARIO DSN
Prints one JSON object with what the scenario observed; exits non-zero on any failure.
"""
import asyncio
import json
import sys


def psycopg_basic(dsn):
    import psycopg

    out = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS py_t")
        conn.execute("CREATE TABLE py_t (id int primary key, name text, amount numeric, at timestamptz)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO py_t VALUES (%s, %s, %s, now())",
                [(i, f"name {i}", i * 1.5) for i in range(50)],
            )
            cur.execute("SELECT name, amount FROM py_t WHERE id = %s", (7,))
            name, amount = cur.fetchone()
            out["name"] = name
            out["amount"] = str(amount)
            # Binary results.
            cur = conn.cursor(binary=True)
            cur.execute("SELECT id, name FROM py_t WHERE id = %s", (9,))
            out["binary"] = list(cur.fetchone())
        # Pipeline mode: many statements before one Sync.
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(100)]
        out["pipeline"] = sum(c.fetchone()[0] for c in curs)
        # An error inside a transaction, then recovery.
        try:
            with conn.transaction():
                conn.execute("SELECT 1/0")
        except psycopg.errors.DivisionByZero:
            out["error"] = "22012"
        out["after"] = conn.execute("SELECT count(*) FROM py_t").fetchone()[0]
        # COPY in and out.
        with conn.cursor() as cur:
            with cur.copy("COPY py_t (id, name) FROM STDIN") as copy:
                for i in range(100, 110):
                    copy.write_row((i, f"copied {i}"))
            rows = []
            with cur.copy("COPY (SELECT id FROM py_t WHERE id >= 100 ORDER BY id) TO STDOUT") as copy:
                for row in copy.rows():
                    rows.append(int(row[0]))
            out["copy"] = rows
    return out


async def asyncpg_basic(dsn):
    import asyncpg

    out = {}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS apg_t")
        await conn.execute("CREATE TABLE apg_t (id int primary key, name text, score float8, born date, tags text[])")
        stmt = await conn.prepare("INSERT INTO apg_t VALUES ($1, $2, $3, $4, $5)")
        import datetime

        for i in range(20):
            await stmt.fetch(i, f"n{i}", i / 2, datetime.date(2000, 1, 1 + i), ["a", str(i)])
        row = await conn.fetchrow("SELECT * FROM apg_t WHERE id = $1", 5)
        out["row"] = [row["id"], row["name"], row["score"], row["born"].isoformat(), row["tags"]]
        await conn.executemany("UPDATE apg_t SET score = $2 WHERE id = $1", [(i, 100.0 + i) for i in range(20)])
        out["sum"] = await conn.fetchval("SELECT sum(score) FROM apg_t")
        async with conn.transaction():
            cur_rows = [r["id"] async for r in conn.cursor("SELECT id FROM apg_t ORDER BY id", prefetch=3)]
        out["cursor"] = cur_rows
        try:
            await conn.fetchval("SELECT * FROM nowhere")
        except asyncpg.exceptions.UndefinedTableError:
            out["error"] = "42P01"
        out["after"] = await conn.fetchval("SELECT 40 + 2")
        await conn.copy_records_to_table("apg_t", records=[(100, "c", 1.0, datetime.date(2020, 1, 1), [])])
        out["count"] = await conn.fetchval("SELECT count(*) FROM apg_t")
    finally:
        await conn.close()
    return out


def psycopg_encrypted(dsn):
    """Writes and reads encrypted columns (text protocol, pipeline) through pgcloak."""
    import psycopg

    out = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO customers (id, email, phone, ssn, salary) VALUES (%s, %s, %s, %s, %s)",
                (101, "p1@example.com", "555-0101", "101-01-0101", 4200),
            )
            cur.execute("SELECT email, salary FROM customers WHERE email = %s", ("p1@example.com",))
            email, salary = cur.fetchone()
            out["email"], out["salary"] = email, salary
        with conn.pipeline():
            for i in range(10):
                conn.execute(
                    "INSERT INTO customers (id, email, salary) VALUES (%s, %s, %s)",
                    (110 + i, f"pp{i}@example.com", i),
                )
        out["pipeline"] = conn.execute("SELECT count(*) FROM customers WHERE id >= 110").fetchone()[0]
    return out


async def asyncpg_encrypted(dsn):
    """Binary, prepared statements: salary is an int4 stored encrypted in bytea."""
    import asyncpg

    out = {}
    conn = await asyncpg.connect(dsn)
    try:
        stmt = await conn.prepare("INSERT INTO customers (id, email, phone, ssn, salary) VALUES ($1, $2, $3, $4, $5)")
        for i in range(20):
            await stmt.fetch(200 + i, f"a{i}@example.com", f"555-02{i:02}", f"200-00-{i:04}", 5000 + i)
        row = await conn.fetchrow("SELECT email, salary FROM customers WHERE email = $1", "a5@example.com")
        out["email"], out["salary"] = row["email"], row["salary"]
        out["count"] = await conn.fetchval("SELECT count(*) FROM customers WHERE id >= 200")
    finally:
        await conn.close()
    return out


def main():
    scenario, dsn = sys.argv[1], sys.argv[2]
    if scenario == "psycopg_basic":
        result = psycopg_basic(dsn)
    elif scenario == "asyncpg_basic":
        result = asyncio.run(asyncpg_basic(dsn))
    elif scenario == "psycopg_encrypted":
        result = psycopg_encrypted(dsn)
    elif scenario == "asyncpg_encrypted":
        result = asyncio.run(asyncpg_encrypted(dsn))
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
