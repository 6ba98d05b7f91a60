#!/usr/bin/env bash
# pgbench point reads and inserts on a customers table through pgcloak: encrypted columns (the example
# policy: deterministic email/phone, randomized int4 salary on bytea) against the same schema with no
# policy. Prints TPS and the CPU time each proxy spends per transaction (steadier than TPS on a shared
# machine; inserts are bound by the server's commit fsync, so their TPS is noisy).
#
# Usage: [DIRECT=1] [SCRIPTS=enc_read.sql] deploy/bench/encrypted-vs-plaintext.sh [ROUNDS] [SECONDS]
# (default 16 rounds of 4 s: on a shared host many short paired runs give a steadier median of the
# per-round ratios than a few long ones, since the host's speed drifts less within a pair)
# DIRECT=1 adds, per round, the same point reads straight to PostgreSQL on both databases: the ratio
# the stored ciphertext alone allows. Each round alternates which side goes first and starts every
# measured run after a CHECKPOINT; the summary gives the ratio of the medians and the median of the
# per-round ratios (this host's TPS moves by ±10 % from one run to the next). CONCURRENT=1 runs the
# two sides at the same time with half the clients each, so that both meet the same host conditions
# (on the 2-core bench machine its per-round ratios swung more than sequential ones, 0.67-1.31, so the
# sequential default is the one to quote). SCRIPTS picks the workloads (default both).
# Needs a PostgreSQL on $PGHOST:$PGPORT (default 127.0.0.1:5432) reachable as $PGUSER (default postgres)
# without a password, and pgbench. Audit is off in both proxies so only encryption is compared; set
# AUDIT_FILE=path to turn the file sink on in both.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-16}
secs=${2:-4}
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
user=${PGUSER:-postgres}
clients=${CLIENTS:-8}
threads=${THREADS:-2}
scripts=${SCRIPTS:-enc_read.sql enc_insert.sql}
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet -p pgcloak
bin=${PROXY_BIN:-target/release/pgcloak}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# The example policy's "app" role reads and writes everything; a superuser is a member of every role.
psql -h "$host" -p "$port" -U "$user" -d postgres -qc 'DO $$BEGIN CREATE ROLE app; EXCEPTION WHEN duplicate_object THEN NULL; END$$' >/dev/null
for db in pgcloak_bench_enc pgcloak_bench_plain; do
  psql -h "$host" -p "$port" -U "$user" -d postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null
  psql -h "$host" -p "$port" -U "$user" -d postgres -qc "CREATE DATABASE $db" >/dev/null
  psql -h "$host" -p "$port" -U "$user" -d "$db" -qc \
    "CREATE TABLE customers (id int PRIMARY KEY, email text, phone text, ssn text, salary bytea, notes text)" >/dev/null
done
# The plaintext twin stores salary as text: the same bytes-per-row ballpark, no encryption.
psql -h "$host" -p "$port" -U "$user" -d pgcloak_bench_plain -qc "ALTER TABLE customers ALTER COLUMN salary TYPE text" >/dev/null

start_proxy() { # name port policy-line
  cat > "$work/$1.toml" <<TOML
listen = "127.0.0.1:$2"
upstream = "$host:$port"
$3
[upstream_tls]
mode = "disable"
[catalog]
user = "$user"
database = "postgres"
[keys]
master_key_file = "$work/$1.key"
keyring = "$work/$1.keyring.json"
[audit]
file = "${AUDIT_FILE:-}"
TOML
  "$bin" keys init --config "$work/$1.toml" >/dev/null
  RUST_LOG=warn "$bin" serve --config "$work/$1.toml" 2>"$work/$1.log" & pids+=($!)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && break; sleep 0.1; done
}
start_proxy enc 16441 "policy = \"$PWD/deploy/examples/policy.toml\""
start_proxy plain 16442 ""

