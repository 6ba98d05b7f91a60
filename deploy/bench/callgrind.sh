#!/usr/bin/env bash
# Instructions per transaction of one pgcloak build, counted by callgrind: the steady measure on a
# shared host whose TPS and CPU time move by ±10 % between runs. pgcloak runs under
# `valgrind --tool=callgrind` with one session thread, twice: once for TX transactions and once for
# one transaction per client (start-up, connection set-up, first-statement analysis); the difference
# over the extra transactions is the cost per transaction. (Switching instrumentation on mid-run with
# callgrind_control does not reach the process in this container: vgdb cannot attach.)
#
# Usage: [PROXY_BIN=path] [POLICY=1] [AUDIT_FILE=path] [WORKLOAD=select|enc_insert|enc_read] [CG_KEEP=path]
#        deploy/bench/callgrind.sh [TX]
# CG_KEEP: where to copy the measured run's callgrind output (and the start-up run's, to
# CG_KEEP.base), for `callgrind_annotate` (e.g. to compare two builds function by function).
# select:     pgbench -S -M extended -c 2 -j 1 (pgbench_accounts; the pass-through path)
# enc_insert: deploy/bench/scripts/enc_insert.sql -M prepared -c 8 -j 2 (three encrypted parameters
#             per Bind; needs POLICY=1 for encryption)
# enc_read:   deploy/bench/scripts/enc_read.sql -M prepared -c 8 -j 2 (point reads of three encrypted
#             columns; 10,000 rows are loaded through pgcloak in both runs, so their cost cancels;
#             POLICY=0 gives the plaintext twin)
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
# shellcheck source=deploy/bench/common.sh
. deploy/bench/common.sh

case $workload in
  select)
    db=pgcloak_cg_select
    psql -h "$host" -p "$port" -U "$user" -d postgres -qAtc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || { psql -h "$host" -p "$port" -U "$user" -d postgres -qc "CREATE DATABASE $db" >/dev/null;
           pgbench -h "$host" -p "$port" -U "$user" -i -s 1 -q "$db" >/dev/null 2>&1; }
    clients=2; bench=(-S -M extended -c 2 -j 1);;
  enc_insert|enc_read)
    db=pgcloak_cg_enc
    # The example policy stores the encrypted int4 salary in bytea; the plaintext twin keeps int4.
    salary_type=bytea
    [ "${POLICY:-0}" = 1 ] || salary_type=int
    psql -h "$host" -p "$port" -U "$user" -d postgres -qc 'DO $$BEGIN CREATE ROLE app; EXCEPTION WHEN duplicate_object THEN NULL; END$$' >/dev/null
    psql -h "$host" -p "$port" -U "$user" -d postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null
    psql -h "$host" -p "$port" -U "$user" -d postgres -qc "CREATE DATABASE $db" >/dev/null
    psql -h "$host" -p "$port" -U "$user" -d "$db" -qc \
      "CREATE TABLE customers (id int PRIMARY KEY, email text, phone text, ssn text, salary $salary_type, notes text)" >/dev/null
    clients=8; bench=(-M prepared -c 8 -j 2 -f "deploy/bench/scripts/$workload.sql");;
  *) echo "unknown WORKLOAD $workload" >&2; exit 2;;
esac

policy=""
[ "${POLICY:-0}" = 1 ] && policy="$PWD/deploy/examples/policy.toml"

# Runs pgcloak under callgrind while pgbench runs $1 transactions per client; prints the instruction total.
measure() {
  local cport=$((20000 + RANDOM % 20000)) out
  rm -f "$work"/cg.out* "$work"/*.key "$work"/keyring.json
  pgcloak_config "$cport" "$policy" "workers = 1"
  "$bin" keys init --config "$work/pgcloak.toml" >/dev/null
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$bin" serve --config "$work/pgcloak.toml" 2>"$work/pgcloak.log" &
  vg_pid=$!
  for _ in $(seq 1 240); do
    pg_isready -q -h 127.0.0.1 -p "$cport" && break
    sleep 0.5
  done
  if [ "$workload" = enc_read ]; then
    psql -h 127.0.0.1 -p "$cport" -U "$user" -d "$db" -qc "TRUNCATE customers" >/dev/null
    for chunk in $(seq 0 19); do
      seq $((chunk * 500 + 1)) $((chunk * 500 + 500)) \
        | awk '{printf "%s(%d,'"'"'u%d@example.com'"'"','"'"'555-%04d'"'"',%d)", (NR>1?",":""), $1, $1, $1 % 10000, $1 * 10}' \
        | { printf "INSERT INTO customers (id, email, phone, salary) VALUES "; cat; echo ";"; } \
        | psql -h 127.0.0.1 -p "$cport" -U "$user" -d "$db" -q -v ON_ERROR_STOP=1 >/dev/null
    done
  fi
  pgbench -h 127.0.0.1 -p "$cport" -U "$user" -n "${bench[@]}" -t "$1" "$db" >/dev/null
  kill -TERM "$vg_pid"
  wait "$vg_pid" 2>/dev/null || true
  vg_pid=
  out=$(grep -hE "^(summary|totals):" "$work"/cg.out* | head -1 | awk '{print $2}')
  echo "${out:-0}"
}

per_client=$((tx / clients))
full=$(measure "$per_client")
[ -n "${CG_KEEP:-}" ] && cat "$work"/cg.out* > "$CG_KEEP"
base=$(measure 1)
# The start-up run too, to subtract function by function (callgrind_annotate of each, then diff).
[ -n "${CG_KEEP:-}" ] && cat "$work"/cg.out* > "$CG_KEEP.base"
extra=$(( (per_client - 1) * clients ))
echo "workload $workload: $full instructions for $((per_client * clients)) transactions, $base for $clients (start-up); $(( (full - base) / extra )) per transaction"
