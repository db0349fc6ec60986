"""The replay's row layout: one row per transition holding its newest frame (see `sgqn.data.replay`).

`transitions_to_rows` turns collector transitions into rows; `StackFrames` turns sampled row windows back
into stacked TorchRL transitions (one-step or n-step).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs.transforms import Transform

# Keys of a stored row.
FRAME, ROW, STEP, VALID = "frame", "row_id", "episode_step", "starts_transition"


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
    `FrameStackSampler` serves full windows (m = n) unless its `partial_windows` is set.
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
