"""Training-time callbacks: env progress in MLflow; checkpoints in agent steps."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from sgqn.app.runs import CHECKPOINT_DIR_TAG
from sgqn.app.schedule import Cadence, agent_steps


class TrainingProgress(Callback):
    """Log agent steps, episode return, env frames/s and updates/s (MLflow step = agent steps).

    The terminal shows them in `sgqn.app.progress.AgentStepProgressBar`, which the CLI adds.

    Args:
        every_agent_steps: how often (in agent steps) the env metrics are sent to the loggers.
        print_every_agent_steps: when the output is not a terminal, the progress bar prints a plain line
            every this many agent steps (0: every 5% of the run).
        status_file: also write the latest progress and evaluation returns to this JSON file (replaced
            atomically at the same cadence and at the end); `sgqn sweep` reads it for its live table.
    """

    def __init__(
        self, every_agent_steps: int = 250, print_every_agent_steps: int = 0, status_file: str | None = None
    ) -> None:
        self.every_agent_steps = every_agent_steps
        self.print_every_agent_steps = print_every_agent_steps
        self.status_file = status_file
        self.cadence = Cadence(every_agent_steps)
        self._last_time = time.perf_counter()
        self._last_updates = 0

    def state_dict(self) -> dict[str, Any]:
        return {"cadence": self.cadence.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cadence.load_state_dict(state_dict["cadence"])

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # updates/s from here: not from construction, and not from zero on resume
        self._last_time = time.perf_counter()
        self._last_updates = trainer.datamodule.stats.updates  # type: ignore[attr-defined]

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stats = trainer.datamodule.stats  # type: ignore[attr-defined]
        if not self.cadence.due(stats.agent_steps):
            return
        now = time.perf_counter()
        metrics = {
            "agent/steps": float(stats.agent_steps),
            "agent/episodes": float(stats.episodes),
            "agent/steps_per_s": stats.steps_per_s,
            "train/updates": float(stats.updates),
            "train/updates_per_s": (stats.updates - self._last_updates) / (now - self._last_time),
        }
        if not math.isnan(stats.last_episode_return):
            metrics["train/episode_return"] = stats.last_episode_return
        self._last_time, self._last_updates = now, stats.updates
        for logger in trainer.loggers:
            logger.log_metrics(
                {k: v for k, v in metrics.items() if not math.isnan(v)}, step=stats.agent_steps
            )
        self.write_status(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write_status(trainer)  # after every callback's on_train_end: the final evaluation included

    def write_status(self, trainer: Trainer) -> None:
        if self.status_file is None or not trainer.is_global_zero:
            return
        stats = trainer.datamodule.stats  # type: ignore[attr-defined]
        status: dict[str, Any] = {
            "agent_steps": stats.agent_steps,
            "total_steps": trainer.datamodule.schedule.num_agent_steps,  # type: ignore[attr-defined]
            "updates": stats.updates,
        }
        if not math.isnan(stats.last_episode_return):
            status["episode_return"] = stats.last_episode_return
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            history = getattr(callback, "history", None)
            if isinstance(history, list) and history and "agent_steps" in history[-1]:  # EvaluationCallback
                latest = history[-1]
                status["eval_step"] = int(latest["agent_steps"])
                status |= {k: v for k, v in latest.items() if k.endswith("/return_mean")}
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger) and logger._run_id is not None:
                status["run_id"] = logger._run_id
        path = Path(self.status_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(path)


class EnvStepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` on an agent-step cadence (`trainer.global_step` counts optimizer steps).

    When training starts, the folder's absolute path is recorded in each MLflow run as the
    ``checkpoint_dir`` tag, so `sgqn.app.runs.find_checkpoint` (``sgqn evaluate --run``) finds the
    checkpoints from the run without uploading them.

    Args:
        every_agent_steps: save every this many agent steps (and at the end of fit).
        dirpath: checkpoint folder; default `<default_root_dir>/<experiment id>/<run id>/checkpoints`.
        filename: `ModelCheckpoint` name pattern; `agent_steps` is available.
        save_last: also keep `last.ckpt`.
        save_top_k: how many to keep (-1: all).
    """

    def __init__(
        self,
        every_agent_steps: int = 50_000,
        dirpath: str | None = None,
        filename: str = "{agent_steps}",
        save_last: bool = True,
        save_top_k: int = -1,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename, save_last=save_last, save_top_k=save_top_k)
        self.every_agent_steps = every_agent_steps
        self.cadence = Cadence(every_agent_steps)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        steps = agent_steps(trainer)
        if not self.cadence.due(steps):
            return
        candidates = self._monitor_candidates(trainer)
        candidates["agent_steps"] = torch.tensor(steps)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, Any]:
        candidates = super()._monitor_candidates(trainer)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "stats"):
            candidates["agent_steps"] = torch.tensor(datamodule.stats.agent_steps)
        return candidates

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.dirpath is None or not trainer.is_global_zero:
            return
        folder = str(Path(self.dirpath).resolve())  # `setup` has resolved the default by now
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.set_tag(logger.run_id, CHECKPOINT_DIR_TAG, folder)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "cadence": self.cadence.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath and _same_folder(saved, self.dirpath):
            # The same folder, written relative (`outputs/…`) when saved and absolute now (a resume points
            # here with the checkpoint's absolute folder): Lightning would forget its `last.ckpt` and
            # write `last-v1.ckpt` beside it, which `--ckpt_path last` never finds.
            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                **{
                    key: _in_folder(state_dict[key], self.dirpath)
                    for key in ("best_model_path", "kth_best_model_path", "last_model_path")
                    if state_dict.get(key)
                },
                "best_k_models": {
                    _in_folder(k, self.dirpath): v for k, v in state_dict.get("best_k_models", {}).items()
                },
            }
        super().load_state_dict(state_dict)
        if "cadence" in state_dict:
            self.cadence.load_state_dict(state_dict["cadence"])


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _in_folder(path: str, folder: str | Path) -> str:
    """`path`'s file name in `folder` (the checkpoint folder under the name it now has)."""
    return str(Path(folder) / Path(path).name)
