"""Runs whose process died are not left RUNNING in MLflow forever (MLflow has no heartbeat).

- `mark_dead_runs_killed`: a RUNNING run whose process on this host is gone is marked KILLED.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sgqn.app.runs import CHECKPOINT_DIR_TAG
from sgqn.app.store import sqlite_path

if TYPE_CHECKING:
    from lightning.pytorch import Trainer
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger("sgqn.runs")
PID_TAG = "pid"  # the training process of a run, next to the `host` tag
HOST_TAG = "host"


def process_alive(pid: int, since: float) -> bool:
    """Is `pid` a live Python (`sgqn`) process that existed at `since` (epoch seconds)?

    A reused pid (a process started after `since`) or a non-Python process does not own the run.
    """
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or process.create_time() > since + 1.0:
            return False
        command = " ".join(process.cmdline()).lower()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # cannot tell: leave the run alone
    return "python" in command or "sgqn" in command


def run_is_dead(run: Run, host: str) -> bool:
    """A RUNNING run started on `host` whose recorded process is gone (runs without a pid: unknown)."""
    tags = run.data.tags
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) != host or not pid.isdigit():
        return False
    return not process_alive(int(pid), run.info.start_time / 1000)


def _under(folder: str | None, roots: Iterable[Path]) -> bool:
    return bool(folder) and any(Path(str(folder)).resolve().is_relative_to(root) for root in roots)


def mark_dead_runs_killed(
    client: MlflowClient, roots: Iterable[str | Path], exclude: str | None = None
) -> list[Run]:
    """Mark KILLED the RUNNING runs of this store whose `checkpoint_dir` is under one of `roots` (the
    output directories of the run starting now) and whose process on this host is gone.

    `exclude`: a run id left alone (the run being resumed). Returns the runs marked; prints one line
    per run on stderr.
    """
    folders = [Path(r).expanduser().resolve() for r in roots]
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=10_000)
    host = socket.gethostname()
    dead = [
        run
        for run in running
        if run.info.run_id != exclude
        and _under(run.data.tags.get(CHECKPOINT_DIR_TAG), folders)
        and run_is_dead(run, host)
    ]
    for run in dead:
        client.set_terminated(run.info.run_id, "KILLED")
        sys.stderr.write(
            f"sgqn: run {run.info.run_name} ({run.info.run_id}) was still RUNNING but its process "
            f"{run.data.tags[PID_TAG]} on {host} is gone: marked KILLED\n"
        )
    return dead


def mark_dead_runs_of(trainer: Trainer) -> None:
    """`mark_dead_runs_killed` for a trainer about to start: its output and checkpoint folders, each
    MLflow logger's store (an absent sqlite file has no runs; it is not created here)."""
    from lightning.pytorch.loggers import MLFlowLogger

    folders = (getattr(c, "dirpath", None) for c in trainer.checkpoint_callbacks)
    roots = [trainer.default_root_dir, *(f for f in folders if f)]
    for logger in trainer.loggers:
        if not isinstance(logger, MLFlowLogger):
            continue
        database = sqlite_path(logger._tracking_uri)
        if database is not None and not database.exists():
            continue
        try:
            mark_dead_runs_killed(logger._mlflow_client, roots, exclude=logger._run_id)
        except Exception as err:  # housekeeping: never the reason a run does not start
            log.warning("could not look for dead runs in %s: %s", logger._tracking_uri, err)


__all__ = [
    "mark_dead_runs_killed",
    "mark_dead_runs_of",
    "process_alive",
]
