"""The pieces the update oracles (`reference_drqv2.py`, `reference_svea.py`) are written with: plain
functional forwards over named parameter tensors, the DrQ random shift as replicate-pad-and-crop, and
Adam written out. None of it calls the package's networks, augmentations, losses or optimizers: the
oracles only read the agent's weights (copied, by name) and its settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]


def copy_params(named: Iterable[tuple[str, Tensor]], skip: str | None = None, grad: bool = True) -> Params:
    """Float64 leaf copies of `named_parameters()` pairs, leaving out the names that start with `skip`."""
    out: Params = {}
    for name, p in named:
        if skip is None or not name.startswith(skip):
            out[name] = p.detach().clone().double().requires_grad_(grad)
    return out


def with_prefix(params: Params, prefix: str) -> Params:
    """The entries of `params` under `prefix.` with the prefix removed (a sub-network's own names)."""
    n = len(prefix) + 1
    return {name[n:]: p for name, p in params.items() if name.startswith(prefix + ".")}


# ------------------------------------------------------------------------------------------- layers


def linear(p: Params, name: str, x: Tensor) -> Tensor:
    return F.linear(x, p[f"{name}.weight"], p[f"{name}.bias"])


def projection(p: Params, name: str, x: Tensor) -> Tensor:
    """Linear → LayerNorm (ε 1e-5, affine) → tanh: the trunk of DrQ-v2, the RLProjection of DMC-GB."""
    h = linear(p, f"{name}.0", x)
    return torch.tanh(F.layer_norm(h, h.shape[-1:], p[f"{name}.1.weight"], p[f"{name}.1.bias"], 1e-5))


def mlp(p: Params, name: str, x: Tensor) -> Tensor:
    """Linear → ReLU → Linear → ReLU → Linear."""
    x = torch.relu(linear(p, f"{name}.0", x))
    x = torch.relu(linear(p, f"{name}.2", x))
    return linear(p, f"{name}.4", x)


def conv_layers(p: Params) -> list[str]:
    """Names of the conv layers in `p` ("convs.0", "convs.2", …), in order."""
    idx = sorted(int(k.split(".")[1]) for k in p if k.startswith("convs.") and k.endswith(".weight"))
    return [f"convs.{i}" for i in idx]


def conv(p: Params, name: str, x: Tensor, stride: int) -> Tensor:
    return F.conv2d(x, p[f"{name}.weight"], p[f"{name}.bias"], stride=stride)


def twin_q(p: Params, features: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
    """Q1, Q2 of [projection(features), action] (the critic's own projection, then two MLPs)."""
    za = torch.cat([projection(p, "projection", features), action], dim=-1)
    return mlp(p, "q1", za), mlp(p, "q2", za)


# ------------------------------------------------------------------------------------------- augmentation


def draw_offsets(batch: int, pad: int) -> Tensor:
    """The DrQ shift's offsets, `[B, 2]` in {0, …, 2·pad}: (row, column) per sample."""
    return torch.randint(0, 2 * pad + 1, (batch, 2))


def replicate_shift(pixels: Tensor, pad: int, offsets: Tensor) -> Tensor:
    """Replicate-pad by `pad`, then crop H×W at each sample's (row, column) offset; float64.

    DrQ-v2's `RandomShiftsAug` samples the padded image at pixel centres with `grid_sample`, which is this
    crop in exact arithmetic (its shift's last axis is (x, y), i.e. column first: an iid relabeling)."""
    b, _, h, w = pixels.shape
    padded = F.pad(pixels.double(), (pad, pad, pad, pad), mode="replicate")
    rows, cols = offsets[:, 0].tolist(), offsets[:, 1].tolist()
    return torch.stack([padded[i, :, rows[i] : rows[i] + h, cols[i] : cols[i] + w] for i in range(b)])


# ------------------------------------------------------------------------------------------- Adam


class Adam:
    """Adam (Kingma & Ba; `torch.optim.Adam` without weight decay or AMSGrad), written out:

        m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²,   θ ← θ − lr · m̂ / (√v̂ + ε)

    with m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t) and t the number of steps taken.
    """

    def __init__(self, params: Sequence[Tensor], lr: float, beta1: float = 0.9, beta2: float = 0.999) -> None:
        self.params, self.lr, self.beta1, self.beta2, self.eps = list(params), lr, beta1, beta2, 1e-8
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor]) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m.copy_(b1 * m + (1 - b1) * g)
            v.copy_(b2 * v + (1 - b2) * g * g)
            m_hat, v_hat = m / (1 - b1**self.t), v / (1 - b2**self.t)
            p.copy_(p - self.lr * m_hat / (v_hat.sqrt() + self.eps))

    def minimize(self, loss: Tensor) -> None:
        """One step on d loss / d params."""
        self.step(torch.autograd.grad(loss, self.params))


@torch.no_grad()
def polyak(target: Params, online: Params, tau: float) -> None:
    """θ' ← τ θ + (1 − τ) θ' for every name of `target` (`soft_update_params`)."""
    for name, t in target.items():
        t.copy_(tau * online[name] + (1 - tau) * t)


__all__ = [
    "Adam",
    "Params",
    "conv",
    "conv_layers",
    "copy_params",
    "draw_offsets",
    "linear",
    "mlp",
    "polyak",
    "projection",
    "replicate_shift",
    "twin_q",
    "with_prefix",
]
