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


class LongerRun(Callback):
    """A finished run resumed with a longer `--data.num_agent_steps` continues to the new length.

    Lightning's loop state in a finished run's checkpoint says that its one epoch (the whole run: the
    data stream ends at `num_agent_steps`) saw its last batch and was processed, and a resume from it
    would stop at once. When the data module, restored just before, has agent steps left to run, the
    state is put back to that of a run interrupted mid-epoch, which resumes.
    """

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        data = getattr(trainer, "datamodule", None)  # (set by `fit`; not in the stubs)
        schedule, stats = getattr(data, "schedule", None), getattr(data, "stats", None)
        if schedule is None or stats is None or stats.agent_steps >= schedule.num_agent_steps:
            return
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        batches, epochs = loop.get("epoch_loop.batch_progress"), loop.get("epoch_progress")
        if isinstance(batches, dict):
            batches["is_last_batch"] = False
        if isinstance(epochs, dict):
            for counts in epochs.values():  # "total", "current"
                counts["processed"] = counts["completed"]


def find_last_checkpoint(root: str | Path) -> Path | None:
    """The newest `last.ckpt` under `root` (run folders: ``<root>/<experiment id>/<run id>/checkpoints``)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [p for p in root.rglob(LAST) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


# --------------------------------------------------------------------------- what a resume may change

# The options a resume may give other values than the checkpoint's (docs/resume.md): the run's length
# and how the update is computed. Every option outside `model.*` and `data.*` may change too (evaluation,
# checkpoint and progress cadences, the trainer's), except the MLflow logger's tracking URI and
# experiment (`sgqn.app.fit.check_same_tracking`). The other `model.*` and `data.*` options define the run.
RESUMABLE = ("data.num_agent_steps", "model.speed.")
# Hyper-parameters set from another option (`SGQNCLI.add_arguments_to_parser`'s links): the option the
# user sets is the one compared and named.
LINKED = (
    "model.observation_shape",
    "model.action_dim",
    "model.task",
    "model.overlay_root",
    "data.discount",
    "data.learner",
)


def _flat(prefix: str, values: Any) -> dict[str, Any]:
    """``{"model.sgqn.quantile": 0.98, …}`` from nested hyper-parameters (LightningCLI's ``_…`` keys left
    out)."""
    if not isinstance(values, dict):
        return {prefix: values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if not str(key).startswith("_"):
            out |= _flat(f"{prefix}.{key}", value)
    return out


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _replay_capacity(data: dict[str, Any]) -> Any:
    """The replay capacity `data` (flat ``data.*`` hyper-parameters) used: None means the whole run."""
    from sgqn.data.replay import default_replay_capacity

    capacity, steps = data.get("data.replay_capacity"), data.get("data.num_agent_steps")
    return default_replay_capacity(int(steps)) if capacity is None and steps is not None else capacity


def kept_replay_capacity(checkpoint: dict[str, Any]) -> int | None:
    """The replay capacity of the run a checkpoint belongs to (None when it does not say). A resume keeps
    it: with the default capacity (the whole run) a longer `data.num_agent_steps` does not grow the
    checkpointed buffer."""
    data = _flat("data", checkpoint.get("datamodule_hyper_parameters") or {})
    capacity = _replay_capacity(data)
    return None if capacity is None else int(capacity)


def resume_conflicts(
    checkpoint: dict[str, Any], model_hparams: Any, data_hparams: Any
) -> list[tuple[str, Any, Any]]:
    """The options whose values (`model_hparams`, `data_hparams`: those of the module and data module
    built for the resume) differ from `checkpoint`'s and may not change on a resume: ``(option, old,
    new)``. Options only one side knows (another version of sgqn) are not compared."""
    old = _flat("model", checkpoint.get("hyper_parameters") or {})
    old |= _flat("data", checkpoint.get("datamodule_hyper_parameters") or {})
    new = _flat("model", dict(model_hparams)) | _flat("data", dict(data_hparams))
    for side in (old, new):
        if "data.replay_capacity" in side:
            side["data.replay_capacity"] = _replay_capacity(side)
    return [
        (key, old[key], new[key])
        for key in sorted(old.keys() & new.keys())
        if key not in LINKED and not key.startswith(RESUMABLE) and _plain(old[key]) != _plain(new[key])
    ]


def conflicts_message(where: str, conflicts: list[tuple[str, Any, Any]]) -> str:
    """One line: which options differ from the run's and what to do instead."""
    changes = ", ".join(f"{key} {old!r} → {new!r}" for key, old, new in conflicts)
    return (
        f"{where} belongs to a run trained with other settings: {changes}; a resume may change only "
        "data.num_agent_steps, model.speed.* and the eval, checkpoint, progress and trainer options "
        "(not the MLflow tracking URI or experiment): resume with the run's settings, or start a new "
        "run in another --trainer.default_root_dir (docs/resume.md)"
    )


__all__ = [
    "RESUMABLE",
    "AtomicCheckpointIO",
    "GlobalRngState",
    "LongerRun",
    "conflicts_message",
    "find_last_checkpoint",
    "kept_replay_capacity",
    "load_checkpoint_file",
    "resume_conflicts",
]
