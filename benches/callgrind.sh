#!/bin/sh
# Instructions per unary call of one loadgen client, counted by callgrind
# (BENCHMARKS.md, section 2). The load generator zeroes callgrind's counts
# when its measurement window opens and dumps them when it closes
# (callgrind's client requests, examples/loadgen/process.rs), so the
# instructions of the window alone are divided by the calls completed in
# it: start-up, connecting and JIT warm-up do not count. The backends run
# in child processes, which valgrind does not trace. The client runs
# pinned with one tokio worker (`--pin on`).
#
#   benches/callgrind.sh CLIENT CONCURRENCY [SCENARIO] [LOADGEN]
#   benches/callgrind.sh ours-pick_first 64 connections
#
# SCENARIO: throughput (3 backends, the default) or connections (1).
# LOADGEN: the binary, default target/release/examples/loadgen.
# DURATION (default 5s) and WARMUP (default 1s) come from the environment.
set -eu
client=$1
concurrency=$2
scenario=${3:-throughput}
loadgen=${4:-target/release/examples/loadgen}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
    "$loadgen" --scenario "$scenario" --pin on --concurrency "$concurrency" \
    --duration "${DURATION:-5s}" --warmup "${WARMUP:-1s}" --rounds 1 --clients "$client" \
    >"$out/stdout" 2>"$out/stderr"
python3 - "$out" "$client" "$concurrency" <<'PY'
import json, re, sys
out, client, concurrency = sys.argv[1:]
calls = None
for line in open(f"{out}/stdout"):
    if line.startswith("{"):
        calls = sum(json.loads(line)["calls_per_backend"])
ir = None
for line in open(f"{out}/cg.1"):
    m = re.match(r"(?:summary|totals): (\d+)", line)
    if m:
        ir = int(m.group(1))
if not calls or ir is None:
    sys.exit("no calls, or no callgrind dump of the window (a loadgen without client requests?)")
print(f"{client} c={concurrency}: {ir / calls:.0f} instructions per call ({calls} calls)")
PY
