"""Value learners and guidance plug-ins (`learner`: the shared shape), as TorchRL `LossModule`s: SAC (DrQ
shift), DrQ-v2; SVEA's and SGQN's guidance; the target critic separately."""

from sgqn.objectives.learner import Guidance, ValueLearner
from sgqn.objectives.sac import SACLoss
from sgqn.objectives.sgqn import Saliency, SaliencyGuidance, SGQNLoss
from sgqn.objectives.svea import SVEAGuidance, SVEALoss
from sgqn.objectives.targets import TargetCritic

__all__ = [
    "Guidance",
    "SACLoss",
    "SGQNLoss",
    "SVEAGuidance",
    "SVEALoss",
    "Saliency",
    "SaliencyGuidance",
    "TargetCritic",
    "ValueLearner",
]
