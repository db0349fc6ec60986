"""Augmentations, target critic, and the SAC / SVEA / SGQN losses against hand-written maths: each loss as
the algorithm's update computes it (`Agent.forward`: the update's named losses, nothing stepped)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from reference_update import captum_guided_backprop
from sgqn.algorithms import saliency_guidance as sg
from sgqn.algorithms.agent import LossRecorder
from sgqn.algorithms.augment import random_overlay, random_shift
from sgqn.algorithms.sac import SAC, SACConfig
from sgqn.algorithms.saliency_guidance import Saliency, SGQNConfig
from sgqn.algorithms.sgqn import SGQN
from sgqn.algorithms.svea import SVEA, SVEAConfig
from sgqn.algorithms.targets import TargetCritic
from sgqn.nets.config import NetConfig
from sgqn.nets.sac import Actor, Critic, Encoder

SIZE, A = 32, 2
NET = NetConfig(num_conv_layers=3, num_filters=16, feature_dim=16, hidden_dim=64)
NO_SHIFT = SACConfig(shift_pad=0)  # the losses on the batch's own pixels, to compare with maths by hand


def _nets(seed: int = 0) -> tuple[Actor, Critic]:
    torch.manual_seed(seed)
    encoder = Encoder((9, SIZE, SIZE), num_layers=3, num_filters=16)
    actor = Actor(encoder, A, feature_dim=16, hidden_dim=64)
    critic = Critic(encoder, A, feature_dim=16, hidden_dim=64)
    return actor, critic


def _sac(config: SACConfig = NO_SHIFT, discount: float = 0.99) -> SAC:
    torch.manual_seed(0)
    return SAC((9, SIZE, SIZE), A, config, NET, discount)


def _svea(alpha: float = 0.5, beta: float = 0.5) -> SVEA:
    torch.manual_seed(0)
    agent = SVEA((9, SIZE, SIZE), A, NO_SHIFT, SVEAConfig(alpha=alpha, beta=beta), NET)
    agent.overlay.set_images(_images())
    return agent


def _sgqn(quantile: float = 0.9, images: torch.Tensor | None = None) -> SGQN:
    torch.manual_seed(0)
    agent = SGQN((9, SIZE, SIZE), A, NO_SHIFT, SGQNConfig(quantile=quantile, consistency_weight=0.5), NET)
    agent.overlay.set_images(_images() if images is None else images)
    return agent


def _images(n: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8)


def _batch(b: int = 8, seed: int = 1) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    pixels = lambda: torch.randint(0, 256, (b, 9, SIZE, SIZE), dtype=torch.uint8, generator=g)  # noqa: E731
    terminated = torch.zeros(b, 1, dtype=torch.bool)
    terminated[::3] = True
    return TensorDict(
        {
            "pixels": pixels(),
            "action": torch.rand(b, A, generator=g) * 2 - 1,
            "next": {"pixels": pixels(), "reward": torch.rand(b, 1, generator=g), "terminated": terminated},
        },
        batch_size=[b],
    )


def _perturb(module: nn.Module, scale: float = 0.05, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


# ---------------------------------------------------------------------------------------- augmentations


def test_random_shift_equals_replicate_pad_then_crop() -> None:
    torch.manual_seed(0)
    x = torch.rand(5, 9, 12, 10) * 255
    shifts = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [4, 4]])
    padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
    expected = torch.stack([padded[i, :, r : r + 12, c : c + 10] for i, (r, c) in enumerate(shifts.tolist())])
    torch.testing.assert_close(random_shift(x, 4, shifts), expected, rtol=0, atol=0)
    assert torch.equal(random_shift(x, 4, torch.full((5, 2), 4)), x)  # centre crop = identity
    as_uint8 = random_shift(x.to(torch.uint8), 4, shifts)
    assert as_uint8.dtype == torch.uint8 and torch.equal(as_uint8, expected.to(torch.uint8))


def test_random_shift_draws_integer_offsets_in_range() -> None:
    torch.manual_seed(0)
    x = torch.arange(16.0).view(1, 1, 16, 1).expand(200, 3, 16, 16).contiguous()  # value = row index
    top_rows = random_shift(x, 4)[:, 0, 0, 0]  # row offset − 4, clamped at 0
    assert set(top_rows.tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}  # offsets 0..4 clamp to row 0


def test_random_overlay_blends_one_image_over_all_frames() -> None:
    torch.manual_seed(0)
    x, images = torch.rand(3, 9, SIZE, SIZE) * 255, _images(4)
    index = torch.tensor([2, 0, 2])
    out = random_overlay(x, images, alpha=0.5, index=index)
    for i, k in enumerate(index.tolist()):
        for frame in range(3):
            expected = 0.5 * x[i, 3 * frame : 3 * frame + 3] + 0.5 * images[k].float()
            torch.testing.assert_close(out[i, 3 * frame : 3 * frame + 3], expected)
    blended = random_overlay(x, images)
    assert blended.min() >= 0 and blended.max() <= 255


# ---------------------------------------------------------------------------------------- target critic


def test_target_update_uses_encoder_tau_for_convs_and_projection_and_critic_tau_for_heads() -> None:
    _, critic = _nets()
    target = TargetCritic(critic, critic_tau=0.01, encoder_tau=0.05)
    assert all(not p.requires_grad for p in target.parameters())
    before = {n: p.clone() for n, p in target.critic.named_parameters()}
    _perturb(critic, scale=1.0)
    online = dict(critic.named_parameters())
    target.update(critic)
    for name, p in target.critic.named_parameters():
        tau = 0.05 if name.startswith(("encoder.", "projection.")) else 0.01
        expected = before[name] + tau * (online[name].detach() - before[name])
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p, before[name])
    assert {n.split(".")[0] for n in before} == {"encoder", "projection", "q1", "q2"}


def test_target_critic_is_an_independent_copy() -> None:
    _, critic = _nets()
    target = TargetCritic(critic)
    assert target.critic.encoder is not critic.encoder
    obs, action = torch.rand(2, 9, SIZE, SIZE) * 255, torch.rand(2, A)
    for a, b in zip(target(obs, action), critic(obs, action), strict=True):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------- SAC


def _by_hand_target(
    agent: SAC, next_obs: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor
) -> torch.Tensor:
    """r + γ(1 − d)(min Q'(s', a') − α log π(a'|s')) with the policy maths written out."""
    actor, target = agent.actor, agent.target_critic.critic
    with torch.no_grad():
        h = actor.encoder(next_obs)
        mean, raw = actor.trunk(actor.projection(h)).chunk(2, -1)
        log_std = -10 + 0.5 * 12 * (torch.tanh(raw) + 1)
        noise = torch.randn_like(mean)
        u = mean + noise * log_std.exp()
        a = torch.tanh(u)
        gauss = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1, keepdim=True)
        log_prob = gauss - torch.log(torch.relu(1 - a**2) + 1e-6).sum(-1, keepdim=True)
        za = torch.cat([target.projection(target.encoder(next_obs)), a], -1)
        v = torch.minimum(target.q1(za), target.q2(za)) - math.exp(agent.log_alpha.item()) * log_prob
        return reward + agent.discount * (1.0 - terminated.float()) * v


