"""`SGQNModule`: any algorithm of `sgqn.algorithms` (a value learner + a guidance) as a LightningModule
with manual optimisation.

One `training_step` pulls a batch and runs `update`, one agent update in the learner's order
(`sgqn.objectives.learner`); for SAC-based ones the reference order of the SVEA / SGQN code bases:

    augment → critic (+ SVEA overlay term | + SGQN consistency term) → [SGQN aux step: saliency of the
    updated critic] → [actor + temperature] → [target soft update] → [SGQN aux step: attribution predictor]

with the bracketed steps due when the agent step the update runs at is a multiple of their
`*_update_freq` (the reference's `agent.update(replay, L, step)`; `update_schedule="counted"` counts
updates instead). Updates are counted by the `update_step` buffer (saved in checkpoints; Lightning's
`global_step` counts optimizer steps, several per update).
"""

from __future__ import annotations

import copy
import ctypes
import logging
import platform
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn

from sgqn import devices
from sgqn.algorithms import ALGORITHMS, Algorithm
from sgqn.guards import TrainingDiverged, all_finite, check_action, check_weights, nonfinite_message
from sgqn.nets import Actor, AttributionDecoder, Critic, Encoder
from sgqn.nets_drqv2 import DeterministicActor, DrQv2Encoder
from sgqn.objectives import Guidance, SACLoss, SaliencyGuidance, SVEAGuidance, ValueLearner
from sgqn.objectives.drqv2 import DrQv2Loss
from sgqn.objectives.learner import Step, optimizer_step
from sgqn.saliency import ZeroTies, attribution_mask, guided_backprop
from sgqn.whole_update import WholeUpdates

log = logging.getLogger(__name__)

OnNonFinite = Literal["stop", "skip"]
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile's modes that capture CUDA graphs
UpdateSchedule = Literal["reference", "counted"]


@dataclass(frozen=True)
class SpeedOptions:
    """Speed switches, kept apart from the science settings (`--model.speed.*`): none changes the maths
    beyond float rounding, except `autocast_bf16` (noted).

    Args:
        channels_last: the encoder's convs in channels-last memory format (on: 11-23% faster per update on
            the 2-core CPU, `benchmarks/update_step.py`).
        subpixel_decoder: SGQN's attribution decoder's upsample + conv pairs in sub-pixel form: the same
            parameters, function and gradients up to float rounding, ~4x faster on CPU (False = the
            reference's literal upsample-then-conv).
        compile: `torch.compile` the no-grad forwards (TD target, the actor step's conv features); the
            target's policy noise then comes from inductor's RNG stream.
        compile_update: `torch.compile` every loss of the update (TD target, critic with SGQN's guided
            attribution, mask and consistency, actor, α, the attribution predictor), each the learner's and
            guidance's `compiled_losses`; the backward passes and Adam steps stay eager. SGQN's attribution
            then takes a critic forward of its own with the ReLUs fixed to the guided rule (as the
            reference's captum call) instead of sharing the critic loss's: the same values
            (`tests/test_compile.py` pins compiled == eager). Random draws inside come from inductor's RNG.
        compile_mode: `torch.compile`'s mode for `compile_update` (None: default; e.g.
            "max-autotune-no-cudagraphs" on CPU, "reduce-overhead" for CUDA graphs on a GPU). With CUDA
            graphs each update starts a new graph generation, the metrics kept past it are cloned off
            the graphs' memory pool and the grads are dropped after each optimizer step (the next replay
            overwrites its outputs; a kept grad failed Lightning's teardown on an H200).
        graph_update: run the whole update (every loss, backward pass, Adam step and the target EMA) as
            one function per due pattern (`sgqn.whole_update`): with `compile_update`, that function is
            `torch.compile`d whole (mode `compile_mode`, which must then not be a CUDA-graph one) instead
            of loss by loss; on a GPU, tensordict's `CudaGraphModule` captures it after two eager calls
            and each later update is one CUDA graph replay (the Adams are then `capturable`). Lightning's
            optimizer-step count is advanced outside it; its per-step hooks (`on_before_backward`,
            `on_before_optimizer_step`, …) are not called. Not with `on_nonfinite="skip"` (it stops an
            update midway); 32-bit trainer precision.
        autocast_bf16: convs under bf16 autocast on the module's device; losses and optimizers stay fp32
            (faster on GPUs and on CPUs with native bf16 — AMX / AVX512-BF16 — and much slower on other
            CPUs; changes numerics).
        tf32: CUDA's fp32 matmuls and convs in TF32 (True) or strict IEEE fp32 (False); None keeps
            PyTorch's defaults, what the reference ran with (cuDNN convs in TF32, matmuls IEEE). Set at
            setup, process-wide (`devices.set_tf32`); no effect on our CPUs. TF32 rounds products to a
            10-bit mantissa.
        tune_malloc: call `tune_cpu_malloc()` at setup (process-wide; large speed-up on CPU).
    """

    channels_last: bool = True
    subpixel_decoder: bool = True
    compile: bool = False
    compile_update: bool = False
    compile_mode: str | None = None
    graph_update: bool = False
    autocast_bf16: bool = False
    tf32: bool | None = None
    tune_malloc: bool = True


