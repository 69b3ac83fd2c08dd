#!/usr/bin/env bash
# Builds the image's base from Debian packages (no registry needed) and imports it into
# podman's own store as localhost/smtp-oauth2-relay-base:<hash>, where <hash> is the first
# 12 hex digits of this script's SHA-256: a changed script makes a new base, an unchanged
# one is reused (the build takes ~25 s, the reuse nothing). Prints the image name.
#
#   container/build-base.sh            # reuse or build
#   container/build-base.sh --force    # build even if present
#
# Needs root (debootstrap), podman and debootstrap. The mirror is taken from
# RELAY_DEBIAN_MIRROR, else from the first deb.debian.org-style URI in APT's sources.
set -euo pipefail

SUITE=bookworm
# ca-certificates: the system roots (Deno uses its own bundled roots by default; an
# operator may set DENO_TLS_CA_STORE=system). Nothing else: the relay needs only glibc.
INCLUDE=ca-certificates

self="$(readlink -f "$0")"
hash="$(sha256sum "$self" | cut -c1-12)"
image="localhost/smtp-oauth2-relay-base:${hash}"

if [[ "${1:-}" != "--force" ]] && podman image exists "$image"; then
  echo "$image"
  exit 0
fi

mirror="${RELAY_DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror="$(grep -rhoE '(URIs:[[:space:]]*|deb[[:space:]]+)https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    grep -oE 'https?://[^[:space:]]+' | head -n 1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

root="$(mktemp -d /var/tmp/relay-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap ${SUITE} (minbase + ${INCLUDE}) from ${mirror}" >&2
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$mirror" >/dev/null
# Nothing the image needs at run time: APT's caches and lists, docs, man pages.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
tar -C "$root" -c . | podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "$image"
