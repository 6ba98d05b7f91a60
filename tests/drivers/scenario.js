// The driver matrix scenario for Node.js drivers, installed under target/node by scripts/test:
// node-postgres (`pg`) and postgres.js (`postgres`).
// Usage: node scenario.js DRIVER CONFIG_JSON  (CONFIG_JSON as for tests/drivers/scenario.py); DRIVER is
// `pg` or `postgres`. Prints {check: "ok" | "n/a" | "<what went wrong>"}.
// Both cache prepared statements and send later executions as Bind + Execute only: node-postgres for
// named queries (`name:`), postgres.js for every query (`prepare: true`, its default).

// node-postgres: one Client per role.
function nodePostgres(cfg) {
  const { Client } = require('pg');
  const conns = {};
  const conn = async (role) => {
    if (!conns[role]) {
      const [user, password] = cfg.users[role];
      const c = new Client({ host: cfg.host, port: cfg.port, user, password, database: cfg.db, ssl: false });
      await c.connect();
      conns[role] = c;
    }
    return conns[role];
  };
  return {
    q: async (role, text, values, name) => (await (await conn(role)).query({ text, values, name, rowMode: 'array' })).rows,
    // A pipelined batch: every query sent before the first answer arrives.
    batch: async (text, rows) => {
      const c = await conn('app');
      await Promise.all(rows.map((values) => c.query({ name: 'batch_ins', text, values })));
    },
    copy: async () => 'n/a', // COPY needs the separate pg-copy-streams package
    cancel: async () => {
      const c = await conn('app');
      setTimeout(() => { const k = new Client({ host: cfg.host, port: cfg.port }); k.cancel(c, c.activeQuery); }, 1000);
      try { await c.query('SELECT pg_sleep(10)'); return 'not cancelled'; }
      catch (e) { return e.code === '57014' || `${e.code} ${e.message}`; }
    },
    end: async () => { for (const c of Object.values(conns)) await c.end(); },
  };
}

// postgres.js: one single-connection pool per role (so cached statements are reused).
function postgresJs(cfg) {
  const postgres = require('postgres');
  const pools = {};
  const pool = (role) => {
    if (!pools[role]) {
      const [username, password] = cfg.users[role];
      pools[role] = postgres({ host: cfg.host, port: cfg.port, username, password, database: cfg.db, ssl: false, max: 1, onnotice: () => {} });
    }
    return pools[role];
  };
  return {
    q: async (role, text, values) => await pool(role).unsafe(text, values, { prepare: true }).values(),
    batch: async (text, rows) => {
      // postgres.js pipelines queries issued together on one connection.
      await Promise.all(rows.map((values) => pool('app').unsafe(text, values, { prepare: true })));
    },
    copy: async (rows) => {
      const { pipeline } = require('stream/promises');
      const { Readable } = require('stream');
      const w = await pool('app').unsafe('COPY customers (id, email, salary) FROM STDIN').writable();
      await pipeline(Readable.from(rows.map((r) => r.join('\t') + '\n')), w);
      return true;
    },
    cancel: async () => {
      const q = pool('app')`SELECT pg_sleep(10)`;
      setTimeout(() => q.cancel(), 1000);
      try { await q; return 'not cancelled'; }
      catch (e) { return e.code === '57014' || `${e.code} ${e.message}`; }
    },
    end: async () => { for (const p of Object.values(pools)) await p.end(); },
  };
}

