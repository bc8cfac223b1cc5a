#!/usr/bin/env bash
# Every check a lent GPU should get, in one run and in order of value, each bounded so that the whole fits a
# short lease (about 8 minutes): a sandbox's start with and without its CUDA context, a warm and a cold
# worker's match against the bare loop (where `arena.play.hosts.device_for` puts a small model's hosts), then a
# digits round of a few built-ins through one `arena worker` (bench/gpu_round.sh).
#
#   ARENA_DATA_DIR=/path/with/mnist.npz bench/gpu_checks.sh
#
# ARENA_BIN: as for bench/gpu_round.sh. ARENA_BUILTINS: the round's plugins [a quick attack, an iterative one,
# a transfer, the baseline, PGD training, and Defense-GAN, whose hosts the rule should put on the GPU].
# ROUND_TIMEOUT: seconds for the round [300].
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${ARENA_BIN:-$(pwd)/.venv/bin}"
command -v nvidia-smi >/dev/null || { echo "no GPU here (nvidia-smi not found): nothing to measure"; exit 1; }
nvidia-smi -L

echo "== a sandbox's start, with and without a CUDA context"
OMP_NUM_THREADS=1 timeout 120 "$bin/python" bench/sandbox_startup.py --repeat 5
echo "== a match, cold and warm, against the bare loop (digits, then MNIST)"
OMP_NUM_THREADS=1 timeout 150 "$bin/python" bench/match_overhead.py --repeat 3
OMP_NUM_THREADS=1 timeout 150 "$bin/python" bench/match_overhead.py --track mnist-linf --repeat 2
echo "== a digits round through one arena worker"
ARENA_BUILTINS="${ARENA_BUILTINS:-fgsm,pgd,transfer,undefended,pgd-adv-training,defense-gan}" \
  ROUND_TIMEOUT="${ROUND_TIMEOUT:-300}" bash bench/gpu_round.sh digits
