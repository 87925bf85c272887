"""How much of a box-action dataset sits on the box's faces, and what that does to a fitted
policy's greedy action (docs/omiga.md, "Actions on the box's faces").

MA-Trace acts with an unsquashed Gaussian whose samples the environment clips, so the
datasets `make-datasets` writes hold many actions exactly on a face. Per agent and action
dimension this prints the fraction on the faces, the data's mean and median, and the greedy
action of a single Gaussian fitted by maximum likelihood (no observation; the simplest
policy) under each offline family:

* tanh, with the actions pulled `edge` inside the box before atanh (offmarl pulls 1e-6);
  the fit in u = atanh(a) is the sample mean and spread of u, and the greedy action tanh(mean);
* censored (`box_policy=censored`): faces scored by the Gaussian's mass beyond them; the
  fit is the censored-normal (Tobit) maximum likelihood, and the greedy action clip(mean).

    python experiments/box_faces.py VAULT:uid [VAULT:uid ...] [--edges 1e-6,1e-4,1e-2] [--out FILE]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import optimize, stats

from offmarl.data.vault import load_vault, parse_dataset_arg
from offmarl.errors import ConfigError
from offmarl.utils.files import atomic_write_json


def tanh_greedy(actions: np.ndarray, edge: float) -> float:
    """tanh of the mean of atanh(a), a pulled `edge` inside [-1, 1]: the greedy action of the
    maximum-likelihood tanh-Gaussian."""
    return float(np.tanh(np.mean(np.arctanh(np.clip(actions, -1 + edge, 1 - edge)))))


def censored_greedy(actions: np.ndarray) -> float:
    """clip(mean) of the maximum-likelihood Gaussian censored at -1 and 1."""
    low, high = actions <= -1.0, actions >= 1.0
    inside = actions[~(low | high)]

    def negative_log_likelihood(theta: np.ndarray) -> float:
        mean, log_std = theta
        std = np.exp(log_std)
        return -(stats.norm.logpdf(inside, mean, std).sum() + low.sum() * stats.norm.logcdf(-1.0, mean, std)
                 + high.sum() * stats.norm.logsf(1.0, mean, std))

    start = np.array([np.mean(actions), np.log(np.std(actions) + 1e-3)])
    mean = optimize.minimize(negative_log_likelihood, start, method="Nelder-Mead").x[0]
    return float(np.clip(mean, -1.0, 1.0))


def describe(dataset: str, edges: list[float]) -> list[dict]:
    path, uid = parse_dataset_arg(dataset)
    if uid is None:
        raise ConfigError(f"{dataset!r}: name the dataset as VAULT:uid")
    data = load_vault(path, uid)
    if not data.continuous:
        raise ConfigError(f"{dataset!r} holds discrete actions; this looks at box actions")
    actions = np.asarray(data.actions, np.float64)
    if np.abs(actions).max() > 1.0:
        raise ConfigError(f"{dataset!r}: actions outside [-1, 1]; this script assumes the unit box")
    rows = []
    for agent in range(actions.shape[1]):
        for dim in range(actions.shape[2]):
            a = actions[:, agent, dim]
            rows.append({"dataset": dataset, "agent": agent, "dim": dim, "on_faces": float(np.mean(np.abs(a) >= 1.0)),
                         "mean": float(a.mean()), "median": float(np.median(a)),
                         "tanh_greedy": {str(edge): tanh_greedy(a, edge) for edge in edges},
                         "censored_greedy": censored_greedy(a)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help="VAULT:uid of box-action datasets")
    parser.add_argument("--edges", default="1e-6,1e-4,1e-2", help="pull-ins for the tanh fit")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    edges = [float(e) for e in args.edges.split(",")]
    rows = [row for dataset in args.datasets for row in describe(dataset, edges)]
    print("| dataset | agent | dim | on faces | mean | median | "
          + " | ".join(f"tanh greedy, pull-in {e:g}" for e in edges) + " | censored greedy |")
    print("|" + " --- |" * (7 + len(edges)))
    for r in rows:
        tanh = " | ".join(f"{r['tanh_greedy'][str(e)]:+.2f}" for e in edges)
        print(f"| {r['dataset'].rsplit('/', 1)[-1]} | {r['agent']} | {r['dim']} | {r['on_faces']:.2f} | {r['mean']:+.2f} | "
              f"{r['median']:+.2f} | {tanh} | {r['censored_greedy']:+.2f} |")
    if args.out:
        atomic_write_json(args.out, {"rows": rows})


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        raise SystemExit(f"box_faces.py: error: {err}") from None
