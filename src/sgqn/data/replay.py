"""Replay of pixel transitions that stores every frame once and stacks frames at sample time.

A stacked observation repeats each frame `frame_stack` times across consecutive transitions, and
`next_pixels` repeats it once more: storing stacks would cost ~127 KB per transition at 84×84×9. Here a
row holds one *newest* frame (21 KB) plus the transition's scalars, rows are written in stream order,
and the sampler returns windows of `frame_stack + n_step` rows that `StackFrames` turns back into
`pixels` / `("next", "pixels")`, repeating the first frame of an episode exactly as the env's
`CatFrames(padding="same")` does at reset.

With `n_step` n > 1 a sampled transition covers up to n consecutive transitions of its episode (its
n-step return, as DrQ-v2 learns from): the window's extra rows hold the later transitions' rewards and the
frames of the observation n steps on, and `StackFrames` adds the bootstrap factor `("next", "discount")`.

Rows follow one contiguous stream of transitions (one env, as DMC-GB trains). Each episode ends with a
closing row that holds the final next-frame and starts no transition.

Storage is RAM (`memory`, the default) or memory-mapped files (`disk`, TorchRL's `LazyMemmapStorage`).
A disk buffer's checkpoint is its metadata only: the files *are* the data. A row's id is its position in
the stream, so the sampler can tell which rows belong to the checkpointed buffer: rows a crashed run wrote
after its last checkpoint are never sampled before the resumed run rewrites them.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import psutil
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage
from torchrl.envs.transforms import Transform

# Keys of a stored row.
FRAME, ROW, STEP, VALID = "frame", "row_id", "episode_step", "starts_transition"


class FrameStackSampler(Sampler):
    """Uniform over stored transitions; returns `[batch, frame_stack + n_step]` row windows.

    Works on row ids (a row's position in the stream; storage slot = id mod the storage size). Window
    `w` of transition `k` holds ids `max(k - frame_stack + 1 + j, episode_start(k))` for
    `j = 0 … frame_stack + n_step - 1`: `w[:frame_stack]` are the frames of `pixels`; with `n_step` 1,
    `w[1:]` those of `("next", "pixels")` (`StackFrames` picks them for n > 1). Rows right of `k` are
    not clamped: for n > 1 they may belong to the next episode, which `StackFrames` tells apart.
    A window is sampleable when every slot still holds its id (nothing overwritten or not yet written),
    its last row is written (`id < rows_written`) and all its ids lie among the newest `capacity` rows.
    The last check makes a disk buffer with spare slots sample exactly what a `capacity`-slot buffer does.
    For n > 1 the newest n - 1 transitions wait for the rows after them, even where their episode ended.
    """

    def __init__(self, frame_stack: int, capacity: int | None = None, n_step: int = 1) -> None:
        if n_step < 1:
            raise ValueError(f"n_step must be at least 1, got {n_step}")
        self.frame_stack = frame_stack
        self.n_step = n_step
        self.capacity = capacity  # rows kept; None = the storage size
        self.rows_written = 0  # set by FrameReplay after each write
        self._offsets = torch.arange(-frame_stack + 1, n_step + 1)

    def _kept(self, storage: Storage) -> int:
        capacity = storage.max_size if self.capacity is None else self.capacity
        return min(self.rows_written, capacity)

    def _windows(self, storage: Storage, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        data = storage._storage
        slots = storage.max_size
        rows = ids % slots
        start = ids - data[STEP][rows].long()  # id of the episode's first row (if `rows` holds `ids`)
        window_ids = torch.maximum(ids[:, None] + self._offsets, start[:, None])
        windows = window_ids % slots
        intact = (
            (data[ROW][windows] == window_ids).all(dim=1)
            & (window_ids[:, 0] >= self.rows_written - self._kept(storage))
            & (window_ids[:, -1] < self.rows_written)
            & data[VALID][rows].reshape(-1)
        )
        return windows, intact

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        kept = self._kept(storage)
        if kept < 2:
            raise RuntimeError("the replay buffer holds no complete transition yet")
        oldest = self.rows_written - kept
        picked: list[torch.Tensor] = []
        needed = batch_size
        for _ in range(100):  # rejection sampling: nearly every row is a transition
            ids = oldest + torch.randint(kept, (needed + needed // 8 + 4,))
            windows, intact = self._windows(storage, ids)
            picked.append(windows[intact][:needed])
            needed -= picked[-1].shape[0]
            if needed == 0:
                return torch.cat(picked), {}
        raise RuntimeError("could not sample enough complete transitions from the replay buffer")

    def _empty(self) -> None:
        pass

    def dumps(self, path: Any) -> None:
        pass

    def loads(self, path: Any) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "frame_stack": self.frame_stack,
            "n_step": self.n_step,
            "capacity": self.capacity,
            "rows_written": self.rows_written,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frame_stack = state_dict["frame_stack"]
        self.n_step = state_dict.get("n_step", self.n_step)
        self.capacity = state_dict.get("capacity", self.capacity)
        self.rows_written = state_dict.get("rows_written", self.rows_written)
        self._offsets = torch.arange(-self.frame_stack + 1, self.n_step + 1)


def _index_select_get(storage: LazyTensorStorage, index: Any) -> Any:
    """Rows at a long index tensor via `index_select` per field, or None for other indices.

    PyTorch's advanced indexing (what TensorDict indexing does) copies a uint8 frame batch element by
    element: ~12 ms for a batch of 128 windows of 84×84 frames on a 2-core CPU, against ~1 ms for
    `index_select`'s row copies. Same values (pinned by a test); on memory-mapped fields it returns
    plain tensors.
    """
    if not (isinstance(index, torch.Tensor) and index.dtype == torch.long and storage.initialized):
        return None
    flat = index.reshape(-1)
    return storage._storage.apply(
        lambda t: t.index_select(0, flat).unflatten(0, index.shape), batch_size=index.shape
    )


class GatherStorage(LazyTensorStorage):
    """`LazyTensorStorage` (RAM) whose reads by an index tensor use `index_select` on each field."""

    def get(self, index: Any) -> Any:
        rows = _index_select_get(self, index)
        return super().get(index) if rows is None else rows


class GatherMemmapStorage(LazyMemmapStorage):
    """`LazyMemmapStorage` (files in `scratch_dir`) with `GatherStorage`'s fast reads.

    The files are allocated in full when created: TorchRL's are sparse, and a write into a sparse
    memory map on a full disk kills the process with SIGBUS instead of raising.
    """

    def __init__(self, max_size: int, scratch_dir: str | Path) -> None:
        # existsok: a fresh run overwrites the files of an earlier one in the same folder.
        super().__init__(max_size, scratch_dir=scratch_dir, existsok=True, auto_cleanup=False)

    def get(self, index: Any) -> Any:
        rows = _index_select_get(self, index)
        return super().get(index) if rows is None else rows

    def _init_standard(self, data: Any) -> None:
        super()._init_standard(data)
        for path in self.files():
            _reserve(path)

    def files(self) -> list[Path]:
        """The memory-mapped field files (empty before the first write)."""
        if not self.initialized:
            return []
        leaves = self._storage.values(include_nested=True, leaves_only=True)
        return [Path(t.filename) for t in leaves]

    def flush(self) -> None:
        """fsync every field file. Rows written through the memory map already survive the process
        (a `kill -9`) in the page cache; this makes them survive the machine too."""
        for path in self.files():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def reopen(self, length: int) -> None:
        """Map the field files already in `scratch_dir` (as TorchRL's `loads` does for its own folder)."""
        folder = Path(self.scratch_dir)
        if not (folder / "meta.json").exists():
            raise FileNotFoundError(
                f"no replay files in {folder}: a disk replay resumes from the memory-mapped files its run "
                "wrote there"
            )
        storage = TensorDict.load_memmap(folder)
        if storage.shape[0] != self.max_size:
            raise ValueError(
                f"the replay files in {folder} hold {storage.shape[0]:,} rows, not {self.max_size:,}"
            )
        self._storage, self.initialized, self._len = storage, True, length


def _reserve(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError:  # file systems without fallocate keep the sparse file
        pass
    finally:
        os.close(fd)


class StackFrames(Transform):
    """Turn sampled `[batch, frame_stack + n_step]` row windows into TorchRL transitions.

    With `n_step` n > 1, transition `k` (episode step `s`, window position `fs - 1`) covers
    `m = min(n, transitions left in its episode)` transitions `k … k+m-1`, stopping after one that
    terminated. Row `k+i` continues the run iff it is a transition (`starts_transition`) of the same
    episode (`episode_step == s + i`) and row `k+i-1` did not terminate; the closing row of a truncated
    episode stops it, so a time limit bootstraps from the final observation. Then
    `("next", "reward") = Σ_{i<m} γ^i r_{k+i}`, `("next", "pixels")` stacks rows `k+m-fs+1 … k+m`
    (window positions `m … m+fs-1`, left-clamped at the episode's first row like `pixels`),
    `("next", "terminated")`/`("next", "done")` say whether one of the m transitions terminated, and
    `("next", "discount") = γ^m`, or 0 after a termination, is the factor of the bootstrap value.
    With n = 1 the output is the one-step transition, without a discount key.
    """

    def __init__(self, frame_stack: int, n_step: int = 1, discount: float = 0.99) -> None:
        super().__init__()
        self.frame_stack = frame_stack
        self.n_step = n_step
        self.discount = discount

    def forward(self, windows: TensorDictBase) -> TensorDictBase:
        if self.n_step > 1:
            return self._n_step(windows)
        frames = windows[FRAME]  # [B, fs + 1, C, H, W]
        batch, _, channels, height, width = frames.shape
        stacked = (batch, self.frame_stack * channels, height, width)
        last = windows[:, -2]  # the transition's own row
        return TensorDict(
            {
                "pixels": frames[:, :-1].reshape(stacked),
                "action": last["action"],
                "next": {
                    "pixels": frames[:, 1:].reshape(stacked),
                    "reward": last["reward"],
                    "terminated": last["terminated"],
                    "done": last["terminated"],
                },
            },
            batch_size=[batch],
        )

    def _n_step(self, windows: TensorDictBase) -> TensorDictBase:
        fs, n = self.frame_stack, self.n_step
        frames = windows[FRAME]  # [B, fs + n, C, H, W]
        batch, length, channels, height, width = frames.shape
        stacked = (batch, fs * channels, height, width)
        own = fs - 1  # window position of the transition's own row
        run = windows[:, own : own + n]  # rows k … k+n-1
        reward = run["reward"].reshape(batch, n)
        terminated = run["terminated"].reshape(batch, n)
        steps = run[STEP].reshape(batch, n).long()
        offsets = torch.arange(n)
        # Row k+i (i ≥ 1) continues the run iff it is a transition of the same episode and k+i-1 did not
        # terminate; the run is every row up to the first that does not continue.
        continues = (
            run[VALID].reshape(batch, n)[:, 1:]
            & (steps[:, 1:] == steps[:, :1] + offsets[1:])
            & ~terminated[:, :-1]
        )
        in_run = torch.cat([torch.ones(batch, 1, dtype=torch.bool), continues], dim=1).cummin(dim=1).values
        m = in_run.sum(dim=1)  # [B], 1 … n
        powers = torch.tensor(self.discount, dtype=torch.float64) ** torch.arange(n + 1, dtype=torch.float64)
        returns = (reward.double() * powers[:n] * in_run).sum(dim=1, keepdim=True).float()
        ended = (terminated & in_run).any(dim=1, keepdim=True)
        bootstrap = torch.where(ended, 0.0, powers[m].unsqueeze(1)).float()
        # Next stack = window positions m … m+fs-1: a row copy per frame (index_select) on the flat batch.
        picks = (torch.arange(batch) * length + m).unsqueeze(1) + torch.arange(fs)
        next_frames = frames.reshape(batch * length, channels, height, width).index_select(
            0, picks.reshape(-1)
        )
        return TensorDict(
            {
                "pixels": frames[:, :fs].reshape(stacked),
                "action": windows[:, own]["action"],
                "next": {
                    "pixels": next_frames.reshape(stacked),
                    "reward": returns,
                    "discount": bootstrap,
                    "terminated": ended,
                    "done": ended.clone(),
                },
            },
            batch_size=[batch],
        )

    def _call(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self.forward(tensordict)


def transitions_to_rows(batch: TensorDictBase, first_row_id: int) -> TensorDict:
    """Rows for a time-ordered batch of collector transitions (`[T]`, one env).

    Each transition contributes the newest frame of its observation; a transition that ends an episode
    adds a closing row with the newest frame of its next observation.
    """
    channels = 3
    frames = batch["pixels"][:, -channels:]
    steps = batch["step_count"].reshape(-1).to(torch.int32)
    ends = batch["next", "done"].reshape(-1)
    n, action_dim = batch.shape[0], batch["action"].shape[-1]
    rows = TensorDict(
        {
            FRAME: frames,
            "action": batch["action"].float(),
            "reward": batch["next", "reward"].float(),
            "terminated": batch["next", "terminated"].bool(),
            STEP: steps,
            VALID: torch.ones(n, dtype=torch.bool),
        },
        batch_size=[n],
    )
    if ends.any():
        last = ends.nonzero().reshape(-1)
        closing = TensorDict(
            {
                FRAME: batch["next", "pixels"][last, -channels:],
                "action": torch.zeros(last.numel(), action_dim),
                "reward": torch.zeros(last.numel(), 1),
                "terminated": torch.zeros(last.numel(), 1, dtype=torch.bool),
                STEP: steps[last] + 1,
                VALID: torch.zeros(last.numel(), dtype=torch.bool),
            },
            batch_size=[last.numel()],
        )
        order = torch.cat([torch.arange(n), last + 0.5]).argsort()  # closing row right after its step
        rows = torch.cat([rows, closing])[order]
    rows[ROW] = torch.arange(first_row_id, first_row_id + rows.shape[0], dtype=torch.int64)
    return rows


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
        self.sampler = FrameStackSampler(frame_stack, capacity, n_step)
        self.transform = StackFrames(frame_stack, n_step, discount)
        self.buffer = TensorDictReplayBuffer(
            storage=store,
            sampler=self.sampler,
            transform=self.transform,
            batch_size=batch_size,
        )
        self.rows_written = 0
        self.n_step, self.discount = n_step, discount

    def _set_n_step(self, n_step: int, discount: float) -> None:
        if (n_step, discount) != (self.n_step, self.discount):
            warnings.warn(
                f"the checkpointed replay serves {n_step}-step returns with discount {discount}, not the "
                f"configured {self.n_step}-step with {self.discount}: restoring the checkpoint's",
                stacklevel=3,
            )
        self.n_step, self.discount = n_step, discount
        self.sampler.n_step = n_step
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`; a disk buffer maps the files in this replay's `scratch_dir`."""
        kind = state.get("storage", "memory")
        if kind != self.storage_kind:
            raise ValueError(f"cannot load a {kind} replay state into a {self.storage_kind} replay")
        self.rows_written = state["rows_written"]
        # A checkpoint from before n-step replay keeps this replay's settings.
        n_step, discount = state.get("n_step", self.n_step), state.get("discount", self.discount)
        if kind == "memory":
            self.buffer.load_state_dict(state["buffer"])
            self.sampler.rows_written = self.rows_written
            self._set_n_step(n_step, discount)
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
        self._set_n_step(n_step, discount)
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
