"""Milliseconds per agent update of `SGQNModule` (sac / svea / sgqn / drqv2 / drqv2_sgqn), per speed option.

    python benchmarks/update_step.py                       # paper size: batch 128, 11 conv layers, 84 px
    python benchmarks/update_step.py --quick               # tiny smoke run (CI)
    python benchmarks/update_step.py --variants fp32 channels_last --algorithms sgqn
    python benchmarks/update_step.py --device cuda --variants reference ieee tf32 bf16 tf32+cudagraphs

Each row runs the real `training_step` under a `lightning.Trainer` on synthetic batches and reports the
mean over whole update cycles (the actor / target / aux steps run every 2nd update; "even"/"odd" columns
show both halves), warm-up excluded. "reference" rows replay the SGQN authors' update order (captum
attributions, a second critic forward for the attribution, the post-update attribution at every update,
separate actor / critic encodes, the literal upsample-then-conv decoder) on the same networks, for
comparison. `malloc` rows use glibc's default allocator; every other row runs after `tune_cpu_malloc()`.
Every row runs in a fresh process; `--rounds N` repeats all rows round-robin. On a shared machine prefer
the "best" column (contention only adds time). On `--device cuda` each update is timed between two
`torch.cuda.synchronize()`, the batch comes from pinned host memory as the replay serves it, "ieee" /
"tf32" set `--model.speed.tf32`, and "+cudagraphs" rows compile the whole update with mode
"reduce-overhead" (CUDA graphs); a row that fails is reported as failed and the others still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
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

VARIANTS: dict[str, dict[str, Any]] = {  # `SpeedOptions` fields (everything else at its default)
    "fp32": {"channels_last": False},
    "channels_last": {"channels_last": True},
    "bf16": {"autocast_bf16": True},
    "compile": {"compile": True},
    "cl+compile": {"channels_last": True, "compile": True},
    "all": {"channels_last": True, "autocast_bf16": True, "compile": True},
    "compile_update": {"channels_last": True, "compile_update": True},  # every loss compiled
    # GPU precisions (no effect on CPU): strict fp32, TF32 matmuls + convs, and each with CUDA graphs.
    "ieee": {"tf32": False},
    "tf32": {"tf32": True},
    "tf32+cudagraphs": {"tf32": True, "compile_update": True, "compile_mode": "reduce-overhead"},
    "bf16+cudagraphs": {"autocast_bf16": True, "compile_update": True, "compile_mode": "reduce-overhead"},
}
CPU_VARIANTS = ["fp32", "channels_last", "bf16", "compile", "cl+compile", "all", "compile_update"]
CUDA_VARIANTS = ["reference", "ieee", "fp32", "tf32", "bf16", "tf32+cudagraphs", "bf16+cudagraphs"]


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        _sync(module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        _sync(module.device)
        self.times.append(time.perf_counter() - self._start)


def time_module(
    module: SGQNModule, batch: TensorDict, warmup: int, repeats: int, device: str = "cpu"
) -> list[float]:
    timer = _Timer()
    if device == "cuda":
        batch = batch.pin_memory()  # as the replay serves a CUDA learner
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = DataLoader([batch] * (warmup + repeats), batch_size=None, collate_fn=lambda x: x)
    trainer.fit(module, loader)
    return timer.times[warmup:]


def time_reference(
    module: SGQNModule, batch: TensorDict, warmup: int, repeats: int, device: str = "cpu"
) -> list[float]:
    module.setup("fit")  # the speed settings that `Trainer.fit` would apply (malloc, TF32)
    opts = module.configure_optimizers()
    on = torch.device(device)
    batch = batch.pin_memory() if on.type == "cuda" else batch
    times = []
    for step in range(warmup + repeats):
        _sync(on)
        start = time.perf_counter()
        reference_update(module, batch.to(on, non_blocking=True), opts, step)
        _sync(on)
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


def compute_peak(repeats: int = 5, device: str = "cpu") -> float:
    """Best fp32 FLOP/s this device reaches (all threads on CPU): a square matmul or a channels-last 3×3
    conv of the paper encoder's size, whichever is faster (on AMD CPUs MKL's matmul is the slower of the
    two). On CUDA in PyTorch's default precision (cuDNN convs in TF32, matmuls IEEE)."""
    torch.set_num_threads(os.cpu_count() or 1)
    on = torch.device(device)
    a, b = torch.randn(2048, 2048, device=on), torch.randn(2048, 2048, device=on)
    x = torch.randn(128, 32, 39, 39, device=on).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 32, 3, 3, device=on).contiguous(memory_format=torch.channels_last)
    kernels = [
        (lambda: torch.mm(a, b), 2 * 2048**3),
        (lambda: F.conv2d(x, w), 2 * 128 * 37 * 37 * 32 * 32 * 9),
    ]
    peak = 0.0
    for run, flops in kernels:
        for _ in range(repeats + 1):
            _sync(on)
            start = time.perf_counter()
            run()
            _sync(on)
            peak = max(peak, flops / (time.perf_counter() - start))
    return peak


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _module(args: argparse.Namespace, variant: str, algorithm: str, device: str = "cpu") -> SGQNModule:
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
    ).to(device)
    if module.uses_overlay:
        module.set_overlay_images(torch.randint(0, 256, (64, 3, args.size, args.size), dtype=torch.uint8))
    return module


