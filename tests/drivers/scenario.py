"""One scenario, run through pgcloak by each Python driver and ORM of the driver matrix.

Usage: scenario.py DRIVER CONFIG_JSON
CONFIG_JSON: {"host", "port", "db", "base", "old_base" (optional: the base of a run before `keys rotate`),
              "users": {"app": [user, pw], "support": [...], "plain": [...]}}
Prints one JSON object {check: "ok" | "n/a" | "<what went wrong>"} and exits 0; the Rust test decides.
Every row this run writes has an id in [base, base + 1000), so drivers share one table.
"""
import asyncio
import json
import sys
import threading
import time

CHECKS = ["write", "read", "lookup", "update", "masked", "refusal", "repeat10", "batch", "copy", "cancel", "rotated"]


def expected(base):
    return {
        "id": base + 1,
        "email": f"w{base}@example.com",
        "phone": f"+1 555 {base:06d}",
        "ssn": f"{base}-11-1111",
        "salary": 5000,
    }


def masked_ok(value, phone):
    return value != phone and value is not None and value.endswith(phone[-4:])


def run_checks(d, base, old_base=None):
    """`d` adapts one driver: q(role, sql, params) -> rows, many(sql, rows), copy(rows), cancel()."""
    e = expected(base)
    out = {}

    def check(name, fn):
        try:
            r = fn()
            out[name] = "ok" if r is True else (r if isinstance(r, str) else f"unexpected: {r!r}")
        except Exception as ex:  # noqa: BLE001 - every failure is a result of the matrix
            out[name] = f"{type(ex).__name__}: {ex}"[:300]

    check("write", lambda: d.q("app", d.sql("INSERT INTO customers (id, email, phone, ssn, salary) VALUES (?, ?, ?, ?, ?)"),
                               [e["id"], e["email"], e["phone"], e["ssn"], e["salary"]]) is not None)
    check("read", lambda: [tuple(r) for r in d.q("app", d.sql("SELECT email, phone, ssn, salary FROM customers WHERE id = ?"), [e["id"]])]
          == [(e["email"], e["phone"], e["ssn"], e["salary"])] or d.q("app", d.sql("SELECT email, phone, ssn, salary FROM customers WHERE id = ?"), [e["id"]]))
    check("lookup", lambda: [r[0] for r in d.q("app", d.sql("SELECT id FROM customers WHERE email = ?"), [e["email"]])] == [e["id"]])

    def update():
        d.q("app", d.sql("UPDATE customers SET salary = ? WHERE email = ?"), [6000, e["email"]])
        got = [r[0] for r in d.q("app", d.sql("SELECT salary FROM customers WHERE id = ?"), [e["id"]])]
        return got == [6000] or f"salary after update: {got}"
    check("update", update)

    def masked():
        got = [r[0] for r in d.q("support", d.sql("SELECT phone FROM customers WHERE id = ?"), [e["id"]])]
        return (len(got) == 1 and masked_ok(got[0], e["phone"])) or f"support read {got!r}"
    check("masked", masked)

    def refusal():
        try:
            got = d.q("plain", d.sql("SELECT email FROM customers WHERE id = ?"), [e["id"]])
        except Exception as ex:  # noqa: BLE001
            return ("42501" in d.sqlstate(ex) and "pgcloak:" in str(ex)) or f"wrong error: {d.sqlstate(ex)} {ex}"
        return f"not refused: {got!r}"
    check("refusal", refusal)

    def repeat10():
        for i in range(10):
            got = d.repeat("app", d.sql("SELECT email, salary FROM customers WHERE email = ?"), [e["email"]])
            if [tuple(r) for r in got] != [(e["email"], 6000)]:
                return f"execution {i + 1}: {got!r}"
        return True
    check("repeat10", repeat10)

    def batch():
        rows = [[base + 100 + i, f"b{base + i}@example.com", 100 * i] for i in range(20)]
        d.many(d.sql("INSERT INTO customers (id, email, salary) VALUES (?, ?, ?)"), rows)
        got = [tuple(r) for r in d.q("app", d.sql("SELECT id, salary FROM customers WHERE email = ?"), [f"b{base + 7}@example.com"])]
        n = d.q("app", d.sql("SELECT count(*) FROM customers WHERE id >= ? AND id < ?"), [base + 100, base + 120])[0][0]
        return (got == [(base + 107, 700)] and n == 20) or f"{got!r}, {n} rows"
    check("batch", batch)

    def copy():
        rows = [(base + 200 + i, f"c{base + i}@example.com", str(10 * i)) for i in range(5)]
        r = d.copy(rows)
        if r == "n/a":
            return r
        got = [tuple(r) for r in d.q("app", d.sql("SELECT email, salary FROM customers WHERE id = ?"), [base + 203])]
        return got == [(f"c{base + 3}@example.com", 30)] or f"{got!r}"
    check("copy", copy)
    check("cancel", d.cancel)

    def rotated():
        # Rows written under the previous key version are found and read after `keys rotate`.
        if old_base is None:
            return "n/a"
        old = expected(old_base)
        for i in range(3):
            got = [tuple(r) for r in d.repeat("app", d.sql("SELECT id, email FROM customers WHERE email = ?"), [old["email"]])]
            if got != [(old["id"], old["email"])]:
                return f"lookup {i + 1} of a row of the older key version: {got!r}"
        got = [tuple(r) for r in d.q("app", d.sql("SELECT id FROM customers WHERE phone = ?"), [old["phone"]])]
        return got == [(old["id"],)] or f"phone lookup: {got!r}"
    check("rotated", rotated)
    return out


