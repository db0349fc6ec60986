"""The speed variants that `update_step.py` times, and the `sgqn fit` flags that train with each of them.

A variant is "+"-joined tokens, read left to right: "tf32+graph", "tf32+graph+compile_update+benchmark".
A token sets `SpeedOptions` fields (`--model.speed.*`) or `lightning.Trainer` arguments (`--trainer.*`).
A CPU row starts from channels-last off (the CPU table's `fp32` baseline, kept so that its rows stay
comparable); a CUDA row starts from `SpeedOptions()`, what `sgqn fit` runs, so `fit_flags(variant)`
trains with exactly what the row timed. "reference" (the authors' update order) and "malloc" (glibc's
default allocator) are rows of `update_step.py` alone.

No torch here: `gpu_suite.py` reads it before anything is installed.
"""

from __future__ import annotations

from typing import Any

CPU_BASE: dict[str, Any] = {"channels_last": False}
SPEED: dict[str, dict[str, Any]] = {  # token → SpeedOptions fields
    "fp32": {"channels_last": False},  # the CPU baseline; on CUDA: NCHW in PyTorch's default precision
    "nchw": {"channels_last": False},
    "default": {"channels_last": True},  # SpeedOptions() (tests/test_gpu_suite.py pins it)
    "channels_last": {"channels_last": True},
    "cl": {"channels_last": True},
    "bf16": {"autocast_bf16": True},
    # The whole update (every loss, backward pass, Adam step, the target EMA) `torch.compile`d, one graph
    # per due pattern.
    "compile_update": {"channels_last": True, "compile_update": True},
    # GPU precisions (no effect on CPU): strict IEEE fp32, TF32 matmuls + convs.
    "ieee": {"tf32": False},
    "tf32": {"tf32": True},
    # The whole update as one function per due pattern: one CUDA graph replay per update on a GPU (on
    # the CPU, the same Python); "+compile_update" compiles that function whole.
    "graph": {"graph_update": True},
}
TRAINER: dict[str, dict[str, Any]] = {  # token → lightning.Trainer arguments
    "benchmark": {"benchmark": True},  # cuDNN times its algorithms per conv shape and keeps the fastest
}
ROW_ONLY = ("reference", "malloc")
CPU_VARIANTS = ["fp32", "channels_last", "bf16", "compile_update"]
CUDA_VARIANTS = ["reference", "default", "nchw", "ieee", "tf32", "tf32+benchmark", "bf16",
                 "tf32+graph", "tf32+graph+compile_update"]  # fmt: skip


def tokens(variant: str) -> list[str]:
    """The variant's tokens; ValueError names an unknown one."""
    parts = variant.split("+")
    unknown = [t for t in parts if t not in SPEED and t not in TRAINER and t not in ROW_ONLY]
    if unknown or (len(parts) > 1 and any(t in ROW_ONLY for t in parts)):
        known = sorted([*SPEED, *TRAINER])
        raise ValueError(f"unknown speed variant {variant!r}: join tokens of {known} with '+'")
    return parts


def speed_fields(variant: str, device: str) -> dict[str, Any]:
    """The `SpeedOptions` fields of a row (those not named keep their defaults)."""
    fields = dict(CPU_BASE) if device == "cpu" else {}
    for token in tokens(variant):
        fields |= SPEED.get(token, {})
    return fields


def trainer_args(variant: str) -> dict[str, Any]:
    """The `lightning.Trainer` arguments of a row."""
    args: dict[str, Any] = {}
    for token in tokens(variant):
        args |= TRAINER.get(token, {})
    return args


def _flag(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def fit_flags(variant: str) -> list[str]:
    """`sgqn fit` flags that train with the CUDA row `variant` (on top of the config's defaults)."""
    if any(t in ROW_ONLY for t in tokens(variant)):
        raise ValueError(f"{variant!r} is a row of update_step.py only, not an `sgqn fit` setting")
    flags = [w for k, v in speed_fields(variant, "cuda").items() for w in (f"--model.speed.{k}", _flag(v))]
    return flags + [w for k, v in trainer_args(variant).items() for w in (f"--trainer.{k}", _flag(v))]
