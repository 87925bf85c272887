"""Why does MAICQ's critic run away? Its target's batch weights, measured at each checkpoint.

MAICQ's critic target is r + gamma w Q_tot'(s', a') with w = n softmax_batch((Q_tot' -
V_tot') / beta_Q) over a batch of n rows. A row whose weight stays above 1/gamma has an
effective discount gamma w above 1; if such rows are the ones whose Q_tot' is high, each
copy of the targets raises them further (docs/maicq.md). For every saved checkpoint of a
MAICQ run this draws batches of the run's size from its dataset and reports the spread of
the exponent Q_tot' - V_tot' (against that of Q_tot' itself: V_tot' is meant to take the
state's value out), the share of bootstrapping rows with gamma w > 1, the mean
gamma w of each batch's top tenth by Q_tot', and the correlation of w with Q_tot'.

    python experiments/maicq_target_weights.py RUN_DIR [--batches 200] [--policy-from STEP] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.algos.maicq import batch_softmax_weights
from offmarl.data.source import load_dataset
from offmarl.runners.offline import sample_batch, to_device
from offmarl.runners.saved import SavedRun
from offmarl.utils.files import atomic_write_json


def batch_statistics(next_q_tot: jax.Array, next_v_tot: jax.Array, bootstraps: jax.Array, beta: float,
                     gamma: float) -> dict[str, jax.Array]:
    """The target weights' statistics over one batch; `bootstraps` marks the rows that bootstrap."""
    exponent = next_q_tot - next_v_tot
    discount = gamma * batch_softmax_weights(exponent, bootstraps, beta)
    count = jnp.maximum(jnp.sum(bootstraps), 1.0)

    def mean(x: jax.Array, where: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(where, x, 0.0)) / jnp.maximum(jnp.sum(where), 1.0)

    used = bootstraps > 0
    exponent_mean = mean(exponent, used)
    top_tenth = used & (next_q_tot >= jnp.nanquantile(jnp.where(used, next_q_tot, jnp.nan), 0.9))
    q_centred = jnp.where(used, next_q_tot - mean(next_q_tot, used), 0.0)
    d_centred = jnp.where(used, discount - mean(discount, used), 0.0)
    correlation = jnp.sum(q_centred * d_centred) / jnp.sqrt(jnp.sum(q_centred**2) * jnp.sum(d_centred**2) + 1e-12)
    return {"q_tot_next": mean(next_q_tot, used),
            "q_tot_next_std": jnp.sqrt(mean(q_centred**2, used)),
            "exponent_std": jnp.sqrt(mean((exponent - exponent_mean) ** 2, used)),
            "above_one": jnp.sum(jnp.where(used, discount > 1.0, False)) / count,
            "discount_max": jnp.max(jnp.where(used, discount, 0.0)),
            "discount_top_tenth_q": mean(discount, top_tenth),
            "corr_discount_q": correlation}


def make_statistics(saved: SavedRun, data, batches: int):
    """(a saved MAICQ state, a key) -> the mean over `batches` batches of the run's size of each
    batch's statistics; compiled once for every checkpoint."""
    algo, config = saved.algo, saved.algo.config
    batch_size = saved.experiment.run_config.batch_size

    def one(state, rng: jax.Array) -> dict[str, jax.Array]:
        batch_rng, target_rng = jax.random.split(rng)
        batch = sample_batch(data, batch_rng, batch_size)
        next_q_tot, next_v_tot = algo.critic_target_terms(state.params, state, batch, target_rng)
        return batch_statistics(next_q_tot, jnp.broadcast_to(next_v_tot, next_q_tot.shape),
                                batch.valid * (1.0 - batch.done), config.target_q_beta, config.gamma)

    @jax.jit
    def statistics(state, key: jax.Array) -> dict[str, jax.Array]:
        rows = jax.vmap(one, in_axes=(None, 0))(state, jax.random.split(key, batches))
        return jax.tree.map(jnp.mean, rows)

    return statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a MAICQ run directory with checkpoints")
    parser.add_argument("--batches", type=int, default=200, help="batches drawn per checkpoint")
    parser.add_argument("--policy-from", type=int, metavar="STEP",
                        help="read V_tot' under the policy saved at STEP at every checkpoint (does the "
                             "policy's drift move the spread, or the critic?)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    saved = SavedRun.open(args.run)
    if not hasattr(saved.algo, "critic_target_terms"):
        raise SystemExit(f"{args.run}: algorithm {saved.experiment.algo!r} is not MAICQ")
    if args.policy_from is not None and args.policy_from not in saved.steps:
        print(f"error: --policy-from {args.policy_from} is not a saved checkpoint: choose from "
              f"{', '.join(map(str, saved.steps))}", file=sys.stderr)
        raise SystemExit(2)
    data = to_device(load_dataset(saved.experiment.env, saved.experiment.dataset)[0])
    statistics = make_statistics(saved, data, args.batches)
    policy = None if args.policy_from is None else saved.saved_state(args.policy_from)[0].params.policy
    rows = []
    for step in saved.steps:
        state = saved.saved_state(step)[0]
        if policy is not None:  # V_tot' under that policy, the critic of `step`
            state = state._replace(params=state.params._replace(policy=policy))
        means = statistics(state, jax.random.PRNGKey(step))
        rows.append({"step": step, "policy_step": step if args.policy_from is None else args.policy_from,
                     **{k: float(v) for k, v in means.items()}})
    config = saved.algo.config
    policy = "" if args.policy_from is None else f", policy of iteration {args.policy_from:,}"
    print(f"{args.run} (beta_Q {config.target_q_beta}, gamma {config.gamma}, target_weights "
          f"{config.target_weights}{policy})")
    print("| iteration | Q_tot' | std of Q_tot' | std of Q_tot' - V_tot' | rows with gamma w > 1 | largest gamma w "
          "| gamma w, top tenth by Q_tot' | corr(gamma w, Q_tot') |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['step']:,} | {r['q_tot_next']:.1f} | {r['q_tot_next_std']:.2f} | {r['exponent_std']:.2f} "
              f"| {r['above_one']:.3f} "
              f"| {r['discount_max']:.3f} | {r['discount_top_tenth_q']:.4f} | {r['corr_discount_q']:+.3f} |")
    if args.out:
        atomic_write_json(args.out, {"run": args.run, "policy_from": args.policy_from,
                                     "target_q_beta": config.target_q_beta,
                                     "gamma": config.gamma, "target_weights": config.target_weights, "rows": rows})


if __name__ == "__main__":
    main()