def _forget_host_update_step(module: nn.Module, incompatible_keys: Any) -> None:
    module._host_update_step = None  # type: ignore[assignment]  # re-read from the loaded buffer


class _SkipUpdate(Exception):
    """A loss was non-finite under ``on_nonfinite="skip"``: the rest of the update is not applied."""


def tune_cpu_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS after every large tensor.

    glibc serves allocations above its mmap threshold (≤ 32 MB) with fresh mmaps, and a fresh mmap
    page-faults on first touch: a batch of 128 × 84² activations then costs more in page faults than in
    convolutions (×3-4 per update on a 2-core VM). Disabling mmap allocation and trimming keeps them
    reused. Process-wide, idempotent; returns False where it does not apply (non-glibc).
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


class _Policy(nn.Module):
    """Pixels `[..., C, H, W]` (uint8 or float, any leading batch dims, or none) → action `[..., A]`.

    Acts with the learner's live actor, or with `actor`, a snapshot of it that `sync()` refreshes (an
    overlapped collector acts in its own thread while the learner steps the live weights).
    """

    def __init__(self, learner: ValueLearner, deterministic: bool, actor: nn.Module | None = None) -> None:
        super().__init__()
        # The actor is registered (TorchRL sees the parameters a policy reads); the learner's `act` is
        # referenced, not registered (a loss module is not a policy).
        self.actor, self.deterministic = learner.actor if actor is None else actor, deterministic
        self.snapshot = actor is not None
        self._act, self._live = learner.act, learner.actor
        self._lock = threading.Lock()  # a snapshot is not read while `sync` writes it

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        # The env's pixels go to wherever the weights are now; the action comes back to the env.
        batch_shape = pixels.shape[:-3]
        obs = devices.to_device(pixels.reshape(-1, *pixels.shape[-3:]), devices.module_device(self.actor))
        with self._lock:
            action = self._act(obs.float(), self.deterministic, self.actor if self.snapshot else None)
        if action.device != pixels.device:
            action = devices.to_host(action).to(pixels.device)
        check_action(action)  # on the host copy the env needs anyway: no extra device sync
        return action.reshape(*batch_shape, action.shape[-1])

    def sync(self) -> None:
        """Copy the live actor's weights into the snapshot (no-op for a live policy)."""
        if self.snapshot:
            with self._lock:
                self.actor.load_state_dict(self._live.state_dict())


