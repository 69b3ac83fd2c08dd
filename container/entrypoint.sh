#!/bin/sh
# The image's entry point: the relay under its own permission flags (never -A).
# THE ONE PLACE for the flags inside the container; see docs/container.md to extend them.
#
# Inside the container:
#   /etc/smtp-relay/accounts.ts   the config (mounted read-only), TLS files under
#                                 /etc/smtp-relay/tls/ (mounted read-only)
#   /var/lib/smtp-relay           the state directory (a volume, 0700, user relay)
#   0.0.0.0:2525 SMTP, 0.0.0.0:9090 metrics/health (http.host "0.0.0.0" in the config;
#                                 127.0.0.1 is enough for the healthcheck)
#
# RELAY_ALLOW_NET_EXTRA (optional): more host:port entries, comma-separated, for custom
# providers or other listeners (e.g. "idp.example.com:443,mail.example.com:465").
set -eu

NET="0.0.0.0:2525,0.0.0.0:9090,127.0.0.1:9090"
# The presets' token endpoints and SMTP servers.
NET="$NET,oauth2.googleapis.com:443,smtp.gmail.com:587"
NET="$NET,login.microsoftonline.com:443,smtp.office365.com:587,smtp-mail.outlook.com:587"
# The sandbox provider on the container's own loopback (its default ports), as `deno task start`.
NET="$NET,127.0.0.1:2580,localhost:2587"
if [ -n "${RELAY_ALLOW_NET_EXTRA:-}" ]; then NET="$NET,$RELAY_ALLOW_NET_EXTRA"; fi

# `serve` is the only command that listens; the others (check, status, authorize,
# hash-password) run under the same flags: `podman run --rm ... IMAGE check`.
# Unless given: --config /etc/smtp-relay/accounts.ts, and for serve --host 0.0.0.0.
if [ "$#" -eq 0 ]; then set -- serve; fi
has_config=no
has_host=no
for arg in "$@"; do
  case "$arg" in
    --config | --config=*) has_config=yes ;;
    --host | --host=*) has_host=yes ;;
  esac
done
if { [ "$1" = serve ] || [ "$1" = check ] || [ "$1" = authorize ]; } && [ "$has_config" = no ]; then
  set -- "$@" --config /etc/smtp-relay/accounts.ts
fi
if [ "$1" = "serve" ] && [ "$has_host" = no ]; then set -- "$@" --host 0.0.0.0; fi

exec /usr/local/bin/deno run --frozen --cached-only --no-prompt \
  --config /app/deno.json \
  --allow-net="$NET" \
  --allow-read=/etc/smtp-relay,/var/lib/smtp-relay \
  --allow-write=/var/lib/smtp-relay \
  --allow-env='RELAY_*' \
  /app/src/main.ts "$@"
