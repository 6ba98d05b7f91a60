#!/usr/bin/env bash
# Where a relay's CPU goes: pgbench -S -M extended through PgBouncer, through a bare byte pump on a
# single-threaded tokio runtime (how pgcloak's session threads run), through a bare byte pump on a mio
# event loop (how PgBouncer runs, on libevent), and through pgcloak — alternating rounds, same machine.
# The two pumps (proxy/examples/relay_floor.rs) do no framing, no policy and no tracking: the tokio one
# is the floor pgcloak builds on, the gap between the two is what the async runtime costs per message.
#
# Usage: deploy/bench/relay-floor.sh [ROUNDS] [SECONDS]
# Needs what deploy/bench/proxy-vs-pgbouncer.sh needs. pgcloak runs without a policy and, as in that
# script, without the audit file sink unless AUDIT_FILE names one. Clients connect with sslmode=disable: the pumps
# relay SSLRequest to PostgreSQL, which would otherwise make every session TLS end to end.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
secs=${2:-8}
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
user=${PGUSER:-postgres}
db=pgcloak_bench
export PGSSLMODE=disable

command -v pgbouncer >/dev/null || { echo "pgbouncer not found: apt-get install pgbouncer" >&2; exit 1; }
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet -p pgcloak --bin pgcloak --example relay_floor
floor=target/release/examples/relay_floor

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

. deploy/bench/common.sh
bench_db

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; }

start_pgbouncer 16453
pids+=("$bouncer_pid")
"$floor" tokio 127.0.0.1:16454 "$host:$port" & pids+=($!); tokio_pid=$!
"$floor" mio 127.0.0.1:16455 "$host:$port" & pids+=($!); mio_pid=$!
start_pgcloak 16456
pids+=("$cloak_pid")
for p in 16453 16454 16455 16456; do wait_port $p; done
sleep 1
bouncer_pid=$(pgrep -n -x pgbouncer)

targets=(pgbouncer tokio-pump mio-pump pgcloak)
ports=(16453 16454 16455 16456)
procs=("$bouncer_pid" "$tokio_pid" "$mio_pid" "$cloak_pid")
tps=("" "" "" "")
cpu=("" "" "" "")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for r in $(seq "$rounds"); do
  for i in 0 1 2 3; do
    t0=$(ticks "${procs[$i]}")
    out=$(pgbench -h 127.0.0.1 -p "${ports[$i]}" -U "$user" -S -M extended -c 8 -j 2 -T "$secs" -n "$db" 2>&1)
    t1=$(ticks "${procs[$i]}")
    n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    v=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    us=$(awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz * 1e6 / n}')
    tps[i]="${tps[i]} $v"
    cpu[i]="${cpu[i]} $us"
    printf 'round %d %-10s tps=%10s relay_cpu_us_per_tx=%s\n' "$r" "${targets[$i]}" "$v" "$us"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "median over $rounds rounds of ${secs}s, pgbench -S -M extended -c 8 -j 2:"
b=$(echo "${tps[0]}" | median)
for i in 0 1 2 3; do
  m=$(echo "${tps[i]}" | median)
  printf '  %-10s %10s tps  %.3f x pgbouncer  relay CPU %s us/tx\n' "${targets[$i]}" "$m" "$(awk -v a="$m" -v b="$b" 'BEGIN {print a / b}')" "$(echo "${cpu[i]}" | median)"
done
