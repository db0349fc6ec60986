"""Milliseconds per agent update of `SGQNModule` (sac / svea / sgqn / drqv2 / drqv2_sgqn) on CPU, per speed option.

    python benchmarks/update_step.py                       # paper size: batch 128, 11 conv layers, 84 px
    python benchmarks/update_step.py --quick               # tiny smoke run (CI)
    python benchmarks/update_step.py --variants fp32 channels_last --algorithms sgqn

Each row runs the real `training_step` under a `lightning.Trainer` on synthetic batches and reports the
mean over whole update cycles (the actor / target / aux steps run every 2nd update; "even"/"odd" columns
show both halves), warm-up excluded. "reference" rows replay the SGQN authors' update order (captum
attributions, a second critic forward for the attribution, the post-update attribution at every update,
separate actor / critic encodes, the literal upsample-then-conv decoder) on the same networks, for
comparison. `malloc` rows use glibc's default allocator; every other row runs after `tune_cpu_malloc()`.
Every row runs in a fresh process; `--rounds N` repeats all rows round-robin. On a shared machine prefer
the "best" column (contention only adds time).
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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader
from torch.utils.flop_counter import flop_registry

from sgqn.module import SGQNModule, SpeedOptions, tune_cpu_malloc
from sgqn.objectives.reference import reference_update

VARIANTS: dict[str, dict[str, bool]] = {  # `SpeedOptions` fields (everything else at its default)
    "fp32": {"channels_last": False},
    "channels_last": {"channels_last": True},
    "bf16": {"autocast_bf16": True},
    "compile": {"compile": True},
    "cl+compile": {"channels_last": True, "compile": True},
    "all": {"channels_last": True, "autocast_bf16": True, "compile": True},
    "compile_update": {"channels_last": True, "compile_update": True},  # every loss compiled
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


def time_reference(module: SGQNModule, batch: TensorDict, warmup: int, repeats: int) -> list[float]:
    opts = module.configure_optimizers()
    times = []
    for step in range(warmup + repeats):
        start = time.perf_counter()
        reference_update(module, batch, opts, step)
        times.append(time.perf_counter() - start)
    return times[warmup:]


class _FlopCounter(TorchDispatchMode):
    """Counts the FLOPs of matmuls and convolutions (forward and backward) with PyTorch's own formulas.

    (`torch.utils.flop_counter.FlopCounterMode` cannot be used: its module hooks reject the
    `autograd.grad` of the guided attribution.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def flops_per_update(args: argparse.Namespace, algorithm: str) -> float:
    """FLOPs of one update, averaged over the 2-update cycle (even updates also run actor, target, aux)."""
    module = _module(args, "fp32", algorithm)
    batch = synthetic_batch(args.batch, args.size, args.action_dim)
    with _FlopCounter() as counter:
        time_module(module, batch, warmup=0, repeats=2)
    return counter.total / 2


def compute_peak(repeats: int = 5) -> float:
    """Best fp32 FLOP/s this CPU reaches on all threads: a square matmul or a channels-last 3×3 conv of
    the paper encoder's size, whichever is faster (on AMD CPUs MKL's matmul is the slower of the two)."""
    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x = torch.randn(128, 32, 39, 39).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 32, 3, 3).contiguous(memory_format=torch.channels_last)
    kernels = [
        (lambda: torch.mm(a, b), 2 * 2048**3),
        (lambda: F.conv2d(x, w), 2 * 128 * 37 * 37 * 32 * 32 * 9),
    ]
    peak = 0.0
    for run, flops in kernels:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            run()
            peak = max(peak, flops / (time.perf_counter() - start))
    return peak


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _module(args: argparse.Namespace, variant: str, algorithm: str) -> SGQNModule:
    torch.manual_seed(0)
    speed: dict[str, Any] = {"channels_last": False, **VARIANTS.get(variant, {})}
    if variant == "reference":
        speed["subpixel_decoder"] = False  # the reference's literal upsample-then-conv decoder
    speed["tune_malloc"] = variant != "malloc"
    options: dict[str, Any] = {"speed": SpeedOptions(**speed)}
    layers = args.layers
    if algorithm.startswith("drqv2"):  # DrQ-v2's own sizes (conf/drqv2.yaml): 4 conv layers, trunk 50
        layers, options["feature_dim"] = min(args.layers, 4), 50
    module = SGQNModule(
        algorithm=algorithm,
        observation_shape=(9, args.size, args.size),
        action_dim=args.action_dim,
        num_conv_layers=layers,
        **options,
    )
    if module.uses_overlay:
        module.set_overlay_images(torch.randint(0, 256, (64, 3, args.size, args.size), dtype=torch.uint8))
    return module


