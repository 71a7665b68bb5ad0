#!/usr/bin/env bash
# `make images`: the runtime and operator images, built with the project's own Dockerfiles
# (runtime/Dockerfile, operator/Dockerfile) by buildah, without a docker daemon and without
# pulling anything from a registry, written as docker-archive tarballs for
# `ctr -n k8s.io images import`, then smoke-tested (images/smoke.py).
#
# The base image the Dockerfiles start from (PYTHON_IMAGE, python:3.11-slim-bookworm where a
# registry is reachable) is built first from Debian bookworm packages with mmdebstrap
# (images/python-base/Dockerfile). Package downloads during RUN steps see the host's CA
# bundle through a read-only bind mount; the smoke test checks none of it stays in an image.
#
# Everything it writes is under IMAGES_DIR (default ~/.cache/modelplane/images): the archives,
# images.json (image reference, archive, sizes, smoke result per image), buildah's storage.
# An image whose Dockerfile and build context are unchanged is not rebuilt (FORCE=1 rebuilds
# everything, the base included); the smoke test always runs. Needs root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_DIR=${IMAGES_DIR:-$HOME/.cache/modelplane/images}
# The chart's appVersion: the operator's tag there, and the runtime tag in values.yaml and
# in the operator's config (tests/test_install/test_images.py keeps them equal).
VERSION=${VERSION:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' \
  "$REPO/charts/modelplane/Chart.yaml")}
RUNTIME_IMAGE=${RUNTIME_IMAGE:-ghcr.io/modelplane/runtime:$VERSION}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-ghcr.io/modelplane/operator:$VERSION}
BASE_IMAGE=localhost/modelplane/python-base:3.11-slim-bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
HOST_CA=/etc/ssl/certs/ca-certificates.crt
PYTHON=${PYTHON:-python3}

[[ -n $VERSION ]] || { echo "no appVersion in charts/modelplane/Chart.yaml" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "make images needs root (mmdebstrap and buildah run chroots)" >&2; exit 1; }
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v buildah >/dev/null || missing+=(buildah)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} from Debian"
  apt-get install -y -q "${missing[@]}" >/dev/null
fi

mkdir -p "$IMAGES_DIR/tmp"
exec 9>"$IMAGES_DIR/.lock"
flock 9  # one build at a time per IMAGES_DIR
export TMPDIR=$IMAGES_DIR/tmp  # buildah's blobs and contexts: big, keep them here too
buildah() {
  # vfs: no overlay mounts needed; chroot isolation: no runc, the host's network.
  command buildah --root "$IMAGES_DIR/storage" --runroot "$IMAGES_DIR/run" \
    --storage-driver vfs "$@"
}
digest() { sha256sum | cut -c1-64; }

