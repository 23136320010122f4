#!/bin/sh
# System calls per unary call of one loadgen client (BENCHMARKS.md,
# section 6): the client runs pinned (`--pin on`) for a 6 s window;
# `perf stat` counts its system calls by kind (tracepoints, no hardware
# counters needed) for 3 s inside the window, and the counts are divided
# by the calls the window's rate gives for those 3 s.
#
#   benches/syscalls.sh CLIENT CONCURRENCY [SCENARIO] [LOADGEN]
#   benches/syscalls.sh ours-pick_first 64 connections
set -eu
client=$1
concurrency=$2
scenario=${3:-throughput}
loadgen=${4:-target/release/examples/loadgen}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$loadgen" --scenario "$scenario" --pin on --concurrency "$concurrency" \
    --duration 6s --warmup 1s --rounds 1 --clients "$client" >"$out/stdout" 2>/dev/null &
pid=$!
sleep 2.5
events="raw_syscalls:sys_enter"
for call in sendto recvfrom write writev read epoll_wait futex sched_yield; do
    events="$events,syscalls:sys_enter_$call"
done
perf stat -x, -e "$events" -p "$pid" -- sleep 3 2>"$out/perf"
wait "$pid"
python3 - "$out" "$client" "$concurrency" <<'PY'
import json, sys
out, client, concurrency = sys.argv[1:]
rps = None
for line in open(f"{out}/stdout"):
    if line.startswith("{"):
        rps = json.loads(line)["rps_median"]
if not rps:
    sys.exit("no calls")
calls = rps * 3.0
counts = {}
for line in open(f"{out}/perf"):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0].isdigit():
        counts[fields[2].split(":")[-1].replace("sys_enter_", "")] = int(fields[0])
total = counts.pop("sys_enter", 0)
parts = " ".join(f"{k} {v / calls:.3f}" for k, v in counts.items() if v)
print(f"{client} c={concurrency}: {rps:.0f} req/s, {total / calls:.2f} syscalls per call ({parts})")
PY
