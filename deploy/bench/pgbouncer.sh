# Sourced by the benchmark scripts: the pgbench database and a PgBouncer in front of it.
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