def measure_row(args: argparse.Namespace, variant: str, algorithm: str) -> list[float]:
    """Seconds per timed update of one row, in this process (the `--row` child)."""
    torch.set_num_threads(os.cpu_count() or 1)
    if variant != "malloc":
        tune_cpu_malloc()
    batch = synthetic_batch(args.batch, args.size, args.action_dim)
    module = _module(args, variant, algorithm)
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
    parser.add_argument("--rounds", type=int, default=1, help="round-robin repetitions of all rows")
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=["sac", "svea", "sgqn", "drqv2", "drqv2_sgqn"],
        help="drqv2 rows use DrQ-v2's 4 conv layers and trunk 50 (its batch is 256: --batch 256)",
    )
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
    peak = compute_peak()
    flops = {algorithm: flops_per_update(args, algorithm) for algorithm in args.algorithms}
    print(f"fp32 peak of this CPU (best of a matmul and a 3×3 conv): {peak / 1e9:.0f} GFLOP/s")
    for algorithm, count in flops.items():
        floor = count / peak * 1e3
        print(
            f"  {algorithm:<10} {count / 1e9:6.1f} GFLOP/update → ≥ {floor:5.0f} ms/update even at that peak"
        )
    header = (
        f"{'algorithm':<12}{'variant':<15}{'ms/update':>10}{'best':>8}{'even':>9}{'odd':>9}{'GFLOP/s':>9}"
    )
    print(header + "   (ms/update: mean of the median even and odd update; best: of the fastest ones)")
    rows = [(v, a) for v in args.variants for a in args.algorithms if v != "reference" or a == "sgqn"]
    times: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
    for _ in range(args.rounds):  # round-robin, so background load spreads over all rows alike
        for row in rows:
            times[row] += run_row(args, *row)
    fastest: dict[str, tuple[float, str]] = {}
    for (variant, algorithm), row_times in times.items():
        first_even = args.warmup % 2  # within a run, times[i] is update number warmup + i
        per_run = len(row_times) // args.rounds
        even = [t for i, t in enumerate(row_times) if (i % per_run) % 2 == first_even]
        odd = [t for i, t in enumerate(row_times) if (i % per_run) % 2 != first_even]
        median = (statistics.median(even) + statistics.median(odd)) / 2 * 1e3
        best = (min(even) + min(odd)) / 2 * 1e3
        if variant not in ("malloc", "reference") and best < fastest.get(algorithm, (math.inf, ""))[0]:
            fastest[algorithm] = (best, variant)
        halves = f"{statistics.median(even) * 1e3:>9.0f}{statistics.median(odd) * 1e3:>9.0f}"
        rate = f"{flops[algorithm] / median / 1e6:>9.0f}"  # the reference row does more work than this
        print(f"{algorithm:<12}{variant:<15}{median:>10.0f}{best:>8.0f}{halves}{rate}", flush=True)
    print(f"load average after: {_load()}")
    # Paper scale: the reference trains `--train_steps 500k` agent steps with one update per step.
    print("paper-scale estimate (500k updates, learner time only, fastest row's best cycle):")
    for algorithm, (ms, variant) in sorted(fastest.items()):
        print(f"  {algorithm:<10} {ms:7.0f} ms/update ({variant}) → {ms * 500_000 / 3.6e6:6.0f} h")


if __name__ == "__main__":
    main()
