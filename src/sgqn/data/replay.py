"""Replay of pixel transitions that stores every frame once and stacks frames at sample time.

A stacked observation repeats each frame `frame_stack` times across consecutive transitions, and
`next_pixels` repeats it once more: storing stacks would cost ~127 KB per transition at 84×84×9. Here a
row holds one *newest* frame (21 KB) plus the transition's scalars, rows are written in stream order,
and the sampler returns windows of `frame_stack + 1` rows that `StackFrames` turns back into
`pixels` / `("next", "pixels")`, repeating the first frame of an episode exactly as the env's
`CatFrames(padding="same")` does at reset.

Rows follow one contiguous stream of transitions (one env, as DMC-GB trains). Each episode ends with a
closing row that holds the final next-frame and starts no transition.
"""

from __future__ import annotations

from typing import Any

import psutil
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage
from torchrl.envs.transforms import Transform

# Keys of a stored row.
FRAME, ROW, STEP, VALID = "frame", "row_id", "episode_step", "starts_transition"


class FrameStackSampler(Sampler):
    """Uniform over stored transitions; returns `[batch, frame_stack + 1]` row windows.

    Window `w` of transition row `i` is `max(i - frame_stack + 1 + m, episode_start(i))` for
    `m = 0 … frame_stack`: `w[:-1]` are the frames of `pixels`, `w[1:]` those of `("next", "pixels")`.
    A transition is sampleable once its next row is written and while none of its window has been
    overwritten (checked through the monotonically increasing row ids).
    """

    def __init__(self, frame_stack: int) -> None:
        self.frame_stack = frame_stack
        self._offsets = torch.arange(-frame_stack + 1, 2)

    def _windows(self, storage: Storage, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        data = storage._storage
        capacity = storage.max_size
        step = data[STEP][rows].long()
        start = rows - step  # unwrapped index of the episode's first row
        unwrapped = torch.maximum(rows[:, None] + self._offsets, start[:, None])
        windows = unwrapped % capacity
        ids = data[ROW][windows]
        expected = ids[:, -2:-1] + (unwrapped - rows[:, None])  # contiguous ids ⇔ nothing overwritten
        intact = (ids == expected).all(dim=1) & data[VALID][rows].reshape(-1)
        return windows, intact

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        filled = len(storage)
        if filled < 2:
            raise RuntimeError("the replay buffer holds no complete transition yet")
        picked: list[torch.Tensor] = []
        needed = batch_size
        for _ in range(100):  # rejection sampling: nearly every row is a transition
            rows = torch.randint(filled, (needed + needed // 8 + 4,))
            windows, intact = self._windows(storage, rows)
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
        return {"frame_stack": self.frame_stack}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frame_stack = state_dict["frame_stack"]
        self._offsets = torch.arange(-self.frame_stack + 1, 2)


class GatherStorage(LazyTensorStorage):
    """`LazyTensorStorage` whose reads by an index tensor use `index_select` on each field.

    PyTorch's advanced indexing (what TensorDict indexing does) copies a uint8 frame batch element by
    element: ~12 ms for a batch of 128 windows of 84×84 frames on a 2-core CPU, against ~1 ms for
    `index_select`'s row copies. Same values (pinned by a test).
    """

    def get(self, index: Any) -> Any:
        if not (isinstance(index, torch.Tensor) and index.dtype == torch.long and self.initialized):
            return super().get(index)
        flat = index.reshape(-1)
        return self._storage.apply(
            lambda t: t.index_select(0, flat).unflatten(0, index.shape), batch_size=index.shape
        )


class StackFrames(Transform):
    """Turn sampled `[batch, frame_stack + 1]` row windows into TorchRL transitions."""

    def __init__(self, frame_stack: int) -> None:
        super().__init__()
        self.frame_stack = frame_stack

    def forward(self, windows: TensorDictBase) -> TensorDictBase:
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
    """

    def __init__(
        self,
        capacity: int,
        frame_stack: int,
        batch_size: int,
        frame_shape: tuple[int, int, int],
        action_dim: int,
    ) -> None:
        check_capacity_fits(capacity, frame_shape, action_dim)
        self.buffer = TensorDictReplayBuffer(
            storage=GatherStorage(capacity),
            sampler=FrameStackSampler(frame_stack),
            transform=StackFrames(frame_stack),
            batch_size=batch_size,
        )
        self.rows_written = 0

    def extend(self, transitions: TensorDictBase) -> None:
        rows = transitions_to_rows(transitions, self.rows_written)
        self.buffer.extend(rows)
        self.rows_written += rows.shape[0]

    def sample(self) -> TensorDictBase:
        return self.buffer.sample()

    def __len__(self) -> int:
        return len(self.buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "rows_written": self.rows_written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.rows_written = state["rows_written"]


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