def test_sac_critic_loss_matches_hand_computation() -> None:
    agent = _sac(SACConfig(init_temperature=0.3, shift_pad=0), discount=0.9)
    critic = agent.critic
    _perturb(agent.target_critic)  # target ≠ online
    td = _batch()
    obs, next_obs = td["pixels"].float(), td["next", "pixels"].float()
    torch.manual_seed(5)
    target_q = agent.soft_target(next_obs, td)
    torch.manual_seed(5)
    expected_target = _by_hand_target(agent, next_obs, td["next", "reward"], td["next", "terminated"])
    torch.testing.assert_close(target_q, expected_target)
    terminal = td["next", "terminated"].squeeze(-1)
    torch.testing.assert_close(target_q[terminal], td["next", "reward"][terminal])  # no bootstrap

    torch.manual_seed(5)
    value = agent(td)["loss_critic"]  # the update's critic loss (its target draws the same noise)
    q1, q2 = critic(obs, td["action"])
    by_hand = ((q1 - expected_target) ** 2).mean() + ((q2 - expected_target) ** 2).mean()
    torch.testing.assert_close(value, by_hand)


def test_actor_loss_trains_only_the_actor_head() -> None:
    agent = _sac()
    actor, critic = agent.actor, agent.critic
    obs = torch.rand(8, 9, SIZE, SIZE) * 255
    recorder = LossRecorder()
    metrics = agent.actor_and_temperature_steps(agent.conv_features(obs), recorder)
    recorder.losses["loss_actor"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.own_parameters())
    assert all(p.grad is None for p in critic.parameters())  # encoder included: shared and detached
    assert agent.log_alpha.grad is None
    _, log_prob = agent.actor_loss(agent.conv_features(obs))
    assert log_prob.shape == (8, 1) and metrics["entropy"].shape == ()


