#!/usr/bin/env bash
# The build stage of deploy/docker/Dockerfile: builds pgcloak and lays out under OUT exactly the
# files the runtime image gets. Runs outside Docker too (the test suite runs it):
#   deploy/docker/build.sh OUT          # cargo build --release --locked
#   PGCLOAK_PREBUILT=path/to/pgcloak deploy/docker/build.sh OUT   # reuse a binary already built
set -euo pipefail
out=${1:?usage: deploy/docker/build.sh OUT}
cd "$(dirname "$0")/../.."
if [ -n "${PGCLOAK_PREBUILT:-}" ]; then
  bin=$PGCLOAK_PREBUILT
else
  cargo build --release --locked -p pgcloak
  bin=target/release/pgcloak
fi
install -D -m 0755 "$bin" "$out/usr/local/bin/pgcloak"
install -D -m 0755 deploy/docker/healthcheck.sh "$out/usr/local/bin/pgcloak-healthcheck"
install -D -m 0755 deploy/docker/setup-runtime.sh "$out/usr/local/lib/pgcloak/setup-runtime.sh"
install -D -m 0644 deploy/docker/pgcloak.toml "$out/etc/pgcloak/pgcloak.toml"
install -D -m 0644 deploy/examples/policy.toml "$out/etc/pgcloak/policy.toml"
"$out/usr/local/bin/pgcloak" --version
