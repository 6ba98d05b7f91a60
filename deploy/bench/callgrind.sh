#!/usr/bin/env bash
# Instructions per transaction of one pgcloak build, counted by callgrind: the steady measure on a
# shared host whose TPS and CPU time move by ±10 % between runs. pgcloak runs under
# `valgrind --tool=callgrind --instr-atstart=no` with one session thread; 800 warm-up transactions
# run uninstrumented, then instrumentation is switched on for TX measured transactions.
#
# Usage: [PROXY_BIN=path] [POLICY=1] [AUDIT_FILE=path] [WORKLOAD=select|enc_insert|enc_read]
#        deploy/bench/callgrind.sh [TX]
# select:     pgbench -S -M extended -c 2 -j 1 (pgbench_accounts; the pass-through path)
# enc_insert: deploy/bench/scripts/enc_insert.sql -M prepared -c 8 -j 2 (three encrypted parameters
#             per Bind; needs POLICY=1 for encryption)
# enc_read:   deploy/bench/scripts/enc_read.sql -M prepared -c 8 -j 2 (three columns decrypted)
# Needs PostgreSQL on $PGHOST:$PGPORT (default 127.0.0.1:5432) as $PGUSER (default postgres) without a
# password, pgbench and valgrind. Prints the total and the instructions per measured transaction.
set -euo pipefail
cd "$(dirname "$0")/../.."
tx=${1:-4000}
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
user=${PGUSER:-postgres}
workload=${WORKLOAD:-select}
bin=${PROXY_BIN:-target/release/pgcloak}
work=$(mktemp -d)
cleanup() { [ -n "${vg_pid:-}" ] && kill "$vg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

case $workload in
  select)
    db=pgcloak_cg_select
    psql -h "$host" -p "$port" -U "$user" -d postgres -qAtc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || { psql -h "$host" -p "$port" -U "$user" -d postgres -qc "CREATE DATABASE $db" >/dev/null;
           pgbench -h "$host" -p "$port" -U "$user" -i -s 1 -q "$db" >/dev/null 2>&1; }
    clients=2; bench=(-S -M extended -c 2 -j 1);;
  enc_insert|enc_read)
    db=pgcloak_cg_enc
    psql -h "$host" -p "$port" -U "$user" -d postgres -qc 'DO $$BEGIN CREATE ROLE app; EXCEPTION WHEN duplicate_object THEN NULL; END$$' >/dev/null
    psql -h "$host" -p "$port" -U "$user" -d postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null
    psql -h "$host" -p "$port" -U "$user" -d postgres -qc "CREATE DATABASE $db" >/dev/null
    psql -h "$host" -p "$port" -U "$user" -d "$db" -qc \
      "CREATE TABLE customers (id int PRIMARY KEY, email text, phone text, ssn text, salary bytea, notes text)" >/dev/null
    clients=8; bench=(-M prepared -c 8 -j 2 -f "deploy/bench/scripts/$workload.sql");;
  *) echo "unknown WORKLOAD $workload" >&2; exit 2;;
esac

policy_line=""
[ "${POLICY:-0}" = 1 ] && policy_line="policy = \"$PWD/deploy/examples/policy.toml\""
cport=$((20000 + RANDOM % 20000))
cat > "$work/pgcloak.toml" <<TOML
listen = "127.0.0.1:$cport"
upstream = "$host:$port"
workers = 1
$policy_line
[upstream_tls]
mode = "disable"
[catalog]
user = "$user"
[keys]
master_key_file = "$work/master.key"
keyring = "$work/keyring.json"
[audit]
file = "${AUDIT_FILE:-}"
TOML
"$bin" keys init --config "$work/pgcloak.toml" >/dev/null
RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out" \
  "$bin" serve --config "$work/pgcloak.toml" 2>"$work/pgcloak.log" &
vg_pid=$!
for _ in $(seq 1 120); do
  pg_isready -q -h 127.0.0.1 -p "$cport" && break
  sleep 0.5
done
if [ "$workload" = enc_read ]; then
  # Rows to read, written through the proxy (encrypted).
  pgbench -h 127.0.0.1 -p "$cport" -U "$user" -n -M prepared -c 2 -j 1 -t 5000 \
    -f deploy/bench/scripts/enc_insert.sql "$db" >/dev/null 2>&1 || true
  psql -h 127.0.0.1 -p "$cport" -U "$user" -d "$db" -qc \
    "INSERT INTO customers (id, email, phone, salary) SELECT g, g::text, g::text, g FROM generate_series(1, 10000) g ON CONFLICT DO NOTHING" >/dev/null
fi
per_client=$((tx / $clients))
pgbench -h 127.0.0.1 -p "$cport" -U "$user" -n "${bench[@]}" -t $((800 / $clients)) "$db" >/dev/null
callgrind_control -i on "$vg_pid" >/dev/null
pgbench -h 127.0.0.1 -p "$cport" -U "$user" -n "${bench[@]}" -t "$per_client" "$db" | grep -E "^(tps|number of transactions actually)"
callgrind_control -i off "$vg_pid" >/dev/null
kill -INT "$vg_pid"
wait "$vg_pid" 2>/dev/null || true
vg_pid=
total=$(grep -E "^(summary|totals):" "$work"/cg.out* | head -1 | awk '{print $2}')
echo "workload $workload, $tx transactions: $total instructions, $((total / tx)) per transaction"