def test_actor_step_leaves_conv_weights_unchanged_and_changes_the_actor() -> None:
    agent = _sac()
    actor, critic = agent.actor, agent.critic
    convs_before = [p.clone() for p in critic.encoder.parameters()]
    heads_before = [p.clone() for p in actor.own_parameters()]
    optimizer = torch.optim.Adam(actor.own_parameters(), lr=1e-3)
    value, _ = agent.actor_loss(agent.conv_features(torch.rand(8, 9, SIZE, SIZE) * 255))
    value.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(convs_before, critic.encoder.parameters(), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(heads_before, actor.own_parameters(), strict=True))


def test_alpha_loss_matches_reference_formula_and_only_trains_log_alpha() -> None:
    agent = _sac(SACConfig(init_temperature=0.1))
    assert agent.target_entropy == -A
    log_prob = torch.tensor([[-1.0], [0.5], [3.0]])
    value = agent.alpha_loss(log_prob)
    torch.testing.assert_close(value, (0.1 * (-log_prob - (-A))).mean())
    value.backward()
    torch.testing.assert_close(agent.log_alpha.grad, value.detach())  # d(α·c)/d log α = α·c
    torch.testing.assert_close(agent.alpha.detach(), torch.tensor(0.1))


def test_sac_forward_returns_named_losses_whose_sum_trains_each_part_correctly() -> None:
    agent = _sac(SACConfig())
    critic = agent.critic
    td = _batch()
    torch.manual_seed(3)
    out = agent(td)
    assert {"loss_critic", "loss_actor", "loss_alpha", "alpha", "entropy", "q1_mean", "target_q_mean"} <= set(
        out.keys()
    )
    (out["loss_critic"] + out["loss_actor"] + out["loss_alpha"]).backward()
    summed = [p.grad.clone() for p in critic.parameters()]
    critic.zero_grad()
    torch.manual_seed(3)
    agent(td)["loss_critic"].backward()
    for a, p in zip(summed, critic.parameters(), strict=True):  # the actor loss adds nothing to the critic
        torch.testing.assert_close(a, p.grad)


# ---------------------------------------------------------------------------------------- SVEA


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 0.5), (0.3, 0.9)])
def test_svea_critic_loss_matches_the_reference_branches(alpha: float, beta: float) -> None:
    agent = _svea(alpha, beta)
    critic, images = agent.critic, agent.overlay.images
    assert images is not None
    td = _batch(6)
    obs, action = td["pixels"].float(), td["action"]
    torch.manual_seed(4)
    value = agent(td)["loss_critic"]
    torch.manual_seed(4)
    target_q = agent.soft_target(td["next", "pixels"].float(), td)  # the update's draws, in its order
    aug = random_overlay(obs, images)
    if alpha == beta:  # reference: cat(clean, aug), duplicated targets, weight α + β
        q1, q2 = critic(torch.cat([obs, aug]), torch.cat([action, action]))
        t = torch.cat([target_q, target_q])
        expected = (alpha + beta) * (F.mse_loss(q1, t) + F.mse_loss(q2, t))
    else:
        q1, q2 = critic(obs, action)
        a1, a2 = critic(aug, action)
        expected = alpha * (F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)) + beta * (
            F.mse_loss(a1, target_q) + F.mse_loss(a2, target_q)
        )
    torch.testing.assert_close(value, expected)


def test_svea_without_overlay_images_says_so() -> None:
    agent = SVEA((9, SIZE, SIZE), A, NO_SHIFT, SVEAConfig(), NET)
    with pytest.raises(RuntimeError, match="overlay"):
        agent.overlay(torch.zeros(1, 9, SIZE, SIZE))


# ---------------------------------------------------------------------------------------- SGQN


