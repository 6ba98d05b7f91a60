//! pgcloak: a transparent encrypting proxy for PostgreSQL.
//!
//! # Layout
//! - [`config`]: the TOML config with `PGCLOAK_*` overrides, resolved and validated once.
//! - [`protocol`]: wire-protocol framing and the few messages the proxy reads or builds; no I/O.
//! - [`server`]: listener, per-connection tasks, connection limit, graceful shutdown, shared state.
//! - [`event_loop`]: the session threads' executor and epoll reactor, and their sockets ([`event_loop::Conn`]).
//! - [`session`]: one client session by phase: startup and TLS, upstream connect, auth relay, the query
//!   phase pumps, cancel.
//! - [`guard`]: policy (reloadable), plan cache, keyring, audit handle, catalog snapshots, memberships.
//! - [`audit`]: the audit writer's config, checkpoint signer and session events.
//! - [`catalog`]: side connections as the `[catalog]` user.
//! - [`keys`]: master key sources, keyring stores (file, PostgreSQL), the `keys` commands.
//! - [`migrate`]: `encrypt` / `reencrypt` of a column's stored values, online and resumable.
//! - [`tls`]: rustls configurations (ring provider only).
//! - [`logging`]: tracing subscriber set-up.
//! - [`error`]: the crate's error enums, split by who is at fault.
//! - [`metrics`]: per-thread counters folded into the Prometheus text on scrape.
//! - [`admin`]: the `[admin]` HTTP listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`discover`]: `pgcloak discover`, sampling columns and classifying them (values never kept).
//! - [`impact`]: `pgcloak policy impact`, the audit trail's statements replayed under a new policy.
//! - [`console`]: the admin console a listed user reaches with `dbname=pgcloak`.
//! - [`registry`]: the sessions being served, as the console lists and ends them.
//! - [`reload`]: policy, keyring and TLS reloads (SIGHUP, file changes, the console's `RELOAD`).

pub mod admin;
pub mod audit_setup;
pub mod budgets;
pub mod catalog;
pub mod config;
pub mod console;
pub mod discover;
pub mod error;
pub mod event_loop;
pub mod grants;
pub mod impact;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod policy_file;
pub mod protocol;
pub mod registry;
pub mod reload;
pub mod rewrite;
pub mod server;
pub mod services;
pub mod session;
pub mod state;
pub mod subjects;
#[cfg(debug_assertions)]
pub mod testhook;
pub mod timer;
pub mod tls;
