"""`sgqn report`: the results table and learning curves of a sweep (or an experiment) from MLflow.

sgqn report --sweep cpu_mini
sgqn report --experiment sgqn --modes train color_hard video_hard --out reports/all
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from sgqn.app.console import HelpFormatter
from sgqn.app.errors import ConfigError, did_you_mean
from sgqn.app.report.collect import Collection, collect_experiment, collect_sweep
from sgqn.app.report.figures import DEFAULT_MODES, write_curves
from sgqn.app.report.table import build_tables, markdown_tables, write_tables

ARTIFACT_DIR = "report"  # where the files go in the sweep's parent run


def report_parser() -> argparse.ArgumentParser:
    from sgqn.app.store import default_tracking_uri

    parser = argparse.ArgumentParser(
        prog="sgqn report",
        description="The paper's table (mean ± std over seeds of the final evaluation return, per task,\n"
        "method and test mode) and learning curves of a sweep, or of every training run of an experiment,\n"
        "read from MLflow: table.md, table.csv, table.tex and curves_<task>.png. Beside the returns, the\n"
        "same tables of the critic's saliency precision and TID on the task's bodies at the final\n"
        "evaluation (and of SGQN's attribution predictor, when logged); a run without them shows '–'.\n"
        "Incomplete trials (no run, failed, stopped early) are left out of the cells and listed under\n"
        "the tables.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  sgqn report --sweep cpu_mini\n"
        "  sgqn report --sweep 3f2a9c0d1e4b4c5a8e7f6a5b4c3d2e1f --modes train color_hard video_hard\n"
        "  sgqn report --experiment sgqn --out reports/all --no-log",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--sweep",
        metavar="ID|NAME",
        help="the sweep's parent run id, or its name (then its newest parent run)",
    )
    source.add_argument(
        "--experiment",
        metavar="NAME",
        help="every training run of this MLflow experiment instead (seeds expected: those with a run)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=default_tracking_uri(),
        help="MLflow tracking URI ($MLFLOW_TRACKING_URI when set)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        metavar="MODE",
        default=None,
        help=f"test modes of the curve figures (default: those of {' '.join(DEFAULT_MODES)} that were "
        "evaluated); the table has every evaluated mode",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: reports/<sweep or experiment name>)",
    )
    parser.add_argument(
        "--ddof",
        type=int,
        default=1,
        help="delta degrees of freedom of the std over seeds (1: sample std, 0: population std)",
    )
    parser.add_argument(
        "--no-log",
        action="store_true",
        help="do not log the files as artifacts (under report/) of the sweep's parent run",
    )
    return parser


def default_out(collection: Collection) -> Path:
    return Path("reports") / (re.sub(r"[^\w.-]+", "_", collection.name).strip("_") or collection.kind)


def write_report(
    collection: Collection, out: Path, modes: Sequence[str] | None = None, ddof: int = 1
) -> tuple[str, list[Path]]:
    """Write the tables (returns, then saliency scores) and curves of `collection` into `out`: (the
    markdown tables, the files written)."""
    tables = build_tables(collection, ddof)
    return markdown_tables(tables), write_tables(tables, out) + write_curves(collection, out, modes, ddof)


def report_main(argv: Sequence[str]) -> list[Path]:
    """`sgqn report`; returns the files written. Raises `ConfigError` for an unknown sweep, experiment
    or mode, when there are no runs, or when the tracking store does not exist (nothing is created in its
    place); the messages name the store's absolute URI."""
    from sgqn.app.store import absolute_uri, missing_store, open_client

    parser = report_parser()
    args = parser.parse_args(list(argv))
    if args.ddof < 0:
        parser.error(f"--ddof must be ≥ 0, got {args.ddof}")
    uri = absolute_uri(args.tracking_uri)  # what the messages cite
    missing = missing_store(uri)
    if missing:
        source = f"--sweep {args.sweep}" if args.sweep is not None else f"--experiment {args.experiment}"
        raise ConfigError(
            f"{source}: no MLflow store at {missing} (the file does not exist); run in the folder that "
            "holds mlflow.db, or give --tracking-uri"
        )
    client = open_client(uri)
    if args.sweep is not None:
        collection = collect_sweep(client, args.sweep)
    else:
        collection = collect_experiment(client, args.experiment)
    unknown = [m for m in args.modes or [] if m not in collection.modes]
    if unknown:
        raise ConfigError(
            f"--modes: no complete trial was evaluated in {', '.join(unknown)}"
            f"{did_you_mean(unknown[0], collection.modes)}; evaluated: {', '.join(collection.modes) or 'none'}"
        )
    out = args.out or default_out(collection)
    text, files = write_report(collection, out, args.modes, args.ddof)
    print(text)
    print(f"wrote {len(files)} files to {out}:")
    for path in files:
        print(f"  {path}")
    if args.no_log:
        print("not logged to MLflow (--no-log)")
    elif collection.parent_run_id is None:
        print(
            f"not logged to MLflow: experiment {collection.name!r} has no sweep parent run to attach them to"
        )
    else:
        for path in files:
            client.log_artifact(collection.parent_run_id, str(path), ARTIFACT_DIR)
        print(f"logged them to the sweep's parent run {collection.parent_run_id} under {ARTIFACT_DIR}/")
    return files
