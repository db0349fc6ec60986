"""Milliseconds per agent update of `SGQNModule` (sac / svea / sgqn) on CPU, per speed option.

    python benchmarks/update_step.py                       # paper size: batch 128, 11 conv layers, 84 px
    python benchmarks/update_step.py --quick               # tiny smoke run (CI)
    python benchmarks/update_step.py --variants fp32 channels_last --algorithms sgqn

Each row runs the real `training_step` under a `lightning.Trainer` on synthetic batches and reports the
mean over whole update cycles (the actor / target / aux steps run every 2nd update; "even"/"odd" columns
show both halves), warm-up excluded. "reference" rows replay the SGQN authors' update order (captum
attributions, a second critic forward for the attribution, the post-update attribution at every update,
separate actor / critic encodes, the literal upsample-then-conv decoder) on the same networks, for
comparison. `malloc` rows use glibc's default allocator; every other row runs after `tune_cpu_malloc()`.
Every row runs in a fresh process. On a shared machine prefer the "best" column (contention only adds).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch.utils.data import DataLoader

from sgqn.module import SGQNModule, tune_cpu_malloc
from sgqn.nets import squashed_gaussian_sample
from sgqn.saliency import attribution_mask, masked_observation

VARIANTS: dict[str, dict[str, bool]] = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"autocast_bf16": True},
    "compile": {"compile": True},
    "cl+compile": {"channels_last": True, "compile": True},
    "all": {"channels_last": True, "autocast_bf16": True, "compile": True},
}


def synthetic_batch(batch: int, size: int, action_dim: int) -> TensorDict:
    pixels = lambda: torch.randint(0, 256, (batch, 9, size, size), dtype=torch.uint8)  # noqa: E731
    return TensorDict(
        {
            "pixels": pixels(),
            "action": torch.rand(batch, action_dim) * 2 - 1,
            "next": {
                "pixels": pixels(),
                "reward": torch.rand(batch, 1),
                "terminated": torch.zeros(batch, 1, dtype=torch.bool),
            },
        },
        batch_size=[batch],
    )


class _Timer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def time_module(module: SGQNModule, batch: TensorDict, warmup: int, repeats: int) -> list[float]:
    timer = _Timer()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = DataLoader([batch] * (warmup + repeats), batch_size=None, collate_fn=lambda x: x)
    trainer.fit(module, loader)
    return timer.times[warmup:]


def reference_update(
    module: SGQNModule, batch: TensorDict, opts: list[torch.optim.Optimizer], step: int
) -> None:
    """The SGQN authors' `SGSAC.update` order on our networks (captum guided backprop, as their code)."""
    from captum.attr import GuidedBackprop

    loss, critic, actor = module.loss, module.critic, module.actor
    guidance = loss.guidance  # type: ignore[attr-defined]

    def attribution(obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return GuidedBackprop(_Q1(critic, action)).attribute(obs)

    obs, next_obs = loss.augment(batch)
    action = batch["action"]
    target_q = loss.target_value(next_obs, batch["next", "reward"], batch["next", "terminated"])
    q1, q2 = critic(obs, action)
    critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
    mask = attribution_mask(attribution(obs, action), guidance.quantile)
    mq1, mq2 = critic(masked_observation(obs, mask), action)
    critic_loss = critic_loss + 0.5 * (F.mse_loss(q1, mq1) + F.mse_loss(q2, mq2))
    opts[0].zero_grad()
    critic_loss.backward()
    opts[0].step()
    mask = attribution_mask(attribution(obs, action), guidance.quantile)
    if step % 2 == 0:
        mean, log_std = actor(obs)
        pi, log_pi = squashed_gaussian_sample(mean, log_std)
        aq1, aq2 = critic.heads(critic.encoder(obs).detach(), pi)
        actor_loss = (loss.alpha.detach() * log_pi - torch.min(aq1, aq2)).mean()
        opts[1].zero_grad()
        actor_loss.backward()
        opts[1].step()
        alpha_loss = (loss.alpha * (-log_pi - loss.target_entropy).detach()).mean()
        opts[2].zero_grad()
        alpha_loss.backward()
        opts[2].step()
        loss.target_critic.update(critic)
        overlay = loss.overlay(obs)  # type: ignore[operator]
        aux = F.binary_cross_entropy_with_logits(guidance.predict(overlay, action), mask.float())
        opts[3].zero_grad()
        aux.backward()
        opts[3].step()


class _Q1(torch.nn.Module):
    """obs → Q1(obs, action): the reference's captum `ModelWrapper`."""

    def __init__(self, critic: torch.nn.Module, action: torch.Tensor) -> None:
        super().__init__()
        self.critic, self.action = critic, action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs, self.action)[0]


