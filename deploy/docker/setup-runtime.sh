#!/usr/bin/env bash
# The runtime stage's one RUN step: the unprivileged user pgcloak runs as and the only directory it
# writes. ROOT (default /) lets the test suite run it against a scratch directory.
set -euo pipefail
root=${ROOT:-}
if [ -z "$root" ]; then
  groupadd --system --gid 10001 pgcloak
  useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pgcloak --no-create-home \
    --shell /usr/sbin/nologin pgcloak
fi
install -d -m 0750 "$root/var/lib/pgcloak"
if [ -z "$root" ]; then chown 10001:10001 /var/lib/pgcloak; fi
# The config is read-only to the service user.
chmod 0644 "$root/etc/pgcloak/pgcloak.toml" "$root/etc/pgcloak/policy.toml"
