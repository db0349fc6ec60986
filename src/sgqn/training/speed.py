"""Every speed switch of `sgqn fit` (`--model.speed.*`), applied from outside the maths, LeanRL's way: the
networks and the update of `sgqn.algorithms` are written once, plainly; this module wraps them.

    speed_up_networks(agent, options)   channels-last convs, bf16 convs, the sub-pixel decoder
    set_process_options(options)        TF32, glibc's malloc (process-wide, at setup)
    update_function(agent, …)           the update as is, or recorded per due pattern: compiled whole
                                        and/or replayed as CUDA graphs (`sgqn.training.whole_update`)

None changes the maths beyond float rounding, except bf16 (noted). A switch stays only where it was
measured faster somewhere or awaits a GPU figure (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn

from sgqn.algorithms.agent import Agent, Due, Metrics
from sgqn.nets.decoder import AttributionDecoder, UpsampleConv
from sgqn.nets.drqv2 import DrQv2Encoder
from sgqn.nets.sac import Encoder
from sgqn.training import devices
from sgqn.training.subpixel import SubpixelUpsampleConv
from sgqn.training.whole_update import WholeUpdates

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile's modes that capture CUDA graphs
Update = Callable[[TensorDictBase, Any, Due], Metrics]


@dataclass(frozen=True)
class SpeedOptions:
    """Speed switches, kept apart from the science settings.

    Args:
        channels_last: the convolutions in channels-last memory format (11-23% faster per update on the
            2-core CPU, `benchmarks/update_step.py`).
        subpixel_decoder: SGQN's attribution decoder's upsample + conv pairs in sub-pixel form: the same
            parameters, function and gradients up to float rounding, ~4x faster on CPU (False: the
            reference's literal upsample-then-conv).
        compile_update: `torch.compile` the whole update (every loss, backward pass, Adam step and the
            target EMA), one graph per due pattern; random draws inside come from inductor's RNG.
        compile_mode: `torch.compile`'s mode (None: default; e.g. "max-autotune-no-cudagraphs"); not a
            CUDA-graph mode: `graph_update` captures the graphs.
        graph_update: run the whole update as one recorded function per due pattern; on a GPU tensordict's
            `CudaGraphModule` captures it after two eager calls and each later update is one CUDA graph
            replay (the Adams are then `capturable`). Lightning's optimizer-step count is advanced outside
            it; its per-step hooks (`on_before_backward`, …) are not called. Not with
            `on_nonfinite="skip"` (it stops an update midway); 32-bit trainer precision.
        autocast_bf16: the convolutions under bf16 autocast on the module's device; losses and optimizers
            stay fp32 (faster on GPUs and on CPUs with native bf16, AMX / AVX512-BF16; much slower on
            others; changes numerics).
        tf32: CUDA's fp32 matmuls and convs in TF32 (True) or strict IEEE fp32 (False); None keeps
            PyTorch's defaults, what the reference ran with (cuDNN convs in TF32, matmuls IEEE). Set at
            setup, process-wide; no effect on CPUs. TF32 rounds products to a 10-bit mantissa.
        tune_malloc: `tune_cpu_malloc()` at setup (process-wide; large speed-up on CPU).
    """

    channels_last: bool = True
    subpixel_decoder: bool = True
    compile_update: bool = False
    compile_mode: str | None = None
    graph_update: bool = False
    autocast_bf16: bool = False
    tf32: bool | None = None
    tune_malloc: bool = True


def check_options(options: SpeedOptions, on_nonfinite: str) -> None:
    """Refuse what a recorded or compiled whole update cannot do."""
    if options.graph_update and on_nonfinite == "skip":
        raise ValueError('speed.graph_update needs on_nonfinite="stop": "skip" stops an update midway')
    if options.compile_update and options.compile_mode in CUDA_GRAPH_MODES:
        raise ValueError(
            f"speed.compile_update: compile_mode {options.compile_mode!r} captures CUDA graphs itself; the "
            "whole update's graphs are speed.graph_update's (with both, they would be captured twice): use "
            "None or max-autotune-no-cudagraphs"
        )


# --------------------------------------------------------------------------- networks


class ChannelsLastInput(nn.Module):
    """Mixin: the convolutions' input in channels-last memory format."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last))  # type: ignore[misc]


class Bf16Autocast(nn.Module):
    """Mixin: the convolutions under bf16 autocast on the input's device, their output back in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return super().forward(x).float()  # type: ignore[misc]


_MIXED: dict[tuple[type, type], type] = {}


def _mix(module: nn.Module, mixin: type) -> None:
    """`module` becomes an instance of a subclass of its class with `mixin`'s forward first (a class, not a
    patched instance: a deep copy, e.g. a policy snapshot, then computes with its own weights)."""
    base = type(module)
    if (mixin, base) not in _MIXED:
        cls = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {"__module__": __name__})
        globals()[cls.__name__] = _MIXED[mixin, base] = cls  # where pickle looks it up
    module.__class__ = _MIXED[mixin, base]


def speed_up_networks(agent: nn.Module, options: SpeedOptions) -> None:
    """Give every conv trunk of `agent` (encoders, target copies included, and the attribution decoder)
    the faster forms `options` asks for. Same parameters, state-dict keys and functions."""
    for module in agent.modules():
        if options.subpixel_decoder and type(module) is UpsampleConv:
            module.__class__ = SubpixelUpsampleConv
    for module in agent.modules():
        if not isinstance(module, Encoder | DrQv2Encoder | AttributionDecoder):
            continue
        if options.autocast_bf16:
            _mix(module.convs, Bf16Autocast)
        if options.channels_last:
            _mix(module.convs, ChannelsLastInput)  # outermost: the input is converted first
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- the process


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


def set_process_options(options: SpeedOptions) -> list[str]:
    """The process-wide switches; returns what was set, for the log."""
    done = []
    if options.tune_malloc and tune_cpu_malloc():
        done.append("glibc malloc tuned: no mmap'd allocations, no trimming")
    if options.tf32 is not None:
        devices.set_tf32(options.tf32)
        done.append(f"TF32 {'on' if options.tf32 else 'off'}")
    return done


# --------------------------------------------------------------------------- the update


def update_function(
    agent: Agent,
    options: SpeedOptions,
    optimizers: dict[str, Any],
    device: torch.device,
    before_capture: Callable[[], None] | None = None,
) -> Update:
    """What runs one update, `(batch, opt, due) -> metrics`: `agent.update` itself, or with
    `graph_update` / `compile_update` a `WholeUpdates` over the plain `optimizers` (capturable Adams on a
    GPU), which records the steps it took in `opt` as `agent.update` does."""
    if not (options.graph_update or options.compile_update):
        return agent.update
    return WholeUpdates(
        agent,
        optimizers,
        compile=options.compile_update,
        compile_mode=options.compile_mode,
        cuda_graphs=options.graph_update and device.type == "cuda",
        before_capture=before_capture,
    )


__all__ = [
    "SpeedOptions",
    "check_options",
    "set_process_options",
    "speed_up_networks",
    "tune_cpu_malloc",
    "update_function",
]
