"""Runs that fail loudly: diverged training stops with a message naming the fix, and runs whose process
died are not left RUNNING in MLflow forever.

- `all_finite`: one fused finiteness check of every loss an update optimised (one host sync).
- `check_action`: the policy never hands the simulator a non-finite action.
- `check_weights`: no checkpoint is written with non-finite weights.
- `mark_dead_runs_killed`: MLflow has no heartbeat; a run whose process is gone is marked KILLED.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sgqn.tracking import CHECKPOINT_DIR_TAG, sqlite_path

if TYPE_CHECKING:
    from lightning.pytorch import Trainer
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger("sgqn.guards")
PID_TAG = "pid"  # the training process of a run, next to the `host` tag
HOST_TAG = "host"
# The learning rate to lower when an optimised loss diverges.
LR_OPTION = {
    "loss_critic": "--model.critic_lr",
    "loss_actor": "--model.actor_lr",
    "loss_alpha": "--model.alpha_lr",
    "loss_attribution": "--model.aux_lr",
}
# MLflow retries a dead tracking server for minutes by default (7 retries, 120 s timeout each).
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrainingDiverged(RuntimeError):
    """Losses, weights or actions became non-finite; the message names where and the fix."""

    exit_code = 3


def set_mlflow_http_defaults() -> None:
    """Short MLflow HTTP retries and timeouts unless the user set them."""
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


# --------------------------------------------------------------------------- non-finite values


def all_finite(losses: Iterable[Tensor]) -> bool:
    """One fused `isfinite` over scalar losses: a single host sync however many there are."""
    values = [v.detach().reshape(()) for v in losses]
    return not values or bool(torch.isfinite(torch.stack(values)).all())


def nonfinite_message(
    losses: Mapping[str, Tensor], update: int, env_step: int | None, learning_rates: Mapping[str, float]
) -> str:
    """``loss_critic is nan at update 24 (agent step 124): lower --model.critic_lr (now 1e+09) …``.

    `losses` in the order they were stepped: a loss can diverge from an earlier step's weights in the
    same update, so the learning rates of the first non-finite loss and of the steps before it are named.
    `learning_rates`: the current value of each `LR_OPTION` option (``critic_lr``: 1e9, …).
    """
    bad = {k: float(v) for k, v in losses.items() if not bool(torch.isfinite(v))}
    names = list(losses)
    suspects = names[: names.index(next(iter(bad))) + 1] if bad else names
    options = [LR_OPTION[k] for k in suspects if k in LR_OPTION]
    now = {o: learning_rates.get(o.rpartition(".")[2]) for o in options}
    lower = " or ".join(o if now[o] is None else f"{o} (now {now[o]:g})" for o in options)
    values = ", ".join(f"{k} is {v}" for k, v in bad.items())
    where = f"update {update}" + (f" (agent step {env_step})" if env_step is not None else "")
    return f"{values} at {where}: lower {lower}, or pass --model.on_nonfinite skip to skip such updates"


def check_action(action: Tensor) -> None:
    """The simulator must never get a NaN/inf action (MuJoCo fails later with `mjWARN_BADCTRL`)."""
    if not bool(torch.isfinite(action).all()):
        raise TrainingDiverged(
            "the policy's action is not finite (its weights diverged): lower --model.actor_lr and "
            "--model.critic_lr; no checkpoint is written from these weights"
        )


def check_weights(state: Mapping[str, Tensor], where: str) -> None:
    """Refuse to save `state` (a state dict) with non-finite floating-point tensors."""
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise TrainingDiverged(
            f"refusing to save a checkpoint {where}: {len(bad)} weight tensors are not finite ({bad[0]}, …); "
            "lower the learning rates (--model.critic_lr, --model.actor_lr); the previous checkpoint is kept"
        )


# --------------------------------------------------------------------------- runs whose process died


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
    "LR_OPTION",
    "TrainingDiverged",
    "all_finite",
    "check_action",
    "check_weights",
    "mark_dead_runs_killed",
    "mark_dead_runs_of",
    "nonfinite_message",
    "process_alive",
    "set_mlflow_http_defaults",
]
