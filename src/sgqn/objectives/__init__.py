"""Learner objectives as TorchRL `LossModule`s: SAC (DrQ shift), SVEA, SGQN; target critic separately."""

from sgqn.objectives.sac import SACLoss
from sgqn.objectives.sgqn import Saliency, SaliencyGuidance, SGQNLoss
from sgqn.objectives.svea import SVEALoss
from sgqn.objectives.targets import TargetCritic

__all__ = ["SACLoss", "SGQNLoss", "SVEALoss", "Saliency", "SaliencyGuidance", "TargetCritic"]
