"""`--model.speed.compile_update`: the compiled update computes what the eager reference computes.

Inductor draws random numbers from its own stream unless `fallback_random` is set; with it set, the
compiled and the eager update see the same shifts, grey levels, overlays and policy noise, so their
losses and weights must agree to float tolerance after several updates (every frequency due and not).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from sgqn.module import SGQNModule
from sgqn.objectives.sgqn import SaliencyGuidance
from test_module import _batch, _module, _stepper

pytestmark = pytest.mark.usefixtures("same_random_numbers")  # conftest.py


def _updates(module: SGQNModule, steps: int = 4) -> list[tuple[str, torch.Tensor]]:
    """`steps` updates at agent steps 0, 1, …; the losses in the order they were optimised."""
    step, losses = _stepper(module)
    for i in range(steps):
        torch.manual_seed(100 + i)
        module.loss.update(_batch(seed=i), i, step)
    return losses


def _assert_same_run(a: SGQNModule, b: SGQNModule, rtol: float, atol: float) -> None:
    losses_a, losses_b = _updates(a), _updates(b)
    assert [n for n, _ in losses_a] == [n for n, _ in losses_b]
    assert {n for n, _ in losses_a} >= {"loss_critic", "loss_actor"}
    for (name, x), (_, y) in zip(losses_a, losses_b, strict=True):
        assert torch.allclose(x, y, rtol=rtol, atol=atol), f"{name}: {x} vs {y}"
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=rtol, atol=atol), name


def test_the_separate_guided_forward_gives_the_shared_forwards_update() -> None:
    shared = _module("sgqn")
    separate = copy.deepcopy(shared)
    guidance: Any = separate.loss.guidance
    assert isinstance(guidance, SaliencyGuidance)
    guidance.separate_guided_forward = True
    _assert_same_run(shared, separate, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algorithm", ["sgqn", "drqv2_sgqn"])
def test_compiled_update_equals_eager(algorithm: str) -> None:
    eager = _module(algorithm)
    compiled = _module(algorithm, speed={"compile_update": True})
    compiled.load_state_dict(eager.state_dict())
    assert compiled.loss.guidance.separate_guided_forward  # type: ignore[union-attr]
    graphs = counters["stats"]["unique_graphs"]
    _assert_same_run(eager, compiled, rtol=1e-4, atol=1e-5)
    # Each loss was really compiled (the guided attribution's backward included), not run eagerly.
    compiled_losses = len(compiled.loss.compiled_losses) + len(compiled.loss.guidance.compiled_losses)
    assert counters["stats"]["unique_graphs"] - graphs >= compiled_losses
