"""Guided backprop (vs captum), the switchable ReLU rule, attribution masks, masked observations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reference_update import captum_guided_backprop
from sgqn.algorithms.saliency import (
    attribution_mask,
    full_mask_fraction,
    guided_backprop,
    masked_observation,
    quantile_threshold,
)
from sgqn.nets.guided_relu import GuidedRule
from sgqn.nets.sac import Actor, Critic, Encoder


def guided_grad(
    q1: torch.Tensor, obs: torch.Tensor, rule: GuidedRule, retain_graph: bool = False
) -> torch.Tensor:
    """∂ q1.sum() / ∂ obs by the guided rule, for a forward recorded under `rule`."""
    with rule.guiding():
        (grad,) = torch.autograd.grad(q1.sum(), obs, retain_graph=retain_graph)
    return grad


def _critic(seed: int = 0) -> Critic:
    torch.manual_seed(seed)
    critic = Critic(
        Encoder((9, 32, 32), num_layers=3, num_filters=16), action_dim=2, feature_dim=16, hidden_dim=64
    )
    with torch.no_grad():  # non-zero biases: more ReLUs straddle zero, the guided rule matters more
        for m in critic.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.bias.normal_(0, 0.1)
    return critic


def test_guided_backprop_equals_captum() -> None:
    critic = _critic()
    obs, action = torch.rand(6, 9, 32, 32) * 255, torch.rand(6, 2) * 2 - 1
    ours = guided_backprop(critic, obs, action)
    theirs = captum_guided_backprop(critic, obs, action)
    assert ours.shape == obs.shape and ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-9)
    assert all(p.grad is None for p in critic.parameters())  # attribution leaves no parameter gradient


def test_guided_rule_differs_from_the_plain_gradient() -> None:
    critic = _critic()
    obs, action = (torch.rand(4, 9, 32, 32) * 255).requires_grad_(), torch.rand(4, 2)
    (plain,) = torch.autograd.grad(critic(obs, action)[0].sum(), obs)
    guided = guided_backprop(critic, obs, action)
    assert not torch.allclose(plain, guided)


def test_one_forward_serves_the_guided_attribution_and_the_ordinary_backward() -> None:
    critic = _critic()
    obs, action = torch.rand(4, 9, 32, 32) * 255, torch.rand(4, 2)
    x = obs.clone().requires_grad_()
    rule = GuidedRule()
    with rule.recording():
        q1, q2 = critic(x, action)
    attribution = guided_grad(q1, x, rule, retain_graph=True)
    (q1.square().mean() + q2.mean()).backward()
    shared = [p.grad.clone() for p in critic.parameters()]
    critic.zero_grad()
    fresh_q1, fresh_q2 = critic(obs, action)
    (fresh_q1.square().mean() + fresh_q2.mean()).backward()
    for a, p in zip(shared, critic.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=0)
    torch.testing.assert_close(attribution, guided_backprop(critic, obs, action), rtol=0, atol=0)


def test_the_guided_rule_cannot_leak_into_another_networks_backward() -> None:
    # The actor reads the critic's encoder (the same GuidedReLU modules). While the critic's attribution
    # backward is under way (its rule set to guided, e.g. in another thread), any other forward through
    # those modules (here the shared encoder's, as an actor or an evaluation would run it) must still be
    # back-propagated with the ordinary rule: it was recorded under no rule.
    critic = _critic()
    actor = Actor(critic.encoder, action_dim=2, feature_dim=16, hidden_dim=64)
    assert actor.encoder is critic.encoder
    obs = (torch.rand(4, 9, 32, 32) * 255).requires_grad_()
    (plain,) = torch.autograd.grad(critic.encoder(obs).square().sum(), obs)
    rule = GuidedRule()
    with rule.recording():
        q1, _ = critic(obs, torch.rand(4, 2))
    with rule.guiding():
        (during,) = torch.autograd.grad(critic.encoder(obs).square().sum(), obs)
        guided = guided_grad(q1, obs, rule)
    torch.testing.assert_close(during, plain, rtol=0, atol=0)
    assert not torch.allclose(guided, torch.autograd.grad(critic(obs, torch.rand(4, 2))[0].sum(), obs)[0])
    assert not rule.guided  # restored when the window ends


@pytest.mark.parametrize("quantile", [0.95, 0.98, 0.5])
def test_mask_keeps_the_top_fraction_per_sample_and_frame(quantile: float) -> None:
    torch.manual_seed(0)
    attribution = torch.randn(5, 9, 40, 40)
    mask = attribution_mask(attribution, quantile)
    assert mask.dtype == torch.bool and mask.shape == attribution.shape
    coverage = mask.float().mean(dim=(2, 3))  # [B, C]
    torch.testing.assert_close(coverage, torch.full_like(coverage, 1 - quantile), atol=1 / 1600, rtol=0)


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.95, 0.98, 1.0])
def test_quantile_threshold_equals_torch_quantile_bit_for_bit(q: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 1000)
    x[0, 0, :300] = 0.5  # ties around the threshold
    x[1, 2] = 0.0  # a constant row
    assert torch.equal(quantile_threshold(x, q), torch.quantile(x, q, dim=-1))


def test_mask_is_the_same_over_a_frames_colour_channels_and_uses_max_abs() -> None:
    torch.manual_seed(0)
    attribution = torch.rand(3, 9, 20, 20) * 0.1
    attribution[:, 4, 5, 7] = -10.0  # a large negative attribution in frame 1's green channel
    mask = attribution_mask(attribution, 0.95)
    for frame in range(3):
        block = mask[:, 3 * frame : 3 * frame + 3]
        assert torch.equal(block, block[:, :1].expand_as(block))
    assert mask[:, 3:6, 5, 7].all()
    # frame-wise: frame 1's threshold does not decide frame 0's pixels
    assert mask[:, 0].float().mean() > 0.04


def test_mask_with_quantile_zero_keeps_everything() -> None:
    assert attribution_mask(torch.randn(2, 9, 8, 8), 0.0).all()


@pytest.mark.parametrize("frames", [1, 2, 3, 4])
def test_mask_is_per_frame_for_any_frame_stack(frames: int) -> None:
    """The frame count comes from the channels (3 per RGB frame): each frame gets its own threshold."""
    torch.manual_seed(frames)
    attribution = torch.rand(2, 3 * frames, 20, 20)
    attribution[:, -3:] *= 100  # the newest frame dominates: a single threshold would mask only it
    mask = attribution_mask(attribution, 0.95)
    per_frame = mask.reshape(2, frames, 3, 400)[:, :, 0].float().mean(-1)
    torch.testing.assert_close(per_frame, torch.full_like(per_frame, 0.05), atol=1 / 400, rtol=0)
    with pytest.raises(ValueError, match="stacked frames"):
        attribution_mask(attribution, 0.95, frames=5)


def test_a_frame_with_zero_attribution_is_all_salient_by_default_and_none_with_drop() -> None:
    attribution = torch.rand(2, 9, 10, 10)
    attribution[0, 3:6] = 0.0  # frame 1 of sample 0: no pixel has any attribution
    attribution[1, 6:9] = 0.0
    attribution[1, 6, :1, :3] = 1.0  # 3 % of frame 2 of sample 1 non-zero, below 1 − ρ of tied zeros
    keep = attribution_mask(attribution, 0.95)  # reference: ties at the (zero) threshold are kept
    assert keep[0, 3:6].all() and keep[1, 6:9].all()
    assert full_mask_fraction(keep) == pytest.approx(2 / 6)
    drop = attribution_mask(attribution, 0.95, zero_ties="drop")
    assert not drop[0, 3:6].any()
    assert drop[1, 6:9].sum() == 3 * 3 and drop[1, 6:9, :1, :3].all()
    assert full_mask_fraction(drop) == 0
    # frames with a positive threshold are untouched by the switch
    assert torch.equal(keep[0, :3], drop[0, :3]) and torch.equal(keep[1, :6], drop[1, :6])


def test_masked_observation_keeps_salient_pixels_and_greys_the_rest_with_one_level() -> None:
    torch.manual_seed(0)
    obs = torch.rand(4, 9, 16, 16) * 200 + 20
    mask = torch.rand(4, 9, 16, 16) > 0.7
    masked = masked_observation(obs, mask, torch.Generator().manual_seed(3))
    assert torch.equal(masked[mask], obs[mask])
    fill = masked[~mask].unique()
    assert fill.numel() == 1 and obs.min() <= fill.item() <= obs.max()
    again = masked_observation(obs, mask, torch.Generator().manual_seed(3))
    assert torch.equal(masked, again)
    assert not masked.requires_grad
