"""The networks' sizes, shared by every algorithm; `None` means the learner's own reference value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetConfig:
    """Widths and depths of the encoder, actor and critic (`--model.net.*`).

    Args:
        num_conv_layers: conv layers of the shared encoder; None: the learner's reference (SAC, SVEA,
            SGQN: 11, the DMC-GB code's; DrQ-v2: 4).
        num_filters: channels of every conv layer (32).
        feature_dim: width of the actor's and critic's projections; None: the learner's reference (SAC
            lineage: 100; DrQ-v2: 50).
        hidden_dim: width of the actor's and Q-functions' MLPs (1024).
        actor_hidden_dim: the actor's MLP width alone; None: `hidden_dim`, as the references. A small
            config that narrows the critic can keep the paper's actor: an actor's initial mean action
            shrinks as 1/√width, so a narrow actor starts by pushing hard one way.
    """

    num_conv_layers: int | None = None
    num_filters: int = 32
    feature_dim: int | None = None
    hidden_dim: int = 1024
    actor_hidden_dim: int | None = None

    @property
    def actor_width(self) -> int:
        return self.hidden_dim if self.actor_hidden_dim is None else self.actor_hidden_dim


__all__ = ["NetConfig"]