async function main() {
  const [driver, json] = process.argv.slice(2);
  const cfg = JSON.parse(json);
  const d = { pg: nodePostgres, postgres: postgresJs }[driver](cfg);
  const base = cfg.base;
  const q = d.q;
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  const id = base + 1, email = `w${base}@example.com`, phone = `+1 555 ${String(base).padStart(6, '0')}`;
  const ssn = `${base}-11-1111`;
  const checks = {
    write: async () => { await q('app', 'INSERT INTO customers (id, email, phone, ssn, salary) VALUES ($1, $2, $3, $4, $5)', [id, email, phone, ssn, 5000]); return true; },
    read: async () => { const r = await q('app', 'SELECT email, phone, ssn, salary FROM customers WHERE id = $1', [id]); return same(r, [[email, phone, ssn, 5000]]) || JSON.stringify(r); },
    lookup: async () => { const r = await q('app', 'SELECT id FROM customers WHERE email = $1', [email]); return same(r, [[id]]) || JSON.stringify(r); },
    update: async () => {
      await q('app', 'UPDATE customers SET salary = $1 WHERE email = $2', [6000, email]);
      const r = await q('app', 'SELECT salary FROM customers WHERE id = $1', [id]);
      return same(r, [[6000]]) || JSON.stringify(r);
    },
    masked: async () => {
      const r = await q('support', 'SELECT phone FROM customers WHERE id = $1', [id]);
      const v = r.length === 1 ? r[0][0] : null;
      return (v !== null && v !== phone && v.endsWith(phone.slice(-4))) || JSON.stringify(r);
    },
    refusal: async () => {
      try { return 'not refused: ' + JSON.stringify(await q('plain', 'SELECT email FROM customers WHERE id = $1', [id])); }
      catch (e) { return (e.code === '42501' && e.message.includes('pgcloak:')) || `${e.code} ${e.message}`; }
    },
    repeat10: async () => {
      for (let i = 0; i < 10; i++) {
        const r = await q('app', 'SELECT email, salary FROM customers WHERE email = $1', [email], 'lookup_by_email');
        if (!same(r, [[email, 6000]])) return `execution ${i + 1}: ${JSON.stringify(r)}`;
      }
      return true;
    },
    batch: async () => {
      const rows = [...Array(20).keys()].map((i) => [base + 100 + i, `b${base + i}@example.com`, 100 * i]);
      await d.batch('INSERT INTO customers (id, email, salary) VALUES ($1, $2, $3)', rows);
      const r = await q('app', 'SELECT id, salary FROM customers WHERE email = $1', [`b${base + 7}@example.com`]);
      return same(r, [[base + 107, 700]]) || JSON.stringify(r);
    },
    copy: async () => {
      const rows = [...Array(5).keys()].map((i) => [base + 200 + i, `c${base + i}@example.com`, 10 * i]);
      const done = await d.copy(rows);
      if (done !== true) return done;
      const r = await q('app', 'SELECT email, salary FROM customers WHERE id = $1', [base + 203]);
      return same(r, [[`c${base + 3}@example.com`, 30]]) || JSON.stringify(r);
    },
    cancel: d.cancel,
    // Rows written under the previous key version are found after `keys rotate`.
    rotated: async () => {
      if (cfg.old_base === undefined) return 'n/a';
      const ob = cfg.old_base, oldEmail = `w${ob}@example.com`, oldPhone = `+1 555 ${String(ob).padStart(6, '0')}`;
      for (let i = 0; i < 3; i++) {
        const r = await q('app', 'SELECT id, email FROM customers WHERE email = $1', [oldEmail], 'rotated_lookup');
        if (!same(r, [[ob + 1, oldEmail]])) return `lookup ${i + 1} of a row of the older key version: ${JSON.stringify(r)}`;
      }
      const r = await q('app', 'SELECT id FROM customers WHERE phone = $1', [oldPhone]);
      return same(r, [[ob + 1]]) || `phone lookup: ${JSON.stringify(r)}`;
    },
  };
  const out = {};
  for (const [name, fn] of Object.entries(checks)) {
    try { const v = await fn(); out[name] = v === true ? 'ok' : String(v).slice(0, 300); }
    catch (e) { out[name] = `${e.name}: ${e.message}`.slice(0, 300); }
  }
  console.log(JSON.stringify(out));
  await d.end();
}

main().catch((e) => { console.error(e); process.exit(1); });
