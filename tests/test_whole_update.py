"""`--model.speed.graph_update`: the update recorded once per due pattern is the update.

On the CPU the recorded function runs as Python (CUDA graphs need a GPU), so a fit with it must give the
eager fit's weights bit for bit, Lightning's step count included; compiled whole, to float tolerance.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

from sgqn.algorithms.agent import Due, Optimizers, adam_optimizers
from sgqn.algorithms.drqv2 import DrQv2Config
from sgqn.algorithms.sac import SACConfig
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.training.module import AgentModule
from sgqn.training.whole_update import WholeUpdates
from test_module import _batch, _fit, _module, _params, _SeedEachBatch


def _fitted(module: AgentModule, updates: int = 5) -> tuple[AgentModule, int, dict[str, float]]:
    trainer = _fit(module, [_batch(seed=i) for i in range(updates)], callbacks=[_SeedEachBatch()])
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return module, trainer.global_step, metrics


@pytest.mark.parametrize(
    ("algorithm", "patterns"),
    # SAC's frequencies 2 and 3 give four due patterns over updates 0..4 (actor, target[, predictor]);
    # DrQ-v2 steps everything at every update, and its σ schedule (over 4 steps here) changes each time.
    [("sac", 4), ("svea", 4), ("sgqn", 4), ("drqv2", 1), ("drqv2_sgqn", 2)],
)
def test_the_whole_update_is_the_eager_update_and_counts_the_same_steps(
    algorithm: str, patterns: int
) -> None:
    hp = dict(
        sac=SACConfig(actor_update_freq=2, critic_target_update_freq=3), drqv2=DrQv2Config(stddev_steps=4)
    )
    eager, eager_steps, eager_metrics = _fitted(_module(algorithm, **hp))
    whole, whole_steps, whole_metrics = _fitted(_module(algorithm, speed={"graph_update": True}, **hp))
    assert isinstance(whole._update, WholeUpdates)
    assert len(whole._update.patterns) == patterns
    expected = _params(eager)
    for name, value in _params(whole).items():
        assert torch.equal(value, expected[name]), name
    # Lightning's global_step (what max_steps and checkpoint intervals count) sees every Adam step.
    assert whole_steps == eager_steps > 5
    assert whole_metrics == eager_metrics


def _stepped(updates: WholeUpdates, batch: object, due: Due) -> tuple[dict, dict, list[str]]:
    """One update: its metrics, the losses it stepped and the optimizers it stepped, in order."""
    opt = Optimizers(updates.optimizers)
    metrics = updates(batch, opt, due)  # type: ignore[arg-type]
    return metrics, dict(opt.stepped), list(dict.fromkeys(opt.optimizer_of.values()))


def test_a_pattern_is_recorded_once_and_names_the_optimizers_it_steps() -> None:
    sac = SACConfig(actor_update_freq=2, critic_target_update_freq=2)
    module = _module("sgqn", sac=sac, sgqn=SGQNConfig(aux_update_freq=2))
    updates = WholeUpdates(module.agent, adam_optimizers(module.agent))
    recorded = 0
    original = updates._record

    def record(due: Due):  # type: ignore[no-untyped-def]
        nonlocal recorded
        recorded += 1
        return original(due)

    updates._record = record  # type: ignore[method-assign]
    stepped = [_stepped(updates, _batch(seed=i), module.agent.due(i))[2] for i in range(4)]
    assert recorded == 2
    assert stepped[0] == stepped[2] == ["critic", "actor", "alpha", "aux"]
    assert stepped[1] == stepped[3] == ["critic"]


@pytest.mark.filterwarnings("ignore:.*without CUDA device")
def test_wrapped_for_cuda_graphs_the_update_is_unchanged_where_none_can_be_captured() -> None:
    # Without a GPU, tensordict's CudaGraphModule calls the function as is: this pins that our function
    # and its outputs pass through its argument and output handling (a TensorDict in, dicts out).
    results = []
    captures: list[int] = []
    update = [0]  # the update index a capture happens at
    for cuda_graphs in (False, True):
        module = _module("sgqn")
        updates = WholeUpdates(
            module.agent,
            adam_optimizers(module.agent),
            cuda_graphs=cuda_graphs,
            before_capture=lambda: captures.append(update[0]),
        )
        torch.manual_seed(5)
        outputs = []
        for i in range(6):
            update[0] = i
            outputs.append(_stepped(updates, _batch(seed=i), module.agent.due(i)))
        results.append((outputs, _params(module)))
    # Each of the two patterns is captured at its second call (updates 2 and 3), once; other threads
    # are stopped right before.
    assert captures == [2, 3]
    (plain_out, plain_params), (wrapped_out, wrapped_params) = results
    for (m1, l1, s1), (m2, l2, s2) in zip(plain_out, wrapped_out, strict=True):
        assert s1 == s2 and m1.keys() == m2.keys() and l1.keys() == l2.keys()
        assert all(torch.equal(m1[k], m2[k]) for k in m1) and all(torch.equal(l1[k], l2[k]) for k in l1)
    assert all(torch.equal(v, plain_params[k]) for k, v in wrapped_params.items())


def test_a_capture_first_stops_the_overlapped_collector() -> None:
    module = _module("sac", speed={"graph_update": True})
    paused: list[bool] = []
    stream = SimpleNamespace(pause=lambda: paused.append(True))
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(stream=stream))  # type: ignore[assignment]
    module._pause_collection()
    assert paused == [True]
    module._trainer = None
    module._pause_collection()  # no trainer, no stream: nothing to stop


@pytest.mark.parametrize(
    ("algorithm", "kwargs", "match"),
    [
        ("sgqn", {"on_nonfinite": "skip"}, "on_nonfinite"),
        (
            "sgqn",
            {"speed": {"graph_update": True, "compile_update": True, "compile_mode": "reduce-overhead"}},
            "twice",
        ),
    ],
)
def test_graph_update_refuses_what_a_replay_cannot_do(algorithm: str, kwargs: dict, match: str) -> None:
    kwargs = {"speed": {"graph_update": True}, **kwargs}
    with pytest.raises(ValueError, match=match):
        _module(algorithm, **kwargs)


def test_graph_update_refuses_a_mixed_precision_trainer() -> None:
    import lightning as L

    module = _module("sac", speed={"graph_update": True})
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False)
    module.trainer = trainer
    with pytest.raises(ValueError, match="precision"):
        module.setup("fit")


@pytest.mark.usefixtures("same_random_numbers")
@pytest.mark.parametrize(
    "algorithm",
    ["sgqn", pytest.param("drqv2_sgqn", marks=pytest.mark.slow)],  # slow: a 50 s compile
)
def test_the_compiled_whole_update_equals_the_eager_update(algorithm: str) -> None:
    # DrQ-v2's σ changes at every update (schedule over 3 steps): a compiled pattern that had baked in
    # the σ of its first call would drift from eager.
    hp = dict(
        sac=SACConfig(actor_update_freq=2, critic_target_update_freq=2),
        sgqn=SGQNConfig(aux_update_freq=2),
        drqv2=DrQv2Config(stddev_steps=3),
    )
    eager, _, eager_metrics = _fitted(_module(algorithm, **hp), updates=4)
    graphs = counters["stats"]["unique_graphs"]
    speed = {"graph_update": True, "compile_update": True}
    compiled, _, compiled_metrics = _fitted(_module(algorithm, speed=speed, **hp), updates=4)
    assert counters["stats"]["unique_graphs"] > graphs  # really compiled
    expected = _params(eager)
    # Adam turns float rounding on near-zero gradients into steps of up to its lr (1e-3): weights agree
    # to 1e-4, the losses and metrics (σ included) to 1e-4 relative.
    for name, value in _params(compiled).items():
        assert torch.allclose(value.float(), expected[name].float(), rtol=1e-4, atol=1e-4), name
    assert compiled_metrics.keys() == eager_metrics.keys()
    for name, value in compiled_metrics.items():
        assert value == pytest.approx(eager_metrics[name], rel=1e-4, abs=1e-5), name
