"""Where tensors live: learning on the module's device (CPU or GPU), the env and the replay on the host.

Every host → device move goes through `to_device` (asynchronous: a pinned replay batch reaches the GPU
without a host sync per field) and every device → host copy through `to_host`, so the tests can run the
whole device-moving path on the `meta` device (which, like CUDA, refuses to mix with CPU tensors) with
`to_host` faked.
"""

from __future__ import annotations

import itertools
from typing import TypeVar

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

T = TypeVar("T", Tensor, TensorDictBase)

HOST = torch.device("cpu")


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer), read live: it follows `module.to(...)`."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return HOST if first is None else first.device


def to_device(data: T, device: torch.device) -> T:
    """`data` on `device`, without waiting for the copy (a no-op when it is there already).

    From pinned host memory a CUDA copy is truly asynchronous and ordered on the current stream; from
    pageable memory it is staged synchronously, as a plain `.to` (correct, only slower).
    """
    if data.device == device:
        return data
    return data.to(device, non_blocking=True)


def set_tf32(enabled: bool) -> None:
    """cuBLAS matmuls and cuDNN convs in TF32 (True) or in IEEE fp32 (False). Process-wide.

    PyTorch's defaults differ per op (cuDNN convs TF32, matmuls IEEE); the reference ran with them. Set
    through the API Lightning reads (`torch.get_float32_matmul_precision`, which raises once the newer
    per-backend `fp32_precision` settings disagree); "high" also allows oneDNN's TF32 on CPUs that have
    it (none of ours).
    """
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


def to_host(tensor: Tensor) -> Tensor:
    """A device tensor copied to the host (waits for it): what the env, plots and logs read."""
    return tensor.to(HOST)


__all__ = ["HOST", "module_device", "set_tf32", "to_device", "to_host"]
