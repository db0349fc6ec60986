"""Milliseconds per agent update of `AgentModule` (sac / svea / sgqn / drqv2 / drqv2_sgqn), per speed option.

    python benchmarks/update_step.py                       # paper size: batch 128, 11 conv layers, 84 px
    python benchmarks/update_step.py --quick               # tiny smoke run (CI)
    python benchmarks/update_step.py --variants fp32 channels_last --algorithms sgqn
    python benchmarks/update_step.py --device cuda --variants reference tf32+graph tf32+graph+compile_update

Each row runs the real `training_step` under a `lightning.Trainer` on synthetic batches and reports the
mean over whole update cycles (the actor / target / aux steps run every 2nd update; "even"/"odd" columns
show both halves), warm-up excluded. A row is a speed variant of `speed_variants.py` ("+"-joined tokens:
`SpeedOptions` fields and Trainer arguments; CPU rows start from channels-last off, CUDA rows from
`sgqn fit`'s defaults). "reference" rows replay the SGQN authors' update order (captum attributions, a
second critic forward for the attribution, the post-update attribution at every update, separate actor /
critic encodes, NCHW convs, the literal upsample-then-conv decoder) on the same networks, for
comparison. `malloc` rows use glibc's default allocator; every other row runs after `tune_cpu_malloc()`.
Every row runs in a fresh process; `--rounds N` repeats all rows round-robin. On a shared machine prefer
the "best" column (contention only adds time). On `--device cuda` each update is timed between two
`torch.cuda.synchronize()`, the batch comes from pinned host memory as the replay serves it, "ieee" /
"tf32" set `--model.speed.tf32`, "+benchmark" sets `--trainer.benchmark` (cuDNN's autotuner),
"+graph" replays the whole update, Adam steps included, as one CUDA graph per due pattern (after 2 eager
calls per pattern: the warm-up must cover them), "+compile_update" `torch.compile`s that whole update (one
graph per due pattern; with "+graph" the compiled update is what the CUDA graphs capture), and `--profile`
updates after the timed ones give the GPU's busy time per update (kernels, copies: what CUDA graphs
cannot remove); a row that fails is reported as failed and the others still run.
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

from sgqn.algorithms.agent import adam_optimizers
from sgqn.nets.config import NetConfig
from sgqn.training.module import AgentModule
from sgqn.training.speed import SpeedOptions, tune_cpu_malloc

sys.path.insert(0, str(Path(__file__).parent))  # run as a script or loaded by path (tests)
from speed_variants import CPU_VARIANTS, CUDA_VARIANTS, speed_fields, tokens, trainer_args

# The SGQN authors' update order, the test oracle (tests/reference_update.py; captum: a dev dependency).
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from reference_update import reference_update


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


def busy_ms(intervals: list[tuple[float, float]]) -> float:
    """Milliseconds covered by the union of (start, end) intervals in µs: a device's busy time, with
    nested or overlapping events counted once."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total / 1e3


class _Profile:
    """The device's busy time over the updates run inside it: on CUDA the kernels', copies' and memsets'
    (what CUDA graphs cannot shorten; ms per update − busy = launch and Python time), on CPU the
    top-level ops'. Kernels replayed from CUDA graphs count as CUPTI reports them. Needs the profiler's
    CUPTI on CUDA; a profile that fails or records no device event reads None."""

    def __init__(self, device: str) -> None:
        self.device = torch.autograd.DeviceType.CUDA if device == "cuda" else torch.autograd.DeviceType.CPU
        activity = torch.profiler.ProfilerActivity
        self.profiler = torch.profiler.profile(
            activities=[activity.CUDA if device == "cuda" else activity.CPU]
        )
        self.updates = 0

    # A profiler that fails (no CUPTI, say) costs the row its busy column, never its times.
    def __enter__(self) -> _Profile:
        self.error = self._guard(self.profiler.__enter__)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.error is None:
            self.error = self._guard(lambda: self.profiler.__exit__(*exc))

    def ms_per_update(self) -> float | None:
        if self.error is None and self.updates:
            events = [e for e in self.profiler.events() if e.device_type == self.device]
            if events:
                return busy_ms([(e.time_range.start, e.time_range.end) for e in events]) / self.updates
            self.error = "no device events recorded"
        print(f"busy time not measured: {self.error or 'no update profiled'}", file=sys.stderr)
        return None

    @staticmethod
    def _guard(call: Any) -> str | None:
        try:
            call()
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        return None


