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
# The flags are not listed here: they are derived from the config, as `deno task start`
# does (src/launch.ts, src/permissions.ts): a first run may read the config alone (and
# RELAY_* variables) and prints the exact permission set its command needs; if the config
# names key or certificate files, a second run may read those too. The relay then runs
# with exactly that set, as PID 1 (signals reach it directly). A reload that needs a new
# host or file needs a container restart.
set -eu

DENO="/usr/local/bin/deno"
RUN="run --frozen --cached-only --config /app/deno.json"

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

# hash-password and help need no permission at all.
case "$1" in
  serve | check | authorize | status) ;;
  *) exec $DENO $RUN --no-prompt /app/src/main.ts "$@" ;;
esac

config=/etc/smtp-relay/accounts.ts
prev=""
for arg in "$@"; do
  if [ "$prev" = "--config" ]; then config=$arg; fi
  case "$arg" in --config=*) config=${arg#--config=} ;; esac
  prev=$arg
done

cmd=$1
shift
read_list=$config
for attempt in 1 2; do
  # shellcheck disable=SC2086
  out=$($DENO $RUN --no-prompt --allow-read="$read_list" --allow-env='RELAY_*' /app/src/main.ts \
    permissions --strict --probe --command "$cmd" "$@") || exit $?
  case "$out" in
    '{"needRead":'*)
      files=$(printf '%s' "$out" | sed -e 's/^{"needRead":\[//' -e 's/\]}$//' -e 's/"//g')
      read_list="$config,$files"
      ;;
    *) break ;;
  esac
done
case "$out" in
  '{"needRead":'*)
    echo "$config: the files it names changed while it was loaded twice" >&2
    exit 2
    ;;
esac

# The relay's V8 flag and allocator setting, as src/runtime_flags.ts gives `deno task start`
# (docs/memory.md: what they save). $out is the flag list (no spaces inside a flag: paths
# with spaces are not supported).
export MALLOC_ARENA_MAX=2
# shellcheck disable=SC2086
exec $DENO $RUN --v8-flags=--max-semi-space-size=2 $out /app/src/main.ts "$cmd" "$@"
