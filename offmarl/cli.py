"""The `offmarl` command line. Bad input ends with one line on stderr and exit code 2,
before anything is compiled or trained."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, NoReturn

from offmarl.errors import ConfigError

if TYPE_CHECKING:
    from offmarl.runners.offline import OfflineRun
    from offmarl.runners.online import OnlineRun

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"offmarl: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="offmarl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("envs", help="list environment names")
    sub.add_parser("algos", help="list algorithms")

    train = sub.add_parser("train", help="train online (MA-Trace) into a run directory")
    train.add_argument("--algo", default="matrace", help="algorithm name (see `offmarl algos`)")
    train.add_argument("--env", help="environment, e.g. smax:3m (see `offmarl envs`)")
    train.add_argument("--env-steps", type=int, help="training environment-step budget")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", help="new run directory (default runs/<algo>_<env>_s<seed>)")
    train.add_argument("--critic", help="critic input: obs, state or decentralised")
    train.add_argument("--num-envs", type=int, help="parallel environments")
    train.add_argument("--policy-lag", type=int, help="act with parameters K updates old")
    train.add_argument("--workers", type=int,
                       help="Ray rollout workers feeding one learner (default 0: fused single process)")
    train.add_argument("--ray-address", help="join the Ray cluster at HOST:PORT or 'auto' "
                       "(default: start a local Ray instance); also with --resume")
    train.add_argument("--no-importance-weights", action="store_true",
                       help="set every importance ratio to 1 (ablation)")
    train.add_argument("--config", help="JSON or TOML file of config fields")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress display")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config field overrides")

    evaluate = sub.add_parser("eval", help="evaluate a run's saved policy (greedy and sampled)")
    evaluate.add_argument("--run", required=True, help="run directory")
    evaluate.add_argument("--episodes", type=int, default=256)
    evaluate.add_argument("--checkpoint", default="latest", help="latest or an env-step count")
    evaluate.add_argument("--seed", type=int, help="evaluation seed (default: the run's)")

    offline = sub.add_parser("offline", help="train from a fixed dataset into a run directory")
    offline.add_argument("--algo", help="offline algorithm (see `offmarl algos`)")
    offline.add_argument("--dataset", help="VAULT[:uid], or a built-in dataset name of the game")
    offline.add_argument("--env", help="environment the policy is evaluated in, e.g. smax:3m")
    offline.add_argument("--steps", type=int, help="training iterations")
    offline.add_argument("--seed", type=int, default=0)
    offline.add_argument("--out", help="new run directory (default runs/offline_<algo>_<env>_s<seed>)")
    offline.add_argument("--config", help="JSON or TOML file of config fields")
    offline.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    offline.add_argument("--quiet", action="store_true", help="no progress display")
    offline.add_argument("overrides", nargs="*", metavar="key=value", help="config field overrides")

    report = sub.add_parser("report", help="mean and 95%% CI of finished runs (e.g. several seeds)")
    report.add_argument("runs", nargs="+", help="run directories")

    collect = sub.add_parser("collect", help="record a run's saved policy into an OG-MARL vault")
    collect.add_argument("--run", required=True, help="online run directory")
    collect.add_argument("--checkpoint", default="latest",
                         help="latest, best (highest periodic eval in metrics.jsonl) or an env-step count")
    collect.add_argument("--episodes", type=int, required=True, help="whole episodes to record")
    collect.add_argument("--out", required=True, help="vault directory, e.g. datasets/smax_3m.vlt")
    collect.add_argument("--uid", required=True, help="dataset name inside the vault, e.g. good")
    collect.add_argument("--epsilon", type=float, default=0.0,
                         help="probability of a uniformly random available action per agent and step")
    collect.add_argument("--greedy", action="store_true", help="act greedily (default: sample)")
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--quiet", action="store_true", help="no progress display")

    make_data = sub.add_parser("make-datasets",
                               help="train MA-Trace and record good/medium/poor/replay datasets")
    make_data.add_argument("--env", required=True, help="environment, e.g. smax:3m")
    make_data.add_argument("--out", required=True, help="directory for <env>.vlt (and the run)")
    make_data.add_argument("--run", help="use this finished online run instead of training one")
    make_data.add_argument("--episodes", type=int, default=1000, help="episodes per dataset")
    make_data.add_argument("--env-steps", type=int, help="training budget of the new run")
    make_data.add_argument("--seed", type=int, default=0)
    make_data.add_argument("--quiet", action="store_true", help="no progress display")

    card = sub.add_parser("dataset-card", help="write the markdown card and return histogram of a dataset")
    card.add_argument("dataset", help="VAULT[:uid]; without uid, every dataset of the vault")
    card.add_argument("--out", help="directory for the card (default: the vault directory)")
    return parser


def _flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    flags = {"env_steps": args.env_steps, "critic": args.critic, "num_envs": args.num_envs,
             "policy_lag": args.policy_lag, "workers": args.workers}
    out = {k: v for k, v in flags.items() if v is not None}
    if args.no_importance_weights:
        out["importance_weights"] = False
    return out


def _execute(run: "OnlineRun | OfflineRun") -> int:
    """Run to the end, print summary.json, and exit 0, 130 (interrupted) or 3 (diverged)."""
    summary = run.execute()
    print(json.dumps(summary, indent=2))
    return {"completed": 0, "interrupted": 130, "diverged": 3}[summary["status"]]


def _train(args: argparse.Namespace) -> int:
    from offmarl.config import load_config_file, parse_overrides
    from offmarl.experiment import resolve_experiment

    if args.ray_address is not None:
        from offmarl.runners.distributed import check_ray_address

        check_ray_address(args.ray_address)
    if args.resume:
        from offmarl.runners.online import OnlineRun

        run = OnlineRun.resume(args.resume, quiet=args.quiet, ray_address=args.ray_address)
    else:
        if not args.env:
            raise ConfigError("--env is required (see `offmarl envs`)")
        file_layer = load_config_file(args.config) if args.config else {}
        experiment = resolve_experiment(
            args.algo, args.env, args.seed, file_layer, _flag_overrides(args),
            parse_overrides(args.overrides),
        )
        out = args.out or f"runs/{args.algo}_{args.env.replace(':', '_')}_s{args.seed}"
        from offmarl.runners.online import OnlineRun

        run = OnlineRun.create(experiment, out, quiet=args.quiet, ray_address=args.ray_address)
    return _execute(run)


def _offline(args: argparse.Namespace) -> int:
    from offmarl.config import load_config_file, parse_overrides
    from offmarl.experiment import resolve_offline_experiment
    from offmarl.runners.offline import OfflineRun

    if args.resume:
        run = OfflineRun.resume(args.resume, quiet=args.quiet)
    else:
        missing = [flag for flag, value in (("--algo", args.algo), ("--env", args.env),
                                            ("--dataset", args.dataset)) if not value]
        if missing:
            raise ConfigError(f"{', '.join(missing)} required (see `offmarl algos`, `offmarl envs`)")
        file_layer = load_config_file(args.config) if args.config else {}
        flags = {"steps": args.steps} if args.steps is not None else {}
        experiment = resolve_offline_experiment(
            args.algo, args.env, args.dataset, args.seed, file_layer, flags, parse_overrides(args.overrides)
        )
        out = args.out or f"runs/offline_{args.algo}_{args.env.replace(':', '_')}_s{args.seed}"
        run = OfflineRun.create(experiment, out, quiet=args.quiet)
    return _execute(run)


def _eval(args: argparse.Namespace) -> int:
    if args.episodes <= 0:
        raise ConfigError(f"--episodes={args.episodes} is invalid: must be a positive integer")
    from offmarl.runners.online import evaluate_run

    print(json.dumps(evaluate_run(args.run, args.episodes, args.checkpoint, args.seed), indent=2))
    return 0


def _collect(args: argparse.Namespace) -> int:
    from offmarl.data.collect import collect_from_run

    path = collect_from_run(args.run, args.checkpoint, args.episodes, args.out, args.uid,
                            args.epsilon, args.seed, greedy=args.greedy, quiet=args.quiet)
    print(path)
    return 0


def _make_datasets(args: argparse.Namespace) -> int:
    from offmarl.data.make_datasets import make_datasets

    make_datasets(args.env, args.out, run_dir=args.run, episodes=args.episodes, seed=args.seed,
                  env_steps=args.env_steps, quiet=args.quiet)
    return 0


def _dataset_card(args: argparse.Namespace) -> int:
    from offmarl.data.card import write_dataset_card
    from offmarl.data.vault import list_uids, parse_dataset_arg

    path, uid = parse_dataset_arg(args.dataset)
    if uid is None and not list_uids(path):
        raise ConfigError(f"{str(path)!r} is not a vault (no dataset directories in it)")
    for name in [uid] if uid is not None else list_uids(path):
        print(write_dataset_card(path, name, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from offmarl.utils.compile_cache import enable_compile_cache

    enable_compile_cache()
    try:
        if args.command == "envs":
            from offmarl.envs import list_envs

            print("\n".join(list_envs()))
            return 0
        if args.command == "algos":
            from offmarl.algos import ALGORITHMS

            for name, entry in ALGORITHMS.items():
                print(f"{name}\t{entry.kind}\t{entry.description}")
            return 0
        if args.command == "train":
            return _train(args)
        if args.command == "offline":
            return _offline(args)
        if args.command == "report":
            from offmarl.evaluation.aggregate import summarise_runs

            print(json.dumps(summarise_runs(args.runs), indent=2))
            return 0
        if args.command == "collect":
            return _collect(args)
        if args.command == "make-datasets":
            return _make_datasets(args)
        if args.command == "dataset-card":
            return _dataset_card(args)
        return _eval(args)
    except ConfigError as err:
        print(f"offmarl: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
