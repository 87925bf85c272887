"""The `offmarl` command line. Bad input ends with one line on stderr and exit code 2,
before anything is compiled or trained."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from offmarl import __version__
from offmarl.errors import ConfigError
from offmarl.utils.files import slug

if TYPE_CHECKING:
    from offmarl.runners.loop import RunLoop

EXIT_BAD_INPUT = 2
EXIT_OUT_OF_MEMORY = 1
MAX_EVAL_EPISODES = 1_000_000
"""`offmarl eval` keeps every episode's return, and runs them in batches of a few thousand."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"offmarl: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where the default is 'not given'."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _count(flag: str):
    """An argparse type for step and episode counts: 300000, 3e5 and 300_000 alike."""
    def parse(text: str) -> int:
        from offmarl.config import parse_count

        try:
            return parse_count(flag, text)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def _given(text: str) -> str:
    """An argparse type for names and paths: an empty or blank value is an error, not the
    same as leaving the flag out (or, for a path, the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty; give a value or leave the flag out")
    return text


def _defaults() -> tuple[Any, Any]:
    from offmarl.runners.config import OfflineConfig, OnlineConfig

    return OnlineConfig(), OfflineConfig()


def _build_parser() -> argparse.ArgumentParser:
    online, offline_cfg = _defaults()
    parser = _Parser(prog="offmarl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"offmarl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_Help)

    command("envs", "list environment names")
    command("algos", "list algorithms")
    config = command("config", "print every config key of an algorithm and its runner, with "
                               "default and docstring")
    config.add_argument("--algo", type=_given, required=True, help="algorithm name (see `offmarl algos`)")

    train = command("train", "train an online algorithm (see `offmarl algos`) into a run directory")
    train.add_argument("--algo", type=_given, help="algorithm name (see `offmarl algos`); default matrace")
    train.add_argument("--env", type=_given, help="environment, e.g. smax:3m (see `offmarl envs`)")
    train.add_argument("--env-steps", type=_count("--env-steps"),
                       help="training environment-step budget, e.g. 16e6 (default: the algorithm's, "
                            "see `offmarl config --algo NAME`; rounded down to whole updates of "
                            "num_envs x unroll_length). With --resume: a new budget for the run")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--out", type=_given, help="new run directory (default runs/<algo>_<env>_s<seed>)")
    train.add_argument("--num-envs", type=int, help=f"parallel environments (default {online.num_envs})")
    train.add_argument("--policy-lag", type=int, help="act with parameters K updates old (default 0)")
    train.add_argument("--simulated-workers", type=_count("--simulated-workers"),
                       help="simulate the policy lag of N IMPALA workers in the fused runner (default 0: off)")
    train.add_argument("--workers", type=int,
                       help="Ray rollout workers feeding one learner (default 0: fused single process)")
    train.add_argument("--ray-address", type=_given, help="join the Ray cluster at HOST:PORT or 'auto' "
                       "(default: start a local Ray instance); also with --resume")
    train.add_argument("--config", type=_given, help="JSON or TOML file of config fields ([algo] and [run] sections)")
    train.add_argument("--resume", type=_given, metavar="DIR", help="continue the run in DIR from its newest checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress display (errors still show)")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config field overrides (see `offmarl config --algo NAME`)")

    evaluate = command("eval", "evaluate a run's saved policy (greedy and sampled), online or offline")
    evaluate.add_argument("--run", type=_given, required=True, help="run directory")
    evaluate.add_argument("--episodes", type=_count("--episodes"), default=256)
    evaluate.add_argument("--checkpoint", type=_given, default="latest", help="latest or a step count")
    evaluate.add_argument("--seed", type=int, help="evaluation seed (default: the run's)")

    offline = command("offline", "train from a fixed dataset into a run directory")
    offline.add_argument("--algo", type=_given, help="offline algorithm (see `offmarl algos`)")
    offline.add_argument("--dataset", type=_given, help="VAULT[:uid], or a built-in dataset name of the game")
    offline.add_argument("--env", type=_given, help="environment the policy is evaluated in, e.g. smax:3m "
                         "(default: the env recorded in the vault)")
    offline.add_argument("--steps", type=_count("--steps"),
                         help=f"training iterations (default {offline_cfg.steps:,}). With --resume: a new "
                              "budget for the run")
    offline.add_argument("--seed", type=int, help="random seed (default 0)")
    offline.add_argument("--out", type=_given, help="new run directory (default runs/offline_<algo>_<env>_<dataset>_s<seed>)")
    offline.add_argument("--config", type=_given, help="JSON or TOML file of config fields ([algo] and [run] sections)")
    offline.add_argument("--resume", type=_given, metavar="DIR", help="continue the run in DIR from its newest checkpoint")
    offline.add_argument("--quiet", action="store_true", help="no progress display (errors still show)")
    offline.add_argument("overrides", nargs="*", metavar="key=value",
                         help="config field overrides (see `offmarl config --algo NAME`)")

    report = command("report", "statistics of runs per algorithm and environment (e.g. several seeds)")
    report.add_argument("runs", type=_given, nargs="+", help="run directories")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.add_argument("--reps", type=int, default=None,
                        help="bootstrap replications of the rliable aggregate (default 5000)")
    report.add_argument("--plots", type=_given, metavar="DIR",
                        help="also write curves.png, performance_profile.png, probability_of_improvement.png "
                             "and marl_eval.json into DIR (created if missing), as a sweep does")

    collect = command("collect", "record a run's saved policy into an OG-MARL vault")
    collect.add_argument("--run", type=_given, required=True, help="run directory (online or offline)")
    collect.add_argument("--checkpoint", type=_given, default="latest",
                         help="latest, best (highest periodic eval in metrics.jsonl) or a step count")
    collect.add_argument("--episodes", type=_count("--episodes"), required=True, help="whole episodes to record")
    collect.add_argument("--out", type=_given, required=True, help="vault directory, e.g. datasets/smax_3m.vlt")
    collect.add_argument("--uid", type=_given, required=True, help="dataset name inside the vault, e.g. good")
    collect.add_argument("--epsilon", type=float, default=0.0,
                         help="probability of a uniformly random action per agent and step "
                              "(an available one, or one in the box)")
    collect.add_argument("--greedy", action="store_true", help="act greedily (default: sample)")
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--quiet", action="store_true", help="no progress display")

    make_data = command("make-datasets", "train several MA-Trace runs and record good/medium/poor/replay/mixed "
                                         "datasets the OG-MARL way, or expert/medium/medium-replay/medium-expert "
                                         "for box actions (see docs/datasets.md)")
    make_data.add_argument("--env", type=_given, required=True, help="environment, e.g. smax:3m")
    make_data.add_argument("--out", type=_given, required=True, help="directory for <env>.vlt (and the runs)")
    make_data.add_argument("--seeds", help="one independent MA-Trace run per seed (default 0,1,2,3)")
    make_data.add_argument("--runs", type=_given, help="comma-separated finished online runs to use instead of training")
    make_data.add_argument("--transitions", type=_count("--transitions"), default=100_000,
                           help="at least this many transitions per dataset, shared evenly by the runs")
    make_data.add_argument("--epsilon", type=float, default=0.05,
                           help="rollout epsilon: probability of a random action per agent and step "
                                "(uniform over the available ones, or over the box)")
    make_data.add_argument("--env-steps", type=_count("--env-steps"), help="training budget of each new run")
    make_data.add_argument("--quiet", action="store_true", help="no progress display")

    sweep = command("sweep", "train every (algorithm, environment, seed) of a grid, each an ordinary run "
                             "directory, and aggregate them (rliable statistics, marl-eval JSON, a table); "
                             "rerun the same command to continue (see docs/sweep.md)")
    sweep.add_argument("--algos", required=True, help="comma-separated algorithms, e.g. matrace or bc,omiga")
    sweep.add_argument("--envs", required=True, help="comma-separated environments, e.g. smax:3m,smax:8m")
    sweep.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 0,1,2")
    sweep.add_argument("--out", type=_given, required=True, help="sweep directory (DIR/runs/<algo>_<env>_s<seed> per cell)")
    sweep.add_argument("--env-steps", type=_count("--env-steps"), help="budget of each online cell "
                       "(default: the algorithm's); on a rerun, a new budget extends the cells")
    sweep.add_argument("--steps", type=_count("--steps"), help="budget of each offline cell (default: the "
                       "algorithm's); on a rerun, a new budget extends the cells")
    sweep.add_argument("--dataset", type=_given, help="dataset of the offline cells: VAULT[:uid] or a built-in name")
    sweep.add_argument("--parallel", type=int, help="cells run at once (default 1; with --ray-address: "
                       "as many as the cluster has CPUs)")
    sweep.add_argument("--ray-address", type=_given, help="run the cells as Ray tasks (1 CPU each) on the cluster at "
                       "HOST:PORT or 'auto' (DIR must be on a file system the nodes share)")
    sweep.add_argument("--reps", type=int, help="bootstrap replications of the final statistics "
                       "(default 5000)")
    sweep.add_argument("--quiet", action="store_true", help="only failures and errors (no per-cell lines)")
    sweep.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config field overrides for every cell, or ALGO.key=value for ALGO's cells "
                       "only (see `offmarl config --algo NAME`)")

    card = command("dataset-card", "write the markdown card and return histogram of a dataset")
    card.add_argument("dataset", type=_given, help="VAULT[:uid]; without uid, every dataset of the vault")
    card.add_argument("--out", type=_given, help="directory for the card (default: the vault directory)")
    return parser


# -- train and offline -------------------------------------------------------------------
RESUME_KEEPS = {"train": ("env_steps", "quiet", "ray_address"), "offline": ("steps", "quiet")}
"""What a resumed run takes from the command line; the saved config.json has the rest."""


def _refuse_ignored_flags(args: argparse.Namespace) -> None:
    """With --resume, every other flag would be ignored: refuse it instead."""
    keep = RESUME_KEEPS[args.command]
    given = [name for name, value in vars(args).items()
             if name not in (*keep, "command", "resume", "overrides") and value not in (None, False)]
    if given or args.overrides:
        what = f"--{given[0].replace('_', '-')}" if given else repr(args.overrides[0])
        allowed = ", ".join(f"--{k.replace('_', '-')}" for k in keep)
        raise ConfigError(f"{what} cannot be changed when resuming: {args.resume!r} keeps its saved "
                          f"configuration (with --resume only {allowed} apply; start a new run to change it)")


def _flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    if args.simulated_workers is not None and args.simulated_workers < 1:
        raise ConfigError(f"--simulated-workers={args.simulated_workers} is invalid: must be a positive "
                          "integer (leave the flag out to run without simulated workers)")
    flags = {"env_steps": args.env_steps, "num_envs": args.num_envs, "policy_lag": args.policy_lag,
             "simulated_workers": args.simulated_workers, "workers": args.workers}
    return {k: v for k, v in flags.items() if v is not None}


def _check_seed(seed: int | None, flag: str = "--seed") -> int:
    if seed is not None and seed < 0:
        raise ConfigError(f"{flag}={seed} is invalid: must be >= 0")
    return 0 if seed is None else seed


def _execute(run: RunLoop) -> int:
    """Run to the end, print summary.json; exit 0, 3 (diverged), 130 (SIGINT) or 143 (SIGTERM)."""
    from offmarl.runners.loop import exit_code

    summary = run.execute()
    print(json.dumps(summary, indent=2))
    return exit_code(summary)


def _train(args: argparse.Namespace) -> int:
    from offmarl.config import load_config_file, parse_overrides

    if args.ray_address is not None:
        from offmarl.runners.distributed import check_ray_address

        check_ray_address(args.ray_address)
    if args.resume:
        _refuse_ignored_flags(args)
        from offmarl.runners.online import OnlineRun

        return _execute(OnlineRun.resume(args.resume, quiet=args.quiet, ray_address=args.ray_address,
                                         env_steps=args.env_steps))
    if not args.env:
        raise ConfigError("--env is required (see `offmarl envs`)")
    from offmarl.runners.experiment import resolve_experiment

    algo, seed = args.algo or "matrace", _check_seed(args.seed)
    file_layer = load_config_file(args.config) if args.config else {}
    experiment = resolve_experiment(algo, args.env, seed, file_layer, _flag_overrides(args),
                                    parse_overrides(args.overrides))
    out = args.out or f"runs/{algo}_{slug(args.env)}_s{seed}"
    from offmarl.runners.online import OnlineRun

    return _execute(OnlineRun.create(experiment, out, quiet=args.quiet, ray_address=args.ray_address))


def _vault_env(dataset: str) -> str | None:
    """The environment a vault's metadata records for `dataset` (VAULT[:uid]); None where it
    records none. Asked only without --env, so the dataset must then be a vault."""
    from offmarl.data.vault import list_uids, parse_dataset_arg, vault_metadata

    path, uid = parse_dataset_arg(dataset)
    stored = list_uids(path)
    if not stored:
        raise ConfigError(f"--dataset {dataset!r}: {str(path)!r} is not a vault; give a VAULT[:uid] "
                          "made by `offmarl collect` or `make-datasets`, or --env for a built-in dataset")
    if uid is not None and uid not in stored:
        raise ConfigError(f"--dataset {dataset!r}: the vault holds no dataset {uid!r}; valid choices: "
                          f"{', '.join(f'{path}:{u}' for u in stored)}")
    envs = {vault_metadata(path, u).get("env") for u in ([uid] if uid is not None else stored)}
    if len(envs) > 1:
        raise ConfigError(f"--dataset {dataset!r}: the vault holds datasets of several environments "
                          f"({', '.join(sorted(env or 'no env recorded' for env in envs))}); give VAULT:uid or --env")
    return envs.pop()


def _offline(args: argparse.Namespace) -> int:
    from offmarl.config import load_config_file, parse_overrides
    from offmarl.runners.offline import OfflineRun

    if args.resume:
        _refuse_ignored_flags(args)
        return _execute(OfflineRun.resume(args.resume, quiet=args.quiet, steps=args.steps))
    env = args.env or (_vault_env(args.dataset) if args.dataset else None)
    missing = [flag for flag, value in (("--algo", args.algo), ("--dataset", args.dataset), ("--env", env))
               if not value]
    if missing:
        hint = " (the vault records no env)" if missing == ["--env"] else ""
        raise ConfigError(f"{', '.join(missing)} required{hint} (see `offmarl algos`, `offmarl envs`)")
    from offmarl.runners.experiment import resolve_offline_experiment

    seed = _check_seed(args.seed)
    file_layer = load_config_file(args.config) if args.config else {}
    flags = {"steps": args.steps} if args.steps is not None else {}
    experiment = resolve_offline_experiment(args.algo, env, args.dataset, seed, file_layer, flags,
                                            parse_overrides(args.overrides))
    out = args.out or f"runs/offline_{args.algo}_{slug(env)}_{slug(args.dataset)}_s{seed}"
    return _execute(OfflineRun.create(experiment, out, quiet=args.quiet))


# -- the other commands ---------------------------------------------------------------
def _eval(args: argparse.Namespace) -> int:
    if not 0 < args.episodes <= MAX_EVAL_EPISODES:
        raise ConfigError(f"--episodes={args.episodes} is invalid: 1..{MAX_EVAL_EPISODES:,}")
    _check_seed(args.seed)
    from offmarl.runners.saved import evaluate_run

    result = evaluate_run(args.run, args.episodes, args.checkpoint, args.seed)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))  # means only
    return 0


def _config(args: argparse.Namespace) -> int:
    from offmarl.algos import get_algorithm
    from offmarl.config import field_docs
    from offmarl.runners.config import OfflineConfig, OnlineConfig

    entry = get_algorithm(args.algo)
    run_class = OnlineConfig if entry.kind == "online" else OfflineConfig
    own = entry.run_defaults
    for cls in (entry.config_class, run_class):
        print(f"# {cls.__name__} ({cls.__module__})")
        defaults, docs = cls(), field_docs(cls)
        for name, doc in docs.items():
            value = own.get(name, getattr(defaults, name)) if cls is run_class else getattr(defaults, name)
            note = f"  # {args.algo}'s own default" if cls is run_class and name in own else ""
            print(f"{name} = {value!r}{note}")
            if doc:
                print("    " + " ".join(doc.split()))
        print()
    scoped = {"box-action (continuous) tasks": entry.action_space_defaults(continuous=True)}
    for family, values in entry.families_with_defaults().items():
        scoped[f"{family}:* environments"] = values
    for scope, values in scoped.items():
        if values:
            print(f"# {args.algo}'s own defaults on {scope}")
            for name, value in values.items():
                print(f"{name} = {value!r}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from offmarl.evaluation.aggregate import format_report, report_runs
    from offmarl.evaluation.statistics import DEFAULT_REPS, check_reps, format_aggregate, rliable_report
    from offmarl.pipelines.sweep import suite_table_from_report

    reps = DEFAULT_REPS if args.reps is None else args.reps
    check_reps(reps)
    plots = _plot_directory(args.plots) if args.plots is not None else None
    report = report_runs(args.runs)  # checks every run before DIR is made
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
    report["aggregate"] = rliable_report(args.runs, reps=reps, plot_dir=plots)
    if plots is not None:
        from offmarl.evaluation.plots import plot_mean_curves
        from offmarl.evaluation.statistics import write_marl_eval_json

        plot_mean_curves(args.runs, plots / "curves.png")
        write_marl_eval_json(args.runs, plots / "marl_eval.json")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report), end="")
        print("\naggregate over tasks (rliable, the statistics of `offmarl sweep`):")
        print("\n".join(format_aggregate(report["aggregate"])))
        suite = suite_table_from_report(report)
        if suite:
            print("\n" + "\n".join(suite), end="")
    return 0


def _plot_directory(path: str) -> Path:
    """`report --plots DIR`, checked before any work: not a file, not inside a run, not a
    sweep's own directory (the sweep writes those plots), and writable."""
    from offmarl.pipelines.sweep import SWEEP_FILE
    from offmarl.utils.files import enclosing_run_directory, unwritable_ancestor

    directory = Path(path)
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise ConfigError(f"--plots {path!r} is not a directory; choose another path")
    if (run := enclosing_run_directory(directory)) is not None:
        raise ConfigError(f"--plots {path!r} is inside the run directory {str(run)!r}; choose a path outside runs")
    if (directory / SWEEP_FILE).is_file():
        raise ConfigError(f"--plots {path!r} is a sweep directory, whose plots the sweep writes; choose another path")
    if (blocked := unwritable_ancestor(directory.absolute())) is not None:
        raise ConfigError(f"--plots {path!r} cannot be written: {str(blocked)!r} is not writable")
    return directory


