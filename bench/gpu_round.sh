#!/usr/bin/env bash
# An MNIST round of every built-in plugin through one `arena worker` on this machine's GPU(s): the time of
# each phase (training, twins, substitute, matches), why jobs failed (the first reasons) and the GPU memory peak.
#
#   ARENA_DATA_DIR=/path/with/mnist.npz bench/gpu_round.sh [track]      (default track: mnist-linf)
#
# Needs nvidia-smi, redis-server (a private one is started on port 6391) and the project's .venv (or
# ARENA_BIN: a folder holding `arena` and `python` commands of an installation elsewhere). The arena's home,
# database and broker database are made for the run and removed after it.
set -euo pipefail
cd "$(dirname "$0")/.."
track="${1:-mnist-linf}"
bin="${ARENA_BIN:-$(pwd)/.venv/bin}"

command -v nvidia-smi >/dev/null || { echo "no GPU here (nvidia-smi not found): nothing to measure"; exit 1; }
[ -f "${ARENA_DATA_DIR:-}/mnist.npz" ] || { echo "set ARENA_DATA_DIR to a folder holding mnist.npz"; exit 1; }

work="$(mktemp -d)"
export ARENA_HOME="$work/home" ARENA_DATABASE_URL="sqlite:///$work/arena.db" ARENA_BROKER_URL="redis://127.0.0.1:6391/0"
redis-server --port 6391 --save "" --appendonly no --daemonize yes --dir "$work" >/dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$work/memory.csv" &
sampler=$!
"$bin/arena" worker > "$work/worker.log" 2>&1 &
worker=$!
cleanup() {
  [ -z "${KEEP_LOGS:-}" ] || cp "$work/worker.log" "$KEEP_LOGS/" 2>/dev/null || true  # the worker's log, kept
  kill "$worker" "$sampler" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$worker" 2>/dev/null || break; sleep 0.5; done  # a job in progress ends it...
  pkill -KILL -P "$worker" 2>/dev/null || true; kill -KILL "$worker" 2>/dev/null || true  # ...or not: no waiting on it
  wait "$worker" 2>/dev/null || true
  redis-cli -p 6391 shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/arena" init >/dev/null
[ -z "${ARENA_TRACKS:-}" ] || cp "$ARENA_TRACKS" "$ARENA_HOME/tracks.toml"  # tracks of your own, by name
baseline="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | sort -n | tail -n 1)"
SECONDS=0
# ROUND_TIMEOUT (seconds) stops a round that runs too long and reports what was done by then
timeout "${ROUND_TIMEOUT:-0}" "$bin/arena" round run --track "$track" --wait --quiet | tail -n 3 \
  || echo "round stopped after ${ROUND_TIMEOUT:-?} s: the figures below cover the jobs done by then"
echo "round: ${SECONDS} s wall"
grep -m 2 -E "found|GPU" "$work/worker.log" || true

"$bin/python" - <<'EOF'
import os
from collections import defaultdict
from arena.store import Database, Job
from sqlalchemy import select

db = Database(os.environ["ARENA_DATABASE_URL"])
phases = defaultdict(lambda: [0, 0.0, None, None, defaultdict(int)])
errors = defaultdict(int)  # why jobs failed, the first line of each reason
with db.session() as session:
    for job in session.scalars(select(Job)):
        if job.state == "failed":
            errors[f"{job.kind}: {(job.error or '?').splitlines()[0][:300]}"] += 1
        phase = phases[job.kind]
        phase[0] += 1
        phase[4][job.state] += 1
        if job.started_at and job.finished_at:
            phase[1] += (job.finished_at - job.started_at).total_seconds()
            phase[2] = min(filter(None, (phase[2], job.started_at)))
            phase[3] = max(filter(None, (phase[3], job.finished_at)))
print("| phase | jobs | states | job seconds (sum) | wall seconds (first start to last end) |")
print("|---|---|---|---|---|")
for kind in ("train-substitute", "train-defense", "train-twin", "match"):
    if kind in phases:
        n, busy, first, last, states = phases[kind]
        wall = (last - first).total_seconds() if first and last else 0.0
        print(f"| {kind} | {n} | {dict(states)} | {busy:.1f} | {wall:.1f} |")
for reason, count in sorted(errors.items(), key=lambda item: -item[1])[:10]:
    print(f"failed x{count}: {reason}")
EOF
peak="$(sort -n "$work/memory.csv" | tail -n 1)"
echo "GPU memory: peak ${peak} MiB, ${baseline} MiB before the round"
