"""One agent-step clock for every "each N agent steps" cadence (evaluation, checkpoints, progress).

The clock is the data stream's count of collected agent steps (`DMCDataModule.stats.agent_steps`), never
Lightning's `global_step` (which counts optimizer steps, several per update). A `Cadence` fires at the
multiples of its period that the clock has reached; its state (the next multiple) is saved with the
callback that owns it, so a resumed run fires exactly where the uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer


def agent_steps(trainer: Trainer) -> int:
    """The clock: agent steps collected so far by the trainer's data module."""
    return int(trainer.datamodule.stats.agent_steps)  # type: ignore[attr-defined]


class Cadence:
    """Fires once each time the clock reaches the next multiple of `every` (0 or less: never).

    Several multiples passed at once (a collector batch of many steps) fire once, and the next firing
    is the multiple after the current step.
    """

    def __init__(self, every: int) -> None:
        self.every = int(every)
        self.next = self.every

    def due(self, step: int) -> bool:
        if self.every <= 0 or step < self.next:
            return False
        self.next = step - step % self.every + self.every
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "next": self.next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next = int(state["next"])


__all__ = ["Cadence", "agent_steps"]