def measure_row(args: argparse.Namespace, variant: str, algorithm: str) -> list[float]:
    """Seconds per timed update of one row, in this process (the `--row` child)."""
    torch.set_num_threads(os.cpu_count() or 1)
    if variant != "malloc":
        tune_cpu_malloc()
    batch = synthetic_batch(args.batch, args.size, args.action_dim)
    module = _module(args, variant, algorithm, args.device)
    slow = args.device == "cpu" and variant in ("bf16", "all", "bf16+cudagraphs")  # no native bf16 here
    repeats = args.slow_repeats if slow else args.repeats
    if variant == "reference":
        return time_reference(module, batch, args.warmup, repeats, args.device)
    return time_module(module, batch, args.warmup, repeats, args.device)


def run_row(args: argparse.Namespace, variant: str, algorithm: str) -> list[float] | str:
    """Seconds per timed update of a row, or why it failed (the last line of the child's error)."""
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
    flags += ["--device", args.device]
    command = [sys.executable, __file__, "--row", variant, algorithm, *map(str, flags)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=args.row_timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {args.row_timeout:.0f} s"
    lines = [line for line in done.stdout.splitlines() if line.startswith("TIMES ")]
    if done.returncode or not lines:
        print(f"row {variant}/{algorithm} failed:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        errors = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit {done.returncode}"]
        return errors[-1][:200]
    return [float(t) for t in lines[-1].split()[1:]]


def _summary(
    times: dict[tuple[str, str], list[list[float]]],
    failed: dict[tuple[str, str], str],
    warmup: int,
    row_seconds: dict[tuple[str, str], float],
) -> tuple[list[dict[str, Any]], dict[str, tuple[float, str]]]:
    """The rows timed or failed so far (ms; `times`: each run's update times), and per algorithm its
    fastest variant of ours (best ms)."""
    table: list[dict[str, Any]] = []
    fastest: dict[str, tuple[float, str]] = {}
    for (variant, algorithm), runs in times.items():
        if (variant, algorithm) in failed:
            table.append({"algorithm": algorithm, "variant": variant, "failed": failed[variant, algorithm],
                          "row_s": round(row_seconds.get((variant, algorithm), 0.0), 1)})  # fmt: skip
            continue
        if not runs:
            continue
        first_even = warmup % 2  # within a run, run[i] is update number warmup + i
        even = [t for run in runs for i, t in enumerate(run) if i % 2 == first_even]
        odd = [t for run in runs for i, t in enumerate(run) if i % 2 != first_even]
        median = (statistics.median(even) + statistics.median(odd)) / 2 * 1e3
        best = (min(even) + min(odd)) / 2 * 1e3
        if variant not in ("malloc", "reference") and best < fastest.get(algorithm, (math.inf, ""))[0]:
            fastest[algorithm] = (best, variant)
        table.append(
            {"algorithm": algorithm, "variant": variant, "ms_per_update": round(median, 2),
             "best_ms": round(best, 2), "even_ms": round(statistics.median(even) * 1e3, 2),
             "odd_ms": round(statistics.median(odd) * 1e3, 2), "updates_timed": len(even) + len(odd),
             "row_s": round(row_seconds.get((variant, algorithm), 0.0), 1)}
        )  # fmt: skip
    return table, fastest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--action-dim", type=int, default=6)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=6, help="timed updates per row (rounded up to even)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--slow-repeats",
        type=int,
        default=2,
        help="timed updates of the bf16 rows on CPU (slow without native bf16)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="round-robin repetitions of all rows")
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=["sac", "svea", "sgqn", "drqv2", "drqv2_sgqn"],
        help="drqv2 rows use DrQ-v2's 4 conv layers and trunk 50 (its batch is 256: --batch 256)",
    )
    parser.add_argument(
        "--variants", nargs="+", help="rows (default: every CPU variant, or CUDA_VARIANTS on cuda)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--row-timeout", type=float, help="seconds a row may take (compiling included)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and repeats (smoke test)")
    parser.add_argument("--row", nargs=2, metavar=("VARIANT", "ALGORITHM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variants is None:
        args.variants = CUDA_VARIANTS if args.device == "cuda" else ["malloc", "reference", *CPU_VARIANTS]
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

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPU threads"
    print(
        f"batch {args.batch}, {args.layers} conv layers, {args.size} px, {where}, torch {torch.__version__}"
    )
    print(f"load average before: {_load()}")
    peak = compute_peak(device=args.device)
    flops = {algorithm: flops_per_update(args, algorithm) for algorithm in args.algorithms}
    print(f"fp32 peak of this device (best of a matmul and a 3×3 conv): {peak / 1e9:.0f} GFLOP/s")
    for algorithm, count in flops.items():
        floor = count / peak * 1e3
        print(
            f"  {algorithm:<10} {count / 1e9:6.1f} GFLOP/update → ≥ {floor:5.1f} ms/update even at that peak"
        )
    header = (
        f"{'algorithm':<12}{'variant':<17}{'ms/update':>10}{'best':>8}{'even':>9}{'odd':>9}{'GFLOP/s':>9}"
    )
    print(header + "   (ms/update: mean of the median even and odd update; best: of the fastest ones)")
    rows = [(v, a) for v in args.variants for a in args.algorithms if v != "reference" or a == "sgqn"]
    times: dict[tuple[str, str], list[list[float]]] = {row: [] for row in rows}
    failed: dict[tuple[str, str], str] = {}
    row_seconds: dict[tuple[str, str], float] = {}  # each row's process, start-up and compiling included
    shape = {"batch": args.batch, "layers": args.layers, "size": args.size, "action_dim": args.action_dim}
    for _ in range(args.rounds):  # round-robin, so background load spreads over all rows alike
        for row in rows:
            if row not in failed:
                started = time.perf_counter()
                result = run_row(args, *row)
                row_seconds[row] = row_seconds.get(row, 0.0) + time.perf_counter() - started
                if isinstance(result, str):
                    failed[row] = result
                else:
                    times[row].append(result)
                if args.json:  # after every row: a run stopped from outside keeps the rows it timed
                    done = _summary(times, failed, args.warmup, row_seconds)[0]
                    args.json.write_text(json.dumps({"device": where, "torch": torch.__version__, **shape,
                                                     "rows": done}))  # fmt: skip
    table, fastest = _summary(times, failed, args.warmup, row_seconds)
    for entry in table:
        algorithm, variant = entry["algorithm"], entry["variant"]
        if "failed" in entry:
            print(f"{algorithm:<12}{variant:<17} failed: {entry['failed']}", flush=True)
            continue
        halves = f"{entry['even_ms']:>9.1f}{entry['odd_ms']:>9.1f}"
        rate = f"{flops[algorithm] / entry['ms_per_update'] / 1e6:>9.0f}"  # the reference does more work
        print(
            f"{algorithm:<12}{variant:<17}{entry['ms_per_update']:>10.1f}{entry['best_ms']:>8.1f}{halves}{rate}"
        )
    print(f"load average after: {_load()}")
    # Paper scale: the reference trains `--train_steps 500k` agent steps with one update per step.
    print("paper-scale estimate (500k updates, learner time only, fastest row's best cycle):")
    for algorithm, (ms, variant) in sorted(fastest.items()):
        print(f"  {algorithm:<10} {ms:7.1f} ms/update ({variant}) → {ms * 500_000 / 3.6e6:6.2f} h")
    if failed:
        sys.exit(f"{len(failed)} row(s) failed")


if __name__ == "__main__":
    main()
