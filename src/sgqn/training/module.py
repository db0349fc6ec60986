"""`AgentModule`: any algorithm of `sgqn.algorithms` as a LightningModule with manual optimisation.

One `training_step` pulls a batch and runs one update of the agent (`Agent.update`: the algorithm's
whole order, in its own file). Around it, what an algorithm need not know: when each optional step is
due (`update_schedule`), the update index (checkpointed), the non-finite check, logging on the update
axis, and the speed switches (`sgqn.training.speed`, applied once, from outside).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Literal, TypeVar

import lightning as L
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn

from sgqn.algorithms import ALGORITHMS, Algorithm
from sgqn.algorithms.agent import NonFiniteLoss, Optimizers, adam_optimizers
from sgqn.algorithms.drqv2 import DrQv2Config
from sgqn.algorithms.factory import AgentConfig, make_agent, resolved_drqv2, resolved_quantile
from sgqn.algorithms.sac import SACConfig
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.algorithms.svea import SVEAConfig
from sgqn.nets.config import NetConfig
from sgqn.nets.sac import Critic
from sgqn.training import devices
from sgqn.training.guards import TrainingDiverged, all_finite, check_weights, nonfinite_message
from sgqn.training.policy import policy_module
from sgqn.training.speed import (
    SpeedOptions,
    Update,
    check_options,
    set_process_options,
    speed_up_networks,
    update_function,
)

log = logging.getLogger(__name__)

OnNonFinite = Literal["stop", "skip"]
UpdateSchedule = Literal["reference", "counted"]
C = TypeVar("C")


def _typed(cls: type[C], value: C | dict[str, Any]) -> C:
    """A config group as its dataclass (a checkpoint's hyper-parameters hold it as a dict)."""
    return cls(**value) if isinstance(value, dict) else value


class _LightningOptimizers(Optimizers):
    """`Optimizers` over Lightning's wrapped optimizers, whose steps count in `trainer.global_step` (what
    `max_steps` and checkpoint intervals read), also those taken inside a recorded update."""

    def took_step(self, optimizer: str, **losses: Tensor) -> None:
        super().took_step(optimizer, **losses)
        wrapped = self.optimizers[optimizer]
        for report in ("_on_before_step", "_on_after_step"):  # what `LightningOptimizer.step` reports
            getattr(wrapped, report, lambda: None)()


class AgentModule(L.LightningModule):
    """Trains one agent (`--model.algorithm`) on batches of stacked pixel frames.

    Batch (a TensorDict, TorchRL keys): "pixels" uint8 `[B, C, H, W]`, "action" `[B, A]`,
    ("next", "pixels"), ("next", "reward") `[B, 1]`, ("next", "terminated") bool `[B, 1]`.

    Args:
        algorithm: "sac" (SAC + DrQ shift), "svea" (+ overlay-augmented critic), "sgqn" (+ saliency
            guidance), "drqv2" (DrQ-v2) or "drqv2_sgqn" (DrQ-v2 + the same saliency guidance).
        discount: γ (0.99).
        net: the networks' sizes (`sgqn.nets.config.NetConfig`).
        sac: SAC's settings (`sgqn.algorithms.sac.SACConfig`): sac, svea, sgqn.
        svea: SVEA's (`sgqn.algorithms.svea.SVEAConfig`): svea.
        sgqn: SGQN's guidance (`sgqn.algorithms.saliency_guidance.SGQNConfig`): sgqn, drqv2_sgqn.
        drqv2: DrQ-v2's (`sgqn.algorithms.drqv2.DrQv2Config`): drqv2, drqv2_sgqn.
        update_schedule: what the `*_update_freq`s count. "reference": the agent step the update runs
            at, as the reference's `update(step)`; its burst of `init_steps` updates at the end of the
            warm-up all run at agent step `init_steps`, so each of them also steps the actor, the target
            and the predictor. "counted": the update's own index (every second burst update does).
        speed: the speed switches (`sgqn.training.speed.SpeedOptions`).
        on_nonfinite: what a non-finite (NaN/inf) loss does: "stop" the run with `TrainingDiverged`
            naming the loss and the update (checked once per update, after it: the last good checkpoint
            is kept, none is written after); "skip": check each loss before its step and skip the rest of
            the update from a non-finite one (`train/skipped_updates` counts them; one host sync per loss).
        observation_shape: (C, H, W) of the stacked frames (set from the data by the CLI).
        action_dim: |A| (set from the data by the CLI).
        task: the DMC task (set from `data.task` by the CLI): SGQN's ρ when `sgqn.quantile` is None, and
            DrQ-v2's σ decay when `drqv2.stddev_steps` is None (`sgqn.envs.tasks.reference_settings`).
        overlay_root: Places365 (or any image folder) for SVEA's and SGQN's overlay; None: the embedded
            images (set from `data.places_root` by the CLI).
    """

    def __init__(
        self,
        algorithm: Algorithm = "sgqn",
        discount: float = 0.99,
        net: NetConfig = NetConfig(),
        sac: SACConfig = SACConfig(),
        svea: SVEAConfig = SVEAConfig(),
        sgqn: SGQNConfig = SGQNConfig(),
        drqv2: DrQv2Config = DrQv2Config(),
        update_schedule: UpdateSchedule = "reference",
        speed: SpeedOptions = SpeedOptions(),
        on_nonfinite: OnNonFinite = "stop",
        observation_shape: tuple[int, int, int] = (9, 84, 84),
        action_dim: int = 6,
        task: str | None = None,
        overlay_root: str | None = None,
    ) -> None:
        super().__init__()
        if update_schedule not in ("reference", "counted"):
            raise ValueError(f"update_schedule must be 'reference' or 'counted', not {update_schedule!r}")
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', not {on_nonfinite!r}")
        if ALGORITHMS.get(algorithm, ("",))[0] == "drqv2":  # σ's decay of the task when None, before
            drqv2 = resolved_drqv2(_typed(DrQv2Config, drqv2), task)  # `save_hyperparameters` reads it
        self.config = AgentConfig(
            algorithm,
            discount,
            _typed(NetConfig, net),
            _typed(SACConfig, sac),
            _typed(SVEAConfig, svea),
            _typed(SGQNConfig, sgqn),
            _typed(DrQv2Config, drqv2),
        )
        self.speed = _typed(SpeedOptions, speed)
        check_options(self.speed, on_nonfinite)
        self.update_schedule, self.on_nonfinite, self.overlay_root = (
            update_schedule,
            on_nonfinite,
            overlay_root,
        )
        self.observation_shape = (
            int(observation_shape[0]),
            int(observation_shape[1]),
            int(observation_shape[2]),
        )
        self.save_hyperparameters()
        # Checkpoints load with `weights_only=True`, which refuses custom classes: the groups as dicts.
        for name, group in asdict(self.config).items():
            self.hparams[name] = group
        self.hparams["speed"] = asdict(self.speed)
        self.automatic_optimization = False

        self.agent = make_agent(self.config, self.observation_shape, action_dim, task)
        self.quantile = resolved_quantile(self.config.sgqn, task)  # ρ of the saliency maps (every algorithm)
        speed_up_networks(self.agent, self.speed)

        self.update_step: Tensor
        self.register_buffer("update_step", torch.zeros((), dtype=torch.long))
        self._host_update_step: int | None = None  # `update_step` on the host, read once after a load
        self.register_load_state_dict_post_hook(
            lambda module, keys: setattr(module, "_host_update_step", None)
        )
        self.skipped_updates = 0  # saved in checkpoints by `on_save_checkpoint` (not a buffer)
        # The latest value of each train/* metric since the last logged update: the actor's and the
        # predictor's run on some updates only, and a log point must show them all (checkpointed).
        self._unlogged: dict[str, Tensor] = {}
        self._optimizers: _LightningOptimizers | None = None  # built when training starts
        self._update: Update = self.agent.update

    @property
    def actor(self) -> nn.Module:
        return self.agent.actor

    @property
    def critic(self) -> Critic:
        return self.agent.critic

    # ------------------------------------------------------------------ setup

    @property
    def uses_overlay(self) -> bool:
        return self.agent.overlay is not None

    def set_overlay_images(self, images: Tensor) -> None:
        """Inject the overlay image bank (uint8 `[N, 3, H, W]`) instead of loading it at setup."""
        if self.agent.overlay is not None:
            self.agent.overlay.set_images(images.to(devices.module_device(self)))  # sampled on-device

    def setup(self, stage: str) -> None:
        for done in set_process_options(self.speed):
            log.info(done)
        precision = str(getattr(self._trainer, "precision", "32-true"))
        if self.speed.graph_update and precision not in ("32-true", "32"):
            # The recorded update calls `backward` itself, without Lightning's precision plugin.
            raise ValueError(f"speed.graph_update needs trainer.precision 32-true, not {precision!r}")
        overlay = self.agent.overlay
        if overlay is not None and overlay.images is None:
            from sgqn.assets.sources import load_overlay_images  # lazy: the data side is heavy to import

            self.set_overlay_images(load_overlay_images(self.overlay_root, self.observation_shape[-1]))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        # A CUDA graph replays Adam's step count on the device: `capturable` (the same update).
        capturable = self.speed.graph_update and self.device.type == "cuda"
        self._plain = adam_optimizers(self.agent, capturable)
        return list(self._plain.values())

    def on_train_start(self) -> None:
        wrapped = self.optimizers()
        wrapped = wrapped if isinstance(wrapped, list) else [wrapped]
        self._optimizers = _LightningOptimizers(
            dict(zip(self._plain, wrapped, strict=True)),
            self.manual_backward,
            skip_nonfinite=self.on_nonfinite == "skip",
        )
        self._update = update_function(
            self.agent, self.speed, self._plain, self.device, before_capture=self._pause_collection
        )

    # ------------------------------------------------------------------ training

    def training_step(self, dataloader_iter: Iterator[tuple[TensorDictBase, int, int]]) -> None:
        # The batch is pulled here rather than handed in by Lightning, whose default fetcher reads one
        # batch ahead: the stream would then have stepped the env and drawn random numbers past the point
        # a checkpoint records, and a resumed run could not continue exactly.
        batch, _, _ = next(dataloader_iter)
        if batch is None:  # an agent step of the random warm-up: nothing to learn yet
            return
        # One asynchronous copy per field (the replay pins its batches when the module is on a GPU).
        batch = devices.to_device(batch, self.device)
        agent_step, index = self._agent_steps(), self._next_update_index()
        due = self.agent.due(index if self.update_schedule == "counted" or agent_step is None else agent_step)
        opt = self._optimizers
        assert opt is not None, "on_train_start builds the optimizers"
        opt.stepped.clear()
        try:
            metrics = self._update(batch, opt, due)
        except NonFiniteLoss:
            self.skipped_updates += 1
            metrics = {}
        else:
            # One fused isfinite over every optimised loss, one host sync: stop before anything (env
            # step, checkpoint, evaluation) uses the diverged weights. (Skip mode checked each already.)
            if self.on_nonfinite == "stop" and not all_finite(opt.stepped.values()):
                raise TrainingDiverged(self._nonfinite_message(opt, index) + self._last_checkpoint_note())
        if self.on_nonfinite == "skip":
            metrics["skipped_updates"] = torch.tensor(float(self.skipped_updates))
        self._log_train(metrics, index, batch.shape[0])

    def _nonfinite_message(self, opt: Optimizers, index: int) -> str:
        specs = self.agent.optimizer_specs()
        lowers = {
            loss: (specs[name].setting, float(specs[name].lr))
            for loss, name in opt.optimizer_of.items()
            if name in specs
        }
        return nonfinite_message(opt.stepped, lowers, index + 1, self._agent_steps())

    def _log_train(self, metrics: dict[str, Tensor], index: int, batch_size: int) -> None:
        if not metrics:
            return
        metrics = {f"train/{k}": v for k, v in metrics.items()}
        # The progress bar and callbacks read these; the loggers get them below, on the update axis.
        self.log_dict(metrics, on_step=True, on_epoch=False, logger=False, batch_size=batch_size)
        # MLflow's step for train/* is the update index (Lightning's batch counter also counts the
        # warm-up's update-free agent steps), with each metric's latest value since the last log point.
        self._unlogged |= metrics  # tensors: no host sync until a log point
        if index % getattr(self.trainer, "log_every_n_steps", 50) == 0:
            values = {k: float(v) for k, v in self._unlogged.items()}
            self._unlogged = {}
            for logger in self.loggers:
                logger.log_metrics(values, step=index)

    def _next_update_index(self) -> int:
        """The index of this update; counts on in the `update_step` buffer (for checkpoints) and in a host
        copy, so that a module on a GPU does not read the buffer back at every update."""
        if self._host_update_step is None:  # after construction or a state-dict load: one read
            self._host_update_step = int(self.update_step)
        index, self._host_update_step = self._host_update_step, self._host_update_step + 1
        self.update_step += 1
        return index

    def _pause_collection(self) -> None:
        # An overlapped collector's policy forward on the GPU would break a CUDA graph capture; it
        # restarts at the next agent step, keeping the steps it collected (as for a checkpoint).
        stream = getattr(getattr(self._trainer, "datamodule", None), "stream", None)
        pause = getattr(stream, "pause", None)
        if pause is not None:
            pause()

    def _agent_steps(self) -> int | None:
        stats = getattr(getattr(self._trainer, "datamodule", None), "stats", None)
        return None if stats is None else int(stats.agent_steps)

    def _last_checkpoint_note(self) -> str:
        callback = getattr(self._trainer, "checkpoint_callback", None)
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        return f"; the last good checkpoint is kept: {path}" if path else "; no checkpoint had been saved yet"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Raising here stops Lightning before it writes the file: last.ckpt keeps the last good weights.
        check_weights(checkpoint["state_dict"], f"at agent step {self._agent_steps()}")
        checkpoint["skipped_updates"] = self.skipped_updates
        checkpoint["unlogged_train_metrics"] = {k: float(v) for k, v in self._unlogged.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_updates = int(checkpoint.get("skipped_updates", 0))
        self._unlogged = {k: torch.tensor(v) for k, v in checkpoint.get("unlogged_train_metrics", {}).items()}

    # ------------------------------------------------------------------ acting and inspection

    def policy_module(self, deterministic: bool, snapshot: bool = False) -> TensorDictModule:
        """TorchRL policy "pixels" → "action" (`sgqn.training.policy.policy_module`)."""
        return policy_module(self.agent, deterministic, snapshot)


__all__ = ["AgentModule"]
