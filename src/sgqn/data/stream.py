"""Collector → replay → batches: the Lightning-facing side of data collection.

`EnvStream` is an `IterableDataset` iterated in the trainer's process: each iteration steps a TorchRL
`Collector` by one agent step (the policy is the LightningModule's own actor, so its weights are
always current), writes the transition to the replay buffer and yields the sampled batches that the
update schedule asks for. The run length is counted in *agent steps*, never in optimizer steps.

Resume: `DMCDataModule.state_dict` holds everything the stream needs to continue exactly as if never
interrupted, given that the trainer restores torch's global RNG (random warm-up actions, replay sampling
and the policy's exploration noise draw from it): the replay (on disk: metadata only), the env mid-episode
(`sgqn.envs.state`), the collector's frame counter and current observation, and the updates still due at
the current step. It assumes every batch yielded was trained on before the checkpoint, i.e. that the
training step pulls its batch itself (`AgentModule.training_step`) rather than Lightning reading ahead.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, StepCounter

from sgqn.assets.sources import DataSources
from sgqn.data.replay import FrameReplay, default_replay_capacity
from sgqn.envs import make_env
from sgqn.envs.render import release_gl_context
from sgqn.envs.state import env_state, load_env_state


@dataclass
class StreamStats:
    """What the stream has done so far; read by the progress callback and saved for resume."""

    agent_steps: int = 0
    updates: int = 0
    episodes: int = 0
    last_episode_return: float = float("nan")
    episode_return: float = 0.0
    steps_per_s: float = float("nan")  # agent steps per second over the last `window` steps
    _window_start: float = field(default_factory=time.perf_counter)
    _window_steps: int = 0


def updates_due(
    agent_steps: int, init_steps: int, updates_per_step: int, update_every_steps: int = 1, burst: bool = True
) -> int:
    """Gradient updates after collecting agent step number `agent_steps` (1-based).

    None while the buffer warms up with random actions; at the switch, `init_steps` updates at once (as
    the SAC / SVEA / SGQN references do; `burst=False`: none, as DrQ-v2); then `updates_per_step` at
    every `update_every_steps`-th agent step (DrQ-v2: one update every 2 steps).
    """
    if agent_steps < init_steps:
        return 0
    if agent_steps == init_steps and burst:
        return init_steps * updates_per_step
    return updates_per_step if agent_steps % update_every_steps == 0 else 0


class EnvStream(IterableDataset):
    """Steps the collector and yields replay batches until `num_agent_steps` agent steps are collected;
    `None` for an agent step with no update due (the random warm-up)."""

    def __init__(
        self,
        collector: Collector,
        replay: FrameReplay,
        *,
        num_agent_steps: int,
        init_steps: int,
        updates_per_step: int,
        stats: StreamStats,
        update_every_steps: int = 1,
        burst: bool = True,
        fps_window: int = 100,
        overlap: bool = False,
        policy_sync_every: int = 1,
        sync_policy: Callable[[], None] | None = None,
    ) -> None:
        self.collector, self.replay = collector, replay
        self.num_agent_steps, self.init_steps = num_agent_steps, init_steps
        self.updates_per_step, self.stats, self.fps_window = updates_per_step, stats, fps_window
        self.update_every_steps, self.burst = update_every_steps, burst
        self.pending = 0  # batches due at the latest step and not yet yielded
        # Overlapped collection: a thread steps the collector (acting with a policy snapshot that
        # `sync_policy` refreshes every `policy_sync_every` updates) one agent step ahead of learning.
        self.overlap, self.policy_sync_every = overlap, policy_sync_every
        self.sync_policy = sync_policy
        self.prefetched: list[TensorDictBase] = []  # collected, not yet in the replay (checkpointed)
        self._queue: queue.Queue[TensorDictBase] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _record(self, transitions: TensorDictBase) -> None:
        stats = self.stats
        for reward, done in zip(
            transitions["next", "reward"].reshape(-1).tolist(),
            transitions["next", "done"].reshape(-1).tolist(),
            strict=True,
        ):
            stats.agent_steps += 1
            stats._window_steps += 1
            stats.episode_return += reward
            if done:
                stats.episodes += 1
                stats.last_episode_return, stats.episode_return = stats.episode_return, 0.0
        if stats._window_steps >= self.fps_window:
            now = time.perf_counter()
            stats.steps_per_s = stats._window_steps / (now - stats._window_start)
            stats._window_start, stats._window_steps = now, 0

    def _sample(self) -> TensorDictBase:
        # Called when the previous update has finished: the collector's snapshot may take its weights.
        if self.overlap and self.sync_policy is not None and self.stats.updates % self.policy_sync_every == 0:
            self.sync_policy()
        self.pending -= 1
        self.stats.updates += 1
        return self.replay.sample()

    # ------------------------------------------------------------------ overlapped collection

    def _produce(self) -> None:
        # One intra-op thread for this thread's torch work (one observation's policy forward): a second
        # OpenMP team would spin against the learner's on the same cores (measured: README, "The GPU path").
        torch.set_num_threads(1)
        try:
            for transitions in self.collector:
                self._queue.put(transitions)  # waits while the learner has not taken the previous step
                if self._stop.is_set():
                    return
        except BaseException as error:  # raised again in the learner's thread
            self._error = error
            self._queue.put(TensorDict())  # wakes the consumer
        finally:
            release_gl_context()  # the env's renderer goes back to whichever thread steps it next

    def _transitions(self) -> Iterator[TensorDictBase]:
        """The collector's agent steps: stepped here, or taken from the collecting thread."""
        if not self.overlap:
            yield from self.collector
            return
        while True:
            if self.prefetched:  # steps collected before a `pause` (a checkpoint) and not yet learned from
                yield self.prefetched.pop(0)
                continue
            if self._thread is None:  # first step, or after a `pause`
                release_gl_context()  # the train env rendered here (its reset): hand it to the thread
                self._stop.clear()
                self._thread = threading.Thread(target=self._produce, name="sgqn-collector", daemon=True)
                self._thread.start()
            transitions = self._queue.get()
            if self._error is not None:
                raise self._error
            yield transitions

    def pause(self) -> None:
        """Stop the collecting thread after its current step; the steps it collected and the learner has
        not taken yet are kept in `prefetched` (a checkpoint then sees a consistent env and collector)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        while thread.is_alive() or not self._queue.empty():
            with contextlib.suppress(queue.Empty):  # (the thread may be mid-step: wait for its put)
                item = self._queue.get(timeout=0.1)
                if self._error is None:
                    self.prefetched.append(item)
        thread.join()

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[TensorDictBase | None]:
        while self.pending > 0:  # updates still due at the step a resumed run stopped at
            yield self._sample()
        if self.stats.agent_steps >= self.num_agent_steps:
            return
        try:
            yield from self._steps()
        finally:
            self.pause()

    def _steps(self) -> Iterator[TensorDictBase | None]:
        for transitions in self._transitions():
            if self.stats.agent_steps >= self.num_agent_steps:
                return  # an overlapped step collected past the end of the run
            transitions = transitions.reshape(-1)
            self.replay.extend(transitions)
            before = self.stats.agent_steps
            self._record(transitions)
            self.pending = sum(
                updates_due(step, self.init_steps, self.updates_per_step, self.update_every_steps, self.burst)
                for step in range(before + 1, self.stats.agent_steps + 1)
            )
            if self.pending == 0:
                # No update due (the random warm-up): yield control anyway, so the trainer's callbacks
                # (progress, evaluation, checkpoints) see every agent step, the warm-up included.
                yield None
            while self.pending > 0:
                yield self._sample()
            if self.stats.agent_steps >= self.num_agent_steps:
                return

    def state_dict(self) -> dict[str, Any]:
        self.pause()  # restarted by the next iteration; nothing is lost
        prefetched = [{"data": t.to_dict(), "batch_size": list(t.batch_size)} for t in self.prefetched]
        return {"pending": self.pending, "prefetched": prefetched}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state["pending"]
        self.prefetched = [
            TensorDict(t["data"], batch_size=t["batch_size"]) for t in state.get("prefetched", [])
        ]


def collector_state(collector: Collector) -> dict[str, Any]:
    """The collector's own resume state: frame counter (random warm-up vs policy), trajectory ids and
    the carrier, i.e. the observation the next step acts on. (TorchRL's `Collector.state_dict` keeps
    neither the carrier nor the env's state, and adds the policy weights.)"""
    return {
        "frames": collector._frames,
        "iter": collector._iter,
        "traj_pool": collector._traj_pool.state_dict(),
        "carrier": collector._carrier.to_dict(),
    }


def load_collector_state(collector: Collector, state: dict[str, Any]) -> None:
    """Restore `collector_state` (after the env's state: the carrier must match it)."""
    collector._frames, collector._iter = state["frames"], state["iter"]
    collector._traj_pool.load_state_dict(state["traj_pool"])
    carrier = collector._carrier
    collector._carrier = TensorDict(state["carrier"], batch_size=carrier.batch_size, device=carrier.device)


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
        num_agent_steps: run length in agent steps (the paper trains 500k).
        init_steps: agent steps of uniform random actions before the first update (paper: 1000).
        updates_per_step: gradient updates per collected agent step after `init_steps` (paper: 1).
        update_every_steps: the updates run every this many agent steps (1; DrQ-v2: 2).
        warmup_burst: at the end of the random warm-up, run `init_steps` updates at once (the SAC / SVEA /
            SGQN references); False: none (DrQ-v2).
        batch_size: transitions per update batch (paper: 128).
        replay_capacity: transitions kept in replay (default: the whole run); checked against free RAM
            (``memory``) or free disk space (``disk``).
        replay_storage: ``memory`` (RAM) or ``disk`` (memory-mapped files in `replay_dir`, allocated in
            full at the first write, ~21 KB per transition at 84 px; a checkpoint then holds only the
            replay's metadata, the files being its data; they are kept after the run for resuming).
        replay_dir: folder of the ``disk`` replay's files; ``None`` = ``replay/`` beside the run's
            checkpoint folder (``<trainer.default_root_dir>/<experiment id>/<run id>/replay``).
            One folder per run: a resumed run reopens the folder its checkpoint names.
        replay_spare_rows: ``disk`` only: file rows beyond `replay_capacity`, so that rows written after the
            last checkpoint by a run that then crashed never replace rows the checkpoint still samples.
            A resume is exact with at least as many as the agent steps between checkpoints (+1% for
            episode ends); 0 is exact while the buffer has not wrapped around (the default capacity).
        n_step: n of the n-step return the replay serves (1 = the reference's one-step TD; DrQ-v2 uses 3).
        discount: γ used only to sum n-step rewards (the learner's own discount must match).
        frames_per_batch: agent steps per collector iteration (1 keeps the reference's
            one-update-per-step interleaving exact).
        overlap_collection: step the env in a thread, one agent step ahead of learning, with a snapshot
            of the actor refreshed every `policy_sync_every` updates, so rendering and physics run while
            the update does (default off: the reference acts with the weights of the latest update,
            one env step per update). The policy then lags the learner by up to `policy_sync_every`
            updates plus the step in flight; exploration noise is drawn in the collecting thread, so
            runs are not bit-reproducible and a resume continues the run without being exact.
        policy_sync_every: updates between refreshes of the overlapped collector's actor snapshot.
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
        num_agent_steps: int = 500_000,
        init_steps: int = 1000,
        updates_per_step: int = 1,
        update_every_steps: int = 1,
        warmup_burst: bool = True,
        batch_size: int = 128,
        replay_capacity: int | None = None,
        replay_storage: Literal["memory", "disk"] = "memory",
        replay_dir: str | None = None,
        replay_spare_rows: int = 0,
        n_step: int = 1,
        discount: float = 0.99,
        frames_per_batch: int = 1,
        overlap_collection: bool = False,
        policy_sync_every: int = 1,
        dmcgb_root: str | None = None,
        davis_root: str | None = None,
        places_root: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stats = StreamStats()
        self.replay: FrameReplay | None = None
        self.collector: Collector | None = None
        self.stream: EnvStream | None = None
        self._resume: dict[str, Any] | None = None  # loaded before `build`, applied by it
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
        return self.env_fn(mode, seed)()

    def env_fn(
        self, mode: str = "train", seed: int | None = None, reseed_mode: bool = False
    ) -> partial[EnvBase]:
        """`make_env` as a picklable function of no argument (a `ParallelEnv` worker builds its env with
        it); `reseed_mode`: see `sgqn.envs.make_env`."""
        hp: Any = self.hparams
        name, _, intensity = mode.partition("@")
        return partial(
            make_env,
            hp.task,
            action_repeat=hp.action_repeat,
            frame_stack=hp.frame_stack,
            image_size=hp.image_size,
            render_quality=hp.render_quality,
            seed=hp.seed if seed is None else seed,
            mode=name,
            intensity=float(intensity) if intensity else None,
            data=DataSources(hp.dmcgb_root, hp.davis_root, hp.places_root),
            reseed_mode=reseed_mode,
        )

    def build(
        self,
        policy: Callable[[TensorDictBase], TensorDictBase],
        device: torch.device = torch.device("cpu"),
        sync_policy: Callable[[], None] | None = None,
    ) -> EnvStream:
        """Collector and replay around `policy` (the module's exploration policy), for a learner on
        `device` (the replay stays on the host; its batches are pinned for a GPU); resumes a loaded
        state."""
        hp: Any = self.hparams
        env = self.make_env()  # seeded: no `collector.set_seed`, whose env reset would desync its first obs
        env.append_transform(StepCounter())  # episode step → replay rows know where episodes start
        # The collector runs the policy once on its first observation (to learn its output keys): keep
        # that call's exploration noise out of the global RNG stream, which a resume restores before this.
        with torch.random.fork_rng():
            self.collector = Collector(
                env,
                policy,
                frames_per_batch=hp.frames_per_batch,
                total_frames=-1,
                init_random_frames=hp.init_steps,
                auto_register_policy_transforms=False,  # the actor reads pixels only; no InitTracker
            )
        capacity = hp.replay_capacity or default_replay_capacity(hp.num_agent_steps)
        frame_shape = (3, *self.observation_shape[1:])
        resume = self._resume
        disk = hp.replay_storage == "disk"
        if disk and resume is not None and "replay" in resume:
            scratch_dir: Path | None = Path(resume["replay"]["scratch_dir"])  # the files the state refers to
        else:
            scratch_dir = self.resolve_replay_dir() if disk else None
        self.replay = FrameReplay(
            capacity,
            hp.frame_stack,
            hp.batch_size,
            frame_shape,
            self.action_dim,
            storage=hp.replay_storage,
            scratch_dir=scratch_dir,
            spare_rows=hp.replay_spare_rows if disk else 0,
            n_step=hp.n_step,
            discount=hp.discount,
            pin_memory=device.type == "cuda",
        )
        self.stream = EnvStream(
            self.collector,
            self.replay,
            num_agent_steps=hp.num_agent_steps,
            init_steps=hp.init_steps,
            updates_per_step=hp.updates_per_step,
            stats=self.stats,
            update_every_steps=hp.get("update_every_steps", 1),
            burst=hp.get("warmup_burst", True),
            overlap=hp.get("overlap_collection", False),
            policy_sync_every=hp.get("policy_sync_every", 1),
            sync_policy=sync_policy,
        )
        if resume is not None and "replay" in resume:
            self._restore(resume)
        self._resume = None
        return self.stream

    def resolve_replay_dir(self) -> Path:
        """Where a new ``disk`` replay keeps its files (a resumed one: where its checkpoint says)."""
        hp: Any = self.hparams
        if hp.replay_dir is not None:
            return Path(hp.replay_dir)
        if self.trainer is not None:
            # Beside the run's checkpoints (`<root>/<experiment id>/<run id>/`): one folder per run.
            folder = getattr(self.trainer.checkpoint_callback, "dirpath", None)
            if folder:
                return Path(folder).parent / "replay"
            return Path(self.trainer.default_root_dir) / "replay"
        raise ValueError("replay_storage='disk' needs replay_dir (or a trainer: <default_root_dir>/replay)")

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module  # type: ignore[union-attr]
        if self.hparams.get("overlap_collection", False):  # a snapshot of the actor, synced by the stream
            policy = module.policy_module(deterministic=False, snapshot=True)  # type: ignore[operator]
            return self._loader(self.build(policy, module.device, policy.module.sync))  # type: ignore[arg-type]
        policy = module.policy_module(deterministic=False)  # type: ignore[operator]
        return self._loader(self.build(policy, module.device))  # type: ignore[arg-type]

    @staticmethod
    def _loader(stream: EnvStream) -> DataLoader:
        # Its own generator: creating a loader iterator draws a worker seed, from the global RNG otherwise,
        # which would shift every later draw of a resumed run (it restores the RNG before this).
        return DataLoader(
            stream, batch_size=None, collate_fn=_first, num_workers=0, generator=torch.Generator()
        )

    def teardown(self, stage: str) -> None:
        if self.stream is not None:
            self.stream.pause()
        if self.collector is not None:
            self.collector.shutdown()
            self.collector = None

    def state_dict(self) -> dict[str, Any]:
        """Stream statistics and, once built, everything an exact resume needs (see the module docstring).

        A disk replay is flushed here, so the checkpoint never refers to rows that are not on disk.
        """
        state: dict[str, Any] = {
            "stats": {k: v for k, v in vars(self.stats).items() if not k.startswith("_")}
        }
        if self.stream is None or self.collector is None or self.replay is None:
            if self._resume is not None:  # loaded, not built yet: carry the state over
                state |= {k: v for k, v in self._resume.items() if k != "stats"}
            return state
        # The stream's state first: it pauses an overlapped collector, so env and collector stay as saved.
        state["stream"] = self.stream.state_dict()
        state["replay"] = self.replay.state_dict()
        state["env"] = env_state(self.collector.env)
        state["collector"] = collector_state(self.collector)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, value in state_dict.get("stats", {}).items():
            setattr(self.stats, key, value)
        if "replay" not in state_dict:  # statistics only (an older checkpoint, or saved before `build`)
            return
        if self.stream is not None:
            self._restore(state_dict)
        else:
            self._resume = dict(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        assert self.collector is not None and self.replay is not None and self.stream is not None
        self.replay.load_state_dict(state["replay"])
        load_env_state(self.collector.env, state["env"])
        load_collector_state(self.collector, state["collector"])
        self.stream.load_state_dict(state["stream"])


__all__ = [
    "DMCDataModule",
    "EnvStream",
    "StreamStats",
    "collector_state",
    "load_collector_state",
    "updates_due",
]
