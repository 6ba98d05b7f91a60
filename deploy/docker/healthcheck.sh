#!/usr/bin/env bash
# HEALTHCHECK of the pgcloak image: exit 0 when GET /healthz on the admin listener answers 200.
# The slim base image has no curl; bash's /dev/tcp is enough for one HTTP/1.1 request.
addr=${PGCLOAK_HEALTH_ADDR:-127.0.0.1:9930}
exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
read -r -t 3 status <&3 || exit 1
[[ $status == "HTTP/1.1 200"* ]]
