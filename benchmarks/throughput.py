"""Training throughput as a ratio to pure environment stepping, measured in one run.

Both sides use the same environment, the same number of parallel environments
and the same unroll length: random available actions through a jitted
`lax.scan`, against full MA-Trace updates of the fused runner (unroll + learn).
Compilation is excluded from both. Usage:

    python benchmarks/throughput.py --env smax:3m --num-envs 128
"""

from __future__ import annotations

import argparse
import json
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

    rollout = random_rollout_fn(env, cfg.num_envs, cfg.unroll_length)
    carry = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), cfg.num_envs))
    key = jax.random.PRNGKey(1)

    def random_call():
        nonlocal carry, key
        for _ in range(args.updates):
            key, sub = jax.random.split(key)
            carry, total = rollout(carry, sub)
        return total

    state = trainer.init(jax.random.PRNGKey(0))

    def train_call():
        nonlocal state
        state, episodes, _ = trainer.train(state, args.updates)
        return episodes

    # Interleave the two so that machine load drifts affect both alike.
    random_times, train_times = [], []
    for _ in range(args.repeats):
        random_times.append(time_it(random_call, 1))
        train_times.append(time_it(train_call, 1))
    random_sps = steps_per_call / min(random_times)
    train_sps = steps_per_call / min(train_times)
    result = {
        "env": args.env,
        "num_envs": cfg.num_envs,
        "unroll_length": cfg.unroll_length,
        "num_minibatches": cfg.num_minibatches,
        "num_epochs": cfg.num_epochs,
        "random_env_steps_per_second": round(random_sps),
        "training_env_steps_per_second": round(train_sps),
        "ratio": round(train_sps / random_sps, 3),
        **machine(),
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out) / f"throughput_{args.env.replace(':', '_')}_{cfg.num_envs}.json"
    atomic_write_json(out, result)


if __name__ == "__main__":
    main()