def _sweep(args: argparse.Namespace) -> int:
    from offmarl.pipelines.sweep import sweep_command

    return sweep_command(args)


def _collect(args: argparse.Namespace) -> int:
    from offmarl.pipelines.collect import collect_from_run

    path = collect_from_run(args.run, args.checkpoint, args.episodes, args.out, args.uid,
                            args.epsilon, _check_seed(args.seed), greedy=args.greedy, quiet=args.quiet)
    print(path)
    return 0


def _make_datasets(args: argparse.Namespace) -> int:
    from offmarl.pipelines.make_datasets import DEFAULT_SEEDS, make_datasets

    from offmarl.pipelines.sweep import parse_names, parse_seeds

    if args.runs and args.seeds:
        raise ConfigError("--runs and --seeds exclude each other: the runs' own seeds are used")
    run_dirs = parse_names("--runs", args.runs) if args.runs else None
    seeds = parse_seeds(args.seeds) if args.seeds is not None else list(DEFAULT_SEEDS)
    make_datasets(args.env, args.out, run_dirs=run_dirs, seeds=seeds,
                  transitions=args.transitions, epsilon=args.epsilon, env_steps=args.env_steps, quiet=args.quiet)
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


def _list_envs(_: argparse.Namespace) -> int:
    from offmarl.envs import list_envs

    print("\n".join(list_envs()))
    return 0


