"""`--model.speed.compile_update`: the compiled whole update computes what the eager update computes.

Inductor draws random numbers from its own stream unless `fallback_random` is set; with it set, the
compiled and the eager update see the same shifts, grey levels, overlays and policy noise, so their
losses and weights must agree to float tolerance after several updates (every frequency due and not).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from sgqn.algorithms import saliency_guidance
from sgqn.algorithms.agent import Optimizers, adam_optimizers
from sgqn.algorithms.saliency import guided_saliency_two_forwards
from sgqn.training.module import AgentModule
from sgqn.training.speed import update_function
from test_module import _batch, _module

pytestmark = pytest.mark.usefixtures("same_random_numbers")  # conftest.py


def _updates(module: AgentModule, steps: int = 4) -> list[tuple[str, torch.Tensor]]:
    """`steps` updates at agent steps 0, 1, …, as `sgqn fit` runs them with the module's speed options;
    the losses in the order they were optimised."""
    plain = adam_optimizers(module.agent)
    update = update_function(module.agent, module.speed, plain, torch.device("cpu"))
    opt, losses = Optimizers(plain), []
    for i in range(steps):
        torch.manual_seed(100 + i)
        opt.stepped = {}
        update(_batch(seed=i), opt, module.agent.due(i))
        losses += list(opt.stepped.items())
    return losses


def _assert_same_run(
    a: AgentModule, b: AgentModule, rtol: float, atol: float, losses_b: list | None = None
) -> None:
    losses_a, losses_b = _updates(a), _updates(b) if losses_b is None else losses_b
    assert [n for n, _ in losses_a] == [n for n, _ in losses_b]
    assert {n for n, _ in losses_a} >= {"loss_critic", "loss_actor"}
    for (name, x), (_, y) in zip(losses_a, losses_b, strict=True):
        assert torch.allclose(x, y, rtol=rtol, atol=atol), f"{name}: {x} vs {y}"
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=rtol, atol=atol), name


def test_the_separate_guided_forward_gives_the_shared_forwards_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a compiled update traces (the attribution by a forward of its own) equals the eager update.
    shared = _module("sgqn")
    separate = copy.deepcopy(shared)
    with monkeypatch.context() as patch:
        patch.setattr(saliency_guidance, "guided_saliency", guided_saliency_two_forwards)
        separate_losses = _updates(separate)
    _assert_same_run(shared, separate, rtol=1e-6, atol=1e-7, losses_b=separate_losses)


# slow (inductor compiles C++ for 50-100 s on 2 cores); the default suite has the compiled whole update
# (tests/test_whole_update.py), which compiles the same SGQN maths
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sgqn", "drqv2_sgqn"])
def test_compiled_update_equals_eager(algorithm: str) -> None:
    eager = _module(algorithm)
    compiled = _module(algorithm, speed={"compile_update": True})
    compiled.load_state_dict(eager.state_dict())
    graphs = counters["stats"]["unique_graphs"]
    _assert_same_run(eager, compiled, rtol=1e-4, atol=1e-5)
    # Really compiled, the guided attribution's backward included (graph breaks split it into several).
    assert counters["stats"]["unique_graphs"] - graphs >= 2