# --- the base image ------------------------------------------------------------------------
SOURCES=(
  "deb $DEBIAN_MIRROR bookworm main"
  "deb $DEBIAN_MIRROR bookworm-updates main"
  "deb $DEBIAN_SECURITY bookworm-security main"
)
# SC2054: --include takes a comma list; SC2016: the hooks expand $1 in mmdebstrap's shell.
# shellcheck disable=SC2054,SC2016
MMDEBSTRAP=(
  mmdebstrap --variant=apt
  --include=python3,python3-venv,python-is-python3,ca-certificates,passwd
  # merged /usr the way debootstrap does it, without the usrmerge package (and its perl).
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # What debian:bookworm-slim leaves out; the rules stay in the image, as there.
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/groff/*'
  # Not the host's resolver and name: empty, for the container runtime to mount over (else
  # buildah's RUN steps leave empty executable ones), and a loopback-only /etc/hosts.
  --customize-hook='rm -f "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old'
  --customize-hook=': >"$1/etc/resolv.conf"; : >"$1/etc/hostname"; chmod 0644 "$1"/etc/resolv.conf "$1"/etc/hostname'
  --customize-hook='printf "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" >"$1/etc/hosts"'
  --skip=output/dev
)
base_inputs=$(cat "$REPO/images/python-base/Dockerfile" <(printf '%s\n' "${MMDEBSTRAP[@]}" "${SOURCES[@]}") | digest)
if [[ -n ${FORCE:-} || $(cat "$IMAGES_DIR/python-base.inputs" 2>/dev/null) != "$base_inputs" ]] ||
  ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "== $BASE_IMAGE: a bookworm root filesystem (mmdebstrap)"
  started=$SECONDS
  rm -rf "$IMAGES_DIR/python-base"
  mkdir "$IMAGES_DIR/python-base"
  "${MMDEBSTRAP[@]}" --quiet bookworm "$IMAGES_DIR/python-base/rootfs.tar" "${SOURCES[@]}" >/dev/null
  buildah bud --quiet --isolation chroot --pull=never \
    -f "$REPO/images/python-base/Dockerfile" -t "$BASE_IMAGE" "$IMAGES_DIR/python-base" >/dev/null
  rm -rf "$IMAGES_DIR/python-base"
  echo "$base_inputs" >"$IMAGES_DIR/python-base.inputs"
  echo "   built in $((SECONDS - started)) s"
else
  echo "== $BASE_IMAGE: up to date"
fi

# --- the project's images ------------------------------------------------------------------
context_digest() {
  # What the Dockerfiles can COPY: the files git tracks or would track (no caches).
  local paths=(pyproject.toml README.md .dockerignore api operator runtime)
  (cd "$REPO" && {
    git ls-files -z --cached --others --exclude-standard -- "${paths[@]}" 2>/dev/null ||
      find "${paths[@]}" -type f ! -path '*/__pycache__/*' -print0
  } | sort -zu | while IFS= read -r -d '' file; do
    if [[ -f $file ]]; then printf '%s\0' "$file"; fi  # not a tracked file since deleted
  done | xargs -0 sha256sum)
}

build() {  # name dockerfile reference kind
  local name=$1 dockerfile=$2 ref=$3 kind=$4 started seconds=""
  local archive="$IMAGES_DIR/modelplane-$name-${ref##*:}.tar"
  local inputs
  inputs=$(printf '%s\n' "$ref" "$base_inputs" "$(sha256sum "$REPO/$dockerfile")" "$(context_digest)" | digest)
  if [[ -z ${FORCE:-} && -f $archive && $(cat "$archive.inputs" 2>/dev/null) == "$inputs" ]]; then
    echo "== $ref: up to date"
  else
    echo "== $ref: buildah bud -f $dockerfile --build-arg PYTHON_IMAGE=$BASE_IMAGE"
    started=$SECONDS
    buildah bud --isolation chroot --pull=never \
      --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
      --volume "$HOST_CA:$HOST_CA:ro" \
      -f "$REPO/$dockerfile" -t "$ref" "$REPO"
    rm -f "$archive" "$archive.partial" "$archive.inputs"
    buildah push --quiet "$ref" "docker-archive:$archive.partial:$ref"
    mv "$archive.partial" "$archive"
    echo "$inputs" >"$archive.inputs"
    seconds=$((SECONDS - started))
    echo "   built and written in $seconds s: $archive"
  fi
  "$PYTHON" "$REPO/images/smoke.py" check --manifest "$IMAGES_DIR/images.json" \
    --kind "$kind" --name "$name" --image "$ref" --archive "$archive" \
    ${seconds:+--build-seconds "$seconds"}
}

build runtime runtime/Dockerfile "$RUNTIME_IMAGE" runtime
build operator operator/Dockerfile "$OPERATOR_IMAGE" operator
# Earlier builds of the same tags, and anything a failed build left behind.
buildah rm --all >/dev/null
buildah rmi --prune >/dev/null 2>&1 || true
"$PYTHON" "$REPO/images/smoke.py" summary --manifest "$IMAGES_DIR/images.json"
