"""A callback the resume tests add to a training subprocess: SIGKILL itself at a given agent step."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class KillAt(Callback):
    """`kill -9` of the training process once `agent_steps` agent steps are collected (no clean-up runs)."""

    def __init__(self, agent_steps: int) -> None:
        self.agent_steps = agent_steps

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.datamodule.stats.agent_steps >= self.agent_steps:  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGKILL)
