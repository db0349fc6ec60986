"""Checkpoints a killed run can resume from exactly: atomic writes, the global RNGs, and finding them.

What a checkpoint holds (one agent-step clock, saved once): Lightning's usual content (weights, target
nets, every optimizer, `log_alpha`, the `update_step` counter, callback states such as the evaluation,
checkpoint and progress cadences), the data module's state (`DMCDataModule.state_dict`: stream counters,
replay — on disk only its metadata —, the env mid-episode, the collector), the global RNGs
(`GlobalRngState`) and the MLflow run id (`sgqn.app.tracking.RecordRunId`).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer

from sgqn.app.errors import ConfigError

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary name in the same folder, fsync, rename: a kill during a save leaves the
    previous `last.ckpt` intact (a rename is atomic on POSIX filesystems). A missing or corrupt file is
    reported in one line naming it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            with partial.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        return load_checkpoint_file(path, map_location=map_location)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """`torch.load` of one of our checkpoints, with a one-line `ConfigError` for a missing or corrupt file.

    Loaded with `weights_only=True`: our checkpoints hold only tensors and plain values. `mmap`: map the
    tensors instead of reading them (a cheap look at a large checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        text = str(err)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:  # well formed, but holds an object that is not a tensor or a plain value
            raise ConfigError(
                f"checkpoint {path} holds {refused.group(1)}, which sgqn checkpoints never contain: "
                "it was not written by sgqn (or by an older version); it is not loaded"
            ) from err
        # Our own description: torch's text may advise `weights_only=False`, which is never the fix here.
        size = path.stat().st_size
        what = (
            "a damaged or truncated checkpoint archive"
            if zipfile.is_zipfile(path)
            else "not a checkpoint archive"
        )
        raise ConfigError(
            f"checkpoint {path} is corrupt or truncated ({size:,} bytes, {what}); "
            "resume from another one in its folder"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


class GlobalRngState(Callback):
    """Saves torch's, numpy's and Python's global generators (and CUDA's) in each checkpoint, and puts
    them back when training starts from one: random warm-up actions, exploration noise, replay sampling,
    augmentation and the SGQN mask's grey level all draw from them. The env and the evaluation envs have
    their own generators, saved with the data module."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "GlobalRngState"

    def state_dict(self) -> dict[str, Any]:
        # numpy's state as a tensor and plain values: checkpoints stay loadable with `weights_only=True`.
        name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        assert isinstance(keys, np.ndarray)
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, idx: int
    ) -> None:
        # Right before the first batch is pulled from the stream (the module pulls it in its training
        # step): after everything that seeds or draws at setup, as in the uninterrupted run.
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def find_last_checkpoint(root: str | Path) -> Path | None:
    """The newest `last.ckpt` under `root` (run folders: ``<root>/<experiment id>/<run id>/checkpoints``)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [p for p in root.rglob(LAST) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


__all__ = [
    "AtomicCheckpointIO",
    "GlobalRngState",
    "find_last_checkpoint",
    "load_checkpoint_file",
]
