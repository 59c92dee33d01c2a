#!/usr/bin/env bash
# Build the Tessera image: wheels on the host, then a multi-stage build that only
# copies them in.
#
#   infra/image/build.sh [TAG] [extra build arguments...]
#
# TESSERA_ENGINE picks podman (default when present) or docker. BASE may be given
# as --build-arg BASE=...; with TESSERA_LOCAL_BASE=1 the base is made from Debian's
# packages first (infra/image/base-from-debian.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tag=${1:-localhost/tessera:dev}
shift || true
engine=${TESSERA_ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
python=${PYTHON:-python3}

ctx=$(mktemp -d /var/tmp/tessera-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$ctx/Dockerfile"
# The project's wheel (built outside the checkout, so no build/ folder is left in
# it), then every dependency's wheel.
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$ctx/wheels" "$repo"
"$python" -m pip wheel --quiet --wheel-dir "$ctx/wheels" "$ctx"/wheels/tessera-*.whl
rm -rf "$repo/build"

args=()
if [ "${TESSERA_LOCAL_BASE:-0}" = 1 ]; then
  "$here/base-from-debian.sh"
  args+=(--build-arg "BASE=${TESSERA_BASE_IMAGE:-localhost/tessera-base:bookworm}")
fi
if [ "$engine" = podman ]; then
  args+=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
fi
"$engine" build "${args[@]}" "$@" -t "$tag" "$ctx"
echo "built $tag"
