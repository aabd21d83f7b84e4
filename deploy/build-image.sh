#!/usr/bin/env bash
# Builds the oxcd container image: ./deploy/build-image.sh [IMAGE_TAG]
#
#   ./deploy/build-image.sh              # -> oxcd:local
#
# No image registry is needed (or reachable): the image is FROM scratch and
# holds only a statically linked oxcd, /etc/passwd and /etc/group for the
# non-root user (uid/gid 10001), and an empty /var/lib/oxcd owned by it.
#
# The binary: the gnu target with glibc linked statically
# (RUSTFLAGS=-C target-feature=+crt-static; the musl target is not
# installable here). `--target` is given explicitly so that the flag applies
# to oxcd alone, not to build scripts and proc-macros. Name lookups (compose
# service names for peer URLs) go through glibc's getaddrinfo, whose files
# and dns backends are built into glibc >= 2.34, so /etc/hosts and the
# /etc/resolv.conf that Docker mounts into the container are honoured
# without any NSS module (see deploy/README.md; tests/it/compose.rs checks it).
#
# Environment:
#   OXCD_IMAGE_TARGET_DIR  cargo target dir of the static build
#                          (default: $CARGO_TARGET_DIR/image or target/image)
#   OXCD_IMAGE_SKIP_BUILD=1  reuse the binary already in that target dir
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${1:-oxcd:local}
TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR=${OXCD_IMAGE_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/image}
BIN=$TARGET_DIR/$TRIPLE/release/oxcd

if [ "${OXCD_IMAGE_SKIP_BUILD:-0}" != 1 ] || [ ! -x "$BIN" ]; then
  echo "build-image.sh: cargo build --release (static, $TRIPLE) into $TARGET_DIR" >&2
  RUSTFLAGS="-C target-feature=+crt-static" \
  CARGO_PROFILE_RELEASE_DEBUG=0 \
  CARGO_PROFILE_RELEASE_STRIP=true \
    cargo build --release --locked --bin oxcd --target "$TRIPLE" --target-dir "$TARGET_DIR"
fi

# A static binary has no program interpreter; refuse anything else, since
# FROM scratch has no dynamic loader to run it.
if readelf -l "$BIN" 2>/dev/null | grep -q "Requesting program interpreter"; then
  echo "build-image.sh: $BIN is dynamically linked" >&2
  exit 1
fi
"$BIN" --version >/dev/null

CTX=$TARGET_DIR/image-context
rm -rf "$CTX"
mkdir -p "$CTX/rootfs/usr/local/bin" "$CTX/rootfs/etc" "$CTX/rootfs/tmp" "$CTX/data"
cp "$BIN" "$CTX/rootfs/usr/local/bin/oxcd"
cat >"$CTX/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
oxcd:x:10001:10001:oxcd:/var/lib/oxcd:/sbin/nologin
PASSWD
cat >"$CTX/rootfs/etc/group" <<'GROUP'
root:x:0:
oxcd:x:10001:
GROUP
# glibc reads this for the lookup order; files then dns, as everywhere.
echo "hosts: files dns" >"$CTX/rootfs/etc/nsswitch.conf"
chmod 1777 "$CTX/rootfs/tmp"
touch "$CTX/data/.keep"
cp deploy/Dockerfile "$CTX/Dockerfile"

# The legacy builder needs no buildx plugin (absent here); BuildKit works too.
if docker buildx version >/dev/null 2>&1; then
  docker build -t "$TAG" "$CTX"
else
  DOCKER_BUILDKIT=0 docker build -t "$TAG" "$CTX"
fi
docker image inspect "$TAG" --format 'build-image.sh: {{.RepoTags}} {{.Size}} bytes' >&2
