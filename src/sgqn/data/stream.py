"""Collector → replay → batches: the Lightning-facing side of data collection.

`EnvStream` is an `IterableDataset` iterated in the trainer's process: each iteration steps a TorchRL
`Collector` by one agent step (the policy is the LightningModule's own actor, so its weights are
always current), writes the transition to the replay buffer and yields the sampled batches that the
update schedule asks for. The run length is counted in *agent steps*, never in optimizer steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, StepCounter

from sgqn.data.replay import FrameReplay
from sgqn.data.sources import DataSources
from sgqn.envs import make_env


@dataclass
class StreamStats:
    """What the stream has done so far; read by the progress callback and saved for resume."""

    env_steps: int = 0
    updates: int = 0
    episodes: int = 0
    last_episode_return: float = float("nan")
    episode_return: float = 0.0
    fps: float = float("nan")  # agent steps per second over the last `window` steps
    _window_start: float = field(default_factory=time.perf_counter)
    _window_steps: int = 0


def updates_due(env_steps: int, init_steps: int, updates_per_step: int) -> int:
    """Gradient updates after collecting agent step number `env_steps` (1-based).

    None while the buffer warms up with random actions; at the switch, `init_steps` updates at once (as
    the reference implementations do); then `updates_per_step` per step.
    """
    if env_steps < init_steps:
        return 0
    if env_steps == init_steps:
        return init_steps * updates_per_step
    return updates_per_step


class EnvStream(IterableDataset):
    """Steps the collector and yields replay batches until `num_env_steps` agent steps are collected."""

    def __init__(
        self,
        collector: Collector,
        replay: FrameReplay,
        *,
        num_env_steps: int,
        init_steps: int,
        updates_per_step: int,
        stats: StreamStats,
        fps_window: int = 100,
    ) -> None:
        self.collector, self.replay = collector, replay
        self.num_env_steps, self.init_steps = num_env_steps, init_steps
        self.updates_per_step, self.stats, self.fps_window = updates_per_step, stats, fps_window

    def _record(self, transitions: TensorDictBase) -> None:
        stats = self.stats
        for reward, done in zip(
            transitions["next", "reward"].reshape(-1).tolist(),
            transitions["next", "done"].reshape(-1).tolist(),
            strict=True,
        ):
            stats.env_steps += 1
            stats._window_steps += 1
            stats.episode_return += reward
            if done:
                stats.episodes += 1
                stats.last_episode_return, stats.episode_return = stats.episode_return, 0.0
        if stats._window_steps >= self.fps_window:
            now = time.perf_counter()
            stats.fps = stats._window_steps / (now - stats._window_start)
            stats._window_start, stats._window_steps = now, 0

    def __iter__(self) -> Iterator[TensorDictBase]:
        for transitions in self.collector:
            transitions = transitions.reshape(-1)
            self.replay.extend(transitions)
            before = self.stats.env_steps
            self._record(transitions)
            due = sum(
                updates_due(step, self.init_steps, self.updates_per_step)
                for step in range(before + 1, self.stats.env_steps + 1)
            )
            for _ in range(due):
                self.stats.updates += 1
                yield self.replay.sample()
            if self.stats.env_steps >= self.num_env_steps:
                return


def _first(batch: Any) -> Any:
    return batch


class DMCDataModule(L.LightningDataModule):
    """Training data for one DMC task: env → collector → frame-once replay → batches.

    Args:
        task: DMC task, e.g. ``walker_walk`` (see `sgqn.envs.TASKS`).
        action_repeat: physics steps per agent step; ``None`` = the task's DMC-GB default.
        frame_stack: frames per observation.
        image_size: rendered height/width in pixels.
        render_quality: ``reference`` (MuJoCo defaults, as DMC-GB) or ``fast`` (see README).
        seed: seeds the training env (evaluation uses distinct seeds).
        num_env_steps: run length in agent steps (the paper trains 500k).
        init_steps: agent steps of uniform random actions before the first update (paper: 1000).
        updates_per_step: gradient updates per collected agent step after `init_steps` (paper: 1).
        batch_size: transitions per update batch (paper: 128).
        replay_capacity: transitions kept in replay (default: the whole run); checked against free RAM.
        frames_per_batch: agent steps per collector iteration (1 keeps the reference's
            one-update-per-step interleaving exact).
        dmcgb_root: a DMC-GB data folder (`color_*.pt`, `video_easy/`, `video_hard/`) for the test
            modes; ``None`` = the embedded default (see docs/data.md).
        davis_root: a DAVIS 2017 folder (`JPEGImages/480p/<video>/`) for ``distracting_cs``.
        places_root: Places365 (or any image folder) for the overlay augmentation of SVEA / SGQN.
    """

    def __init__(
        self,
        task: str = "walker_walk",
        action_repeat: int | None = None,
        frame_stack: int = 3,
        image_size: int = 84,
        render_quality: Literal["reference", "fast"] = "reference",
        seed: int = 0,
        num_env_steps: int = 500_000,
        init_steps: int = 1000,
        updates_per_step: int = 1,
        batch_size: int = 128,
        replay_capacity: int | None = None,
        frames_per_batch: int = 1,
        dmcgb_root: str | None = None,
        davis_root: str | None = None,
        places_root: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stats = StreamStats()
        self.replay: FrameReplay | None = None
        self.collector: Collector | None = None
        probe = self.make_env(mode="train")
        self.observation_shape: tuple[int, int, int] = tuple(probe.observation_spec["pixels"].shape)  # type: ignore[assignment]
        self.action_dim: int = int(probe.action_spec.shape[-1])
        probe.close()

    @classmethod
    def from_checkpoint(cls, path: str, **overrides: Any) -> DMCDataModule:
        """The data settings a checkpoint was trained with (LightningCLI adds private `_…` keys)."""
        import torch

        saved = torch.load(path, map_location="cpu", weights_only=False)["datamodule_hyper_parameters"]
        return cls(**{k: v for k, v in saved.items() if not k.startswith("_")} | overrides)

    def make_env(self, mode: str = "train", seed: int | None = None) -> EnvBase:
        """This data module's env settings in any mode (evaluation builds its envs here too).

        `mode` is a name from `sgqn.envs.MODES`, or ``distracting_cs@<intensity>``.
        """
        hp: Any = self.hparams
        name, _, intensity = mode.partition("@")
        return make_env(
            hp.task,
            action_repeat=hp.action_repeat,
            frame_stack=hp.frame_stack,
            image_size=hp.image_size,
            render_quality=hp.render_quality,
            seed=hp.seed if seed is None else seed,
            mode=name,
            intensity=float(intensity) if intensity else None,
            data=DataSources(hp.dmcgb_root, hp.davis_root, hp.places_root),
        )

    def build(self, policy: Callable[[TensorDictBase], TensorDictBase]) -> EnvStream:
        """Collector and replay around `policy` (the module's exploration policy)."""
        hp: Any = self.hparams
        env = self.make_env()
        env.append_transform(StepCounter())  # episode step → replay rows know where episodes start
        self.collector = Collector(
            env,
            policy,
            frames_per_batch=hp.frames_per_batch,
            total_frames=-1,
            init_random_frames=hp.init_steps,
            auto_register_policy_transforms=False,  # the actor reads pixels only; no InitTracker
        )
        self.collector.set_seed(hp.seed)
        capacity = hp.replay_capacity or hp.num_env_steps + hp.num_env_steps // 100 + 1
        frame_shape = (3, *self.observation_shape[1:])
        self.replay = FrameReplay(capacity, hp.frame_stack, hp.batch_size, frame_shape, self.action_dim)
        return EnvStream(
            self.collector,
            self.replay,
            num_env_steps=hp.num_env_steps,
            init_steps=hp.init_steps,
            updates_per_step=hp.updates_per_step,
            stats=self.stats,
        )

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module  # type: ignore[union-attr]
        stream = self.build(module.policy_module(deterministic=False))  # type: ignore[operator]
        return DataLoader(stream, batch_size=None, collate_fn=_first, num_workers=0)

    def teardown(self, stage: str) -> None:
        if self.collector is not None:
            self.collector.shutdown()
            self.collector = None

    def state_dict(self) -> dict[str, Any]:
        return {"stats": {k: v for k, v in vars(self.stats).items() if not k.startswith("_")}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, value in state_dict.get("stats", {}).items():
            setattr(self.stats, key, value)


__all__ = ["DMCDataModule", "EnvStream", "StreamStats", "updates_due"]
