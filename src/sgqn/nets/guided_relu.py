"""ReLUs whose backward pass may follow guided backprop's rule (Springenberg et al. 2015).

Guided backprop changes only the backward rule of the ReLUs: a gradient passes where the ReLU's input was
positive AND the incoming gradient is positive. A forward recorded under a `GuidedRule` (``with
rule.recording():``) can be back-propagated with either rule, chosen when the backward runs, so a single
critic forward serves both the attribution (guided rule, to the pixels) and the critic's loss (ordinary
rule, to the weights). The switch belongs to that one recorded forward (it is saved in its graph), not to
the process: another network's backward (an actor sharing the encoder, evaluated concurrently in another
thread) always follows the ordinary rule.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_RECORDING: contextvars.ContextVar[GuidedRule | None] = contextvars.ContextVar("guided_rule", default=None)


class GuidedRule:
    """The backward rule of one recorded forward's `GuidedReLU`s: ordinary unless `guided` is set."""

    def __init__(self) -> None:
        self.guided = False  # read when a backward reaches a ReLU, not when the forward ran

    @contextlib.contextmanager
    def recording(self) -> Iterator[GuidedRule]:
        """Forwards run inside record their `GuidedReLU`s under this rule (this thread only)."""
        token = _RECORDING.set(self)
        try:
            yield self
        finally:
            _RECORDING.reset(token)

    @contextlib.contextmanager
    def guiding(self) -> Iterator[None]:
        """Backward passes run inside follow the guided rule at this rule's ReLUs (and only there)."""
        previous, self.guided = self.guided, True
        try:
            yield
        finally:
            self.guided = previous


class _SwitchableReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: GuidedRule) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        ctx.rule = rule
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        if ctx.rule.guided:
            grad = grad.clamp(min=0)
        return torch.ops.aten.threshold_backward(grad, out, 0), None


class _GuidedReLUFunction(torch.autograd.Function):
    """ReLU whose backward always follows the guided rule: no state, so `torch.compile` can trace it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad.clamp(min=0), out, 0)


class GuidedReLU(nn.ReLU):
    """`nn.ReLU` (so captum and hooks still see a ReLU) whose backward may follow the guided rule.

    Only forwards recorded under a `GuidedRule` can, or every forward inside `guided_forwards(net)` (the
    traceable form: the rule is fixed when the forward runs, so the attribution takes a forward of its
    own); every other forward (no-grad, the actor's, the critic's ordinary ones) is the plain ReLU, the
    same function and gradient.
    """

    guided_forward = False  # set by `guided_forwards`; `torch.compile` guards on it (one graph per value)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return F.relu(x)
        if self.guided_forward:
            return _GuidedReLUFunction.apply(x)
        if torch.compiler.is_compiling():  # checked before the context variable, which dynamo cannot read
            return F.relu(x)
        rule = _RECORDING.get()
        if rule is None:
            return F.relu(x)
        return _SwitchableReLU.apply(x, rule)


@contextlib.contextmanager
def guided_forwards(net: nn.Module) -> Iterator[None]:
    """Forwards of `net` run inside back-propagate through its `GuidedReLU`s by the guided rule.

    The traceable counterpart of `GuidedRule` (a flag on the modules, read when the forward runs, that a
    compiled graph guards on): the attribution then needs its own forward, as the reference's captum
    call has. Not for networks that another thread runs meanwhile.
    """
    relus = [m for m in net.modules() if isinstance(m, GuidedReLU)]
    for m in relus:
        m.guided_forward = True
    try:
        yield
    finally:
        for m in relus:
            m.guided_forward = False


__all__ = ["GuidedReLU", "GuidedRule", "guided_forwards"]
