-- Runs once, when the PostgreSQL volume is created (docker-entrypoint-initdb.d).
-- pgcloak's own login (catalog snapshots, role memberships, the keyring and audit tables).
CREATE ROLE pgcloak LOGIN PASSWORD 'pgcloak-pw';
GRANT CREATE ON DATABASE postgres TO pgcloak;
-- Demo roles and data matching deploy/examples/policy.toml (DEMO DATA, not for production).
CREATE ROLE app;
CREATE ROLE support;
CREATE ROLE app_user LOGIN PASSWORD 'app-pw' IN ROLE app;
CREATE ROLE support_user LOGIN PASSWORD 'support-pw' IN ROLE support;
CREATE DATABASE app OWNER app_user;
\connect app
CREATE TABLE customers (
  id int PRIMARY KEY,
  name text,
  email text,      -- confidential, deterministic: ciphertext stored as base64 text
  phone text,
  ssn text,
  salary bytea,    -- sensitive int4: ciphertext needs bytea
  notes text
);
ALTER TABLE customers OWNER TO app_user;
GRANT SELECT ON customers TO support;