# 10k rows each, written through the proxies (so the encrypted table holds ciphertext).
for pair in "16441 pgcloak_bench_enc" "16442 pgcloak_bench_plain"; do
  set -- $pair
  for chunk in $(seq 0 19); do
    rows=$(seq $((chunk * 500 + 1)) $((chunk * 500 + 500)) | awk '{printf "%s(%d,'"'"'u%d@example.com'"'"','"'"'555-%04d'"'"',%d)", (NR>1?",":""), $1, $1, $1 % 10000, $1 * 10}')
    printf "INSERT INTO customers (id, email, phone, salary) VALUES %s;\n" "$rows" | psql -h 127.0.0.1 -p "$1" -U "$user" -d "$2" -q -v ON_ERROR_STOP=1 >/dev/null
  done
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # port db script pid: prints "tps cpu_us_per_tx" (the proxy's user + system CPU per transaction)
  local t0 t1 out
  t0=$(ticks "$4")
  out=$(pgbench -h 127.0.0.1 -p "$1" -U "$user" -n -M prepared -c "$clients" -j "$threads" -T "$secs" -f "deploy/bench/scripts/$3" "$2" 2>&1)
  t1=$(ticks "$4")
  awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" \
    -v t="$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n1)" \
    -v n="$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')" \
    'BEGIN {printf "%s %.2f\n", t, (n > 0 ? (b - a) / hz * 1e6 / n : 0)}'
}
# Fairness: the side that runs first alternates every round, and every measured run starts on a settled
# server (CHECKPOINT): otherwise the run after an insert run pays for the WAL flushing, checkpoint and
# autovacuum those inserts left behind, always the same side.
settle() { psql -h "$host" -p "$port" -U "$user" -d postgres -qc CHECKPOINT >/dev/null; }
declare -A tps
declare -A cpu
declare -A ratios
measure() { # side script: prints "tps cpu_us_per_tx" for that side
  if [ "$1" = enc ]; then run 16441 pgcloak_bench_enc "$2" "${pids[0]}"; else run 16442 pgcloak_bench_plain "$2" "${pids[1]}"; fi
}
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="enc plain"; else order="plain enc"; fi
  for script in $scripts; do
    declare -A this
    if [ "${CONCURRENT:-0}" = 1 ]; then
      # Both sides at once, half the clients each: they share whatever the host does meanwhile.
      settle
      both=()
      for side in enc plain; do
        (clients=$((clients / 2)); threads=$(((threads + 1) / 2)); measure "$side" "$script") >"$work/$side.run" &
        both+=($!)
      done
      wait "${both[@]}"
    fi
    for side in $order; do
      if [ "${CONCURRENT:-0}" = 1 ]; then
        read -r t us <"$work/$side.run"
      else
        settle
        read -r t us < <(measure "$side" "$script")
      fi
      this[$side]=$t
      tps[$side-$script]="${tps[$side-$script]:-} $t"
      cpu[$side-$script]="${cpu[$side-$script]:-} $us"
      printf 'round %d %-15s %-6s tps=%s proxy_cpu_us_per_tx=%s\n' "$r" "$script" "$side" "$t" "$us"
    done
    ratios[$script]="${ratios[$script]:-} $(awk -v e="${this[enc]}" -v p="${this[plain]}" 'BEGIN {printf "%.3f", e/p}')"
  done
  if [ "${DIRECT:-0}" = 1 ]; then
    # The same point reads straight to PostgreSQL: what storing ciphertext costs the server and the
    # client by itself (wider rows, bytea output), the ceiling of the proxied ratio.
    for side in $order; do
      settle
      t=$(pgbench -h "$host" -p "$port" -U "$user" -n -M prepared -c "$clients" -j "$threads" -T "$secs" \
        -f deploy/bench/scripts/enc_read.sql "pgcloak_bench_$side" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n1)
      this[$side]=$t
      printf 'round %d %-15s %-6s tps=%s (direct to PostgreSQL, no proxy)\n' "$r" enc_read.sql "$side" "$t"
    done
    ratios[direct]="${ratios[direct]:-} $(awk -v e="${this[enc]}" -v p="${this[plain]}" 'BEGIN {printf "%.3f", e/p}')"
  fi
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
for script in $scripts; do
  e=$(echo "${tps[enc-$script]}" | median); p=$(echo "${tps[plain-$script]}" | median)
  ec=$(echo "${cpu[enc-$script]}" | median); pc=$(echo "${cpu[plain-$script]}" | median)
  rr=$(echo "${ratios[$script]}" | median)
  awk -v e="$e" -v p="$p" -v s="$script" -v ec="$ec" -v pc="$pc" -v rr="$rr" -v all="${ratios[$script]}" \
    'BEGIN {printf "%-15s encrypted %9.0f tps, plaintext %9.0f tps, ratio %.3f (per round:%s, median %s); proxy CPU per transaction %s vs %s us\n", s, e, p, e/p, all, rr, ec, pc}'
done
if [ -n "${ratios[direct]:-}" ]; then
  echo "enc_read.sql    direct to PostgreSQL, no proxy: per round:${ratios[direct]}, median $(echo "${ratios[direct]}" | median)"
fi
