//! End-to-end tests: a real PostgreSQL cluster (started once per run by the harness, SCRAM auth), the
//! real `pgcloak` binary per test, and real clients (tokio-postgres, psql, pgbench, psycopg, asyncpg).

mod harness;
mod inprocess;

mod audit;
mod auth;
mod budgets;
mod cli;
mod clients;
mod console;
mod dataplane;
mod deploy;
mod discover;
mod drivers;
mod fleet;
mod grants;
mod lifecycle;
mod matrix;
mod migrate;
mod operations;
mod robustness;
mod subjects;
mod tls;
mod wire;
