"""What `sgqn` prints: top-level help, one-line errors with suggestions and the end-of-fit summary
(the dependencies' console noise is filtered in `sgqn.app.quiet`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

PROG = "sgqn"

# (one line each; `sgqn <subcommand> --help` has the details)
SUBCOMMANDS: dict[str, str] = {
    "fit": "train SAC / SVEA / SGQN on a DMC task, tracked in MLflow (sgqn fit -c conf/quickstart.yaml)",
    "evaluate": "evaluate checkpoints in the train env and the DMC-GB test modes; writes results tables",
    "sweep": "run a grid of fit trials (algorithms x tasks x seeds) on Ray, locally or on a cluster",
    "report": "the paper's table (mean ± std over seeds per task, method, mode) and curves of a sweep",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The argparse subcommands' help: defaults after every flag's help; the examples in the epilog keep
    their line breaks."""


def help_text() -> str:
    width = max(len("-h, --help"), *map(len, SUBCOMMANDS))
    lines = [
        f"usage: {PROG} [--debug] <subcommand> [options]",
        "",
        "SAC, SVEA and SGQN on the DeepMind Control Generalization Benchmark (TorchRL + Lightning + MLflow).",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width}}  this message; `{PROG} <subcommand> --help` lists its options",
        f"  {'--debug':<{width}}  show the traceback of errors (also SGQN_DEBUG=1)",
    ]
    return "\n".join(lines) + "\n"


def one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split())


def fail(message: str, hint: str | None = None) -> NoReturn:
    """``sgqn: error: <message>`` (and an optional hint line) on stderr, exit status 2 (usage error)."""
    sys.stderr.write(f"{PROG}: error: {message}\n")
    if hint:
        sys.stderr.write(f"{hint}\n")
    raise SystemExit(2)


# --------------------------------------------------------------------------- the end of `fit`


MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def is_server(tracking_uri: str) -> bool:
    """A tracking server (its own UI), not a store `mlflow ui` must be started on."""
    return tracking_uri.startswith(("http://", "https://"))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI (a tracking server's own, else `mlflow ui`'s default address), in
    its model-training view: MLflow 3's UI opens in its GenAI view (traces, prompts) unless the link says
    ``workflowType=machine_learning`` or the browser remembers the switch (docs/mlflow.md)."""
    base = tracking_uri.rstrip("/") if is_server(tracking_uri) else MLFLOW_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def fit_summary(trainer: Any, started: float) -> str:
    """Where the run went and how it ended: run, experiment, checkpoints, artifacts, final returns,
    wall time and the command that opens it in the MLflow UI."""
    from lightning.pytorch.loggers import MLFlowLogger

    from sgqn.app.callbacks import EnvStepCheckpoint
    from sgqn.app.eval_callback import EvaluationCallback
    from sgqn.app.store import absolute_uri

    lines = [f"[{PROG}] fit finished"]
    loggers = [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger) and lg._run_id is not None]
    runs = [(logger, logger.experiment.get_run(logger.run_id)) for logger in loggers]
    for logger, run in runs:
        lines += [
            f"  run:         {run.info.run_name} (id {run.info.run_id})",
            f"  experiment:  {logger._experiment_name} (id {run.info.experiment_id})",
        ]
    for callback in trainer.callbacks:
        if isinstance(callback, EnvStepCheckpoint) and callback.dirpath:
            lines.append(f"  checkpoints: {Path(callback.dirpath).resolve()}")
    for _, run in runs:
        lines.append(f"  artifacts:   {run.info.artifact_uri}")
    for callback in trainer.callbacks:
        if isinstance(callback, EvaluationCallback) and callback.history:
            last = callback.history[-1]
            returns = ", ".join(
                f"{key.split('/')[1]} {value:.1f}"
                for key, value in last.items()
                if key.startswith("eval/") and key.endswith("/return_mean")
            )
            lines.append(f"  final eval:  return at {last['agent_steps']:.0f} agent steps: {returns}")
    lines.append(f"  wall time:   {format_seconds(time.perf_counter() - started)}")
    for logger, run in runs:
        if not is_server(logger._tracking_uri):
            lines.append(f"  view:        mlflow ui --backend-store-uri {absolute_uri(logger._tracking_uri)}")
        lines.append(
            f"  then open:   {run_url(logger._tracking_uri, run.info.experiment_id, run.info.run_id)}"
        )
    return "\n".join(lines)


__all__ = [
    "SUBCOMMANDS",
    "fail",
    "fit_summary",
    "help_text",
    "one_line",
    "run_url",
]
