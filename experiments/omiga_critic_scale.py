"""How OMIGA's team value is split between its mixer and its local critics, checkpoint by
checkpoint (the continuous-MPE runaway, docs/results_offline.md).

Q_tot = sum_i w_i(s) Q_i(o_i, a_i) + b(s), and the local value V_i is fitted to w_i Q_i
at the temperature alpha, so each agent's effective temperature is alpha / w_i(s): the
larger the mixer's weights, the closer V_i moves from the mean of Q_i over the dataset's
actions towards their maximum. For every saved checkpoint of a run this prints, over
every transition of a dataset, the mean mixer weight w, the mean bias b, the means of
Q_i and V_i, the mean of Q_tot, alpha / mean w, the share of exponents z at the +10 clip,
and the effective sample size fraction of the weights exp(z).

    python experiments/omiga_critic_scale.py RUN_DIR VAULT:uid [--out FILE]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.algos.offline_common import EXP_CLIP, weight_diagnostics
from offmarl.data.source import load_dataset
from offmarl.networks.mlp import with_agent_id
from offmarl.runners.offline import gather_batch, to_device
from offmarl.runners.saved import SavedRun
from offmarl.utils.files import atomic_write_json

ROWS_PER_CALL = 8192


def critic_parts(algo, state, batch) -> dict[str, jax.Array]:
    """w [B, N], b [B], Q_i and V_i [B, N] at the batch's dataset actions, and the policy
    update's weights exp(z_i) [B, N] (formed by the algorithm, from its target critics)."""
    critics, inputs = state.critics, with_agent_id(batch.obs)
    w, b = algo.mixer.apply(critics.mixer, batch.state)
    return {"w": w, "b": b, "q": algo.q_net(critics.q, inputs, batch.actions), "v": algo.v_net.apply(critics.v, inputs),
            "weight": algo.advantage_weights(state, batch)}


def dataset_parts(saved: SavedRun, state, device, rows: int) -> dict[str, np.ndarray]:
    """critic_parts of every transition of the dataset on `device`."""
    parts_of = jax.jit(lambda index: critic_parts(saved.algo, state, gather_batch(device, index)))
    chunks = [parts_of(jnp.arange(start, min(start + ROWS_PER_CALL, rows))) for start in range(0, rows, ROWS_PER_CALL)]
    return {key: np.concatenate([np.asarray(chunk[key]) for chunk in chunks]) for key in chunks[0]}


def checkpoint_row(saved: SavedRun, step: int, device, rows: int) -> dict[str, float]:
    state = saved.saved_state(step)[0]
    alpha = saved.experiment.algo_config.alpha
    online = dataset_parts(saved, state, device, rows)
    q_tot = np.sum(online["w"] * online["q"], axis=-1) + online["b"]
    ess = float(weight_diagnostics("weight", jnp.asarray(online["weight"]))["weight_ess_fraction"])
    return {"step": step, "w_mean": float(online["w"].mean()), "w_p95": float(np.percentile(online["w"], 95)),
            "b_mean": float(online["b"].mean()), "q_mean": float(online["q"].mean()), "v_mean": float(online["v"].mean()),
            "q_tot_mean": float(q_tot.mean()), "effective_temperature": alpha / float(online["w"].mean()),
            "z_at_clip": float(np.mean(np.log(online["weight"]) >= EXP_CLIP - 1e-6)), "ess_fraction": ess}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="an OMIGA run directory with saved checkpoints")
    parser.add_argument("dataset", help="VAULT:uid, the dataset the run trained on")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    saved = SavedRun.open(args.run)
    if saved.experiment.algo != "omiga":
        raise SystemExit(f"{args.run}: algorithm {saved.experiment.algo!r} is not omiga")
    data, _ = load_dataset(saved.experiment.env, args.dataset)
    device = to_device(data)
    rows = [checkpoint_row(saved, step, device, data.num_transitions) for step in saved.steps]
    print(f"{args.run} on {args.dataset} (alpha {saved.experiment.algo_config.alpha})")
    print("| iteration | mean w | w 95% | mean b | mean Q_i | mean V_i | mean Q_tot | alpha / mean w "
          "| z at +10 | ESS fraction |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['step']:,} | {r['w_mean']:.2f} | {r['w_p95']:.2f} | {r['b_mean']:.1f} | {r['q_mean']:.2f} "
              f"| {r['v_mean']:.2f} | {r['q_tot_mean']:.1f} | {r['effective_temperature']:.3f} "
              f"| {r['z_at_clip']:.3f} | {r['ess_fraction']:.3f} |")
    if args.out:
        atomic_write_json(args.out, {"run": args.run, "dataset": args.dataset, "rows": rows})


if __name__ == "__main__":
    main()
