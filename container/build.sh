#!/usr/bin/env bash
# Builds the relay's image with podman, without any registry:
#   1. the base from Debian packages (container/build-base.sh, reused while unchanged);
#   2. a build context with the real Deno binary (not npm's Node shim), the sources, the
#      lockfile and a DENO_DIR filled here on the host (`deno install --frozen`,
#      `deno cache --frozen`; kept between builds, keyed by deno.json, deno.lock and the
#      Deno version), so the image needs no network but the providers';
#   3. `podman build` of ./Containerfile with the network off.
#
#   container/build.sh [--tag NAME] [--iidfile PATH]
#     --tag      default localhost/smtp-oauth2-relay:latest
#     --iidfile  also write the image id there (the tag may move; the id does not)
#
# On hosts where crun or the default ulimits fail (this project's VMs), first
#   export CONTAINERS_CONF=$PWD/container/containers.conf
#
# Prints the image name on stdout, progress on stderr. Needs root, podman, runc,
# debootstrap (see docs/container.md); runs from any directory.
set -euo pipefail

repo="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
tag="localhost/smtp-oauth2-relay:latest"
iidfile=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) tag="${2:?--tag needs a name}"; shift 2 ;;
    --iidfile) iidfile="${2:?--iidfile needs a path}"; shift 2 ;;
    *) echo "container/build.sh: unknown option $1 (use --tag NAME, --iidfile PATH)" >&2; exit 2 ;;
  esac
done

# The real binary behind `deno` (npm installs a Node shim that does not forward signals).
deno_bin="$(deno eval --quiet 'console.log(Deno.execPath())')"
if ! head -c 4 "$deno_bin" | grep -q 'ELF'; then
  echo "container/build.sh: $deno_bin is not an ELF binary" >&2
  exit 1
fi
deno_version="$("$deno_bin" --version | awk 'NR==1{print $2}')"

base="$("$repo/container/build-base.sh")"

# DENO_DIR with every dependency, filled on the host (npm is reachable here, not from the
# build), reused while deno.json, deno.lock and the Deno version are the same.
key="$(cat "$repo/deno.json" "$repo/deno.lock" <(echo "$deno_version") | sha256sum | cut -c1-12)"
cache_root="${RELAY_IMAGE_CACHE:-/var/tmp/smtp-oauth2-relay-image}"
deno_dir="$cache_root/deno-dir-$key"
if [[ ! -f "$deno_dir/.complete" ]]; then
  echo "filling DENO_DIR $deno_dir" >&2
  rm -rf "$deno_dir"
  mkdir -p "$deno_dir"
  (cd "$repo" && DENO_DIR="$deno_dir" "$deno_bin" install --frozen --quiet &&
    DENO_DIR="$deno_dir" "$deno_bin" cache --frozen --quiet src/main.ts src/sandbox/mod.ts)
  # Emitted code is keyed by this host's paths: useless in the image.
  rm -rf "$deno_dir/gen"
  touch "$deno_dir/.complete"
fi

ctx="$(mktemp -d /var/tmp/relay-ctx.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/app"
cp -l "$deno_bin" "$ctx/deno" 2>/dev/null || cp "$deno_bin" "$ctx/deno"
cp -rl "$deno_dir" "$ctx/deno-dir" 2>/dev/null || cp -r "$deno_dir" "$ctx/deno-dir"
rm -f "$ctx/deno-dir/.complete"
cp -r "$repo/src" "$repo/deno.lock" "$repo/accounts.example.ts" "$ctx/app/"
mkdir -p "$ctx/app/container"
cp "$repo/container/entrypoint.sh" "$repo/container/healthcheck.sh" "$ctx/app/container/"
# The image's deno.json: the repository's, plus one import-map entry so that an
# accounts.ts mounted at /etc/smtp-relay/ imports "./src/config/mod.ts" as in the repository.
"$deno_bin" eval --quiet '
  const [from, to] = Deno.args;
  const json = JSON.parse(Deno.readTextFileSync(from));
  json.imports = { ...json.imports, "file:///etc/smtp-relay/src/": "./src/" };
  Deno.writeTextFileSync(to, JSON.stringify(json, null, 2) + "\n");
' "$repo/deno.json" "$ctx/app/deno.json"

# The image the tag named before: removed below if the build moved the tag away from it
# (unless a container still uses it), so repeated builds do not pile up old images.
previous="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"

echo "podman build $tag from $base" >&2
podman build --quiet --network none --format docker \
  --build-arg "BASE=$base" --tag "$tag" --file "$repo/Containerfile" \
  ${iidfile:+--iidfile "$iidfile"} "$ctx" >/dev/null
current="$(podman image inspect --format '{{.Id}}' "$tag")"
if [[ -n "$previous" && "$previous" != "$current" ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
echo "$tag"
