"""`DMCDataModule`: the Lightning-facing side of data collection (env → collector → replay → batches).

Its flat `--data.*` options become typed settings (`sgqn.data.settings`) that the env, the replay and the
stream take whole; the stream of batches is `sgqn.data.stream.EnvStream`.

Resume: `DMCDataModule.state_dict` holds everything the stream needs to continue exactly as if never
interrupted, given that the trainer restores torch's global RNG (random warm-up actions, replay sampling
and the policy's exploration noise draw from it): the replay (on disk: metadata only), the env mid-episode
(`sgqn.envs.state`), the collector's frame counter and current observation (`sgqn.data.collector_state`),
and the updates still due at the current step. It assumes every batch yielded was trained on before the
checkpoint, i.e. that the training step pulls its batch itself (`AgentModule.training_step`) rather than
Lightning reading ahead.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, StepCounter

from sgqn.assets.sources import DataSources
from sgqn.data.collector_state import collector_state, load_collector_state
from sgqn.data.replay import FrameReplay
from sgqn.data.settings import EnvSettings, ReplaySettings, UpdateSchedule
from sgqn.data.stream import EnvStream, StreamStats
from sgqn.envs import make_env
from sgqn.envs.state import env_state, load_env_state
from sgqn.envs.tasks import TASK_DEFAULTS, Learner, resolve_settings


def _first(batch: Any) -> Any:
    return batch


class DMCDataModule(L.LightningDataModule):
    """Training data for one DMC task: env → collector → frame-once replay → batches.

    The options below are kept flat in `hparams` (checkpoints, `from_checkpoint`) and grouped, typed, in
    `env_settings` (`EnvSettings`), `replay_settings` (`ReplaySettings`) and `schedule` (`UpdateSchedule`),
    which the env, the replay and the stream take.

    An option marked *reference* defaults to None: the reference setting of `learner` for `task`
    (`sgqn.envs.tasks.reference_settings`; SAC lineage / DrQ-v2), resolved here, so `hparams` hold the
    values used. An explicit value wins.

    Args:
        task: DMC task, e.g. ``walker_walk`` (see `sgqn.envs.TASKS`).
        action_repeat: physics steps per agent step; *reference*: the task's DMC-GB default / 2.
        frame_stack: frames per observation.
        image_size: rendered height/width in pixels.
        render_quality: ``reference`` (MuJoCo defaults, as DMC-GB) or ``fast`` (docs/performance.md: 0.7–0.9 grey levels from the reference, 5× faster).
        seed: seeds the training env (evaluation uses distinct seeds).
        num_agent_steps: run length in agent steps; *reference*: 500k / DrQ-v2's 1.1M frames (its "easy"
            tasks) or 3.1M (its "medium" ones: cheetah_run, walker_run, reacher_easy, reacher_hard) at
            the action repeat: 550k or 1.55M agent steps at 2.
        init_steps: agent steps of uniform random actions before the first update; *reference*: 1000 /
            DrQ-v2's 4,000 seed frames (2,000 agent steps at action repeat 2).
        updates_per_step: gradient updates per collected agent step after `init_steps` (paper: 1).
        update_every_steps: the updates run every this many agent steps; *reference*: 1 / 2.
        warmup_burst: at the end of the random warm-up, run `init_steps` updates at once; *reference*:
            True (the SAC / SVEA / SGQN code) / False (DrQ-v2).
        batch_size: transitions per update batch; *reference*: 128 / 256 (walker tasks: 512).
        replay_capacity: transitions kept in replay; *reference*: the whole run / DrQ-v2's 1M, or the
            whole run when shorter; checked against free RAM (``memory``) or free disk space (``disk``).
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
        n_step: n of the n-step return the replay serves; *reference*: 1 (one-step TD) / 3 (walker
            tasks: 1).
        n_step_partial_windows: with n > 1, also sample the last n − 1 transitions of each episode, with
            an m-step return (m < n) bootstrapped with γ^m from the episode's final observation. False
            (DrQ-v2's replay): only transitions whose n transitions all lie in their episode.
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
        learner: whose references fill the options left None: ``sac`` (sac, svea, sgqn) or ``drqv2``
            (drqv2, drqv2_sgqn); set from ``--model.algorithm`` by `sgqn fit`.
    """

    def __init__(
        self,
        task: str = "walker_walk",
        action_repeat: int | None = None,
        frame_stack: int = 3,
        image_size: int = 84,
        render_quality: Literal["reference", "fast"] = "reference",
        seed: int = 0,
        num_agent_steps: int | None = None,
        init_steps: int | None = None,
        updates_per_step: int = 1,
        update_every_steps: int | None = None,
        warmup_burst: bool | None = None,
        batch_size: int | None = None,
        replay_capacity: int | None = None,
        replay_storage: Literal["memory", "disk"] = "memory",
        replay_dir: str | None = None,
        replay_spare_rows: int = 0,
        n_step: int | None = None,
        n_step_partial_windows: bool = False,
        discount: float = 0.99,
        frames_per_batch: int = 1,
        overlap_collection: bool = False,
        policy_sync_every: int = 1,
        dmcgb_root: str | None = None,
        davis_root: str | None = None,
        places_root: str | None = None,
        learner: Learner = "sac",
    ) -> None:
        super().__init__()
        # The options left None: `learner`'s reference for the task (`sgqn.envs.tasks.resolve_settings`),
        # resolved before `save_hyperparameters`, which reads these locals: hparams, checkpoints and the
        # logged params hold the values used.
        given = {
            "data.action_repeat": action_repeat,
            "data.n_step": n_step,
            "data.batch_size": batch_size,
            "data.num_agent_steps": num_agent_steps,
            "data.init_steps": init_steps,
            "data.update_every_steps": update_every_steps,
            "data.warmup_burst": warmup_burst,
            "data.replay_capacity": replay_capacity,
        }
        resolved = resolve_settings(learner, task if task in TASK_DEFAULTS else None, given)
        action_repeat = resolved["data.action_repeat"]
        n_step, batch_size = resolved["data.n_step"], resolved["data.batch_size"]
        num_agent_steps, init_steps = resolved["data.num_agent_steps"], resolved["data.init_steps"]
        update_every_steps, warmup_burst = resolved["data.update_every_steps"], resolved["data.warmup_burst"]
        replay_capacity = resolved["data.replay_capacity"]
        self.save_hyperparameters()  # the flat options, for checkpoints and `from_checkpoint`
        self.env_settings = EnvSettings(
            task=task,
            action_repeat=action_repeat,
            frame_stack=frame_stack,
            image_size=image_size,
            render_quality=render_quality,
            seed=seed,
            sources=DataSources(dmcgb_root, davis_root, places_root),
        )
        self.replay_settings = ReplaySettings(
            capacity=replay_capacity,
            storage=replay_storage,
            dir=replay_dir,
            spare_rows=replay_spare_rows,
            n_step=n_step,
            n_step_partial_windows=n_step_partial_windows,
            discount=discount,
            batch_size=batch_size,
        )
        self.schedule = UpdateSchedule(
            num_agent_steps=num_agent_steps,
            init_steps=init_steps,
            updates_per_step=updates_per_step,
            update_every_steps=update_every_steps,
            warmup_burst=warmup_burst,
            frames_per_batch=frames_per_batch,
            overlap_collection=overlap_collection,
            policy_sync_every=policy_sync_every,
        )
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
        env = self.env_settings
        name, _, intensity = mode.partition("@")
        return partial(
            make_env,
            env.task,
            action_repeat=env.action_repeat,
            frame_stack=env.frame_stack,
            image_size=env.image_size,
            render_quality=env.render_quality,
            seed=env.seed if seed is None else seed,
            mode=name,
            intensity=float(intensity) if intensity else None,
            data=env.sources,
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
        schedule, settings = self.schedule, self.replay_settings
        env = self.make_env()  # seeded: no `collector.set_seed`, whose env reset would desync its first obs
        env.append_transform(StepCounter())  # episode step → replay rows know where episodes start
        # The collector runs the policy once on its first observation (to learn its output keys): keep
        # that call's exploration noise out of the global RNG stream, which a resume restores before this.
        with torch.random.fork_rng():
            self.collector = Collector(
                env,
                policy,
                frames_per_batch=schedule.frames_per_batch,
                total_frames=-1,
                init_random_frames=schedule.init_steps,
                auto_register_policy_transforms=False,  # the actor reads pixels only; no InitTracker
            )
        resume = self._resume
        disk = settings.storage == "disk"
        if disk and resume is not None and "replay" in resume:
            scratch_dir: Path | None = Path(resume["replay"]["scratch_dir"])  # the files the state refers to
        else:
            scratch_dir = self.resolve_replay_dir() if disk else None
        self.replay = FrameReplay.from_settings(
            settings,
            frame_stack=self.env_settings.frame_stack,
            num_agent_steps=schedule.num_agent_steps,
            frame_shape=(3, *self.observation_shape[1:]),
            action_dim=self.action_dim,
            scratch_dir=scratch_dir,
            pin_memory=device.type == "cuda",
        )
        self.stream = EnvStream(
            self.collector, self.replay, schedule, stats=self.stats, sync_policy=sync_policy
        )
        if resume is not None and "replay" in resume:
            self._restore(resume)
        self._resume = None
        return self.stream

    def resolve_replay_dir(self) -> Path:
        """Where a new ``disk`` replay keeps its files (a resumed one: where its checkpoint says)."""
        folder = self.replay_settings.dir
        if folder is not None:
            return Path(folder)
        if self.trainer is not None:
            # Beside the run's checkpoints (`<root>/<experiment id>/<run id>/`): one folder per run.
            checkpoints = getattr(self.trainer.checkpoint_callback, "dirpath", None)
            if checkpoints:
                return Path(checkpoints).parent / "replay"
            return Path(self.trainer.default_root_dir) / "replay"
        raise ValueError("replay_storage='disk' needs replay_dir (or a trainer: <default_root_dir>/replay)")

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module  # type: ignore[union-attr]
        if self.schedule.overlap_collection:  # a snapshot of the actor, synced by the stream
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


__all__ = ["DMCDataModule"]
