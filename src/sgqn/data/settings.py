"""The data module's settings as typed groups, each taken whole by the part that uses it.

`DMCDataModule.__init__` keeps the flat `--data.*` options (documented there) and builds these once:
`EnvSettings` for every env it makes, `ReplaySettings` for `FrameReplay.from_settings`, `UpdateSchedule`
for the collector and `EnvStream`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sgqn.assets.sources import DataSources


@dataclass(frozen=True)
class EnvSettings:
    """How the data module's envs are made (training and evaluation alike; see `sgqn.envs.make_env`).

    Attributes:
        task: DMC task, e.g. ``walker_walk``.
        action_repeat: physics steps per agent step; ``None`` = the task's DMC-GB default.
        frame_stack: frames per observation (the replay stacks as many).
        image_size: rendered height/width in pixels.
        render_quality: ``reference`` (MuJoCo defaults, as DMC-GB) or ``fast``.
        seed: seeds the training env (evaluation passes its own seeds).
        sources: the data folders of the test modes and the overlay.
    """

    task: str
    action_repeat: int | None
    frame_stack: int
    image_size: int
    render_quality: Literal["reference", "fast"]
    seed: int
    sources: DataSources


@dataclass(frozen=True)
class ReplaySettings:
    """The replay buffer (`FrameReplay.from_settings`) and the batches it serves.

    Attributes:
        capacity: rows kept; ``None`` = the whole run (`default_replay_capacity`).
        storage: ``memory`` (RAM) or ``disk`` (memory-mapped files in `dir`).
        dir: folder of the ``disk`` replay's files; ``None`` = ``replay/`` beside the run's checkpoints.
        spare_rows: ``disk`` only: file rows beyond `capacity` (a resume after a crash stays exact).
        n_step: n of the n-step return each sampled transition covers.
        n_step_partial_windows: with n > 1, also sample an episode's last n − 1 transitions (m-step
            returns, m < n); False: only full windows, as DrQ-v2's replay.
        discount: γ of the n-step sums (the learner's own discount must match).
        batch_size: transitions per sampled batch.
    """

    capacity: int | None
    storage: Literal["memory", "disk"]
    dir: str | None
    spare_rows: int
    n_step: int
    discount: float
    batch_size: int
    n_step_partial_windows: bool = False


@dataclass(frozen=True)
class UpdateSchedule:
    """When the collector steps and how many updates each agent step brings (see `updates_due`).

    Attributes:
        num_agent_steps: run length in agent steps.
        init_steps: agent steps of uniform random actions before the first update.
        updates_per_step: gradient updates per update-bearing agent step after `init_steps`.
        update_every_steps: the updates run every this many agent steps.
        warmup_burst: `init_steps` updates at once at the end of the random warm-up.
        frames_per_batch: agent steps per collector iteration.
        overlap_collection: step the env in a thread, one agent step ahead of learning.
        policy_sync_every: updates between refreshes of the overlapped collector's actor snapshot.
    """

    num_agent_steps: int
    init_steps: int
    updates_per_step: int
    update_every_steps: int
    warmup_burst: bool
    frames_per_batch: int
    overlap_collection: bool
    policy_sync_every: int


__all__ = ["EnvSettings", "ReplaySettings", "UpdateSchedule"]
