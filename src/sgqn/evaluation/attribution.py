"""The critic's saliency maps of observations, for pictures, videos and the saliency metrics."""

from __future__ import annotations

from typing import Any, TypedDict

import torch
from torch import Tensor

from sgqn.algorithms.agent import Agent
from sgqn.algorithms.saliency import ZeroTies, attribution_mask, guided_backprop
from sgqn.training import devices


class SaliencyMaps(TypedDict):
    """The critic's saliency of observations `[B, C, H, W]` (see `attribution_maps`)."""

    attribution: Tensor
    mask: Tensor
    masked_obs: Tensor
    predicted_mask: Tensor | None
    predicted_prob: Tensor | None


def attribution_maps(
    agent: Agent, obs: Tensor, action: Tensor | None, quantile: float, zero_ties: ZeroTies = "keep"
) -> SaliencyMaps:
    """Saliency of the agent's current critic; no optimizer state or gradient is touched.

    Args:
        agent: any algorithm's agent (every one has a twin critic with guided ReLUs).
        obs: uint8 (or float in [0, 255]) `[B, C, H, W]` or `[C, H, W]`, on the host or the agent's device.
        action: `[B, A]`; None → the deterministic policy's action.
        quantile: ρ of the mask.
        zero_ties: see `sgqn.algorithms.saliency.attribution_mask`.

    Returns host tensors `[B, C, H, W]` (or `[C, H, W]`): "attribution" (guided backprop of Q1), "mask"
    (bool, quantile ρ), "masked_obs" (obs · mask, zeros elsewhere), "predicted_mask" (bool, sigmoid > 0.5
    of the attribution predictor; None without one) and "predicted_prob" (its sigmoid; None without one).
    """
    unbatched = obs.dim() == 3
    device = devices.module_device(agent)
    obs = devices.to_device(obs[None] if unbatched else obs, device).float()
    with torch.no_grad():
        if action is None:
            action = agent.act(obs, deterministic=True)
        action = devices.to_device(action.reshape(obs.shape[0], -1), device).float()
    attribution = guided_backprop(agent.critic, obs, action)
    mask = attribution_mask(attribution, quantile, zero_ties=zero_ties)
    with torch.no_grad():
        logits = agent.predict_saliency(obs, action)
    prob = None if logits is None else torch.sigmoid(logits)
    out = {
        "attribution": attribution,
        "mask": mask,
        "masked_obs": obs * mask,
        "predicted_mask": None if prob is None else prob > 0.5,
        "predicted_prob": prob,
    }
    # On the host, where pictures, videos and IoUs are made (GPU weights: one copy per map).
    host = {k: None if v is None else devices.to_host(v) for k, v in out.items()}
    return SaliencyMaps(**{k: (v[0] if unbatched and v is not None else v) for k, v in host.items()})  # type: ignore[typeddict-item]


def saliency_maps(module: Any, obs: Tensor, action: Tensor | None = None) -> SaliencyMaps:
    """`attribution_maps` of a trained `AgentModule`'s agent, with the module's ρ and tie rule."""
    return attribution_maps(module.agent, obs, action, module.quantile, module.config.sgqn.mask_zero_ties)


__all__ = ["SaliencyMaps", "attribution_maps", "saliency_maps"]