def _list_algos(_: argparse.Namespace) -> int:
    from offmarl.algos import ALGORITHMS

    for name, entry in ALGORITHMS.items():
        print(f"{name}\t{entry.kind}\t{entry.description}")
    return 0


_COMMANDS = {"envs": _list_envs, "algos": _list_algos, "config": _config, "train": _train,
             "offline": _offline, "report": _report, "collect": _collect, "make-datasets": _make_datasets,
             "dataset-card": _dataset_card, "eval": _eval, "sweep": _sweep}
_RESUMABLE = ("train", "offline", "make-datasets", "sweep")
"""Commands whose work a second run of the same command continues."""
_QUICK = ("envs", "algos", "config", "report", "sweep")
"""Commands that compile nothing, so they skip JAX's compilation cache set-up."""


def main(argv: list[str] | None = None) -> int:
    from offmarl.runners.common import StopSignals
    from offmarl.utils.process import stop_with_parent_from_env

    stop_with_parent_from_env()
    args = _build_parser().parse_args(argv)
    try:
        if args.command not in _QUICK:
            from offmarl.utils.compile_cache import enable_compile_cache

            enable_compile_cache()
        # SIGTERM, like SIGINT, raises wherever no run loop holds the signals (compiling,
        # scoring, writing datasets), so the command ends through the handler below.
        with StopSignals():
            code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so that a closed pipe is handled below, not at exit
        return code
    except ConfigError as err:
        print(f"offmarl: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        # A run loop turns a signal into its own checkpoint and exit code; this is one that
        # arrived outside it (while a run was compiling, or between a pipeline's runs).
        signal_name = str(err) or "SIGINT"
        after = ("finished runs and checkpoints are kept: run the same command again to continue"
                 if args.command in _RESUMABLE else "run the command again to start it over")
        print(f"offmarl: stopped by {signal_name}; {after}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as err:
        where = f" {err.filename!r}" if err.filename else ""
        print(f"offmarl: error: cannot write{where}: {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        if not _out_of_memory(err):
            raise
        # A size no check bounds (hidden_sizes, batch_size, num_envs) asked for more memory
        # than there is: found when XLA allocates, so not before the compile.
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"offmarl: error: out of memory ({reason[:200]}); smaller hidden_sizes, batch_size, num_envs "
              "or episode counts need less", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY


def _out_of_memory(err: Exception) -> bool:
    """A host or device allocation failed (NumPy's MemoryError, XLA's RESOURCE_EXHAUSTED)."""
    text = str(err)
    return isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text


if __name__ == "__main__":
    sys.exit(main())
