"""`sgqn sweep -c conf/sweep/<name>.yaml [--address auto|ray://host:10001] [--max-concurrent N] [fit options]`."""

from __future__ import annotations

import argparse
import difflib
import shlex
from collections.abc import Sequence

from sgqn.app.console import HelpFormatter
from sgqn.app.errors import ConfigError
from sgqn.app.sweeps.spec import load_sweep, parse_overrides


def sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sgqn sweep",
        description="Run a grid of `sgqn fit` trials (algorithms x tasks x seeds x any option) on Ray Tune,\n"
        "locally or on a Ray cluster, tracked as one MLflow parent run with a child run per trial.\n"
        "Any other `--group.option value` is an `sgqn fit` option applied to every trial. Re-running the\n"
        "same command continues the sweep: finished trials are not re-run, unfinished ones resume from\n"
        "their last checkpoint. The table: `sgqn report --sweep <name>`.",
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # `--dry` is not `--dry-run`: unknown options go to `sgqn fit`, checked there
        epilog="examples:\n"
        "  sgqn sweep -c conf/sweep/cpu_mini.yaml\n"
        "  sgqn sweep -c conf/sweep/paper.yaml --address auto --tracking-uri http://head:5000\n"
        "  sgqn sweep -c conf/sweep/cpu_mini.yaml --dry-run --data.num_agent_steps 500",
    )
    parser.add_argument("-c", "--config", required=True, help="the sweep file (conf/sweep/*.yaml)")
    parser.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster (`auto`, `ray://host:10001`); default: start Ray on this machine",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="at most this many trials at once (default: as resources allow)",
    )
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs the local Ray may use (default: all); each trial takes the sweep file's resources.cpu",
    )
    parser.add_argument(
        "--root",
        default=None,
        help="folder of the sweep's outputs (default: the file's `root`, else sweeps/)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI of the parent and trial runs (default: the file's, else $MLFLOW_TRACKING_URI "
        "or sqlite:///mlflow.db); use an `mlflow server` URI on a cluster",
    )
    parser.add_argument(
        "--max-failures", type=int, default=None, help="retries per trial (default: the file's, else 3)"
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=5.0, help="how often a trial reports its progress"
    )
    parser.add_argument(
        "--print-every-seconds",
        type=float,
        default=30.0,
        help="the live table is printed at least this often",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every trial as the sweep would, print each trial's `sgqn fit` command and exit",
    )
    return parser


def sweep_main(argv: Sequence[str]) -> None:
    from sgqn.app.sweeps.runner import (
        UNKNOWN_PARENT,
        preflight,
        run_sweep,
        sweep_tracking_uri,
        trial_config,
    )

    parser = sweep_parser()
    args, rest = parser.parse_known_args(list(argv))
    for word in rest:  # `sgqn fit` options are --group.option; another word is a mistyped sweep option
        flag = word.partition("=")[0]
        if flag.startswith("--") and "." not in flag:
            flags = [o for o in parser._option_string_actions if o.startswith("--") and o != "--help"]
            near = difflib.get_close_matches(flag, flags, n=2, cutoff=0.6)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise ConfigError(
                f"{flag} is not an `sgqn sweep` option ({hint}see `sgqn sweep --help`; `sgqn fit` options "
                "for every trial are --group.option)"
            )
    spec = load_sweep(args.config, parse_overrides(rest))
    for key in ("root", "tracking_uri", "max_failures"):  # the command line wins over the file
        if getattr(args, key) is not None:
            setattr(spec, key, getattr(args, key))
    if args.dry_run:
        from pathlib import Path

        folder, uri = Path(spec.root).resolve() / spec.name, sweep_tracking_uri(spec)
        trials = spec.trials()
        preflight(spec, trials, folder, uri)  # the very checks of the real sweep, before Ray; creates nothing
        for trial in trials:
            config = trial_config(spec, trial, folder / "runs" / trial.name, UNKNOWN_PARENT, uri, 0)
            print(f"{trial.name}: sgqn fit {shlex.join(config['argv'])}")
        return
    outcome = run_sweep(
        spec,
        address=args.address,
        max_concurrent=args.max_concurrent,
        num_cpus=args.num_cpus,
        poll_s=args.poll_seconds,
        print_every_s=args.print_every_seconds,
    )
    print(
        f"sgqn sweep {spec.name}: {len(outcome.finished)} trials finished, {len(outcome.failed)} failed"
        + (f" ({', '.join(outcome.failed)})" if outcome.failed else "")
        + f" in {outcome.seconds / 60:.1f} min; parent run {outcome.parent_run_id}\n"
        f"  trial folders: {outcome.folder / 'runs'}\n"
        f"  the table:     sgqn report --sweep {outcome.parent_run_id}",
        flush=True,
    )
    if outcome.failed:
        raise SystemExit(1)
