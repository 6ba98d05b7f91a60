#!/usr/bin/env bash
# pgbench -S through PostgreSQL directly, PgBouncer (session mode) and pgcloak, alternating rounds on the
# same machine. Prints TPS per round, medians, the pgcloak/PgBouncer ratio, p99 latency, the CPU time
# each proxy process spent per transaction (user + system, from /proc: steadier than TPS on a shared
# machine), and pgcloak's RSS per idle client connection.
#
# Usage: deploy/bench/proxy-vs-pgbouncer.sh [ROUNDS] [SECONDS]
# Needs: a PostgreSQL on $PGHOST:$PGPORT (default 127.0.0.1:5432) that $PGUSER (default postgres) can
# reach without a password (trust), pgbench, pgbouncer (Debian package), python3 with asyncpg for the
# idle-connection measurement (target/venv from scripts/test). Set POLICY=1 to load the example policy,
# AUDIT_FILE=path to turn the file audit sink on, PROXY_BIN=path to measure another pgcloak build
# (not PGCLOAK_*: pgcloak reads those as config keys).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
secs=${2:-15}
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
user=${PGUSER:-postgres}
db=pgcloak_bench
clients=${CLIENTS:-8}
threads=${THREADS:-2}

command -v pgbouncer >/dev/null || { echo "pgbouncer not found: apt-get install pgbouncer" >&2; exit 1; }
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet -p pgcloak

work=$(mktemp -d)
cleanup() {
  [ -n "${cloak_pid:-}" ] && kill "$cloak_pid" 2>/dev/null || true
  [ -n "${bouncer_pid:-}" ] && kill "$bouncer_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

. deploy/bench/common.sh
bench_db

bport=16433
cport=16434
start_pgbouncer $bport

policy=""
[ "${POLICY:-0}" = 1 ] && policy="$PWD/deploy/examples/policy.toml"
start_pgcloak $cport "$policy"
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$cport) 2>/dev/null && break; sleep 0.1; done
sleep 1

declare -A tps
declare -A cpu
declare -A ports=([direct]=$port [pgbouncer]=$bport [pgcloak]=$cport)
bouncer_proc=$(pgrep -n -x pgbouncer || true)
declare -A procs=([direct]="" [pgbouncer]=$bouncer_proc [pgcloak]=$cloak_pid)
ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
for r in $(seq "$rounds"); do
  for target in direct pgbouncer pgcloak; do
    t0=$(ticks "${procs[$target]}")
    out=$(cd "$work" && pgbench -h 127.0.0.1 -p "${ports[$target]}" -U "$user" -S -M extended -c "$clients" -j "$threads" \
      -T "$secs" -n --log --log-prefix="$target-$r" "$db" 2>&1)
    t=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n1)
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
    n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    t1=$(ticks "${procs[$target]}")
    us=$(awk -v a="$t0" -v b="$t1" -v n="${n:-0}" -v hz="$(getconf CLK_TCK)" 'BEGIN {if (n > 0) printf "%.2f", (b - a) / hz * 1e6 / n; else print "-"}')
    tps[$target]="${tps[$target]:-} $t"
    cpu[$target]="${cpu[$target]:-} $us"
    printf 'round %d %-9s tps=%10s failed=%s proxy_cpu_us_per_tx=%s\n' "$r" "$target" "$t" "${failed:-?}" "$([ -n "${procs[$target]}" ] && echo "$us" || echo -)"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p99() { cat "$work"/$1-* 2>/dev/null | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {print a[int(NR*0.99)]}'; }
echo
echo "median TPS over $rounds rounds of ${secs}s, pgbench -S -M extended -c $clients -j $threads:"
for target in direct pgbouncer pgcloak; do
  m=$(echo "${tps[$target]}" | median)
  printf '  %-9s %10s tps   p99 %6s us\n' "$target" "$m" "$(p99 "$target")"
  eval "med_$target=$m"
done
awk -v c="$med_pgcloak" -v b="$med_pgbouncer" 'BEGIN {printf "  pgcloak/pgbouncer = %.3f\n", c/b}'
[ -n "$bouncer_proc" ] && printf '  proxy CPU per transaction (median, user+system): pgbouncer %s us, pgcloak %s us\n' \
  "$(echo "${cpu[pgbouncer]}" | median)" "$(echo "${cpu[pgcloak]}" | median)"

# RSS per idle connection.
if [ -x target/venv/bin/python ]; then
  n=${IDLE_CONNECTIONS:-80}
  before=$(awk '/VmRSS/ {print $2}' /proc/$cloak_pid/status)
  target/venv/bin/python - "$cport" "$user" "$db" "$n" "$cloak_pid" "$before" <<'PY'
import asyncio, sys
port, user, db, n, pid, before = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
import asyncpg
async def main():
    conns = [await asyncpg.connect(host="127.0.0.1", port=port, user=user, database=db, ssl=False) for _ in range(n)]
    await asyncio.sleep(2)
    after = int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
    print(f"  RSS: {before} KiB with no clients, {after} KiB with {n} idle clients: {(after - before) / n:.1f} KiB per idle connection")
    for c in conns:
        await c.close()
asyncio.run(main())
PY
fi
