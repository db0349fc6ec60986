"""A callback the sweep test adds to every trial: the first trial to reach `agent_steps` SIGKILLs its Ray
worker (its parent process), once per sweep, as a preempted node or an OOM kill would."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class KillWorkerOnce(Callback):
    def __init__(self, agent_steps: int, marker: str) -> None:
        self.agent_steps, self.marker = agent_steps, marker

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.datamodule.stats.agent_steps < self.agent_steps:  # type: ignore[attr-defined]
            return
        try:  # exactly one trial of the sweep wins this, on its first attempt only
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, Path.cwd().name.encode())  # the trial's folder name = the trial's name
        os.close(fd)
        os.kill(os.getppid(), signal.SIGKILL)  # the worker; this process follows (PR_SET_PDEATHSIG)


class KillWorkerOnceRecordingStarts(KillWorkerOnce):
    """`KillWorkerOnce` that also appends, to ``starts.txt`` in the trial's folder (its working directory),
    the agent step each attempt starts training at: 0, then the step of the checkpoint a retry resumed."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with open("starts.txt", "a") as file:
            file.write(f"{trainer.datamodule.stats.agent_steps}\n")  # type: ignore[attr-defined]
