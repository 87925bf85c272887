"""Offline training speed: updates per second of each offline learner at one batch size,
and each one's speed as a ratio to behaviour cloning's, measured in one run.

The data are random transitions with the shapes of the chosen environment (a vault can be
given instead); speed does not depend on the values. Networks use each algorithm's default
(reference) sizes: OMIGA's 256-256 local networks and 64-unit mixer. Compilation is
excluded. Usage:

    python benchmarks/offline_speed.py --env smax:5m_vs_6m --batch-size 128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from offmarl.data.dataset import OfflineDataset
from offmarl.data.source import load_dataset
from offmarl.envs import make_env
from offmarl.runners.experiment import resolve_offline_experiment
from offmarl.runners.offline import make_train_chunk, to_device
from offmarl.utils.files import atomic_write_json
from timing import machine, time_it


def random_dataset(spec, rows: int, seed: int = 0) -> OfflineDataset:
    """Random transitions shaped like `spec`'s, in episodes of 20 steps."""
    rng = np.random.default_rng(seed)
    n, a = spec.num_agents, spec.num_actions
    ends = (np.arange(rows) % 20 == 19).astype(np.float32)
    return OfflineDataset(
        observations=rng.normal(size=(rows, n, spec.obs_dim)).astype(np.float32),
        actions=rng.integers(0, a, size=(rows, n)).astype(np.int32),
        rewards=np.repeat(rng.random((rows, 1), dtype=np.float32), n, axis=1),
        terminals=np.repeat(ends[:, None], n, axis=1),
        truncations=np.zeros((rows, n), np.float32),
        states=rng.normal(size=(rows, spec.state_dim)).astype(np.float32),
        legals=np.ones((rows, n, a), np.float32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="smax:5m_vs_6m")
    parser.add_argument("--dataset", help="VAULT[:uid] to train on instead of random data")
    parser.add_argument("--algos", default="omiga,bc,inspo,iql_cql,maicq")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--updates", type=int, default=500, help="updates per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    spec = make_env(args.env).spec
    data = load_dataset(args.env, args.dataset)[0] if args.dataset else random_dataset(spec, 50_000)
    device_data = to_device(data)
    speeds: dict[str, float] = {}
    for name in args.algos.split(","):
        experiment = resolve_offline_experiment(name, args.env, "benchmark", 0, {"batch_size": args.batch_size})
        algo = experiment.build()[1]
        train = make_train_chunk(algo, args.batch_size)
        carry = [algo.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)]

        def call() -> jax.Array:
            state, rng, metrics = train(carry[0], carry[1], args.updates, device_data)
            carry[:] = [state, rng]
            return rng

        speeds[name] = args.updates / min(time_it(call, 1) for _ in range(args.repeats))
        print(f"{name}: {speeds[name]:,.0f} updates/s", flush=True)
    result = {
        "env": args.env, "batch_size": args.batch_size, "dataset": args.dataset or "random",
        "updates_per_second": {k: round(v, 1) for k, v in speeds.items()},
        **({"ratio_to_bc": {k: round(v / speeds["bc"], 3) for k, v in speeds.items()}} if "bc" in speeds else {}),
        **machine(),
    }
    print(json.dumps(result, indent=2))
    atomic_write_json(Path(args.out) / f"offline_speed_{args.env.replace(':', '_')}_{args.batch_size}.json", result)


if __name__ == "__main__":
    main()
