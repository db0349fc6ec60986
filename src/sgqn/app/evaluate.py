"""`sgqn evaluate`: returns of checkpoints (or MLflow runs' checkpoints) in the train env and the test
modes, as tables attached to their runs. The episodes are run as during `fit` (`sgqn.evaluation`).

Beside the returns, each checkpoint's saliency is scored against the task's bodies as during `fit`
(`sgqn.evaluation.generalization.saliency_report`: precision, recall, TID and attribution mass on the
bodies, of the critic's mask and of SGQN's predicted one), in every mode evaluated, on the same physics
states of one rollout in the train env.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sgqn.app.console import HelpFormatter
from sgqn.app.evaluation_tables import SALIENCY_SCORES, results_table, write_tables
from sgqn.evaluation.episodes import (
    DEFAULT_MODES,
    EVAL_SEED_OFFSET,
    episode_returns,
    run_mode_episodes,
    start_workers,
    stop_workers,
)

if TYPE_CHECKING:
    from sgqn.data.datamodule import DMCDataModule
    from sgqn.training.module import AgentModule

log = logging.getLogger("sgqn.evaluation")

DEFAULT_SALIENCY_STATES = 8  # as `sgqn fit`'s --eval.saliency_states


def load_checkpoint(path: str) -> tuple[AgentModule, DMCDataModule]:
    """The agent stored in a checkpoint (in eval mode, on the CPU) and the data settings it trained with."""
    from sgqn.data.datamodule import DMCDataModule
    from sgqn.training.module import AgentModule

    module = AgentModule.load_from_checkpoint(path, map_location="cpu")
    module.eval()
    return module, DMCDataModule.from_checkpoint(path)


def checkpoint_returns(
    module: AgentModule,
    datamodule: DMCDataModule,
    modes: Sequence[str],
    episodes: int,
    seed_offset: int,
    workers: int = 0,
) -> dict[str, list[float]]:
    """Returns per mode of `module`'s deterministic policy in `datamodule`'s envs, seeded from its
    training seed + `seed_offset`; `workers` > 0: in that many env processes per mode, all modes at once
    (`sgqn.evaluation`)."""
    policy = module.policy_module(deterministic=True)
    seed = datamodule.env_settings.seed + seed_offset
    if not workers:
        return {m: episode_returns(datamodule.make_env(mode=m, seed=seed), policy, episodes) for m in modes}
    env = start_workers(datamodule, modes, workers, seed)
    try:
        return run_mode_episodes(env, policy, modes, episodes, seed)[0]
    finally:
        stop_workers(env)


def checkpoint_saliency(
    module: AgentModule,
    datamodule: DMCDataModule,
    modes: Sequence[str],
    seed_offset: int,
    num_states: int = DEFAULT_SALIENCY_STATES,
) -> dict[str, dict[str, float]]:
    """Per mode of `modes`, `module`'s saliency scored against the task's bodies: one `saliency_report`
    (as during `fit`) on `num_states` physics states of a rollout of the deterministic policy in the train
    env (seeded as the episodes), each seen in every mode. Returns mode → {``saliency_precision``, …,
    ``predicted_mass_on_body``} (`SALIENCY_SCORES`); a score not defined on these states (nothing
    predicted salient, no predictor: not SGQN) is absent. The states need the train env: it is built even
    when "train" is not among `modes`, and its scores are then left out."""
    from sgqn.evaluation.generalization import saliency_report

    settings = datamodule.env_settings
    seed = settings.seed + seed_offset
    envs = {m: datamodule.make_env(mode=m, seed=seed) for m in dict.fromkeys(["train", *modes])}
    try:
        report = saliency_report(
            module,
            envs,
            module.policy_module(deterministic=True),
            frame_stack=settings.frame_stack,
            num_states=num_states,
            grid_states=1,
            task=settings.task,
        )
    finally:
        for env in envs.values():
            env.close()
    scores: dict[str, dict[str, float]] = {mode: {} for mode in modes}
    for who, focus in (("saliency", report.focus), ("predicted", report.predicted_focus)):
        for mode in modes:
            found = focus.get(mode, {})
            scores[mode] |= {f"{who}_{k}": v for k, v in found.items() if math.isfinite(v)}
    return scores


def evaluate_checkpoint(
    path: str, modes: Sequence[str], episodes: int, seed_offset: int, workers: int = 0
) -> dict[str, list[float]]:
    """Returns per mode for the policy stored in one checkpoint, with the env settings it trained on;
    `workers` > 0: in that many env processes per mode, all modes at once (`sgqn.evaluation`)."""
    module, datamodule = load_checkpoint(path)
    return checkpoint_returns(module, datamodule, modes, episodes, seed_offset, workers)


def checkpoint_run(path: str | Path) -> tuple[str, str] | None:
    """The (run id, tracking URI) a checkpoint was trained in, as `RecordRunId` stored it."""
    info = torch.load(path, map_location="cpu", weights_only=False).get("mlflow")
    return (info["run_id"], info["tracking_uri"]) if info else None


def log_tables_to_runs(
    runs: Sequence[tuple[str, str]], files: Sequence[Path], rows: list[dict[str, Any]]
) -> None:
    """Attach the tables (and final metrics) to MLflow runs, given as (run id, tracking URI); a run whose
    sqlite store is gone is skipped with a warning (an empty database is not created in its place)."""
    from sgqn.app.store import missing_store, open_client

    for run_id, tracking_uri in dict.fromkeys(runs):  # once per run, in order
        missing = missing_store(tracking_uri)
        if missing:
            log.warning("run %s: its MLflow store %s does not exist; tables not logged", run_id, missing)
            continue
        client = open_client(tracking_uri)
        for file in files:
            client.log_artifact(run_id, str(file), artifact_path="evaluation")
        for row in rows:
            for key in ("return_mean", *SALIENCY_SCORES):
                value = row.get(key)
                if value is not None and math.isfinite(value):
                    client.log_metric(run_id, f"final/{row['mode']}/{key}", value)


def evaluate_parser() -> argparse.ArgumentParser:
    from sgqn.app.store import default_tracking_uri
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
        "and attach them (and final/<mode>/return_mean) to each checkpoint's MLflow run. Beside the\n"
        "returns, the critic's saliency on the task's bodies per mode (precision, TID, mass on body; and\n"
        "SGQN's predicted mask's), as `sgqn fit` logs eval/<mode>/saliency_*.",
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
    parser.add_argument(
        "--saliency-states",
        type=int,
        default=DEFAULT_SALIENCY_STATES,
        help="physics states of a train-env rollout on which each checkpoint's saliency is scored in "
        "every mode (0: no saliency scores)",
    )
    parser.add_argument("--no-log", action="store_true", help="do not attach the tables to the MLflow runs")
    return parser


def evaluate_main(argv: Sequence[str]) -> None:
    """`sgqn evaluate`. An unknown run, or a tracking store that does not exist (nothing is created in
    its place), is a one-line `ConfigError` naming the store's absolute URI."""
    from sgqn.app.errors import ConfigError
    from sgqn.app.runs import find_checkpoint, resolve_run
    from sgqn.app.store import absolute_uri, missing_store, open_client

    parser = evaluate_parser()
    args = parser.parse_args(list(argv))
    if not args.ckpt and not args.run:
        parser.error("give checkpoints with --ckpt PATH ... and/or MLflow runs with --run RUN ...")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.saliency_states < 0:
        parser.error(f"--saliency-states must be >= 0, got {args.saliency_states}")
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
    per_checkpoint: dict[str, dict[str, list[float]]] = {}
    saliency: dict[str, dict[str, dict[str, float]]] = {}
    for path in runs:
        module, datamodule = load_checkpoint(path)
        per_checkpoint[path] = checkpoint_returns(
            module, datamodule, args.modes, args.episodes, args.seed_offset, args.workers
        )
        if args.saliency_states:
            saliency[path] = checkpoint_saliency(
                module, datamodule, args.modes, args.seed_offset, args.saliency_states
            )
    rows = results_table(per_checkpoint, saliency if args.saliency_states else None)
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