def time_reference(module: SGQNModule, batch: TensorDict, warmup: int, repeats: int) -> list[float]:
    opts = module.configure_optimizers()
    times = []
    for step in range(warmup + repeats):
        start = time.perf_counter()
        reference_update(module, batch, opts, step)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure_row(args: argparse.Namespace, variant: str, algorithm: str) -> list[float]:
    """Seconds per timed update of one row, in this process (the `--row` child)."""
    torch.set_num_threads(os.cpu_count() or 1)
    if variant != "malloc":
        tune_cpu_malloc()
    torch.manual_seed(0)
    batch = synthetic_batch(args.batch, args.size, args.action_dim)
    options: dict[str, Any] = dict(VARIANTS.get(variant, {}))
    if variant == "reference":
        options["subpixel_decoder"] = False  # the reference's literal upsample-then-conv decoder
    module = SGQNModule(
        algorithm=algorithm,
        observation_shape=(9, args.size, args.size),
        action_dim=args.action_dim,
        num_conv_layers=args.layers,
        tune_malloc=variant != "malloc",
        **options,
    )
    if module.uses_overlay:
        module.set_overlay_images(torch.randint(0, 256, (64, 3, args.size, args.size), dtype=torch.uint8))
    repeats = args.slow_repeats if variant in ("bf16", "all") else args.repeats
    if variant == "reference":
        return time_reference(module, batch, args.warmup, repeats)
    return time_module(module, batch, args.warmup, repeats)


def run_row(args: argparse.Namespace, variant: str, algorithm: str) -> list[float]:
    # A fresh process per row: the allocator's state and torch.compile's caches would leak across rows.
    flags = [
        "--batch",
        args.batch,
        "--layers",
        args.layers,
        "--size",
        args.size,
        "--action-dim",
        args.action_dim,
    ]
    flags += ["--repeats", args.repeats, "--slow-repeats", args.slow_repeats, "--warmup", args.warmup]
    command = [sys.executable, __file__, "--row", variant, algorithm, *map(str, flags)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("TIMES ")]
    if done.returncode or not lines:
        raise RuntimeError(f"row {variant}/{algorithm} failed:\n{done.stderr[-3000:]}")
    return [float(t) for t in lines[-1].split()[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--action-dim", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=6, help="timed updates per row (rounded up to even)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--slow-repeats",
        type=int,
        default=2,
        help="timed updates of the bf16 rows (slow without native bf16)",
    )
    parser.add_argument("--algorithms", nargs="+", default=["sac", "svea", "sgqn"])
    parser.add_argument("--variants", nargs="+", default=["malloc", "reference", *VARIANTS])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and repeats (smoke test)")
    parser.add_argument("--row", nargs=2, metavar=("VARIANT", "ALGORITHM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.layers, args.size, args.repeats, args.warmup = 8, 2, 32, 2, 1
    args.repeats += args.repeats % 2
    args.slow_repeats = min(args.slow_repeats + args.slow_repeats % 2, args.repeats)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.row:
        print("TIMES", *measure_row(args, *args.row))
        return

    print(f"batch {args.batch}, {args.layers} conv layers, {args.size} px, {os.cpu_count()} threads")
    print(f"load average before: {_load()}")
    header = f"{'algorithm':<10}{'variant':<15}{'ms/update':>10}{'best':>8}{'even':>9}{'odd':>9}"
    print(header + "   (ms/update: mean of the median even and odd update; best: of the fastest ones)")
    fastest: dict[str, tuple[float, str]] = {}
    for variant in args.variants:
        for algorithm in args.algorithms:
            if variant == "reference" and algorithm != "sgqn":
                continue
            times = run_row(args, variant, algorithm)
            first_even = args.warmup % 2  # times[i] is update number warmup + i
            even, odd = times[first_even::2], times[1 - first_even :: 2]
            median = (statistics.median(even) + statistics.median(odd)) / 2 * 1e3
            best = (min(even) + min(odd)) / 2 * 1e3
            if variant not in ("malloc", "reference") and best < fastest.get(algorithm, (math.inf, ""))[0]:
                fastest[algorithm] = (best, variant)
            halves = f"{statistics.median(even) * 1e3:>9.0f}{statistics.median(odd) * 1e3:>9.0f}"
            print(f"{algorithm:<10}{variant:<15}{median:>10.0f}{best:>8.0f}{halves}", flush=True)
    print(f"load average after: {_load()}")
    # Paper scale: the reference trains `--train_steps 500k` agent steps with one update per step.
    print("paper-scale estimate (500k updates, learner time only, fastest row's best cycle):")
    for algorithm, (ms, variant) in sorted(fastest.items()):
        print(f"  {algorithm:<6} {ms:7.0f} ms/update ({variant}) → {ms * 500_000 / 3.6e6:6.0f} h")


if __name__ == "__main__":
    main()