def dsn(cfg, role):
    user, pw = cfg["users"][role]
    return f"host={cfg['host']} port={cfg['port']} user={user} password={pw} dbname={cfg['db']} sslmode=disable"


class Dbapi:
    """psycopg 3 (text, binary, pipeline), psycopg2 and pg8000: DB-API drivers with `%s` params."""

    def __init__(self, cfg, kind):
        self.cfg, self.kind, self.conns = cfg, kind, {}

    def sql(self, s):
        return s.replace("?", "%s")

    def conn(self, role):
        if role not in self.conns:
            if self.kind.startswith("psycopg-"):
                import psycopg
                c = psycopg.connect(dsn(self.cfg, role), autocommit=True)
            elif self.kind == "psycopg2":
                import psycopg2
                c = psycopg2.connect(dsn(self.cfg, role))
                c.autocommit = True
            else:
                import pg8000.dbapi
                user, pw = self.cfg["users"][role]
                c = pg8000.dbapi.connect(user=user, password=pw, host=self.cfg["host"], port=self.cfg["port"], database=self.cfg["db"])
                c.autocommit = True
            self.conns[role] = c
        return self.conns[role]

    def cursor(self, role):
        c = self.conn(role)
        if self.kind == "psycopg-binary":
            return c.cursor(binary=True)
        return c.cursor()

    def q(self, role, sql, params):
        cur = self.cursor(role)
        if self.kind == "psycopg-pipeline":
            with self.conn(role).pipeline():
                cur.execute(sql, params)
        else:
            cur.execute(sql, params)
        return cur.fetchall() if cur.description else []

    def repeat(self, role, sql, params):
        # psycopg 3 prepares server-side after prepare_threshold (5) executions.
        return self.q(role, sql, params)

    def many(self, sql, rows):
        cur = self.cursor("app")
        if self.kind == "psycopg-pipeline":
            with self.conn("app").pipeline():
                cur.executemany(sql, rows)
        else:
            cur.executemany(sql, rows)

    def copy(self, rows):
        cur = self.cursor("app")
        if self.kind.startswith("psycopg-"):
            with cur.copy("COPY customers (id, email, salary) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
        else:
            import io
            data = io.StringIO("".join("\t".join(map(str, r)) + "\n" for r in rows))
            if self.kind == "psycopg2":
                cur.copy_expert("COPY customers (id, email, salary) FROM STDIN", data)
            else:
                cur.execute("COPY customers (id, email, salary) FROM STDIN", stream=data)
        return True

    def sqlstate(self, ex):
        for attr in ("sqlstate", "pgcode"):
            if getattr(ex, attr, None):
                return getattr(ex, attr)
        return str(ex)  # pg8000 puts the fields in its message

    def cancel(self):
        if self.kind == "pg8000":
            return "n/a"  # pg8000 has no cancel request API
        c = self.conn("app")
        threading.Timer(1.0, c.cancel).start()
        try:
            c.cursor().execute("SELECT pg_sleep(10)")
        except Exception as ex:  # noqa: BLE001
            return "57014" in self.sqlstate(ex) or f"{self.sqlstate(ex)} {ex}"
        return "not cancelled"


class Asyncpg:
    def __init__(self, cfg):
        self.cfg, self.conns = cfg, {}
        self.loop = asyncio.new_event_loop()

    def sql(self, s):
        n = 0
        out = []
        for ch in s:
            if ch == "?":
                n += 1
                out.append(f"${n}")
            else:
                out.append(ch)
        return "".join(out)

    def conn(self, role):
        import asyncpg
        if role not in self.conns:
            user, pw = self.cfg["users"][role]
            self.conns[role] = self.loop.run_until_complete(asyncpg.connect(
                host=self.cfg["host"], port=self.cfg["port"], user=user, password=pw, database=self.cfg["db"], ssl=False))
        return self.conns[role]

    def q(self, role, sql, params):
        return self.loop.run_until_complete(self.conn(role).fetch(sql, *params))

    def repeat(self, role, sql, params):
        # asyncpg caches the prepared statement: later executions are Bind + Execute only.
        return self.q(role, sql, params)

    def many(self, sql, rows):
        self.loop.run_until_complete(self.conn("app").executemany(sql, rows))

    def copy(self, rows):
        recs = [(r[0], r[1], int(r[2])) for r in rows]
        self.loop.run_until_complete(self.conn("app").copy_records_to_table(
            "customers", records=recs, columns=["id", "email", "salary"]))
        return True

    def sqlstate(self, ex):
        return getattr(ex, "sqlstate", "") or ""

    def cancel(self):
        import asyncpg
        try:
            self.loop.run_until_complete(self.conn("app").fetch("SELECT pg_sleep(10)", timeout=1.0))
        except asyncio.TimeoutError:
            # asyncpg cancels the query on timeout; the connection must still work.
            r = self.loop.run_until_complete(self.conn("app").fetchval("SELECT 1"))
            return r == 1 or f"after cancel: {r}"
        except asyncpg.QueryCanceledError:
            return True
        return "not cancelled"


class Sqlalchemy:
    """SQLAlchemy 2 over psycopg 3: Core (text() with bound parameters, which it casts) or ORM."""

    def __init__(self, cfg, orm):
        from sqlalchemy import create_engine
        self.cfg, self.orm, self.engines = cfg, orm, {}
        self.create_engine = create_engine

    def engine(self, role):
        if role not in self.engines:
            user, pw = self.cfg["users"][role]
            url = f"postgresql+psycopg://{user}:{pw}@{self.cfg['host']}:{self.cfg['port']}/{self.cfg['db']}?sslmode=disable"
            self.engines[role] = self.create_engine(url)
        return self.engines[role]

    def sql(self, s):
        return s

    def model(self):
        from sqlalchemy import Integer, String
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

        if not hasattr(self, "_model"):
            class Base(DeclarativeBase):
                pass

            class Customer(Base):
                __tablename__ = "customers"
                id: Mapped[int] = mapped_column(Integer, primary_key=True)
                email: Mapped[str] = mapped_column(String, nullable=True)
                phone: Mapped[str] = mapped_column(String, nullable=True)
                ssn: Mapped[str] = mapped_column(String, nullable=True)
                salary: Mapped[int] = mapped_column(Integer, nullable=True)
            self._model = Customer
        return self._model

    def q(self, role, sql, params):
        if self.orm:
            return self.orm_q(role, sql, params)
        from sqlalchemy import text
        names = {f"p{i}": v for i, v in enumerate(params)}
        it = iter(range(len(params)))
        stmt = text("".join(f":p{next(it)}" if ch == "?" else ch for ch in sql))
        # The ORM style casts each parameter to its column's type (`%(p0)s::INTEGER`).
        with self.engine(role).begin() as c:
            r = c.execute(stmt, names)
            return [tuple(x) for x in r] if r.returns_rows else []

    def orm_q(self, role, sql, params):
        from sqlalchemy import func, select, update
        from sqlalchemy.orm import Session
        C = self.model()
        cols = {"email": C.email, "phone": C.phone, "ssn": C.ssn, "salary": C.salary, "id": C.id}
        with Session(self.engine(role)) as s, s.begin():
            if sql.startswith("INSERT"):
                s.add(C(id=params[0], email=params[1], phone=params[2], ssn=params[3], salary=params[4]))
                return []
            if sql.startswith("UPDATE"):
                s.execute(update(C).where(C.email == params[1]).values(salary=params[0]))
                return []
            if "count(*)" in sql:
                return [(s.scalar(select(func.count()).select_from(C).where(C.id >= params[0], C.id < params[1])),)]
            what = sql.split("SELECT ")[1].split(" FROM")[0].split(", ")
            key = sql.split("WHERE ")[1].split(" =")[0]
            rows = s.execute(select(*[cols[w] for w in what]).where(cols[key] == params[0])).all()
            return [tuple(r) for r in rows]

    def repeat(self, role, sql, params):
        return self.q(role, sql, params)

    def many(self, sql, rows):
        if self.orm:
            from sqlalchemy import insert
            from sqlalchemy.orm import Session
            C = self.model()
            with Session(self.engine("app")) as s, s.begin():
                s.execute(insert(C), [dict(id=r[0], email=r[1], salary=r[2]) for r in rows])
            return
        from sqlalchemy import text
        with self.engine("app").begin() as c:
            c.execute(text("INSERT INTO customers (id, email, salary) VALUES (:a, :b, :c)"),
                      [dict(a=r[0], b=r[1], c=r[2]) for r in rows])

    def copy(self, rows):
        raw = self.engine("app").raw_connection()
        try:
            with raw.cursor() as cur:
                with cur.copy("COPY customers (id, email, salary) FROM STDIN") as cp:
                    for r in rows:
                        cp.write_row(r)
            raw.commit()
        finally:
            raw.close()
        return True

    def sqlstate(self, ex):
        orig = getattr(ex, "orig", None)
        return getattr(orig, "sqlstate", "") or ""

    def cancel(self):
        from sqlalchemy import text
        with self.engine("app").connect() as c:
            dbapi = c.connection.dbapi_connection
            threading.Timer(1.0, dbapi.cancel).start()
            try:
                c.execute(text("SELECT pg_sleep(10)"))
            except Exception as ex:  # noqa: BLE001
                return "57014" in self.sqlstate(ex) or str(ex)
        return "not cancelled"


class Djangoorm:
    """Django 5 ORM on psycopg 3: its model API, bulk_create (UNNEST on PostgreSQL)."""

    def __init__(self, cfg):
        import django
        from django.conf import settings

        def db(role):
            user, pw = cfg["users"][role]
            return {"ENGINE": "django.db.backends.postgresql", "NAME": cfg["db"], "USER": user, "PASSWORD": pw,
                    "HOST": cfg["host"], "PORT": str(cfg["port"]), "OPTIONS": {"sslmode": "disable"}}
        settings.configure(DATABASES={"default": db("app"), "support": db("support"), "plain": db("plain")},
                           INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
        from django.db import models

        class Customer(models.Model):
            id = models.IntegerField(primary_key=True)
            email = models.TextField(null=True)
            phone = models.TextField(null=True)
            ssn = models.TextField(null=True)
            salary = models.IntegerField(null=True)

            class Meta:
                app_label = "matrix"
                db_table = "customers"
                managed = False
        self.C = Customer

    def sql(self, s):
        return s

    def alias(self, role):
        return {"app": "default"}.get(role, role)

    def q(self, role, sql, params):
        m = self.C.objects.using(self.alias(role))
        if sql.startswith("INSERT"):
            m.create(id=params[0], email=params[1], phone=params[2], ssn=params[3], salary=params[4])
            return []
        if sql.startswith("UPDATE"):
            m.filter(email=params[1]).update(salary=params[0])
            return []
        if "count(*)" in sql:
            return [(m.filter(id__gte=params[0], id__lt=params[1]).count(),)]
        what = sql.split("SELECT ")[1].split(" FROM")[0].split(", ")
        key = sql.split("WHERE ")[1].split(" =")[0]
        return list(m.filter(**{key: params[0]}).values_list(*what))

    def repeat(self, role, sql, params):
        return self.q(role, sql, params)

    def many(self, sql, rows):
        self.C.objects.bulk_create([self.C(id=r[0], email=r[1], salary=r[2]) for r in rows])

    def copy(self, rows):
        from django.db import connections
        with connections["default"].cursor() as cur:
            with cur.copy("COPY customers (id, email, salary) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
        return True

    def sqlstate(self, ex):
        cause = ex.__cause__
        return getattr(cause, "sqlstate", "") or ""

    def cancel(self):
        from django.db import connections
        c = connections["default"]
        c.ensure_connection()
        threading.Timer(1.0, c.connection.cancel).start()
        try:
            with c.cursor() as cur:
                cur.execute("SELECT pg_sleep(10)")
        except Exception as ex:  # noqa: BLE001
            return "57014" in self.sqlstate(ex) or str(ex)
        return "not cancelled"


def main():
    driver, cfg = sys.argv[1], json.loads(sys.argv[2])
    if driver in ("psycopg-text", "psycopg-binary", "psycopg-pipeline", "psycopg2", "pg8000"):
        d = Dbapi(cfg, driver)
    elif driver == "asyncpg":
        d = Asyncpg(cfg)
    elif driver in ("sqlalchemy-core", "sqlalchemy-orm"):
        d = Sqlalchemy(cfg, driver == "sqlalchemy-orm")
    elif driver == "django":
        d = Djangoorm(cfg)
    else:
        raise SystemExit(f"unknown driver {driver}")
    print(json.dumps(run_checks(d, cfg["base"], cfg.get("old_base"))))


if __name__ == "__main__":
    main()
