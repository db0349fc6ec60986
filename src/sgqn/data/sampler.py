"""The replay's sampler: uniform stored transitions as windows of consecutive rows (see
`sgqn.data.replay`)."""

from __future__ import annotations

from typing import Any

import torch
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage

from sgqn.data.rows import ROW, STEP, VALID


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
    For n > 1 the newest n - 1 transitions wait for the rows after them, even where their episode ended,
    and, unless `partial_windows`, a transition is sampleable only when its n transitions `k … k+n-1` all
    belong to its episode (rows that start transitions, at consecutive episode steps), as DrQ-v2's replay
    draws start indices only up to an episode's length minus n: an episode's last n - 1 transitions start
    no sample. `partial_windows` samples them too, with the m < n transitions left (`StackFrames`).
    """

    def __init__(
        self, frame_stack: int, capacity: int | None = None, n_step: int = 1, partial_windows: bool = False
    ) -> None:
        if n_step < 1:
            raise ValueError(f"n_step must be at least 1, got {n_step}")
        self.frame_stack = frame_stack
        self.n_step = n_step
        self.partial_windows = partial_windows
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
        if self.n_step > 1 and not self.partial_windows:
            run = windows[:, self.frame_stack - 1 : self.frame_stack - 1 + self.n_step]  # rows k … k+n-1
            steps = data[STEP][run].long()
            intact &= data[VALID][run].reshape(run.shape).all(dim=1) & (
                steps == steps[:, :1] + torch.arange(self.n_step)
            ).all(dim=1)
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
            "partial_windows": self.partial_windows,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frame_stack = state_dict["frame_stack"]
        self.n_step = state_dict.get("n_step", self.n_step)
        self.capacity = state_dict.get("capacity", self.capacity)
        self.rows_written = state_dict.get("rows_written", self.rows_written)
        # A state from before the choice: its sampler drew the partial windows too.
        self.partial_windows = state_dict.get("partial_windows", True)
        self._offsets = torch.arange(-self.frame_stack + 1, self.n_step + 1)
