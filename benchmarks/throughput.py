"""Training throughput as a ratio to pure environment stepping, measured in one run.

Both sides use the same environment, the same number of parallel environments
and the same unroll length: random available actions through a jitted
`lax.scan`, against full MA-Trace updates of the fused runner (unroll + learn).
Compilation is excluded from both. With `actor_threads` K > 1 (and `pipeline=true`) the
training loop steps its environments as K groups on K threads; the random stepping is then
also measured that way (random_env_steps_per_second_threaded), since the plain figure is
one program on one thread. Usage:

    python benchmarks/throughput.py --env smax:3m --num-envs 128
    python benchmarks/throughput.py --env smax:3m --num-envs 128 pipeline=true actor_threads=4
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp

from offmarl.runners.experiment import resolve_experiment
from offmarl.runners.fused import FusedTrainer
from offmarl.utils.files import atomic_write_json
from timing import machine, time_it


def random_rollout_fn(env, num_envs: int, unroll_length: int):
    """A jitted function that steps `num_envs` environments `unroll_length` times."""

    def step(carry, key):
        state, ts = carry
        act_key, env_key = jax.random.split(key)
        actions = jax.random.categorical(act_key, jnp.where(ts.avail, 0.0, -1e9))
        state, ts = jax.vmap(env.step)(jax.random.split(env_key, num_envs), state, actions)
        return (state, ts), ts.reward

    def rollout(carry, key):
        carry, rewards = jax.lax.scan(step, carry, jax.random.split(key, unroll_length))
        return carry, rewards.sum()

    return jax.jit(rollout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="smax:3m")
    parser.add_argument("--num-envs", type=int, default=128)
    parser.add_argument("--updates", type=int, default=10, help="updates per timed training call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    from offmarl.config import parse_overrides

    experiment = resolve_experiment("matrace", args.env, 0, {"num_envs": args.num_envs},
                                    parse_overrides(args.overrides))
    cfg = experiment.run_config
    env, algo = experiment.build()
    trainer = FusedTrainer(cfg, algo, env)
    steps_per_call = cfg.steps_per_update * args.updates

    def random_stepper(num_envs: int, seed: int):
        """A call that steps `num_envs` random-action environments `updates` unrolls."""
        rollout = random_rollout_fn(env, num_envs, cfg.unroll_length)
        carry = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(seed), num_envs))
        key = jax.random.PRNGKey(seed + 1)

        def call():
            nonlocal carry, key
            for _ in range(args.updates):
                key, sub = jax.random.split(key)
                carry, total = rollout(carry, sub)
            return jax.block_until_ready(total)
        return call

    random_call = random_stepper(cfg.num_envs, 0)
    groups = trainer.groups
    if groups > 1:
        pool = ThreadPoolExecutor(groups)
        group_calls = [random_stepper(cfg.num_envs // groups, 2 * g) for g in range(groups)]

        def threaded_random_call():
            return list(pool.map(lambda call: call(), group_calls))

    state = trainer.init(jax.random.PRNGKey(0))

    def train_call():
        nonlocal state
        state, episodes, _ = trainer.train(state, args.updates)
        return episodes

    # Interleave the two so that machine load drifts affect both alike.
    random_times, train_times, threaded_times = [], [], []
    for _ in range(args.repeats):
        random_times.append(time_it(random_call, 1))
        train_times.append(time_it(train_call, 1))
        if groups > 1:
            threaded_times.append(time_it(threaded_random_call, 1))
    random_sps = steps_per_call / min(random_times)
    train_sps = steps_per_call / min(train_times)
    threaded = {}
    if groups > 1:
        threaded_sps = steps_per_call / min(threaded_times)
        threaded = {"random_env_steps_per_second_threaded": round(threaded_sps),
                    "ratio_to_threaded_random": round(train_sps / threaded_sps, 3)}
    result = {
        "env": args.env,
        "num_envs": cfg.num_envs,
        "unroll_length": cfg.unroll_length,
        "num_minibatches": cfg.num_minibatches,
        "num_epochs": cfg.num_epochs,
        "pipeline": trainer.pipelined,
        "actor_threads": groups,
        "random_env_steps_per_second": round(random_sps),
        "training_env_steps_per_second": round(train_sps),
        "ratio": round(train_sps / random_sps, 3),
        **threaded,
        **machine(),
    }
    print(json.dumps(result, indent=2))
    schedule = (f"_threads{groups}" if groups > 1 else "") + ("_pipeline" if trainer.pipelined else "")
    out = Path(args.out) / f"throughput_{args.env.replace(':', '_')}_{cfg.num_envs}{schedule}.json"
    atomic_write_json(out, result)


if __name__ == "__main__":
    main()