class SGQNModule(L.LightningModule):
    """SAC (DrQ random shift), SVEA or SGQN on stacked pixel frames.

    Batch (a TensorDict, TorchRL keys): "pixels" uint8 `[B, C, H, W]`, "action" `[B, A]`,
    ("next", "pixels"), ("next", "reward") `[B, 1]`, ("next", "terminated") bool `[B, 1]`.

    Args:
        algorithm: "sac" (SAC + DrQ shift), "svea" (+ overlay-augmented critic), "sgqn" (+ saliency
            guidance), "drqv2" (DrQ-v2) or "drqv2_sgqn" (DrQ-v2 + the same saliency guidance).
        observation_shape: (C, H, W) of the stacked frames, C = 3 × frames.
        action_dim: |A|.
        num_conv_layers: conv layers of the shared encoder (11 in the paper).
        num_filters: channels of each conv layer (32).
        feature_dim: width of the actor's and critic's projections (100).
        hidden_dim: width of the actor and Q MLPs (1024).
        actor_hidden_dim: the actor's MLP width alone; None: `hidden_dim`, as the reference. A small
            config that narrows the critic can keep the paper's actor: an actor's initial mean action
            shrinks as 1/√width, so a narrow actor starts by pushing hard one way.
        discount: γ (0.99).
        actor_lr: Adam learning rate of the actor (1e-3).
        actor_beta: Adam β1 of the actor (0.9).
        critic_lr: Adam learning rate of the critic, encoder included (1e-3).
        critic_beta: Adam β1 of the critic (0.9).
        alpha_lr: Adam learning rate of log α (1e-4).
        alpha_beta: Adam β1 of log α (0.5).
        init_temperature: initial α (0.1); the entropy target is −|A|.
        actor_update_freq: actor and temperature step when the agent step is a multiple of this (2).
        critic_target_update_freq: target soft update when the agent step is a multiple of this (2).
        critic_tau: Polyak rate of the target Q heads (0.01).
        encoder_tau: Polyak rate of the target convs and critic projection (0.05; the reference's
            `critic.encoder` includes the projection).
        actor_log_std_min: lower bound of the policy's log σ (−10).
        actor_log_std_max: upper bound of the policy's log σ (2).
        shift_pad: DrQ random-shift padding (4; 0 disables the shift).
        quantile: SGQN's ρ; None: the task's (`sgqn.envs.TASK_DEFAULTS`: 0.98 for cartpole and ball_in_cup,
            0.95 for the others, as the paper). Also used by `attribution_maps`.
        task: the DMC task (set from `data.task` by the CLI): where a `None` ρ comes from.
        aux_lr: Adam learning rate of the attribution predictor, shared encoder included (3e-4).
        aux_beta: Adam β1 of the attribution predictor (0.9).
        aux_update_freq: attribution-predictor step when the agent step is a multiple of this (2).
        update_schedule: what the `*_update_freq`s count. "reference": the agent step the update runs
            at, as the reference's `update(step)`; its burst of `init_steps` updates at the end of the
            warm-up all run at agent step `init_steps`, so each of them also steps the actor, the target
            and the predictor. "counted": the update's own index (every second burst update does).
        consistency_weight: SGQN's λ on the consistency term (0.5).
        mask_zero_ties: "keep" (reference): pixels tied with the ρ-quantile are salient, so a frame whose
            guided attribution is zero on ≥ ρ of its pixels gets an all-ones mask (its consistency term
            vanishes and the predictor learns "everything"); "drop": a zero attribution is never salient.
            `train/mask_full_frames` logs how often the all-ones case happens.
        decoder_channels: the attribution decoder's first feature map and hidden conv widths ((32, 128, 64)
            as the paper; smaller for CPU smoke configs, where the decoder would dominate the update).
        svea_alpha: SVEA weight of the clean TD loss (0.5).
        svea_beta: SVEA weight of the overlay TD loss (0.5).
        stddev_init, stddev_final, stddev_steps: DrQ-v2's exploration σ, linear from `stddev_init` to
            `stddev_final` over `stddev_steps` agent steps (1.0, 0.1, 100k: its "easy" tasks; 500k on
            cheetah_run and walker_run).
        stddev_clip: DrQ-v2's clip of the target's and the actor step's noise (0.3).
        overlay_root: Places365 (or any image folder) for the overlay; None = the embedded images.
        speed: the speed switches (`SpeedOptions`; as a dict when restored from a checkpoint).
        on_nonfinite: what a non-finite (NaN/inf) loss does: "stop" the run with `TrainingDiverged`
            naming the loss and the update (checked once per update, after it: the last good checkpoint
            is kept, none is written after); "skip": check each loss before its step and skip the rest of
            the update from a non-finite one (`train/skipped_updates` counts them; one host sync per loss).
    """

    def __init__(
        self,
        algorithm: Algorithm = "sgqn",
        observation_shape: tuple[int, int, int] = (9, 84, 84),
        action_dim: int = 6,
        num_conv_layers: int = 11,
        num_filters: int = 32,
        feature_dim: int = 100,
        hidden_dim: int = 1024,
        actor_hidden_dim: int | None = None,
        discount: float = 0.99,
        actor_lr: float = 1e-3,
        actor_beta: float = 0.9,
        critic_lr: float = 1e-3,
        critic_beta: float = 0.9,
        alpha_lr: float = 1e-4,
        alpha_beta: float = 0.5,
        init_temperature: float = 0.1,
        actor_update_freq: int = 2,
        critic_target_update_freq: int = 2,
        critic_tau: float = 0.01,
        encoder_tau: float = 0.05,
        actor_log_std_min: float = -10.0,
        actor_log_std_max: float = 2.0,
        shift_pad: int = 4,
        quantile: float | None = None,
        task: str | None = None,
        aux_lr: float = 3e-4,
        aux_beta: float = 0.9,
        aux_update_freq: int = 2,
        consistency_weight: float = 0.5,
        mask_zero_ties: ZeroTies = "keep",
        update_schedule: UpdateSchedule = "reference",
        decoder_channels: tuple[int, int, int] = (32, 128, 64),
        svea_alpha: float = 0.5,
        svea_beta: float = 0.5,
        stddev_init: float = 1.0,
        stddev_final: float = 0.1,
        stddev_steps: int = 100_000,
        stddev_clip: float = 0.3,
        overlay_root: str | None = None,
        speed: SpeedOptions = SpeedOptions(),
        on_nonfinite: OnNonFinite = "stop",
    ) -> None:
        super().__init__()
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
        if update_schedule not in ("reference", "counted"):
            raise ValueError(f"update_schedule must be 'reference' or 'counted', not {update_schedule!r}")
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', not {on_nonfinite!r}")
        if isinstance(speed, dict):  # restored from a checkpoint's hyper-parameters
            speed = SpeedOptions(**speed)
        self.save_hyperparameters()
        # Stored as a plain dict: checkpoints load with `weights_only=True`, which refuses custom classes.
        self.hparams["speed"] = asdict(speed)
        self.speed = speed
        self.automatic_optimization = False
        if quantile is None:
            from sgqn.envs.tasks import DEFAULT_QUANTILE

            quantile = DEFAULT_QUANTILE.get(task or "", 0.95)
        self.quantile = float(quantile)  # the ρ in use (the hyper-parameter may be None: the task's)
        obs_shape = (int(observation_shape[0]), int(observation_shape[1]), int(observation_shape[2]))
        fast = dict(channels_last=speed.channels_last, autocast_bf16=speed.autocast_bf16)
        learner, guided_by = ALGORITHMS[algorithm]
        actor_width = hidden_dim if actor_hidden_dim is None else actor_hidden_dim
        encoder: nn.Module
        actor: nn.Module
        if learner == "drqv2":
            encoder = DrQv2Encoder(obs_shape, num_conv_layers, num_filters, **fast)
            actor = DeterministicActor(encoder, action_dim, feature_dim, actor_width)
        else:
            encoder = Encoder(obs_shape, num_conv_layers, num_filters, **fast)
            actor = Actor(encoder, action_dim, feature_dim, actor_width, actor_log_std_min, actor_log_std_max)
        critic = Critic(encoder, action_dim, feature_dim, hidden_dim)  # type: ignore[arg-type]
        guidance: Guidance | None = None
        if guided_by == "svea":
            guidance = SVEAGuidance(svea_alpha=svea_alpha, svea_beta=svea_beta)
        elif guided_by == "sgqn":
            widths = (int(decoder_channels[0]), int(decoder_channels[1]), int(decoder_channels[2]))
            decoder = AttributionDecoder(
                action_dim, feature_dim, obs_shape, widths, subpixel=speed.subpixel_decoder, **fast
            )
            guidance = SaliencyGuidance(
                critic,
                decoder,
                quantile=self.quantile,
                consistency_weight=consistency_weight,
                zero_ties=mask_zero_ties,
                aux_update_freq=aux_update_freq,
            )
        shared: dict[str, Any] = dict(
            discount=discount, critic_tau=critic_tau, shift_pad=shift_pad, guidance=guidance
        )
        self.loss: ValueLearner
        if learner == "drqv2":
            drqv2 = dict(stddev_init=stddev_init, stddev_final=stddev_final, stddev_steps=stddev_steps)
            self.loss = DrQv2Loss(actor, critic, stddev_clip=stddev_clip, **drqv2, **shared)  # type: ignore[arg-type]
        else:
            self.loss = SACLoss(
                actor,  # type: ignore[arg-type]
                critic,
                init_temperature=init_temperature,
                encoder_tau=encoder_tau,
                actor_update_freq=actor_update_freq,
                critic_target_update_freq=critic_target_update_freq,
                **shared,
            )
        self.update_step: Tensor
        self.register_buffer("update_step", torch.zeros((), dtype=torch.long))
        self._host_update_step: int | None = None  # `update_step` on the host, read once after a load
        self.register_load_state_dict_post_hook(_forget_host_update_step)
        self.skipped_updates = 0  # saved in checkpoints by `on_save_checkpoint` (not a buffer: old ones load)
        # The latest value of each train/* metric since the last logged update: the actor's and the
        # predictor's run on some updates only, and a log point must show them all (checkpointed).
        self._unlogged: dict[str, Tensor] = {}
        self._optimizer_names: list[str] = []  # set by `configure_optimizers`
        self._whole_updates: WholeUpdates | None = None  # built with the optimizers (`graph_update`)
        if speed.graph_update:
            self._check_graph_update(speed, on_nonfinite)
        if speed.compile_update:  # with graph_update, `WholeUpdates` compiles the whole update instead
            self._compile_update(speed.compile_mode, each_loss=not speed.graph_update)
        elif speed.compile:
            self._compile_pure_parts()

    # The networks live in the loss module (one copy in checkpoints: "loss.actor.*", "loss.critic.*").
    @property
    def actor(self) -> nn.Module:
        return self.loss.actor

    @property
    def critic(self) -> Critic:
        return self.loss.critic

    # ------------------------------------------------------------------ setup

    @property
    def uses_overlay(self) -> bool:
        return self.loss.guidance.overlay_bank() is not None

    def set_overlay_images(self, images: Tensor) -> None:
        """Inject the overlay image bank (uint8 `[N, 3, H, W]`) instead of loading it at setup."""
        overlay = self.loss.guidance.overlay_bank()
        if overlay is not None:
            overlay.set_images(images.to(devices.module_device(self)))  # sampled on-device every update

    def setup(self, stage: str) -> None:
        hp: Any = self.hparams
        if self.speed.tune_malloc and tune_cpu_malloc():
            log.info("glibc malloc tuned: no mmap'd allocations, no trimming")
        if self.speed.tf32 is not None:
            devices.set_tf32(self.speed.tf32)
        precision = str(getattr(self._trainer, "precision", "32-true"))
        if self.speed.graph_update and precision not in ("32-true", "32"):
            # The recorded update calls `backward` itself, without Lightning's precision plugin.
            raise ValueError(f"speed.graph_update needs trainer.precision 32-true, not {precision!r}")
        overlay = self.loss.guidance.overlay_bank()
        if overlay is not None and overlay.images is None:
            from sgqn.assets.sources import load_overlay_images  # lazy: the data side is heavy to import

            self.set_overlay_images(load_overlay_images(hp.overlay_root, hp.observation_shape[-1]))

    def _check_graph_update(self, speed: SpeedOptions, on_nonfinite: str) -> None:
        if on_nonfinite == "skip":
            raise ValueError('speed.graph_update needs on_nonfinite="stop": "skip" stops an update midway')
        if speed.compile_update and speed.compile_mode in _CUDA_GRAPH_MODES:
            raise ValueError(
                f"speed.graph_update captures CUDA graphs itself: compile_mode {speed.compile_mode!r} would "
                "capture them twice (use None or max-autotune-no-cudagraphs)"
            )

    def _compile_pure_parts(self) -> None:
        # Only the no-grad forwards: there inductor fuses each conv with its ReLU (~25% faster encoder
        # forward on CPU). Compiled training forwards/backwards measured no faster (the decoder slower),
        # and a compiled region would freeze the GuidedReLUs to the ordinary rule.
        for name in self.loss.compilable:  # each learner names its pure no-grad forwards
            setattr(self.loss, name, torch.compile(getattr(self.loss, name), dynamic=False))

    @property
    def _cuda_graphs(self) -> bool:
        """The compiled update replays CUDA graphs (torch.compile's modes that use them, on a GPU)."""
        speed = self.speed
        graphs = speed.compile_update and not speed.graph_update and speed.compile_mode in _CUDA_GRAPH_MODES
        return graphs and self.device.type == "cuda"

    def _compile_update(self, mode: str | None, each_loss: bool = True) -> None:
        # Each loss is compiled where it is defined (learner, guidance); the update's order, its due
        # rules and the optimizer steps stay Python, so what is compiled is exactly what eager runs.
        if each_loss:
            for owner in (self.loss, self.loss.guidance):
                for name in owner.compiled_losses:
                    setattr(owner, name, torch.compile(getattr(owner, name), mode=mode, dynamic=False))
        if isinstance(self.loss.guidance, SaliencyGuidance):  # a compiled graph fixes one ReLU rule
            self.loss.guidance.separate_guided_forward = True

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        # One Adam per named group of the learner and the guidance, with that group's lr and β1 (e.g.
        # `critic_lr`, `critic_beta`); `_update` steps them by name.
        hp: Any = self.hparams
        groups = self.loss.all_param_groups()
        self._optimizer_names = list(groups)  # the order of `self.optimizers()`
        # A CUDA graph replays Adam's step count on the device: `capturable` (the same update).
        capturable = self.speed.graph_update and self.device.type == "cuda"
        optimizers: list[torch.optim.Optimizer] = [
            torch.optim.Adam(
                params, lr=hp[f"{prefix}_lr"], betas=(hp[f"{prefix}_beta"], 0.999), capturable=capturable
            )
            for params, prefix in groups.values()
        ]
        self._whole_updates = None  # recorded again over these optimizers
        return optimizers

    # ------------------------------------------------------------------ training

    def _optimize(self, optimizer: Any, loss: Tensor, name: str, losses: dict[str, Tensor]) -> None:
        """[skip mode: refuse a non-finite loss] → zero_grad → backward into this optimizer's parameters
        only → step; `losses` collects what was optimised for the once-per-update check."""
        if self.hparams["on_nonfinite"] == "skip" and not bool(torch.isfinite(loss)):
            raise _SkipUpdate(name)
        losses[name] = loss.detach()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss, inputs=[p for group in optimizer.param_groups for p in group["params"]])
        optimizer.step()
        if self._cuda_graphs:  # the grads are a backward graph's outputs, overwritten by its next replay
            optimizer.zero_grad(set_to_none=True)

    def standalone_step(self) -> Step:
        """A `Step` over fresh optimizers from `configure_optimizers`, to drive `self.loss.update` without a
        Lightning trainer (benchmarks, tests)."""
        optimizers = self.configure_optimizers()  # names them
        return optimizer_step(dict(zip(self._optimizer_names, optimizers, strict=True)))

    def training_step(self, dataloader_iter: Iterator[tuple[TensorDictBase, int, int]]) -> None:
        # The batch is pulled here rather than handed in by Lightning, whose default fetcher reads one
        # batch ahead: the stream would then have stepped the env and drawn random numbers past the point
        # a checkpoint records, and a resumed run could not continue exactly.
        batch, _, _ = next(dataloader_iter)
        if batch is None:  # an agent step of the random warm-up: nothing to learn yet
            return
        # Lightning moves a batch it hands in to the module's device; one pulled here is moved here, in
        # one asynchronous copy per field (the replay pins its batches when the module is on a GPU).
        self.update(devices.to_device(batch, self.device), self._env_steps())

    def update(self, batch: TensorDictBase, agent_step: int | None = None) -> None:
        """One agent update on `batch`, run at `agent_step` (what `update_schedule="reference"` keys the
        `*_update_freq`s on; None: the update's index), checked for non-finite losses (`on_nonfinite`)."""
        step = self._next_update_index()
        if self._cuda_graphs:  # a new generation: the previous update's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        reference = self.hparams.get("update_schedule", "reference") == "reference"
        due_at = agent_step if reference and agent_step is not None else step
        losses: dict[str, Tensor] = {}
        try:
            metrics = self._update(batch, due_at, losses)
        except _SkipUpdate:
            self.skipped_updates += 1
            metrics = {}
        else:
            # One fused isfinite over every optimised loss, one host sync: stop before anything (env
            # step, checkpoint, evaluation) uses the diverged weights. (Skip mode checked each already.)
            if self.hparams["on_nonfinite"] == "stop" and not all_finite(losses.values()):
                message = nonfinite_message(losses, step + 1, self._env_steps(), self.hparams)
                raise TrainingDiverged(message + self._last_checkpoint_note())
        if self._cuda_graphs:  # kept past this update (progress bar, next log point): off the graphs' pool
            metrics = {k: v.clone() for k, v in metrics.items()}
        if self.hparams["on_nonfinite"] == "skip":
            metrics["skipped_updates"] = torch.tensor(float(self.skipped_updates))
        if not metrics:
            return
        metrics = {f"train/{k}": v for k, v in metrics.items()}
        # The progress bar and callbacks read these; the loggers get them below, on the update axis.
        self.log_dict(metrics, on_step=True, on_epoch=False, logger=False, batch_size=batch.shape[0])
        # MLflow's step for train/* is the update index (Lightning's batch counter also counts the
        # warm-up's update-free agent steps), with each metric's latest value since the last log point.
        if self._trainer is None:
            return
        self._unlogged |= metrics  # tensors: no host sync until a log point
        if step % getattr(self.trainer, "log_every_n_steps", 50) == 0:
            values = {k: float(v) for k, v in self._unlogged.items()}
            self._unlogged = {}
            for logger in self.loggers:
                logger.log_metrics(values, step=step)

    def _next_update_index(self) -> int:
        """The index of this update; counts on in the `update_step` buffer (for checkpoints) and in a host
        copy, so that a module on a GPU does not read the buffer back at every update."""
        if self._host_update_step is None:  # after construction or a state-dict load: one read
            self._host_update_step = int(self.update_step)
        step, self._host_update_step = self._host_update_step, self._host_update_step + 1
        self.update_step += 1
        return step

    def _update(self, batch: TensorDictBase, step: int, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """One agent update of the learner (its order: `sgqn.objectives.learner`), whose frequencies are
        keyed on `step`; returns its metrics."""
        optimizers = dict(zip(self._optimizer_names, self.optimizers(), strict=True))  # type: ignore[arg-type]
        if self.speed.graph_update:
            return self._whole_update(batch, step, losses, optimizers)

        def optimize(optimizer: str, name: str, loss: Tensor) -> None:
            self._optimize(optimizers[optimizer], loss, name, losses)

        return self.loss.update(batch, step, optimize)

    def _whole_update(
        self, batch: TensorDictBase, step: int, losses: dict[str, Tensor], optimizers: dict[str, Any]
    ) -> dict[str, Tensor]:
        """`_update` as one recorded function per due pattern (`SpeedOptions.graph_update`)."""
        if self._whole_updates is None:
            raw = {name: getattr(opt, "optimizer", opt) for name, opt in optimizers.items()}  # unwrapped
            self._whole_updates = WholeUpdates(
                self.loss,
                raw,
                compile=self.speed.compile_update,
                compile_mode=self.speed.compile_mode,
                cuda_graphs=self.device.type == "cuda",
                before_capture=self._pause_collection,
            )
        metrics, optimised, stepped = self._whole_updates(batch, step)
        losses |= optimised
        for name in stepped:  # what `LightningOptimizer.step` reports to the loop: `global_step` counts it
            for report in ("_on_before_step", "_on_after_step"):
                getattr(optimizers[name], report, lambda: None)()
        return metrics

    def _pause_collection(self) -> None:
        # An overlapped collector's policy forward on the GPU would break a CUDA graph capture; it
        # restarts at the next agent step, keeping the steps it collected (as for a checkpoint).
        stream = getattr(getattr(self._trainer, "datamodule", None), "stream", None)
        pause = getattr(stream, "pause", None)
        if pause is not None:
            pause()

    def _env_steps(self) -> int | None:
        stats = getattr(getattr(self._trainer, "datamodule", None), "stats", None)
        return None if stats is None else int(stats.env_steps)

    def _last_checkpoint_note(self) -> str:
        callback = getattr(self._trainer, "checkpoint_callback", None)
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        return f"; the last good checkpoint is kept: {path}" if path else "; no checkpoint had been saved yet"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Raising here stops Lightning before it writes the file: last.ckpt keeps the last good weights.
        check_weights(checkpoint["state_dict"], f"at agent step {self._env_steps()}")
        checkpoint["skipped_updates"] = self.skipped_updates
        checkpoint["unlogged_train_metrics"] = {k: float(v) for k, v in self._unlogged.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_updates = int(checkpoint.get("skipped_updates", 0))
        self._unlogged = {k: torch.tensor(v) for k, v in checkpoint.get("unlogged_train_metrics", {}).items()}

    # ------------------------------------------------------------------ acting and inspection

    def policy_module(self, deterministic: bool, snapshot: bool = False) -> TensorDictModule:
        """TorchRL policy "pixels" → "action" sharing the actor's parameters (no grad).

        Samples from the policy for exploration; tanh(mean) when `deterministic` (evaluation). With
        `snapshot`, it acts with a copy of the actor instead, refreshed by `policy.module.sync()` (for
        collection overlapped with learning).
        """
        actor = copy.deepcopy(self.loss.actor).requires_grad_(False) if snapshot else None
        policy = _Policy(self.loss, deterministic, actor)
        return TensorDictModule(policy, in_keys=["pixels"], out_keys=["action"])

    def attribution_maps(self, obs: Tensor, action: Tensor | None = None) -> dict[str, Tensor | None]:
        """Saliency of the current critic for visualisation; no optimizer state or gradient is touched.

        Args:
            obs: uint8 (or float in [0, 255]) `[B, C, H, W]` or `[C, H, W]`.
            action: `[B, A]`; None → the deterministic policy's action.

        `obs` and `action` may be on the host: they are moved to the module's device and the maps
        come back to the host. Returns a dict of `[B, C, H, W]` tensors: "attribution" (guided backprop of Q1), "mask" (bool,
        quantile ρ), "masked_obs" (obs · mask, zeros elsewhere), "predicted_mask" (bool, sigmoid > 0.5 of the
        attribution predictor; None without SGQN) and "predicted_prob" (its sigmoid; None without SGQN).
        """
        unbatched = obs.dim() == 3
        device = devices.module_device(self)
        obs = devices.to_device(obs[None] if unbatched else obs, device).float()
        with torch.no_grad():
            if action is None:
                action = self.loss.act(obs, deterministic=True)
            action = devices.to_device(action.reshape(obs.shape[0], -1), device).float()
        attribution = guided_backprop(self.critic, obs, action)
        mask = attribution_mask(
            attribution, self.quantile, zero_ties=self.hparams.get("mask_zero_ties", "keep")
        )
        with torch.no_grad():
            logits = self.loss.guidance.predict(obs, action)  # None without an attribution predictor
        prob = None if logits is None else torch.sigmoid(logits)
        out = {
            "attribution": attribution,
            "mask": mask,
            "masked_obs": obs * mask,
            "predicted_mask": None if prob is None else prob > 0.5,
            "predicted_prob": prob,
        }
        # On the host, where pictures, videos and IoUs are made (GPU weights: one copy per map).
        host = {k: None if v is None else devices.to_host(v) for k, v in out.items()}
        return {k: (v[0] if unbatched and v is not None else v) for k, v in host.items()}


__all__ = ["SGQNModule", "SpeedOptions", "tune_cpu_malloc"]
