"""Replay of pixel transitions that stores every frame once and stacks frames at sample time.

A stacked observation repeats each frame `frame_stack` times across consecutive transitions, and
`next_pixels` repeats it once more: storing stacks would cost ~127 KB per transition at 84×84×9. Here a
row holds one *newest* frame (21 KB) plus the transition's scalars, rows are written in stream order,
and the sampler returns windows of `frame_stack + n_step` rows that `StackFrames` turns back into
`pixels` / `("next", "pixels")`, repeating the first frame of an episode exactly as the env's
`CatFrames(padding="same")` does at reset.

With `n_step` n > 1 a sampled transition covers n consecutive transitions of its episode (its n-step
return, as DrQ-v2 learns from): the window's extra rows hold the later transitions' rewards and the
frames of the observation n steps on, and `StackFrames` adds the bootstrap factor `("next", "discount")`.
As DrQ-v2's replay, an episode's last n − 1 transitions start no sample (their n transitions would leave
the episode); with `n_step_partial_windows` they do, covering the m < n transitions left (bootstrap γ^m).

Rows follow one contiguous stream of transitions (one env, as DMC-GB trains). Each episode ends with a
closing row that holds the final next-frame and starts no transition.

Storage is RAM (`memory`, the default) or memory-mapped files (`disk`, TorchRL's `LazyMemmapStorage`).
A disk buffer's checkpoint is its metadata only: the files *are* the data. A row's id is its position in
the stream, so the sampler can tell which rows belong to the checkpointed buffer: rows a crashed run wrote
after its last checkpoint are never sampled before the resumed run rewrites them.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import psutil
import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from sgqn.data.rows import ROW, StackFrames, transitions_to_rows
from sgqn.data.sampler import FrameStackSampler
from sgqn.data.settings import ReplaySettings
from sgqn.data.storage import GatherMemmapStorage, GatherStorage


def bytes_per_row(frame_shape: tuple[int, int, int], action_dim: int) -> int:
    """Memory of one stored row (one transition)."""
    c, h, w = frame_shape
    frame, action, reward, terminated, step, valid, row_id = c * h * w, 4 * action_dim, 4, 1, 4, 1, 8
    storage_index = 8  # TensorDictReplayBuffer writes each row's own "index" alongside
    return frame + action + reward + terminated + step + valid + row_id + storage_index


class FrameReplay:
    """A TorchRL `TensorDictReplayBuffer` fed with a transition stream and sampled as stacked batches.

    Args:
        capacity: rows kept (≈ transitions; each episode adds one closing row).
        frame_stack: frames per observation, as in the env.
        batch_size: transitions per sample.
        frame_shape: `(C, H, W)` of one frame, for the memory check.
        action_dim: action size, for the memory check.
        storage: ``memory`` (RAM; checked against free RAM) or ``disk`` (memory-mapped files in
            `scratch_dir`, allocated in full up front; checked against free disk space).
        scratch_dir: folder of the ``disk`` storage's files.
        spare_rows: extra slots beyond `capacity` (sampling still draws from the newest `capacity`
            rows). Rows a crashed run wrote after its last checkpoint land in these slots instead of
            over rows the checkpoint still samples; with at least as many spare rows as rows written
            between checkpoints, a resumed wrapped-around disk buffer samples exactly as an
            uninterrupted one. Not needed while the buffer has not wrapped around.
        n_step: n of the n-step return each sample covers (1 = one-step transitions; DrQ-v2 uses 3);
            for n > 1 samples carry `("next", "discount")` (see `StackFrames`). Part of the checkpoint:
            a restored buffer serves the n of its checkpoint.
        discount: γ used only to sum n-step rewards and as the base of `("next", "discount")`; the
            learner's own discount must match. Part of the checkpoint, like `n_step`.
        n_step_partial_windows: with n > 1, also sample the last n − 1 transitions of each episode
            (an m-step return, m < n, bootstrapped with γ^m); False (DrQ-v2's replay): only transitions
            whose n transitions all lie in their episode. Part of the checkpoint, like `n_step`.
        pin_memory: sampled batches in page-locked memory (for a learner on a CUDA device; the storage
            itself stays in pageable RAM or on disk).
    """

    def __init__(
        self,
        capacity: int,
        frame_stack: int,
        batch_size: int,
        frame_shape: tuple[int, int, int],
        action_dim: int,
        *,
        storage: Literal["memory", "disk"] = "memory",
        scratch_dir: str | Path | None = None,
        spare_rows: int = 0,
        n_step: int = 1,
        discount: float = 0.99,
        pin_memory: bool = False,
        n_step_partial_windows: bool = False,
    ) -> None:
        slots = capacity + spare_rows
        self.pin_memory = pin_memory
        self.storage_kind = storage
        store: LazyTensorStorage
        if storage == "memory":
            check_capacity_fits(slots, frame_shape, action_dim)
            store = GatherStorage(slots)
            self.scratch_dir: Path | None = None
        elif storage == "disk":
            if scratch_dir is None:
                raise ValueError("a disk replay needs a scratch_dir for its files")
            self.scratch_dir = Path(scratch_dir).absolute()
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
            check_disk_fits(slots, frame_shape, action_dim, self.scratch_dir, spare_rows=spare_rows)
            store = GatherMemmapStorage(slots, self.scratch_dir)
        else:
            raise ValueError(f"replay storage must be 'memory' or 'disk', got {storage!r}")
        self.sampler = FrameStackSampler(frame_stack, capacity, n_step, n_step_partial_windows)
        self.transform = StackFrames(frame_stack, n_step, discount)
        self.buffer = TensorDictReplayBuffer(
            storage=store,
            sampler=self.sampler,
            transform=self.transform,
            batch_size=batch_size,
        )
        self.rows_written = 0
        self.n_step, self.discount = n_step, discount
        self.n_step_partial_windows = n_step_partial_windows

    @classmethod
    def from_settings(
        cls,
        settings: ReplaySettings,
        *,
        frame_stack: int,
        num_agent_steps: int,
        frame_shape: tuple[int, int, int],
        action_dim: int,
        scratch_dir: str | Path | None,
        pin_memory: bool = False,
    ) -> FrameReplay:
        """The replay `settings` describe, for a run of `num_agent_steps` (the default capacity) whose
        env stacks `frame_stack` frames; `scratch_dir`: where a ``disk`` replay keeps its files."""
        disk = settings.storage == "disk"
        return cls(
            settings.capacity or default_replay_capacity(num_agent_steps),
            frame_stack,
            settings.batch_size,
            frame_shape,
            action_dim,
            storage=settings.storage,
            scratch_dir=scratch_dir,
            spare_rows=settings.spare_rows if disk else 0,
            n_step=settings.n_step,
            discount=settings.discount,
            pin_memory=pin_memory,
            n_step_partial_windows=settings.n_step_partial_windows,
        )

    def _set_n_step(self, n_step: int, discount: float, partial_windows: bool) -> None:
        if (n_step, discount) != (self.n_step, self.discount):
            warnings.warn(
                f"the checkpointed replay serves {n_step}-step returns with discount {discount}, not the "
                f"configured {self.n_step}-step with {self.discount}: restoring the checkpoint's",
                stacklevel=3,
            )
        if n_step > 1 and partial_windows != self.n_step_partial_windows:
            warnings.warn(
                f"the checkpointed replay samples n-step windows with n_step_partial_windows="
                f"{partial_windows}, not the configured {self.n_step_partial_windows}: restoring the "
                "checkpoint's",
                stacklevel=3,
            )
        self.n_step, self.discount, self.n_step_partial_windows = n_step, discount, partial_windows
        self.sampler.n_step, self.sampler.partial_windows = n_step, partial_windows
        self.sampler._offsets = torch.arange(-self.sampler.frame_stack + 1, n_step + 1)
        self.transform.n_step, self.transform.discount = n_step, discount

    def extend(self, transitions: TensorDictBase) -> None:
        rows = transitions_to_rows(transitions, self.rows_written)
        # At most one storage's worth per write: more would wrap onto its own slots, and which of two
        # rows written to one slot by one indexed copy survives is undefined (it varies with threads).
        slots = self.buffer.storage.max_size
        for start in range(0, rows.shape[0], slots):
            self.buffer.extend(rows[start : start + slots])
        self.rows_written += rows.shape[0]
        self.sampler.rows_written = self.rows_written

    def sample(self) -> TensorDictBase:
        batch = self.buffer.sample()
        # Page-locked when the learner is on a GPU, so its copy there is asynchronous.
        return batch.pin_memory() if self.pin_memory else batch

    def __len__(self) -> int:
        return len(self.buffer)

    def flush(self) -> None:
        """Make every written row durable on disk (no-op in memory)."""
        if isinstance(self.buffer.storage, GatherMemmapStorage):
            self.buffer.storage.flush()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume. In memory: the rows too. On disk: metadata only (the files are
        the data; flushed here so that the checkpoint never refers to rows not on disk)."""
        if self.storage_kind == "memory":
            return {
                "buffer": self.buffer.state_dict(),
                "rows_written": self.rows_written,
                "n_step": self.n_step,
                "discount": self.discount,
                "n_step_partial_windows": self.n_step_partial_windows,
            }
        self.flush()
        storage = self.buffer.storage
        return {
            "storage": "disk",
            "scratch_dir": str(self.scratch_dir),
            "slots": storage.max_size,
            "initialized": storage.initialized,
            "len": len(storage),
            "writer": self.buffer._writer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rows_written": self.rows_written,
            "n_step": self.n_step,
            "discount": self.discount,
            "n_step_partial_windows": self.n_step_partial_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`; a disk buffer maps the files in this replay's `scratch_dir`."""
        kind = state.get("storage", "memory")
        if kind != self.storage_kind:
            raise ValueError(f"cannot load a {kind} replay state into a {self.storage_kind} replay")
        self.rows_written = state["rows_written"]
        # A checkpoint from before n-step replay keeps this replay's settings; one from before the choice
        # of full windows sampled the partial ones too.
        n_step, discount = state.get("n_step", self.n_step), state.get("discount", self.discount)
        partial = state.get("n_step_partial_windows", True)
        if kind == "memory":
            self.buffer.load_state_dict(state["buffer"])
            self.sampler.rows_written = self.rows_written
            self._set_n_step(n_step, discount, partial)
            return
        storage = self.buffer.storage
        assert isinstance(storage, GatherMemmapStorage)
        if state["slots"] != storage.max_size:
            raise ValueError(
                f"the checkpointed replay has {state['slots']:,} slots, this one {storage.max_size:,}"
            )
        self.buffer._writer.load_state_dict(state["writer"])
        self.sampler.load_state_dict(state["sampler"])
        self.sampler.rows_written = self.rows_written
        self._set_n_step(n_step, discount, partial)
        if state["initialized"]:
            storage.reopen(state["len"])
            self._warn_lost_rows()

    def _warn_lost_rows(self) -> None:
        # Rows written after the checkpoint hold ids ≥ rows_written; each replaced the row one storage
        # size older, which the resumed buffer would still sample if it is among the newest `capacity`.
        ids = self.buffer.storage._storage[ROW]
        kept = self.sampler._kept(self.buffer.storage)
        replaced = ids[ids >= self.rows_written] - ids.shape[0]
        lost = int((replaced >= self.rows_written - kept).sum())
        if lost:
            warnings.warn(
                f"{lost:,} replay rows were overwritten after the checkpoint (more rows written since than "
                "spare_rows); they are skipped until rewritten, so sampling differs from the original run",
                stacklevel=3,
            )


def default_replay_capacity(num_agent_steps: int) -> int:
    """The capacity when none is set: the whole run, plus its episodes' closing rows (≤ 1 %)."""
    return num_agent_steps + num_agent_steps // 100 + 1


def check_capacity_fits(capacity: int, frame_shape: tuple[int, int, int], action_dim: int) -> None:
    """Fail early (not hours into a run) when the buffer cannot fit in the available RAM."""
    per_row = bytes_per_row(frame_shape, action_dim)
    budget = int(0.8 * psutil.virtual_memory().available)
    if capacity * per_row > budget:
        raise ValueError(
            f"replay capacity {capacity:,} needs {capacity * per_row / 2**30:.1f} GiB but only "
            f"{budget / 2**30:.1f} GiB are available (80% of free RAM); a capacity of at most "
            f"{budget // per_row:,} fits"
        )


def check_disk_fits(
    rows: int,
    frame_shape: tuple[int, int, int],
    action_dim: int,
    folder: str | Path,
    *,
    spare_rows: int = 0,
) -> None:
    """Fail early when `rows` disk replay rows cannot be allocated in `folder`.

    Field files already there (an earlier or resumed run's) are reused, so their space counts as free.
    """
    folder = Path(folder)
    per_row = bytes_per_row(frame_shape, action_dim)
    reusable = sum(f.stat().st_blocks * 512 for f in folder.rglob("*.memmap")) if folder.exists() else 0
    existing = folder if folder.exists() else next(p for p in folder.parents if p.exists())
    budget = shutil.disk_usage(existing).free + reusable
    if rows * per_row > budget:
        fits = max(budget // per_row - spare_rows, 0)
        raise ValueError(
            f"disk replay of {rows:,} rows needs {rows * per_row / 2**30:.1f} GiB but {folder} has only "
            f"{budget / 2**30:.1f} GiB free; a capacity of at most {fits:,} fits"
        )
