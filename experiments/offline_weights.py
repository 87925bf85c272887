"""Do OMIGA's advantage weights tell better data from worse? (issue 13, item 4)

For a finished OMIGA run, the weight exp(z_i) that its final critics give every agent's
dataset action, summarised per dataset of the same environment (e.g. a vault's good,
medium and poor): mean, spread, effective-sample-size fraction, and the mean exponent z.
If the weights carried value information, the better dataset's actions would get the
larger mean weight; weights all near 1 mean weighted behaviour cloning is plain cloning.

    python experiments/offline_weights.py RUN_DIR VAULT:good VAULT:medium VAULT:poor [--out FILE]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.algos.offline_common import weight_diagnostics
from offmarl.data.dataset import OfflineDataset
from offmarl.data.source import load_dataset
from offmarl.runners.offline import gather_batch, to_device
from offmarl.runners.saved import SavedRun
from offmarl.utils.files import atomic_write_json

ROWS_PER_CALL = 8192


def dataset_weights(saved: SavedRun, state, data: OfflineDataset) -> np.ndarray:
    """exp(z) [rows, agents] of every transition of `data` under the run's saved critics."""
    device = to_device(data)
    weights_of = jax.jit(lambda index: saved.algo.advantage_weights(state, gather_batch(device, index)))
    rows = data.num_transitions
    return np.concatenate([np.asarray(weights_of(jnp.arange(start, min(start + ROWS_PER_CALL, rows))))
                           for start in range(0, rows, ROWS_PER_CALL)])


def summarise(weights: np.ndarray, dataset: str, returns: np.ndarray) -> dict:
    stats = {k: float(v) for k, v in weight_diagnostics("weight", jnp.asarray(weights)).items()}
    log_w = np.log(weights)
    return {"dataset": dataset, "transitions": int(weights.shape[0]), "dataset_return_mean": float(returns.mean()),
            **stats, "z_mean": float(log_w.mean()), "z_std": float(log_w.std()),
            "z_p05": float(np.percentile(log_w, 5)), "z_p95": float(np.percentile(log_w, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished OMIGA run directory")
    parser.add_argument("datasets", nargs="+", help="VAULT:uid datasets of the run's environment")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    saved = SavedRun.open(args.run)
    if not hasattr(saved.algo, "advantage_weights"):
        raise SystemExit(f"{args.run}: algorithm {saved.experiment.algo!r} has no advantage weights")
    step = saved.steps[-1]
    state = saved.saved_state(step)[0]
    rows = []
    for dataset in args.datasets:
        data, _ = load_dataset(saved.experiment.env, dataset)
        rows.append(summarise(dataset_weights(saved, state, data), dataset, data.episode_returns()))
    alpha = saved.experiment.algo_config.alpha
    print(f"{args.run} (iteration {step:,}, alpha {alpha})")
    print("| dataset | return | weight mean | weight std | ESS fraction | z mean | z 5%-95% |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['dataset_return_mean']:.3f} | {r['weight_mean']:.3f} | {r['weight_std']:.3f} "
              f"| {r['weight_ess_fraction']:.3f} | {r['z_mean']:+.4f} | {r['z_p05']:+.4f} to {r['z_p95']:+.4f} |")
    if args.out:
        atomic_write_json(args.out, {"run": args.run, "iteration": step, "alpha": alpha, "rows": rows})


if __name__ == "__main__":
    main()
