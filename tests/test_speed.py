"""The speed switches wrap the networks and the update from outside: same parameters, state-dict keys and
maths; copies keep their own weights; the TorchRL entry point returns what the update steps on."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict

from sgqn.algorithms import ALGORITHMS
from sgqn.algorithms.agent import Due, Optimizers, adam_optimizers
from sgqn.algorithms.drqv2 import DrQv2Config
from sgqn.algorithms.factory import AgentConfig, make_agent
from sgqn.algorithms.sac import SACConfig
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.algorithms.svea import SVEAConfig
from sgqn.nets.config import NetConfig
from sgqn.training.speed import SpeedOptions, speed_up_networks
from test_module import SIZE, _batch

NET = NetConfig(num_conv_layers=3, num_filters=8, feature_dim=16, hidden_dim=32)


def _agent(algorithm: str, lr: float = 1e-3) -> torch.nn.Module:
    torch.manual_seed(0)
    config = AgentConfig(
        algorithm,  # type: ignore[arg-type]
        net=NET,
        sac=SACConfig(actor_lr=lr, critic_lr=lr, alpha_lr=lr),
        svea=SVEAConfig(),
        sgqn=SGQNConfig(aux_lr=lr, decoder_channels=(8, 8, 8)),
        drqv2=DrQv2Config(actor_lr=lr, critic_lr=lr),
    )
    agent = make_agent(config, (9, SIZE, SIZE), 2, "cartpole_swingup")
    if agent.overlay is not None:
        agent.overlay.set_images(torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8))
    return agent


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_forward_returns_the_losses_the_update_steps_on(algorithm: str) -> None:
    # With learning rates of zero the update's steps change nothing, so every loss it steps on is computed
    # from the weights `forward` sees: both must then give the same named losses, value for value.
    stepping, recording = _agent(algorithm, lr=0.0), _agent(algorithm, lr=0.0)
    opt = Optimizers(adam_optimizers(stepping))
    batch = _batch()
    torch.manual_seed(1)
    stepping.update(batch, opt, Due(actor=True, target=False, aux=True))
    torch.manual_seed(1)
    out = recording(batch)
    assert set(opt.stepped) == {k for k in out.keys() if k.startswith("loss_")}  # noqa: SIM118 (a TensorDict)
    for name, value in opt.stepped.items():
        assert torch.equal(value, out[name].detach()), name


def test_the_networks_keep_their_parameters_and_keys_and_compute_the_same() -> None:
    plain, fast = _agent("sgqn"), _agent("sgqn")
    speed_up_networks(fast, SpeedOptions(channels_last=True, subpixel_decoder=True))
    assert list(plain.state_dict()) == list(fast.state_dict())
    assert fast.critic.encoder.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    obs, action = torch.rand(4, 9, SIZE, SIZE) * 255, torch.rand(4, 2)
    for a, b in zip(plain.critic(obs, action), fast.critic(obs, action), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    z = torch.randn(4, 16)
    torch.testing.assert_close(plain.decoder(z, action), fast.decoder(z, action), rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # a policy snapshot (a deep copy) computes with its own weights
        snapshot = copy.deepcopy(fast.actor)
        snapshot.encoder.convs[0].weight.zero_()
        assert not torch.equal(snapshot.encoder(obs), fast.actor.encoder(obs))


def test_bf16_runs_the_convolutions_in_bf16_and_returns_fp32() -> None:
    agent = _agent("sac")
    speed_up_networks(agent, SpeedOptions(channels_last=False, autocast_bf16=True))
    seen: list[torch.dtype] = []
    agent.critic.encoder.convs[0].register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    features = agent.critic.encoder(torch.rand(2, 9, SIZE, SIZE) * 255)
    assert seen == [torch.bfloat16] and features.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in agent.parameters())


def test_a_batch_needs_only_torchrls_keys() -> None:
    agent = _agent("sac")
    batch = TensorDict(
        {
            "pixels": torch.randint(0, 256, (4, 9, SIZE, SIZE), dtype=torch.uint8),
            "action": torch.zeros(4, 2),
            "next": {
                "pixels": torch.randint(0, 256, (4, 9, SIZE, SIZE), dtype=torch.uint8),
                "reward": torch.zeros(4, 1),
                "terminated": torch.zeros(4, 1, dtype=torch.bool),
            },
        },
        [4],
    )
    assert torch.isfinite(agent(batch)["loss_critic"])
