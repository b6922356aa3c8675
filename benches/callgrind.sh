#!/usr/bin/env bash
# Proxy instructions per request under callgrind, the method of
# benches/README.md ("second optimisation pass"):
#   E2E_PROXY_PREFIX="valgrind --tool=callgrind --callgrind-out-file=..." \
#     cargo bench --bench e2e -- --quick --secs $SECS --only "c=16" --no-splice --no-nginx
# counters zeroed after warm-up, requests counted from the audit file.
#
# Precisely:
#  - warm-up = the bench's check request + round 1's proxy leg (16 CONNECT+TLS
#    connections, then $SECS s of h1 keep-alive c=16);
#  - when round 1's proxy leg has ended (audit file has >1 line and no new line
#    for 2 s: the proxy is idle, round 2's direct leg is running), run
#    `callgrind_control -z <proxy pid>` and take L0 = lines in the audit file;
#  - rounds 2 and 3 then run (each opens 16 new CONNECT+TLS connections, so
#    handshakes are amortised in, as in the README); the bench then SIGTERMs
#    the proxy and callgrind writes its out file at exit (graceful shutdown
#    is included in the count);
#  - Ir = the `totals:` line of the callgrind out file (all threads of the
#    proxy, user space only); requests = L1 - L0, L1 = audit lines at the end
#    (the audit file is hard-linked out before the bench deletes its dir);
#  - instructions/request = Ir / requests.
#
# Usage: benches/callgrind.sh [TREE] [SECS]   (TREE: a checkout, default .; SECS per leg and round, default 10)
# Output files are kept in a fresh /tmp/bench-cg.XXXXXX directory (printed).
set -euo pipefail
WT=${1:-.}
SECS=${2:-10}
cd "$WT"
OUT=$(mktemp -d /tmp/bench-cg.XXXXXX)
TMP=${TMPDIR:-/tmp}

cargo bench --bench e2e --no-run >"$OUT/build.log" 2>&1

E2E_PROXY_PREFIX="valgrind --tool=callgrind --callgrind-out-file=$OUT/cg.%p.out" \
  cargo bench --bench e2e -- --quick --secs "$SECS" --only "c=16" --no-splice --no-nginx \
  >"$OUT/bench.out" 2>"$OUT/bench.err" &
CARGO=$!

lines() { if [ -f "$OUT/audit.jsonl" ]; then wc -l <"$OUT/audit.jsonl"; else echo 0; fi; }

# The proxy (valgrind) pid, printed by the bench; its parent is the bench,
# whose temp dir holds the audit file.
PID=
for _ in $(seq 1200); do
  PID=$(sed -n 's/^proxy pid \([0-9]*\)$/\1/p' "$OUT/bench.err" | head -1)
  [ -n "$PID" ] && break
  kill -0 "$CARGO" 2>/dev/null || { cat "$OUT/bench.err" >&2; exit 1; }
  sleep 0.5
done
[ -n "$PID" ] || { echo "no proxy pid" >&2; exit 1; }
BENCH=$(ps -o ppid= -p "$PID" | tr -d ' ')
AUDIT="$TMP/ip-bench-$BENCH/audit.jsonl"
for _ in $(seq 600); do [ -f "$AUDIT" ] && break; sleep 0.1; done
ln "$AUDIT" "$OUT/audit.jsonl"

# Wait for round 1's proxy leg to start, then to end (2 s without a new line).
while [ "$(lines)" -le 1 ]; do sleep 0.2; done
last=$(lines); still=0
while [ $still -lt 10 ]; do
  sleep 0.2; n=$(lines)
  if [ "$n" = "$last" ]; then still=$((still + 1)); else still=0; last=$n; fi
done
callgrind_control -z "$PID" >"$OUT/zero.log" 2>&1
L0=$(lines)

wait "$CARGO"
L1=$(lines)
CG=$(ls "$OUT"/cg.*.out | head -1)
IR=$(awk '/^totals:/ {print $2}' "$CG")
REQ=$((L1 - L0))
echo "out dir:        $OUT"
echo "callgrind file: $CG"
echo "audit lines:    $L0 at zero, $L1 at end"
echo "total Ir:       $IR"
echo "requests:       $REQ"
awk -v ir="$IR" -v n="$REQ" 'BEGIN { printf "Ir/request:     %.0f\n", ir / n }'
