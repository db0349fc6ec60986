"""`make_agent`: an algorithm's agent from its typed configuration."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sgqn.algorithms import Algorithm
from sgqn.algorithms.agent import Agent
from sgqn.algorithms.drqv2 import DrQv2, DrQv2Config
from sgqn.algorithms.drqv2_sgqn import DrQv2SGQN
from sgqn.algorithms.sac import SAC, SACConfig
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.algorithms.sgqn import SGQN
from sgqn.algorithms.svea import SVEA, SVEAConfig
from sgqn.envs.tasks import DEFAULT_QUANTILE, TASK_DEFAULTS, reference_settings
from sgqn.nets.config import NetConfig


@dataclass(frozen=True)
class AgentConfig:
    """Everything that defines an agent; each algorithm reads its learner's and its guidance's groups.

    Args:
        algorithm: "sac" (SAC + DrQ shift), "svea" (+ overlay-augmented critic), "sgqn" (+ saliency
            guidance), "drqv2" (DrQ-v2) or "drqv2_sgqn" (DrQ-v2 + the same saliency guidance).
        discount: γ (0.99), for every learner (and the n-step replay's sums).
        net: the networks' sizes.
        sac: SAC's settings (sac, svea, sgqn).
        svea: SVEA's (svea).
        sgqn: SGQN's guidance (sgqn, drqv2_sgqn).
        drqv2: DrQ-v2's (drqv2, drqv2_sgqn).
    """

    algorithm: Algorithm = "sgqn"
    discount: float = 0.99
    net: NetConfig = NetConfig()
    sac: SACConfig = SACConfig()
    svea: SVEAConfig = SVEAConfig()
    sgqn: SGQNConfig = SGQNConfig()
    drqv2: DrQv2Config = DrQv2Config()


def resolved_quantile(config: SGQNConfig, task: str | None) -> float:
    """SGQN's ρ: the configured one, or the task's (the paper's appendix)."""
    return config.quantile if config.quantile is not None else DEFAULT_QUANTILE.get(task or "", 0.95)


def resolved_drqv2(config: DrQv2Config, task: str | None) -> DrQv2Config:
    """DrQ-v2's settings with `stddev_steps` None replaced by DrQ-v2's for the task (100k on its "easy"
    tasks, 500k on its "medium" ones: `sgqn.envs.tasks.reference_settings`)."""
    if config.stddev_steps is not None:
        return config
    known = task if task in TASK_DEFAULTS else None
    return replace(config, stddev_steps=reference_settings("drqv2", known).stddev_steps)


def make_agent(
    config: AgentConfig, observation_shape: tuple[int, int, int], action_dim: int, task: str | None = None
) -> Agent:
    """The agent of `config.algorithm`, for observations `[C, H, W]` and |A| = `action_dim`; `task` gives
    SGQN's ρ and DrQ-v2's σ decay when its config leaves them None."""
    shape = (int(observation_shape[0]), int(observation_shape[1]), int(observation_shape[2]))
    sgqn = replace(config.sgqn, quantile=resolved_quantile(config.sgqn, task))
    config = replace(config, drqv2=resolved_drqv2(config.drqv2, task))
    net, gamma = config.net, config.discount
    match config.algorithm:
        case "sac":
            return SAC(shape, action_dim, config.sac, net, gamma)
        case "svea":
            return SVEA(shape, action_dim, config.sac, config.svea, net, gamma)
        case "sgqn":
            return SGQN(shape, action_dim, config.sac, sgqn, net, gamma)
        case "drqv2":
            return DrQv2(shape, action_dim, config.drqv2, net, gamma)
        case "drqv2_sgqn":
            return DrQv2SGQN(shape, action_dim, config.drqv2, sgqn, net, gamma)
    raise ValueError(f"unknown algorithm {config.algorithm!r}")


__all__ = ["AgentConfig", "make_agent", "resolved_drqv2", "resolved_quantile"]