class _Timer(L.Callback):
    """Times each update between two device syncs; the `profile` updates after the timed ones run inside
    a `_Profile`."""

    def __init__(self, device: str, profile_from: int | None = None) -> None:
        self.times: list[float] = []
        self.profile_from, self.profile = profile_from, _Profile(device) if profile_from is not None else None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        _sync(module.device)
        if self.profile is not None and len(self.times) == self.profile_from:
            self.profile.__enter__()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        _sync(module.device)
        self.times.append(time.perf_counter() - self._start)
        if self.profile is not None and len(self.times) > self.profile_from:  # type: ignore[operator]
            self.profile.updates += 1

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.profile is not None and self.profile.updates:
            self.profile.__exit__(None, None, None)


def time_module(
    module: AgentModule,
    batch: TensorDict,
    warmup: int,
    repeats: int,
    device: str = "cpu",
    trainer_args: dict[str, Any] | None = None,
    profile: int = 0,
) -> tuple[list[float], float | None]:
    """Seconds of each timed update, and the device's busy ms per update over `profile` more updates."""
    timer = _Timer(device, warmup + repeats if profile else None)
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
        **(trainer_args or {}),
    )
    loader = DataLoader([batch] * (warmup + repeats + profile), batch_size=None, collate_fn=lambda x: x)
    trainer.fit(module, loader)
    busy = timer.profile.ms_per_update() if timer.profile is not None else None
    return timer.times[warmup : warmup + repeats], busy


def time_reference(
    module: AgentModule, batch: TensorDict, warmup: int, repeats: int, device: str = "cpu", profile: int = 0
) -> tuple[list[float], float | None]:
    module.setup("fit")  # the speed settings that `Trainer.fit` would apply (malloc, TF32)
    agent: Any = module.agent  # an SGQN agent (reference rows are SGQN's)
    opts = list(adam_optimizers(agent).values())  # critic, actor, alpha, aux: the reference's order
    on = torch.device(device)
    batch = batch.pin_memory() if on.type == "cuda" else batch
    times = []
    for step in range(warmup + repeats):
        _sync(on)
        start = time.perf_counter()
        reference_update(agent, batch.to(on, non_blocking=True), opts, step)
        _sync(on)
        times.append(time.perf_counter() - start)
    if not profile:
        return times[warmup:], None
    with _Profile(device) as profiled:
        for step in range(warmup + repeats, warmup + repeats + profile):
            reference_update(agent, batch.to(on, non_blocking=True), opts, step)
            profiled.updates += 1
        _sync(on)
    return times[warmup:], profiled.ms_per_update()


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


def _module(args: argparse.Namespace, variant: str, algorithm: str, device: str = "cpu") -> AgentModule:
    torch.manual_seed(0)
    speed = speed_fields(variant, device)
    if variant == "reference":  # the reference's NCHW convs and literal upsample-then-conv decoder
        speed |= {"channels_last": False, "subpixel_decoder": False}
    speed["tune_malloc"] = variant != "malloc"
    net = NetConfig(num_conv_layers=args.layers)  # feature_dim None: the SAC lineage's 100
    if algorithm.startswith("drqv2"):  # DrQ-v2's own sizes (conf/drqv2.yaml): 4 conv layers, trunk 50
        net = NetConfig(num_conv_layers=min(args.layers, 4), feature_dim=50)
    module = AgentModule(
        algorithm=algorithm,
        net=net,
        speed=SpeedOptions(**speed),
        observation_shape=(9, args.size, args.size),
        action_dim=args.action_dim,
    ).to(device)
    if module.uses_overlay:
        module.set_overlay_images(torch.randint(0, 256, (64, 3, args.size, args.size), dtype=torch.uint8))
    return module


