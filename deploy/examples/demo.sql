-- DEMO DATA for the guided first run in the README (scripts/dev-proxy --demo applies it to the local
-- PostgreSQL). It creates the database pgcloak_demo, the policy roles of deploy/examples/policy.toml
-- (app, support) and three demo logins (password "demo"). Not for production; drop it with
--   DROP DATABASE pgcloak_demo; DROP ROLE demo_app, demo_support, demo_default;
\set ON_ERROR_STOP on
SET client_min_messages = warning;
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN CREATE ROLE app; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'support') THEN CREATE ROLE support; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_app') THEN
    CREATE ROLE demo_app LOGIN PASSWORD 'demo' IN ROLE app;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_support') THEN
    CREATE ROLE demo_support LOGIN PASSWORD 'demo' IN ROLE support;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_default') THEN
    CREATE ROLE demo_default LOGIN PASSWORD 'demo';
  END IF;
END
$$;
SELECT 'CREATE DATABASE pgcloak_demo'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'pgcloak_demo') \gexec
\connect pgcloak_demo
-- The columns of deploy/examples/policy.toml. Encrypted text columns hold base64 ciphertext; the
-- encrypted int4 column (salary) needs bytea.
CREATE TABLE IF NOT EXISTS customers (
  id int PRIMARY KEY,
  name text,
  email text,
  phone text,
  ssn text,
  salary bytea,
  notes text
);
COMMENT ON TABLE customers IS 'pgcloak demo data (scripts/dev-proxy --demo)';
GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO app;
GRANT SELECT ON customers TO support, demo_default;
