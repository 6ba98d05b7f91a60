# Sourced by the benchmark scripts: the pgbench database, and PgBouncer and pgcloak in front of it.
# Expects $host, $port, $user, $db and $work to be set.

# Creates $db and loads it with `pgbench -i -s 10` (again when it exists: a fresh, vacuumed table).
bench_db() {
  psql -h "$host" -p "$port" -U "$user" -d postgres -qAtc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || psql -h "$host" -p "$port" -U "$user" -d postgres -qc "CREATE DATABASE $db"
  pgbench -h "$host" -p "$port" -U "$user" -i -s 10 -q "$db" >/dev/null 2>&1
}

# Starts PgBouncer (session mode, trust) on 127.0.0.1:$1 in front of $db, in the background (as the
# postgres OS user when running as root); sets bouncer_pid to the background job.
start_pgbouncer() {
  cat > "$work/pgbouncer.ini" <<INI
[databases]
$db = host=$host port=$port dbname=$db
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
auth_type = trust
auth_file = $work/users.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 50
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
unix_socket_dir =
INI
  echo "\"$user\" \"\"" > "$work/users.txt"
  chown -R postgres "$work" 2>/dev/null || true
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- pgbouncer -q "$work/pgbouncer.ini" 2>/dev/null &
  else
    pgbouncer -q "$work/pgbouncer.ini" 2>/dev/null &
  fi
  bouncer_pid=$!
}

# Writes $work/pgcloak.toml: listen on 127.0.0.1:$1 in front of $host:$port, the policy file $2 if
# given, the top-level lines $3 if given (e.g. `workers = 1`), keys under $work, and the audit file
# sink only when AUDIT_FILE names one.
pgcloak_config() {
  local policy_line=""
  [ -n "${2:-}" ] && policy_line="policy = \"$2\""
  cat > "$work/pgcloak.toml" <<TOML
listen = "127.0.0.1:$1"
upstream = "$host:$port"
${3:-}
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
}

# Starts target/release/pgcloak on 127.0.0.1:$1 in front of $host:$port in the background, with the
# policy file $2 if given and the audit file sink only when AUDIT_FILE names one; sets cloak_pid.
start_pgcloak() {
  local bin=${PROXY_BIN:-target/release/pgcloak}
  pgcloak_config "$1" "${2:-}"
  # Builds from before `keys` existed (benchmarks of old commits) need no key.
  if "$bin" --help | grep -q '^  keys'; then
    "$bin" keys init --config "$work/pgcloak.toml" >/dev/null
  fi
  RUST_LOG=warn "$bin" serve --config "$work/pgcloak.toml" 2>"$work/pgcloak.log" &
  cloak_pid=$!
}