def measure_row(args: argparse.Namespace, variant: str, algorithm: str) -> tuple[list[float], float | None]:
    """Seconds per timed update of one row and the device's busy ms per update, in this process (the
    `--row` child)."""
    torch.set_num_threads(os.cpu_count() or 1)
    if variant != "malloc":
        tune_cpu_malloc()
    batch = synthetic_batch(args.batch, args.size, args.action_dim)
    module = _module(args, variant, algorithm, args.device)
    slow = args.device == "cpu" and "bf16" in tokens(variant)  # no native bf16 here
    repeats = args.slow_repeats if slow else args.repeats
    warmup = args.warmup
    if args.device == "cuda" and "graph" in tokens(variant):
        warmup = max(warmup, 6)  # 2 eager calls then the capture, for each of the 2 due patterns
    if variant == "reference":
        return time_reference(module, batch, warmup, repeats, args.device, args.profile)
    return time_module(module, batch, warmup, repeats, args.device, trainer_args(variant), args.profile)


def run_row(args: argparse.Namespace, variant: str, algorithm: str) -> tuple[list[float], float | None] | str:
    """Seconds per timed update of a row and its busy ms, or why it failed (the child's last error line)."""
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
    flags += ["--device", args.device, "--profile", args.profile]
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
    busy = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("BUSY ")]
    return [float(t) for t in lines[-1].split()[1:]], float(busy[-1]) if busy and busy[-1] != "None" else None


def _summary(
    times: dict[tuple[str, str], list[list[float]]],
    failed: dict[tuple[str, str], str],
    warmup: int,
    row_seconds: dict[tuple[str, str], float],
    busy: dict[tuple[str, str], list[float]],
) -> tuple[list[dict[str, Any]], dict[str, tuple[float, str]]]:
    """The rows timed or failed so far (ms; `times`: each run's update times; `busy`: each run's device
    busy ms per update), and per algorithm its fastest variant of ours (best ms)."""
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
        if busy.get((variant, algorithm)):
            table[-1]["busy_ms"] = round(statistics.mean(busy[variant, algorithm]), 2)
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
        "--profile",
        type=int,
        help="updates profiled after the timed ones for the device's busy time (default: 4 on cuda, 0 on cpu)",
    )
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
    args.profile = (4 if args.device == "cuda" else 0) if args.profile is None else args.profile
    args.profile += args.profile % 2  # whole update cycles
    args.slow_repeats = min(args.slow_repeats + args.slow_repeats % 2, args.repeats)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.row:
        times, busy = measure_row(args, *args.row)
        print("TIMES", *times)
        print("BUSY", busy)
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
        f"{'algorithm':<12}{'variant':<26}{'ms/update':>10}{'best':>8}{'even':>9}{'odd':>9}{'GFLOP/s':>9}"
        f"{'busy':>8}"
    )
    print(header + "   (ms/update: mean of the median even and odd update; best: of the fastest ones;")
    print(
        " " * len(header) + "    busy: ms per update the device spent in kernels / ops, of --profile updates)"
    )
    rows = [(v, a) for v in args.variants for a in args.algorithms if v != "reference" or a == "sgqn"]
    times: dict[tuple[str, str], list[list[float]]] = {row: [] for row in rows}
    failed: dict[tuple[str, str], str] = {}
    busy: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
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
                    times[row].append(result[0])
                    busy[row] += [result[1]] if result[1] is not None else []
                if args.json:  # after every row: a run stopped from outside keeps the rows it timed
                    done, fastest = _summary(times, failed, args.warmup, row_seconds, busy)
                    picks = {algorithm: variant for algorithm, (_, variant) in fastest.items()}
                    args.json.write_text(json.dumps({"device": where, "torch": torch.__version__, **shape,
                                                     "rows": done, "fastest": picks}))  # fmt: skip
    table, fastest = _summary(times, failed, args.warmup, row_seconds, busy)
    for entry in table:
        algorithm, variant = entry["algorithm"], entry["variant"]
        if "failed" in entry:
            print(f"{algorithm:<12}{variant:<26} failed: {entry['failed']}", flush=True)
            continue
        halves = f"{entry['even_ms']:>9.1f}{entry['odd_ms']:>9.1f}"
        rate = f"{flops[algorithm] / entry['ms_per_update'] / 1e6:>9.0f}"  # the reference does more work
        busy = f"{entry['busy_ms']:>8.1f}" if "busy_ms" in entry else f"{'—':>8}"
        print(
            f"{algorithm:<12}{variant:<26}{entry['ms_per_update']:>10.1f}{entry['best_ms']:>8.1f}{halves}{rate}"
            + busy
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
