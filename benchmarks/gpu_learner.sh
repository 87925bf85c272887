#!/usr/bin/env bash
# The learner on an accelerator against the same machine's CPU, in one go (docs/results_online.md,
# "The batching learner"): the learner alone for 1..32 unrolls per update on the default device
# and with JAX on the CPU.
# Usage: bash benchmarks/gpu_learner.sh OUT_DIR
set -uo pipefail
out=${1:?usage: gpu_learner.sh OUT_DIR}
mkdir -p "$out"
python3 -c "import jax, flax, optax, chex; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
nproc; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 benchmarks/scaling.py --learner-only --unrolls-per-update 1,2,4,8,16,32 --updates 20 --out "$out/accelerator"
JAX_PLATFORMS=cpu python3 benchmarks/scaling.py --learner-only --unrolls-per-update 1,2,4,8 --updates 10 --out "$out/cpu"
