#!/bin/bash
# The image's HEALTHCHECK: GET /healthz on the relay's HTTP listener inside the container
# (bash's /dev/tcp: no curl in the image, no Deno start-up per check). Exit 0 on 200.
# RELAY_HEALTH_PORT: the metrics port if the config moved it from 9090.
set -eu
port="${RELAY_HEALTH_PORT:-9090}"
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
read -r -t 5 status_line <&3
case "$status_line" in
  "HTTP/1.1 200"*) exit 0 ;;
  *) echo "healthz: ${status_line:-no answer}" >&2; exit 1 ;;
esac
