"""Training diagnostics of an `offmarl sweep` over SMAX maps, from the committed
metrics.jsonl of its finished MA-Trace and MAPPO runs: per map and algorithm, the final
greedy win rate, the entropy per agent against the uniform policy's log(actions), the
fraction of clipped joint ratios (MA-Trace), the value loss, and the training win rate,
each early (the first 20% of the budget) and late (the last 20%), and where the final
greedy evaluation's lost episodes were lost: the mean fraction of the enemy's health they
removed (a lost SMAX episode's return, which has no win bonus). Usage (docs/tuning.md):

    python experiments/suite_diagnostics.py docs/results/smax_suite
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from offmarl.envs import make_env
from offmarl.utils.files import read_jsonl

EARLY, LATE = 0.2, 0.8
ENTROPY_SUMMED_OVER_AGENTS = {"matrace": True, "mappo": False, "ippo": False}
"""For runs logged before `entropy_per_agent` existed: whether an algorithm's `entropy`
is the joint (summed) entropy or the mean per agent."""


def _window_mean(records: list[dict], key: str, lo: float, hi: float) -> float | None:
    values = [r[key] for r in records if key in r and lo <= r["env_steps"] < hi and math.isfinite(r[key])]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _lost_damage(summary: dict) -> str:
    """Mean return of the final greedy evaluation's lost episodes: in SMAX the damage reward
    sums to the fraction of the enemy team's health removed, and only a win adds the bonus."""
    pairs = zip(summary.get("final_eval_greedy_returns", []), summary.get("final_eval_greedy_wins", []))
    lost = [ret for ret, win in pairs if not win]
    return f"{sum(lost) / len(lost):.2f} ({len(lost)})" if lost else "– (0)"


def diagnose(sweep_dir: Path) -> list[str]:
    """Markdown lines: one row per finished run of the sweep in `sweep_dir`."""
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    specs = {env: make_env(env).spec for env in plan["envs"]}
    lines = ["| map | agents | actions | log(actions) | algorithm | seed | final greedy | entropy/agent early → late "
             "| clipped joint ratios early → late | ratio ESS early → late | value loss early → late "
             "| train win rate early → late | lost episodes: enemy health removed |",
             "| --- |" + " --- |" * 12]
    for cell in plan["cells"]:
        run = sweep_dir / cell["dir"]
        summary_path = run / "summary.json"
        if not summary_path.is_file() or json.loads(summary_path.read_text()).get("status") != "completed":
            continue
        summary = json.loads(summary_path.read_text())
        spec = specs[cell["env"]]
        records = [r for r in read_jsonl(run / "metrics.jsonl") if "entropy" in r]
        budget = summary["env_steps"]
        windows = ((0, EARLY * budget), (LATE * budget, budget + 1))

        def early_late(key: str, scale: float = 1.0, digits: int = 2) -> str:
            early, late = (_window_mean(records, key, lo, hi) for lo, hi in windows)
            early = None if early is None else early / scale
            late = None if late is None else late / scale
            return f"{_fmt(early, digits)} → {_fmt(late, digits)}"

        if any("entropy_per_agent" in r for r in records):
            entropy = early_late("entropy_per_agent")
        else:
            entropy = early_late("entropy", scale=spec.num_agents if ENTROPY_SUMMED_OVER_AGENTS[cell["algo"]] else 1)
        lines.append(f"| {cell['env']} | {spec.num_agents} | {spec.num_actions} | {math.log(spec.num_actions):.2f} "
                     f"| {cell['algo']} | {cell['seed']} | {summary['final_eval_greedy_win_rate']:.3f} "
                     f"| {entropy} | {early_late('rho_clipped_fraction')} | {early_late('rho_ess')} "
                     f"| {early_late('value_loss', digits=3)} | {early_late('train_win_rate')} | {_lost_damage(summary)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    print("\n".join(diagnose(parser.parse_args().sweep_dir)))


if __name__ == "__main__":
    main()
