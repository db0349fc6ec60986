"""DrQ-v2 as a second value learner: its noise schedule, n-step target, update, the SGQN guidance on it,
and `sgqn fit` end to end for `drqv2` and `drqv2_sgqn`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from tensordict import TensorDict

from cli_helpers import fit_args, short_run
from sgqn.algorithms.agent import Optimizers, adam_optimizers
from sgqn.algorithms.drqv2 import DrQv2, DrQv2Config
from sgqn.algorithms.drqv2_sgqn import DrQv2SGQN
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.app.cli import main
from sgqn.nets.config import NetConfig
from sgqn.nets.drqv2 import linear_schedule, truncated_normal_sample
from sgqn.training.module import AgentModule
from sgqn.training.speed import SpeedOptions

SIZE, A = 32, 2
NET = NetConfig(num_conv_layers=2, num_filters=8, feature_dim=16, hidden_dim=32)
NO_SHIFT = DrQv2Config(shift_pad=0, stddev_steps=10)  # the losses on the batch's own pixels


def _drqv2(guided: bool = False) -> DrQv2:
    torch.manual_seed(0)
    if not guided:
        return DrQv2((9, SIZE, SIZE), A, NO_SHIFT, NET)
    sgqn = SGQNConfig(quantile=0.9, decoder_channels=(8, 8, 8))
    agent = DrQv2SGQN((9, SIZE, SIZE), A, NO_SHIFT, sgqn, NET)
    agent.overlay.set_images(torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8))
    return agent


def _batch(b: int = 6, n_step: bool = True) -> TensorDict:
    g = torch.Generator().manual_seed(3)
    pixels = lambda: torch.randint(0, 256, (b, 9, SIZE, SIZE), dtype=torch.uint8, generator=g)  # noqa: E731
    nxt = {
        "pixels": pixels(),
        "reward": torch.rand(b, 1, generator=g),
        "terminated": torch.zeros(b, 1).bool(),
    }
    if n_step:  # gamma^m from the n-step replay: a full window, a truncated one, a terminated one
        nxt["discount"] = torch.tensor([[0.99**3], [0.99**2], [0.0], [0.99**3], [0.99], [0.99**3]])
    return TensorDict({"pixels": pixels(), "action": torch.rand(b, A, generator=g) * 2 - 1, "next": nxt}, [b])


def test_the_noise_schedule_and_the_truncated_sample() -> None:
    assert linear_schedule(0, 1.0, 0.1, 100_000) == 1.0
    assert linear_schedule(50_000, 1.0, 0.1, 100_000) == pytest.approx(0.55)
    assert linear_schedule(100_000, 1.0, 0.1, 100_000) == pytest.approx(0.1)
    assert linear_schedule(400_000, 1.0, 0.1, 100_000) == pytest.approx(0.1)
    mean = torch.zeros(10_000, 1, requires_grad=True)
    torch.manual_seed(0)
    x = truncated_normal_sample(mean, 1.0, clip=0.3)
    assert x.abs().max() <= 0.3 + 1e-7 and x.std() > 0.2  # noise clipped at 0.3
    x.sum().backward()
    assert torch.equal(mean.grad, torch.ones_like(mean))  # straight-through: the clamps pass the gradient
    big = truncated_normal_sample(torch.full((1000, 1), 0.9), 1.0, clip=None)
    assert big.max() <= 1 - 1e-6 and big.max() > 0.99  # clamped into (-1, 1)


def test_the_n_step_target_by_hand() -> None:
    loss = _drqv2()
    actor, critic = loss.actor, loss.critic
    with torch.no_grad():  # target heads different from the online ones
        for p in loss.target_critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    next_obs = batch["next", "pixels"].float()
    loss.due(5)  # what runs before an update: σ is read from the agent-step buffer
    torch.manual_seed(7)
    target = loss.target_value(next_obs, batch)
    torch.manual_seed(7)
    with torch.no_grad():
        features = critic.encoder(next_obs)  # the ONLINE encoder
        noise = (torch.randn(6, A) * 0.55).clamp(-0.3, 0.3)  # sigma at step 5 of 10: 0.55
        action = (torch.tanh(actor.trunk(actor.projection(features))) + noise).clamp(-1 + 1e-6, 1 - 1e-6)
        za = torch.cat([loss.target_critic.projection(features), action], -1)
        v = torch.min(loss.target_critic.q1(za), loss.target_critic.q2(za))
    expected = batch["next", "reward"] + batch["next", "discount"] * v
    torch.testing.assert_close(target, expected)
    assert target[2] == batch["next", "reward"][2]  # terminated inside the window: no bootstrap
    # without the n-step key: gamma (1 - terminated), as one-step TD
    one = _batch(n_step=False)
    torch.manual_seed(7)
    plain = loss.target_value(one["next", "pixels"].float(), one)
    torch.testing.assert_close(plain, one["next", "reward"] + 0.99 * v)


def test_sgqn_guidance_on_drqv2_adds_exactly_its_consistency_term() -> None:
    plain, guided = _drqv2(), _drqv2(guided=True)  # the same networks and weights (same seed)
    batch = _batch()
    torch.manual_seed(1)
    without = plain(batch)["loss_critic"]
    torch.manual_seed(1)
    terms = guided(batch)
    with_guidance = terms["loss_critic"] + terms["loss_consistency"]
    assert terms["loss_consistency"] > 0
    torch.testing.assert_close(with_guidance - without, terms["loss_consistency"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(terms["loss_critic"], without, rtol=0, atol=0)  # same TD term


@pytest.mark.parametrize("algorithm", ["drqv2", "drqv2_sgqn"])
def test_every_update_steps_critic_actor_and_target(algorithm: str) -> None:
    module = AgentModule(
        algorithm=algorithm, observation_shape=(9, SIZE, SIZE), action_dim=A, net=NET,
        speed=SpeedOptions(tune_malloc=False), task="cartpole_swingup",
    )  # fmt: skip
    if module.uses_overlay:
        module.set_overlay_images(torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8))
    agent = module.agent
    names = list(agent.optimizer_specs())
    assert names == (["critic", "actor", "aux"] if algorithm == "drqv2_sgqn" else ["critic", "actor"])
    opt = Optimizers(adam_optimizers(agent))
    steps: list[str] = []

    before = [p.clone() for p in agent.target_critic.parameters()]
    for at in (2000, 2002, 2004):
        opt.optimizer_of.clear()
        metrics = agent.update(_batch(), opt, agent.due(at))
        steps += list(dict.fromkeys(opt.optimizer_of.values()))
    per_update = ["critic", "actor", "aux"] if algorithm == "drqv2_sgqn" else ["critic", "actor"]
    assert steps == per_update * 3  # the actor (and SGQN's predictor, freq 2) at every update here
    assert metrics["stddev"] == pytest.approx(linear_schedule(2004, 1.0, 0.1, 100_000))
    assert int(agent.agent_step) == 2004  # exploration sigma between updates
    after = list(agent.target_critic.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # EMA every update


@pytest.mark.parametrize("algorithm", ["drqv2", "drqv2_sgqn"])
def test_fit_end_to_end(algorithm: str, tmp_path: Path) -> None:
    # conf/tiny.yaml (cartpole_balance, batch 16) with only the algorithm changed: the options the file
    # and `short_run` leave unset are DrQ-v2's reference for the task, and the run's params say so.
    args = fit_args(tmp_path, *short_run(60, checkpoint_every=60))
    main([*args, "--model.algorithm", algorithm])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.info.status == "FINISHED" and run.data.tags["algorithm"] == algorithm
    params = run.data.params
    assert params["algorithm"] == algorithm and params["learner"] == "drqv2"
    resolved = {  # DrQ-v2's for cartpole_balance (an "easy" task), where the command line says nothing
        "action_repeat": "2", "n_step": "3", "n_step_partial_windows": "False", "update_every_steps": "2",
        "warmup_burst": "False", "drqv2/stddev_steps": "100000", "replay_capacity": "61",
    }  # fmt: skip
    given = {"batch_size": "16", "num_agent_steps": "60", "init_steps": "20", "eval_every_agent_steps": "0"}
    assert {k: params.get(k) for k in [*resolved, *given]} == resolved | given
    updates = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/updates")}
    assert updates[50] == 16  # one update at every 2nd agent step from step 20 (20, 22, ..., 50), no burst
    assert "train/loss_actor" in run.data.metrics and "train/stddev" in run.data.metrics
    if algorithm == "drqv2_sgqn":
        assert "train/loss_consistency" in run.data.metrics and "train/loss_attribution" in run.data.metrics
