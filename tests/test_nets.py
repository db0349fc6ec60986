"""Networks: shapes, reference layer order, init, policy maths, the sub-pixel decoder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgqn.nets.decoder import AttributionDecoder
from sgqn.nets.sac import Actor, Critic, Encoder, squashed_gaussian_sample
from sgqn.training.speed import SpeedOptions, speed_up_networks
from sgqn.training.subpixel import subpixel_upsample_conv


def test_encoder_paper_shape_and_reference_layer_order() -> None:
    encoder = Encoder((9, 84, 84), num_layers=11, num_filters=32)
    convs = [m for m in encoder.convs if isinstance(m, nn.Conv2d)]
    relus = [m for m in encoder.convs if isinstance(m, nn.ReLU)]
    assert len(convs) == 11 and len(relus) == 10
    assert convs[0].stride == (2, 2) and all(c.stride == (1, 1) and c.padding == (0, 0) for c in convs[1:])
    assert isinstance(encoder.convs[-1], nn.Conv2d)  # SharedCNN ends on a conv: no final ReLU
    assert encoder.out_shape == (32, 21, 21) and encoder.out_dim == 14112
    out = encoder(torch.randint(0, 256, (1, 9, 84, 84), dtype=torch.uint8))
    assert out.shape == (1, 14112) and out.dtype == torch.float32
    assert (out < 0).any()  # no ReLU on the output


@pytest.mark.parametrize(("layers", "size", "side"), [(4, 84, 35), (2, 32, 13), (3, 48, 19)])
def test_encoder_depth_and_size_are_configurable(layers: int, size: int, side: int) -> None:
    encoder = Encoder((9, size, size), num_layers=layers, num_filters=8)
    assert encoder.out_shape == (8, side, side)
    assert encoder(torch.zeros(2, 9, size, size)).shape == (2, 8 * side * side)


def test_encoder_scales_pixels_by_255() -> None:
    encoder = Encoder((9, 32, 32), num_layers=2, num_filters=8)
    x = torch.randint(0, 256, (2, 9, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(encoder(x), encoder.convs(x.float() / 255).flatten(1))


def test_weight_init_delta_orthogonal_convs_and_orthogonal_linears() -> None:
    critic = Critic(Encoder((9, 32, 32), 3, 16), action_dim=2, feature_dim=8, hidden_dim=32)
    for conv in (m for m in critic.modules() if isinstance(m, nn.Conv2d)):
        w = conv.weight.detach()
        assert w[:, :, 1, 1].abs().sum() > 0
        off_centre = w.clone()
        off_centre[:, :, 1, 1] = 0
        assert off_centre.abs().sum() == 0 and conv.bias.abs().sum() == 0
        centre = w[:, :, 1, 1] / math.sqrt(2)  # ReLU gain
        eye = torch.eye(min(centre.shape))
        gram = centre @ centre.T if centre.shape[0] <= centre.shape[1] else centre.T @ centre
        torch.testing.assert_close(gram, eye, atol=1e-5, rtol=0)
    linear = critic.q1[2]
    torch.testing.assert_close(linear.weight @ linear.weight.T, torch.eye(32), atol=1e-5, rtol=0)
    assert linear.bias.abs().sum() == 0


def test_critic_parameter_groups_partition_the_critic() -> None:
    critic = Critic(Encoder((9, 32, 32), 2, 8), action_dim=2, feature_dim=8, hidden_dim=16)
    groups = [*critic.encoder_parameters(), *critic.head_parameters()]
    assert len(groups) == len(list(critic.parameters()))
    assert {id(p) for p in groups} == {id(p) for p in critic.parameters()}
    assert {id(p) for p in critic.projection.parameters()} <= {id(p) for p in critic.encoder_parameters()}


def test_actor_log_std_is_squashed_into_bounds_and_encoder_gets_no_gradient() -> None:
    torch.manual_seed(0)  # the bounds checks need log σ on both sides: not every init gives that
    encoder = Encoder((9, 32, 32), 2, 8)
    actor = Actor(encoder, action_dim=3, feature_dim=8, hidden_dim=16, log_std_min=-10, log_std_max=2)
    with torch.no_grad():
        actor.trunk[-1].weight.mul_(1000)  # push the pre-squash log σ far out
    mean, log_std = actor(torch.rand(16, 9, 32, 32) * 255)
    assert mean.shape == log_std.shape == (16, 3)
    assert log_std.min() >= -10 and log_std.max() <= 2 and (log_std < -9).any() and (log_std > 1).any()
    (mean.sum() + log_std.sum()).backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None for p in actor.own_parameters())


def test_squashed_gaussian_log_prob_matches_the_change_of_variables() -> None:
    torch.manual_seed(0)
    mean, log_std = torch.randn(64, 4) * 0.5, torch.rand(64, 4) - 1
    noise = torch.randn(64, 4)
    action, log_prob = squashed_gaussian_sample(mean, log_std, noise)
    pre_tanh = mean + noise * log_std.exp()
    torch.testing.assert_close(action, torch.tanh(pre_tanh))
    normal = torch.distributions.Normal(mean, log_std.exp()).log_prob(pre_tanh).sum(-1, keepdim=True)
    expected = normal - torch.log(1 - action.pow(2)).sum(-1, keepdim=True)
    torch.testing.assert_close(log_prob, expected, atol=1e-3, rtol=1e-4)  # the reference's +1e-6 in the log
    assert log_prob.shape == (64, 1)


def test_upsample_conv_subpixel_equals_upsample_then_conv() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1).double()
    x = torch.randn(3, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    literal = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    fast = subpixel_upsample_conv(x, conv.weight, conv.bias)
    torch.testing.assert_close(fast, literal, atol=1e-12, rtol=0)
    g = torch.randn_like(literal)
    grads_literal = torch.autograd.grad(literal, [x, conv.weight, conv.bias], g)
    grads_fast = torch.autograd.grad(fast, [x, conv.weight, conv.bias], g)
    for a, b in zip(grads_fast, grads_literal, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("size", [84, 32])
def test_attribution_decoder_shape_and_subpixel_equivalence(size: int) -> None:
    torch.manual_seed(0)
    decoder = AttributionDecoder(action_dim=6, feature_dim=100, obs_shape=(9, size, size))
    assert decoder.proj.out_features == 32 * (size // 4) ** 2  # 14112 at 84 px, as the reference
    z, a = torch.randn(2, 100), torch.randn(2, 6)
    literal = decoder(z, a)
    assert literal.shape == (2, 9, size, size)
    speed_up_networks(decoder, SpeedOptions(subpixel_decoder=True, channels_last=False))
    assert type(decoder.convs.conv2).__name__ == "SubpixelUpsampleConv"
    torch.testing.assert_close(decoder(z, a), literal, atol=1e-5, rtol=1e-5)


def test_attribution_decoder_widths_are_configurable() -> None:
    decoder = AttributionDecoder(2, 8, (9, 40, 40), channels=(16, 32, 8))
    assert decoder.proj.out_features == 16 * 10 * 10
    convs = decoder.convs
    assert [c.out_channels for c in (convs.conv1, convs.conv2, convs.conv3)] == [32, 8, 9]
    assert decoder(torch.randn(3, 8), torch.randn(3, 2)).shape == (3, 9, 40, 40)


def test_attribution_decoder_rejects_sizes_not_divisible_by_4() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        AttributionDecoder(2, 8, (9, 30, 30))