def test_sgqn_critic_loss_matches_hand_computation() -> None:
    agent = _sgqn(quantile=0.9)
    critic = agent.critic
    td = _batch(6)
    obs, action = td["pixels"].float(), td["action"]
    torch.manual_seed(9)
    out = agent(td)

    # by hand: captum's guided backprop, the reference's quantile mask and grey fill, plain MSEs
    torch.manual_seed(9)
    target_q = agent.soft_target(td["next", "pixels"].float(), td)  # the update's first draw
    attribution = captum_guided_backprop(critic, obs, action)
    per_frame = [attribution[:, i : i + 3].abs().max(dim=1)[0] for i in (0, 3, 6)]
    mask = torch.cat(
        [
            (a >= torch.quantile(a.flatten(1), 0.9, dim=1)[:, None, None]).unsqueeze(1).repeat(1, 3, 1, 1)
            for a in per_frame
        ],
        dim=1,
    )
    fill = obs.min() + (obs.max() - obs.min()) * torch.rand(())
    masked = obs * mask
    masked[~mask] = fill
    q1, q2 = critic(obs, action)
    m1, m2 = critic(masked, action)
    td_loss = ((q1 - target_q) ** 2).mean() + ((q2 - target_q) ** 2).mean()
    consistency = 0.5 * (((q1 - m1) ** 2).mean() + ((q2 - m2) ** 2).mean())
    torch.testing.assert_close(out["loss_critic"], td_loss)
    torch.testing.assert_close(out["loss_consistency"], consistency)
    torch.testing.assert_close(out["loss_critic"] + out["loss_consistency"], td_loss + consistency)
    torch.testing.assert_close(out["mask_coverage"], mask.float().mean())
    assert consistency > 0


def test_consistency_term_is_zero_when_the_mask_keeps_everything() -> None:
    agent = _sgqn(quantile=0.0)
    critic = agent.critic
    obs, action = torch.rand(4, 9, SIZE, SIZE) * 255, torch.rand(4, A)
    seen = sg.saliency(critic, obs, action, 0.0, "keep", keep_graph=True)
    assert seen.mask.all()
    value = sg.consistency_loss(critic, obs, action, seen, 0.5)
    assert value.item() == 0.0 and sg.mask_metrics(seen)["mask_coverage"] == 1.0
    ones = Saliency(seen.attribution, torch.ones_like(seen.mask), *critic(obs, action), seen.features)
    assert sg.consistency_loss(critic, obs, action, ones, 0.5).item() == 0.0


def test_consistency_gradient_reaches_the_critic_through_both_sides() -> None:
    agent = _sgqn(quantile=0.9)
    critic = agent.critic
    obs, action = torch.rand(4, 9, SIZE, SIZE) * 255, torch.rand(4, A)
    seen = sg.saliency(critic, obs, action, 0.9, "keep", keep_graph=True)
    sg.consistency_loss(critic, obs, action, seen, 0.5).backward()
    assert all(p.grad is not None for p in critic.parameters())
    assert all(p.grad is None for p in agent.actor.own_parameters())


def test_attribution_loss_is_bce_to_the_mask_and_the_aux_step_trains_encoder_and_decoder() -> None:
    images = _images()
    agent = _sgqn(quantile=0.9, images=images)
    critic, decoder = agent.critic, agent.decoder
    obs, action = torch.rand(4, 9, SIZE, SIZE) * 255, torch.rand(4, A)
    mask = sg.saliency(critic, obs, action, 0.9, "keep").mask
    torch.manual_seed(2)
    value = sg.attribution_loss(critic, decoder, agent.overlay(obs), action, mask)
    torch.manual_seed(2)
    overlay = random_overlay(obs, images)
    logits = decoder(critic.projection(critic.encoder(overlay)), action)
    p = torch.sigmoid(logits)
    by_hand = -(mask * torch.log(p) + (~mask) * torch.log(1 - p)).mean()
    torch.testing.assert_close(value, by_hand, rtol=1e-4, atol=1e-6)

    predictor = agent.optimizer_specs()["aux"].params
    assert predictor == [*critic.encoder.parameters(), *critic.projection.parameters(), *decoder.parameters()]
    before = [p.clone() for p in predictor]
    heads_before = [p.clone() for p in critic.head_parameters()]
    optimizer = torch.optim.Adam(predictor, lr=3e-4)
    value.backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, predictor, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(heads_before, critic.head_parameters(), strict=True))


def test_sgqn_forward_returns_all_named_losses() -> None:
    agent = _sgqn()
    out = agent(_batch())
    for key in (
        "loss_critic",
        "loss_consistency",
        "loss_actor",
        "loss_alpha",
        "loss_attribution",
        "mask_coverage",
    ):
        assert key in out and torch.isfinite(out[key])
    total = sum(value for key, value in out.items() if key.startswith("loss_"))
    total.backward()
    assert all(p.grad is not None for p in agent.decoder.parameters())
