"""Evaluation in the train env and every DMC-GB test mode during `fit` (checkpoints: `sgqn evaluate`,
`sgqn.app.evaluate`); the episodes themselves: `sgqn.evaluation.episodes`."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

from sgqn.algorithms import ALGORITHMS
from sgqn.app.schedule import Cadence, agent_steps
from sgqn.envs.state import env_state, load_env_state
from sgqn.envs.tasks import TASK_DEFAULTS, resolve_settings
from sgqn.evaluation.episodes import (
    DEFAULT_MODES,
    EVAL_SEED_OFFSET,
    episode_video,
    run_episodes,
    run_mode_episodes,
    start_workers,
    stop_workers,
    summarize,
)
from sgqn.evaluation.generalization import generalization_gaps, saliency_report

log = logging.getLogger("sgqn.evaluation")


class EvaluationCallback(Callback):
    """Every `every_agent_steps` agent steps (and at the start / end), evaluate in each mode and log to MLflow.

    Logged per mode: `eval/<mode>/return_mean`, `_std`, and when "train" is among the modes the
    `generalization_gap` (train return − mode return) and `saliency_iou` (mask IoU of the same physics
    states seen in train and in the mode: 1 = the critic looks at the same pixels whatever the
    appearance). Pictures: a saliency grid per evaluation (`saliency/step_XXXXXXXX.png`) and, every
    `video_every_evals` evaluations, an mp4 per mode (`videos/<mode>_step_XXXXXXXX.mp4`).

    Args:
        every_agent_steps: evaluation period in agent steps; 0 disables periodic evaluation; None: the
            learner's reference for the task (SAC lineage: 10k; DrQ-v2: 10k frames, 5k agent steps at
            action repeat 2: `sgqn.envs.tasks.reference_settings`), resolved by `sgqn fit`, else at setup.
        episodes: episodes per mode (paper: 10 during training, 100 for final tables).
        modes: ``train`` and/or DMC-GB test modes (see `sgqn.envs.MODES`).
        at_start: also evaluate the untrained policy before the first update (the curve's step 0).
        at_end: also evaluate once when training ends.
        saliency_every_evals: saliency grid + IoU every this many evaluations (0: never).
        saliency_states: physics states compared across modes for the IoU.
        grid_states: of those, how many appear in the grid per mode.
        video_every_evals: eval videos every this many evaluations (0: never; off by default because
            on a CPU the encoding and per-frame saliency cost a noticeable share of a short run).
        video_mask: tint the critic's saliency mask into the video frames.
        workers: 0 (the reference): each mode's episodes one after another, in envs that live in this
            process and carry on from one evaluation to the next (checkpointed). N > 0: N worker
            processes per mode (TorchRL `ParallelEnv`, started at the first evaluation, their start-up
            logged once as `eval/workers_startup_seconds`), every mode's episodes at once in
            ⌈episodes / N⌉ batched rounds, the policy acting on the batch: on a machine with spare cores
            an evaluation takes about one episode's time per round. Evaluation k reseeds them (task and
            appearance draws) from the run's seed and k, so a resumed run evaluates on the episodes an
            uninterrupted one would have; those episodes differ from the reference's. Each worker renders
            with one intra-op thread; this process keeps its own.
    """

    def __init__(
        self,
        every_agent_steps: int | None = None,
        episodes: int = 10,
        modes: list[str] = list(DEFAULT_MODES),  # noqa: B006 (jsonargparse needs a plain default)
        at_start: bool = False,
        at_end: bool = True,
        saliency_every_evals: int = 1,
        saliency_states: int = 8,
        grid_states: int = 2,
        video_every_evals: int = 0,
        video_mask: bool = True,
        workers: int = 0,
    ) -> None:
        self.every_agent_steps, self.episodes, self.modes, self.at_end = (
            every_agent_steps,
            episodes,
            modes,
            at_end,
        )
        self.saliency_every_evals, self.saliency_states, self.grid_states = (
            saliency_every_evals,
            saliency_states,
            grid_states,
        )
        self.video_every_evals, self.video_mask = video_every_evals, video_mask
        self.at_start = at_start
        if workers < 0:
            raise ValueError(f"eval workers must be >= 0, got {workers}")
        self.workers = workers
        self._batched: EnvBase | None = None  # every mode's worker envs, the modes in `self.modes` order
        self._envs: dict[str, EnvBase] = {}
        self.cadence = Cadence(every_agent_steps or 0)  # None: resolved in `setup`
        self._resumed_envs: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, float]] = []

    def _env(self, trainer: Trainer, mode: str) -> EnvBase:
        if mode not in self._envs:
            dm = trainer.datamodule  # type: ignore[attr-defined]
            env = dm.make_env(mode=mode, seed=dm.env_settings.seed + EVAL_SEED_OFFSET)
            if mode in self._resumed_envs:  # continue its initial-state sequence where the run stopped
                load_env_state(env, self._resumed_envs.pop(mode))
            self._envs[mode] = env
        return self._envs[mode]

    def _batched_env(self, trainer: Trainer) -> tuple[EnvBase, float | None]:
        """The worker envs (started at the first call, and how long that took), `workers` per mode."""
        if self._batched is not None:
            return self._batched, None
        start = time.perf_counter()
        dm = trainer.datamodule  # type: ignore[attr-defined]
        # Seeded per evaluation (`evaluate`); this seed only builds them.
        self._batched = start_workers(dm, self.modes, self.workers, dm.env_settings.seed + EVAL_SEED_OFFSET)
        return self._batched, time.perf_counter() - start

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.every_agent_steps is None:  # built directly: the reference of the module's learner
            config = getattr(pl_module, "config", None)
            learner = ALGORITHMS.get(getattr(config, "algorithm", ""), ("sac", None))[0]
            env = getattr(trainer.datamodule, "env_settings", None)  # type: ignore[attr-defined]
            task = getattr(env, "task", None)
            given = {"data.action_repeat": getattr(env, "action_repeat", None)}
            resolved = resolve_settings(learner, task if task in TASK_DEFAULTS else None, given)
            self.every_agent_steps = resolved["eval.every_agent_steps"]
            self.cadence.every = int(self.every_agent_steps)
            self.cadence.next = self.cadence.next or self.cadence.every  # unless a checkpoint set it

    def close(self) -> None:
        """Stop the worker processes (the next evaluation starts new ones)."""
        if self._batched is not None:
            stop_workers(self._batched)
            self._batched = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.close()

    @staticmethod
    def _due(every: int, count: int) -> bool:
        return every > 0 and count % every == 0

    def evaluate(
        self, trainer: Trainer, pl_module: LightningModule, step: int | None = None
    ) -> dict[str, float]:
        """Evaluate now; logged at `step` (default: the agent steps collected so far)."""
        if step is None:
            step = agent_steps(trainer)
        count = len(self.history)
        policy = pl_module.policy_module(deterministic=True)  # type: ignore[operator]
        metrics: dict[str, float] = {}
        was_training = pl_module.training
        pl_module.eval()
        returns: dict[str, float] = {}
        rollouts: dict[str, TensorDictBase] = {}
        episodes: dict[str, list[float]] = {}
        if self.workers:  # started before the clock: its start-up is not part of the evaluation's seconds
            batched, startup = self._batched_env(trainer)
            if startup is not None:
                metrics["eval/workers_startup_seconds"] = startup
        start = time.perf_counter()
        if self.workers:  # evaluation `count`'s episodes, whatever ran before (a resume included)
            seed = trainer.datamodule.env_settings.seed + EVAL_SEED_OFFSET + count * 1000  # type: ignore[attr-defined]
            episodes, rollouts = run_mode_episodes(batched, policy, self.modes, self.episodes, seed)
        else:
            for mode in self.modes:
                episodes[mode], rollouts[mode] = run_episodes(self._env(trainer, mode), policy, self.episodes)
        for mode, episode in episodes.items():
            returns[mode], metrics[f"eval/{mode}/return_std"] = summarize(episode)
            metrics[f"eval/{mode}/return_mean"] = returns[mode]
        metrics["eval/seconds"] = time.perf_counter() - start
        if "train" in returns:
            metrics |= {
                f"eval/{m}/generalization_gap": gap for m, gap in generalization_gaps(returns).items()
            }
        artifacts: list[tuple[str, Any]] = []
        if "train" in self.modes and self._due(self.saliency_every_evals, count):
            start = time.perf_counter()
            report = saliency_report(
                pl_module,
                {mode: self._env(trainer, mode) for mode in self.modes},
                policy,
                frame_stack=trainer.datamodule.env_settings.frame_stack,  # type: ignore[attr-defined]
                num_states=self.saliency_states,
                grid_states=self.grid_states,
                task=trainer.datamodule.env_settings.task,  # type: ignore[attr-defined]
            )
            metrics |= {f"eval/{m}/saliency_iou": iou for m, iou in report.iou.items()}
            metrics |= {f"eval/{m}/mask_coverage": c for m, c in report.coverage.items()}
            for prefix, focus in (("saliency", report.focus), ("predicted", report.predicted_focus)):
                for (
                    mode,
                    scores,
                ) in focus.items():  # an undefined score (e.g. nothing predicted) is not logged
                    metrics |= {f"eval/{mode}/{prefix}_{k}": v for k, v in scores.items() if math.isfinite(v)}
            artifacts.append((f"saliency/step_{step:08d}.png", report.grid))
            metrics["eval/saliency_seconds"] = time.perf_counter() - start
        if self._due(self.video_every_evals, count):
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                for mode, rollout in rollouts.items():
                    video = episode_video(
                        pl_module, rollout, Path(tmp) / f"{mode}_step_{step:08d}.mp4", self.video_mask
                    )
                    artifacts.append(("videos", video))
                self._log_artifacts(trainer, artifacts)
            artifacts = []
            metrics["eval/video_seconds"] = time.perf_counter() - start
        pl_module.train(was_training)
        self._log_artifacts(trainer, artifacts)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.history.append({"agent_steps": float(step), **metrics})
        log.info("eval at %d agent steps: %s", step, metrics)
        return metrics

    @staticmethod
    def _log_artifacts(trainer: Trainer, artifacts: list[tuple[str, Any]]) -> None:
        """Images (name, array) and files (folder, path) into every MLflow logger's run."""
        for logger in trainer.loggers:
            if not isinstance(logger, MLFlowLogger):
                continue
            for name, item in artifacts:
                if isinstance(item, np.ndarray):
                    logger.experiment.log_image(logger.run_id, item, artifact_file=name)
                else:
                    logger.experiment.log_artifact(logger.run_id, str(item), artifact_path=name)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.cadence.due(agent_steps(trainer)):
            self.evaluate(trainer, pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Logged at step 0: the loader may already have collected the random warm-up steps, which
        # leave the policy untouched.
        if self.at_start and not self.history:  # not again when resuming
            self.evaluate(trainer, pl_module, step=0)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        steps = agent_steps(trainer)
        if self.at_end and (not self.history or self.history[-1]["agent_steps"] != steps):
            self.evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        # The eval envs' states too: the next evaluation starts from the initial states it would have had.
        envs = {mode: env_state(env) for mode, env in self._envs.items()} | self._resumed_envs
        return {"cadence": self.cadence.state_dict(), "history": self.history, "envs": envs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cadence.load_state_dict(state_dict["cadence"])
        self.history = state_dict["history"]
        self._resumed_envs = dict(state_dict.get("envs", {}))
