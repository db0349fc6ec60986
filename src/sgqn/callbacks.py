"""Training-time callbacks: env progress in the progress bar and MLflow; checkpoints in agent steps."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class TrainingProgress(Callback):
    """Log agent steps, episode return, env frames/s and updates/s (MLflow step = agent steps).

    Args:
        every_env_steps: how often (in agent steps) the env metrics are sent to the loggers.
    """

    def __init__(self, every_env_steps: int = 250) -> None:
        self.every_env_steps = every_env_steps
        self._next = every_env_steps
        self._last_time = time.perf_counter()
        self._last_updates = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stats = trainer.datamodule.stats  # type: ignore[attr-defined]
        bar = {"env_steps": float(stats.env_steps)}
        if not math.isnan(stats.last_episode_return):
            bar["return"] = stats.last_episode_return
        if not math.isnan(stats.fps):
            bar["fps"] = stats.fps
        pl_module.log_dict(bar, prog_bar=True, logger=False, on_step=True)
        if stats.env_steps < self._next:
            return
        self._next = stats.env_steps + self.every_env_steps
        now = time.perf_counter()
        metrics = {
            "env/steps": float(stats.env_steps),
            "env/episodes": float(stats.episodes),
            "env/fps": stats.fps,
            "train/updates": float(stats.updates),
            "train/updates_per_s": (stats.updates - self._last_updates) / (now - self._last_time),
        }
        if not math.isnan(stats.last_episode_return):
            metrics["train/episode_return"] = stats.last_episode_return
        self._last_time, self._last_updates = now, stats.updates
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step=stats.env_steps)


class EnvStepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` on an agent-step cadence (`trainer.global_step` counts optimizer steps).

    Args:
        every_env_steps: save every this many agent steps (and at the end of fit).
        dirpath: checkpoint folder; default `<default_root_dir>/<experiment id>/<run id>/checkpoints`.
        filename: `ModelCheckpoint` name pattern; `env_steps` is available.
        save_last: also keep `last.ckpt`.
        save_top_k: how many to keep (-1: all).
    """

    def __init__(
        self,
        every_env_steps: int = 50_000,
        dirpath: str | None = None,
        filename: str = "{env_steps}",
        save_last: bool = True,
        save_top_k: int = -1,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename, save_last=save_last, save_top_k=save_top_k)
        self.every_env_steps = every_env_steps
        self._next_save = every_env_steps

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        steps = trainer.datamodule.stats.env_steps  # type: ignore[attr-defined]
        if self.every_env_steps <= 0 or steps < self._next_save:
            return
        self._next_save = steps - steps % self.every_env_steps + self.every_env_steps
        candidates = self._monitor_candidates(trainer)
        candidates["env_steps"] = torch.tensor(steps)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, Any]:
        candidates = super()._monitor_candidates(trainer)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "stats"):
            candidates["env_steps"] = torch.tensor(datamodule.stats.env_steps)
        return candidates

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "next_save": self._next_save}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._next_save = state_dict.get("next_save", self._next_save)
