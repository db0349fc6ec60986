"""`sgqn evaluate`: returns of checkpoints (or MLflow runs' checkpoints) in the train env and the test
modes, as tables attached to their runs. The episodes are run as during `fit` (`sgqn.evaluation`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sgqn.app.console import HelpFormatter
from sgqn.evaluation.episodes import (
    DEFAULT_MODES,
    EVAL_SEED_OFFSET,
    episode_returns,
    run_mode_episodes,
    start_workers,
    stop_workers,
    summarize,
)

log = logging.getLogger("sgqn.evaluation")


def evaluate_checkpoint(
    path: str, modes: Sequence[str], episodes: int, seed_offset: int, workers: int = 0
) -> dict[str, list[float]]:
    """Returns per mode for the policy stored in one checkpoint, with the env settings it trained on;
    `workers` > 0: in that many env processes per mode, all modes at once (`sgqn.evaluation`)."""
    from sgqn.data.datamodule import DMCDataModule
    from sgqn.training.module import AgentModule

    module = AgentModule.load_from_checkpoint(path, map_location="cpu")
    module.eval()
    datamodule = DMCDataModule.from_checkpoint(path)
    policy = module.policy_module(deterministic=True)
    seed = datamodule.env_settings.seed + seed_offset
    if not workers:
        return {m: episode_returns(datamodule.make_env(mode=m, seed=seed), policy, episodes) for m in modes}
    env = start_workers(datamodule, modes, workers, seed)
    try:
        return run_mode_episodes(env, policy, modes, episodes, seed)[0]
    finally:
        stop_workers(env)


def results_table(per_checkpoint: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """One row per mode. One checkpoint: mean ± std over episodes; several (seeds): mean ± std of the
    per-seed means, as DMC-GB tables report."""
    modes = list(next(iter(per_checkpoint.values())))
    rows = []
    for mode in modes:
        if len(per_checkpoint) == 1:
            mean, std = summarize(next(iter(per_checkpoint.values()))[mode])
        else:
            mean, std = summarize([statistics.fmean(r[mode]) for r in per_checkpoint.values()])
        episodes = sum(len(r[mode]) for r in per_checkpoint.values())
        rows.append(
            {
                "mode": mode,
                "return_mean": mean,
                "return_std": std,
                "seeds": len(per_checkpoint),
                "episodes": episodes,
            }
        )
    return rows


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| mode | return | seeds | episodes |", "|---|---|---|---|"]
    lines += [
        f"| {r['mode']} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | {r['seeds']} | {r['episodes']} |"
        for r in rows
    ]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def checkpoint_run(path: str | Path) -> tuple[str, str] | None:
    """The (run id, tracking URI) a checkpoint was trained in, as `RecordRunId` stored it."""
    info = torch.load(path, map_location="cpu", weights_only=False).get("mlflow")
    return (info["run_id"], info["tracking_uri"]) if info else None


def log_tables_to_runs(
    runs: Sequence[tuple[str, str]], files: Sequence[Path], rows: list[dict[str, Any]]
) -> None:
    """Attach the tables (and final metrics) to MLflow runs, given as (run id, tracking URI); a run whose
    sqlite store is gone is skipped with a warning (an empty database is not created in its place)."""
    from sgqn.app.tracking import missing_store, open_client

    for run_id, tracking_uri in dict.fromkeys(runs):  # once per run, in order
        missing = missing_store(tracking_uri)
        if missing:
            log.warning("run %s: its MLflow store %s does not exist; tables not logged", run_id, missing)
            continue
        client = open_client(tracking_uri)
        for file in files:
            client.log_artifact(run_id, str(file), artifact_path="evaluation")
        for row in rows:
            if not math.isnan(row["return_mean"]):
                client.log_metric(run_id, f"final/{row['mode']}/return_mean", row["return_mean"])


def evaluate_parser() -> argparse.ArgumentParser:
    from sgqn.app.tracking import default_tracking_uri
    from sgqn.envs.names import DISTRACTING_CS_INTENSITIES, MODES

    names = [m if m != "distracting_cs" else "distracting_cs@<intensity>" for m in MODES]
    intensities = ", ".join(map(str, DISTRACTING_CS_INTENSITIES))

    def mode(value: str) -> str:
        # Fails at parse time rather than after loading the first checkpoint.
        name, at, intensity = value.partition("@")
        if name not in MODES or bool(at) != (name == "distracting_cs"):
            raise argparse.ArgumentTypeError(f"unknown mode {value!r}; choose from {', '.join(names)}")
        if at:
            try:
                ok = any(abs(float(intensity) - i) < 1e-9 for i in DISTRACTING_CS_INTENSITIES)
            except ValueError:
                ok = False
            if not ok:
                raise argparse.ArgumentTypeError(f"{value!r}: the intensity is one of {intensities}")
        return value

    parser = argparse.ArgumentParser(
        prog="sgqn evaluate",
        description="Evaluate checkpoints in the train env and DMC-GB test modes; write results.{csv,md}\n"
        "and attach them (and final/<mode>/return_mean) to each checkpoint's MLflow run.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  sgqn evaluate --run my-run-name --modes train video_hard --episodes 10\n"
        "  sgqn evaluate --run RUN_ID_SEED0 --run RUN_ID_SEED1 --experiment sgqn\n"
        "  sgqn evaluate --ckpt seed0.ckpt seed1.ckpt seed2.ckpt --episodes 100",
    )
    parser.add_argument(
        "--ckpt",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="checkpoint file(s); several = seeds of one method (mean ± std over seeds)",
    )
    parser.add_argument(
        "--run",
        nargs="+",
        action="extend",
        default=[],
        metavar="RUN",
        help="MLflow run id(s) or name(s) (a name means its newest run), repeatable; each run's "
        "checkpoint is found in the folder its checkpoint_dir tag names, else downloaded from its "
        "artifacts (when trained with --trainer.logger.init_args.log_model true)",
    )
    parser.add_argument(
        "--which",
        default="last",
        help="which checkpoint of each --run: last, or a file name such as agent_steps=100000",
    )
    parser.add_argument(
        "--experiment",
        default=None,
        help="look --run names up in this MLflow experiment only; None searches all",
    )
    parser.add_argument(
        "--tracking-uri",
        default=default_tracking_uri(),
        help="MLflow tracking URI where --run is looked up ($MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        type=mode,
        default=list(DEFAULT_MODES),
        metavar="MODE",
        help=f"modes to evaluate in, from {{{', '.join(names)}}}, intensity in {{{intensities}}}",
    )
    parser.add_argument("--episodes", type=int, default=100, help="episodes per mode and checkpoint")
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="folder for results.csv and results.md"
    )
    parser.add_argument(
        "--seed-offset",
        type=int,
        default=EVAL_SEED_OFFSET + 1,
        help="added to each checkpoint's training seed to seed the eval envs (distinct from the "
        "training env's and from the evaluations during fit)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="env processes per mode, every mode's episodes at once (0: one after another, in this process)",
    )
    parser.add_argument("--no-log", action="store_true", help="do not attach the tables to the MLflow runs")
    return parser


def evaluate_main(argv: Sequence[str]) -> None:
    """`sgqn evaluate`. An unknown run, or a tracking store that does not exist (nothing is created in
    its place), is a one-line `ConfigError` naming the store's absolute URI."""
    from sgqn.app.errors import ConfigError
    from sgqn.app.tracking import absolute_uri, find_checkpoint, missing_store, open_client, resolve_run

    parser = evaluate_parser()
    args = parser.parse_args(list(argv))
    if not args.ckpt and not args.run:
        parser.error("give checkpoints with --ckpt PATH ... and/or MLflow runs with --run RUN ...")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    runs: dict[str, tuple[str, str] | None] = {p: None for p in args.ckpt}  # None: read from the file
    if args.run:
        uri = absolute_uri(args.tracking_uri)  # what the messages cite
        missing = missing_store(uri)
        if missing:
            raise ConfigError(
                f"--run {args.run[0]}: no MLflow store at {missing} (the file does not exist); run in the "
                "folder that holds mlflow.db, or give --tracking-uri"
            )
        client = open_client(uri)
        for run in args.run:
            try:
                run_id = resolve_run(client, run, args.experiment).info.run_id
                found = find_checkpoint(run_id, uri, args.which)
            except (LookupError, FileNotFoundError) as err:  # one line, not a traceback
                raise ConfigError(f"--run {run}: {err}") from None
            log.info("run %s: %s", run, found)
            runs[str(found)] = (run_id, uri)
    per_checkpoint = {
        p: evaluate_checkpoint(p, args.modes, args.episodes, args.seed_offset, args.workers) for p in runs
    }
    rows = results_table(per_checkpoint)
    files = write_tables(rows, args.out)
    print(files[1].read_text())
    if args.no_log:
        return
    targets = []
    for path, run_info in runs.items():
        run_info = run_info or checkpoint_run(path)
        if run_info is None:
            log.warning("%s records no MLflow run; tables not logged", path)
        else:
            targets.append(run_info)
    log_tables_to_runs(targets, files, rows)
